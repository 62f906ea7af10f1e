"""RISE (Petsiuk et al. 2018, arXiv 1806.07421) in token space: random soft masks over each image's token grid.

Masks are sampled on a coarse grid (keep probability p), upsampled bilinearly with a random shift, and blend each
image token between its embedding (mask 1) and the baseline (mask 0). S = Σ_n (F_n − F̄)·M_n / (N·p): the
mean-centred estimator has the ranking of the original in expectation and less variance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as functional

from mmviz.adapters.layout import TokenLayout
from mmviz.capture.run import replacing_columns
from mmviz.errors import InputError
from mmviz.methods.common import Baseline, baseline_embeddings, check_window, grid_groups, inference_context, model_run
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.progress import progress
from mmviz.records import Map, Trace, method

LABEL = "RISE"
MEANING = (
    "RISE: the average score when this image token is kept, over many random partial masks (higher = keeping "
    "it helps the score). Token space: about LLM input positions, not pixels."
)


def random_masks(layout: TokenLayout, columns: np.ndarray, n: int, window: int, keep: float, seed: int) -> torch.Tensor:
    """``(n, P)`` soft masks in [0, 1]: per token grid, a Bernoulli grid of ``window × window`` cells upsampled
    with a random shift."""
    cell = window
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, len(columns))
    for group in grid_groups(layout, columns):
        rows, cols = (int(v) for v in layout.column_table.grid_shape[columns[group[0]]])
        coarse = (rows // cell + 2, cols // cell + 2)
        grid = (torch.rand(n, 1, *coarse, generator=generator) < keep).float()
        up = functional.interpolate(
            grid, size=((coarse[0]) * cell, (coarse[1]) * cell), mode="bilinear", align_corners=False
        )
        for index in range(n):
            dy, dx = (int(v) for v in torch.randint(0, cell, (2,), generator=generator))
            shifted = up[index, 0, dy : dy + rows, dx : dx + cols]
            cells = layout.column_table.grid[columns[group]]
            masks[index, group] = shifted[cells[:, 0], cells[:, 1]]
    return masks


@method("rise", label=LABEL, meaning=MEANING, signed=True, cost="slow")
def rise(
    trace: Trace,
    targets: TargetLike = None,
    *,
    n_masks: int = 256,
    window: int = 2,
    keep: float = 0.5,
    baseline: Baseline = "blur",
    batch_size: int = 16,
    seed: int = 0,
) -> Map:
    """RISE saliency per image token, per target (default: each answer token). Cost: ``n_masks`` forwards.

    Each mask keeps every ``window × window`` cell with probability ``keep`` (blended smoothly between cells) and
    replaces the rest by the ``baseline``.

    Example:
        >>> m = rise(trace, n_masks=512)                                # doctest: +SKIP
    """
    window = check_window(window)
    if n_masks < 2 or not 0.0 < keep < 1.0:
        raise InputError(f"RISE needs n_masks ≥ 2 and 0 < keep < 1, not n_masks={n_masks!r}, keep={keep!r}")
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
    clean = run.embeddings()[:, columns]
    replacement = baseline_embeddings(run, clean, columns, baseline)
    # Sampled on the CPU (the same masks on every device for a seed), used where the embeddings are.
    masks = random_masks(trace.layout, trace.image_positions, n_masks, window, keep, seed).to(clean.device)
    first = min(t.first_logit for t in resolved)
    scores = torch.zeros(n_masks, len(resolved), device=clean.device)
    with inference_context(run):
        for start in progress(range(0, n_masks, batch_size), desc="mmviz: RISE", unit="batch"):
            m = masks[start : start + batch_size, :, None]
            blended = m * clean + (1 - m) * replacement
            # Every image column is replaced: the language model + head alone, not the vision tower per mask.
            logits = run.edited_forward(batch=len(m), edit=replacing_columns(columns, blended), first_logit=first)
            for row, target in enumerate(resolved):
                scores[start : start + len(m), row] = target(logits, run.input_ids, first)
    centred = scores - scores.mean(dim=0, keepdim=True)
    saliency = (centred.T @ masks) / (n_masks * keep)
    return rise.spec.map(  # type: ignore[attr-defined]
        values=saliency.cpu().numpy(),
        positions=np.array([t.position for t in resolved]),
        columns=trace.image_positions,
        info={
            "n_masks": n_masks,
            "window": window,
            "keep": keep,
            "baseline": baseline,
            "seed": seed,
            "forward": run.edited_path,
        },
    )
