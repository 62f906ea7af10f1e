"""mmviz's attention function: the stock SDPA output, plus exact probabilities for the query rows a view needs.

It is registered in transformers' ``AttentionInterface`` (with its mask function in ``AttentionMaskInterface``, without
which it would receive no mask) and switched in only for the sub-models being recorded, for one analysis forward.
The output is computed by the path the sub-model was already on (``sdpa_attention_forward``, or the model's own
``eager_attention_forward`` for sub-models running eager, e.g. Gemma 2 with its logit softcapping), so logits are
those of the user's default path; the recorded rows are ``softmax(q·kᵀ·scaling + mask)`` in float32 for the chosen
query positions only (never N×N).

It is also the one place where interventions act: an :data:`EdgeBlock` callback can remove attention edges
(query → key) in chosen layers; the block is folded into whatever mask form the layer received, so it changes the
output and the recorded rows alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from mmviz.model_state import preserved

ATTENTION_NAME = "mmviz"
EAGER_ATTENTION_NAME = "mmviz_eager"  # for sub-models whose own implementation is eager (Gemma 2)

EdgeBlock = Callable[[int, torch.Tensor, int], "torch.Tensor | None"]
"""``block(layer, query_positions, n_keys) -> bool[len(query_positions), n_keys] | None``: True removes the edge.

``query_positions`` are absolute sequence positions of the queries in the current call (KV cache included).
"""


class AttentionRecorder:
    """Keeps the attention rows of chosen query positions, per layer, as float32 ``(B, H, Q, K)`` tensors.

    Args:
        query_positions: absolute positions whose rows are kept (None: every query of the call).
        layers: layer indices to record (None: all).
        head_mean: keep only the mean over heads (``H`` becomes 1): ``H×`` less memory.
        keep_calls: keep every call of a layer in :attr:`calls` instead of the last one in :attr:`rows` (vision
            towers that attend in chunks, such as Qwen2-VL's per-image and Qwen2.5-VL's per-window calls, call a
            layer once per chunk).
        into: a float32 CPU tensor ``(len(layers), H or 1, Q, K)`` that the rows of ``layers[i]`` (batch item 0)
            are written into, in place: the recording is then the only copy, with no per-layer tensors to stack
            afterwards (:attr:`rows` holds views of it).
        keys_are_positions: False for CROSS-attention layers, whose keys are not sequence positions (the vision
            states that Llama 3.2 Vision's text attends to): their queries are every position of the call from 0
            (no KV-cache offset; record them on full forwards, as the analysis forward is).

    Example:
        >>> recorder = AttentionRecorder(query_positions=[10, 11])
        >>> with recording(model, {"text_config": recorder}):        # doctest: +SKIP
        ...     model(**inputs)
        >>> recorder.rows[0].shape                                     # doctest: +SKIP
        torch.Size([1, 4, 2, 12])
    """

    def __init__(
        self,
        query_positions: Sequence[int] | None = None,
        *,
        layers: Sequence[int] | None = None,
        head_mean: bool = False,
        on_layer: Callable[[int], None] | None = None,
        keep_calls: bool = False,
        into: torch.Tensor | None = None,
        keys_are_positions: bool = True,
    ) -> None:
        self.keys_are_positions = keys_are_positions
        self.query_positions = None if query_positions is None else torch.as_tensor(query_positions, dtype=torch.long)
        self.layers = None if layers is None else frozenset(int(layer) for layer in layers)
        self.head_mean = head_mean
        self.on_layer = on_layer
        self.rows: dict[int, torch.Tensor] = {}
        self.keep_calls = keep_calls
        self.calls: dict[int, list[torch.Tensor]] = {}
        self.into = into
        self._slots = {} if layers is None else {int(layer): slot for slot, layer in enumerate(layers)}
        if into is not None and (layers is None or len(into) != len(self._slots)):
            raise ValueError("into needs the recorded layers, one slot per layer")

    def wants(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def record(
        self,
        layer: int,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        kwargs: dict[str, Any],
        output: torch.Tensor,
    ) -> None:
        """Called by the attention function of every switched layer the recorder :meth:`wants`.

        ``query``/``key``/``value`` are ``(B, heads, positions, head_dim)`` after RoPE and the KV cache; ``output``
        is the attention output ``(B, positions, heads, head_dim)`` that enters the output projection.
        """
        n_query, n_key = query.shape[2], key.shape[2]
        # queries are the last n_query positions (KV cache during decoding); cross-attention keys are no positions
        offset = n_key - n_query if self.keys_are_positions else 0
        if self.query_positions is None:
            rows = torch.arange(n_query, device=query.device)
        else:
            rows = self.query_positions.to(query.device) - offset
            rows = rows[(rows >= 0) & (rows < n_query)]
        if rows.numel():
            out = None
            if self.into is not None:  # batch item 0 only, straight into its slot
                out = self.into[self._slots[layer]][None]
                query, key = query[:1], key[:1]
                attention_mask = None if attention_mask is None else attention_mask[:1]
            probabilities = row_probabilities(
                module, query, key, attention_mask, scaling, rows, kwargs, head_mean=self.head_mean, out=out
            )
            if self.keep_calls:
                self.calls.setdefault(layer, []).append(probabilities)
            else:
                self.rows[layer] = probabilities
        if self.on_layer is not None:
            self.on_layer(layer)


def _is_causal(module: torch.nn.Module, kwargs: dict[str, Any]) -> bool:
    flag = kwargs.get("is_causal")
    return bool(getattr(module, "is_causal", True) if flag is None else flag)


def _allowed_without_mask(
    module: torch.nn.Module, rows: torch.Tensor, n_query: int, n_key: int, kwargs: dict[str, Any]
) -> torch.Tensor | None:
    """What a ``None`` mask means: causal with the KV-cache offset and the sliding window, or nothing (encoders)."""
    if not _is_causal(module, kwargs):
        return None
    absolute = rows + (n_key - n_query)
    key_index = torch.arange(n_key, device=rows.device)
    allowed = key_index[None, :] <= absolute[:, None]
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    if window:
        allowed &= key_index[None, :] > absolute[:, None] - int(window)
    return allowed


def row_scores(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    rows: torch.Tensor,
    kwargs: dict[str, Any],
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked float32 logits ``q·kᵀ·scaling`` (softcapped where the model caps) for query ``rows``, all keys.

    Honours every mask form the function can receive: ``None`` (causal with the KV-cache offset and the layer's
    sliding window, or no mask at all for a non-causal encoder), boolean (True = attend) and additive float; GQA
    (keys repeated over query-head groups) and Gemma-2-style ``softcap``. ``out`` (float32 ``(B, H, Q, K)`` on
    the query's device) receives the scores: they are computed in place there, with no other score-sized tensor.
    """
    n_query, n_key = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    keys = key.float().repeat_interleave(group, dim=1) if group > 1 else key.float()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query[:, :, rows].float(), keys.transpose(-1, -2), out=out)
    scores.mul_(scale)  # in place: matmul's backward needs its inputs, not its output
    softcap = kwargs.get("softcap")
    if softcap:
        if scores.requires_grad:  # tanh's backward needs its output: nothing in place after it
            scores = softcap * torch.tanh(scores / softcap)
        else:
            scores.div_(softcap).tanh_().mul_(softcap)
    if attention_mask is None:
        # built where the scores are: rows may come from the CPU while the model runs on an accelerator
        allowed = _allowed_without_mask(module, rows.to(scores.device), n_query, n_key, kwargs)
        return scores if allowed is None else scores.masked_fill_(~allowed, float("-inf"))
    mask = attention_mask[:, :, rows] if attention_mask.shape[2] > 1 else attention_mask
    mask = mask[..., :n_key]
    is_bool = mask.dtype == torch.bool  # bool: True = attend; float: additive
    return scores.masked_fill_(~mask, float("-inf")) if is_bool else scores.add_(mask.float())


