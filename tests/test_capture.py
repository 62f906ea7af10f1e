"""Capture engine: recorded rows equal eager attention; the output path is the user's SDPA path, unchanged."""

from __future__ import annotations

import copy
import types

import pytest
import torch

import mmviz
from mmviz.capture import AttentionRecorder, recording, row_probabilities


def eager_attentions(model, input_ids, pixel_values, attention_mask=None):
    reference = copy.deepcopy(model)
    reference.set_attn_implementation({"text_config": "eager"})
    with torch.no_grad():
        return reference(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, output_attentions=True
        )


def test_captured_rows_equal_eager_attention_at_llava_15_shape(llava_576, photo):
    model, processor = llava_576
    trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square above a circle.")
    assert len(trace.image_positions) == 576
    pixel_values = processor(images=[photo], text=trace.prompt, return_tensors="pt")["pixel_values"]
    reference = eager_attentions(model, torch.tensor(trace.token_ids)[None], pixel_values)
    for layer in range(trace.num_layers):
        expected = reference.attentions[layer][0][:, trace.query_positions].numpy()
        assert abs(trace.attention_rows[layer] - expected).max() <= 1e-5, f"layer {layer}"
    rows = trace.attention_rows
    assert abs(rows.sum(-1) - 1).max() < 1e-5
    for row, position in enumerate(trace.query_positions):  # causal: no row sees a later position
        assert rows[:, :, row, position + 1 :].max(initial=0) == 0


def test_logits_with_capture_on_are_identical_to_logits_with_it_off(llava_small, photo):
    model, processor = llava_small
    inputs = processor(images=[photo], text="USER: <image>\nWhat is it? ASSISTANT: A cat", return_tensors="pt")
    with torch.no_grad():
        plain = model(**inputs).logits
        recorder = AttentionRecorder()
        with recording(model, {"text_config": recorder}):
            captured = model(**inputs).logits
    assert torch.equal(plain, captured)
    assert sorted(recorder.rows) == list(range(model.config.text_config.num_hidden_layers))


def test_padding_reaches_the_function_as_a_bool_mask_and_rows_still_match_eager(llava_small, photo):
    model, processor = llava_small
    inputs = processor(images=[photo], text="USER: <image>\nWhat is it? ASSISTANT:", return_tensors="pt")
    pad = processor.tokenizer.pad_token_id
    ids = torch.cat([torch.tensor([[pad, pad]]), inputs["input_ids"]], dim=1)
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), inputs["attention_mask"]], dim=1)
    queries = list(range(2, ids.shape[1]))
    recorder = AttentionRecorder(queries)
    seen = []
    original = recorder.record

    def spy(layer, module, query, key, value, attention_mask, *rest):
        seen.append(None if attention_mask is None else attention_mask.dtype)
        original(layer, module, query, key, value, attention_mask, *rest)

    recorder.record = spy
    with torch.no_grad(), recording(model, {"text_config": recorder}):
        model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"])
    assert set(seen) == {torch.bool}
    reference = eager_attentions(model, ids, inputs["pixel_values"], attention_mask=mask)
    for layer, rows in recorder.rows.items():
        assert (rows[0] - reference.attentions[layer][0][:, queries]).abs().max() <= 1e-5
        assert rows[0][..., :2].max() == 0  # padding gets no attention


def reference_rows(query, key, allowed, scaling, softcap=None):
    """Softmax with an explicit dense allowed[q, k] matrix, head by head: independent of the mask forms."""
    group = query.shape[1] // key.shape[1]
    out = torch.empty(query.shape[1], query.shape[2], key.shape[2])
    for head in range(query.shape[1]):
        scores = query[0, head].double() @ key[0, head // group].double().T * scaling
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        scores[~allowed] = float("-inf")
        out[head] = torch.softmax(scores, dim=-1).float()
    return out


@pytest.fixture()
def qk():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 6, 8, generator=generator)  # 4 query heads
    key = torch.randn(1, 2, 10, 8, generator=generator)  # 2 KV heads (GQA), 10 keys: 4 cached + 6 new
    return query, key


def causal(n_query, n_key, window=None):
    q = torch.arange(n_query)[:, None] + (n_key - n_query)
    k = torch.arange(n_key)[None, :]
    allowed = k <= q
    if window:
        allowed &= k > q - window
    return allowed


@pytest.mark.parametrize("window", [None, 3])
def test_no_mask_means_causal_with_the_cache_offset_and_the_sliding_window(qk, window):
    query, key = qk
    module = types.SimpleNamespace(sliding_window=window)
    rows = torch.tensor([0, 3, 5])
    got = row_probabilities(module, query, key, None, 0.3, rows, {})
    expected = reference_rows(query, key, causal(6, 10, window), 0.3)[:, rows]
    assert (got[0] - expected).abs().max() < 1e-6


