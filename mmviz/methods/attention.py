"""Raw attention (M1): where each text token's query reads in the image, aggregated over heads and layers.

Attention says where a head READS, not what caused the answer. Sink tokens (the first token, and positions with
outlying residual norms) soak up attention regardless of content; ``mask_sinks`` removes them and renormalises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from mmviz import selection
from mmviz.errors import InputError
from mmviz.records import Map, Trace, method, variant

MEANING = (
    "Softmax attention from the token's query to each image token: where the head reads, not what caused the answer."
)
MAX_MEANING = (
    "The largest attention any head of the layer pays from the token to each image token: a patch that one head "
    "reads strongly stands out even when the mean over heads hides it."
)
SINKS_MEANING = (
    "Attention (mean of heads) with the attention-sink tokens removed (the first token, and tokens whose residual "
    "norm is an outlier when hidden states were captured) and each row renormalised over what is left: sinks soak "
    "up attention regardless of content, so the rest shows more clearly."
)


def sink_positions(trace: Trace, ratio: float = 8.0) -> np.ndarray:
    """Attention-sink candidates: the first position, plus positions whose residual norm is an outlier.

    With hidden states captured (``CapturePlan(hidden_states=True)``), a position whose ‖h‖ exceeds ``ratio`` ×
    the median norm in any layer counts as a sink (massive activations, arXiv 2402.17762); without them only the
    first position is returned.

    Example:
        >>> sink_positions(trace)                          # doctest: +SKIP
        array([0])
    """
    sinks = {0}
    if trace.hidden_states is not None:
        norms = np.linalg.norm(trace.hidden_states[1:], axis=-1)  # (L, N), after each layer
        median = np.median(norms, axis=1, keepdims=True)
        sinks |= set(np.flatnonzero((norms > ratio * median).any(axis=0)).tolist())
    return np.array(sorted(sinks), dtype=np.int64)


@method("attention", label="Attention", meaning=MEANING, per_layer=True, targeted=False, cost="instant", rows="queries")
def attention(
    trace: Trace,
    *,
    heads: Literal["mean", "max"] | int | Sequence[int] = "mean",
    layers: Sequence[int] | None = None,
    normalise: Literal["raw", "image"] = "raw",
    mask_sinks: bool | Sequence[int] = False,
) -> Map:
    """Attention rows of every recorded text token over the image tokens, one slice per layer.

    Args:
        heads: ``"mean"`` or ``"max"`` over heads, one head ``0 … H−1``, or a list of heads to average.
        layers: restrict to these captured decoder layers (default: all captured).
        normalise: ``"raw"`` probabilities, or ``"image"``: renormalised over the image tokens (shares of the
            attention that reaches the image).
        mask_sinks: True removes :func:`sink_positions` (or the given positions) from every row and renormalises.

    Example:
        >>> m = attention(trace, heads="max", mask_sinks=True)     # doctest: +SKIP
        >>> m.values.shape                          # (layers, text rows, image tokens)   # doctest: +SKIP
        (32, 14, 576)
    """
    rows = trace.attention_rows  # (L, H, Q, N)
    layer_index = np.arange(len(trace.layers))
    if layers is not None:
        wanted = selection.layers(layers, trace.num_layers)
        selection.captured(wanted, trace.layers.tolist())
        layer_index = np.array([int(np.flatnonzero(trace.layers == layer)[0]) for layer in wanted])
    rows = rows[layer_index]
    if mask_sinks is not False:
        sinks = sink_positions(trace) if mask_sinks is True else np.asarray(mask_sinks, dtype=np.int64)
        rows = rows.copy()
        rows[..., sinks] = 0.0
        rows /= np.maximum(rows.sum(axis=-1, keepdims=True), 1e-12)
    columns = trace.image_positions
    values = rows[..., columns]
    if normalise == "image":
        values = values / np.maximum(values.sum(axis=-1, keepdims=True), 1e-12)
    elif normalise != "raw":
        raise InputError(f"normalise must be 'raw' or 'image', not {normalise!r}")
    values = _aggregate_heads(values, heads, trace)
    return attention.spec.map(  # type: ignore[attr-defined]
        values=values,
        positions=trace.query_positions,
        columns=columns,
        layers=trace.layers[layer_index],
        info={"heads": heads, "normalise": normalise, "sinks_masked": mask_sinks is not False},
    )


variant(attention, "attention_max", label="Attention (max over heads)", meaning=MAX_MEANING, heads="max")
variant(attention, "attention_sinks_masked", label="Attention, sinks masked", meaning=SINKS_MEANING, mask_sinks=True)


def _aggregate_heads(values: np.ndarray, heads: object, trace: Trace) -> np.ndarray:
    if trace.head_mean and heads != "mean":
        raise InputError("only the head mean was captured (CapturePlan(head_mean=True)); use heads='mean'")
    if heads in ("mean", "max"):
        return values.mean(axis=1) if heads == "mean" else values.max(axis=1)
    picked = (
        [selection.head(heads, trace.num_heads, named=())]
        if isinstance(heads, (int, np.integer))
        else list(selection.heads(heads, trace.num_heads))
    )
    return values[:, picked].mean(axis=1)
