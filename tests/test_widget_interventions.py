"""The Inspector's Interventions panel, kernel side: every ``intervene`` / ``curve`` request is validated (kinds,
fields, types, ranges, non-image positions, hostile strings and shapes) with one well-formed ``ok: false`` reply
and nothing kept; replies equal the Python API; kept runs reach ``meta`` and the standalone page."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from mmviz import interventions
from mmviz.interventions import Ablate, Knockout, knockout_curve
from mmviz.methods import ablate, knockout
from mmviz.zoo import scene
from tests.test_widget_features import LONE_SURROGATE, Browser

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes_vlm():
    return mmviz.zoo.load("shapes-vlm")


@pytest.fixture()
def trace(shapes_vlm):
    model, processor = shapes_vlm
    s = scene(303)
    q = next(q for q in s.questions if q.text.startswith("What color"))
    return mmviz.trace(model, processor, s.image, q.text, answer=q.answer)


@pytest.fixture()
def browser(trace):
    return Browser(mmviz.Inspector(trace))


def intervene(intervention):
    return {"type": "intervene", "intervention": intervention, "request": "r1"}


def test_meta_says_what_the_panel_can_do(browser):
    meta = browser.inspector.meta["interventions"]
    assert meta["can_run"] is True and meta["history"] == [] and meta["curve"] is None
    assert meta["fills"] == ["mean", "zero", "blur"] and meta["default_fill"] == interventions.DEFAULT_FILL
    assert meta["presets"] == ["answer", "last_prompt"]


def test_ablate_reply_equals_the_api(browser, trace):
    chosen = trace.image_positions[5:15].tolist()
    for fill in ("mean", "zero", "blur"):
        as_floats = [float(p) for p in chosen]  # JSON numbers may arrive as floats
        reply, payload = browser.ask(intervene({"kind": "ablate", "positions": as_floats, "fill": fill}))
        assert reply["type"] == "intervened" and reply["ok"] is True and reply["request"] == "r1"
        expected = ablate(trace, chosen, baseline=fill)
        assert payload["positions"] == expected.positions.tolist()
        np.testing.assert_allclose(payload["delta"], expected.delta, atol=1e-6)
        np.testing.assert_allclose(payload["clean"], expected.clean, atol=1e-6)
        assert payload["intervention"] == Ablate(chosen, fill).to_dict()
    history = browser.inspector.meta["interventions"]["history"]
    assert [entry["index"] for entry in history] == [0, 1, 2]
    assert history[-1]["delta"] == payload["delta"]


def test_knockout_and_curve_replies_equal_the_api(browser, trace):
    reply, payload = browser.ask(intervene({"kind": "knockout", "layers": [0, 1], "sources": "image", "to": "answer"}))
    assert reply["ok"] is True
    np.testing.assert_allclose(payload["delta"], knockout(trace, layers=[0, 1]).delta, atol=1e-6)
    _, last = browser.ask(intervene({"kind": "knockout", "layers": [1], "to": "last_prompt"}))
    np.testing.assert_allclose(last["delta"], Knockout([1], to="last_prompt").apply(trace).delta, atol=1e-6)
    reply, curve = browser.ask({"type": "curve", "width": 2, "to": "answer", "request": "c"})
    assert reply["type"] == "curved" and reply["ok"] is True
    assert curve["starts"] == list(range(trace.num_layers - 1))
    kept = trace.results[interventions.CURVE_KEY]
    np.testing.assert_allclose(curve["delta"], kept.delta, atol=1e-6)
    np.testing.assert_allclose(curve["delta"], knockout_curve(trace, 2).delta, atol=1e-6)
    assert browser.inspector.meta["interventions"]["curve"]["width"] == 2


HOSTILE = [
    None,
    "ablate",
    [1, 2],
    {},
    {"kind": "steer", "positions": [5]},
    {"kind": LONE_SURROGATE, "positions": [5]},
    {"kind": "ablate"},
    {"kind": "ablate", "positions": []},
    {"kind": "ablate", "positions": "5,6"},
    {"kind": "ablate", "positions": {"0": 5}},
    {"kind": "ablate", "positions": [[5]]},
    {"kind": "ablate", "positions": [5.5]},
    {"kind": "ablate", "positions": [True]},
    {"kind": "ablate", "positions": [-3]},
    {"kind": "ablate", "positions": [0]},  # a prompt token, not an image position
    {"kind": "ablate", "positions": [10**30]},
    {"kind": "ablate", "positions": [5] * 100_000},
    {"kind": "ablate", "positions": [5], "fill": "noise"},
    {"kind": "ablate", "positions": [5], "fill": LONE_SURROGATE},
    {"kind": "ablate", "positions": [5], "fill": ["mean"]},
    {"kind": "ablate", "positions": [5], "extra": 1},
    {"kind": "knockout"},
    {"kind": "knockout", "layers": []},
    {"kind": "knockout", "layers": [99]},
    {"kind": "knockout", "layers": [-1]},
    {"kind": "knockout", "layers": ["0"]},
    {"kind": "knockout", "layers": [0], "to": "everything"},
    {"kind": "knockout", "layers": [0], "to": [3, 4]},
    {"kind": "knockout", "layers": [0], "sources": [3, 4]},
    {"kind": "knockout", "layers": [0], "sources": "text"},
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_interventions_are_refused_and_nothing_is_kept(browser, trace, hostile):
    reply, payload = browser.ask(intervene(hostile))
    assert reply["type"] == "intervened" and reply["ok"] is False and payload is None
    assert isinstance(reply["error"], str) and 0 < len(reply["error"]) <= 2000
    assert interventions.history(trace) == []
    assert browser.inspector.meta["interventions"]["history"] == []


@pytest.mark.parametrize(
    "request_",
    [
        {"type": "curve"},
        {"type": "curve", "width": 0},
        {"type": "curve", "width": 2.5},
        {"type": "curve", "width": True},
        {"type": "curve", "width": 99},
        {"type": "curve", "width": "2"},
        {"type": "curve", "width": 1, "to": LONE_SURROGATE},
        {"type": "intervene"},
    ],
)
def test_hostile_curves_are_refused(browser, trace, request_):
    reply, _ = browser.ask({**request_, "request": "x"})
    assert reply["ok"] is False and reply["error"]
    assert interventions.CURVE_KEY not in trace.results


def test_loaded_trace_shows_kept_runs_and_refuses_new_ones(browser, trace, tmp_path):
    browser.ask(intervene({"kind": "ablate", "positions": trace.image_positions[:4].tolist(), "fill": "zero"}))
    loaded = mmviz.load(trace.save(tmp_path / "t.mmviz"))
    viewer = Browser(mmviz.Inspector(loaded))
    meta = viewer.inspector.meta["interventions"]
    assert meta["can_run"] is False and len(meta["history"]) == 1
    assert meta["history"][0]["delta"] == browser.inspector.meta["interventions"]["history"][0]["delta"]
    reply, _ = viewer.ask(intervene({"kind": "ablate", "positions": loaded.image_positions[:4].tolist()}))
    assert reply["ok"] is False and "no model attached" in reply["error"]
    page = viewer.inspector.to_html()
    assert '"interventions"' in page and '"can_run": false' in page


def test_exports_carry_the_kept_runs(browser, trace):
    browser.ask(intervene({"kind": "knockout", "layers": [0]}))
    page = browser.inspector.to_html()
    assert "knockout image \\u2192 answer in layer 0" in page  # the page's JSON escapes non-ASCII
