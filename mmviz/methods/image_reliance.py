"""Image reliance per answer token: how much each token's prediction changes when the image is taken away.

For answer token t, read at the position t − 1 that predicts it, with the real image (p) and a baseline image (q):

* KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) over the whole vocabulary (nats): does the next-token distribution
  depend on the image at all?
* P-CXMI(t) = log p(token t) − log q(token t) (pointwise conditional cross-mutual information, Sarti et al. 2023):
  how much the real image raised the probability of the token actually produced.

Cost: one clean forward (traces keep the answer's log-probabilities, not whole distributions) and ONE
teacher-forced forward with the baseline image, both over prompt + answer. Baselines: ``"blur"`` (the same image
blurred, :meth:`~mmviz.capture.run.ModelRun.blurred_inputs`), ``"blank"`` (a uniform grey image of the same size
through the processor) and ``"mean"`` (every image-token embedding replaced by the mean image token).

Template tokens (``"</s>"``, punctuation fixed by the answer format) have a KL near zero; content words read off
the image (a colour) have a large one. :meth:`ImageReliance.dependent` picks the latter, and
:func:`image_dependent_targets` turns them into :class:`~mmviz.methods.Target` s for any map method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image

from mmviz.capture.run import ModelRun, replacing_columns
from mmviz.errors import InputError
from mmviz.methods.common import baseline_embeddings, inference_context, model_run
from mmviz.methods.target import Target, provide_baseline_logprob
from mmviz.records import Trace, kept_result

RelianceBaseline = Literal["blur", "blank", "mean"]
RELIANCE_BASELINES: tuple[str, ...] = get_args(RelianceBaseline)

GREY = (128, 128, 128)
"""The colour of the ``"blank"`` baseline image: mid grey, the processor's usual mean colour."""

DEFAULT_THRESHOLD = 0.1
"""KL (nats) above which :meth:`ImageReliance.dependent` calls a token image-dependent. On the shapes model
(``tests/methods/test_image_reliance.py``, scene 3) the colour answer's KL is 5.6 against the blank image, 3.4
against the mean image token, but only 0.012 against the blurred image (blurring keeps the colours), while
``"</s>"`` stays below 1e-4 against all three: with ``"blur"`` on such images pass a lower threshold or ``top``."""


@kept_result("image_reliance")
@dataclass(frozen=True, repr=False)
class ImageReliance:
    """Per answer token, how much its prediction depends on the image.

    Attributes:
        positions: int ``(A,)`` the answer tokens' positions.
        tokens: their display strings.
        kl: float64 ``(A,)`` KL(p_real ‖ p_baseline) of the next-token distribution at ``positions − 1`` (nats).
        pcxmi: float64 ``(A,)`` log p_real(token) − log p_baseline(token).
        real_logprobs: float64 ``(A,)`` log p_real(token) (equals ``trace.answer_logprobs``).
        baseline_logprobs: float64 ``(A,)`` log p_baseline(token).
        baseline: the baseline image used.
    """

    positions: np.ndarray
    tokens: list[str]
    kl: np.ndarray
    pcxmi: np.ndarray
    real_logprobs: np.ndarray
    baseline_logprobs: np.ndarray
    baseline: str

    def dependent(self, threshold: float | None = None, top: int | None = None) -> np.ndarray:
        """Positions of the image-dependent tokens, highest KL first: KL above ``threshold`` nats (None:
        :data:`DEFAULT_THRESHOLD`, or no threshold when ``top`` is given), at most ``top`` of them.

        Example:
            >>> image_reliance(trace).dependent()          # doctest: +SKIP
            array([75])
        """
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
            raise InputError(f"top must be a whole number ≥ 1 or None, not {top!r}")
        if threshold is None:
            threshold = DEFAULT_THRESHOLD if top is None else -np.inf
        order = np.argsort(-self.kl, kind="stable")
        order = order[self.kl[order] > threshold]
        return self.positions[order[:top] if top is not None else order]

    def baseline_logprob(self, position: int) -> float:
        """log p_baseline of the answer token at ``position``."""
        found = np.flatnonzero(self.positions == position)
        if len(found) == 0:
            raise InputError(f"position {position} is not an answer token (answers: {self.positions.tolist()})")
        return float(self.baseline_logprobs[found[0]])

    def __repr__(self) -> str:
        shown = ", ".join(f"{token!r}: {kl:.3g}" for token, kl in zip(self.tokens, self.kl, strict=True))
        return f"<mmviz.ImageReliance vs {self.baseline} image, KL nats {{{shown}}}>"


