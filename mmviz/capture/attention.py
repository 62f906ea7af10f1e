"""mmviz's attention function: the stock SDPA output, plus exact probabilities for the query rows a view needs.

It is registered in transformers' ``AttentionInterface`` (with ``sdpa_mask`` in ``AttentionMaskInterface``, without
which it would receive no mask) and switched in for the language model only, for one analysis forward. The output
is computed by ``sdpa_attention_forward`` itself, so logits are those of the user's default path; the recorded rows
are ``softmax(q·kᵀ·scaling + mask)`` in float32 for the chosen query positions only (never the N×N matrix).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mmviz.capture.model_state import preserved

ATTENTION_NAME = "mmviz"


class AttentionRecorder:
    """Keeps the attention rows of chosen query positions, per layer, as float32 ``(B, H, Q, K)`` tensors.

    Example:
        >>> recorder = AttentionRecorder(query_positions=[10, 11])
        >>> with recording(model, "text_config", recorder):        # doctest: +SKIP
        ...     model(**inputs)
        >>> recorder.rows[0].shape                                   # doctest: +SKIP
        torch.Size([1, 4, 2, 12])
    """

    def __init__(self, query_positions: Sequence[int] | None = None) -> None:
        self.query_positions = None if query_positions is None else torch.as_tensor(query_positions, dtype=torch.long)
        self.rows: dict[int, torch.Tensor] = {}

    def record(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        kwargs: dict[str, Any],
    ) -> None:
        n_query, n_key = query.shape[2], key.shape[2]
        offset = n_key - n_query  # queries are the last n_query positions (KV cache during decoding)
        if self.query_positions is None:
            rows = torch.arange(n_query, device=query.device)
        else:
            rows = self.query_positions.to(query.device) - offset
            rows = rows[(rows >= 0) & (rows < n_query)]
        if rows.numel() == 0:
            return
        self.rows[int(module.layer_idx)] = row_probabilities(module, query, key, attention_mask, scaling, rows, kwargs)


def row_probabilities(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    rows: torch.Tensor,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """``softmax(q·kᵀ·scaling + mask)`` in float32 for query ``rows`` (indices within this call), all keys.

    Honours every mask form the function can receive: ``None`` (causal, offset by the KV cache, plus the layer's
    sliding window), boolean (True = attend) and additive float; GQA (keys repeated over query-head groups) and
    Gemma-2-style ``softcap``.
    """
    with torch.no_grad():
        n_query, n_key = query.shape[2], key.shape[2]
        group = query.shape[1] // key.shape[1]
        keys = key.float().repeat_interleave(group, dim=1) if group > 1 else key.float()
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        scores = query[:, :, rows].float() @ keys.transpose(-1, -2) * scale
        softcap = kwargs.get("softcap")
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        if attention_mask is None:
            absolute = rows + (n_key - n_query)
            key_index = torch.arange(n_key, device=query.device)
            allowed = key_index[None, :] <= absolute[:, None]
            window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
            if window:
                allowed &= key_index[None, :] > absolute[:, None] - int(window)
            scores = scores.masked_fill(~allowed, float("-inf"))
        else:
            mask = attention_mask[:, :, rows] if attention_mask.shape[2] > 1 else attention_mask
            mask = mask[..., :n_key]
            is_bool = mask.dtype == torch.bool  # bool: True = attend; float: additive
            scores = scores.masked_fill(~mask, float("-inf")) if is_bool else scores + mask.float()
        return torch.softmax(scores, dim=-1).cpu()


_ACTIVE: ContextVar[AttentionRecorder | None] = ContextVar("mmviz_attention_recorder", default=None)


def mmviz_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The function transformers calls in every decoder layer while mmviz records (signature of the interface)."""
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.record(module, query, key, attention_mask, scaling, kwargs)
    return output, None


def _register() -> None:
    AttentionInterface.register(ATTENTION_NAME, mmviz_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextmanager
def recording(model: torch.nn.Module, text_config_key: str, recorder: AttentionRecorder) -> Iterator[AttentionRecorder]:
    """Switch the language model to mmviz's attention function for the block; restore everything afterwards.

    Only the sub-model named by ``text_config_key`` changes (the vision tower keeps its implementation), and the
    model's attention implementations, flags and hooks are restored even when the block raises.
    """
    _register()
    with preserved(model):
        model.set_attn_implementation({text_config_key: ATTENTION_NAME})
        token = _ACTIVE.set(recorder)
        try:
            yield recorder
        finally:
            _ACTIVE.reset(token)
