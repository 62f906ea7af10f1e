"""``mmviz.ComparisonWidget``: two inspectors side by side and the signed A − B map, linked.

The two panes are the Inspector's own views (token strip, image, layer scrubber, method switcher, layer × head
overview), each over its trace. They are linked in the browser: hovering or pinning a token in one focuses the
corresponding token in the other (answer tokens by :attr:`mmviz.evaluation.comparison.Comparison.pairs`, prompt
tokens by their text), hovering a patch focuses the patch over the same pixels in the other, and the layer scrubber
drives both (the same layer when the models have the same depth, the same relative depth otherwise). Between them
the A − B map of the shown method, layer and token pair is drawn on the shared image, and the most divergent token
pairs of that method and layer are listed (click one to pin it in both panes).

Example:
    >>> comparison = mmviz.compare(trace_a, trace_b)                       # doctest: +SKIP
    >>> view = mmviz.ComparisonWidget(comparison)                          # doctest: +SKIP
    >>> ipywidgets.VBox([view, mmviz.plots.widget(mmviz.plots.divergence(view))])   # doctest: +SKIP
    >>> view.to_html("comparison.html", plots=[mmviz.plots.divergence(comparison)])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from mmviz import selection, wire
from mmviz.errors import InputError
from mmviz.evaluation.comparison import Comparison, TokenPair, position_links
from mmviz.methods import CATALOGUE
from mmviz.records import Trace
from mmviz.selection import LayerChoice
from mmviz.widget import bundle, export, payloads
from mmviz.widget.browser_state import BrowserOwned, checked, whole
from mmviz.widget.payloads import MAP_DESCRIPTION, MAP_LABEL, indirect_note

HEADS_LIMIT = 16 * 2**20
"""Each pane carries every layer's per-head maps when they take at most this many bytes (there is no kernel to
fetch them from: the panes are drawn from what the comparison shipped)."""

BROWSER_OWNED = ("layer", "head", "pinned", "method")
"""The traits the browser may change (A's layer, head and pinned token, and the method both panes show)."""


class ComparisonWidget(BrowserOwned, anywidget.AnyWidget):
    """Two traces side by side with the signed A − B map on the shared image, linked (see the module docstring).

    Args:
        comparison: from :func:`mmviz.compare`.
        method: the method shown first (default: the first compared one).

    ``layer``, ``head`` and ``pinned`` are pane A's (B's follow in the browser); ``method`` is shown in both.

    Example:
        >>> view = mmviz.ComparisonWidget(mmviz.compare(a, b))           # doctest: +SKIP
        >>> view.layer = 2                           # both panes move (B by relative depth)   # doctest: +SKIP
    """

    _esm = bundle.esm()
    _css = bundle.css()

    BROWSER_OWNED = BROWSER_OWNED
    revision = traitlets.Int(0).tag(sync=True)
    kind = traitlets.Unicode("comparison").tag(sync=True)
    side_a = traitlets.Dict().tag(sync=True)
    side_b = traitlets.Dict().tag(sync=True)
    comparison_data = traitlets.Dict().tag(sync=True)
    layer = traitlets.Union([traitlets.Int(), traitlets.Unicode()], default_value=0).tag(sync=True)
    head = traitlets.Union([traitlets.Int(), traitlets.Unicode()], default_value="mean").tag(sync=True)
    pinned = traitlets.Int(-1).tag(sync=True)
    method = traitlets.Unicode("attention").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, comparison: Comparison, *, method: str | None = None) -> None:
        if not isinstance(comparison, Comparison):
            raise InputError(
                "ComparisonWidget takes an mmviz.Comparison (from mmviz.compare(a, b)), "
                f"not {type(comparison).__name__}"
            )
        for label, trace in (("A", comparison.a), ("B", comparison.b)):
            if trace.head_mean or len(trace.layers) != trace.num_layers:
                raise InputError(
                    f"trace {label} was captured with a partial plan; the panes show every layer and head, so trace "
                    f"with the default CapturePlan to compare it in the widget (mmviz.compare works on it as is)"
                )
        bundle.warn_if_missing()
        self._comparison = comparison
        super().__init__()
        chosen = method if method is not None else next(iter(comparison.methods))
        with self.hold_sync():
            self.side_a = _side(comparison.a, comparison)
            self.side_b = _side(comparison.b, comparison)
            self.comparison_data = comparison_payload(comparison)
            self.layer = comparison.a.num_layers - 1
            self.method = chosen
            self.revision += 1

    @property
    def comparison(self) -> Comparison:
        """The :class:`~mmviz.evaluation.comparison.Comparison` shown."""
        return self._comparison

    @property
    def trace(self) -> Trace:
        """Trace A (what ``layer``, ``head`` and ``pinned`` refer to; linked plots read it)."""
        return self._comparison.a

    @traitlets.validate("layer")
    def _check_layer(self, proposal: dict[str, Any]) -> LayerChoice:
        return checked(selection.layer, whole(proposal["value"]), self._comparison.a.num_layers)

    @traitlets.validate("head")
    def _check_head(self, proposal: dict[str, Any]) -> int | str:
        return checked(selection.head, whole(proposal["value"]), self._comparison.a.num_heads)

    @traitlets.validate("pinned")
    def _check_pinned(self, proposal: dict[str, Any]) -> int:
        value = whole(proposal["value"])
        if value == -1 and not isinstance(value, bool):
            return -1
        return checked(selection.index, value, len(self._comparison.a.tokens), "pinned", unit="position (or -1)")

    @traitlets.validate("method")
    def _check_method(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        names = set(self._comparison.methods) | {"attention"}
        if not isinstance(value, str) or value not in names:
            raise traitlets.TraitError(f"method must be one of the compared methods {sorted(names)}, got {value!r}")
        return value

    def to_html(self, path: str | Path | None = None, *, plots: Sequence[Any] = ()) -> str:
        """A standalone HTML page of this comparison (no server, no CDN); written to ``path`` when given.

        Args:
            plots: bokeh plots to show under the widget (e.g. ``[mmviz.plots.divergence(comparison)]``); BokehJS is
                embedded inline. Clicking a layer in a plot made by :func:`mmviz.plots.divergence` moves the page's
                panes to that layer.

        Example:
            >>> view.to_html("comparison.html", plots=[mmviz.plots.divergence(view)])   # doctest: +SKIP
        """
        a, b = self._comparison.a, self._comparison.b
        title = f"mmviz · {a.model_name} vs {b.model_name}"
        page = export.to_html(self, title, mount="mountComparisonStatic", plots=plots)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def __repr__(self) -> str:
        return f"<mmviz.ComparisonWidget of {self._comparison.a!r} vs {self._comparison.b!r}>"


def _side(trace: Trace, comparison: Comparison) -> dict[str, Any]:
    """One pane's state, in the Inspector's trait vocabulary (the browser builds an Inspector view over it)."""
    shown = {name: trace.maps[name] for name in comparison.methods if name in trace.maps and name != "attention"}
    methods = [
        {**entry, "available": False}
        for entry in payloads.method_catalogue(trace)
        if entry["name"] == "attention" or entry["name"] in shown
    ]
    per_layer = trace.num_heads * len(trace.query_positions) * len(trace.image_positions)
    heads = per_layer * (trace.num_layers + 1) <= HEADS_LIMIT
    layers: list[LayerChoice] = [selection.MEAN, *range(trace.num_layers)] if heads else []
    return {
        "revision": 1,
        "tokens": list(trace.tokens),
        "token_layout": payloads.layout_payload(trace),
        "images": [payloads.png_bytes(image) for image in trace.images],
        "attention_mean": payloads.attention_mean(trace),
        "head_stats": payloads.head_stats(trace),
        "meta": {
            "family": trace.family,
            "model_name": trace.model_name,
            "n_layers": trace.num_layers,
            "n_heads": trace.num_heads,
            "map_label": MAP_LABEL,
            "map_description": MAP_DESCRIPTION + indirect_note(trace.layout),
            "extras": {"heads": False, "lens": False, "projection": False},
        },
        "methods": methods,
        "maps": {name: payloads.map_payload(result, trace.layout) for name, result in shown.items()},
        "busy": "",
        "error": "",
        "prefetched": {f"heads:{layer}": payloads.heads_payload(trace, layer) for layer in layers},
    }


def comparison_payload(comparison: Comparison) -> dict[str, Any]:
    """The ``comparison`` trait: pairs, position links, the common grid and, per method, the A − B maps and the
    metrics (``js/src/protocol/comparison.ts`` reads it).

    Per method ``diff`` is float16 ``[S + 1, K, G]``: the A − B map of every paired layer slice (the last slice: the
    mean over layers) and pair on the grid, in units of a uniform map's share, 0 outside the shared cells;
    ``js``, ``spearman`` and ``iou_topk`` are float32 ``[S, K]`` (NaN: undefined).
    """
    a, b = comparison.a, comparison.b
    pairs = comparison.pairs
    methods = {}
    for name, result in comparison.methods.items():
        cells = float(result.shared.sum())
        diff = np.concatenate([result.pixels_a - result.pixels_b, (result.mean_a - result.mean_b)[None]]) * cells
        spec = CATALOGUE.get(name)
        source = a.maps.get(name)
        rows = source.rows if source is not None else (spec.rows if spec is not None else "targets")
        methods[name] = {
            "label": spec.label if spec is not None else (source.label if source is not None else name),
            "signed": bool(result.signed),
            "rows": rows,
            "layers_a": [int(v) for v in result.layers_a],
            "layers_b": [int(v) for v in result.layers_b],
            "diff": wire.encode(np.nan_to_num(diff), dtype="float16"),
            "js": _floats(result.js),
            "spearman": _floats(result.spearman),
            "iou_topk": _floats(result.iou_topk),
        }
    logprob_a = [float(a.answer_logprobs[p.position_a - a.answer_start]) for p in pairs]
    logprob_b = [float(b.answer_logprobs[p.position_b - b.answer_start]) for p in pairs]
    links_a = position_links(a, b, pairs)
    links_b = position_links(b, a, _swapped(comparison))
    return {
        "v": 1,
        "n_layers": [a.num_layers, b.num_layers],
        "answers": [a.answer.strip(), b.answer.strip()],
        "answer_changed": comparison.answer_changed,
        "delta_logprob": comparison.delta_logprob,
        "top_k": comparison.top_k,
        "pairs": {
            "position_a": np.array([p.position_a for p in pairs], "<i4").tobytes(),
            "position_b": np.array([p.position_b for p in pairs], "<i4").tobytes(),
            "same_text": np.array([p.same_text for p in pairs], np.uint8).tobytes(),
            "logprob_a": np.array(logprob_a, "<f4").tobytes(),
            "logprob_b": np.array(logprob_b, "<f4").tobytes(),
        },
        "links_a": links_a.astype("<i4").tobytes(),
        "links_b": links_b.astype("<i4").tobytes(),
        "grid": {
            "shapes": [[int(rows), int(cols)] for rows, cols in comparison.grid_shape],
            "shared": comparison.shared.astype(np.uint8).tobytes(),
        },
        "methods": methods,
    }


def _swapped(comparison: Comparison) -> list[TokenPair]:
    return [TokenPair(p.index, p.position_b, p.position_a, p.token_b, p.token_a, p.same_text) for p in comparison.pairs]


def _floats(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()
