"""Idefics3 / SmolVLM adapters against their real processors and tiny random-weight models.

Tiles and the global image are checked against the processor's own output: its tile grid (``rows``/``cols`` from
the image processor), the ``<image>`` tokens it inserted, and the pixels it put in every tile (coordinate images).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmviz
from mmviz.adapters import Idefics3Adapter, SmolVLMAdapter, adapter_for
from mmviz.adapters.layout import IMAGE_NEWLINE, IMAGE_SEP, TEXT, VIEWS
from mmviz.errors import ProcessorMismatchError
from tests.families.build_qwen_idefics import (
    IDEFICS_SEQ_LEN,
    IDEFICS_TILE,
    build_idefics3,
    build_smolvlm,
    idefics_processor,
)
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image

BUILDERS = {"idefics3": build_idefics3, "smolvlm": build_smolvlm}
RAW = {"do_rescale": False, "do_normalize": False}  # pixel values stay the image's own uint8 values
# px. The processor resizes twice (longest edge, then up to tile multiples) and stores uint8 in between: with scales
# near 1 the rounded coordinates form a staircase whose error survives the cell mean (≤ 0.69 px over 400 random
# sizes). It mostly averages out over an image (|mean| ≤ 0.08 px), but not for a narrow image upscaled a lot: 12×128
# keeps a staircase bias of +0.24 px along its long side (measured). The mean is held below the 0.5 px a box
# convention error (pixel edges vs centres) would give.
TOLERANCE, MEAN_TOLERANCE = 0.75, 0.3
TILE, GLOBAL = VIEWS.index("tile"), VIEWS.index("global")


@pytest.fixture(params=sorted(BUILDERS), scope="module")
def idefics(request):
    model, processor = BUILDERS[request.param]()
    return model, processor, adapter_for(model, processor)


def encode(adapter, images, **kwargs):
    text = adapter.format_prompt("Describe it.", n_images=len(images))
    inputs = dict(adapter.processor(images=list(images), text=text, return_tensors="pt", **kwargs))
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), list(images), inputs)


def processor_tiles(processor, image) -> tuple[int, int]:
    """(rows, cols) of tiles as the IMAGE PROCESSOR reports them (0, 0: not split)."""
    out = processor.image_processor(images=[[image]], return_row_col_info=True)
    return int(out["rows"][0][0]), int(out["cols"][0][0])


def test_registered_families():
    families = mmviz.adapters.supported_families()
    assert families["idefics3"] == "Idefics3" and families["smolvlm"] == "SmolVLM"
    assert type(adapter_for(*build_idefics3())) is Idefics3Adapter
    assert type(adapter_for(*build_smolvlm())) is SmolVLMAdapter


def test_decoder_modules(idefics):
    model, _, adapter = idefics
    assert adapter.language_model() is model.model.text_model
    assert len(adapter.decoder_layers()) == model.config.text_config.num_hidden_layers
    assert adapter.final_norm() is model.model.text_model.norm
    assert adapter.unembedding() is model.lm_head
    assert adapter.tokens_per_side**2 == IDEFICS_SEQ_LEN


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(4, 900), height=st.integers(4, 900))
@example(width=10, height=10)
@example(width=900, height=6)  # very wide
@example(width=6, height=900)  # very tall
def test_layout_matches_processor(idefics, width, height):
    _, processor, adapter = idefics
    image = Image.new("RGB", (width, height), "gray")
    inputs, layout = encode(adapter, [image])
    rows, cols = processor_tiles(processor, image)
    inserted = int((inputs["input_ids"] == processor.image_token_id).sum())
    image_positions = layout.image_positions
    assert len(image_positions) == inserted == (rows * cols + 1) * IDEFICS_SEQ_LEN
    views = layout.view[image_positions]
    assert (views == TILE).sum() == rows * cols * IDEFICS_SEQ_LEN and (views == GLOBAL).sum() == IDEFICS_SEQ_LEN
    assert (views[-IDEFICS_SEQ_LEN:] == GLOBAL).all()  # tiles first, the global image last
    g = adapter.tokens_per_side
    assert {tuple(s) for s in layout.grid_shape[image_positions]} == {(g, g)}
    assert_views_tile(layout)
    assert_boxes_inside(layout)
    # markers: <fake_token_around_image> around every view, one <row_i_col_j> per tile, one <global-img>
    markers = [layout.tokens[p] for p in layout.positions("image_sep")]
    assert markers.count("<global-img>") == 1 and markers.count("<fake_token_around_image>") == rows * cols + 2
    assert [m for m in markers if m.startswith("<row_")] == [
        f"<row_{i + 1}_col_{j + 1}>" for i in range(rows) for j in range(cols)
    ]
    sep = layout.positions("image_sep", "image_newline")
    assert (layout.image_index[sep] == 0).all() and np.isnan(layout.boxes[sep]).all()
    newlines = inputs["input_ids"][0, layout.positions("image_newline")]
    assert adapter.tokenizer.decode(newlines).count("\n") == (rows + 1 if rows else 0)  # one per tile row + one
    assert layout.kinds[int(sep[-1]) + 1] == TEXT  # the question follows the closing marker


def _decoded_cells(frame: np.ndarray, g: int) -> np.ndarray:
    """Mean (x, y) of each of the g×g token cells of one processed tile / global image (C, T, T)."""
    cell = frame.shape[-1] // g
    x = frame[0].reshape(g, cell, g, cell).mean(axis=(1, 3)).ravel()
    y = frame[1].reshape(g, cell, g, cell).mean(axis=(1, 3)).ravel()
    return np.stack([x, y], axis=1)


def box_centres(layout, positions) -> np.ndarray:
    """Box centres in pixel-index units (pixel i spans [i, i + 1), so its coordinate value is centre − 0.5)."""
    boxes = layout.boxes[positions].astype(np.float64)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(4, 255), height=st.integers(4, 255))
@example(width=250, height=90)  # wide
@example(width=70, height=240)  # tall
@example(width=255, height=5)  # very wide
@example(width=5, height=255)  # very tall
@example(width=10, height=10)
@example(width=12, height=128)  # narrow and upscaled: the largest staircase bias found
def test_boxes_land_where_the_processor_put_the_pixels(idefics, width, height):
    """Every tile / global token's box centre = the mean original coordinate of the pixels in its cell."""
    _, processor, adapter = idefics
    image = coordinate_image(width, height)
    inputs, layout = encode(adapter, [image], **RAW)
    frames = inputs["pixel_values"][0].numpy()  # tiles row-major, then the global image
    rows, cols = processor_tiles(processor, image)
    assert len(frames) == rows * cols + 1
    g = adapter.tokens_per_side
    positions = layout.image_positions.reshape(len(frames), g * g)  # one run of g² tokens per frame, in order
    errors = []
    for index, (frame, run) in enumerate(zip(frames, positions, strict=True)):
        errors.append(_decoded_cells(frame, g) - box_centres(layout, run))
        assert np.abs(errors[-1]).max() < TOLERANCE, (index, np.abs(errors[-1]).max())
        assert layout.view[run[0]] == (GLOBAL if index == len(frames) - 1 else TILE)
    assert abs(np.mean(errors)) < MEAN_TOLERANCE


