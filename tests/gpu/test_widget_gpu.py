"""The Inspector, trace files and "the model left as found" with the model on the accelerator
(``tests/test_model_untouched.py``'s odd-state model, on CUDA in fp32 and bf16)."""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest
import torch

import mmviz
from mmviz.widget import bundle
from tests.gpu.helpers import ANSWER, PROMPT, assert_close_to_cpu, assert_left_as_found, found, on, tf32_off, weights


def reference_logits(model: torch.nn.Module, processor, photo, device: torch.device, dtype: torch.dtype):
    inputs = processor(images=[photo], text="USER: <image>\nDescribe it. ASSISTANT:", return_tensors="pt")
    inputs = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture()
def odd_state_model(llava_small, photo, device, dtype):
    """On the device: training mode, eager text attention, one frozen parameter, one user hook (warmed up once)."""
    model, processor = llava_small
    moved = on(model, device, dtype)
    moved.train()
    moved.set_attn_implementation({"text_config": "eager"})
    next(moved.parameters()).requires_grad_(False)
    moved.lm_head.register_forward_hook(lambda *args: None)
    reference_logits(moved, processor, photo, device, dtype)  # transformers' output-capturing hooks, installed once
    return moved, processor


@pytest.mark.parametrize("entry", [mmviz.trace, mmviz.inspect], ids=["trace", "inspect"])
def test_trace_and_inspect_leave_the_model_on_the_device_as_found(odd_state_model, photo, device, dtype, entry):
    model, processor = odd_state_model
    before, values = found(model), weights(model)
    model.eval()
    logits_before = reference_logits(model, processor, photo, device, dtype)
    model.train()
    entry(model, processor, photo, PROMPT, max_new_tokens=3, methods=["relevancy", "gradient_x_input"])
    assert_left_as_found(model, before, values)
    assert model.training and not next(model.parameters()).requires_grad
    assert before.implementations[1:] == ("eager", "sdpa")
    model.eval()
    assert torch.equal(reference_logits(model, processor, photo, device, dtype), logits_before)
    model.train()


def test_inspect_on_the_device_is_ready_with_its_first_payload(traces, dtype):
    on_device = dataclasses.replace(traces[0], maps={})
    inspector = mmviz.Inspector(on_device)
    assert inspector.tokens == on_device.tokens and inspector.attention_mean and inspector.head_stats
    assert inspector.layer == on_device.num_layers - 1
    heads = inspector.extra("heads", layer=0)
    assert heads["shape"][0] == on_device.num_heads
    assert inspector.extra("lens") and inspector.extra("projection")
    computed = inspector.compute("relevancy")
    assert np.isfinite(computed.values).all() and "relevancy" in inspector.maps
    if bundle.bundle_built():
        assert "<script" in inspector.to_html()


def test_a_trace_of_a_device_model_saves_loads_and_attaches_again(traces, tmp_path, dtype):
    on_device = dataclasses.replace(traces[0], maps={})
    model = on_device.run.model
    first = on_device.compute("gradient_x_input")
    path = on_device.save(tmp_path / "device.mmviz")
    loaded = mmviz.load(path)
    np.testing.assert_allclose(loaded.maps["gradient_x_input"].values, first.values)
    attached = loaded.attach(model, on_device.run.adapter.processor)
    with tf32_off():
        again = dataclasses.replace(attached, maps={}).compute("gradient_x_input")
    assert_close_to_cpu(again.values, first.values, torch.float32, f"re-attached gradient × input ({dtype})")


def test_gpu_memory_is_released_with_the_trace(llava_small, photo, device):
    if device.type != "cuda":
        pytest.skip("CUDA memory accounting")
    model, processor = llava_small
    moved = on(model, device, torch.bfloat16)

    def use() -> None:
        methods = ["relevancy", "integrated_gradients"]
        trace = mmviz.trace(moved, processor, photo, PROMPT, answer=ANSWER, methods=methods)
        trace.compute("occlusion")

    use()  # the same calls once first: kernels, transformers' hooks, cuBLAS workspaces of autograd's threads
    gc.collect()
    baseline = torch.cuda.memory_allocated(device)
    use()
    gc.collect()
    left = torch.cuda.memory_allocated(device) - baseline
    assert left <= 1 << 20, f"{left / 2**20:.1f} MiB of GPU memory still held after the trace was dropped"
