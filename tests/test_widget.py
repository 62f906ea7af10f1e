"""The Inspector through the real widget machinery (no kernel): binary transport, validation, export."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import traitlets
from ipywidgets.widgets.widget import _remove_buffers

import mmviz
from mmviz import wire
from mmviz.widget import bundle

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def inspector(small_trace):
    return mmviz.Inspector(small_trace)


def test_tensors_cross_as_binary_buffers_and_the_json_part_stays_small(inspector):
    state, paths, _ = _remove_buffers(inspector.get_state())
    buffer_paths = {tuple(path) for path in paths}
    assert {
        ("attention_mean", "data"),
        ("attention_mean", "scale"),
        ("head_stats", "data"),
        ("images", 0),
        ("token_layout", "boxes"),
        ("token_layout", "kinds"),
        ("token_layout", "word_start"),
        ("token_layout", "logprobs"),
    } <= buffer_paths
    data_traits = {key: state[key] for key in ("attention_mean", "head_stats", "token_layout", "meta", "tokens")}
    assert len(json.dumps(data_traits)) < 4000
    L, H, Q, P = inspector.trace.attention().shape
    assert "attention" not in state, "per-head maps are fetched per layer, not shipped up front"
    assert len(inspector.attention_mean["data"]) == L * Q * P  # one byte per value
    assert len(inspector.head_stats["data"]) == 2 * L * H * Q


def _close(decoded: np.ndarray, expected: np.ndarray) -> bool:
    """Within half a quantisation step of each row's range."""
    step = (expected.max(-1, keepdims=True) - expected.min(-1, keepdims=True)) / 255
    return bool(np.all(np.abs(decoded - expected) <= step / 2 + 1e-7))


def test_the_shipped_maps_decode_to_the_traces_attention(inspector):
    trace = inspector.trace
    assert _close(wire.decode(inspector.attention_mean), trace.attention(head="mean"))
    for layer in range(trace.num_layers):
        assert _close(wire.decode(inspector.extra("heads", layer)), trace.attention(layer=layer))
    assert _close(wire.decode(inspector.extra("heads", "mean")), trace.attention().mean(axis=0))
    share = mmviz.methods.image_share(trace)
    stats = wire.decode(inspector.head_stats)
    assert _close(stats[0], share.row_share) and _close(stats[1], share.row_entropy)


def test_the_lens_and_projection_payloads_are_the_methods_numbers(inspector):
    trace = inspector.trace
    lens = mmviz.methods.logit_lens(trace, k=5)
    payload = inspector.extra("lens")
    vocab = payload["vocab"]
    top = np.frombuffer(payload["top"], "<i4").reshape(lens.top_ids.shape)
    shown = [[[vocab[i] for i in row] for row in depth] for depth in top]
    assert shown == lens.top_tokens
    np.testing.assert_allclose(wire.decode(payload["top_probs"]), lens.top_probs, atol=1e-3)
    ranks = np.frombuffer(payload["target_ranks"], "<i4").reshape(lens.target_ranks.shape)
    np.testing.assert_array_equal(ranks, lens.target_ranks)
    projection = mmviz.methods.projection(trace)
    coords = wire.decode(inspector.extra("projection")["coords"])
    np.testing.assert_allclose(coords, projection.coords, atol=1e-6)
    assert inspector.extra("lens") is payload, "computed once, then cached"


def test_fetch_requests_are_answered_with_binary_buffers(inspector):
    from mmviz.widget.export import _remove_buffers as split

    sent = []
    inspector.send = lambda content, buffers=None: sent.append((content, buffers))
    inspector._on_message(inspector, {"type": "fetch", "what": "heads", "layer": 1, "request": "r1"}, [])
    (content, buffers) = sent[0]
    assert content["type"] == "fetched" and content["ok"] is True and content["request"] == "r1"
    payload = dict(content["payload"])
    for path, buffer in zip(content["buffer_paths"], buffers, strict=True):
        payload[path[0]] = buffer
    assert _close(wire.decode(payload), inspector.trace.attention(layer=1))
    assert len(buffers) == 3 and split(payload)[2]  # data, scale, offset
    for bad in (
        {"type": "fetch", "what": "heads", "layer": 99, "request": "r2"},
        {"type": "fetch", "what": "heads", "layer": "1", "request": "r3"},
        {"type": "fetch", "what": "secrets", "request": "r4"},
        {"type": "fetch", "request": "r5"},
    ):
        inspector._on_message(inspector, bad, [])
        content, buffers = sent[-1]
        assert content["ok"] is False and content["error"] and content["request"] == bad["request"]
    inspector._on_message(inspector, {"type": "fetch", "what": "lens", "request": "r6"}, [])
    assert sent[-1][0]["ok"] is True  # still working


