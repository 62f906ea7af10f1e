"""Layouts the model confirms: every adapter's boxes against the pixels its tokens read (mmviz.adapters.verify).

The probe silences the vision tower's attention, so each image feature reads only its own patches, and maps the
processed pixels back to the original image with constant and ramp images (``mmviz/adapters/measured.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmviz
from mmviz.adapters import _REGISTRY as REGISTRY
from mmviz.adapters import GenericAdapter, adapter_for, measure_layout, verify
from mmviz.adapters.layout import VIEWS
from mmviz.errors import UnsupportedModelError
from mmviz.model_state import snapshot
from tests.families.registry import cases

TOLERANCE = 1.5  # original pixels
CASES = cases()
SHAPES = {
    "wide": Image.new("RGB", (200, 120), "gray"),
    "tall": Image.new("RGB", (30, 90), "gray"),
    "10x10": Image.new("RGB", (10, 10), "gray"),
}
NOT_PATCH_LOCAL = {
    "dual": "a dual encoder has no placeholder tokens that image features replace",
    "query": "Q-Former queries read the whole ViT grid through cross-attention: no token is patch-local",
}


def _check(case, images):
    if case.kind in NOT_PATCH_LOCAL:
        pytest.skip(f"{case.model_type}: {NOT_PATCH_LOCAL[case.kind]}")
    if case.not_patch_local:
        pytest.skip(f"{case.model_type}: {case.not_patch_local}")
    model, processor = case.build()
    report = verify(model, processor, images, tolerance=TOLERANCE)
    assert len(report.positions) > 0
    assert report.worst <= TOLERANCE, report.summary()
    return report


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_adapter_boxes_are_what_tokens_read(case, shape):
    _check(case, [SHAPES[shape]])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_adapter_boxes_multi_image(case):
    if not case.multi_image:
        pytest.skip(f"{case.model_type}'s processor takes one image per prompt")
    report = _check(case, [SHAPES["wide"], SHAPES["tall"]])
    assert set(report.measured.image_index[report.measured.image_index >= 0].tolist()) == {0, 1}


def _llava():
    return next(case for case in CASES if case.model_type == "llava").build()


def test_llava_next_crop_rows_read_only_the_unpadded_image():
    """The issue's case: a 200×120 image; the crop view's first and last rows read no pixel above y ≈ 10.7 or below
    y ≈ 110, so their boxes must not reach the image's edges (the base view covers those strips)."""
    model, processor = next(case for case in CASES if case.model_type == "llava_next").build()
    report = verify(model, processor, SHAPES["wide"])
    assert report.ok, report.summary()
    adapter = adapter_for(model, processor)
    inputs = adapter.encode([SHAPES["wide"]], adapter.format_prompt("Describe it.", 1))
    layout = adapter.layout(inputs["input_ids"][0].numpy(), [SHAPES["wide"]], inputs)
    crop = layout.boxes[layout.image_positions][layout.view[layout.image_positions] == VIEWS.index("crop")]
    assert crop[:, 1].min() > 9 and crop[:, 3].max() < 112
    np.testing.assert_allclose(layout.images[0].covered, (0, 0, 200, 120), atol=1e-6)  # the base view: all of it


def test_probe_leaves_the_model_as_found_and_costs_a_handful_of_passes():
    model, processor = _llava()
    adapter = adapter_for(model, processor)
    with torch.no_grad():  # transformers installs its output-capture hooks on a model's first forward
        model(**adapter.encode([SHAPES["wide"]], adapter.format_prompt("Hi", 1)))
    before = snapshot(model)
    measured = measure_layout(adapter, [SHAPES["wide"]], cache=False)
    assert snapshot(model) == before
    assert measured.passes["forward"] == 1 and measured.passes["backward"] <= 6
    assert np.isfinite(measured.boxes).all() and measured.shared <= 1e-3 * measured.pixels.sum()  # rounding only


def test_report_summary_names_what_differs():
    model, processor = _llava()
    report = verify(model, processor, SHAPES["wide"], tolerance=1e-6)
    text = report.summary()
    assert "worst box offset" in text and "LLaVA-1.5" in text
    assert len(report.differing) == int((report.offsets > 1e-6).sum())


def test_generic_adapter_matches_the_hand_written_one(monkeypatch):
    """A family without an adapter (the registry entry removed) gets the measured layout, labelled as such."""
    model, processor = _llava()
    hand = adapter_for(model, processor)
    monkeypatch.delitem(REGISTRY, "llava")
    generic = adapter_for(model, processor)
    assert isinstance(generic, GenericAdapter) and generic.layout_source == "measured"
    for image in (SHAPES["wide"], SHAPES["tall"]):
        text = hand.format_prompt("What is it?", 1)
        inputs = hand.encode([image], text)
        ids = inputs["input_ids"][0].numpy()
        expected, layout = hand.layout(ids, [image], inputs), generic.layout(ids, [image], inputs)
        assert layout.source == "measured"
        columns = expected.image_positions
        np.testing.assert_array_equal(layout.image_positions, columns)
        np.testing.assert_allclose(layout.boxes[columns], expected.boxes[columns], atol=TOLERANCE)
        np.testing.assert_array_equal(layout.grid[columns], expected.grid[columns])
        assert {VIEWS[v] for v in layout.view[columns]} == {"base"}


def test_generic_adapter_traces(monkeypatch):
    model, processor = _llava()
    monkeypatch.delitem(REGISTRY, "llava")
    trace = mmviz.trace(model, processor, SHAPES["wide"], "What is in the picture?", answer="red")
    assert trace.layout.source == "measured" and len(trace.image_positions) == 16


def test_no_fallback_without_placeholders(monkeypatch):
    clip = next(case for case in CASES if case.model_type == "clip")
    model, processor = clip.build()
    monkeypatch.delitem(REGISTRY, "clip")
    with pytest.raises(UnsupportedModelError, match="image_token_id"):
        adapter_for(model, processor)
