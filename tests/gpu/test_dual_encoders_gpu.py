"""Dual encoders (CLIP, SigLIP) on the accelerator: the patch–text ``similarity`` map and the vision tower's rows equal
those of the same weights on the CPU, the Inspector is built, and the model is left as found (the tiny offline
models of ``tests/families/build_clip.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import mmviz
from tests.families.build_clip import build_clip, build_siglip
from tests.gpu.helpers import (
    TOLERANCES,
    assert_close_to_cpu,
    assert_left_as_found,
    dtype_id,
    found,
    on,
    rounded_reference,
    tf32_off,
    weights,
)

CAPTION = "a red square above a blue circle"
BUILDERS = {"clip": build_clip, "siglip": build_siglip}


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    """A wide picture with a bright block, so the map has structure."""
    array = np.zeros((48, 80, 3), np.uint8)
    array[..., 2] = 120
    array[8:30, 40:70] = (230, 40, 40)
    return Image.fromarray(array)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_dual_encoder_on_the_device_gives_the_cpu_similarity_and_rows(family, picture, device, dtype):
    model, processor = BUILDERS[family]()
    moved, reference = on(model, device, dtype), rounded_reference(model, dtype)
    with tf32_off():
        mmviz.trace(moved, processor, picture, CAPTION)  # transformers' first-call hooks
        before, values = found(moved), weights(moved)
        traced = mmviz.trace(moved, processor, picture, CAPTION)
        expected = mmviz.trace(reference, processor, picture, CAPTION)
    assert_left_as_found(moved, before, values)
    similarity = traced.maps["similarity"]
    assert similarity.values.dtype == np.float32
    assert_close_to_cpu(similarity.values, expected.maps["similarity"].values, dtype, f"{family} similarity")
    assert traced.attention_rows.shape == expected.attention_rows.shape
    error = np.abs(traced.attention_rows - expected.attention_rows).max()
    assert error <= TOLERANCES[dtype].rows_cpu, f"{family} rows in {dtype_id(dtype)}: max abs {error:.3g}"
    inspector = mmviz.Inspector(traced)
    assert inspector.attention_mean and "similarity" in inspector.maps
