"""Embedding projections of image and text tokens across layers (M19) and the modality gap per layer (M17).

Every layer's states are centred and L2-normalised (the residual norm grows with depth), then ONE projection is
fitted on all layers together, so a point moves smoothly when the layer changes (independent per-layer fits are
unaligned). PCA by default; UMAP (``umap-learn``) as an option, fitted once on all layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mmviz.adapters.layout import IMAGE, QUERY
from mmviz.capture.hidden import recording_hidden_states
from mmviz.errors import InputError
from mmviz.methods.common import inference_context, model_run
from mmviz.records import Trace, kept_result


@kept_result("projection")
@dataclass(frozen=True)
class Projection:
    """2-D coordinates of every position at every depth, in one shared frame.

    Attributes:
        coords: float32 ``(L + 1, N, 2)``; depth 0 = embeddings, ℓ = after decoder layer ℓ − 1.
        is_image: ``(N,)`` True for positions that carry the image (image tokens; BLIP-2's query tokens).
        grid: ``(N, 2)`` grid row/column of image positions (-1 for text; colour by grid position).
        modality_gap: float32 ``(L + 1,)`` cosine distance between the mean image and mean text state per depth.
        explained: fraction of variance the two components explain (PCA only, else NaN).
        method: ``"pca"`` or ``"umap"``.
    """

    coords: np.ndarray
    is_image: np.ndarray
    grid: np.ndarray
    modality_gap: np.ndarray
    explained: float
    method: str


def projection(trace: Trace, *, method: Literal["pca", "umap"] = "pca", seed: int = 0) -> Projection:
    """Project every position's hidden state at every depth into one aligned 2-D frame (kept on the trace, which
    the widget's projection panel and the plots share).

    Example:
        >>> p = projection(trace)                                        # doctest: +SKIP
        >>> p.coords.shape                                               # (depths, positions, 2)   # doctest: +SKIP
        (33, 620, 2)
    """
    return trace.computed(projection_key(method, seed), lambda: _project(trace, method, seed))


def projection_key(method: str = "pca", seed: int = 0) -> str:
    """The key under which :func:`projection` keeps its result in ``trace.results`` (and trace files keep it)."""
    return f"projection:{method}:{seed}"


def _project(trace: Trace, method: str, seed: int) -> Projection:
    states = _hidden_states(trace)  # (D, N, d)
    is_image = np.isin(trace.layout.kinds, [IMAGE, QUERY])
    if not is_image.any() or is_image.all():
        raise InputError("a projection needs both image and text positions")
    centred = states - states.mean(axis=1, keepdims=True)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)
    flat = unit.reshape(-1, unit.shape[-1])
    if method == "pca":
        mean = flat.mean(axis=0)
        _, singular, vectors = np.linalg.svd(flat - mean, full_matrices=False)
        coords = (flat - mean) @ vectors[:2].T
        explained = float((singular[:2] ** 2).sum() / (singular**2).sum())
    elif method == "umap":
        try:
            import umap
        except ImportError:
            raise InputError("method='umap' needs umap-learn: pip install umap-learn") from None
        coords = umap.UMAP(n_neighbors=15, metric="cosine", random_state=seed).fit_transform(flat)
        explained = float("nan")
    else:
        raise InputError(f"method must be 'pca' or 'umap', not {method!r}")
    image_mean = states[:, is_image].mean(axis=1)
    text_mean = states[:, ~is_image].mean(axis=1)
    cosine = (image_mean * text_mean).sum(-1) / np.maximum(
        np.linalg.norm(image_mean, axis=-1) * np.linalg.norm(text_mean, axis=-1), 1e-12
    )
    return Projection(
        coords=coords.reshape(states.shape[0], states.shape[1], 2).astype(np.float32),
        is_image=is_image,
        grid=np.where(is_image[:, None], trace.layout.grid, -1),
        modality_gap=(1.0 - cosine).astype(np.float32),
        explained=explained,
        method=method,
    )


def _hidden_states(trace: Trace) -> np.ndarray:
    if trace.hidden_states is not None:
        return trace.hidden_states.astype(np.float32)
    run = model_run(trace)
    layers = run.adapter.decoder_layers()
    with inference_context(run), recording_hidden_states(layers, readout=run.adapter.residual) as hidden:
        run.forward(first_logit=run.length - 1)
    return torch.stack([hidden[i][0] for i in sorted(hidden)]).numpy()
