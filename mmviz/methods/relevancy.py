"""Generic attention relevancy (Chefer et al. 2021, arXiv 2103.15679) without eager attention.

Per target F and layer ℓ: Ā_ℓ = mean_h (∇A_{ℓ,h} ⊙ A_{ℓ,h})⁺, and the target row of R = (I + Ā_L)…(I + Ā_1), minus
the identity, read at the image positions. The gradient of the attention probabilities comes from the identity
∂F/∂A_h = (∂F/∂O_h)·V_hᵀ (O_h = A_h·V_h, the head's output entering the output projection), with A_h recomputed from
the stashed post-RoPE q, k and the layer's real mask — so the model keeps its fast attention. One forward is shared
by all targets; each target gets one fresh backward.

Only the target's row of R is needed, and its step r ← r + r·Ā_ℓ is Σ_i r[i]·Ā_ℓ[i, :]: Ā_ℓ is built one block of
query rows at a time and never whole, the rows where r is exactly zero (in a causal model, every row after the
target) are skipped, and the block size follows a memory budget (:func:`~mmviz.capture.plan.relevancy_transient_bytes`
bounds one layer's step). Everything stays on the device of the stashed tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.capture.attention import AttentionRecorder, recording, row_scores
from mmviz.capture.plan import default_budget, relevancy_rows_per_chunk
from mmviz.errors import InputError
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

DEFAULT_BUDGET = 256 * 2**20
"""Transient bytes per layer step by default: blocks of a few hundred query rows are measured no slower than one
block of all rows (``benchmarks/methods.py``), and keep the step far below the model's own memory."""

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

    def device(self) -> torch.device:
        """Where the stashed tensors (and so every relevance vector) live."""
        return next(iter(self.saved.values()))[1].device

    def propagate(self, relevance: torch.Tensor, *, item: int = 0, budget_bytes: int | None = None) -> torch.Tensor:
        """``r·(I + Ā_L)…(I + Ā_1)`` for the float32 row ``relevance`` (length N, on :meth:`device`), last layer
        first, for batch row ``item``; see :meth:`step`.

        Example:
            >>> row = torch.zeros(n, device=stash.device()); row[target] = 1.0          # doctest: +SKIP
            >>> stash.propagate(row, budget_bytes=2**30)                                # doctest: +SKIP
        """
        for layer in sorted(self.saved, reverse=True):
            relevance = self.step(layer, relevance, item=item, budget_bytes=budget_bytes)
        return relevance

    def step(
        self, layer: int, relevance: torch.Tensor, *, item: int = 0, budget_bytes: int | None = None
    ) -> torch.Tensor:
        """``r + r·Ā_ℓ`` with Ā_ℓ = mean over heads of (∇A ⊙ A)⁺, built a block of query rows at a time.

        Only the rows where ``r`` is non-zero are computed, as many per block as
        :func:`~mmviz.capture.plan.relevancy_rows_per_chunk` allows within ``budget_bytes`` (None: the default
        budget), so no ``H × N × N`` tensor ever exists; a layer F does not depend on (no gradient reached it, e.g.
        vision layers after the one the projector reads) leaves ``r`` as it is.

        Example:
            >>> stash.step(layer, row, budget_bytes=2**28)                              # doctest: +SKIP
        """
        if layer not in self.grads:
            return relevance
        module, query, key, value, mask, scaling, kwargs = self.saved[layer]
        relevance = relevance.to(query.device)  # a model split over devices: each layer's step runs on its device
        heads, n = query.shape[1], query.shape[2]
        rows_per_chunk = relevancy_rows_per_chunk(heads, n, query.shape[3], budget_bytes)  # before any allocation
        # skipping rows where r is exactly zero changes nothing: Ā is finite (nan_to_num), so 0·Ā[i, :] = 0
        active = torch.nonzero(relevance).flatten()
        if not active.numel():
            return relevance
        one = slice(item, item + 1)
        if mask is not None and mask.shape[0] > 1:
            mask = mask[one]
        updated = relevance.clone()
        # fp32 head terms, also under torch.autocast; no graph: the stash is detached and this is bookkeeping
        with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
            group = heads // key.shape[1]  # GQA: a key/value head shared by a group of query heads, repeated once
            keys = key[one].float().repeat_interleave(group, dim=1)  # per layer, not per block (row_scores would)
            values_t = value[item].float().repeat_interleave(group, dim=0).transpose(-1, -2)  # (H, d, N)
            output_grad = self.grads[layer][item].float().transpose(0, 1)  # (H, N, d)
            size = min(rows_per_chunk, active.numel())
            # two buffers reused by every block (no allocation per block); a shorter last block uses their front
            score_buffer = torch.empty(heads * size * n, device=query.device)
            grad_buffer = torch.empty(heads * size * n, device=query.device)
            for start in range(0, active.numel(), size):
                rows = active[start : start + size]
                shape = (heads, rows.numel(), n)
                used = heads * rows.numel() * n
                scores = row_scores(
                    module, query[one], keys, mask, scaling, rows, kwargs, out=score_buffer[:used].view(1, *shape)
                )
                torch.softmax(scores, dim=-1, out=scores)  # in place: the probabilities replace the scores
                weighted = torch.matmul(output_grad[:, rows], values_t, out=grad_buffer[:used].view(shape))
                weighted.mul_(scores[0]).clamp_(min=0).nan_to_num_()  # (∇A ⊙ A)⁺, in place
                updated.add_(relevance[rows] @ weighted.mean(dim=0))  # Σ_i r[i]·Ā[i, :] over this block's rows
        return updated


