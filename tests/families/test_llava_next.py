"""LLaVA-NeXT / LLaVA-OneVision layouts checked against the real processors AND the models' own feature packing.

The key test feeds images whose red / green channels hold each pixel's own x / y, takes the processor's raw tiles
(no rescale / normalise), averages the decoded coordinates over every patch of every tile, and runs those
per-patch coordinates through the MODEL's ``pack_image_features`` (un-padding, OneVision's bilinear down-sampling,
newline insertion). Position k of the packed sequence then says which original pixels feed image token k, and it
must land in (and, away from the borders, at the centre of) the box the adapter gave that token.
"""

from __future__ import annotations

import dataclasses
import functools
import types

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessor,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, image_size_to_num_patches
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

import mmviz
from mmviz.adapters import LlavaNextAdapter, LlavaOnevisionAdapter, adapter_for
from mmviz.adapters.layout import IMAGE, IMAGE_NEWLINE, TEXT, VIEWS, TokenLayout
from mmviz.errors import ProcessorMismatchError
from mmviz.zoo.tiny import tiny_tokenizer
from tests.families.build_llava_next import build_llava_next, build_llava_onevision
from tests.families.checks import assert_boxes_inside, assert_views_tile, overlapping

BUILDERS = {"llava_next": build_llava_next, "llava_onevision": build_llava_onevision}
BACKENDS = {
    "llava_next": (LlavaNextImageProcessorPil, LlavaNextImageProcessor),
    "llava_onevision": (LlavaOnevisionImageProcessorPil, LlavaOnevisionImageProcessor),
}
NEWLINE = -1000.0  # value of the image_newline vector fed to pack_image_features
TOL = 0.75  # original px: uint8 rounding of the resampled coordinates biases a cell by up to 0.5 px (ties at .5)


