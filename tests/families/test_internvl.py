"""InternVL adapter against its real processor (``InternVLProcessor`` + ``GotOcr2ImageProcessorPil``) and a tiny model.

The tile grid is not in the prompt (no per-tile markers), so it is checked three ways: the processor's own token
count and ``num_patches`` over many image sizes, the pixels the processor put into each token's cell (a coordinate
image decoded back), and a negative control (another ``max_patches`` is refused, not silently mis-drawn).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmviz
from mmviz.adapters import InternVLAdapter, adapter_for
from mmviz.errors import ProcessorMismatchError
from tests.families.build_2026 import INTERNVL_MAX_TILES, INTERNVL_TILE, build_internvl
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image
from tests.test_capture_families import assert_rows_equal_eager_and_logits_unchanged

RAW = {"do_rescale": False, "do_normalize": False}
TOLERANCE = 0.75  # px: bicubic resampling with edge clamping moves a cell's mean coordinate by up to ≈0.6 px


@pytest.fixture(scope="module")
def internvl():
    model, processor = build_internvl()
    return model, processor, adapter_for(model, processor)


def encode(adapter, images, **kwargs):
    text = adapter.format_prompt("Describe it.", n_images=len(images))
    inputs = dict(adapter.processor(images=list(images), text=text, return_tensors="pt", **kwargs))
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), list(images), inputs)


def test_registered_family(internvl):
    model, _, adapter = internvl
    assert mmviz.adapters.supported_families()["internvl"] == "InternVL"
    assert type(adapter) is InternVLAdapter
    assert adapter.language_model() is model.model.language_model
    assert adapter.tokens_per_side == 4 and adapter.tile_size == INTERNVL_TILE


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(4, 400), height=st.integers(4, 400))
@example(width=10, height=10)  # one tile, no thumbnail
@example(width=400, height=8)  # very wide: 6×1
@example(width=8, height=400)  # very tall: 1×6
@example(width=64, height=64)  # a tie: 2×2 beats 1×1 (the image's area is over half of 4 tiles')
@example(width=100, height=60)
def test_layout_matches_processor(internvl, width, height):
    _, processor, adapter = internvl
    image = Image.new("RGB", (width, height), "gray")
    inputs, layout = encode(adapter, [image])
    frames = processor.image_processor(images=[image], crop_to_patches=True)["num_patches"][0]
    assert frames == processor._get_num_multimodal_tokens([(height, width)]).num_image_patches[0]
    assert int(inputs["pixel_values"].shape[0]) == frames <= INTERNVL_MAX_TILES + 1
    inserted = int((inputs["input_ids"] == processor.image_token_id).sum())
    positions = layout.image_positions
    assert len(positions) == inserted == frames * 16
    views = [mmviz.adapters.VIEWS[v] for v in layout.view[positions]]
    if frames == 1:
        assert set(views) == {"base"}
    else:
        assert views == ["tile"] * (frames - 1) * 16 + ["global"] * 16  # tiles first, the thumbnail last
    assert {tuple(s) for s in layout.grid_shape[positions]} == {(4, 4)}
    assert_views_tile(layout)
    assert_boxes_inside(layout)
    markers = layout.positions("image_sep")
    assert [layout.tokens[p] for p in markers] == ["<img>", "</img>"]
    assert markers.tolist() == [positions[0] - 1, positions[-1] + 1] and (layout.image_index[markers] == 0).all()


def decoded_cells(inputs) -> np.ndarray:
    """Mean (x, y) of the coordinate-image pixels in each token's 8×8-px cell (2×2 patches), frame by frame."""
    pixels = inputs["pixel_values"].numpy().astype(np.float64)  # (frames, 3, T, T)
    frames, _, side, _ = pixels.shape
    cells = pixels[:, :2].reshape(frames, 2, 4, side // 4, 4, side // 4).mean(axis=(3, 5))  # (frames, 2, 4, 4)
    return cells.transpose(0, 2, 3, 1).reshape(-1, 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(16, 255), height=st.integers(16, 255))
@example(width=250, height=60)
@example(width=60, height=250)
@example(width=100, height=100)
def test_boxes_land_where_the_processor_put_the_pixels(internvl, width, height):
    _, _, adapter = internvl
    inputs, layout = encode(adapter, [coordinate_image(width, height)], **RAW)
    boxes = layout.boxes[layout.image_positions].astype(np.float64)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5
    assert np.abs(decoded_cells(inputs) - centres).max() < TOLERANCE


def test_coordinate_check_catches_a_wrong_tile_order(internvl):
    """Negative control: the same boxes with the tiles read column-major are far off."""
    _, _, adapter = internvl
    inputs, layout = encode(adapter, [coordinate_image(64, 96)], **RAW)  # 2 cols × 3 rows + thumbnail
    boxes = layout.boxes[layout.image_positions].astype(np.float64)
    tiles = boxes[: 6 * 16].reshape(3, 2, 16, 4).transpose(1, 0, 2, 3).reshape(-1, 4)
    centres = np.stack([(tiles[:, 0] + tiles[:, 2]) / 2, (tiles[:, 1] + tiles[:, 3]) / 2], 1) - 0.5
    assert np.abs(decoded_cells(inputs)[: 6 * 16] - centres).max() > 5


def test_processor_run_with_other_tile_limits_is_refused(internvl):
    _, processor, adapter = internvl
    image = Image.new("RGB", (200, 40))
    text = adapter.format_prompt("Describe it.", n_images=1)
    inputs = dict(processor(images=[image], text=text, return_tensors="pt", max_patches=2))
    with pytest.raises(ProcessorMismatchError, match="max_patches"):
        adapter.layout(inputs["input_ids"][0].numpy(), [image], inputs)


def test_processor_with_another_tile_size_is_refused(internvl):
    model, processor, _ = internvl
    other = copy.copy(processor)
    other.image_processor = copy.deepcopy(processor.image_processor)
    other.image_processor.size = {"height": 64, "width": 64}
    with pytest.raises(ProcessorMismatchError, match="tiles"):
        adapter_for(model, other)


def test_rows_equal_eager_and_logits_are_unchanged(internvl):
    model, _, adapter = internvl
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 90, 3), np.uint8))
    inputs, _ = encode(adapter, [image])
    assert_rows_equal_eager_and_logits_unchanged(model, "text_config", inputs, num_layers=adapter.num_layers)


def test_vision_attention_per_tile(internvl):
    """The tower runs on every tile + the thumbnail: one ``[CLS] + 8×8`` attention map per frame."""
    model, processor, adapter = internvl
    plan = mmviz.CapturePlan(vision_attention=True)
    trace = mmviz.trace(model, processor, Image.new("RGB", (64, 32)), "What?", answer="red", capture=plan)
    vision = model.config.vision_config
    shape = (vision.num_hidden_layers, 3, vision.num_attention_heads, 65, 65)  # 2 tiles + thumbnail
    assert trace.vision_attention.shape == shape
    np.testing.assert_allclose(trace.vision_attention.sum(-1), 1.0, atol=1e-5)
    adapter.encode([Image.new("RGB", (64, 32))], adapter.format_prompt("What?", n_images=1))
    assert adapter.model_shape(1).num_images == 3  # the capture estimate counts every frame
