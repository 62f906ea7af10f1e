"""Generic attention relevancy (Chefer et al. 2021, arXiv 2103.15679) without eager attention.

Per target F and layer ℓ: Ā_ℓ = mean_h (∇A_{ℓ,h} ⊙ A_{ℓ,h})⁺, and the target row of R = (I + Ā_L)…(I + Ā_1), minus
the identity, read at the image positions. The gradient of the attention probabilities comes from the identity
∂F/∂A_h = (∂F/∂O_h)·V_hᵀ (O_h = A_h·V_h, the head's output entering the output projection), with A_h recomputed from
the stashed post-RoPE q, k and the layer's real mask — so the model keeps its fast attention, and memory holds one
layer's H×N×N at a time. One forward is shared by all targets; each target gets one fresh backward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmviz.capture.attention import AttentionRecorder, recording, row_scores
from mmviz.methods._backprop import EmbeddingLeaf, backward_per_target, first_logit_of, frozen_with_grad, model_run
from mmviz.methods.map import Map
from mmviz.methods.target import TargetLike, resolve_targets

if TYPE_CHECKING:
    from mmviz.tracing import Trace

LABEL = "Relevancy (Chefer)"
MEANING = (
    "Gradient-weighted attention propagated through every layer (Chefer et al.): how much each image token "
    "contributed, through attention, to the model's score for this token. Positive evidence only."
)


class AttentionStash(AttentionRecorder):
    """Keeps each layer's post-RoPE q, k, v and mask, and the gradient at the attention output (per backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[int, tuple[Any, ...]] = {}
        self.grads: dict[int, torch.Tensor] = {}

    def record(self, layer, module, query, key, value, attention_mask, scaling, kwargs, output) -> None:  # type: ignore[override]
        self.saved[layer] = (module, query.detach(), key.detach(), value.detach(), attention_mask, scaling, kwargs)
        if output.requires_grad:
            output.register_hook(lambda grad, layer=layer: self.grads.__setitem__(layer, grad.detach()))

    def head_relevance(self, layer: int) -> torch.Tensor:
        """Ā_ℓ = mean over heads of (∇A ⊙ A)⁺, float32 ``(N, N)`` (batch row 0)."""
        module, query, key, value, mask, scaling, kwargs = self.saved[layer]
        n = query.shape[2]
        probabilities = torch.softmax(
            row_scores(
                module, query[:1], key[:1], None if mask is None else mask[:1], scaling, torch.arange(n), kwargs
            ),
            dim=-1,
        )[0]
        heads = query.shape[1]
        values = value[0].float().repeat_interleave(heads // value.shape[1], dim=0)  # GQA: V shared within a group
        output_grad = self.grads[layer][0].float().transpose(0, 1)  # (H, N, d)
        attention_grad = output_grad @ values.transpose(-1, -2)
        return (attention_grad * probabilities).clamp(min=0).nan_to_num().mean(dim=0)


def relevancy(trace: Trace, targets: TargetLike = None) -> Map:
    """Chefer relevancy of every image token for each target (default: each answer token's log-probability).

    Cost: one forward shared by all targets, then per target one backward and one recompute of each layer's
    attention probabilities. The model keeps its own attention implementation.

    Example:
        >>> m = mmviz.methods.relevancy(trace)                       # doctest: +SKIP
        >>> m.values.shape                                           # (answer tokens, image tokens)   # doctest: +SKIP
        (3, 576)
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    adapter = run.adapter
    n = run.length
    stash = AttentionStash()
    leaf = EmbeddingLeaf()
    rows: list[np.ndarray] = []

    def propagate(_: int, target: Any) -> None:
        relevance = torch.zeros(n)
        relevance[target.first_logit] = 1.0
        for layer in sorted(stash.saved, reverse=True):
            relevance = relevance + relevance @ stash.head_relevance(layer)
        relevance[target.first_logit] -= 1.0
        rows.append(relevance.numpy())

    first = first_logit_of(resolved)
    with frozen_with_grad(run), recording(run.model, {adapter.text_config_key: stash}):
        logits = run.forward(edit=leaf, first_logit=first)
        backward_per_target(resolved, logits, run.input_ids, first, [leaf.tensor], propagate, desc="mmviz: relevancy")
    text_values = np.stack(rows).astype(np.float32)
    columns = trace.image_positions
    return Map(
        method="relevancy",
        label=LABEL,
        meaning=MEANING,
        values=text_values[:, columns],
        positions=np.array([t.position for t in resolved]),
        columns=columns,
        text_values=text_values,
        info={"target": resolved[0].score, "rule": "self-attention rule, heads averaged after (∇A⊙A)⁺"},
    )