def coord_image(width: int, height: int) -> Image.Image:
    """Red = x, green = y of every pixel (so images are at most 256 px a side)."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, :, 0] = np.arange(width)[None, :]
    array[:, :, 1] = np.arange(height)[:, None]
    return Image.fromarray(array)


class Family(tuple):
    """``(name, model, processor, adapter)`` with a short repr (hypothesis prints its arguments)."""

    def __repr__(self) -> str:
        return f"<{self[0]}>"


@pytest.fixture(params=list(BUILDERS), scope="module")
def family(request):
    model, processor = BUILDERS[request.param]()
    return Family((request.param, model, processor, adapter_for(model, processor)))


def _layout(adapter, images):
    inputs = adapter.encode(images, adapter.format_prompt("Describe it.", n_images=len(images)))
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), images, inputs)


def _packed_coordinates(model, adapter, image_processor, images) -> tuple[np.ndarray, torch.Tensor]:
    """Per image token, the mean original (x, y) of the pixels the model packs there (NaN rows: newlines)."""
    onevision = isinstance(adapter, LlavaOnevisionAdapter)
    batch = [list(images)] if onevision else list(images)
    raw = image_processor(batch, do_rescale=False, do_normalize=False, return_tensors="pt")
    patched = adapter.patched_images(len(images), raw)
    S, P, g = adapter.tile_size, adapter.patch_size, adapter.grid_size
    features = []
    for index, image in enumerate(images):
        n_tiles = image_size_to_num_patches((image.height, image.width), adapter.pinpoints, S) if patched[index] else 1
        tiles = raw["pixel_values"][index][:n_tiles, :2, : g * P, : g * P].double()  # the conv reads g·P pixels
        cells = tiles.reshape(n_tiles, 2, g, P, g, P).mean(dim=(3, 5))
        features.append(cells.permute(0, 2, 3, 1).reshape(n_tiles, g * g, 2))
    newline = torch.full((2,), NEWLINE, dtype=torch.float64)
    with torch.no_grad():
        if onevision:
            packed, _ = model.model.pack_image_features(
                features,
                raw["image_sizes"],
                image_newline=newline,
                vision_aspect_ratio=model.config.vision_aspect_ratio,
            )
        else:
            packed, _ = model.model.pack_image_features(
                features, raw["image_sizes"], model.config.vision_feature_select_strategy, image_newline=newline
            )
    sequence = torch.cat(packed).numpy()
    sequence[sequence[:, 0] == NEWLINE] = np.nan
    return sequence, raw


def _padding_margins(adapter, image, anyres: bool, view: str) -> tuple[float | None, float | None]:
    """Per axis, None when the processor did not pad it, else how far (original px) the fill colour reaches in.

    The high-res canvas is resized THEN padded: only cells touching the border see the fill. OneVision's
    multi-image base is padded THEN resized: the resampling filter (radius 2 output px) blends it further in.
    """
    if view == "base":
        if anyres:
            return None, None
        reach = 2.5 * max(image.width, image.height) / adapter.tile_size
        return (reach if image.width < image.height else None), (reach if image.height < image.width else None)
    h_b, w_b = select_best_resolution((image.height, image.width), adapter.pinpoints)
    zeros = np.broadcast_to(np.zeros((), np.uint8), (3, image.height, image.width))
    new_h, new_w = get_patch_output_size(zeros, (h_b, w_b), "channels_first")
    return (0.0 if new_w < w_b else None), (0.0 if new_h < h_b else None)


def assert_each_image_tiles(layout: TokenLayout, resampled: bool = False) -> None:
    """``assert_views_tile`` image by image (it expects every image to have every view present in the layout)."""
    image_tokens = layout.positions("image")
    for index in range(len(layout.images)):
        others = image_tokens[layout.image_index[image_tokens] != index]
        kinds = layout.kinds.copy()
        kinds[others] = TEXT
        assert_views_tile(dataclasses.replace(layout, kinds=kinds), resampled=resampled)


def check_boxes_against_pixels(model, adapter, image_processor, images, off_centre: float = 0.0) -> int:
    """Assert every box holds the pixels the model packs at its position; returns how many boxes were checked.

    A box's centre must match those pixels' mean within ``TOL`` px, or within ``off_centre`` × the box's size for
    geometries where boxes take in pixels no patch reads (tile remainders when ``S % P != 0``). A box that others
    overlap (OneVision's down-sampled grid: a token mixes its own cell with the next one, weights unknown here)
    must hold the mean in its middle half.
    """
    inputs, layout = _layout(adapter, images)
    decoded, raw = _packed_coordinates(model, adapter, image_processor, images)
    positions = np.flatnonzero(inputs["input_ids"][0].numpy() == adapter.image_token_id)
    assert len(decoded) == len(positions), "the model packs a different number of features than the processor"
    is_newline = np.isnan(decoded[:, 0])
    np.testing.assert_array_equal(layout.kinds[positions], np.where(is_newline, IMAGE_NEWLINE, IMAGE))
    assert np.isnan(layout.boxes[positions[is_newline]]).all()
    anyres = adapter.patched_images(len(images), raw)
    resampled = np.zeros(len(layout.boxes), bool)
    for image in range(len(images)):
        for view in range(len(VIEWS)):
            group = positions[(layout.image_index[positions] == image) & (layout.view[positions] == view)]
            group = group[np.isfinite(layout.boxes[group, 0])]
            resampled[group] = overlapping(layout.boxes[group])
    n_checked = 0
    for position, (x, y) in zip(positions[~is_newline], decoded[~is_newline], strict=True):
        image = images[layout.image_index[position]]
        view = VIEWS[layout.view[position]]
        x0, y0, x1, y1 = layout.boxes[position]
        if not np.isfinite(x0):
            continue  # the cell sees only padding
        reach_x, reach_y = _padding_margins(adapter, image, anyres[layout.image_index[position]], view)
        at_pad_x = reach_x is not None and (x0 <= reach_x or x1 >= image.width - reach_x)
        at_pad_y = reach_y is not None and (y0 <= reach_y or y1 >= image.height - reach_y)
        if at_pad_x or at_pad_y:
            continue  # padding (fill 0 or image_mean) is averaged into this cell, or the box was widened to the edge
        label = f"{view} token at {position}, box {(x0, y0, x1, y1)} of a {image.width}×{image.height} image"
        assert x0 - TOL <= x + 0.5 <= x1 + TOL and y0 - TOL <= y + 0.5 <= y1 + TOL, f"{label}: pixels ({x}, {y})"
        # pixel i has its centre at i + 0.5, so the mean decoded coordinate of a box is its centre − 0.5
        share = 0.25 if resampled[position] else off_centre
        tol_x, tol_y = max(TOL, share * (x1 - x0)), max(TOL, share * (y1 - y0))
        assert abs((x0 + x1) / 2 - 0.5 - x) <= tol_x and abs((y0 + y1) / 2 - 0.5 - y) <= tol_y, f"{label}: ({x}, {y})"
        n_checked += 1
    return n_checked


# -- the processor's pixels land in the adapter's boxes ----------------------------------------------------------
@pytest.mark.parametrize("backend", [0, 1], ids=["pil", "torchvision"])
@pytest.mark.parametrize("size", [(220, 70), (60, 200)], ids=["wide", "tall"])
def test_boxes_hold_the_processors_pixels(family, backend, size):
    name, model, processor, adapter = family
    image_processor = BACKENDS[name][backend](**processor.image_processor.to_dict())
    n_checked = check_boxes_against_pixels(model, adapter, image_processor, [coord_image(*size)])
    assert n_checked >= 16 + 8  # the whole base view and most of the high-res grid


@pytest.mark.parametrize("backend", [0, 1], ids=["pil", "torchvision"])
def test_two_image_boxes_hold_the_processors_pixels(family, backend):
    name, model, processor, adapter = family
    image_processor = BACKENDS[name][backend](**processor.image_processor.to_dict())
    images = [coord_image(120, 90), coord_image(80, 110)]  # OneVision pads these to squares: keep the cells inside
    assert check_boxes_against_pixels(model, adapter, image_processor, images) >= 2 * 8


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(10, 256), st.integers(10, 256)), min_size=1, max_size=2),
)
@example(sizes=[(256, 10)])
@example(sizes=[(10, 256)])
@example(sizes=[(10, 10)])
@example(sizes=[(256, 13), (11, 200)])
def test_layout_matches_processor_and_model_packing(family, sizes):
    """Random sizes and aspect ratios: counts, order and pixel positions agree with processor and model."""
    name, model, processor, adapter = family
    images = [coord_image(w, h) for w, h in sizes]
    check_boxes_against_pixels(model, adapter, processor.image_processor, images)
    inputs, layout = _layout(adapter, images)
    marked = layout.positions("image", "image_newline")
    assert len(marked) == int((inputs["input_ids"] == adapter.image_token_id).sum())
    assert_each_image_tiles(layout, resampled=name == "llava_onevision")
    assert_boxes_inside(layout)
    for index, image in enumerate(images):
        assert layout.images[index].covered == (0.0, 0.0, float(image.width), float(image.height))


def _released_geometry(name: str):
    """A weightless stand-in with a released checkpoint's geometry: the adapter and ``pack_image_features`` only
    read ``config`` (and ``image_newline``), so no 7B-sized tower is built."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    if name == "llava_next":  # llava-v1.6-*: CLIP-L/14-336, 5 pinpoints
        pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        config = LlavaNextConfig(
            vision_config=CLIPVisionConfig(image_size=336, patch_size=14),
            text_config=LlamaConfig(vocab_size=len(tokenizer)),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            image_grid_pinpoints=pinpoints,
        )
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=pinpoints
        )
        processor = LlavaNextProcessor(
            image_processor,
            tokenizer,
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
        packer, adapter_class = LlavaNextModel, LlavaNextAdapter
    else:  # llava-onevision-qwen2-*: SigLIP-so400m/14-384 (378 of 384 px read), 36 pinpoints, anyres_max_9
        config = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(image_size=384, patch_size=14),
            text_config=Qwen2Config(vocab_size=len(tokenizer)),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        )
        image_processor = LlavaOnevisionImageProcessorPil()  # class defaults = the released preprocessor config
        processor = LlavaOnevisionProcessor(
            image_processor,
            tokenizer,
            LlavaOnevisionVideoProcessor(),
            num_image_tokens=27 * 27,
            vision_feature_select_strategy="full",
        )
        packer, adapter_class = LlavaOnevisionModel, LlavaOnevisionAdapter
    inner = types.SimpleNamespace(config=config, image_newline=torch.zeros(8))
    inner.pack_image_features = functools.partial(packer.pack_image_features, inner)
    model = types.SimpleNamespace(config=config, model=inner)
    adapter = adapter_class(model, processor)
    adapter.check()
    return model, image_processor, adapter


