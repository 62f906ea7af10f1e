"""Bokeh analysis plots of a trace, linked to an :class:`~mmviz.Inspector` when given one.

Every plot takes a :class:`~mmviz.Trace` or an :class:`~mmviz.Inspector` (its trace is used) and returns a bokeh
model. Given an Inspector the plot is **linked** to it: a click on a layer in the plot selects that layer in the
inspector, and the inspector's layer is marked in the plot by a vertical dashed line that follows it (the pinned
token and the selected head are highlighted where the plot shows them).

Linking needs the plot displayed as an ipywidget, so that clicks reach Python: :func:`widget` wraps it in a
``jupyter_bokeh.BokehModel`` and loads BokehJS into the page inline (no CDN). A plain ``bokeh.io.show`` draws the
same plot without the link. Layers are decoder layers ``0 … L−1`` and ``"mean"`` (the inspector's mean over
layers, where a plot shows the last layer or no marker); the projection's residual-stream axis is a ``depth``
(0 = the embeddings, d = after decoder layer d − 1), drawn at x = d − 1 with the embeddings labelled ``emb``.

Example:
    >>> inspector = mmviz.inspect(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
    >>> ipywidgets.VBox([inspector, mmviz.plots.widget(mmviz.plots.lens_ranks(inspector))])   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from bokeh.core.templates import AUTOLOAD_NB_JS
from bokeh.embed.bundle import Bundle, bundle_for_objs_and_resources
from bokeh.events import Reset, SelectionGeometry, Tap
from bokeh.io.notebook import LOAD_MIME_TYPE
from bokeh.layouts import row
from bokeh.models import (
    BasicTicker,
    BoxAnnotation,
    CDSView,
    ColorBar,
    ColumnDataSource,
    CustomJS,
    HoverTool,
    IndexFilter,
    LayoutDOM,
    Legend,
    LegendItem,
    LinearColorMapper,
    NumeralTickFormatter,
    Range1d,
    Span,
    TapTool,
)
from bokeh.palettes import Category10_10, Category20_20, Colorblind8, Viridis256
from bokeh.plotting import figure
from bokeh.resources import INLINE
from jupyter_bokeh import BokehModel

from mmviz import interventions, selection
from mmviz.errors import InputError
from mmviz.evaluation.comparison import Comparison
from mmviz.methods import LogitLens, Projection, logit_lens
from mmviz.methods import image_share as compute_image_share
from mmviz.methods import projection as compute_projection
from mmviz.records import Trace
from mmviz.sweeps import SweepResult, bootstrap_mean

if TYPE_CHECKING:
    from mmviz.evaluation import Evaluation
    from mmviz.methods import ImageShare


class Inspector(Protocol):
    """What a plot links to: an :class:`~mmviz.Inspector` (any widget with its trace and these observable traits)."""

    trace: Trace
    layer: selection.LayerChoice
    head: selection.HeadChoice
    pinned: int

    def observe(self, handler: Callable[..., None], names: Any = ...) -> None: ...

    def unobserve(self, handler: Callable[..., None], names: Any = ...) -> None: ...


Source = Trace | Inspector

LAYER_MARKER = "mmviz-layer-marker"
"""Name of the ``Span`` marking the inspector's layer in a linked plot (``plot.select({"name": LAYER_MARKER})``)."""

MODALITY_COLOURS = {"image": Colorblind8[0], "prompt": Colorblind8[1], "answer": Colorblind8[5]}
MODALITY_MARKERS = {"image": "square", "prompt": "circle", "answer": "triangle"}


def image_share(source: Source, *, rows: Literal["all", "answer"] = "answer") -> figure:
    """Per-layer share of attention mass on the first token, the image, the prompt and the answer.

    Mean over heads and over the ``rows`` (the answer rows by default) of :func:`mmviz.methods.image_share`.

    Example:
        >>> show(image_share(trace))                                   # doctest: +SKIP
    """
    trace, inspector = _resolve(source)
    share = _image_share(trace, rows)
    whose = "the answer's" if rows == "answer" else "the text's"
    plot = _layer_figure(f"Where {whose} attention goes", y_axis_label="share of attention")
    lines = []
    for colour, (name, values) in zip(Category10_10, share.groups.items(), strict=False):
        data = ColumnDataSource({"x": np.asarray(share.layers), "y": np.asarray(values, dtype=float)})
        lines.append(
            plot.line("x", "y", source=data, legend_label=name, color=colour, line_width=2, name=f"share:{name}")
        )
    plot.add_tools(HoverTool(renderers=lines, tooltips=[("layer", "@x"), ("share", "@y{0.000}")], mode="vline"))
    plot.legend.click_policy = "hide"
    plot.add_layout(plot.legend[0], "right")
    if inspector is not None:
        _link(inspector, plot, layer_axes=[plot])
    return plot


