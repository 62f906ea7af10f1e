"""mmviz.plots: each plot draws its method's numbers, and a plot given an Inspector is linked to it both ways.

Browser events are delivered the way jupyter_bokeh delivers them: a comm message to the plot's ``BokehModel`` with
the JSON that BokehJS sends (recorded from a real JupyterLab page, see tests/browser/test_plots_jupyterlab.py).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json

import numpy as np
import pytest
from bokeh.io.notebook import LOAD_MIME_TYPE
from bokeh.layouts import column
from bokeh.models import Slider, Span
from bokeh.plotting import figure

import mmviz
from mmviz import interventions, plots
from mmviz.errors import InputError
from mmviz.methods import image_share, logit_lens, projection

PLOTS = {
    "image_share": plots.image_share,
    "entropy": plots.entropy,
    "lens_ranks": plots.lens_ranks,
    "projection": plots.projection,
    "knockout_curve": plots.knockout_curve,
}


@pytest.fixture()
def inspector(small_trace) -> mmviz.Inspector:
    return mmviz.Inspector(small_trace)


def renderer(plot, name: str):
    (found,) = plot.select({"name": name})
    return found


def markers(plot) -> list[Span]:
    return list(plot.select({"type": Span, "name": plots.LAYER_MARKER}))


def browser_says(synced, event: dict) -> None:
    """Deliver ``event`` to the kernel side of a ``BokehModel`` as the browser does (a custom comm message)."""
    content = {"event": "jsevent", **json.loads(json.dumps(event))}
    synced._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def tap(synced, figure_, x: float, y: float = 0.5) -> None:
    """What BokehJS sends when the user clicks ``figure_`` at data coordinates (x, y)."""
    values = [["model", {"id": figure_.id}], ["sx", 100.0], ["sy", 100.0], ["x", x], ["y", y]]
    modifiers = {"type": "map", "entries": [["shift", False], ["ctrl", False], ["alt", False]]}
    message = {
        "type": "event",
        "name": "tap",
        "values": {"type": "map", "entries": [*values, ["modifiers", modifiers]]},
    }
    browser_says(synced, {"kind": "MessageSent", "msg_type": "bokeh_event", "msg_data": message})


def select(synced, source, index: int) -> None:
    """What BokehJS sends when a tap selects point ``index`` of ``source``."""
    change = {"kind": "ModelChanged", "model": {"id": source.selected.id}, "attr": "indices", "new": [index]}
    browser_says(synced, change)


def tapped_figures(plot) -> list:
    """The figures of ``plot`` that carry the layer marker (the ones a click on a layer works in)."""
    return [f for f in plot.select({"type": figure}) if markers(f)]


# ---------------------------------------------------------------------------------------------------------------------
# What the plots draw


def test_image_share_draws_the_methods_per_layer_shares(small_trace):
    expected = image_share(small_trace, rows="answer")
    plot = plots.image_share(small_trace)
    for group, values in expected.groups.items():
        data = renderer(plot, f"share:{group}").data_source.data
        np.testing.assert_array_equal(data["x"], small_trace.layers)
        np.testing.assert_allclose(data["y"], values, rtol=1e-6)
    total = sum(renderer(plot, f"share:{group}").data_source.data["y"] for group in expected.groups)
    np.testing.assert_allclose(total, 1.0, atol=1e-4)  # first + image + prompt + answer is all the attention
    assert not markers(plot), "a plot of a bare trace has no inspector layer to mark"


def test_entropy_draws_the_head_mean_the_spread_and_every_head(small_trace):
    per_head = image_share(small_trace, rows="all").entropy  # (L, H)
    plot = plots.entropy(small_trace, rows="all")
    np.testing.assert_allclose(renderer(plot, "entropy").data_source.data["y"], per_head.mean(axis=1), rtol=1e-6)
    band = renderer(plot, "entropy:band").data_source.data
    np.testing.assert_allclose(band["low"], per_head.min(axis=1), rtol=1e-6)
    np.testing.assert_allclose(band["high"], per_head.max(axis=1), rtol=1e-6)
    heads = renderer(plot, "entropy:heads").data_source.data
    np.testing.assert_allclose(heads["y"], per_head.ravel(), rtol=1e-6)
    np.testing.assert_array_equal(heads["head"], np.tile(np.arange(small_trace.num_heads), len(small_trace.layers)))
    assert (band["low"] >= 0).all()


def test_lens_ranks_are_the_logit_lens_ranks_with_rank_one_on_top(small_trace):
    expected = logit_lens(small_trace)
    plot = plots.lens_ranks(small_trace)
    depths = expected.answer_ranks.shape[0]
    for index, position in enumerate(range(small_trace.answer_start, len(small_trace.tokens))):
        data = renderer(plot, f"rank:{position}").data_source.data
        np.testing.assert_array_equal(data["x"], np.arange(depths) - 1)  # −1 = the embeddings
        np.testing.assert_array_equal(data["y"], expected.answer_ranks[:, index] + 1)
        np.testing.assert_allclose(data["p"], expected.answer_probs[:, index], rtol=1e-5)
    assert plot.y_scale.__class__.__name__ == "LogScale"
    assert plot.y_range.start > plot.y_range.end, "the y axis is reversed: rank 1 at the top"
    assert plot.y_range.end < 1 <= expected.answer_ranks.max() + 1 < plot.y_range.start


def test_lens_ranks_uses_a_given_result_and_computes_at_most_once_per_trace(small_trace, monkeypatch):
    lens_module = importlib.import_module("mmviz.methods.logit_lens")  # the package exports the function by that name
    calls = []
    real = lens_module._decode
    monkeypatch.setattr(lens_module, "_decode", lambda trace, k: calls.append(trace) or real(trace, k))
    fresh = dataclasses.replace(small_trace, maps={})
    first, second = plots.lens_ranks(fresh), plots.lens_ranks(mmviz.Inspector(fresh))
    assert len(calls) == 1
    assert fresh.maps["logit_lens"].method == "logit_lens", "the map is kept for the widget's method switcher"
    position = small_trace.answer_start
    np.testing.assert_array_equal(
        renderer(first, f"rank:{position}").data_source.data["y"],
        renderer(second, f"rank:{position}").data_source.data["y"],
    )
    lens = logit_lens(small_trace)
    shifted = dataclasses.replace(lens, answer_ranks=lens.answer_ranks + 7)
    given = plots.lens_ranks(fresh, lens=shifted)
    assert len(calls) == 1
    np.testing.assert_array_equal(
        renderer(given, f"rank:{position}").data_source.data["y"], lens.answer_ranks[:, 0] + 8
    )


@pytest.mark.parametrize("depth", [None, 1, 0])
def test_projection_scatters_one_layer_of_the_aligned_frame_and_the_gap_of_all(small_trace, depth):
    expected = projection(small_trace)
    plot = plots.projection(small_trace, depth=depth)
    depth = small_trace.num_layers if depth is None else depth
    for group in ("image", "prompt", "answer"):
        dots = renderer(plot, f"points:{group}")
        shown = np.asarray(dots.view.filter.indices)
        data = dots.data_source.data
        np.testing.assert_allclose(np.asarray(data["x"])[shown], expected.coords[depth, shown, 0], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(data["y"])[shown], expected.coords[depth, shown, 1], rtol=1e-6)
        kinds = {
            "image": expected.is_image,
            "answer": ~expected.is_image & (np.arange(len(small_trace.tokens)) >= small_trace.answer_start),
            "prompt": ~expected.is_image & (np.arange(len(small_trace.tokens)) < small_trace.answer_start),
        }
        np.testing.assert_array_equal(shown, np.flatnonzero(kinds[group]))
    gap = renderer(plot, "gap").data_source.data
    np.testing.assert_array_equal(gap["x"], np.arange(small_trace.num_layers + 1) - 1)
    np.testing.assert_allclose(gap["y"], expected.modality_gap, rtol=1e-6)
    scatter = plot.children[0]
    every = expected.coords.reshape(-1, 2)
    assert scatter.x_range.start < every[:, 0].min() and every[:, 0].max() < scatter.x_range.end, "fixed across layers"
    where = "embeddings" if depth == 0 else f"after layer {depth - 1}"
    assert where in scatter.title.text


@pytest.mark.parametrize("beyond", [-1, "last", 1])
def test_projection_rejects_a_depth_it_does_not_have(small_trace, beyond):
    depth = small_trace.num_layers + beyond if beyond == 1 else beyond  # depths are 0 … num_layers
    with pytest.raises(InputError, match=rf"depth .*0…{small_trace.num_layers}"):
        plots.projection(small_trace, depth=depth)


@pytest.mark.parametrize("width", [1, 2])
def test_knockout_curve_draws_every_answer_tokens_delta_and_their_mean(small_trace, width):
    trace = dataclasses.replace(small_trace, maps={})  # results start empty too
    plot = plots.knockout_curve(trace, width=width)
    curve = trace.results[interventions.CURVE_KEY]  # computed and kept
    positions = list(range(trace.answer_start, len(trace.tokens)))
    assert curve.width == width and curve.positions.tolist() == positions and len(positions) > 1
    for index, position in enumerate(positions):
        data = renderer(plot, f"knockout:{position}").data_source.data
        np.testing.assert_array_equal(data["x"], np.arange(trace.num_layers - width + 1))
        # The numbers of an independent knockout per window (every answer row cut, every answer token read).
        expected = [
            interventions.Knockout(range(start, start + width)).apply(trace).delta[index] for start in data["x"]
        ]
        np.testing.assert_allclose(data["y"], expected, atol=1e-6)
        np.testing.assert_allclose(data["clean"], trace.answer_logprobs[index], atol=1e-6)
        assert data["window"][0] == ("0" if width == 1 else f"0–{width - 1}")
    mean = renderer(plot, "knockout:mean").data_source.data
    np.testing.assert_allclose(mean["y"], curve.token_delta.mean(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(renderer(plot, f"knockout:{positions[0]}").data_source.data["y"], curve.delta)
    (hover,) = [tool for tool in plot.tools if tool.__class__.__name__ == "HoverTool"]
    assert dict(hover.tooltips)["Δ log p"] == "@y{+0.000}"
    assert "Δ log p" in plot.yaxis.axis_label and "layer" in plot.xaxis.axis_label
    assert not markers(plot)


def test_knockout_curve_reuses_a_kept_or_given_curve(small_trace, monkeypatch):
    trace = dataclasses.replace(small_trace, maps={})
    kept = interventions.knockout_curve(trace, 2)
    monkeypatch.setattr(interventions, "knockout_curve", lambda *a, **k: pytest.fail("computed again"))
    plot = plots.knockout_curve(trace, width=2)
    np.testing.assert_array_equal(renderer(plot, "knockout:mean").data_source.data["y"], kept.token_delta.mean(1))
    # A curve kept before per-token deltas were recorded: the first answer token only, no mean.
    old = interventions.KnockoutCurve(
        width=1, sources="image", to="answer", starts=np.arange(3), delta=np.array([-1.0, -0.5, 0.25]), clean=-0.1
    )
    plot = plots.knockout_curve(trace, curve=old)
    np.testing.assert_array_equal(renderer(plot, f"knockout:{trace.answer_start}").data_source.data["y"], old.delta)
    assert not plot.select({"name": "knockout:mean"})


def test_faithfulness_curves_draw_each_methods_mean_curves():
    from mmviz.evaluation import Curves, Evaluation, MethodScore

    fractions = np.linspace(0, 1, 5)
    rng = np.random.default_rng(0)
    scores = {}
    for name in ("relevancy", "random"):
        runs = [Curves(fractions, rng.random(5), rng.random(5), 0.5, 0.5) for _ in range(3)]
        scores[name] = MethodScore(name, deletion=runs)
    layout = plots.faithfulness_curves(Evaluation(scores=scores, scenes=3, model="tiny"))
    deletion, insertion = layout.children
    for name, score in scores.items():
        _, mean_deletion, mean_insertion = score.mean_curves()
        np.testing.assert_allclose(renderer(deletion, f"curve:{name}").data_source.data["y"], mean_deletion)
        np.testing.assert_allclose(renderer(insertion, f"curve:{name}").data_source.data["y"], mean_insertion)
    assert renderer(deletion, "curve:random").glyph.line_dash == [6], "the random baseline is dashed"


# ---------------------------------------------------------------------------------------------------------------------
# Linking


@pytest.mark.parametrize("name", PLOTS)
def test_a_click_on_a_layer_selects_it_in_the_inspector(inspector, name):
    plot = PLOTS[name](inspector)
    synced = plots.widget(plot)
    (target,) = tapped_figures(plot)
    assert inspector.layer == inspector.trace.num_layers - 1
    assert [m.location for m in markers(plot)] == [inspector.layer]
    tap(synced, target, x=0.8)  # the nearest layer
    assert inspector.layer == 1
    assert [m.location for m in markers(plot)] == [1]
    tap(synced, target, x=-0.2)
    assert inspector.layer == 0
    tap(synced, target, x=-1.0)  # the embeddings (or off the axis): not a layer of the inspector
    tap(synced, target, x=inspector.trace.num_layers + 3)
    assert inspector.layer == 0


@pytest.mark.parametrize("name", PLOTS)
def test_the_inspectors_layer_moves_the_marker_and_reaches_the_browser(inspector, name):
    plot = PLOTS[name](inspector)
    synced = plots.widget(plot)
    sent: list[dict] = []
    synced.send = lambda content, buffers=None: sent.append(content)
    inspector.layer = 0
    (marker,) = markers(plot)
    assert marker.location == 0
    patches = [json.loads(m["payload"]) for m in sent if m.get("msg") == "patch" and "events" in m.get("payload", "")]
    changes = [e for patch in patches for e in patch["events"] if e.get("model", {}).get("id") == marker.id]
    assert changes == [{"kind": "ModelChanged", "model": {"id": marker.id}, "attr": "location", "new": 0}]


def test_the_pinned_answer_tokens_rank_line_is_emphasised(inspector):
    trace = inspector.trace
    plot = plots.lens_ranks(inspector)
    positions = range(trace.answer_start, len(trace.tokens))
    lines = {p: renderer(plot, f"rank:{p}").glyph for p in positions}
    assert len({(g.line_width, g.line_alpha) for g in lines.values()}) == 1, "nothing pinned: all lines alike"
    pinned = trace.answer_start + 1
    inspector.pinned = pinned
    assert lines[pinned].line_width > max(g.line_width for p, g in lines.items() if p != pinned)
    assert lines[pinned].line_alpha > max(g.line_alpha for p, g in lines.items() if p != pinned)
    inspector.pinned = trace.answer_start - 3  # a prompt token: no rank line of its own
    assert len({(g.line_width, g.line_alpha) for g in lines.values()}) == 1


def test_the_selected_head_is_drawn_in_the_entropy_plot(inspector):
    per_head = image_share(inspector.trace, rows="answer").entropy
    assert not plots.entropy(inspector.trace).select({"name": "entropy:head"}), "no inspector, no selected head"
    inspector.head = 1
    plot = plots.entropy(inspector)
    chosen = renderer(plot, "entropy:head")
    assert chosen.visible, "the head selected before the plot was made is drawn"
    np.testing.assert_allclose(chosen.data_source.data["y"], per_head[:, 1], rtol=1e-6)
    inspector.head = "mean"
    assert not chosen.visible
    inspector.head = 2
    assert chosen.visible
    np.testing.assert_allclose(chosen.data_source.data["y"], per_head[:, 2], rtol=1e-6)


def test_the_projection_follows_the_layer_and_a_click_on_a_token_pins_it(inspector):
    trace = inspector.trace
    expected = projection(trace)
    plot = plots.projection(inspector)
    synced = plots.widget(plot)
    points = renderer(plot, "points:prompt").data_source
    inspector.layer = 0
    np.testing.assert_allclose(points.data["x"], expected.coords[1, :, 0], rtol=1e-6)
    assert "after layer 0" in plot.children[0].title.text

    answer = trace.answer_start + 1
    browser_says(
        synced, {"kind": "ModelChanged", "model": {"id": points.selected.id}, "attr": "indices", "new": [answer]}
    )
    assert inspector.pinned == answer
    assert points.selected.indices == [], "the click pins; it leaves no bokeh selection behind"
    path = renderer(plot, "path").data_source.data
    np.testing.assert_allclose(path["x"], expected.coords[:, answer, 0], rtol=1e-6)
    current = renderer(plot, "path:current").data_source.data
    np.testing.assert_allclose(current["y"], expected.coords[1:2, answer, 1], rtol=1e-6)

    image_point = int(trace.image_positions[0])
    select(synced, points, image_point)
    assert inspector.pinned == answer, "image tokens have no attention row to pin"
    inspector.pinned = -1
    assert len(renderer(plot, "path").data_source.data["x"]) == 0


def test_unlinked_plots_stop_following_and_discarded_plots_leave_no_observers(inspector):
    def observers() -> int:
        """How many distinct observers the inspector has on the traits plots follow."""
        notifiers = inspector._trait_notifiers
        return len({id(h) for name in ("layer", "head", "pinned") for h in notifiers.get(name, {}).get("change", [])})

    before = observers()
    plot = plots.image_share(inspector)
    synced = plots.widget(plot)
    assert observers() == before + 1
    plots.unlink(plot)
    assert observers() == before
    inspector.layer = 0
    assert markers(plot)[0].location == inspector.trace.num_layers - 1, "an unlinked plot keeps its marker"
    tap(synced, tapped_figures(plot)[0], x=1.0)
    assert inspector.layer == 0, "and its clicks change nothing"

    layout = column(plots.lens_ranks(inspector), plots.entropy(inspector))
    synced = plots.widget(layout)
    assert observers() == before + 2
    synced.close()  # closing the widget unlinks every plot in it
    assert observers() == before

    discarded = plots.projection(inspector)
    assert observers() == before + 1
    del discarded
    gc.collect()
    assert observers() == before


@pytest.mark.parametrize("name", PLOTS)
@pytest.mark.parametrize("source", ["a string", None, np.zeros(3)])
def test_a_source_that_is_no_trace_or_inspector_is_a_type_error(name, source):
    with pytest.raises(TypeError, match=r"mmviz\.Trace .* or an mmviz\.Inspector"):
        PLOTS[name](source)


def test_widget_takes_only_bokeh_models(small_trace):
    with pytest.raises(TypeError, match="bokeh plot or layout"):
        plots.widget(small_trace)


# ---------------------------------------------------------------------------------------------------------------------
# BokehJS offline


def test_the_bokehjs_loader_is_inline_and_sends_each_part_once():
    first, parts = plots._bokehjs_loader(figure(), set())
    assert first is not None and "const js_urls = [];" in first and "const css_urls = [];" in first
    assert "https://" not in first.split("const inline_js")[0], "nothing is fetched"
    assert "Bokeh" in first and mmviz_bokeh_version() in first
    assert plots._bokehjs_loader(figure(), parts) == (None, set())
    with_widgets, more = plots._bokehjs_loader(column(figure(), Slider(start=0, end=1, value=0, step=1)), parts)
    assert with_widgets is not None and len(more) == 1 and not more & parts, "only the widgets part is new"
    assert len(with_widgets) < len(first)


def test_widget_loads_bokehjs_into_the_notebook_once_per_kernel(small_trace, monkeypatch):
    import IPython
    import IPython.display

    published = []

    class Kernel:
        kernel = object()

    monkeypatch.setattr(IPython, "get_ipython", lambda: Kernel())
    monkeypatch.setattr(IPython.display, "publish_display_data", lambda data, **_: published.append(data))
    monkeypatch.setattr(plots, "_SENT_BOKEHJS", set())
    plots.widget(plots.image_share(small_trace))
    plots.widget(plots.entropy(small_trace))
    assert len(published) == 1 and list(published[0]) == [LOAD_MIME_TYPE]
    assert "const js_urls = [];" in published[0][LOAD_MIME_TYPE]


def mmviz_bokeh_version() -> str:
    import bokeh

    return bokeh.__version__
