"""The capture engine on the accelerator: rows equal eager attention, logits unchanged by the capture, float32 rows
whatever the model's dtype, and the same numbers as the CPU (``tests/test_capture.py``, on CUDA in fp32 and bf16)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mmviz
from mmviz.capture import AttentionRecorder, recording
from tests.gpu.helpers import ANSWER, PROMPT, TOLERANCES, dtype_id, on, rounded_reference, tf32_off

NEW_TOKENS = 3


def eager_attentions(model: torch.nn.Module, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``output_attentions=True`` of a copy of ``model`` whose language model runs eager, on the model's device."""
    reference = copy.deepcopy(model)
    reference.set_attn_implementation({"text_config": "eager"})
    with torch.no_grad():
        attentions = reference(**inputs, output_attentions=True).attentions
    assert attentions, "eager returned no attention weights"
    return attentions


def processor_inputs(processor, photo, text: str, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The processor's outputs on ``device``; pixels in ``dtype`` (as mmviz sends them)."""
    encoded = processor(images=[photo], text=text, return_tensors="pt")
    return {
        key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        for key, value in encoded.items()
    }


def test_captured_rows_equal_eager_attention_at_llava_15_shape(llava_576, photo, device, dtype, exact_float32):
    model, processor = llava_576
    moved = on(model, device, dtype)
    trace = mmviz.trace(moved, processor, photo, PROMPT, answer=ANSWER)
    assert len(trace.image_positions) == 576
    assert trace.attention_rows.dtype == np.float32, "rows are float32 whatever the model's dtype"
    pixels = processor_inputs(processor, photo, trace.prompt, device, dtype)["pixel_values"]
    ids = torch.tensor(trace.token_ids, device=device)[None]
    reference = eager_attentions(moved, input_ids=ids, pixel_values=pixels)
    tolerance = TOLERANCES[dtype]
    for layer in range(trace.num_layers):
        expected = reference[layer][0][:, trace.query_positions].float().cpu().numpy()
        error = np.abs(trace.attention_rows[layer] - expected).max()
        assert error <= tolerance.rows_eager, f"layer {layer} in {dtype_id(dtype)}: max abs {error:.3g}"
    rows = trace.attention_rows
    assert np.abs(rows.sum(-1) - 1).max() < 1e-5, "softmax in float32: rows sum to one"
    for row, position in enumerate(trace.query_positions):  # causal: no row sees a later position
        assert rows[:, :, row, position + 1 :].max(initial=0) == 0
    on_cpu = mmviz.trace(rounded_reference(model, dtype), processor, photo, PROMPT, answer=ANSWER)
    error = np.abs(rows - on_cpu.attention_rows).max()
    assert error <= tolerance.rows_cpu, f"rows vs the CPU in {dtype_id(dtype)}: max abs {error:.3g}"


def test_logits_with_capture_on_are_identical_to_logits_with_it_off(pair, photo, device, dtype):
    model, _, processor = pair
    inputs = processor_inputs(processor, photo, "USER: <image>\nWhat is it? ASSISTANT: A cat", device, dtype)
    with torch.no_grad():
        plain = model(**inputs).logits
        recorder = AttentionRecorder()
        with recording(model, {"text_config": recorder}):
            captured = model(**inputs).logits
    assert plain.device.type == device.type and captured.dtype == plain.dtype
    assert torch.equal(plain, captured), f"max difference {(plain - captured).abs().max().item():.3g}"
    assert sorted(recorder.rows) == list(range(model.config.text_config.num_hidden_layers))
    assert all(rows.device.type == "cpu" and rows.dtype == torch.float32 for rows in recorder.rows.values())


def test_the_trace_matches_the_cpu_trace(traces, dtype):
    on_device, on_cpu = traces
    tolerance = TOLERANCES[dtype]
    assert on_device.tokens == on_cpu.tokens and list(on_device.token_ids) == list(on_cpu.token_ids)
    np.testing.assert_array_equal(on_device.query_positions, on_cpu.query_positions)
    np.testing.assert_array_equal(on_device.image_positions, on_cpu.image_positions)
    assert on_device.attention_rows.shape == on_cpu.attention_rows.shape
    assert np.isfinite(on_device.attention_rows).all() and np.isfinite(on_device.answer_logprobs).all()
    rows_error = np.abs(on_device.attention_rows - on_cpu.attention_rows).max()
    assert rows_error <= tolerance.rows_cpu, f"rows: max abs {rows_error:.3g}"
    logprob_error = np.abs(on_device.answer_logprobs - on_cpu.answer_logprobs).max()
    assert logprob_error <= tolerance.logprob, f"answer log-probabilities: max abs {logprob_error:.3g}"


def test_decode_steps_on_the_device_record_the_new_row_and_leave_generation_unchanged(pair, photo, device, dtype):
    model, _, processor = pair
    inputs = processor_inputs(processor, photo, "USER: <image>\nWhat is it? ASSISTANT:", device, dtype)
    n_prompt = inputs["input_ids"].shape[1]
    generation = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    recorder = AttentionRecorder(query_positions=None)
    with torch.no_grad():
        with recording(model, {"text_config": recorder}):
            sequence = model.generate(**inputs, **generation)
        assert torch.equal(model.generate(**inputs, **generation), sequence), "capture does not change generation"
    assert sequence.shape[1] == n_prompt + NEW_TOKENS
    # the last token is generated but never fed back: the last call's query is position n_prompt + NEW_TOKENS - 2
    full = {"input_ids": sequence[:, :-1], "pixel_values": inputs["pixel_values"]}
    expected = eager_attentions(model, **full)
    for layer, rows in recorder.rows.items():
        assert rows.shape[2:] == (1, n_prompt + NEW_TOKENS - 1), "one query row, the cache plus itself as keys"
        error = (rows[0, :, 0] - expected[layer][0, :, -1].float().cpu()).abs().max().item()
        assert error <= TOLERANCES[dtype].rows_eager, f"layer {layer}: max abs {error:.3g}"


def test_trace_generates_on_the_device(pair, photo, dtype):
    model, _, processor = pair
    trace = mmviz.trace(model, processor, photo, PROMPT, max_new_tokens=4)
    assert 1 <= len(trace.token_ids) - trace.answer_start <= 4
    assert np.isfinite(trace.answer_logprobs).all() and (trace.answer_logprobs <= 0).all()
    assert trace.attention_rows.shape[-1] == len(trace.token_ids)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_under_autocast_rows_and_relevancy_stay_float32(llava_small, photo, device, autocast_dtype):
    if device.type == "cpu" and autocast_dtype == torch.float16:
        pytest.skip("float16 autocast is a CUDA mode")
    model, processor = llava_small
    moved = on(model, device, torch.float32)
    with tf32_off(), torch.autocast(device.type, dtype=autocast_dtype):
        trace = mmviz.trace(moved, processor, photo, PROMPT, answer=ANSWER)
        relevancy = trace.compute("relevancy")
    assert trace.attention_rows.dtype == np.float32
    assert np.abs(trace.attention_rows.sum(-1) - 1).max() < 1e-5
    assert relevancy.values.dtype == np.float32 and np.isfinite(relevancy.values).all()
