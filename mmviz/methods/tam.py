"""Token activation maps (TAM, Li et al., ICCV 2025, arXiv 2506.23270): the explained token's logit read at every
image position, with the interference of earlier context tokens removed, then a rank-Gaussian filter.

For the token c explained at position t, with z(h) = the model's logits at a position (final norm + unembedding
of the last layer's hidden state, exactly ``adapter.lens_logits`` of the last layer) and ReLU(·) = max(·, 0):

1. activation map: m[p] = ReLU(z_c(h_p)) for every image position p;
2. estimated causal inference (ECI): every earlier text token j < t whose id differs from c (prompt text and
   earlier answer tokens; image tokens and copies of c excluded) has its own map M_j[p] = ReLU(z_{id_j}(h_p))
   and a weight w_j = ReLU(z_c(h_j)) / Σ_k ReLU(z_c(h_k)) (how strongly c is already active at token j). The
   interference is I = Σ_j w_j M_j, scaled by least squares, λ = ⟨m, I⟩ / ⟨I, I⟩ = argmin_λ ‖m − λI‖², and
   removed: r = ReLU(m − λ I) (r = m when there is no context or I = 0);
3. rank-Gaussian filter on each image's token grid: r is scaled to [0, 1] by its maximum; every cell takes the
   Gaussian-weighted mean of its 3 × 3 neighbourhood (reflect padding) SORTED by value, with weights
   exp(−k² / 2σ²) over the rank offset k = −4 … 4 from the median and σ = std / mean of the neighbourhood (its
   coefficient of variation): a robust, edge-keeping smoothing; a neighbourhood of zeros stays zero.

This follows the reference implementation's single-scalar least squares (one λ for the weighted interference
map), not a regression on every context map separately, which would overfit once the context has as many
tokens as the image. Cost: one forward; no gradients.
"""

from __future__ import annotations

import numpy as np
import torch

from mmviz.methods.common import grid_groups, inference_context, model_run, sequence_image_positions
from mmviz.methods.target import Target, TargetLike, resolve_targets
from mmviz.records import Map, Trace, method

LABEL = "Token activation map (TAM)"
MEANING = (
    "Token activation map: the logit of this token read at each image token's last-layer state, minus the "
    "activation that earlier context tokens explain (least squares), smoothed on the token grid. High where the "
    "image token already 'says' this word; not a causal effect."
)

KERNEL = 3
"""Neighbourhood side of the rank-Gaussian filter, in grid cells (the paper's 3)."""


@method("tam", label=LABEL, meaning=MEANING, sequence_positions=True)
def tam(trace: Trace, targets: TargetLike = None, *, filtered: bool = True) -> Map:
    """Token activation map of every target token (default: each answer token) over the image tokens.

    Args:
        filtered: apply the rank-Gaussian filter (False: the ECI residual r, scaled to [0, 1]).

    Every target is read as its first token's logit map; a :meth:`Target.contrast` target's map is that of
    z_c − z_other.

    Example:
        >>> m = mmviz.methods.tam(trace)                              # doctest: +SKIP
        >>> m.row(trace.answer_start).shape, m.info["interference_scale"]   # doctest: +SKIP
        ((576,), [0.41])
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    with inference_context(run):
        logits = run.forward(first_logit=0)[0]  # (N, V): the last layer's lens at every position
    ids = run.input_ids[0].to(logits.device)
    columns = sequence_image_positions(trace, "tam")
    image = np.zeros(len(logits), dtype=bool)
    image[columns] = True
    columns_t = torch.as_tensor(columns, device=logits.device)
    rows = np.zeros((len(resolved), len(columns)), np.float32)
    scales: list[float] = []
    for row, target in enumerate(resolved):
        residual, scale = _eci(logits, ids, columns_t, image, target)
        scales.append(scale)
        peak = residual.max()
        residual = residual / peak if peak > 0 else residual
        rows[row] = rank_gaussian_filter(residual, trace, columns) if filtered else residual
    return tam.spec.map(  # type: ignore[attr-defined]
        values=rows,
        positions=np.array([t.position for t in resolved]),
        columns=columns,
        info={"target": resolved[0].score, "interference_scale": scales, "filtered": filtered, "kernel": KERNEL},
    )


def _eci(
    logits: torch.Tensor, ids: torch.Tensor, columns: torch.Tensor, image: np.ndarray, target: Target
) -> tuple[np.ndarray, float]:
    """The activation map of ``target`` at the image columns with the context's interference removed, and λ."""
    position = target.position
    token = int(ids[position])
    score = logits[:, token]
    if target.score == "contrast":
        score = score - logits[:, int(target.other)]  # type: ignore[arg-type]
    activation = score.clamp_min(0).double()  # (N,) ReLU(z_c) at every position
    own = activation[columns]
    context = [j for j in range(1, position) if not image[j] and int(ids[j]) != token]
    if not context:
        return own.cpu().numpy(), 0.0
    context_t = torch.as_tensor(context, device=logits.device)
    weights = activation[context_t]
    if float(weights.sum()) <= 0:
        return own.cpu().numpy(), 0.0
    weights = weights / weights.sum()
    maps = logits[columns][:, ids[context_t]].clamp_min(0).double()  # (P, C): M_j at the image columns
    interference = maps @ weights
    energy = float(interference @ interference)
    scale = float(own @ interference) / energy if energy > 0 else 0.0
    return (own - scale * interference).clamp_min(0).cpu().numpy(), scale


def rank_gaussian_filter(values: np.ndarray, trace: Trace, columns: np.ndarray, kernel: int = KERNEL) -> np.ndarray:
    """The rank-Gaussian filter of ``values`` (one per image column) on each (image, view) token grid.

    Columns without a grid cell are left as they are.

    Example:
        >>> rank_gaussian_filter(np.ones(16), trace, trace.image_positions)          # doctest: +SKIP
        array([1., 1., ...])
    """
    layout = trace.layout
    result = np.asarray(values, np.float64).copy()
    ax = np.arange(kernel * kernel) - kernel * kernel // 2  # rank offsets from the neighbourhood's median
    pad = kernel // 2
    for group in grid_groups(layout, columns):
        cells = layout.grid[columns[group]]
        if (cells < 0).any():
            continue
        height, width = (int(v) for v in layout.grid_shape[columns[group[0]]])
        grid = np.zeros((height, width))
        grid[cells[:, 0], cells[:, 1]] = result[group]
        padded = np.pad(grid, pad, mode="reflect") if min(height, width) > pad else np.pad(grid, pad, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel)).reshape(height, width, -1)
        ranked = np.sort(windows, axis=-1)
        mean = ranked.mean(axis=-1)
        sigma = ranked.std(axis=-1) / np.where(mean > 0, mean, 1.0)  # coefficient of variation
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            weights = np.exp(-(ax**2) / (2 * np.maximum(sigma, 1e-12)[..., None] ** 2))
        weights /= weights.sum(axis=-1, keepdims=True)
        filtered = np.where(mean > 0, (ranked * weights).sum(axis=-1), 0.0)
        result[group] = filtered[cells[:, 0], cells[:, 1]]
    return result
