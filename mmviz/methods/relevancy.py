"""Generic attention relevancy (Chefer et al. 2021, arXiv 2103.15679) without eager attention.

Per target F and layer ℓ: Ā_ℓ = mean_h (∇A_{ℓ,h} ⊙ A_{ℓ,h})⁺, and the target row of R = (I + Ā_L)…(I + Ā_1), minus
the identity, read at the image positions. The gradient of the attention probabilities comes from the identity
∂F/∂A_h = (∂F/∂O_h)·V_hᵀ (O_h = A_h·V_h, the head's output entering the output projection), with A_h recomputed from
the stashed post-RoPE q, k and the layer's real mask — so the model keeps its fast attention, and memory holds one
layer's H×N×N at a time. One forward is shared by all targets; each target gets one fresh backward.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.capture.attention import AttentionRecorder, recording, row_scores
from mmviz.errors import InputError
from mmviz.methods.common import EmbeddingLeaf, backward_per_target, first_logit_of, gradient_context, model_run
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.records import Map, Trace, method

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

    def head_relevance(self, layer: int, item: int = 0) -> torch.Tensor:
        """Ā_ℓ = mean over heads of (∇A ⊙ A)⁺, float32 ``(N, N)`` for batch row ``item`` (zero where F does not
        depend on the layer, e.g. vision layers after the one the projector reads)."""
        module, query, key, value, mask, scaling, kwargs = self.saved[layer]
        n = query.shape[2]
        if layer not in self.grads:
            return torch.zeros(n, n)
        one = slice(item, item + 1)
        if mask is not None and mask.shape[0] > 1:
            mask = mask[one]
        with torch.autocast(query.device.type, enabled=False):  # fp32 head terms, also under torch.autocast
            scores = row_scores(module, query[one], key[one], mask, scaling, torch.arange(n), kwargs)
            probabilities = torch.softmax(scores, dim=-1)[0]
            heads = query.shape[1]
            values = value[item].float().repeat_interleave(heads // value.shape[1], dim=0)  # GQA: V shared in a group
            output_grad = self.grads[layer][item].float().transpose(0, 1)  # (H, N, d)
            attention_grad = output_grad @ values.transpose(-1, -2)
            return (attention_grad * probabilities).clamp(min=0).nan_to_num().mean(dim=0)


@method("relevancy", label=LABEL, meaning=MEANING)
def relevancy(trace: Trace, targets: TargetLike = None, *, vision: bool = False) -> Map:
    """Chefer relevancy of every image token for each target (default: each answer token's log-probability).

    Cost: one forward shared by all targets, then per target one backward and one recompute of each layer's
    attention probabilities. The model keeps its own attention implementation.

    With ``vision=True`` the language model's relevancy of the image tokens continues through the vision tower's
    self-attention (LVLM-Interpret's composition: m ← m·(I + Ā_v,ℓ) from the last vision layer down), for
    families whose image tokens are vision-tower tokens one to one (the adapter's ``vision_token_index``).

    Example:
        >>> m = mmviz.methods.relevancy(trace)                       # doctest: +SKIP
        >>> m.values.shape                                           # (answer tokens, image tokens)   # doctest: +SKIP
        (3, 576)
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    adapter = run.adapter
    n = run.length
    columns = trace.image_positions
    stash, vision_stash = AttentionStash(), AttentionStash()
    recorders: dict[str, AttentionRecorder | None] = {adapter.text_config_key: stash}
    inputs = run.inputs
    edit: EmbeddingLeaf | None = EmbeddingLeaf()
    if vision:
        vision_index = adapter.vision_token_index(trace.layout)
        if vision_index is None:
            raise InputError(f"{adapter.family}: image tokens are not vision-tower tokens one to one; use vision=False")
        recorders[adapter.vision_config_key] = vision_stash
        inputs = {**inputs, "pixel_values": inputs["pixel_values"].detach().float().requires_grad_(True)}
        edit = None  # the gradient leaf is the pixels, so the graph runs through the vision tower
    rows: list[np.ndarray] = []
    composed: list[np.ndarray] = []

    def propagate(_: int, target: Any) -> None:
        relevance = torch.zeros(n)
        relevance[target.first_logit] = 1.0
        for layer in sorted(stash.saved, reverse=True):
            relevance = relevance + relevance @ stash.head_relevance(layer)
        relevance[target.first_logit] -= 1.0
        rows.append(relevance.numpy())
        if vision:
            composed.append(_through_vision(vision_stash, relevance[columns], vision_index))
        stash.grads.clear()  # the next target's backward starts from nothing
        vision_stash.grads.clear()

    first = first_logit_of(resolved)
    with gradient_context(run), recording(run.model, recorders):
        logits = run.forward(edit=edit, first_logit=first, inputs=inputs)
        leaves = [inputs["pixel_values"]] if edit is None else [edit.tensor]
        backward_per_target(resolved, logits, run.input_ids, first, leaves, propagate, desc="mmviz: relevancy")
    text_values = np.stack(rows).astype(np.float32)
    values = np.stack(composed).astype(np.float32) if vision else text_values[:, columns]
    return relevancy.spec.map(  # type: ignore[attr-defined]
        values=values,
        positions=np.array([t.position for t in resolved]),
        columns=columns,
        text_values=text_values,
        info={
            "target": resolved[0].score,
            "rule": "self-attention rule, heads averaged after (∇A⊙A)⁺",
            "through_vision_tower": vision,
        },
    )


def _through_vision(stash: AttentionStash, image_relevance: torch.Tensor, index: np.ndarray) -> np.ndarray:
    """Continue the image tokens' relevancy through each image's vision-tower self-attention, last layer first."""
    result = np.zeros(len(index), np.float32)
    for image in np.unique(index[:, 0]):
        mine = np.flatnonzero(index[:, 0] == image)
        tokens = torch.as_tensor(index[mine, 1])
        n_tokens = next(iter(stash.saved.values()))[1].shape[2]
        relevance = torch.zeros(n_tokens)
        relevance[tokens] = image_relevance[torch.as_tensor(mine)]
        for layer in sorted(stash.saved, reverse=True):
            relevance = relevance + relevance @ stash.head_relevance(layer, item=int(image))
        result[mine] = relevance[tokens].numpy()
    return result