@pytest.mark.parametrize("name", list(BUILDERS))
def test_released_checkpoint_geometry(name):
    """The released checkpoints' sizes: 336- and 384-px tiles, real pinpoints, anyres_max_9 on 27×27 grids."""
    model, image_processor, adapter = _released_geometry(name)
    for sizes in ([(220, 70)], [(60, 200)], [(256, 256), (90, 120)], [(17, 31)]):
        images = [coord_image(*size) for size in sizes]
        assert check_boxes_against_pixels(model, adapter, image_processor, images, off_centre=0.2) > 100
        _, layout = _layout(adapter, images)
        assert_each_image_tiles(layout, resampled=name == "llava_onevision")
        assert_boxes_inside(layout)
    if name == "llava_onevision":  # a 6×6-tile canvas (162² cells) is down-sampled to at most 9·27² cells
        plan = adapter.anyres_plan(2000, 2000)
        assert plan.crop_shape == (81, 81)  # ratio = sqrt(162² / (9·27²)) = 2


# -- structure -------------------------------------------------------------------------------------------------
def _feature_grid(adapter, width: int, height: int) -> tuple[int, int]:
    h_b, w_b = select_best_resolution((height, width), adapter.pinpoints)
    return h_b // adapter.tile_size * adapter.grid_size, w_b // adapter.tile_size * adapter.grid_size


