"""The scalar F an explanation is relative to (methods.md §3): which answer token(s), and which score of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch

from mmviz.errors import InputError

if TYPE_CHECKING:
    from mmviz.records import Trace

Score = Literal["logprob", "logit", "contrast", "image_contrast"]


@dataclass(frozen=True)
class Target:
    """F = a score of the token(s) at ``positions`` (summed over them), read from the logits one position earlier.

    Attributes:
        positions: sequence positions of the explained tokens (answer tokens); the map of a target belongs to its
            first position.
        score: ``"logprob"`` (default, float32 log-softmax), ``"logit"``, ``"contrast"`` = logit of the token
            minus the logit of ``other``, or ``"image_contrast"`` = log p(token | real image) − log p(token |
            ``baseline`` image), see :meth:`image_contrast`.
        other: the contrast token id.
        baseline: the baseline image of an image contrast (``"blur"``, ``"blank"``, ``"mean"``).
        reference: log p(token | baseline image), the constant an image contrast subtracts (filled in from
            :func:`~mmviz.methods.image_reliance` when the target is resolved against a trace).

    Example:
        >>> Target.logprob(12)                      # log p(token 12 | tokens 0…11)
        Target(positions=(12,), score='logprob', other=None, baseline=None, reference=None)
        >>> Target.contrast(12, other=tokenizer.convert_tokens_to_ids("no"))   # doctest: +SKIP
    """

    positions: tuple[int, ...]
    score: Score = "logprob"
    other: int | None = None
    baseline: str | None = None
    reference: float | None = None

    @classmethod
    def logprob(cls, position: int) -> Target:
        return cls((int(position),))

    @classmethod
    def logit(cls, position: int) -> Target:
        return cls((int(position),), "logit")

    @classmethod
    def contrast(cls, position: int, other: int) -> Target:
        return cls((int(position),), "contrast", int(other))

    @classmethod
    def image_contrast(cls, position: int, baseline: str = "blur", reference: float | None = None) -> Target:
        """F = log p(token | real image) − log p(token | baseline image): the token's P-CXMI, "this image vs the
        baseline image".

        The baseline's term is a CONSTANT, computed once (one teacher-forced forward with the baseline image,
        :func:`~mmviz.methods.image_reliance`, kept on the trace) when the target is resolved against a trace, or
        given as ``reference``. So a gradient map of this target equals the map of ``Target.logprob(position)``:
        it explains the real-image term; what the contrast adds is its value (``image_reliance(trace).pcxmi``).
        Perturbation maps (occlusion, RISE, deletion) are differences of F and likewise unchanged. Integrated
        Gradients with the same ``baseline`` explains exactly this contrast: its attributions sum to
        F(x) − F(x′) = log p_real − log p_baseline.

        Example:
            >>> relevancy(trace, Target.image_contrast(trace.answer_start))            # doctest: +SKIP
        """
        return cls((int(position),), "image_contrast", baseline=str(baseline), reference=reference)

    @classmethod
    def span(cls, positions: Sequence[int]) -> Target:
        """The summed log-probability of several tokens (a word split into pieces, or the whole answer)."""
        return cls(tuple(int(p) for p in positions))

    @property
    def position(self) -> int:
        """The position the target's map is shown for (its first token)."""
        return self.positions[0]

    @property
    def first_logit(self) -> int:
        """The first logits row F reads (the row predicting the first explained token)."""
        return min(self.positions) - 1

    def __call__(self, logits: torch.Tensor, input_ids: torch.Tensor, first_logit: int) -> torch.Tensor:
        """F for each batch row: ``logits`` are ``(B, rows, V)`` for positions ``first_logit …``."""
        total = logits.new_zeros(logits.shape[0])
        for position in self.positions:
            row = logits[:, position - 1 - first_logit].float()
            token = int(input_ids[0, position])
            if self.score == "logprob":
                total = total + torch.log_softmax(row, dim=-1)[:, token]
            elif self.score == "logit":
                total = total + row[:, token]
            elif self.score == "image_contrast":
                if self.reference is None:
                    raise InputError("an image contrast target needs its baseline value: resolve it against the trace")
                total = total + torch.log_softmax(row, dim=-1)[:, token] - self.reference
            else:
                total = total + row[:, token] - row[:, int(self.other)]  # type: ignore[arg-type]
        return total


TargetLike = Target | int | Sequence[int] | None


def resolve_targets(trace: Trace, targets: TargetLike | Sequence[Target]) -> list[Target]:
    """Targets as a list: None → one log-prob target per answer token; an int → that position; a list of ints or
    Targets → one each. Positions must be answer (or prompt) tokens after the first position."""
    n = len(trace.tokens)
    if targets is None:
        resolved = [Target.logprob(p) for p in range(trace.answer_start, n)]
    elif isinstance(targets, Target):
        resolved = [targets]
    elif isinstance(targets, int):
        resolved = [Target.logprob(targets)]
    else:
        resolved = [t if isinstance(t, Target) else Target.logprob(int(t)) for t in targets]
    if not resolved:
        raise InputError("no target: the trace has no answer tokens; pass target positions explicitly")
    for target in resolved:
        if min(target.positions) < 1 or max(target.positions) >= n:
            raise InputError(f"target positions must lie in 1…{n - 1} (the token at 0 has no prediction)")
        if target.score == "contrast" and target.other is None:
            raise InputError("a contrast target needs the other token id: Target.contrast(position, other=id)")
    return [_with_reference(trace, target) for target in resolved]


_baseline_logprob: Callable[[Trace, int, str], float] | None = None
"""``(trace, position, baseline) -> log p(token | baseline image)``: set by :mod:`mmviz.methods.image_reliance`
(which imports this module), so that resolving an image contrast needs no import back."""


def provide_baseline_logprob(function: Callable[[Trace, int, str], float]) -> None:
    """Register how an image contrast's reference is computed (:mod:`mmviz.methods.image_reliance` does, once)."""
    global _baseline_logprob
    _baseline_logprob = function


def _with_reference(trace: Trace, target: Target) -> Target:
    """An image contrast with its baseline log-probability filled in (one baseline forward per trace and baseline,
    kept on the trace); every other target as it is."""
    if target.score != "image_contrast" or target.reference is not None:
        return target
    if len(target.positions) != 1 or target.position < trace.answer_start:
        raise InputError("an image contrast target is one answer token: Target.image_contrast(position)")
    if _baseline_logprob is None:  # pragma: no cover - mmviz.methods imports image_reliance
        raise InputError("import mmviz.methods first: it provides the image contrast's baseline")
    return replace(target, reference=_baseline_logprob(trace, target.position, target.baseline or "blur"))
