"""Gradient-weighted attention at one decoder layer: where the row predicting the target reads, weighted by how
much reading there raises the target's score.

For target F (default: each answer token's log-probability), layer ℓ and the query row i = t − 1 that predicts
token t:

    gwa_ℓ[t, p] = mean_h A_{ℓ,h}[i, p] · ReLU(∂F/∂A_{ℓ,h}[i, p])

the one-layer term of Chefer et al.'s relevancy (arXiv 2103.15679) without its propagation through the other
layers. ∂F/∂A_h = (∂F/∂O_h)·V_hᵀ (O_h = A_h·V_h, the head's output), and A_h[i, :] is recomputed from the stashed
post-RoPE q, k and the layer's real mask (:class:`~mmviz.methods.relevancy.AttentionStash`), so the model keeps its
fast attention. Cost: one forward shared by all targets, one backward per target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz import selection
from mmviz.capture.attention import recording, row_scores
from mmviz.methods.common import (
    EmbeddingLeaf,
    backward_per_target,
    first_logit_of,
    gradient_context,
    model_run,
    sequence_image_positions,
)
from mmviz.methods.relevancy import AttentionStash
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.records import Map, Trace, method

LABEL = "Gradient-weighted attention (one layer)"
MEANING = (
    "Attention from the token predicting this one to each image token at one layer, times the positive part of "
    "the score's gradient with respect to that attention weight (mean over heads): where the layer reads AND "
    "reading more would raise the score. Positive evidence only; one layer, not the whole model."
)


def default_layer(num_layers: int) -> int:
    """A middle-to-late decoder layer: two thirds of the way up (layer 2 of 4, 21 of 32).

    Example:
        >>> default_layer(4), default_layer(32)
        (2, 21)
    """
    return min(num_layers - 1, (2 * num_layers) // 3)


class _OneLayerStash(AttentionStash):
    """:class:`AttentionStash` that keeps one layer only (q, k, v of the others are never held)."""

    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def record(self, layer, module, query, key, value, attention_mask, scaling, kwargs, output) -> None:  # type: ignore[override]
        if layer == self.layer:
            super().record(layer, module, query, key, value, attention_mask, scaling, kwargs, output)


@method("grad_weighted_attention", label=LABEL, meaning=MEANING, sequence_positions=True)
def grad_weighted_attention(trace: Trace, targets: TargetLike = None, *, layer: int | None = None) -> Map:
    """Gradient-weighted attention of every target (default: each answer token) at decoder ``layer``.

    Args:
        layer: decoder layer ``0 … L−1`` (None: :func:`default_layer`).

    Example:
        >>> m = mmviz.methods.grad_weighted_attention(trace, layer=2)          # doctest: +SKIP
        >>> m.info["layer"], m.row(trace.answer_start).shape                   # doctest: +SKIP
        (2, (576,))
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    chosen = default_layer(trace.num_layers) if layer is None else selection.layer(layer, trace.num_layers, mean=False)
    stash = _OneLayerStash(int(chosen))  # type: ignore[arg-type]
    columns = sequence_image_positions(trace, "grad_weighted_attention")
    rows = np.zeros((len(resolved), len(columns)), np.float32)

    def weigh(index: int, target: Any) -> None:
        module, query, key, value, mask, scaling, kwargs = stash.saved[stash.layer]
        queries = torch.as_tensor([p - 1 for p in target.positions], device=query.device)  # the predicting rows
        with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
            probabilities = torch.softmax(row_scores(module, query[:1], key[:1], mask, scaling, queries, kwargs), -1)[0]
            group = query.shape[1] // value.shape[1]  # GQA: one value head per group of query heads
            values = value[0].float().repeat_interleave(group, dim=0)  # (H, N, d)
            output_grad = stash.grads[stash.layer][0].float().transpose(0, 1)[:, queries]  # (H, Q, d)
            gradient = output_grad @ values.transpose(-1, -2)  # ∂F/∂A = dO·Vᵀ, (H, Q, N)
            weighted = (probabilities * gradient.clamp_min(0)).mean(dim=0).sum(dim=0)  # heads, then target rows
        rows[index] = weighted[torch.as_tensor(columns, device=weighted.device)].cpu().numpy()
        stash.grads.clear()  # the next target's backward starts from nothing

    leaf = EmbeddingLeaf()
    first = first_logit_of(resolved)
    with gradient_context(run), recording(run.model, {run.adapter.text_config_key: stash}):
        logits = run.forward(edit=leaf, first_logit=first)
        leaves = [leaf.tensor]
        backward_per_target(resolved, logits, run.input_ids, first, leaves, weigh, desc="mmviz: grad × attention")
    return grad_weighted_attention.spec.map(  # type: ignore[attr-defined]
        values=rows,
        positions=np.array([t.position for t in resolved]),
        columns=columns,
        info={"target": resolved[0].score, "layer": int(chosen), "heads": "mean of A ⊙ (∂F/∂A)⁺"},  # type: ignore[arg-type]
    )
