"""The sweep widget and the sweep plots on a real small sweep of the shapes world: the table payload against the
Parquet table, filtering and sorting, validation of every browser update, a row opening the inspector (kept trace,
re-traced with the model, or a clear refusal), and the bokeh plots' labels and link to the widget."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from bokeh.events import Reset, SelectionGeometry

import mmviz
import mmviz.plots
from mmviz.widget.sweep import BROWSER_OWNED, sweep_payload, visible_rows
from tests.test_sweep import scene_rows

STATS = ["image_share", "head_entropy", "answer_logprob", "lens_rank"]


@pytest.fixture(scope="module")
def shapes_vlm():
    return mmviz.zoo.load("shapes-vlm")


@pytest.fixture(scope="module")
def rows():
    return [*scene_rows(range(5)), {"id": "broken", "image": "/no/such/image.png", "prompt": "What is it?"}]


@pytest.fixture(scope="module")
def kept_sweep(shapes_vlm, rows, tmp_path_factory):
    model, processor = shapes_vlm
    out = tmp_path_factory.mktemp("sweep-kept")
    return mmviz.sweep(model, processor, rows, stats=STATS, out=out, keep="all")


@pytest.fixture(scope="module")
def bare_sweep(shapes_vlm, rows, tmp_path_factory):
    model, processor = shapes_vlm
    out = tmp_path_factory.mktemp("sweep-bare")
    return mmviz.sweep(model, processor, rows[:3], stats=["answer_logprob"], out=out, keep=lambda row: False)


def test_payload_is_the_table(kept_sweep):
    payload = sweep_payload(kept_sweep)
    assert payload["n"] == 6 and payload["ids"] == kept_sweep.ids
    names = [c["name"] for c in payload["columns"]]
    assert names[:3] == ["id", "status", "answer"] and "asks_for" in names and names[-1] == "seconds"
    broken = kept_sweep.ids.index("broken")
    assert payload["errors"][broken].startswith(kept_sweep.failed["broken"][:20])
    assert all(e == "" for i, e in enumerate(payload["errors"]) if i != broken)
    assert payload["thumbnails"][0][:8] == b"\x89PNG\r\n\x1a\n" and payload["thumbnails"][broken] == b""
    assert payload["kept"] == [i != broken for i in range(6)]
    column = {c["name"]: c for c in payload["columns"]}
    logprob = np.frombuffer(column["answer_logprob"]["values"], "<f4")
    np.testing.assert_allclose(logprob[:5], kept_sweep.column("answer_logprob")[:5], rtol=1e-6)
    assert np.isnan(logprob[broken])
    share = column["image_share"]
    assert share["label"] == "image_share (mean over layers)"
    means = np.frombuffer(share["values"], "<f4")
    np.testing.assert_allclose(means[:5], kept_sweep.column("image_share")[:5].mean(axis=1), rtol=1e-5)
    heads = column["head_entropy"]
    assert heads["label"] == "head_entropy (mean over layers × heads)"
    profile = np.frombuffer(heads["series"]["data"], "<f4").reshape(6, heads["series"]["length"])
    np.testing.assert_allclose(profile[:5], kept_sweep.column("head_entropy")[:5].mean(axis=2), rtol=1e-5)


def test_filter_and_sort_like_the_browser(kept_sweep):
    view = mmviz.SweepWidget(kept_sweep)
    logprob = view.values("answer_logprob")
    assert view.visible_ids() == kept_sweep.ids
    view.sort = {"column": "answer_logprob", "descending": True}
    order = view.visible_ids()
    assert order[-1] == "broken"  # no value: last either way
    assert [logprob[kept_sweep.ids.index(i)] for i in order[:-1]] == sorted(logprob[:5], reverse=True)
    middle = float(np.median(logprob[:5]))
    view.ranges = {"answer_logprob": [middle, None]}
    assert set(view.visible_ids()) == {i for i, v in zip(kept_sweep.ids, logprob, strict=True) if v >= middle}
    view.ranges = {}
    view.text_filter = "DOES NOT exist"  # errors are searched, case ignored
    assert view.visible_ids() == ["broken"]
    view.text_filter = "color"
    assert set(view.visible_ids()) == {
        r for r, a in zip(kept_sweep.ids, kept_sweep.table.column("asks_for").to_pylist(), strict=True) if a == "color"
    }
    assert visible_rows([], "", {}, {"column": "", "descending": False}) == []


@pytest.mark.parametrize(
    "update",
    [
        {"sort": {"column": "nope", "descending": False}},
        {"sort": {"column": "answer_logprob", "descending": 1}},
        {"sort": ["answer_logprob"]},
        {"ranges": {"asks_for": [0, 1]}},
        {"ranges": {"answer_logprob": [2, 1]}},
        {"ranges": {"answer_logprob": [float("nan"), 1]}},
        {"ranges": {"answer_logprob": [True, None]}},
        {"ranges": {"answer_logprob": [1]}},
        {"ranges": "all"},
        {"text_filter": 3},
        {"text_filter": "x" * 1001},
        {"selected": "scene-0"},
        {"table_data": {}},
        {"text_filter": "ok", "revision": 9},
        ["not", "a", "dict"],
    ],
)
def test_browser_updates_are_validated(kept_sweep, update, caplog):
    view = mmviz.SweepWidget(kept_sweep)
    before = {name: getattr(view, name) for name in (*BROWSER_OWNED, "selected", "revision")}
    sent = []
    view.send_state = lambda names=None: sent.append(names)
    with caplog.at_level(logging.ERROR, logger="mmviz"):
        view.set_state(update)
    assert {name: getattr(view, name) for name in before} == before
    assert "rejected a widget update" in caplog.text
    if isinstance(update, dict):
        assert sent == [list(update)]


def test_valid_browser_updates_apply(kept_sweep):
    view = mmviz.SweepWidget(kept_sweep)
    view.set_state(
        {"sort": {"column": "id", "descending": True}, "text_filter": "scene", "ranges": {"image_share": [0, None]}}
    )
    assert view.sort == {"column": "id", "descending": True} and view.text_filter == "scene"
    assert view.ranges == {"image_share": [0.0, None]}
    assert view.visible_ids() == sorted((i for i in kept_sweep.ids if i != "broken"), reverse=True)


def _ask(view, message):
    replies = []
    view.send = lambda content, buffers=None: replies.append((content, buffers))
    view._on_message(view, message, [])
    assert len(replies) == 1  # one reply per request
    return replies[0]


def test_a_row_opens_its_kept_trace(kept_sweep):
    view = mmviz.SweepWidget(kept_sweep)
    content, buffers = _ask(view, {"type": "open", "id": "scene-2", "request": "r1"})
    assert content["ok"] is True and content["type"] == "opened" and content["request"] == "r1"
    assert view.selected == "scene-2" and isinstance(view.inspector, mmviz.Inspector)
    trace = kept_sweep.trace("scene-2")
    assert content["payload"]["tokens"] == list(trace.tokens)
    assert view.inspector.trace.tokens == trace.tokens
    assert len(buffers) == len(content["buffer_paths"]) > 0
    assert any(path[0] == "prefetched" for path in content["buffer_paths"])  # per-head maps for the pane


def test_refusals_say_why(kept_sweep, bare_sweep):
    view = mmviz.SweepWidget(kept_sweep)
    content, _ = _ask(view, {"type": "open", "id": "nope", "request": "r2"})
    assert content["ok"] is False and "no example 'nope'" in content["error"]
    content, _ = _ask(view, {"type": "open", "id": "broken", "request": "r3"})
    assert content["ok"] is False and "no trace was kept" in content["error"] and "model" in content["error"]
    content, _ = _ask(view, {"type": "open", "id": ["x"], "request": "r4"})
    assert content["ok"] is False and content["id"] is None
    lone = "\ud800"  # a JavaScript string may carry a lone surrogate; the reply must still serialise
    content, _ = _ask(view, {"type": "open", "id": lone, "request": lone})
    assert content["ok"] is False and content["id"] is None and content["request"] is None
    json.dumps(content, ensure_ascii=False).encode("utf-8")
    content, _ = _ask(view, {"type": "jump", "request": "r5"})
    assert content["ok"] is False and content["type"] == "error" and "'open'" in content["error"]
    bare = mmviz.SweepWidget(bare_sweep)
    assert "pass examples=, model= and processor=" in bare.can_open("scene-0")
    with pytest.raises(mmviz.InputError, match="no trace was kept"):
        bare.open_example("scene-0")
    assert bare.selected == "" and bare.inspector is None


def test_without_a_kept_trace_the_model_traces_again(shapes_vlm, rows, bare_sweep):
    model, processor = shapes_vlm
    with pytest.raises(mmviz.InputError, match="both model= and processor="):
        mmviz.SweepWidget(bare_sweep, model=model)
    view = mmviz.SweepWidget(bare_sweep, examples=rows[:3], model=model, processor=processor)
    content, _ = _ask(view, {"type": "open", "id": "scene-1", "request": "r6"})
    assert content["ok"] is True and view.selected == "scene-1"
    expected = mmviz.trace(model, processor, rows[1]["image"], rows[1]["prompt"], answer=rows[1]["answer"])
    assert view.inspector.trace.tokens == expected.tokens
    assert view.inspector.trace.answer.strip() == bare_sweep.table.column("answer").to_pylist()[1].strip()


def test_plots_label_what_they_average(kept_sweep):
    plot = mmviz.plots.sweep_layers(kept_sweep, "image_share", by="asks_for")
    assert "95% bootstrap interval" in plot.title.text and "mean over examples" in plot.title.text
    labels = [item.label["value"] for item in plot.legend[0].items]
    groups = kept_sweep.table.column("asks_for").to_pylist()
    for group in {g for g in groups if g is not None}:
        assert f"asks_for = {group} (n = {groups.count(group)})" in labels
    curves = kept_sweep.per_layer("image_share", by="asks_for")
    line = plot.select({"name": f"mean:asks_for = {sorted(curves)[0]}"})[0]
    np.testing.assert_allclose(line.data_source.data["y"], curves[sorted(curves)[0]].mean)
    heads = mmviz.plots.sweep_layers(kept_sweep, "head_entropy")
    assert "mean over heads, then examples" in heads.title.text
    lens = mmviz.plots.sweep_layers(kept_sweep, "lens_rank")
    assert lens.select({"name": "mean:all examples"})[0].data_source.data["x"][0] == -1  # the embeddings
    histogram = mmviz.plots.sweep_histogram(kept_sweep, "answer_logprob")
    assert histogram.title.text == "answer_logprob: 5 examples (1 failed or without a value left out)"
    assert sum(histogram.select({"name": "histogram:answer_logprob"})[0].data_source.data["count"]) == 5
    grid = mmviz.plots.sweep_heads(
        kept_sweep, "image_share_heads" if "image_share_heads" in kept_sweep.table.column_names else "head_entropy"
    )
    assert "mean over 5 examples per layer and head" in grid.title.text
    with pytest.raises(mmviz.InputError, match="one number per example"):
        mmviz.plots.sweep_layers(kept_sweep, "answer_logprob")
    with pytest.raises(TypeError, match="SweepResult"):
        mmviz.plots.sweep_histogram(object(), "answer_logprob")


def test_histogram_box_select_filters_the_widget(kept_sweep):
    view = mmviz.SweepWidget(kept_sweep)
    plot = mmviz.plots.sweep_histogram(view, "answer_logprob")
    shade = plot.select({"name": mmviz.plots.SWEEP_RANGE})[0]
    assert shade.visible is False
    logprob = view.values("answer_logprob")
    low, high = float(np.nanmin(logprob)) - 1e-3, float(np.nanmedian(logprob))
    plot._trigger_event(SelectionGeometry(plot, geometry={"type": "rect", "x0": high, "x1": low}, final=True))
    assert view.ranges == {"answer_logprob": [low, high]}
    assert set(view.visible_ids()) == {i for i, v in zip(kept_sweep.ids, logprob, strict=True) if low <= v <= high}
    assert shade.visible and (shade.left, shade.right) == (low, high)
    view.ranges = {}  # the widget (or the browser) clears it: the shade follows
    assert shade.visible is False
    view.ranges = {"answer_logprob": [low, high]}
    plot._trigger_event(Reset(plot))
    assert view.ranges == {}
    mmviz.plots.unlink(plot)
    view.ranges = {"answer_logprob": [low, high]}
    assert shade.visible is False


def test_exported_page_embeds_the_kept_inspectors(kept_sweep):
    page = mmviz.SweepWidget(kept_sweep).to_html(plots=[mmviz.plots.sweep_histogram(kept_sweep, "answer_logprob")])
    assert "mountSweepStatic" in page and "<script src=" not in page and "<link " not in page  # BokehJS inline
    assert '"scene-0": {"state"' in page and "an exported page has no kernel" in page
