"""The same end-to-end checks for every family: trace, layout against the processor, widget payload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmviz
from mmviz.adapters import DualEncoderAdapter, adapter_for
from tests.families.checks import assert_boxes_inside, assert_views_tile
from tests.families.registry import cases

CASES = cases()
WIDE = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (40, 1, 3)))
TALL = Image.fromarray(np.tile(np.linspace(0, 255, 90, dtype=np.uint8)[:, None, None], (1, 30, 3)))


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def case(request):
    return request.param


def _placeholder_count(adapter, inputs, measured: bool = False) -> int:
    """The image tokens the PROCESSOR inserted (its own output, not the adapter's arithmetic). A measured family's
    prompt placeholder may expand into other tokens (Ovis2's ``<image>`` → ``<IMG_ATOM>``s, Llama 4's
    ``<|image|>`` → ``<|patch|>``s): its tokens are the ones the model's config names."""
    if isinstance(adapter, DualEncoderAdapter):  # no placeholders: the patches the tower cuts from pixel_values
        return int(np.prod(inputs["pixel_values"].shape[-2:])) // adapter.model.config.vision_config.patch_size**2
    if measured:
        return int((inputs["input_ids"] == adapter.image_token_id).sum())
    image_token_id = adapter.tokenizer.convert_tokens_to_ids(adapter.image_token)
    return int((inputs["input_ids"] == image_token_id).sum())


def test_trace_end_to_end(case):
    model, processor = case.build()
    trace = mmviz.trace(model, processor, WIDE, "What is in the picture?", max_new_tokens=3)
    assert trace.layout.images[0].width == WIDE.width
    assert len(trace.image_positions) > 0
    if case.kind == "cross":  # rows over the cross-attention keys; nothing reads the image before the first cross layer
        assert trace.attention_rows.shape[-1] == len(trace.layout.keys)
        first = min(trace.run.adapter.cross_attention_layers)
        expected = (trace.layers >= first).astype(np.float32)[:, None, None]
        np.testing.assert_allclose(
            trace.attention_rows.sum(-1), np.broadcast_to(expected, trace.attention_rows.shape[:-1]), atol=1e-4
        )
    else:
        assert trace.attention_rows.shape[-1] == len(trace.tokens)
        np.testing.assert_allclose(trace.attention_rows.sum(-1), 1.0, atol=1e-4)
    assert np.isfinite(trace.answer_logprobs).all()
    assert_views_tile(trace.layout, resampled=case.resampled)
    assert_boxes_inside(trace.layout)


@pytest.mark.parametrize("image", [WIDE, TALL, Image.new("RGB", (10, 10), "red")], ids=["wide", "tall", "10x10"])
def test_layout_matches_processor(case, image):
    model, processor = case.build()
    adapter = adapter_for(model, processor)
    text = adapter.format_prompt("Describe it.", n_images=1)
    inputs = adapter.encode([image], text)
    layout = adapter.layout(inputs["input_ids"][0].numpy(), [image], inputs)
    marked = layout.positions("image", "image_newline", "image_sep", "query")
    assert len(marked) >= _placeholder_count(adapter, inputs, case.measured) > 0
    assert_views_tile(layout, resampled=case.resampled)
    assert_boxes_inside(layout)


def test_multi_image(case):
    if not case.multi_image:
        pytest.skip(f"{case.model_type}'s processor takes one image per prompt")
    model, processor = case.build()
    trace = mmviz.trace(model, processor, [WIDE, TALL], "Compare the two pictures.", answer="same")
    assert [image.width for image in trace.layout.images] == [WIDE.width, TALL.width]
    assert set(np.unique(trace.layout.column_table.image_index[trace.image_positions])) == {0, 1}
    assert_views_tile(trace.layout, resampled=case.resampled)


def test_widget_payload(case):
    model, processor = case.build()
    trace = mmviz.trace(
        model, processor, WIDE, "What is in the picture?", answer=None if case.kind == "dual" else "red"
    )
    widget = mmviz.Inspector(trace)
    assert len(widget.images) == 1
    assert widget.token_layout["images"][0]["width"] == WIDE.width
    html = widget.to_html()
    assert "mmviz" in html


def test_model_left_untouched(case):
    model, processor = case.build()
    before = {name: config._attn_implementation for name, config in _configs(model)}
    mmviz.trace(model, processor, TALL, "What is in the picture?", answer=None if case.kind == "dual" else "red")
    assert {name: config._attn_implementation for name, config in _configs(model)} == before
    assert not model.training
    assert all(p.requires_grad for p in model.parameters()) or not any(p.requires_grad for p in model.parameters())


def _configs(model: torch.nn.Module):
    yield "", model.config
    for key in getattr(model.config, "sub_configs", {}):
        sub = getattr(model.config, key, None)
        if sub is not None:
            yield key, sub


def test_gradient_methods(case):
    if not case.gradients:
        pytest.skip(f"{case.model_type}: the image does not reach a language model through embeddings")
    model, processor = case.build()
    trace = mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red")
    if case.kind == "cross":  # gradients reach the cross-attention keys; relevancy needs image positions
        with pytest.raises(mmviz.errors.UnsupportedModelError, match="cross-attention"):
            mmviz.methods.relevancy(trace)
    methods = [mmviz.methods.gradient_x_input] + ([] if case.kind == "cross" else [mmviz.methods.relevancy])
    for result in (method(trace) for method in methods):
        assert result.values.shape == (len(trace.tokens) - trace.answer_start, len(trace.image_positions))
        assert np.isfinite(result.values).all() and np.abs(result.values).max() > 0


def test_trace_file_round_trip(case, tmp_path):
    """save → load, without the model: equal tokens, layout, answer and maps; attention rows within the stated
    quantisation bound (half a step of each row); the loaded trace builds the widget and exports its page."""
    model, processor = case.build()
    images = [WIDE, TALL] if case.multi_image else [WIDE]
    answer = None if case.kind == "dual" else "red"
    trace = mmviz.trace(model, processor, images, "What is in the picture?", answer=answer)
    path = trace.save(tmp_path / "trace.mmviz")
    del model
    loaded = mmviz.load(path)
    assert loaded.run is None and (loaded.family, loaded.model_name) == (trace.family, trace.model_name)
    assert (loaded.tokens, loaded.answer, loaded.prompt, loaded.answer_start) == (
        trace.tokens, trace.answer, trace.prompt, trace.answer_start
    )  # fmt: skip
    for name in ("kinds", "image_index", "view", "grid", "grid_shape"):
        np.testing.assert_array_equal(getattr(loaded.layout, name), getattr(trace.layout, name), err_msg=name)
    np.testing.assert_array_equal(loaded.layout.boxes, trace.layout.boxes)
    assert loaded.layout.images == trace.layout.images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(loaded.images, trace.images, strict=True))
    rows = trace.attention_rows
    step = (rows.max(-1, keepdims=True) - rows.min(-1, keepdims=True)) / 255
    assert (np.abs(np.asarray(loaded.attention_rows) - rows) <= step / 2 + 1e-7).all()
    assert loaded.maps.keys() == trace.maps.keys()
    for name, result in trace.maps.items():
        np.testing.assert_array_equal(loaded.maps[name].values, result.values)
    html = mmviz.Inspector(loaded).to_html()
    assert "mmviz-payload" in html