def entropy(source: Source, *, rows: Literal["all", "answer"] = "answer") -> figure:
    """Per-layer attention entropy of the heads (nats; low = a focused head): the mean over heads as a line, the
    range over heads as a band and every head as a dot. Linked, the inspector's head (if not the mean) is drawn too.

    Each head's value is the mean over ``rows`` of its rows' entropy (:func:`mmviz.methods.image_share`).

    Example:
        >>> show(entropy(trace))                                       # doctest: +SKIP
    """
    trace, inspector = _resolve(source)
    share = _image_share(trace, rows)
    layers = np.asarray(share.layers)
    per_head = np.asarray(share.entropy, dtype=float)  # (L, H)
    plot = _layer_figure("Attention entropy of the heads", y_axis_label="entropy (nats)")
    band = ColumnDataSource({"x": layers, "low": per_head.min(axis=1), "high": per_head.max(axis=1)})
    plot.varea(
        "x",
        "low",
        "high",
        source=band,
        fill_color="#999999",
        fill_alpha=0.25,
        legend_label="range",
        name="entropy:band",
    )
    heads = ColumnDataSource(
        {
            "x": np.repeat(layers, per_head.shape[1]),
            "y": per_head.ravel(),
            "head": np.tile(np.arange(per_head.shape[1]), len(layers)),
        }
    )
    dots = plot.scatter(
        "x", "y", source=heads, size=5, color="#555555", alpha=0.5, legend_label="heads", name="entropy:heads"
    )
    mean = ColumnDataSource({"x": layers, "y": per_head.mean(axis=1)})
    plot.line("x", "y", source=mean, color=Category10_10[0], line_width=2, legend_label="mean of heads", name="entropy")
    plot.add_tools(HoverTool(renderers=[dots], tooltips=[("layer", "@x"), ("head", "@head"), ("entropy", "@y{0.00}")]))
    plot.legend.click_policy = "hide"
    plot.add_layout(plot.legend[0], "right")
    if inspector is not None:
        chosen = ColumnDataSource({"x": [], "y": []})
        chosen_line = plot.line(
            "x", "y", source=chosen, color=Category10_10[3], line_width=2, legend_label="inspector's head",
            name="entropy:head",
        )  # fmt: skip

        def show_head(head: selection.HeadChoice) -> None:
            one = head != selection.MEAN
            chosen.data = {"x": layers, "y": per_head[:, head]} if one else {"x": np.array([]), "y": np.array([])}
            chosen_line.visible = one

        _link(inspector, plot, layer_axes=[plot], updates={"head": show_head})
    return plot


def lens_ranks(source: Source, *, lens: LogitLens | None = None) -> figure:
    """Logit-lens rank of every answer token at every depth: one line per token, rank 1 (the top guess) at the top,
    on a log scale. Depth ℓ is the residual stream after decoder layer ℓ (``emb`` = the embeddings); the last depth
    is the model's own output. Linked, the pinned token's line is emphasised.

    ``lens`` reuses a :func:`mmviz.methods.logit_lens` result; otherwise the lens is computed once per trace (the
    trace's hidden states are used when captured) with ``trace.compute("logit_lens")``, so the widget's method
    switcher does not run it again.

    Example:
        >>> show(lens_ranks(trace))                                    # doctest: +SKIP
    """
    trace, inspector = _resolve(source)
    if lens is None:
        trace.compute("logit_lens")  # the map the widget's method switcher would compute, from the same lens
        lens = logit_lens(trace)
    depths = np.arange(lens.answer_ranks.shape[0]) - 1
    ranks = lens.answer_ranks.astype(float) + 1.0  # (depths, A), 1 = top
    deepest = float(ranks.max())
    plot = _layer_figure(
        "Logit lens: rank of each answer token",
        y_axis_label="rank (1 = top guess)",
        y_axis_type="log",
        y_range=Range1d(max(deepest * 2.0, 10.0), 0.7),  # reversed: rank 1 at the top
        embeddings=True,
    )
    plot.yaxis.formatter = NumeralTickFormatter(format="0,0")
    palette = Category20_20 if ranks.shape[1] > 10 else Category10_10
    positions = trace.answer_start + np.arange(ranks.shape[1])
    lines, items = [], []
    for index, position in enumerate(positions):
        token = trace.tokens[position]
        data = ColumnDataSource(
            {
                "x": depths,
                "y": ranks[:, index],
                "p": lens.answer_probs[:, index].astype(float),
                "token": [token] * len(depths),
            }
        )
        colour = palette[index % len(palette)]
        line = plot.line("x", "y", source=data, color=colour, line_width=2, name=f"rank:{position}")
        dots = plot.scatter("x", "y", source=data, color=colour, size=4)
        lines.append(line)
        items.append(LegendItem(label=f"{token!r} @{position}", renderers=[line, dots]))
    plot.add_layout(Legend(items=items, click_policy="hide", label_text_font_size="8pt"), "right")
    plot.add_tools(
        HoverTool(
            renderers=lines,
            tooltips=[("token", "@token"), ("layer", "@x"), ("rank", "@y{0,0}"), ("p", "@p{0.0000}")],
        )
    )
    if inspector is not None:

        def emphasise(pinned: int) -> None:
            for position, line in zip(positions, lines, strict=True):
                chosen = position == pinned
                line.glyph.line_width = 4 if chosen else 2
                line.glyph.line_alpha = 1.0 if chosen or pinned not in positions else 0.3

        _link(inspector, plot, layer_axes=[plot], updates={"pinned": emphasise})
    return plot


def projection(source: Source, depth: int | None = None, *, result: Projection | None = None) -> LayoutDOM:
    """Image patches and text tokens in ONE PCA frame fitted on all layers, and the modality gap per layer.

    Left: every position's hidden state at ``depth`` (0 = the embeddings, d = after decoder layer d − 1; default:
    the last, or the inspector's layer), coloured by modality (image patch, prompt text, answer text); the axes are
    fixed across depths, so points can be compared between layers. Right: the cosine distance between the mean
    image and the mean text state at every depth.

    Linked, the scatter follows the inspector's layer (``depth`` only sets the first one shown), a click on the gap
    plot selects a layer, a click on a text point pins that token, and the pinned token's path through all layers is
    drawn. ``result`` reuses a :func:`mmviz.methods.projection` result; otherwise it is computed once per trace.

    Example:
        >>> show(projection(trace, depth=3))        # the state after decoder layer 2   # doctest: +SKIP
    """
    trace, inspector = _resolve(source)
    result = compute_projection(trace) if result is None else result
    depths = result.coords.shape[0]
    if depth is None:
        depth = _depth_of(inspector.layer, depths) if inspector is not None else depths - 1
    depth = selection.depth(depth, depths)
    scatter, points, dots = _projection_scatter(trace, result, depth)
    gap = _layer_figure(
        "Modality gap per layer",
        y_axis_label="1 − cos(mean image, mean text)",
        embeddings=True,
        width=420,
        height=400,
    )
    gap_source = ColumnDataSource({"x": np.arange(depths) - 1, "y": result.modality_gap.astype(float)})
    gap_line = gap.line("x", "y", source=gap_source, line_width=2, color=Category10_10[0], name="gap")
    gap.scatter("x", "y", source=gap_source, size=6, color=Category10_10[0])
    gap.add_tools(HoverTool(renderers=[gap_line], tooltips=[("layer", "@x"), ("gap", "@y{0.000}")], mode="vline"))
    layout = row(scatter, gap)
    if inspector is not None:
        _link_projection(inspector, layout, scatter, points, dots, gap, result, depth)
    return layout