def test_bool_and_additive_float_masks_give_the_same_rows(qk):
    query, key = qk
    allowed = causal(6, 10)
    allowed[:, 1] = False  # an extra blocked key, e.g. padding
    rows = torch.arange(6)
    as_bool = allowed[None, None]
    as_float = torch.zeros(1, 1, 6, 10).masked_fill(~allowed, torch.finfo(torch.float32).min)
    module = types.SimpleNamespace()
    expected = reference_rows(query, key, allowed, 0.25)
    for mask in (as_bool, as_float):
        got = row_probabilities(module, query, key, mask, 0.25, rows, {})
        assert (got[0] - expected).abs().max() < 1e-6


def test_bidirectional_prefix_masks_are_honoured_not_replaced_by_causality(qk):
    query, key = qk
    allowed = causal(6, 10)
    allowed[:, :8] = True  # a prefix every query sees (PaliGemma-style), including "future" prefix keys
    got = row_probabilities(types.SimpleNamespace(), query, key, allowed[None, None], 0.25, torch.arange(6), {})
    assert (got[0] - reference_rows(query, key, allowed, 0.25)).abs().max() < 1e-6
    assert got[0, :, 0, 7].min() > 0


def test_softcap_is_applied_before_masking(qk):
    query, key = qk
    got = row_probabilities(types.SimpleNamespace(), query * 5, key, None, 1.0, torch.arange(6), {"softcap": 2.0})
    expected = reference_rows(query * 5, key, causal(6, 10), 1.0, softcap=2.0)
    assert (got[0] - expected).abs().max() < 1e-6


def test_cross_attention_rows_start_at_position_zero_over_keys_that_are_no_positions(qk):
    """A cross-attention layer's keys are not sequence positions (10 vision keys for 6 queries): the recorded
    queries are the call's positions from 0, not the last 6 of 10, and the additive mask is honoured as given."""
    query, key = qk
    allowed = torch.ones(6, 10, dtype=torch.bool)
    allowed[:, 7:] = False  # padding tiles' keys
    allowed[:2] = True  # rows before the image: the model's all-zero mask row, every key uniform
    mask = torch.zeros(1, 1, 6, 10).masked_fill(~allowed, torch.finfo(torch.float32).min)
    recorder = AttentionRecorder([1, 4], layers=[3], keys_are_positions=False)
    recorder.record(3, types.SimpleNamespace(), query, key, key, mask, 0.3, {}, torch.empty(0))
    expected = reference_rows(query, key, allowed, 0.3)[:, [1, 4]]
    assert (recorder.rows[3][0] - expected).abs().max() < 1e-6
    positional = AttentionRecorder([1, 4], layers=[3])  # the same call read as self-attention: queries 4…9
    positional.record(3, types.SimpleNamespace(), query, key, key, mask, 0.3, {}, torch.empty(0))
    assert positional.rows[3].shape[2] == 1  # only position 4 is among the last six


def test_recording_only_the_chosen_positions(llava_small, photo):
    model, processor = llava_small
    inputs = processor(images=[photo], text="USER: <image>\nWhat is it? ASSISTANT:", return_tensors="pt")
    last = inputs["input_ids"].shape[1] - 1
    recorder = AttentionRecorder([last])
    with torch.no_grad(), recording(model, {"text_config": recorder}):
        model(**inputs)
    reference = eager_attentions(model, inputs["input_ids"], inputs["pixel_values"])
    for layer, rows in recorder.rows.items():
        assert rows.shape[2] == 1
        assert (rows[0, :, 0] - reference.attentions[layer][0][:, last]).abs().max() <= 1e-5


@pytest.mark.parametrize("head_mean", [False, True])
def test_rows_written_into_a_final_array_are_the_rows_recorded_per_layer(llava_small, photo, head_mean):
    """``into``: the one-copy path ``mmviz.trace`` uses gives bit-identical rows, in the array it was handed."""
    model, processor = llava_small
    inputs = processor(images=[photo], text="USER: <image>\nWhat is it? ASSISTANT:", return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    queries, layers = [3, n - 2, n - 1], [2, 0]
    per_layer = AttentionRecorder(queries, layers=layers, head_mean=head_mean)
    heads = 1 if head_mean else model.config.text_config.num_attention_heads
    into = torch.full((len(layers), heads, len(queries), n), float("nan"))
    in_place = AttentionRecorder(queries, layers=layers, head_mean=head_mean, into=into)
    for recorder in (per_layer, in_place):
        with torch.no_grad(), recording(model, {"text_config": recorder}):
            model(**inputs)
    for slot, layer in enumerate(layers):
        assert torch.equal(into[slot], per_layer.rows[layer][0])
        assert in_place.rows[layer].data_ptr() == into[slot].data_ptr()
    assert torch.allclose(into.sum(-1), torch.ones(()))
