"""Occlusion (Zeiler & Fergus 2014) in token space, through captum's ``FeatureAblation``.

Each ``window × window`` block of an image's token grid is replaced by a baseline (the blurred image's
embeddings by default) and the drop of the score is recorded: o = F(x) − F(x with the block occluded). This
measures the language model's reliance on those POSITIONS; information the vision tower already spread to other
tokens is not removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from captum.attr import FeatureAblation

from mmviz.capture.model_state import preserved
from mmviz.capture.run import ModelRun, replacing_columns
from mmviz.errors import InputError
from mmviz.methods._backprop import model_run
from mmviz.methods._windows import window_ids
from mmviz.methods.map import Map
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.progress import is_quiet, progress

if TYPE_CHECKING:
    from mmviz.tracing import Trace

LABEL = "Occlusion"
MEANING = (
    "Occlusion: how much the score drops when this block of image tokens is replaced by the blurred image's "
    "tokens (positive = the model relies on these positions)."
)

Fill = Literal["blur", "mean", "zero"]


def fill_values(run: ModelRun, columns: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Replacement embeddings ``(1, P, d)`` for the image columns: blurred image, mean image token or zeros."""
    clean = run.embeddings()[:, columns]
    if fill == "blur":
        return run.embeddings(run.blurred_inputs())[:, columns]
    if fill == "mean":
        return clean.mean(dim=1, keepdim=True).expand_as(clean).clone()
    if fill == "zero":
        return torch.zeros_like(clean)
    raise InputError(f"fill must be 'blur', 'mean' or 'zero', not {fill!r}")


def occlusion(
    trace: Trace, targets: TargetLike = None, *, window: int = 2, fill: Fill = "blur", batch_size: int = 16
) -> Map:
    """Score drop per image token when its ``window × window`` block is occluded, per target.

    Cost: one forward per block (batched ``batch_size`` at a time) per target.

    Example:
        >>> m = occlusion(trace, window=2)                              # doctest: +SKIP
    """
    if window < 1:
        raise InputError("window must be at least 1 grid cell")
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
    clean = run.embeddings()[:, columns]
    replacement = fill_values(run, columns, fill)
    mask = torch.as_tensor(window_ids(trace.layout, trace.image_positions, window))[None, :, None].expand_as(clean)
    rows = np.zeros((len(resolved), len(columns)), np.float32)
    with torch.no_grad(), preserved(run.model):
        run.model.eval()
        for row, target in enumerate(progress(resolved, desc="mmviz: occlusion", disable=len(resolved) < 2)):
            first = target.first_logit

            def score(values: torch.Tensor, target=target, first=first) -> torch.Tensor:
                logits = run.forward(batch=values.shape[0], edit=replacing_columns(columns, values), first_logit=first)
                return target(logits, run.input_ids, first)

            attribution = FeatureAblation(score).attribute(
                clean,
                baselines=replacement,
                feature_mask=mask,
                perturbations_per_eval=batch_size,
                show_progress=not is_quiet(),
            )
            rows[row] = attribution[0, :, 0].numpy()
    return Map(
        method="occlusion",
        label=LABEL,
        meaning=MEANING,
        values=rows,
        positions=np.array([t.position for t in resolved]),
        columns=trace.image_positions,
        signed=True,
        info={"window": window, "fill": fill, "space": "token", "target": resolved[0].score},
    )
