"""What several methods share, written once: the model handle, the inference and gradient contexts, baselines,
score reading and :class:`Effect`, gradient plumbing and token windows.

* Perturbation methods (occlusion, RISE, ablation, deletion / insertion) and the baselines of attribution methods
  (gradient × input, IG) replace image-token embeddings by a :data:`Baseline` (:func:`baseline_embeddings`).
* Interventions (knockout, ablation) report an :class:`Effect` on each target's score (:func:`scores`).
* Gradient methods run one forward with a gradient leaf (:class:`EmbeddingLeaf`) inside :func:`gradient_context`
  and one fresh backward per target (:func:`backward_per_target`); forward-only methods run inside
  :func:`inference_context`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from mmviz.adapters.layout import TokenLayout
from mmviz.capture.run import ModelRun
from mmviz.errors import InputError, UnsupportedModelError
from mmviz.methods.target import Target
from mmviz.model_state import preserved
from mmviz.progress import progress

if TYPE_CHECKING:
    from mmviz.records import Trace

Baseline = Literal["blur", "mean", "zero"]
"""What replaces an image token's embedding: the same image blurred (in distribution, detail removed), the mean
image token of this input, or zeros."""

BASELINES: tuple[str, ...] = ("blur", "mean", "zero")


def model_run(trace: Trace) -> ModelRun:
    """The trace's model handle, or a clear error for traces without one."""
    if trace.run is None:
        raise InputError(
            f"this {trace.family} trace has no model attached to run again: it comes from a dual encoder (CLIP, "
            f"SigLIP: use its 'similarity' map and mmviz.methods.similarity), or it was loaded from a file without "
            f"its model (re-link it: trace = trace.attach(model, processor))"
        )
    return trace.run


@contextmanager
def inference_context(run: ModelRun) -> Iterator[None]:
    """Eval mode, no autograd; the model's flags restored afterwards (forward-only methods)."""
    with preserved(run.model), torch.no_grad():
        run.model.eval()
        yield


@contextmanager
def gradient_context(run: ModelRun) -> Iterator[None]:
    """Eval mode, every parameter frozen (gradients reach only the chosen leaf), autograd on; all restored after.

    ``torch.no_grad()`` around the call is fine (autograd is switched on here); ``torch.inference_mode()`` is not:
    the tensors it makes can never take part in autograd, so the methods that need gradients refuse it clearly.
    """
    if torch.is_inference_mode_enabled():
        raise InputError(
            "this method needs gradients, which torch.inference_mode() forbids: call it outside inference mode "
            "(torch.no_grad() is fine, mmviz switches gradients on where it needs them)"
        )
    with preserved(run.model):
        run.model.eval()
        run.model.requires_grad_(False)
        with torch.enable_grad():
            yield


def sequence_image_positions(trace: Trace, method: str) -> np.ndarray:
    """``trace.image_positions`` for a method that needs them to be SEQUENCE positions (it reads hidden states,
    position-to-position attention or residual streams at them); :class:`UnsupportedModelError` for a family whose
    image columns are cross-attention keys (Llama 3.2 Vision), where no position holds the image.

    Example:
        >>> sequence_image_positions(trace, "relevancy")[:3]          # doctest: +SKIP
        array([5, 6, 7])
    """
    if trace.layout.keys is not None:
        raise UnsupportedModelError(
            f"{method} needs the image at sequence positions, but {trace.family} reads it through cross-attention "
            f"layers: its image columns are the cross-attention keys (trace.layout.keys), which no hidden state, "
            f"residual stream or self-attention row holds. Use attention, gradient_x_input, integrated_gradients, "
            f"occlusion, rise, knockout or ablation, which act on the cross-attention keys"
        )
    return trace.image_positions


def check_baseline(baseline: object) -> Baseline:
    """``baseline`` if it is one of :data:`BASELINES`, else :class:`InputError` (before any model run)."""
    if baseline not in BASELINES:
        raise InputError(f"baseline must be one of {list(BASELINES)}, not {baseline!r}")
    return baseline  # type: ignore[return-value]