@pytest.mark.parametrize("size", [(250, 90), (70, 240)], ids=["wide", "tall"])
def test_coordinate_check_catches_wrong_boxes(idefics, size):
    """Negative controls: the global image's boxes for a tile, or the tiles in reverse order, are caught."""
    _, processor, adapter = idefics
    image = coordinate_image(*size)
    inputs, layout = encode(adapter, [image], **RAW)
    frames = inputs["pixel_values"][0].numpy()
    g = adapter.tokens_per_side
    positions = layout.image_positions.reshape(len(frames), g * g)
    assert np.abs(_decoded_cells(frames[0], g) - box_centres(layout, positions[-1])).max() > 3
    rows, cols = processor_tiles(processor, image)
    assert rows * cols > 1
    reversed_tiles = positions[:-1][::-1]
    errors = [
        np.abs(_decoded_cells(frame, g) - box_centres(layout, run)).max()
        for frame, run in zip(frames[:-1], reversed_tiles, strict=True)
    ]
    assert max(errors) > 3


@pytest.mark.parametrize("setting", ["no_splitting", "fits_one_tile"])
def test_unsplit_image_has_the_global_view_only(idefics, setting):
    model, processor, _ = idefics
    overrides = {"do_image_splitting": False} if setting == "no_splitting" else {"size": {"longest_edge": IDEFICS_TILE}}
    unsplit = idefics_processor(model.config.model_type, processor.tokenizer, **overrides)
    adapter = adapter_for(model, unsplit)
    image = Image.new("RGB", (150, 40), "white")
    assert processor_tiles(unsplit, image) == (0, 0)
    inputs, layout = encode(adapter, [image])
    assert len(layout.image_positions) == IDEFICS_SEQ_LEN == int((inputs["input_ids"] == unsplit.image_token_id).sum())
    assert set(layout.view[layout.image_positions]) == {GLOBAL}
    assert [layout.tokens[p] for p in layout.positions("image_sep")] == [
        "<fake_token_around_image>",
        "<global-img>",
        "<fake_token_around_image>",
    ]
    assert len(layout.positions("image_newline")) == 0
    assert_views_tile(layout)
    trace = mmviz.trace(model, unsplit, [image, coordinate_image(20, 60)], "Compare.", answer="same")
    assert set(trace.layout.view[trace.image_positions]) == {GLOBAL}
    assert set(trace.layout.image_index[trace.image_positions]) == {0, 1}


