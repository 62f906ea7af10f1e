"""Occlusion (Zeiler & Fergus 2014) in token space, through captum's ``FeatureAblation``.

Each ``window × window`` block of an image's token grid is replaced by a baseline (the blurred image's
embeddings by default) and the drop of the score is recorded: o = F(x) − F(x with the block occluded). This
measures the language model's reliance on those POSITIONS; information the vision tower already spread to other
tokens is not removed.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import FeatureAblation

from mmviz.capture.run import replacing_columns
from mmviz.methods.common import Baseline, baseline_embeddings, check_window, inference_context, model_run, window_ids
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.progress import is_quiet, progress
from mmviz.records import Map, Trace, method

LABEL = "Occlusion"
MEANING = (
    "Occlusion: how much the score drops when this block of image tokens is replaced by the blurred image's "
    "tokens (positive = the model relies on these positions)."
)


@method("occlusion", label=LABEL, meaning=MEANING, signed=True, cost="slow")
def occlusion(
    trace: Trace, targets: TargetLike = None, *, window: int = 2, baseline: Baseline = "blur", batch_size: int = 16
) -> Map:
    """Score drop per image token when its ``window × window`` block is replaced by the ``baseline``, per target.

    Cost: one forward per block (batched ``batch_size`` at a time) per target.

    Example:
        >>> m = occlusion(trace, window=2)                              # doctest: +SKIP
    """
    window = check_window(window)
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
    clean = run.embeddings()[:, columns]
    replacement = baseline_embeddings(run, clean, columns, baseline)
    # The feature mask is built on the CPU; captum combines it with the embeddings on their device.
    ids = torch.as_tensor(window_ids(trace.layout, trace.image_positions, window), device=clean.device)
    mask = ids[None, :, None].expand_as(clean)
    rows = np.zeros((len(resolved), len(columns)), np.float32)
    with inference_context(run):
        for row, target in enumerate(progress(resolved, desc="mmviz: occlusion", disable=len(resolved) < 2)):
            first = target.first_logit

            def score(values: torch.Tensor, target=target, first=first) -> torch.Tensor:
                # All image columns are replaced: no need to run the vision tower for each block.
                edit = replacing_columns(columns, values)
                logits = run.edited_forward(batch=values.shape[0], edit=edit, first_logit=first)
                return target(logits, run.input_ids, first)

            attribution = FeatureAblation(score).attribute(
                clean,
                baselines=replacement,
                feature_mask=mask,
                perturbations_per_eval=batch_size,
                show_progress=not is_quiet(),
            )
            rows[row] = attribution[0, :, 0].cpu().numpy()
    return occlusion.spec.map(  # type: ignore[attr-defined]
        values=rows,
        positions=np.array([t.position for t in resolved]),
        columns=trace.image_positions,
        info={
            "window": window,
            "baseline": baseline,
            "space": "token",
            "target": resolved[0].score,
            "forward": run.edited_path,
        },
    )