def _depth_of(layer: selection.LayerChoice, depths: int) -> int:
    """The residual-stream depth an inspector layer shows: after that layer; the last for the mean over layers."""
    return depths - 1 if layer == selection.MEAN else int(layer) + 1


def _projection_scatter(trace: Trace, result: Projection, depth: int) -> tuple[figure, ColumnDataSource, list[Any]]:
    """The scatter of every position at ``depth``, one renderer per modality over one shared source."""
    groups = np.where(
        result.is_image, "image", np.where(np.arange(len(trace.tokens)) >= trace.answer_start, "answer", "prompt")
    )
    every = result.coords.reshape(-1, 2)
    low, high = every.min(axis=0), every.max(axis=0)
    margin = np.maximum((high - low) * 0.05, 1e-6)
    scatter = figure(
        title=_projection_title(result, depth),
        width=460,
        height=400,
        x_range=Range1d(low[0] - margin[0], high[0] + margin[0]),  # one frame for all layers: fixed axes
        y_range=Range1d(low[1] - margin[1], high[1] + margin[1]),
        x_axis_label="component 1",
        y_axis_label="component 2",
        tools="pan,wheel_zoom,box_zoom,reset,save",
    )
    scatter.toolbar.logo = None
    points = ColumnDataSource(
        {
            "x": result.coords[depth, :, 0].astype(float),
            "y": result.coords[depth, :, 1].astype(float),
            "position": np.arange(len(groups)),
            "token": list(trace.tokens),
            "cell": [f"{r}, {c}" if r >= 0 else "" for r, c in result.grid.tolist()],
        }
    )
    dots = []
    for group, colour in MODALITY_COLOURS.items():
        members = np.flatnonzero(groups == group)
        if len(members) == 0:
            continue
        dot = scatter.scatter(
            "x",
            "y",
            source=points,
            view=CDSView(filter=IndexFilter(members.tolist())),
            marker=MODALITY_MARKERS[group],
            color=colour,
            size=7 if group == "image" else 9,
            alpha=0.7,
            legend_label=f"{group} ({len(members)})",
            name=f"points:{group}",
        )
        dot.selection_glyph = dot.nonselection_glyph = None  # a click pins a token; no lingering selection look
        dots.append(dot)
    scatter.add_tools(
        HoverTool(renderers=dots, tooltips=[("token", "@token"), ("position", "@position"), ("cell", "@cell")])
    )
    scatter.legend.click_policy = "hide"
    return scatter, points, dots


def _link_projection(
    inspector: Inspector,
    layout: LayoutDOM,
    scatter: figure,
    points: ColumnDataSource,
    dots: list[Any],
    gap: figure,
    result: Projection,
    depth: int,
) -> None:
    """The scatter follows the inspector's layer, draws the pinned token's path and pins a clicked text token."""
    depths = result.coords.shape[0]
    path = ColumnDataSource({"x": [], "y": [], "layer": []})
    path_line = scatter.line("x", "y", source=path, color="#000000", line_width=1.5, alpha=0.8, name="path")
    path_dots = scatter.scatter("x", "y", source=path, color="#000000", size=4, name="path:layers")
    here = ColumnDataSource({"x": [], "y": []})
    scatter.scatter(
        "x", "y", source=here, size=16, fill_alpha=0, line_color="#000000", line_width=2.5, name="path:current"
    )
    scatter.add_tools(HoverTool(renderers=[path_dots], tooltips=[("pinned token at layer", "@layer")]))
    shown = {"depth": depth, "pinned": -1}

    def mark_pinned_here() -> None:
        at_depth, pinned = shown["depth"], shown["pinned"]
        at = result.coords[at_depth : at_depth + 1, pinned].astype(float) if pinned >= 0 else np.zeros((0, 2))
        here.data = {"x": at[:, 0], "y": at[:, 1]}

    def show_layer(value: selection.LayerChoice) -> None:
        at_depth = shown["depth"] = _depth_of(value, depths)
        points.data.update(x=result.coords[at_depth, :, 0].astype(float), y=result.coords[at_depth, :, 1].astype(float))
        scatter.title.text = _projection_title(result, at_depth)
        mark_pinned_here()

    def show_pinned(value: int) -> None:
        shown["pinned"] = value
        track = result.coords[:, value].astype(float) if value >= 0 else np.zeros((0, 2))
        path.data = {"x": track[:, 0], "y": track[:, 1], "layer": (np.arange(depths) - 1)[: len(track)]}
        path_line.visible = value >= 0
        mark_pinned_here()

    def pin_clicked(attribute: str, old: list[int], new: list[int]) -> None:
        if not new:
            return
        position = int(points.data["position"][new[0]])
        points.selected.indices = []
        if position in inspector.trace.query_positions:  # image tokens have no attention row to pin
            inspector.pinned = position

    scatter.add_tools(TapTool(renderers=dots))
    points.selected.on_change("indices", pin_clicked)
    _link(inspector, layout, layer_axes=[gap], updates={"layer": show_layer, "pinned": show_pinned})