@method("relevancy", label=LABEL, meaning=MEANING, sequence_positions=True)
def relevancy(
    trace: Trace, targets: TargetLike = None, *, vision: bool = False, budget_bytes: int | None = None
) -> Map:
    """Chefer relevancy of every image token for each target (default: each answer token's log-probability).

    Cost: one forward shared by all targets, then per target one backward and one recompute of each layer's
    attention probabilities, for the query rows the target's relevance has reached. The model keeps its own
    attention implementation.

    With ``vision=True`` the language model's relevancy of the image tokens continues through the vision tower's
    self-attention (LVLM-Interpret's composition: m ← m·(I + Ā_v,ℓ) from the last vision layer down), for
    families whose image tokens are vision-tower tokens one to one (the adapter's ``vision_token_index``).

    ``budget_bytes`` (None: :data:`DEFAULT_BUDGET`, or the machine's default budget if that is smaller) bounds the
    transient memory of one layer's step (:func:`~mmviz.capture.plan.relevancy_transient_bytes`): the attention
    terms are built as many query rows at a time as fit. The result does not depend on it; if not even one row
    fits, :class:`~mmviz.capture.CaptureBudgetError` is raised before the model runs.

    Example:
        >>> m = mmviz.methods.relevancy(trace)                       # doctest: +SKIP
        >>> m.values.shape                                           # (answer tokens, image tokens)   # doctest: +SKIP
        (3, 576)
        >>> m = mmviz.methods.relevancy(trace, budget_bytes=2**30)   # at most ≈1 GiB per layer   # doctest: +SKIP
    """
    if budget_bytes is not None and (
        isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1
    ):
        raise InputError(f"budget_bytes must be a positive number of bytes (e.g. 2**30) or None, not {budget_bytes!r}")
    if budget_bytes is None:
        budget_bytes = min(DEFAULT_BUDGET, default_budget())
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    adapter = run.adapter
    n = run.length
    columns = sequence_image_positions(trace, "relevancy")
    stash, vision_stash = AttentionStash(), AttentionStash()
    recorders: dict[str, AttentionRecorder | None] = {adapter.text_config_key: stash}
    inputs = run.inputs
    edit: EmbeddingLeaf | None = EmbeddingLeaf()
    # the same check each layer makes, from the config: a budget too small fails now, not after the forward
    _check_budget(run.model.config, adapter.text_config_key, n, budget_bytes)
    if vision:
        vision_index = adapter.vision_token_index(trace.layout)
        if vision_index is None:
            raise InputError(f"{adapter.family}: image tokens are not vision-tower tokens one to one; use vision=False")
        _check_budget(run.model.config, adapter.vision_config_key, adapter.vision_tokens_per_image(), budget_bytes)
        recorders[adapter.vision_config_key] = vision_stash
        inputs = {**inputs, "pixel_values": inputs["pixel_values"].detach().float().requires_grad_(True)}
        edit = None  # the gradient leaf is the pixels, so the graph runs through the vision tower
    rows: list[np.ndarray] = []
    composed: list[np.ndarray] = []

    def propagate(_: int, target: Any) -> None:
        relevance = torch.zeros(n, device=stash.device())  # beside the stashed q, k, v: no device round trips
        relevance[target.first_logit] = 1.0
        relevance = stash.propagate(relevance, budget_bytes=budget_bytes)
        relevance[target.first_logit] -= 1.0
        rows.append(relevance.cpu().numpy())
        if vision:
            image_relevance = relevance[torch.as_tensor(columns, device=relevance.device)]
            composed.append(_through_vision(vision_stash, image_relevance, vision_index, budget_bytes))
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


def _check_budget(config: Any, key: str, n_positions: int, budget_bytes: int | None) -> None:
    """:func:`relevancy_rows_per_chunk` from the sub-model config ``config.<key>`` ("" = ``config``): raises if not
    one row fits. A config without the usual head sizes is left to the check each layer makes on the real tensors."""
    config = getattr(config, key, None) if key else config
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(heads, int) or not isinstance(hidden, int) or heads < 1 or n_positions < 1:
        return
    head_dim = getattr(config, "head_dim", None)
    relevancy_rows_per_chunk(
        heads, n_positions, head_dim if isinstance(head_dim, int) else hidden // heads, budget_bytes
    )


def _through_vision(
    stash: AttentionStash, image_relevance: torch.Tensor, index: np.ndarray, budget_bytes: int | None
) -> np.ndarray:
    """Continue the image tokens' relevancy through each image's vision-tower self-attention, last layer first."""
    result = np.zeros(len(index), np.float32)
    device = stash.device()
    n_tokens = next(iter(stash.saved.values()))[1].shape[2]
    for image in np.unique(index[:, 0]):
        mine = np.flatnonzero(index[:, 0] == image)
        tokens = torch.as_tensor(index[mine, 1], device=device)
        relevance = torch.zeros(n_tokens, device=device)
        relevance[tokens] = image_relevance[torch.as_tensor(mine, device=device)].to(device)
        relevance = stash.propagate(relevance, item=int(image), budget_bytes=budget_bytes)
        result[mine] = relevance[tokens].cpu().numpy()
    return result