def baseline_embeddings(run: ModelRun, clean: torch.Tensor, columns: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    """Replacement embeddings ``(1, P, d)`` for the image ``columns`` whose clean embeddings are ``clean``: the
    blurred image's (one forward), the mean image token's, or zeros."""
    if check_baseline(baseline) == "blur":
        return run.embeddings(run.blurred_inputs())[:, columns]
    if baseline == "mean":
        return clean.mean(dim=1, keepdim=True).expand_as(clean).clone()
    return torch.zeros_like(clean)


@dataclass(frozen=True)
class Effect:
    """The effect of an intervention on each target's score.

    Attributes:
        positions: ``(T,)`` target positions.
        clean: ``(T,)`` scores without the intervention.
        changed: ``(T,)`` scores with it.
        delta: ``changed − clean`` (negative = the intervention hurt the target).
        description: what was done.
    """

    positions: np.ndarray
    clean: np.ndarray
    changed: np.ndarray
    delta: np.ndarray
    description: str


def scores(run: ModelRun, targets: Sequence[Target], **forward: Any) -> np.ndarray:
    """Every target's score from one forward (no gradients); ``forward`` goes to :meth:`ModelRun.forward`."""
    first = first_logit_of(targets)
    with inference_context(run):
        logits = run.forward(first_logit=first, **forward)
    return np.array([float(t(logits, run.input_ids, first)[0]) for t in targets], dtype=np.float64)


def effect(run: ModelRun, targets: Sequence[Target], changed: np.ndarray, description: str) -> Effect:
    """The :class:`Effect` of an intervention whose target scores were ``changed``."""
    clean = scores(run, targets)
    return Effect(
        positions=np.array([t.position for t in targets]),
        clean=clean,
        changed=changed,
        delta=changed - clean,
        description=description,
    )


class EmbeddingLeaf:
    """An edit that swaps the language model's input embeddings for a float32 leaf that collects gradients.

    Example:
        >>> leaf = EmbeddingLeaf()
        >>> logits = run.forward(edit=leaf)          # doctest: +SKIP
        >>> leaf.tensor.grad                           # after a backward   # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        self.tensor = embeds.detach().float().requires_grad_(True)
        return self.tensor


def backward_per_target(
    targets: Sequence[Target],
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    first_logit: int,
    leaves: Sequence[torch.Tensor],
    after: Callable[[int, Target], None],
    desc: str,
) -> None:
    """For each target: clear the leaves' gradients, backpropagate F alone (graph kept), then call ``after``.

    Gradients are never accumulated across targets: every backward starts from cleared leaves, and tensor hooks
    see only the current backward's gradient.
    """
    for index, target in enumerate(progress(targets, desc=desc, unit="target", disable=len(targets) < 2)):
        for leaf in leaves:
            leaf.grad = None
        value = target(logits, input_ids, first_logit)
        value.sum().backward(retain_graph=index < len(targets) - 1)
        after(index, target)


def first_logit_of(targets: Sequence[Target]) -> int:
    """The first logits row any of ``targets`` reads (forwards keep only the rows from there on)."""
    return min(target.first_logit for target in targets)


def check_window(window: object) -> int:
    """A window side in grid cells (≥ 1), else :class:`InputError`."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise InputError(f"window must be a whole number of grid cells ≥ 1, not {window!r}")
    return int(window)


def window_ids(layout: TokenLayout, columns: np.ndarray, size: int) -> np.ndarray:
    """For each image column, the id of the ``size × size`` window of its (image, view) grid it falls in."""
    table = layout.column_table  # the layout, or the cross-attention keys that are the image columns
    keys = np.stack(
        [
            table.image_index[columns],
            table.view[columns],
            table.grid_shape[columns, 0],
            table.grid_shape[columns, 1],
            table.grid[columns, 0] // size,
            table.grid[columns, 1] // size,
        ],
        axis=1,
    )
    _, ids = np.unique(keys, axis=0, return_inverse=True)
    return ids.reshape(-1)


def grid_groups(layout: TokenLayout, columns: np.ndarray) -> list[np.ndarray]:
    """Column indices of each (image, view) token grid."""
    table = layout.column_table
    keys = np.stack([table.image_index[columns], table.view[columns]], axis=1)
    _, ids = np.unique(keys, axis=0, return_inverse=True)
    return [np.flatnonzero(ids.reshape(-1) == group) for group in range(ids.max() + 1)]
