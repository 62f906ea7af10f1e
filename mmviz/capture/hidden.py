"""Residual-stream capture: the hidden state entering the first decoder layer and leaving every layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def recording_hidden_states(
    decoder_layers: Sequence[torch.nn.Module],
    layers: Sequence[int] | None = None,
    *,
    into: torch.Tensor | None = None,
    readout: Callable[[Any], torch.Tensor] | None = None,
) -> Iterator[dict[int, torch.Tensor]]:
    """Record ``h_ℓ`` (float32, CPU, ``(B, N, d)``) during the block; the hooks are removed afterwards.

    Index ``ℓ`` is the input of decoder layer ``ℓ`` (0: the embeddings, with image features scattered in), so it is
    what layer ``ℓ − 1`` left plus anything the model adds between layers (Qwen3-VL's DeepStack features); index
    ``L`` is the last layer's output, before the final norm (apply it exactly once for a logit lens).
    ``into`` (float32 CPU ``(len(recorded), N, d)``, recorded indices in increasing order) receives batch item 0
    of each, in place, so that the recording is the only copy (the dict then holds ``(1, N, d)`` views of it).
    ``readout`` turns a layer's input or output into that ``(B, N, d)`` state (``adapter.residual``: the first item
    of a tuple, or the merge of stacked residual streams); by default the first item of a tuple.

    Example:
        >>> with recording_hidden_states(model.model.language_model.layers) as states:   # doctest: +SKIP
        ...     model(**inputs)
        >>> sorted(states)[:3]                                                            # doctest: +SKIP
        [0, 1, 2]
    """
    wanted = set(range(len(decoder_layers) + 1)) if layers is None else {int(layer) for layer in layers}
    states: dict[int, torch.Tensor] = {}
    handles = []
    slots = {index: slot for slot, index in enumerate(sorted(wanted))}

    def keep(index: int, raw: Any) -> None:
        hidden = readout(raw) if readout is not None else raw[0] if isinstance(raw, tuple) else raw
        if into is None:
            states[index] = hidden.detach().float().cpu()
        else:
            into[slots[index]].copy_(hidden.detach()[0])
            states[index] = into[slots[index]][None]

    last = len(decoder_layers)
    for index, layer in enumerate(decoder_layers):
        if index in wanted:

            def before(
                module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], index: int = index
            ) -> None:
                keep(index, args[0] if args else kwargs["hidden_states"])

            handles.append(layer.register_forward_pre_hook(before, with_kwargs=True))
    if last in wanted:

        def after_last(module: torch.nn.Module, args: Any, output: Any) -> None:
            keep(last, output)

        handles.append(decoder_layers[-1].register_forward_hook(after_last))
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()