def knockout_curve(
    source: Source,
    *,
    curve: interventions.KnockoutCurve | None = None,
    width: int = 1,
    to: Literal["answer", "last_prompt"] = "answer",
) -> figure:
    """Knockout by window: Δ log p of every answer token (thin lines) and their mean (thick) when the image is cut
    off from the ``to`` rows in a window of layers, one point per window, drawn at the window's first layer.

    ``curve`` reuses a :func:`mmviz.interventions.knockout_curve` result; otherwise the trace's kept curve is used
    when it has this ``width`` and ``to``, else one is computed (one forward per window, kept in the trace). A curve
    kept before per-token deltas were recorded draws the first answer token only. Linked, a click on a window
    selects its first layer in the inspector, and the pinned answer token's line is emphasised.

    Example:
        >>> show(knockout_curve(trace, width=2))                        # doctest: +SKIP
    """
    trace, inspector = _resolve(source)
    if curve is None:
        kept = trace.results.get(interventions.CURVE_KEY)
        matches = isinstance(kept, interventions.KnockoutCurve) and (kept.width, kept.to) == (width, to)
        curve = kept if matches else interventions.knockout_curve(trace, width, to=to)  # type: ignore[assignment]
    assert curve is not None
    per_token = curve.per_token()  # (W, A)
    starts = np.asarray(curve.starts, np.int64)
    positions = (
        np.asarray(curve.positions, np.int64) if curve.positions is not None else np.array([trace.answer_start])
    )
    windows = [f"{s}" if curve.width == 1 else f"{s}–{s + curve.width - 1}" for s in starts]
    rows = "the answer's rows" if curve.to == "answer" else "the last prompt token's row"
    plot = _layer_figure(
        f"Knockout by window: image cut off from {rows}, {curve.width} layer{'s' if curve.width > 1 else ''} each",
        y_axis_label="Δ log p (nats; < 0: the window was needed)",
    )
    plot.xaxis.axis_label = "knocked-out layer" if curve.width == 1 else f"first layer of the window ({curve.width})"
    plot.add_layout(Span(location=0, dimension="width", line_color="#888888", line_width=1))
    answer = np.asarray(trace.answer_logprobs, np.float64)
    logprobs = {trace.answer_start + i: float(v) for i, v in enumerate(answer)}  # without a knockout
    palette = Category20_20 if per_token.shape[1] > 10 else Category10_10
    lines, items = [], []
    for index, position in enumerate(positions):
        token = trace.tokens[position]
        data = ColumnDataSource(
            {
                "x": starts,
                "y": per_token[:, index],
                "window": windows,
                "token": [f"{token!r} @{position}"] * len(starts),
                "clean": [logprobs.get(int(position), float("nan"))] * len(starts),
            }
        )
        colour = palette[index % len(palette)]
        line = plot.line("x", "y", source=data, color=colour, line_width=1.5, name=f"knockout:{position}")
        dots = plot.scatter("x", "y", source=data, color=colour, size=4)
        lines.append(line)
        items.append(LegendItem(label=f"{token!r} @{position}", renderers=[line, dots]))
    if len(positions) > 1:
        mean = ColumnDataSource(
            {
                "x": starts,
                "y": per_token.mean(axis=1),
                "window": windows,
                "token": [f"mean of {len(positions)} answer tokens"] * len(starts),
                "clean": [float(np.mean([logprobs.get(int(p), np.nan) for p in positions]))] * len(starts),
            }
        )
        line = plot.line("x", "y", source=mean, color="#222222", line_width=3, name="knockout:mean")
        lines.append(line)
        items.insert(0, LegendItem(label="mean over answer tokens", renderers=[line]))
    plot.add_layout(Legend(items=items, click_policy="hide", label_text_font_size="8pt"), "right")
    plot.add_tools(
        HoverTool(
            renderers=lines,
            tooltips=[
                ("token", "@token"),
                ("layers", "@window"),
                ("Δ log p", "@y{+0.000}"),
                ("log p without knockout", "@clean{0.000}"),
            ],
        )
    )
    if inspector is not None:
        by_position = dict(zip(positions.tolist(), lines, strict=False))

        def emphasise(pinned: int) -> None:
            for position, line in by_position.items():
                chosen = position == pinned
                line.glyph.line_width = 3 if chosen else 1.5
                line.glyph.line_alpha = 1.0 if chosen or pinned not in by_position else 0.3

        _link(inspector, plot, layer_axes=[plot], updates={"pinned": emphasise})
    return plot


def faithfulness_curves(result: Evaluation) -> LayoutDOM:
    """Mean deletion (lower is better) and insertion (higher is better) curves of every evaluated method.

    Example:
        >>> show(faithfulness_curves(mmviz.evaluation.evaluate(model, processor, scenes=20)))   # doctest: +SKIP
    """
    panels = []
    for title, index in (("Deletion: top tokens blurred (lower is better)", 1), ("Insertion (higher is better)", 2)):
        plot = figure(
            title=title, width=460, height=340, x_axis_label="fraction of image tokens", y_axis_label="p / p clean"
        )
        items = []
        for colour, score in zip(Category10_10 * 2, result.scores.values(), strict=False):
            curves = score.mean_curves()
            dash = "dashed" if score.method.startswith("random") else "solid"
            line = plot.line(
                curves[0], curves[index], color=colour, line_width=2, line_dash=dash, name=f"curve:{score.method}"
            )
            items.append((score.method, [line]))
        plot.add_layout(Legend(items=items, label_text_font_size="8pt", click_policy="hide"), "right")
        panels.append(plot)
    return row(*panels)


