"""``neurons(trace, layer)``: one decoder layer's MLP neurons at every position of a trace, top k kept."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.capture.plan import CaptureBudgetError, default_budget
from mmviz.features.codes import TopActivations, check_k, top_k
from mmviz.features.states import direction_tokens
from mmviz.methods.common import inference_context, model_run
from mmviz.records import Trace
from mmviz.selection import layers as checked_layers


def neurons(trace: Trace, layer: int, *, k: int = 32, budget_bytes: int | None = None) -> TopActivations:
    """The MLP activations of decoder ``layer`` (the input of its output projection: ``act(gate)·up`` in gated
    MLPs) at every position, from one forward; the ``k`` most active neurons per position are the compact view,
    and every neuron's exact activation stays available in float16.

    The capture (float32 while recorded, float16 kept) is checked against ``budget_bytes`` (default:
    :func:`mmviz.capture.default_budget`) before the forward runs.

    Example:
        >>> mlp = mmviz.features.neurons(trace, layer=2, k=32)             # doctest: +SKIP
        >>> mlp.card(mlp.top_at(trace.image_positions[0])[0][0]).top_tokens   # doctest: +SKIP
    """
    k = check_k(k)
    (layer,) = checked_layers([layer], trace.num_layers)
    run = model_run(trace)
    projection = run.adapter.mlp_output_projection(layer)
    width = int(projection.weight.shape[1])
    needed = run.length * width * (4 + 2)
    budget = default_budget() if budget_bytes is None else budget_bytes
    if needed > budget:
        raise CaptureBudgetError(
            f"the MLP activations of layer {layer} take {needed:,} bytes ({run.length} positions × {width} neurons), "
            f"over the budget of {budget:,}; raise budget_bytes"
        )
    seen: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach()[0].float())

    handle = projection.register_forward_pre_hook(keep)
    try:
        with inference_context(run):
            run.forward(first_logit=run.length - 1)
    finally:
        handle.remove()
    activations = seen[0]
    indices, values = top_k(activations, k)
    limit = torch.finfo(torch.float16).max
    dense = activations.clamp(-limit, limit).to(torch.float16).cpu().numpy()
    weight = projection.weight.detach()
    return TopActivations(
        kind="neurons",
        layer=layer,
        width=width,
        indices=indices,
        values=values,
        _exact=lambda unit: dense[:, unit].astype(np.float32),
        _direction=lambda unit: direction_tokens(trace, weight[:, unit].float()),
    )
