"""Mistral 3 adapter (Pixtral vision) against its real processor (``PixtralProcessor``) and a tiny model.

The grid comes from the processor's ``image_sizes``: checked against the inserted ``[IMG]`` / ``[IMG_BREAK]`` /
``[IMG_END]`` tokens and the processor's own token count over many image sizes (down-scaling past the longest edge,
rounding each side up to whole 8-px blocks), against the pixels the processor put into each token's block, against
the model (a local change of the image reaches exactly that token's LLM position), and for capture exactness.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmviz
from mmviz.adapters import Mistral3Adapter, adapter_for
from mmviz.errors import InputError
from tests.families.build_2026 import MISTRAL3_LONGEST, build_mistral3
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image
from tests.test_capture_families import assert_rows_equal_eager_and_logits_unchanged

RAW = {"do_rescale": False, "do_normalize": False}
TOLERANCE = 0.75  # px: bicubic resampling (uint8 rounding, edge clamping)
CELL = 8


@pytest.fixture(scope="module")
def mistral3():
    model, processor = build_mistral3()
    return model, processor, adapter_for(model, processor)


def encode(adapter, images, **kwargs):
    text = adapter.format_prompt("Describe it.", n_images=len(images))
    inputs = dict(adapter.processor(images=list(images), text=text, return_tensors="pt", **kwargs))
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), list(images), inputs)


def test_registered_family(mistral3):
    model, _, adapter = mistral3
    assert mmviz.adapters.supported_families()["mistral3"] == "Mistral 3"
    assert type(adapter) is Mistral3Adapter and adapter.cell == CELL
    assert adapter.language_model() is model.model.language_model


def expected_grid(width: int, height: int) -> tuple[int, int]:
    """The resize rule written out independently: scale down past the longest edge (floor), round up to 8 px."""
    ratio = max(height / MISTRAL3_LONGEST, width / MISTRAL3_LONGEST)
    if ratio > 1:
        height, width = math.floor(height / ratio), math.floor(width / ratio)
    return math.ceil(height / CELL), math.ceil(width / CELL)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 400), height=st.integers(1, 400))
@example(width=10, height=10)
@example(width=400, height=7)  # very wide: one row
@example(width=7, height=400)  # very tall: one column
@example(width=64, height=64)  # exactly the longest edge
def test_layout_matches_processor(mistral3, width, height):
    _, processor, adapter = mistral3
    assume(min(width, height) * MISTRAL3_LONGEST >= max(width, height))  # else refused (next test)
    image = Image.new("RGB", (width, height), "gray")
    inputs, layout = encode(adapter, [image])
    rows, cols = expected_grid(width, height)
    assert inputs["image_sizes"][0].tolist() == [rows * CELL, cols * CELL]
    inserted = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert inserted == len(layout.image_positions) == rows * cols
    assert inserted == processor._get_num_multimodal_tokens([(height, width)]).num_image_tokens[0]
    positions = layout.image_positions
    assert {tuple(s) for s in layout.grid_shape[positions]} == {(rows, cols)}
    assert (layout.grid[positions] == np.argwhere(np.ones((rows, cols)))).all()  # raster order
    newlines, seps = layout.positions("image_newline"), layout.positions("image_sep")
    assert [layout.tokens[p] for p in newlines] == ["[IMG_BREAK]"] * (rows - 1)
    assert [layout.tokens[p] for p in seps] == ["[IMG_END]"] and seps[0] == positions[-1] + 1
    assert (newlines == positions[cols - 1 : -1 : cols] + 1).all()  # a break after each row but the last
    assert (layout.image_index[np.concatenate([newlines, seps])] == 0).all()
    assert_views_tile(layout)
    assert_boxes_inside(layout)


def test_too_elongated_image_is_an_input_error(mistral3):
    """Scaled to the longest edge its short side would be 0 px (the processor itself fails): refused clearly."""
    model, processor, _ = mistral3
    with pytest.raises(InputError, match="elongated"):
        mmviz.trace(model, processor, Image.new("RGB", (400, 3)), "What is it?", answer="a line")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(8, 255), height=st.integers(8, 255))
@example(width=250, height=60)
@example(width=60, height=250)
@example(width=20, height=13)  # upscaled to 24 × 16
def test_boxes_land_where_the_processor_put_the_pixels(mistral3, width, height):
    _, _, adapter = mistral3
    inputs, layout = encode(adapter, [coordinate_image(width, height)], **RAW)
    h, w = inputs["image_sizes"][0].tolist()
    pixels = inputs["pixel_values"][0, :2, :h, :w].numpy().astype(np.float64)
    cells = pixels.reshape(2, h // CELL, CELL, w // CELL, CELL).mean(axis=(2, 4)).reshape(2, -1).T
    boxes = layout.boxes[layout.image_positions].astype(np.float64)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5
    assert np.abs(cells - centres).max() < TOLERANCE


def test_llm_positions_follow_the_layout_through_the_merger(mistral3):
    """Change the pixels inside ONE token's box with the tower's attention zeroed: exactly that position changes."""
    model, _, adapter = mistral3
    base = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)  # 3 × 5 blocks: no resize
    inputs, layout = encode(adapter, [Image.fromarray(base)])
    captured = {}

    def no_attention(module, args, output):
        return (torch.zeros_like(output[0]), *output[1:])

    def llm(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"][0].detach().clone()

    handles = [
        layer.attention.register_forward_hook(no_attention) for layer in model.model.vision_tower.transformer.layers
    ]
    handles.append(model.model.language_model.register_forward_pre_hook(llm, with_kwargs=True))
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
            reference = captured["embeds"].clone()
            for position in layout.image_positions:
                x0, y0, x1, y1 = (int(v) for v in layout.boxes[position])
                changed = base.copy()
                changed[y0:y1, x0:x1] = 255 - changed[y0:y1, x0:x1]
                model(**encode(adapter, [Image.fromarray(changed)])[0], use_cache=False)
                delta = (captured["embeds"] - reference).abs().amax(-1)
                assert np.flatnonzero(delta.numpy() > 1e-6).tolist() == [position]
    finally:
        for handle in handles:
            handle.remove()


def test_two_images_of_different_sizes(mistral3):
    model, processor, adapter = mistral3
    wide, tall = Image.new("RGB", (64, 16), "red"), Image.new("RGB", (16, 40), "green")
    _, layout = encode(adapter, [wide, tall])
    for index, shape in enumerate([(2, 8), (5, 2)]):
        mine = layout.image_positions[layout.image_index[layout.image_positions] == index]
        assert {tuple(s) for s in layout.grid_shape[mine]} == {shape}
    assert len(layout.positions("image_sep")) == 2
    trace = mmviz.trace(model, processor, [wide, tall], "Which is taller?", answer="the second")
    assert set(trace.layout.image_index[trace.image_positions]) == {0, 1}


def test_rows_equal_eager_and_logits_are_unchanged(mistral3):
    model, _, adapter = mistral3
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 50, 3), np.uint8))
    inputs, _ = encode(adapter, [image])
    assert_rows_equal_eager_and_logits_unchanged(model, "text_config", inputs, num_layers=adapter.num_layers)


def test_vision_attention_is_cut_per_image(mistral3):
    """The tower runs all images as one masked sequence: each image's block, rows summing to one."""
    model, processor, _ = mistral3
    plan = mmviz.CapturePlan(vision_attention=True)
    images = [Image.new("RGB", (32, 16)), Image.new("RGB", (16, 32))]  # 4 × 8 and 8 × 4 patches: one size
    trace = mmviz.trace(model, processor, images, "Compare.", answer="no", capture=plan)
    vision = model.config.vision_config
    assert trace.vision_attention.shape == (vision.num_hidden_layers, 2, vision.num_attention_heads, 32, 32)
    np.testing.assert_allclose(trace.vision_attention.sum(-1), 1.0, atol=1e-5)
