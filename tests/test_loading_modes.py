"""How researchers run models: under torch.autocast and torch.inference_mode (issue 17's CPU-side modes; bf16,
fp16, accelerate dispatch and disk offload are in tests/test_capture_families.py and the GPU suite)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmviz
from mmviz.capture import snapshot


def _warm(model, processor, photo) -> None:
    """transformers installs its output-capturing hooks on a model's first forward and keeps them: run one first, so
    that the snapshots compare what mmviz leaves behind."""
    mmviz.trace(model, processor, photo, "What?", answer="A.")


def test_under_autocast_rows_and_relevancy_stay_float32(llava_small, photo):
    model, processor = llava_small
    _warm(model, processor, photo)
    before = snapshot(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
        relevancy = trace.compute("relevancy")
    assert trace.attention_rows.dtype == np.float32
    # bf16 softmax rows would miss a sum of one by ~1e-3; these are computed in float32 whatever the context
    assert np.abs(trace.attention_rows.sum(-1) - 1).max() < 1e-5
    assert relevancy.values.dtype == np.float32 and np.isfinite(relevancy.values).all()
    assert snapshot(model) == before


@pytest.mark.parametrize("name", ["relevancy", "integrated_gradients", "gradient_x_input", "grad_cam"])
def test_inference_mode_traces_and_gradient_methods_say_why_they_cannot(llava_small, photo, name):
    model, processor = llava_small
    _warm(model, processor, photo)
    before = snapshot(model)
    with torch.inference_mode():
        trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
        assert trace.compute("attention_max").values.shape[-1] == len(trace.image_positions)
        with pytest.raises(mmviz.InputError, match=r"needs gradients, which torch\.inference_mode\(\) forbids"):
            trace.compute(name)
    assert snapshot(model) == before
    with torch.no_grad():  # no_grad is fine: mmviz switches gradients on where it needs them
        assert np.isfinite(trace.compute(name, **({"steps": 4} if name == "integrated_gradients" else {})).values).all()


def test_inspect_takes_every_argument_trace_takes(llava_small, photo):
    model, processor = llava_small
    plan = mmviz.CapturePlan(hidden_states=True)
    inspector = mmviz.inspect(model, processor, photo, "What?", answer="A red square.", capture=plan)
    assert inspector.trace.hidden_states is not None and inspector.meta["extras"]["projection"]
    with pytest.raises(TypeError):
        mmviz.inspect(model, processor, photo, "What?", max_tokens=3)  # an unknown option, as trace() says