def divergence(source: Comparison | Any, *, metric: Literal["js", "spearman", "iou_topk"] = "js") -> figure:
    """Per layer, how far two traces' maps differ: the mean over answer-token pairs of ``metric`` (Jensen–Shannon
    divergence by default; ``"spearman"`` or ``"iou_topk"``) of every compared method, against A's layer. A map that
    does not depend on the layer is a dashed horizontal line.

    ``source`` is a :class:`~mmviz.evaluation.comparison.Comparison` (from :func:`mmviz.compare`) or an
    ``mmviz.ComparisonWidget``: then the plot is linked to it (a click on a layer moves both panes there, the
    marker follows pane A's layer). In a page exported by ``ComparisonWidget.to_html(plots=[...])`` a click moves
    the panes too.

    Example:
        >>> show(divergence(mmviz.compare(a, b)))                       # doctest: +SKIP
    """
    comparison, linked = _linked(
        source, Comparison, "comparison", "an mmviz.Comparison (from mmviz.compare(a, b)) or an mmviz.ComparisonWidget"
    )
    if metric not in ("js", "spearman", "iou_topk"):
        raise ValueError(f"metric must be 'js', 'spearman' or 'iou_topk', not {metric!r}")
    names = {"js": "Jensen–Shannon divergence (bits)", "spearman": "Spearman correlation", "iou_topk": "top-k IoU"}
    a, b = comparison.a, comparison.b
    title = f"A vs B per layer: {names[metric]}" + (" (B by relative depth)" if a.num_layers != b.num_layers else "")
    plot = _layer_figure(title, y_axis_label=names[metric])
    lines = []
    for colour, name in zip(Category10_10 * 2, comparison.methods, strict=False):
        summary = comparison.per_layer(name)
        layered = comparison.methods[name].layered
        x = summary["layer"] if layered else np.array([0, max(0, a.num_layers - 1)])
        y = summary[metric] if layered else np.repeat(summary[metric], 2)
        data = ColumnDataSource({"x": x, "y": y.astype(float), "layer_b": summary["layer_b"] if layered else [-1, -1]})
        line = plot.line(
            "x",
            "y",
            source=data,
            color=colour,
            line_width=2,
            legend_label=name,
            name=f"divergence:{name}",
            line_dash="solid" if layered else "dashed",
        )
        if layered:
            plot.scatter("x", "y", source=data, color=colour, size=6)
        lines.append(line)
    plot.add_tools(HoverTool(renderers=lines, tooltips=[("layer A", "@x"), ("layer B", "@layer_b"), (metric, "@y")]))
    plot.legend.click_policy = "hide"
    plot.add_layout(plot.legend[0], "right")
    # In an exported comparison page the panes listen to clicks through the page's mmvizView.
    plot.js_on_event(Tap, CustomJS(code=_SET_LAYER_ON_PAGE))
    if linked is not None:
        _link(linked, plot, layer_axes=[plot])
    return plot


_SET_LAYER_ON_PAGE = (
    "if (window.mmvizView && window.mmvizView.setLayer) window.mmvizView.setLayer(Math.round(cb_obj.x));"
)


def widget(plot: LayoutDOM) -> BokehModel:
    """``plot`` as an ipywidget (``jupyter_bokeh.BokehModel``) synced both ways with the kernel: the way to display
    a linked plot, alone or in an ipywidgets layout next to its inspector.

    In a notebook kernel, BokehJS is sent inline into the page the first time a plot needs it (no CDN; only the
    parts of BokehJS the plot uses, once per kernel, as an output of that cell: keep that output, or restart the
    kernel after clearing it). Closing the widget unlinks the plot from its inspector.

    Example:
        >>> inspector = mmviz.inspect(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> plot = mmviz.plots.image_share(inspector)                                         # doctest: +SKIP
        >>> ipywidgets.VBox([inspector, mmviz.plots.widget(plot)])                            # doctest: +SKIP
    """
    if not isinstance(plot, LayoutDOM):
        raise TypeError(f"widget() takes a bokeh plot or layout (from mmviz.plots), not {type(plot).__name__}")
    _publish_bokehjs(plot)
    synced = _SyncedPlot(plot)

    def unlink_when_closed(change: dict[str, Any]) -> None:
        if change["new"] is None:
            unlink(plot)

    synced.observe(unlink_when_closed, names="comm")
    return synced


def unlink(plot: LayoutDOM) -> None:
    """Stop ``plot`` following its inspector and its clicks changing it (the plot keeps what it shows).

    Closing the plot's :func:`widget` does this; a plot that is garbage-collected unlinks itself too.

    Example:
        >>> unlink(plot); inspector.layer = 0      # the plot's marker stays where it was   # doctest: +SKIP
    """
    for model in plot.references():  # the plot itself and, in a layout, every plot in it
        for link in getattr(model, "_mmviz_links", ()):
            link.close()


# ---------------------------------------------------------------------------------------------------------------------
# Linking

_SENT_BOKEHJS: set[str] = set()


