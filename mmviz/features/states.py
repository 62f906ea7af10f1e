"""The model-side reads both feature views share: the residual stream at one depth, and a unit's output direction
read through the model's final norm and unembedding."""

from __future__ import annotations

import torch

from mmviz.capture.hidden import recording_hidden_states
from mmviz.capture.run import module_device
from mmviz.errors import InputError
from mmviz.methods.common import inference_context, model_run
from mmviz.records import Trace


def check_depth(trace: Trace, depth: object) -> int:
    """``depth`` if it is a residual-stream depth of ``trace``'s model (0 … L), else :class:`InputError`."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= trace.num_layers:
        raise InputError(
            f"depth must be 0 (the embeddings) … {trace.num_layers} (after the last decoder layer), not {depth!r}"
        )
    return depth


def residual_stream(trace: Trace, depth: int) -> torch.Tensor:
    """float32 ``(N, d)`` residual stream at ``depth`` (0 = the embeddings, d = after decoder layer d − 1): the
    trace's hidden states when it captured them, else one forward that records only that depth.

    Example:
        >>> residual_stream(trace, 3).shape                      # doctest: +SKIP
        torch.Size([77, 128])
    """
    check_depth(trace, depth)
    if trace.hidden_states is not None:
        return torch.from_numpy(trace.hidden_states[depth]).float()
    run = model_run(trace)
    with inference_context(run), recording_hidden_states(
        run.adapter.decoder_layers(), [depth], readout=run.adapter.residual
    ) as hidden:
        run.forward(first_logit=run.length - 1)
    return hidden[depth][0]


def direction_tokens(trace: Trace, direction: torch.Tensor, k: int = 8) -> tuple[list[str], list[float]]:
    """The ``k`` tokens a residual-stream ``direction (d,)`` promotes most, through the final norm and the
    unembedding (a logit lens of the direction), with their logits; empty without a model."""
    if trace.run is None:
        return [], []
    adapter = trace.run.adapter
    head = adapter.unembedding()
    with torch.no_grad():
        logits = adapter.lens_logits(direction[None].to(module_device(head), next(head.parameters()).dtype))
        best = logits.float()[0].topk(k)
    ids = best.indices.cpu().tolist()
    return adapter.display_tokens(ids), [round(float(v), 4) for v in best.values.cpu()]
