"""Token layout: image positions match the processor's tokens; boxes match the processor's real geometry."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmviz.adapters import adapter_for
from mmviz.adapters.layout import KINDS
from tests.families.checks import coordinate_image

RAW = {"do_rescale": False, "do_normalize": False, "return_tensors": "np"}


def processor_variant(processor, variant: str):
    """The tiny LLaVA processor with CLIP's centre crop, LLaVA's pad-to-square, or a plain stretch."""
    processor = copy.deepcopy(processor)
    ip = processor.image_processor
    size = ip.crop_size["height"]
    if variant == "pad":
        from transformers import LlavaImageProcessorPil

        ip = processor.image_processor = LlavaImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_pad=True
        )
    elif variant == "stretch":
        ip.size = {"height": size, "width": size}
        ip.do_center_crop = False
    return processor


def layout_for(model, processor, image):
    adapter = adapter_for(model, processor)
    inputs = adapter.encode([image], adapter.format_prompt("Describe it.", 1))
    ids = inputs["input_ids"][0].numpy()
    return adapter.layout(ids, [image], inputs), ids, adapter


def max_centre_error(layout, canvas: np.ndarray, patch: int, pad_margin: float) -> float:
    """Largest distance between a token box's centre and the mean original coordinate its cell received."""
    geometry = layout.images[0]
    errors = []
    for position in layout.image_positions:
        row, col = layout.grid[position]
        x0, y0, x1, y1 = layout.boxes[position]
        if pad_margin and (
            x0 < pad_margin or y0 < pad_margin or x1 > geometry.width - pad_margin or y1 > geometry.height - pad_margin
        ):
            continue  # the resampler blends padding into cells next to it
        cell = canvas[:, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
        errors.append(abs(cell[0].mean() - ((x0 + x1) / 2 - 0.5)))
        errors.append(abs(cell[1].mean() - ((y0 + y1) / 2 - 0.5)))
    return max(errors, default=0.0)


sizes = st.tuples(st.integers(10, 256), st.integers(10, 256))


@pytest.mark.parametrize("variant", ["centre-crop", "pad", "stretch"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=sizes)
@example(size=(10, 10))
@example(size=(256, 12))
@example(size=(12, 256))
@example(size=(255, 97))
def test_boxes_follow_the_processors_geometry(llava_small, variant, size):
    model, base = llava_small
    processor = processor_variant(base, variant)
    width, height = size
    image = coordinate_image(width, height)
    layout, _, _ = layout_for(model, processor, image)
    canvas = processor.image_processor(images=[image], **RAW)["pixel_values"][0]
    patch = model.config.vision_config.patch_size
    margin = 2.0 if variant == "pad" and width != height else 0.0
    error = max_centre_error(layout, canvas, patch, margin)
    # uint8 rounding of the coordinates alone is worth up to 0.5 px when a cell is upsampled
    assert error < 0.6, f"{variant} {width}×{height}: box centres off by {error:.2f} px"


@pytest.mark.parametrize("variant", ["centre-crop", "pad", "stretch"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.tuples(st.integers(1, 4000), st.integers(1, 4000)))
@example(size=(10, 10))
@example(size=(4000, 7))
@example(size=(7, 4000))
def test_boxes_tile_the_covered_region_without_gaps_or_overlaps(llava_small, variant, size):
    model, base = llava_small
    processor = processor_variant(base, variant)
    image = Image.new("RGB", size)
    layout, ids, adapter = layout_for(model, processor, image)
    inserted = int((ids == adapter.image_token_id).sum())
    assert len(layout.positions("image")) == inserted == adapter.tokens_per_image
    boxes = layout.boxes[layout.image_positions].astype(np.float64)
    x0, y0, x1, y1 = layout.images[0].covered
    assert np.all(boxes[:, 0] >= x0 - 1e-3) and np.all(boxes[:, 2] <= x1 + 1e-3)
    assert np.all(boxes[:, 1] >= y0 - 1e-3) and np.all(boxes[:, 3] <= y1 + 1e-3)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert areas.sum() == pytest.approx((x1 - x0) * (y1 - y0), rel=1e-4)  # no gaps (given no overlaps)
    overlap_w = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    overlap_h = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    overlap = np.clip(overlap_w, 0, None) * np.clip(overlap_h, 0, None)
    np.fill_diagonal(overlap, 0)
    assert overlap.max() <= 1e-6 * max(size) ** 2


def test_the_geometry_check_catches_a_wrong_formula(llava_small):
    """Negative control: stretch boxes judged against a centre-cropping processor are several pixels off."""
    model, processor = llava_small
    image = coordinate_image(250, 160)
    layout, _, _ = layout_for(model, processor_variant(processor, "stretch"), image)
    canvas = processor.image_processor(images=[image], **RAW)["pixel_values"][0]
    assert max_centre_error(layout, canvas, model.config.vision_config.patch_size, 0.0) > 5


def test_centre_crop_leaves_the_sides_of_a_wide_image_uncovered(llava_small):
    model, processor = llava_small
    layout, _, _ = layout_for(model, processor, Image.new("RGB", (300, 100)))
    assert layout.images[0].covered == pytest.approx((100.0, 0.0, 200.0, 100.0))
    first = layout.row(int(layout.image_positions[0]))
    assert first["grid_rc"] == (0, 0) and first["grid_shape"] == (4, 4) and first["view"] == "base"
    assert first["box"] == pytest.approx((100.0, 0.0, 125.0, 25.0))


def test_every_position_has_one_row_with_its_kind(llava_small):
    model, processor = llava_small
    layout, ids, _ = layout_for(model, processor, Image.new("RGB", (64, 48)))
    assert len(layout) == len(ids)
    kinds = [KINDS[k] for k in layout.kinds]
    assert kinds[0] == "special"  # <s>
    assert kinds.count("image") == 16
    assert set(kinds) == {"special", "text", "image"}
    image_rows = [layout.row(int(p)) for p in layout.positions("image")]
    assert all(r["token"] == "<image>" and r["box"] is not None for r in image_rows)
    assert all(r["box"] is None for r in layout.rows() if r["kind"] != "image")
