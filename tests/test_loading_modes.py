"""How researchers run models: under torch.autocast and torch.inference_mode, in bf16 and fp16, compiled, with the
vision tower offloaded to disk (an accelerator and accelerate's dispatch over two devices: tests/test_devices.py and,
on a real GPU, tests/gpu/)."""

from __future__ import annotations

import copy

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


def test_a_vision_tower_offloaded_to_disk_traces_like_the_model_in_memory(photo, tmp_path):
    """accelerate's disk offload leaves the vision tower's parameters on the meta device (loaded only for its own
    forward): inputs go where the model really runs them, and the rows and maps are those of the model in memory."""
    accelerate = pytest.importorskip("accelerate")
    model, processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=3, seed=9)
    options = {"answer": "A red square.", "methods": ["gradient_x_input"]}
    reference = mmviz.trace(model, processor, photo, "What is it?", **options)
    device_map = {"model.vision_tower": "disk", "model.multi_modal_projector": "cpu", "model.language_model": "cpu",
                  "lm_head": "cpu"}  # fmt: skip
    offloaded = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    assert next(offloaded.model.vision_tower.parameters()).device.type == "meta"
    before = snapshot(offloaded)
    traced = mmviz.trace(offloaded, processor, photo, "What is it?", **options)
    np.testing.assert_allclose(traced.attention_rows, reference.attention_rows, atol=1e-6)
    np.testing.assert_allclose(traced.maps["gradient_x_input"].values, reference.maps["gradient_x_input"].values,
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    assert snapshot(offloaded) == before


def test_a_compiled_model_is_traced_through_its_original_module_and_keeps_its_graph(photo):
    """``torch.compile(model)``: mmviz runs the module behind the wrapper; the compiled graph is neither rebuilt
    during the trace nor afterwards, and the compiled model's logits stay bit-identical."""
    dynamo = pytest.importorskip("torch._dynamo")
    model, processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=2, seed=7)
    compiled = torch.compile(model, backend="eager")  # dynamo's guards and graphs, without a C++ build
    inputs = processor(images=photo, text="<image>\nWhat is in the picture?", return_tensors="pt")
    with torch.no_grad():
        before = compiled(**inputs).logits
    frames = dynamo.utils.counters["stats"]["unique_graphs"]
    state = snapshot(model)
    trace = mmviz.trace(compiled, processor, photo, "What is in the picture?", answer="A red square.")
    relevancy = mmviz.methods.relevancy(trace)
    assert trace.run.model is model, "the original module, not the wrapper"
    assert dynamo.utils.counters["stats"]["unique_graphs"] == frames, "nothing compiled while tracing"
    with torch.no_grad():
        after = compiled(**inputs).logits
    assert dynamo.utils.counters["stats"]["unique_graphs"] == frames, "the compiled graph is reused afterwards"
    assert torch.equal(before, after) and snapshot(model) == state
    expected = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
    np.testing.assert_array_equal(trace.attention_rows, expected.attention_rows)
    np.testing.assert_allclose(relevancy.values, mmviz.methods.relevancy(expected).values, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_models_trace_and_run_every_method_left_as_found(photo, dtype):
    """A model loaded in bf16 or fp16: rows are float32 and match the model's own eager attention to its precision,
    every method gives finite maps, and the model keeps its dtype, flags, hooks and weights."""
    from mmviz.methods import CATALOGUE

    model, processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=2, seed=8)
    model.to(dtype)
    _warm(model, processor, photo)
    state, weights = snapshot(model), [p.detach().clone() for p in model.parameters()]
    trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
    assert trace.attention_rows.dtype == np.float32
    eager = copy.deepcopy(model)
    eager.set_attn_implementation({"text_config": "eager"})
    inputs = {"input_ids": trace.run.input_ids, **trace.run.inputs}
    with torch.no_grad():
        reference = eager(**inputs, output_attentions=True, use_cache=False).attentions
    for layer, attentions in enumerate(reference):
        expected = attentions[0][:, trace.query_positions].float().numpy()
        np.testing.assert_allclose(trace.attention_rows[layer], expected, atol=2e-2)
    for name in CATALOGUE:
        values = trace.compute(name, **{"integrated_gradients": {"steps": 4}, "rise": {"n_masks": 8}}.get(name, {}))
        assert np.isfinite(values.values).all(), name
    assert snapshot(model) == state and all(p.dtype == dtype for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
