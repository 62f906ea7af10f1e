"""The Inspector through the real widget machinery (no kernel): binary transport, validation, export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import traitlets
from ipywidgets.widgets.widget import _remove_buffers

import mmviz
from mmviz.widget import bundle, wire

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def inspector(small_trace):
    return mmviz.Inspector(small_trace)


def test_tensors_cross_as_binary_buffers_and_the_json_part_stays_small(inspector):
    state, paths, _ = _remove_buffers(inspector.get_state())
    buffer_paths = {tuple(path) for path in paths}
    assert {
        ("attention", "data"),
        ("attention", "scale"),
        ("attention_mean", "data"),
        ("images", 0),
        ("token_layout", "boxes"),
        ("token_layout", "kinds"),
    } <= buffer_paths
    data_traits = {key: state[key] for key in ("attention", "attention_mean", "token_layout", "meta", "tokens")}
    assert len(json.dumps(data_traits)) < 4000
    L, H, Q, P = inspector.trace.attention().shape
    assert len(inspector.attention["data"]) == L * H * Q * P  # one byte per value


def test_the_shipped_maps_decode_to_the_traces_attention(inspector):
    attention = inspector.trace.attention()
    heads = wire.decode(inspector.attention)
    mean = wire.decode(inspector.attention_mean)
    row_range = attention.max(-1, keepdims=True) - attention.min(-1, keepdims=True)
    assert np.all(np.abs(heads - attention) <= row_range / 510 + 1e-7)
    mean_expected = attention.mean(axis=1)
    mean_range = mean_expected.max(-1, keepdims=True) - mean_expected.min(-1, keepdims=True)
    assert np.all(np.abs(mean - mean_expected) <= mean_range / 510 + 1e-7)


def test_the_layout_payload_matches_the_trace(inspector, small_trace):
    layout = inspector.token_layout
    assert layout["n_positions"] == len(small_trace.tokens) == len(inspector.tokens)
    assert layout["answer_start"] == small_trace.answer_start
    np.testing.assert_array_equal(np.frombuffer(layout["image_positions"], "<i4"), small_trace.image_positions)
    np.testing.assert_array_equal(np.frombuffer(layout["query_positions"], "<i4"), small_trace.query_positions)
    boxes = np.frombuffer(layout["boxes"], "<f4").reshape(-1, 4)
    np.testing.assert_array_equal(boxes, small_trace.layout.boxes[small_trace.image_positions])
    # 160×90 → shortest edge 56 gives 99×56; the centre crop starts at x = 21 of 99
    (geometry,) = layout["images"]
    assert (geometry["width"], geometry["height"]) == (160, 90)
    assert geometry["covered"] == pytest.approx([21 * 160 / 99, 0.0, 77 * 160 / 99, 90.0])
    assert inspector.layer == small_trace.num_layers - 1 and inspector.head == -1 and inspector.pinned == -1


def test_browser_updates_are_validated(inspector):
    inspector.set_state({"layer": 0, "head": 2, "pinned": 5})
    assert (inspector.layer, inspector.head, inspector.pinned) == (0, 2, 5)
    for bad in ({"layer": 99}, {"head": -2}, {"pinned": 10_000}):
        with pytest.raises(traitlets.TraitError):
            inspector.set_state(bad)
    assert (inspector.layer, inspector.head, inspector.pinned) == (0, 2, 5)


def test_inspector_rejects_what_is_not_a_trace():
    with pytest.raises(TypeError, match=r"mmviz\.Trace"):
        mmviz.Inspector("not a trace")


def test_version_is_single_sourced_from_the_js_package():
    package = json.loads((ROOT / "js" / "package.json").read_text())
    assert mmviz.__version__ == package["version"]


def test_the_real_bundle_is_used_when_built(inspector):
    if not bundle.bundle_built():
        pytest.skip("JS bundle not built (run npm --prefix js run build)")
    assert inspector._esm == bundle.BUNDLE.read_text() or str(inspector._esm).endswith("widget.js")
    assert "mmviz-missing-bundle" not in str(inspector._esm)


def test_without_a_bundle_import_still_works_and_the_widget_explains(monkeypatch, small_trace):
    monkeypatch.setattr(bundle, "BUNDLE", Path("/nonexistent/widget.js"))
    assert "npm --prefix js" in bundle.esm()
    with pytest.warns(UserWarning, match="bundle is missing"):
        mmviz.Inspector(small_trace)


def test_standalone_html_is_offline_and_keeps_hostile_tokens_inert(inspector):
    if not bundle.bundle_built():
        pytest.skip("JS bundle not built")
    inspector.tokens = [*inspector.tokens[:-1], "</script><script>alert(1)</script>"]
    page = inspector.to_html()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script>alert(1)" not in page and "\\u003c/script\\u003e" in page
