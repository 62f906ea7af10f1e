"""Attention rollout (Abnar & Zuidema 2020, arXiv 2005.00928) with the residual fix.

Â_ℓ = rownorm(w·Ā_ℓ + (1 − w)·I), R = Â_L…Â_1, read per query row. It needs every row of every layer, so it
re-runs the model once with all rows recorded as head means (never L·H·N² at once). Rollout is the same for every
answer token (target-agnostic) and collapses onto sink tokens in decoders: ``mask_sinks`` drops them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmviz import selection
from mmviz.capture.attention import AttentionRecorder, recording
from mmviz.errors import InputError
from mmviz.methods.common import inference_context, model_run, sequence_image_positions
from mmviz.progress import progress
from mmviz.records import Map, Trace, method

LABEL = "Attention rollout"
MEANING = (
    "Attention rollout: attention multiplied through the layers with the residual path added — how much each "
    "image token can have flowed into this position. The same for every target; not an attribution."
)


@method("rollout", label=LABEL, meaning=MEANING, targeted=False, rows="queries", sequence_positions=True)
def rollout(
    trace: Trace,
    *,
    residual: float = 0.5,
    start_layer: int = 0,
    mask_sinks: bool | Sequence[int] = False,
) -> Map:
    """Rolled-out attention from every text position to the image tokens.

    Args:
        residual: weight of the identity (the residual stream) in each layer's matrix, in [0, 1).
        start_layer: first decoder layer of the product (later starts avoid early-layer mixing artefacts).
        mask_sinks: True drops the first position (or the given positions) from every layer and renormalises.

    Example:
        >>> m = rollout(trace, mask_sinks=True)                      # doctest: +SKIP
        >>> m.text_values.sum(axis=1)                                # full rows sum to one   # doctest: +SKIP
        array([1., 1., ...], dtype=float32)
    """
    if not 0.0 <= residual < 1.0:
        raise InputError(f"residual must lie in [0, 1), not {residual}")
    run = model_run(trace)
    columns = sequence_image_positions(trace, "rollout")
    n = run.length
    start_layer = int(selection.layer(start_layer, trace.num_layers, mean=False, name="start_layer"))
    sinks = np.array([0]) if mask_sinks is True else np.asarray(mask_sinks or [], dtype=np.int64)
    queries = torch.as_tensor(trace.query_positions, dtype=torch.long)
    product = torch.zeros(len(queries), n, dtype=torch.float64)
    product[torch.arange(len(queries)), queries] = 1.0
    recorder = AttentionRecorder(None, head_mean=True)
    with inference_context(run), recording(run.model, {run.adapter.text_config_key: recorder}):
        run.forward(first_logit=n - 1)
    for layer in progress(range(trace.num_layers - 1, start_layer - 1, -1), desc="mmviz: rollout"):
        mixed = recorder.rows[layer][0, 0].double()  # (N, N) head mean
        if len(sinks):
            mixed[:, sinks] = 0.0
            mixed = mixed / mixed.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        step = residual * torch.eye(n, dtype=torch.float64) + (1.0 - residual) * mixed
        product = product @ (step / step.sum(dim=-1, keepdim=True))
    text_values = product.float().numpy()
    return rollout.spec.map(  # type: ignore[attr-defined]
        values=text_values[:, columns],
        positions=trace.query_positions,
        columns=columns,
        text_values=text_values,
        info={"residual": residual, "start_layer": start_layer, "sinks": sinks.tolist()},
    )