def image_reliance(trace: Trace, baseline: RelianceBaseline = "blur") -> ImageReliance:
    """KL(p_real ‖ p_baseline) and P-CXMI of every answer token, kept on the trace (trace files save it).

    Example:
        >>> reliance = mmviz.methods.image_reliance(trace, baseline="blank")        # doctest: +SKIP
        >>> reliance.kl.round(3)                                                    # doctest: +SKIP
        array([7.912, 0.   ])
        >>> relevancy(trace, image_dependent_targets(trace))                          # doctest: +SKIP
    """
    if baseline not in RELIANCE_BASELINES:
        raise InputError(f"baseline must be one of {list(RELIANCE_BASELINES)}, not {baseline!r}")
    if trace.answer_start >= len(trace.tokens):
        raise InputError("the trace has no answer tokens: image reliance is measured per answer token")
    return trace.computed(f"image_reliance:baseline={baseline}", lambda: _measure(trace, baseline))


def image_dependent_targets(
    trace: Trace,
    *,
    threshold: float | None = None,
    top: int | None = None,
    baseline: RelianceBaseline = "blur",
    contrast: bool = False,
) -> list[Target]:
    """Targets for the answer tokens whose prediction depends on the image (see :meth:`ImageReliance.dependent`):
    log-probability targets, or with ``contrast=True`` :meth:`Target.image_contrast` against the same baseline.

    Example:
        >>> mmviz.methods.relevancy(trace, image_dependent_targets(trace, top=1))    # doctest: +SKIP
    """
    reliance = image_reliance(trace, baseline)
    positions = reliance.dependent(threshold, top)
    if len(positions) == 0:
        raise InputError(
            f"no answer token depends on the image by more than {threshold or DEFAULT_THRESHOLD} nats of KL "
            f"against the {baseline} "
            f"image (largest: {reliance.kl.max():.3g}); lower the threshold or pass top=1"
        )
    if contrast:
        return [Target.image_contrast(int(p), baseline, reliance.baseline_logprob(int(p))) for p in positions]
    return [Target.logprob(int(p)) for p in positions]


def _measure(trace: Trace, baseline: str) -> ImageReliance:
    run = model_run(trace)
    first = trace.answer_start - 1
    columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
    seen: list[torch.Tensor] = []

    def keep(embeds: torch.Tensor) -> torch.Tensor:  # the clean forward also yields the embeddings "mean" needs
        seen.append(embeds.detach().float())
        return embeds

    with inference_context(run):
        real = run.forward(edit=keep, first_logit=first)
        if baseline == "mean":
            clean = seen[0][:, columns]
            values = baseline_embeddings(run, clean, columns, "mean")
            other = run.forward(edit=replacing_columns(columns, values), first_logit=first)
        else:
            inputs = run.blurred_inputs() if baseline == "blur" else _blank_inputs(run)
            other = run.forward(inputs=inputs, first_logit=first)
    # rows 0 … A−1 of the kept logits predict answer tokens answer_start …; the last row predicts nothing
    real_log = torch.log_softmax(real[0, :-1].double(), dim=-1)
    other_log = torch.log_softmax(other[0, :-1].double(), dim=-1)
    ids = run.input_ids[0, trace.answer_start :].to(real_log.device)
    kl = (real_log.exp() * (real_log - other_log)).sum(dim=-1)
    picked_real = real_log.gather(1, ids[:, None])[:, 0]
    picked_other = other_log.gather(1, ids[:, None])[:, 0]
    positions = np.arange(trace.answer_start, len(trace.tokens))
    return ImageReliance(
        positions=positions,
        tokens=[trace.tokens[p] for p in positions],
        kl=kl.clamp_min(0.0).cpu().numpy(),  # ≥ 0 exactly; rounding can leave −1e-17
        pcxmi=(picked_real - picked_other).cpu().numpy(),
        real_logprobs=picked_real.cpu().numpy(),
        baseline_logprobs=picked_other.cpu().numpy(),
        baseline=baseline,
    )


def _blank_inputs(run: ModelRun) -> dict[str, torch.Tensor]:
    """Processor outputs for uniform grey images of the traced images' sizes (same sizes → same token grids, so
    only the pixel inputs change, as for the blurred baseline)."""
    return run.with_pixels([Image.new("RGB", image.size, GREY) for image in run.images])


provide_baseline_logprob(
    lambda trace, position, baseline: image_reliance(trace, baseline).baseline_logprob(position)  # type: ignore[arg-type]
)