class _Link:
    """Keeps one plot in step with one Inspector, for as long as the plot lives (it is kept in ``plot._mmviz_links``).

    ``updates`` maps an Inspector trait (``layer``, ``head``, ``pinned``) to a function that redraws the plot for its
    value; the layer marker of every ``layer_axes`` figure is always updated, and a tap on one of them selects the
    nearest layer.
    """

    def __init__(
        self,
        inspector: Inspector,
        layer_axes: Sequence[figure],
        updates: dict[str, Callable[[Any], None]],
    ) -> None:
        self.inspector = inspector
        self.open = True
        markers = [_layer_marker(plot) for plot in layer_axes]

        def move_markers(layer: selection.LayerChoice) -> None:
            for marker in markers:  # the mean over layers is no one layer: no marker
                marker.visible = layer != selection.MEAN
                marker.location = 0 if layer == selection.MEAN else int(layer)

        move_markers(inspector.layer)
        self.updates: dict[str, list[Callable[[Any], None]]] = {"layer": [move_markers]}
        for name, update in updates.items():
            self.updates.setdefault(name, []).append(update)
        for plot in layer_axes:
            plot.on_event(Tap, self._on_tap)
        handler = _weak_handler(self)
        names = list(self.updates)
        inspector.observe(handler, names=names)
        # The inspector holds the handler, the handler only a weak reference to this link: a discarded plot unlinks.
        self._stop_observing = weakref.finalize(self, _unobserve, weakref.ref(inspector), handler, names)
        for name in names:
            if name != "layer":
                self.redraw(name, getattr(inspector, name))

    def redraw(self, name: str, value: Any) -> None:
        for update in self.updates.get(name, []):
            update(value)

    def _on_tap(self, event: Tap) -> None:
        if not self.open or event.x is None:
            return
        layer = round(event.x)
        if 0 <= layer < self.inspector.trace.num_layers:
            self.inspector.layer = layer

    def close(self) -> None:
        self.open = False
        self._stop_observing()


def _link(
    inspector: Inspector,
    plot: LayoutDOM,
    *,
    layer_axes: Sequence[figure],
    updates: dict[str, Callable[[Any], None]] | None = None,
) -> None:
    link = _Link(inspector, layer_axes, updates or {})
    plot._mmviz_links = [*getattr(plot, "_mmviz_links", []), link]


def _weak_handler(link: _Link) -> Callable[[dict[str, Any]], None]:
    reference = weakref.ref(link)

    def handler(change: dict[str, Any]) -> None:
        live = reference()
        if live is not None and live.open:
            live.redraw(change["name"], change["new"])

    return handler


def _unobserve(inspector: weakref.ref[Inspector], handler: Callable[..., None], names: Iterable[str]) -> None:
    target = inspector()
    if target is not None:
        target.unobserve(handler, names=list(names))


def _layer_marker(plot: figure) -> Span:
    marker = Span(
        location=0, dimension="height", line_color="#333333", line_dash="dashed", line_width=2, name=LAYER_MARKER
    )
    plot.add_layout(marker)
    return marker


class _SyncedPlot(BokehModel):
    """A ``BokehModel`` that can be closed twice: ipywidgets closes a widget again when it is garbage-collected,
    and jupyter_bokeh 4.1's second close raises (it detaches the document again)."""

    def close(self) -> None:
        if self.comm is not None:
            super().close()