@pytest.mark.parametrize(("width", "height"), [(240, 40), (40, 240)])
def test_unpadding_is_exercised(family, width, height):
    """The tiny configs keep the interesting case: whole rows / columns of padding cells un-padded away."""
    _, _, _, adapter = family
    plan = adapter.anyres_plan(width, height)
    rows, cols = _feature_grid(adapter, width, height)
    assert plan.crop_shape == ((2, cols) if width > height else (rows, 2))
    kept_rows, kept_cols = plan.crop_shape
    assert len(plan) == adapter.grid_size**2 + kept_rows * (kept_cols + 1)


def test_onevision_downsamples_large_grids():
    model, processor = build_llava_onevision()
    adapter = adapter_for(model, processor)
    rows, cols = _feature_grid(adapter, 120, 40)
    plan = adapter.anyres_plan(120, 40)
    assert (rows, cols) == (4, 12) and adapter.max_cells == 32
    assert plan.crop_shape == (3, 9)  # ratio sqrt(48 / 32) = 1.22 > 1.1: (4 // 1.22, 12 // 1.22)
    assert adapter.anyres_plan(20, 20).crop_shape == _feature_grid(adapter, 20, 20) == (4, 4)  # 16 cells: kept


def test_feature_counts_match_the_model(family):
    """The model's own get_image_features packs exactly as many features per image as the layout has positions."""
    _, model, _, adapter = family
    for images in ([coord_image(220, 70)], [coord_image(60, 200), coord_image(90, 90)]):
        inputs, layout = _layout(adapter, images)
        kwargs = {key: inputs[key] for key in ("pixel_values", "image_sizes", "batch_num_images") if key in inputs}
        with torch.no_grad():
            features = model.model.get_image_features(**kwargs).pooler_output
        per_image = [int((layout.image_index[layout.positions("image", "image_newline")] == i).sum()) for i in (0, 1)]
        assert [len(f) for f in features] == per_image[: len(images)]


