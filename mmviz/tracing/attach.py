"""``trace.attach(model, processor)``: re-link a trace loaded from a file to the model that made it."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from mmviz.adapters import DualEncoderAdapter, adapter_for
from mmviz.capture.run import ModelRun, to_device
from mmviz.errors import InputError, ProcessorMismatchError
from mmviz.model_state import uncompiled
from mmviz.records import Trace, model_fingerprint, model_name, register_attach


def attach(trace: Trace, model: torch.nn.Module, processor: Any) -> Trace:
    """``trace`` with a model run again: the same model (checked by its fingerprint when the file has one), the
    prompt encoded again by ``processor`` to exactly the saved token ids. The maps and kept results are shared.

    Example:
        >>> linked = mmviz.load("cat.mmviz").attach(model, processor)   # doctest: +SKIP
        >>> linked.compute("integrated_gradients")                      # doctest: +SKIP
    """
    model = uncompiled(model)
    adapter = adapter_for(model, processor)
    if isinstance(adapter, DualEncoderAdapter):
        raise InputError(f"a {trace.family} trace needs no model: its maps were all made in its one forward")
    if adapter.family != trace.family:
        raise ProcessorMismatchError(f"the trace comes from a {trace.family} model, not a {adapter.family} one")
    saved = trace.provenance.get("model", {})
    fingerprint = saved.get("fingerprint") if isinstance(saved, dict) else None
    if fingerprint and fingerprint != model_fingerprint(model):
        dtype = str(model.dtype).removeprefix("torch.")
        raise ProcessorMismatchError(
            f"this is not the model that made the trace (saved: {saved.get('name')!r}, {saved.get('dtype')}; given: "
            f"{model_name(model)!r}, {dtype}): its weights or config differ; load the same checkpoint in the same "
            f"dtype"
        )
    if trace.layout.is_video:  # the frames of one video, encoded as the trace encoded them
        inputs = to_device(adapter.encode_video(trace.images, trace.prompt), model)
    else:
        inputs = to_device(adapter.encode(trace.images, trace.prompt), model)
    prompt_ids = inputs["input_ids"][0].cpu().numpy()
    if not np.array_equal(prompt_ids, trace.token_ids[: trace.answer_start]):
        raise ProcessorMismatchError(
            "the processor encodes the saved prompt to other token ids than the trace holds: use the processor of "
            "the checkpoint that made the trace"
        )
    n_answer = len(trace.token_ids) - trace.answer_start
    forward_inputs = adapter.analysis_inputs(
        {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}, n_answer
    )
    input_ids = torch.as_tensor(np.asarray(trace.token_ids), device=inputs["input_ids"].device)[None]
    linked = dataclasses.replace(
        trace, run=ModelRun(model, adapter, input_ids, forward_inputs, tuple(trace.images), video=trace.layout.is_video)
    )
    object.__setattr__(linked, "results", trace.results)  # one cache for both (the lens, the projection)
    return linked


register_attach(attach)
