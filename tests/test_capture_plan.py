"""Capture plans: budgets checked before running, selectable parts (layers, head mean, hidden states, vision
attention), and the edge-blocking extension point used by interventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmviz
from mmviz.capture import AttentionRecorder, CaptureBudgetError, CapturePlan, recording


def test_an_oversized_plan_is_refused_before_anything_runs(fresh_llava, photo, monkeypatch):
    model, processor = fresh_llava

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model ran although the plan was over budget")

    monkeypatch.setattr(model, "generate", must_not_run)
    monkeypatch.setattr(model, "forward", must_not_run)
    with pytest.raises(CaptureBudgetError) as error:
        mmviz.trace(model, processor, photo, "What?", capture=CapturePlan(budget_bytes=10_000))
    message = str(error.value)
    assert "budget is" in message and "attention rows" in message
    assert "layers=[...]" in message and "head_mean=True" in message and "queries=[...]" in message
    assert isinstance(error.value, MemoryError)


def test_the_estimate_is_the_bytes_the_trace_keeps(llava_small, photo):
    model, processor = llava_small
    plan = CapturePlan(hidden_states=True)
    trace = mmviz.trace(model, processor, photo, "What?", answer="A cat.", capture=plan)
    from mmviz.adapters import adapter_for

    shape = adapter_for(model, processor).model_shape(1)
    parts = plan.estimate(shape, len(trace.tokens), len(trace.query_positions))
    assert parts["attention rows"] == trace.attention_rows.nbytes
    assert parts["hidden states"] == trace.hidden_states.nbytes


def test_layers_head_mean_and_queries_select_what_is_kept(llava_small, photo):
    model, processor = llava_small
    full = mmviz.trace(model, processor, photo, "What?", answer="A cat.")
    last = len(full.tokens) - 1
    plan = CapturePlan(layers=[2, 0], head_mean=True, queries=[5, last - 1, last])
    small = mmviz.trace(model, processor, photo, "What?", answer="A cat.", capture=plan)
    assert small.layers.tolist() == [0, 2] and small.attention_rows.shape[:3] == (2, 1, 3)
    rows = [full.row_of(p) for p in (last - 1, last)]
    expected = full.attention_rows[[0, 2]].mean(axis=1)[:, rows]
    np.testing.assert_allclose(small.attention_rows[:, 0, 1:], expected, atol=1e-6)
    with pytest.raises(ValueError, match="head_mean"):
        small.attention(layer=0, head=1)
    with pytest.raises(ValueError, match="not captured"):
        small.attention(layer=1)
    with pytest.raises(ValueError, match="every layer and head"):
        mmviz.Inspector(small)


def test_hidden_states_match_transformers_own_and_stop_before_the_final_norm(llava_small, photo):
    model, processor = llava_small
    trace = mmviz.trace(model, processor, photo, "What?", answer="A cat.", capture=CapturePlan(hidden_states=True))
    pixel_values = processor(images=trace.images, text=trace.prompt, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = model(
            input_ids=torch.tensor(trace.token_ids)[None], pixel_values=pixel_values, output_hidden_states=True
        ).hidden_states
    n_layers = model.config.text_config.num_hidden_layers
    assert trace.hidden_states.shape == (n_layers + 1, len(trace.tokens), model.config.text_config.hidden_size)
    for index in range(n_layers):  # embeddings and every layer but the last: identical
        np.testing.assert_allclose(trace.hidden_states[index], reference[index][0].numpy(), atol=1e-5)
    final_norm = model.model.language_model.norm
    with torch.no_grad():
        normed = final_norm(torch.from_numpy(trace.hidden_states[-1]))
    np.testing.assert_allclose(normed.numpy(), reference[-1][0].numpy(), atol=1e-5)  # transformers' last is normed


def test_vision_attention_equals_the_towers_eager_attention(llava_small, photo):
    model, processor = llava_small
    trace = mmviz.trace(model, processor, photo, "What?", answer="A cat.", capture=CapturePlan(vision_attention=True))
    import copy

    eager = copy.deepcopy(model)
    eager.set_attn_implementation({"vision_config": "eager"})
    pixel_values = processor(images=trace.images, text=trace.prompt, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = eager.model.vision_tower(pixel_values, output_attentions=True).attentions
    assert trace.vision_attention.shape == (len(reference), 1, 4, 17, 17)  # 4×4 patches + CLS, not causal
    for layer, expected in enumerate(reference):
        assert np.abs(trace.vision_attention[layer] - expected.numpy()).max() <= 1e-5
    assert trace.vision_attention[:, :, :, 0, 1:].min() > 0  # an encoder: CLS sees every later patch


def image_logits(model, processor, image, block=None):
    inputs = processor(images=[image], text="USER: <image>\nWhat is it? ASSISTANT: A red", return_tensors="pt")
    image_positions = torch.nonzero(inputs["input_ids"][0] == model.config.image_token_id)[:, 0]
    answer_from = inputs["input_ids"].shape[1] - 3

    def knockout(layer, queries, n_keys):  # every text token loses its edges to every image token
        blocked = torch.zeros(len(queries), n_keys, dtype=torch.bool)
        text_rows = torch.nonzero(~torch.isin(queries, image_positions))[:, 0]
        blocked[text_rows[:, None], image_positions[None]] = True
        return blocked

    recorder = AttentionRecorder(list(range(answer_from, inputs["input_ids"].shape[1])))
    with torch.no_grad(), recording(model, {"text_config": recorder}, block=knockout if block else None):
        logits = model(**inputs).logits[0, answer_from:]
    return logits, recorder, image_positions


def test_blocking_every_text_to_image_edge_makes_the_answer_independent_of_the_image(llava_small, photo):
    model, processor = llava_small
    other = Image.fromarray(255 - np.asarray(photo))
    plain_a, _, _ = image_logits(model, processor, photo)
    plain_b, _, _ = image_logits(model, processor, other)
    assert (plain_a - plain_b).abs().max() > 1e-4  # the image matters normally
    blocked_a, recorder, image_positions = image_logits(model, processor, photo, block=True)
    blocked_b, _, _ = image_logits(model, processor, other, block=True)
    assert (blocked_a - blocked_b).abs().max() < 1e-5  # knocked out: the image no longer changes the answer
    for rows in recorder.rows.values():
        assert rows[..., image_positions].max() == 0
        assert (rows.sum(-1) - 1).abs().max() < 1e-5


def test_a_block_that_removes_nothing_changes_nothing(llava_small, photo):
    model, processor = llava_small
    inputs = processor(images=[photo], text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        plain = model(**inputs).logits
        with recording(
            model, {"text_config": None}, block=lambda layer, q, n: torch.zeros(len(q), n, dtype=torch.bool)
        ):
            same = model(**inputs).logits
    assert torch.equal(plain, same)


def test_a_cross_attention_family_budgets_its_rows_over_the_keys():
    """Llama 3.2 Vision records every position's cross-attention rows over the keys (images × tiles × vision
    tokens) and keeps the image maps over the keys: the estimate counts both, exactly, before anything runs."""
    from tests.families.build_mllama import build_mllama

    model, processor = build_mllama()
    image = Image.new("RGB", (120, 40), "teal")
    trace = mmviz.trace(model, processor, image, "What is it?", answer="a cat")
    adapter = trace.run.adapter
    shape = adapter.model_shape(1)
    n, q, k = len(trace.tokens), len(trace.query_positions), len(trace.layout.keys)
    assert (shape.cross_layers, shape.cross_keys) == (len(adapter.cross_attention_layers), k)
    parts = CapturePlan().estimate(shape, n_positions=n, n_queries=q)
    cross_rows = shape.cross_layers * shape.num_heads * n * k * 4  # recorded for every position, every head
    assert parts["cross-attention rows"] == cross_rows + trace.attention_rows.nbytes
    total = sum(CapturePlan().estimate(shape, n_positions=n, n_queries=q, n_logits=3).values())
    with pytest.raises(CaptureBudgetError, match="cross-attention rows"):
        mmviz.trace(model, processor, image, "What is it?", answer="a cat", capture=CapturePlan(budget_bytes=total - 1))
    mmviz.trace(model, processor, image, "What is it?", answer="a cat", capture=CapturePlan(budget_bytes=total))