def test_idle_prefetches_are_answered_like_fetches_unless_the_kernel_declines_them(small_trace, caplog):
    """The browser marks its idle prefetches ``"prefetch": true``; ``Inspector.prefetch = False`` declines them
    (one ``ok: false`` reply each, no error logged) while the views' own fetches are still answered."""
    inspector = mmviz.Inspector(small_trace, prefetch=False)
    sent = []
    inspector.send = lambda content, buffers=None: sent.append((content, buffers))
    prefetch = {"type": "fetch", "what": "heads", "layer": 1, "prefetch": True, "request": "p1"}
    with caplog.at_level(logging.ERROR, logger="mmviz"):
        inspector._on_message(inspector, prefetch, [])
    assert caplog.text == ""
    content, buffers = sent[-1]
    assert content == {"type": "fetched", "request": "p1", "what": "heads", "layer": 1, "ok": False,
                       "error": "prefetching is off (Inspector.prefetch = False)"}  # fmt: skip
    assert buffers is None and inspector._extras == {}, "nothing was built for a declined prefetch"
    inspector._on_message(inspector, {**prefetch, "prefetch": False, "request": "f1"}, [])  # a view's own fetch
    assert sent[-1][0]["ok"] is True and sent[-1][0]["request"] == "f1"

    inspector.prefetch = True
    inspector._on_message(inspector, {**prefetch, "layer": 0, "request": "p2"}, [])
    content, buffers = sent[-1]
    assert content["ok"] is True and content["request"] == "p2" and len(buffers) == 3
    for hostile in ({**prefetch, "layer": 99, "request": "p3"}, {**prefetch, "prefetch": "yes", "layer": "1"}):
        inspector._on_message(inspector, hostile, [])  # validated as any fetch: one error reply, nothing applied
        assert sent[-1][0]["ok"] is False
    for bad in ("no", 1, None):
        with pytest.raises(mmviz.InputError, match="prefetch must be True or False"):
            inspector.prefetch = bad
    assert inspector.prefetch is True and mmviz.Inspector(small_trace).prefetch is True


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
    assert inspector.layer == small_trace.num_layers - 1 and inspector.head == "mean" and inspector.pinned == -1


def test_browser_updates_are_validated(inspector, caplog):
    inspector.set_state({"layer": 0, "head": 2, "pinned": 5})
    assert (inspector.layer, inspector.head, inspector.pinned) == (0, 2, 5)
    inspector.set_state({"layer": "mean"})  # the mean over layers
    assert inspector.layer == "mean"
    echoed = []
    inspector.send_state = lambda names=None: echoed.append(names)
    bad_updates = ({"layer": 99}, {"head": -2}, {"pinned": 10_000}, {"layer": "2"}, {"head": 1.5}, {"layer": -1})
    bad_updates += ({"head": -1}, {"layer": True}, {"pinned": -2})  # no counting from the end, no wrapping
    bad_updates += ({"layer": 1, "head": 9},)  # one bad key: the good one is not applied either
    for bad in bad_updates:
        with caplog.at_level(logging.ERROR, logger="mmviz"):
            inspector.set_state(bad)  # logged, never raised into the comm
        assert (inspector.layer, inspector.head, inspector.pinned) == ("mean", 2, 5), "nothing half-applied"
        assert echoed[-1] == list(bad), "the browser is sent the current values back"
    assert caplog.text.count("rejected a widget update") == len(bad_updates)
    with pytest.raises(traitlets.TraitError):  # from Python, a bad value still raises
        inspector.layer = 99


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


def test_the_exporter_chooses_which_layers_carry_their_heads(inspector):
    last = inspector.trace.num_layers - 1
    keys = lambda layers: sorted(inspector._prefetched(inspector._exported_heads(layers)))  # noqa: E731
    every = sorted([f"heads:{layer}" for layer in ("mean", *range(last + 1))] + ["lens", "projection"])
    assert keys("auto") == keys("all") == every, "a small trace carries every layer's heads"
    assert keys("none") == ["lens", "projection"]
    assert keys([last, 0, last]) == ["heads:0", f"heads:{last}", "heads:mean", "lens", "projection"]
    for bad in ("some", [last + 1], [-1]):
        with pytest.raises(mmviz.InputError, match=r"heads must be|decoder layer in 0…"):
            inspector.to_html(heads=bad)
