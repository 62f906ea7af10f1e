"""Grad-CAM on the language model's image positions (LLaVA-CAM, arXiv 2406.06579), for every layer at once.

At layer ℓ, X = h_ℓ[image positions] (P × d); α = mean over positions of ∂F/∂X; cam = ReLU(X·α). One forward and
one backward per target give every layer's map (the per-layer "information flow" view).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.methods.common import (
    EmbeddingLeaf,
    backward_per_target,
    first_logit_of,
    gradient_context,
    model_run,
    sequence_image_positions,
)
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.records import Map, Trace, method

LABEL = "Grad-CAM (per layer)"
MEANING = (
    "Grad-CAM at the chosen layer's image tokens: activations weighted by the average gradient of the score. "
    "High where the layer holds features that raise the score; ReLU hides negative evidence."
)


@method("grad_cam", label=LABEL, meaning=MEANING, per_layer=True, sequence_positions=True)
def grad_cam(trace: Trace, targets: TargetLike = None) -> Map:
    """Grad-CAM maps at every decoder layer's output, per target (default: each answer token).

    Returns a per-layer :class:`Map` ``(L, targets, image tokens)``; ``layers[ℓ]`` is the decoder layer whose
    output was used.

    Example:
        >>> m = grad_cam(trace)                                       # doctest: +SKIP
        >>> m.row(trace.answer_start, layer=2).shape                  # doctest: +SKIP
        (576,)
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = torch.as_tensor(sequence_image_positions(trace, "grad_cam"), dtype=torch.long)
    layers = run.adapter.decoder_layers()
    outputs: dict[int, torch.Tensor] = {}
    grads: dict[int, torch.Tensor] = {}

    def keep(index: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output  # the tensor the next layer reads
            active = run.adapter.active_stream
            outputs[index] = active(hidden.detach())[0, columns].float()
            hidden.register_hook(lambda grad: grads.__setitem__(index, active(grad.detach())[0, columns].float()))

        return hook

    maps = np.zeros((len(layers), len(resolved), len(columns)), np.float32)

    def collect(row: int, _: Any) -> None:
        for index in range(len(layers)):
            weights = grads[index].mean(dim=0)
            maps[index, row] = torch.relu(outputs[index] @ weights).cpu().numpy()

    leaf = EmbeddingLeaf()
    handles = [layer.register_forward_hook(keep(index)) for index, layer in enumerate(layers)]
    first = first_logit_of(resolved)
    try:
        with gradient_context(run):
            logits = run.forward(edit=leaf, first_logit=first)
            backward_per_target(resolved, logits, run.input_ids, first, [leaf.tensor], collect, desc="mmviz: grad-cam")
    finally:
        for handle in handles:
            handle.remove()
    return grad_cam.spec.map(  # type: ignore[attr-defined]
        values=maps,
        positions=np.array([t.position for t in resolved]),
        columns=trace.image_positions,
        layers=np.arange(len(layers)),
        info={"target": resolved[0].score, "activation": "decoder layer output at image positions"},
    )