def row_probabilities(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    rows: torch.Tensor,
    kwargs: dict[str, Any],
    *,
    head_mean: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q·kᵀ·scaling + mask)`` in float32 for query ``rows`` (indices within this call), on the CPU.

    ``head_mean`` averages the heads (``H`` becomes 1). ``out`` (a float32 CPU tensor of the result's shape)
    receives the rows; when the model runs on the CPU they are computed right there, so one layer's rows never
    exist twice (on another device, or for the head mean, one layer's scores are the only transient).
    """
    # fp32 whatever the context: under torch.autocast the matmul would otherwise run at autocast precision
    with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
        direct = out is not None and not head_mean and out.device == query.device and out.is_contiguous()
        scores = row_scores(module, query, key, attention_mask, scaling, rows, kwargs, out=out if direct else None)
        torch.softmax(scores, dim=-1, out=scores)  # in place: never a second score-sized tensor
        if head_mean:
            scores = scores.mean(dim=1, keepdim=True)
        if out is None:
            return scores.cpu()
        if not direct:
            out.copy_(scores)
        return out


def block_edges(
    module: torch.nn.Module,
    attention_mask: torch.Tensor | None,
    blocked: torch.Tensor,
    n_query: int,
    n_key: int,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """``attention_mask`` with the ``blocked[q, k]`` edges removed, in the mask form the layer expects.

    ``None`` becomes an explicit boolean mask (causal and windowed as the layer would have been); a boolean mask
    loses the edges; an additive float mask gets the dtype's minimum on them (writing False into a float mask
    would do nothing).
    """
    if attention_mask is None:
        rows = torch.arange(n_query, device=blocked.device)
        allowed = _allowed_without_mask(module, rows, n_query, n_key, kwargs)
        allowed = torch.ones(n_query, n_key, dtype=torch.bool, device=blocked.device) if allowed is None else allowed
        return (allowed & ~blocked)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask & ~blocked
    return attention_mask.masked_fill(blocked, torch.finfo(attention_mask.dtype).min)


@dataclass
class _Target:
    recorder: AttentionRecorder | None
    layer: int
    tower: str  # "text", "vision" or "cross" (a text layer whose keys are not sequence positions)


@dataclass
class _Session:
    targets: dict[int, _Target]
    block: EdgeBlock | None


_ACTIVE: ContextVar[_Session | None] = ContextVar("mmviz_attention_session", default=None)


def _eager_output(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> torch.Tensor | None:
    """The model's own ``eager_attention_forward`` (softcap, sinks...), given the additive float mask it expects."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        return None
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # bool under eager is added as 0/1
        zero = torch.zeros((), dtype=query.dtype, device=attention_mask.device)
        attention_mask = torch.where(attention_mask, zero, torch.finfo(query.dtype).min)
    return eager(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)[0]


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
    """The function transformers calls in every switched attention module (signature of the interface)."""
    session = _ACTIVE.get()
    target = None if session is None else session.targets.get(id(module))
    if session is not None and target is not None and session.block is not None and target.tower != "vision":
        n_query, n_key = query.shape[2], key.shape[2]
        # cross-attention: the queries are the call's positions from 0 (full forwards), the keys are key indices
        first = 0 if target.tower == "cross" else n_key - n_query
        positions = torch.arange(first, first + n_query)
        blocked = session.block(target.layer, positions, n_key)
        if blocked is not None and bool(blocked.any()):
            attention_mask = block_edges(module, attention_mask, blocked.to(query.device), n_query, n_key, kwargs)
    output = None
    if kwargs.pop("_mmviz_eager", False):  # the sub-model runs eager: keep its numerics (and its quirks)
        output = _eager_output(module, query, key, value, attention_mask, scaling, dropout, kwargs)
    if output is None:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if target is not None and target.recorder is not None and target.recorder.wants(target.layer):
        target.recorder.record(target.layer, module, query, key, value, attention_mask, scaling, kwargs, output)
    return output, None


def mmviz_eager_attention(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """:func:`mmviz_attention` for sub-models that run eager: the same recording, the model's own eager output."""
    return mmviz_attention(*args, _mmviz_eager=True, **kwargs)


def _register() -> None:
    AttentionInterface.register(ATTENTION_NAME, mmviz_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    AttentionInterface.register(EAGER_ATTENTION_NAME, mmviz_eager_attention)
    AttentionMaskInterface.register(EAGER_ATTENTION_NAME, eager_mask)


def _switch_name(config: Any) -> str:
    """Keep the user's numerics: a sub-model running eager (Gemma 2 cannot run sdpa) stays on eager's path."""
    return EAGER_ATTENTION_NAME if config._attn_implementation == "eager" else ATTENTION_NAME


def attention_modules(model: torch.nn.Module, config_key: str) -> list[torch.nn.Module]:
    """The attention modules of the sub-model whose config is ``model.config.<config_key>`` ("" = the model's own),
    in layer order (``layer_idx`` where the module has one, else order of appearance)."""
    config = model.config if config_key == "" else getattr(model.config, config_key)
    found = [
        module
        for module in model.modules()
        if getattr(module, "config", None) is config and type(module).__name__.endswith("Attention")
    ]
    if all(hasattr(module, "layer_idx") for module in found):
        found.sort(key=lambda module: module.layer_idx)
    return found


@contextmanager
def recording(
    model: torch.nn.Module,
    recorders: Mapping[str, AttentionRecorder | None],
    *,
    block: EdgeBlock | None = None,
    cross_layers: Collection[int] = (),
    cross_recorder: AttentionRecorder | None = None,
) -> Iterator[None]:
    """Switch the named sub-models to mmviz's attention function for the block; restore everything afterwards.

    Args:
        model: a transformers model.
        recorders: sub-config key (``"text_config"``, ``"vision_config"``; ``""`` for the top-level model) → the
            recorder of its attention rows (None: switch it, e.g. to apply ``block``, without recording).
        block: optional edge removal for the language model (``"text_config"`` or ``""``), see :data:`EdgeBlock`.
            In ``cross_layers`` its ``n_keys`` are the cross-attention keys and its query positions start at 0.
        cross_layers: layers of the language model whose attention is CROSS-attention to keys that are not
            sequence positions (Llama 3.2 Vision's layers that read the vision states; the adapter names them).
            They are recorded by ``cross_recorder`` (built with ``keys_are_positions=False``; None: not recorded),
            never by the language model's recorder.

    Only the named sub-models change; their attention implementations, the model's flags and hooks are restored
    even when the block raises.
    """
    _register()
    targets: dict[int, _Target] = {}
    cross = frozenset(int(layer) for layer in cross_layers)
    for key, recorder in recorders.items():
        tower = "vision" if "vision" in key else "text"
        for index, module in enumerate(attention_modules(model, key)):
            layer = int(getattr(module, "layer_idx", index))
            if tower == "text" and layer in cross:
                targets[id(module)] = _Target(cross_recorder, layer, "cross")
            else:
                targets[id(module)] = _Target(recorder, layer, tower)
    switch: str | dict[str, str] = (
        _switch_name(model.config)
        if "" in recorders
        else {key: _switch_name(getattr(model.config, key)) for key in recorders}
    )
    with preserved(model):
        model.set_attn_implementation(switch)
        token = _ACTIVE.set(_Session(targets, block))
        try:
            yield
        finally:
            _ACTIVE.reset(token)