def _publish_bokehjs(plot: LayoutDOM) -> None:
    """Display the inline BokehJS loader in the running notebook, before the widget that needs it."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:  # no page to load it into (a script, a test)
        return
    loader, parts = _bokehjs_loader(plot, _SENT_BOKEHJS)
    if loader is not None:
        from IPython.display import publish_display_data

        publish_display_data({LOAD_MIME_TYPE: loader})
        _SENT_BOKEHJS.update(parts)


def _bokehjs_loader(plot: LayoutDOM, sent: set[str]) -> tuple[str | None, set[str]]:
    """JavaScript that defines, inline (it fetches nothing), the parts of BokehJS ``plot`` needs that are not in
    ``sent`` (digests of parts already in the page), and the digests of the parts it defines; None if nothing is new.
    """
    needed = bundle_for_objs_and_resources([plot], INLINE)
    fresh = {_digest(code): code for code in needed.js_raw if _digest(code) not in sent}
    if not fresh:
        return None, set()
    inline = Bundle(js_files=[], js_raw=list(fresh.values()), css_files=[], css_raw=list(needed.css_raw), hashes={})
    loader = AUTOLOAD_NB_JS.render(bundle=inline, elementid=None, force=True, timeout=5000, register_mime=False)
    return loader, set(fresh)


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _resolve(source: Any) -> tuple[Trace, Inspector | None]:
    return _linked(source, Trace, "trace", "an mmviz.Trace (from mmviz.trace(...)) or an mmviz.Inspector")


def _linked(source: Any, kind: type, attribute: str, accepted: str) -> tuple[Any, Any]:
    """``(data, None)`` for the data itself (a trace, a comparison, a sweep), ``(data, widget)`` for a widget that
    holds it in ``attribute`` and has observable traits to link to; else a TypeError naming what is accepted."""
    if isinstance(source, kind):
        return source, None
    found = getattr(source, attribute, None)
    if isinstance(found, kind) and callable(getattr(source, "observe", None)):
        return found, source
    raise TypeError(f"mmviz.plots takes {accepted}, not {type(source).__name__}")


def _sweep_source(source: Any) -> tuple[SweepResult, Any]:
    accepted = "an mmviz.sweeps.SweepResult (from mmviz.sweep or mmviz.sweeps.load) or an mmviz.SweepWidget"
    return _linked(source, SweepResult, "result", accepted)


def _image_share(trace: Trace, rows: Literal["all", "answer"]) -> ImageShare:
    return trace.computed(f"image_share:{rows}", lambda: compute_image_share(trace, rows=rows))


def _layer_figure(
    title: str, *, y_axis_label: str, embeddings: bool = False, width: int = 520, height: int = 320, **options: Any
) -> figure:
    """A figure whose x axis is the decoder layer (``emb`` at −1 for the embeddings when ``embeddings``)."""
    plot = figure(
        title=title,
        width=width,
        height=height,
        x_axis_label="layer (output of)" if embeddings else "layer",
        y_axis_label=y_axis_label,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        **options,
    )
    plot.xaxis.ticker = BasicTicker(min_interval=1)
    if embeddings:
        plot.xaxis.major_label_overrides = {-1: "emb"}
    plot.toolbar.logo = None
    return plot


def _projection_title(result: Projection, depth: int) -> str:
    where = "embeddings" if depth == 0 else f"after layer {depth - 1}"
    explained = "" if np.isnan(result.explained) else f", {result.explained:.0%} of variance"
    return f"Aligned {result.method.upper()} of hidden states: {where}{explained}"


# ---------------------------------------------------------------------------------------------------------------------
# Sweeps: many examples (mmviz.sweep). Each plot takes a SweepResult or an mmviz.SweepWidget (linked through its
# traits, the widget is not imported).


def sweep_layers(
    source: Any, name: str, *, by: str | None = None, confidence: float = 0.95, resamples: int = 1000
) -> figure:
    """A per-layer statistic of a sweep: its mean over examples per layer as a line, with a percentile bootstrap
    confidence band; with ``by`` (a column such as ``"asks_for"``) one line and band per group.

    ``name`` is an array statistic: per layer (``image_share``, ``pointing_game``, ``energy_in_box``), per depth
    (``lens_rank``: the embeddings are drawn at ``emb``), per layer window (``knockout_delta``) or per layer and head
    (``image_share_heads``, ``head_entropy``: each example's mean over heads first). Failed examples and examples
    without a value are left out; the legend says how many examples entered each line.

    Example:
        >>> show(sweep_layers(mmviz.sweeps.load("runs/a"), "image_share", by="asks_for"))   # doctest: +SKIP
    """
    result, _ = _sweep_source(source)
    values = result.column(name)
    if values.ndim < 2:
        raise InputError(f"sweep_layers draws an array statistic per layer; {name!r} has one number per example")
    if values.ndim > 2:  # (examples, L, H, ...): each example's mean over heads
        finite = np.isfinite(values).all(axis=tuple(range(2, values.ndim)))
        values = np.where(finite, values.reshape(*values.shape[:2], -1).mean(axis=2), np.nan)
    groups: dict[str, np.ndarray] = {"all examples": np.ones(len(values), dtype=bool)}
    if by is not None:
        if by not in result.table.column_names:
            raise InputError(f"the sweep has no column {by!r} to group by; it has {result.table.column_names}")
        labels = np.array(result.table.column(by).to_pylist(), dtype=object)
        groups = {f"{by} = {group}": labels == group for group in sorted({g for g in labels if g is not None}, key=str)}
    depth = name == "lens_rank"
    axis = {"knockout_delta": "layer window knocked out"}.get(name)
    over = "heads, then examples" if result.column(name).ndim > 2 else "examples"
    plot = _layer_figure(
        f"{name}: mean over {over} with a {confidence:.0%} bootstrap interval", y_axis_label=name, embeddings=depth
    )
    if axis is not None:
        plot.xaxis.axis_label = axis
    if name == "lens_rank":
        plot.yaxis.axis_label = "rank of the answer token (logit lens)"
    items, lines = [], []
    for colour, (label, members) in zip(Category10_10 * 3, groups.items(), strict=False):
        curve = bootstrap_mean(values[members], confidence=confidence, resamples=resamples)
        x = np.arange(len(curve.mean)) - (1 if depth else 0)
        data = ColumnDataSource({"x": x, "y": curve.mean, "low": curve.low, "high": curve.high})
        band = plot.varea("x", "low", "high", source=data, fill_color=colour, fill_alpha=0.2, name=f"band:{label}")
        line = plot.line("x", "y", source=data, color=colour, line_width=2, name=f"mean:{label}")
        lines.append(line)
        items.append(LegendItem(label=f"{label} (n = {curve.count})", renderers=[line, band]))
    plot.add_layout(Legend(items=items, click_policy="hide", label_text_font_size="8pt"), "below")
    plot.add_tools(
        HoverTool(
            renderers=lines,
            tooltips=[("x", "@x"), ("mean", "@y{0.000}"), (f"{confidence:.0%} interval", "@low{0.000} … @high{0.000}")],
        )
    )
    return plot


def sweep_histogram(source: Any, column: str, *, bins: int = 20) -> figure:
    """A histogram of a sweep's column over examples: a scalar statistic (``answer_logprob``) or field, or an array
    statistic's mean per example (the number the sweep widget shows). Failed examples and missing values are left
    out (the title counts them).

    Given an ``mmviz.SweepWidget`` the plot is **linked**: a box select (drag along x) sets the widget's range of
    that column, so the table shows only the examples in it; reset clears the range; the range is shaded. In a page
    exported by ``SweepWidget.to_html(plots=[...])`` the box select filters the page's table too.

    Example:
        >>> view = mmviz.SweepWidget(result)                                                  # doctest: +SKIP
        >>> ipywidgets.VBox([view, mmviz.plots.widget(mmviz.plots.sweep_histogram(view, "answer_logprob"))])
        ... # doctest: +SKIP
    """
    result, linked = _sweep_source(source)
    values = _per_example(result, column)
    finite = values[np.isfinite(values)]
    if bins < 1:
        raise InputError(f"bins must be at least 1, not {bins}")
    counts, edges = np.histogram(finite, bins=bins) if len(finite) else (np.zeros(0, int), np.zeros(1))
    missing = len(values) - len(finite)
    described = column if result.column(column).ndim == 1 else f"{column} (mean over its entries)"
    title = f"{described}: {len(finite)} examples" + (
        f" ({missing} failed or without a value left out)" if missing else ""
    )
    plot = figure(
        title=title,
        width=520,
        height=300,
        x_axis_label=described,
        y_axis_label="examples",
        tools="xbox_select,reset,save",
    )
    plot.toolbar.logo = None
    data = ColumnDataSource({"left": edges[:-1], "right": edges[1:], "count": counts})
    bars = plot.quad(
        left="left", right="right", top="count", bottom=0, source=data, fill_color=Category10_10[0], line_color="white"
    )
    bars.name = f"histogram:{column}"
    plot.add_tools(
        HoverTool(renderers=[bars], tooltips=[("range", "@left{0.000} … @right{0.000}"), ("examples", "@count")])
    )
    shade = BoxAnnotation(fill_color="#ff7f0e", fill_alpha=0.15, visible=False, name=SWEEP_RANGE)
    plot.add_layout(shade)
    code = (
        "if (window.mmvizView && window.mmvizView.setRange) "
        "window.mmvizView.setRange(column, kind === 'reset' ? null : Math.min(cb_obj.geometry.x0, cb_obj.geometry.x1), "
        "kind === 'reset' ? null : Math.max(cb_obj.geometry.x0, cb_obj.geometry.x1));"
    )
    plot.js_on_event(SelectionGeometry, CustomJS(args={"column": column, "kind": "select"}, code=code))
    plot.js_on_event(Reset, CustomJS(args={"column": column, "kind": "reset"}, code=code))
    if linked is not None:
        _link_sweep_range(linked, plot, column, shade)
    return plot


def sweep_heads(source: Any, name: str = "image_share_heads") -> figure:
    """A layer × head grid of a per-head statistic of a sweep (``image_share_heads``, ``head_entropy``): each cell
    coloured by the statistic's mean over examples (failed ones left out); hover a cell for its mean and the
    examples it averages.

    Example:
        >>> show(sweep_heads(mmviz.sweeps.load("runs/a"), "head_entropy"))   # doctest: +SKIP
    """
    result, _ = _sweep_source(source)
    values = result.column(name)
    if values.ndim != 3:
        raise InputError(f"sweep_heads draws a (layers, heads) statistic; {name!r} has shape {values.shape[1:]}")
    kept = values[np.isfinite(values).all(axis=(1, 2))]
    mean = kept.mean(axis=0) if len(kept) else np.full(values.shape[1:], np.nan)
    layers, heads = mean.shape
    plot = figure(
        title=f"{name}: mean over {len(kept)} examples per layer and head",
        width=min(900, 120 + 28 * heads),
        height=min(900, 80 + 22 * layers),
        x_axis_label="head",
        y_axis_label="layer",
        x_range=Range1d(-0.5, heads - 0.5),
        y_range=Range1d(layers - 0.5, -0.5),
        tools="hover,save",
        tooltips=[("layer", "@layer"), ("head", "@head"), ("mean", "@value{0.000}"), ("examples", str(len(kept)))],
    )
    plot.toolbar.logo = None
    finite = mean[np.isfinite(mean)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    mapper = LinearColorMapper(
        palette=Viridis256, low=low, high=high if high > low else low + 1e-9, nan_color="#cccccc"
    )
    data = ColumnDataSource(
        {
            "layer": np.repeat(np.arange(layers), heads),
            "head": np.tile(np.arange(heads), layers),
            "value": mean.ravel(),
        }
    )
    plot.rect("head", "layer", 1, 1, source=data, fill_color={"field": "value", "transform": mapper}, line_color=None)
    plot.add_layout(ColorBar(color_mapper=mapper, title=f"mean {name}", width=10), "right")
    plot.xaxis.ticker = BasicTicker(min_interval=1)
    plot.yaxis.ticker = BasicTicker(min_interval=1)
    return plot


SWEEP_RANGE = "mmviz-sweep-range"
"""Name of the ``BoxAnnotation`` shading the linked sweep widget's range in :func:`sweep_histogram`."""


def _per_example(result: SweepResult, column: str) -> np.ndarray:
    """One number per example: the column's value, or an array statistic's mean over its entries (NaN: none)."""
    values = result.column(column)
    if values.ndim == 1:
        return values.astype(float)
    flat = values.reshape(len(values), -1)
    with np.errstate(all="ignore"):
        finite = np.isfinite(flat)
        counts = finite.sum(axis=1)
        sums = np.where(finite, flat, 0).sum(axis=1)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class _SweepLink:
    """Keeps a histogram's shaded range in step with a sweep widget's ``ranges`` and its box select setting them."""

    def __init__(self, widget: Any, plot: figure, column: str, shade: BoxAnnotation) -> None:
        self.widget = widget
        self.column = column
        self.shade = shade
        self.open = True
        plot.on_event(SelectionGeometry, self._on_select)
        plot.on_event(Reset, self._on_reset)
        reference = weakref.ref(self)

        def handler(change: dict[str, Any]) -> None:
            live = reference()
            if live is not None and live.open:
                live.show(change["new"])

        widget.observe(handler, names=["ranges"])
        self._stop_observing = weakref.finalize(self, _unobserve, weakref.ref(widget), handler, ["ranges"])
        self.show(widget.ranges)

    def show(self, ranges: dict[str, Any]) -> None:
        bounds = ranges.get(self.column)
        self.shade.visible = bounds is not None
        if bounds is not None:
            self.shade.left, self.shade.right = bounds[0], bounds[1]

    def _on_select(self, event: SelectionGeometry) -> None:
        geometry = event.geometry or {}
        if not self.open or not event.final or geometry.get("x0") is None or geometry.get("x1") is None:
            return
        low, high = sorted((float(geometry["x0"]), float(geometry["x1"])))
        self.widget.ranges = {**self.widget.ranges, self.column: [low, high]}

    def _on_reset(self, event: Reset) -> None:
        if self.open:
            self.widget.ranges = {k: v for k, v in self.widget.ranges.items() if k != self.column}

    def close(self) -> None:
        self.open = False
        self._stop_observing()


def _link_sweep_range(widget: Any, plot: figure, column: str, shade: BoxAnnotation) -> None:
    link = _SweepLink(widget, plot, column, shade)
    plot._mmviz_links = [*getattr(plot, "_mmviz_links", []), link]