def test_two_images_keep_their_own_tiles(idefics):
    model, processor, adapter = idefics
    wide, tall = Image.new("RGB", (180, 50), "red"), Image.new("RGB", (40, 160), "green")
    _, layout = encode(adapter, [wide, tall])
    for index, image in enumerate((wide, tall)):
        rows, cols = processor_tiles(processor, image)
        mine = layout.image_positions[layout.image_index[layout.image_positions] == index]
        assert (layout.view[mine] == TILE).sum() == rows * cols * IDEFICS_SEQ_LEN
        assert layout.images[index].width == image.width
        box = layout.boxes[mine]
        assert box[:, 2].max() == pytest.approx(image.width) and box[:, 3].max() == pytest.approx(image.height)
    marked = layout.positions("image_sep", "image_newline")
    assert set(layout.image_index[marked]) == {0, 1}
    assert_views_tile(layout)
    trace = mmviz.trace(model, processor, [wide, tall], "Which is taller?", max_new_tokens=2)
    assert np.isfinite(trace.answer_logprobs).all()


def test_processor_with_another_image_seq_len_is_refused(idefics):
    model, processor, _ = idefics
    other = copy.copy(processor)
    other.image_seq_len = IDEFICS_SEQ_LEN * 4
    with pytest.raises(ProcessorMismatchError, match="image_seq_len"):
        adapter_for(model, other)


def test_unexpanded_image_run_is_refused(idefics):
    _, _, adapter = idefics
    image = Image.new("RGB", (64, 64))
    inputs, _ = encode(adapter, [image])
    ids = inputs["input_ids"][0].numpy().copy()
    ids[ids == adapter.tokenizer.convert_tokens_to_ids("<global-img>")] = adapter.tokenizer.convert_tokens_to_ids("a")
    with pytest.raises(ProcessorMismatchError, match="<global-img>"):
        adapter.layout(ids, [image], inputs)


def test_marker_kinds(idefics):
    _, _, adapter = idefics
    _, layout = encode(adapter, [Image.new("RGB", (100, 100))])
    kinds = {layout.tokens[p]: layout.kinds[p] for p in layout.positions("image_sep", "image_newline")}
    assert kinds["<global-img>"] == IMAGE_SEP and kinds["<row_1_col_1>"] == IMAGE_SEP
    assert IMAGE_NEWLINE in kinds.values()


def test_prompt_without_chat_template(idefics):
    model, processor, _ = idefics
    bare = copy.copy(processor)
    bare.chat_template = None
    adapter = adapter_for(model, bare)
    text = adapter.format_prompt("Compare.", n_images=2)
    assert text.count("<image>") == 2 and text.endswith("Assistant:")
    trace = mmviz.trace(model, bare, [Image.new("RGB", (60, 60)), Image.new("RGB", (90, 30))], "Compare.", answer="no")
    assert trace.layout.tokens.count("<global-img>") == 2