def test_trace_two_images(family):
    name, model, processor, adapter = family
    images = [coord_image(120, 40), coord_image(30, 90)]
    trace = mmviz.trace(model, processor, images, "What is in the picture?", max_new_tokens=2)
    layout = trace.layout
    assert_views_tile(layout, resampled=name == "llava_onevision")
    for index in (0, 1):
        image_tokens = layout.positions("image")
        mine = image_tokens[layout.image_index[image_tokens] == index]
        views = {VIEWS[v] for v in layout.view[mine]}
        newlines = layout.positions("image_newline")
        n_newlines = int((layout.image_index[newlines] == index).sum())
        if name == "llava_next":
            assert views == {"base", "crop"}
            rows = {layout.grid_shape[p][0] for p in mine if VIEWS[layout.view[p]] == "crop"}
            assert n_newlines == rows.pop()
        else:  # OneVision's multi-image mode: base view only, one newline per image
            assert views == {"base"}
            assert n_newlines == 1
            assert len(mine) == adapter.grid_size**2
    assert np.isnan(layout.boxes[layout.positions("image_newline")]).all()


def test_single_image_sequence_order(family):
    """[g² base tokens] then rows of [W_u crop tokens + newline], each grid in raster order."""
    _, _, _, adapter = family
    _, layout = _layout(adapter, [coord_image(120, 40)])
    span = layout.positions("image", "image_newline")
    assert np.all(np.diff(span) == 1)
    g = adapter.grid_size
    assert [VIEWS[v] for v in layout.view[span[: g * g]]] == ["base"] * g * g
    rows, cols = layout.grid_shape[span[g * g]]
    table = span[g * g :].reshape(rows, cols + 1)
    assert (layout.kinds[table[:, -1]] == IMAGE_NEWLINE).all()
    cells = layout.grid[table[:, :-1].ravel()]
    np.testing.assert_array_equal(cells, np.stack(np.divmod(np.arange(rows * cols), cols), axis=1))


# -- mismatches are caught ---------------------------------------------------------------------------------------
def test_mismatched_pinpoints_are_refused(family):
    name, model, processor, _ = family
    image_processor = type(processor.image_processor)(
        **{**processor.image_processor.to_dict(), "image_grid_pinpoints": [[28, 56], [56, 28]]}
    )
    other = type(processor)(
        image_processor=image_processor,
        tokenizer=processor.tokenizer,
        **({"video_processor": processor.video_processor} if name == "llava_onevision" else {}),
    )
    with pytest.raises(ProcessorMismatchError, match="pinpoints"):
        adapter_for(model, other)


def test_wrong_patch_size_is_refused():
    model, processor = build_llava_next()
    other = LlavaNextProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    with pytest.raises(ProcessorMismatchError, match="patch_size"):
        adapter_for(model, other)
    adapter = LlavaNextAdapter(model, other)  # skipping check(): the token count check still catches it
    with pytest.raises(ProcessorMismatchError, match="image tokens"):
        adapter.encode([coord_image(50, 40)], "<image> hi")


def test_truncated_image_span_is_refused(family):
    _, _, _, adapter = family
    image = coord_image(120, 40)
    inputs, _ = _layout(adapter, [image])
    ids = inputs["input_ids"][0].numpy()
    with pytest.raises(ProcessorMismatchError):
        adapter.layout(np.delete(ids, np.flatnonzero(ids == adapter.image_token_id)[5]), [image], inputs)


def test_pixel_check_catches_a_wrong_formula(family, monkeypatch):
    """Negative control: stretching the image over the whole pinpoint canvas (forgetting the centred padding)
    keeps every token count right but must fail the pixel check (on an image whose grid OneVision does not
    down-sample, where a token's mean must sit at its box's centre)."""
    _, model, processor, adapter = family
    monkeypatch.setattr("mmviz.adapters.llava_next.get_patch_output_size", lambda image, target, data_format: target)
    with pytest.raises(AssertionError, match="crop token"):
        check_boxes_against_pixels(model, adapter, processor.image_processor, [coord_image(150, 70)])
