"""Aya Vision adapter against its real processor (``AyaVisionProcessor`` + ``GotOcr2ImageProcessorPil``).

Tiles come from the processor's crop grid (as InternVL's) and are tagged ``TILE_k`` / ``TILE_GLOBAL`` in the prompt:
checked against the processor's counts over many sizes and against the pixels in each token's cell; the logit lens
applies Cohere's ``logit_scale`` (its last depth equals the model's own logits), and captured rows equal eager.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmviz
from mmviz.adapters import VIEWS, AyaVisionAdapter, adapter_for
from mmviz.capture.hidden import recording_hidden_states
from mmviz.errors import ProcessorMismatchError
from tests.families.build_2026 import AYA_MAX_TILES, build_aya_vision
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image
from tests.families.test_internvl import RAW, TOLERANCE, decoded_cells
from tests.test_capture_families import assert_rows_equal_eager_and_logits_unchanged


@pytest.fixture(scope="module")
def aya():
    model, processor = build_aya_vision()
    return model, processor, adapter_for(model, processor)


def encode(adapter, images, **kwargs):
    text = adapter.format_prompt("Describe it.", n_images=len(images))
    inputs = dict(adapter.processor(images=list(images), text=text, return_tensors="pt", **kwargs))
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), list(images), inputs)


def test_registered_family(aya):
    model, _, adapter = aya
    assert mmviz.adapters.supported_families()["aya_vision"] == "Aya Vision"
    assert type(adapter) is AyaVisionAdapter and adapter.tokens_per_side == 4
    assert adapter.placeholder == "<image>" and adapter.image_token == "<|IMG_PATCH|>"
    assert adapter.image_token_id == model.config.image_token_id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(4, 400), height=st.integers(4, 400))
@example(width=10, height=10)  # one tile: TILE_GLOBAL only
@example(width=400, height=8)  # very wide
@example(width=8, height=400)  # very tall
@example(width=64, height=64)
def test_layout_matches_processor(aya, width, height):
    _, processor, adapter = aya
    image = Image.new("RGB", (width, height), "gray")
    inputs, layout = encode(adapter, [image])
    frames = processor._get_num_multimodal_tokens([(height, width)]).num_image_patches[0]
    assert int(inputs["pixel_values"].shape[0]) == frames <= AYA_MAX_TILES + 1
    inserted = int((inputs["input_ids"] == processor.image_token_id).sum())
    positions = layout.image_positions
    assert len(positions) == inserted == frames * 16
    views = [VIEWS[v] for v in layout.view[positions]]
    assert views == (["base"] * 16 if frames == 1 else ["tile"] * (frames - 1) * 16 + ["global"] * 16)
    assert_views_tile(layout)
    assert_boxes_inside(layout)
    seps = layout.positions("image_sep")
    tags = "".join(layout.tokens[p] for p in seps)
    assert tags.startswith("<|START_OF_IMG|>") and tags.endswith("TILE_GLOBAL<|END_OF_IMG|>")
    assert tags.count("TILE_") == frames and (layout.image_index[seps] == 0).all()
    assert len(seps) + len(positions) == seps[-1] - seps[0] + 1  # the whole expansion is marked


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(16, 255), height=st.integers(16, 255))
@example(width=250, height=60)
@example(width=60, height=250)
def test_boxes_land_where_the_processor_put_the_pixels(aya, width, height):
    _, _, adapter = aya
    inputs, layout = encode(adapter, [coordinate_image(width, height)], **RAW)
    boxes = layout.boxes[layout.image_positions].astype(np.float64)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5
    assert np.abs(decoded_cells(inputs) - centres).max() < TOLERANCE


def test_pre_expanded_prompt_is_refused(aya):
    model, processor, _ = aya
    with pytest.raises(ProcessorMismatchError, match="IMG_PATCH"):
        mmviz.trace(model, processor, Image.new("RGB", (40, 40)), "<image><|IMG_PATCH|> What?", answer="red")


def test_logit_lens_last_depth_equals_the_models_logits(aya):
    """Cohere scales the head's logits by ``logit_scale``: the lens must too (its last depth is the output)."""
    model, _, adapter = aya
    inputs, _ = encode(adapter, [Image.new("RGB", (40, 40), "blue")])
    with torch.no_grad(), recording_hidden_states(adapter.decoder_layers(), [adapter.num_layers]) as states:
        output = model(**inputs)
    with torch.no_grad():
        lens = adapter.lens_logits(states[adapter.num_layers])
    assert model.config.text_config.logit_scale != 1
    torch.testing.assert_close(lens, output.logits, atol=1e-5, rtol=0)


def test_rows_equal_eager_and_logits_are_unchanged(aya):
    """Cohere 2's sliding-window layers included (window 8 < the sequence)."""
    model, _, adapter = aya
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 90, 3), np.uint8))
    inputs, _ = encode(adapter, [image])
    assert inputs["input_ids"].shape[1] > model.config.text_config.sliding_window
    assert_rows_equal_eager_and_logits_unchanged(model, "text_config", inputs, num_layers=adapter.num_layers)
