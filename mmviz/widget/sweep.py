"""``mmviz.SweepWidget``: the examples of a sweep as a sortable, filterable table; a click opens one in an inspector.

One row per example: its thumbnail, id, status (a failed example is marked and shows its error), answer, its
text fields (e.g. ``asks_for``) and one column per statistic. A scalar statistic (``answer_logprob``) is its value;
an **array statistic is shown as its mean** over its entries (``image_share``: the mean over layers,
``image_share_heads``: over layers and heads), next to a sparkline of its per-layer profile (for a layer × head
statistic: the mean over heads per layer). Sorting and filtering act on the number shown.

- **Sort**: click a header (again: the other direction); examples without a value are always last.
- **Filter**: the text box keeps rows whose id, status, answer, error or text fields contain the text (case
  ignored); each numeric column has a min / max range (a row with no value in a ranged column is hidden). A box
  select in a linked :func:`mmviz.plots.sweep_histogram` sets that column's range (through the ``ranges`` trait).
- **Open**: clicking a row asks the kernel for that example's inspector: the kept trace (``keep=`` in
  :func:`mmviz.sweep`) or, when the widget has ``model=``, ``processor=`` and ``examples=``, a fresh trace of the
  example. The inspector is drawn below the table from what the kernel shipped (like an exported page: every map
  the trace carries, the per-head maps up to a size limit); ``widget.inspector`` is the live
  :class:`~mmviz.Inspector`, to display on its own for computing more methods. When neither a kept trace nor the
  model is there, the widget says so.

Example:
    >>> result = mmviz.sweep(model, processor, rows, stats=["image_share", "answer_logprob"], keep="all", out="runs/a")
    ... # doctest: +SKIP
    >>> view = mmviz.SweepWidget(result)                                                  # doctest: +SKIP
    >>> ipywidgets.VBox([view, mmviz.plots.widget(mmviz.plots.sweep_histogram(view, "answer_logprob"))])
    ... # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import pyarrow as pa
import traitlets
from ipywidgets.widgets.widget import _remove_buffers

from mmviz.errors import InputError
from mmviz.sweeps import Example, SweepResult, examples_from
from mmviz.tracing import trace as run_trace
from mmviz.widget import bundle, export
from mmviz.widget.browser_state import BrowserOwned, echo, printable
from mmviz.widget.inspector import Inspector

log = logging.getLogger("mmviz")

BROWSER_OWNED = ("sort", "text_filter", "ranges")
"""The traits the browser may change: the sort order, the text filter and the numeric ranges."""

FIXED_COLUMNS = ("id", "status", "error", "seconds", "answer", "thumbnail")
"""Columns every sweep table has; the others are the example's fields and the statistics."""

EXPORT_TRACES_LIMIT = 32 * 2**20
"""``to_html()`` embeds the inspectors of kept traces while they take at most this many bytes in all."""


class SweepWidget(BrowserOwned, anywidget.AnyWidget):
    """The examples of a sweep in a table; clicking one opens it in an inspector (see the module docstring).

    Args:
        result: from :func:`mmviz.sweep` or :func:`mmviz.sweeps.load`.
        examples: the sweep's examples (what :func:`mmviz.sweep` took), to re-trace an example whose trace was not
            kept; with ``model`` and ``processor``.
        model, processor: the sweep's model, to re-trace.

    ``sort`` (``{"column", "descending"}``), ``text_filter`` and ``ranges`` (``{column: [low, high]}``, either bound
    may be None) follow the browser; ``selected`` is the opened example's id.

    Example:
        >>> view = mmviz.SweepWidget(result)                                  # doctest: +SKIP
        >>> view.ranges = {"answer_logprob": [None, -2.0]}                     # doctest: +SKIP
        >>> view.visible_ids()                                                 # doctest: +SKIP
        ['scene-3', 'scene-5']
        >>> view.open_example("scene-3")                                               # doctest: +SKIP
        <mmviz.Inspector of ...>
    """

    _esm = bundle.esm()
    _css = bundle.css()

    BROWSER_OWNED = BROWSER_OWNED
    kind = traitlets.Unicode("sweep").tag(sync=True)
    revision = traitlets.Int(0).tag(sync=True)
    table_data = traitlets.Dict().tag(sync=True)
    sort = traitlets.Dict({"column": "", "descending": False}).tag(sync=True)
    text_filter = traitlets.Unicode("").tag(sync=True)
    ranges = traitlets.Dict().tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        result: SweepResult,
        *,
        examples: Iterable[Any] | None = None,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        if not isinstance(result, SweepResult):
            raise InputError(
                f"SweepWidget takes an mmviz.sweeps.SweepResult (from mmviz.sweep or mmviz.sweeps.load), "
                f"not {type(result).__name__}"
            )
        if (model is None) != (processor is None):
            raise InputError("pass both model= and processor= (the sweep's) to re-trace examples, or neither")
        bundle.warn_if_missing()
        self._result = result
        self._examples: dict[str, Example] = {e.id: e for e in examples_from(examples)} if examples is not None else {}
        self._model, self._processor = model, processor
        self._inspector: Inspector | None = None
        self._columns = sweep_columns(result)
        super().__init__()
        with self.hold_sync():
            self.table_data = sweep_payload(result, self._columns)
            self.revision += 1
        self.on_msg(self._on_message)

    @property
    def result(self) -> SweepResult:
        """The :class:`~mmviz.sweeps.SweepResult` shown."""
        return self._result

    @property
    def inspector(self) -> Inspector | None:
        """The :class:`~mmviz.Inspector` of the opened example (None before one is opened)."""
        return self._inspector

    @property
    def numeric_columns(self) -> list[str]:
        """The columns with a number per row (scalar statistics, numeric fields, array statistics' means)."""
        return [c["name"] for c in self._columns if c["kind"] == "number"]

    def values(self, column: str) -> np.ndarray:
        """The number shown in ``column`` for every example (an array statistic's mean; NaN: none).

        Example:
            >>> view.values("image_share").shape                               # doctest: +SKIP
            (7,)
        """
        for entry in self._columns:
            if entry["name"] == column and entry["kind"] == "number":
                return entry["values"]
        raise InputError(f"the sweep widget has no numeric column {column!r}; it has {self.numeric_columns}")

    def can_open(self, example_id: str) -> str:
        """Why ``example_id`` cannot be opened, or ``""`` when it can (a kept trace, or the model to re-trace)."""
        if example_id not in self._result.ids:
            return f"the sweep has no example {example_id!r}"
        if self._result.has_trace(example_id):
            return ""
        if self._model is not None and example_id in self._examples:
            return ""
        if self._model is not None:
            return (
                f"no trace was kept for {example_id!r} and the examples given to SweepWidget(examples=...) do not "
                f"include it"
            )
        return (
            f"no trace was kept for {example_id!r} (sweep with keep='all' or a predicate), and this SweepWidget has "
            f"no model to re-trace it: pass examples=, model= and processor="
        )

    def open_example(self, example_id: str) -> Inspector:
        """Open ``example_id`` in an :class:`~mmviz.Inspector` (its kept trace, or traced again with the model); the
        widget shows it below the table.

        Raises:
            InputError: unknown example, or neither a kept trace nor the model (the message says which).
        """
        if not isinstance(example_id, str):
            raise InputError(f"an example id is a string, not {type(example_id).__name__}")
        reason = self.can_open(example_id)
        if reason:
            raise InputError(reason)
        if self._result.has_trace(example_id):
            trace = self._result.trace(example_id)
        else:
            example = self._examples[example_id]
            answers = dict(zip(self._result.ids, self._result.table.column("answer").to_pylist(), strict=True))
            answer = example.answer if example.answer is not None else answers.get(example_id)
            trace = run_trace(self._model, self._processor, example.image, example.prompt, answer=answer)
        try:
            self._inspector = Inspector(trace)
        except ValueError as error:
            raise InputError(f"example {example_id!r}: {error}") from None
        self.selected = example_id
        return self._inspector

    def visible_ids(self) -> list[str]:
        """The ids of the rows the table shows, in its order (the same filter and sort as the browser's)."""
        errors = self.table_data["errors"]
        rows = visible_rows(self._columns, self.text_filter, self.ranges, self.sort, fixed_texts=[errors])
        return [self._result.ids[i] for i in rows]

    def _on_message(self, widget: Any, content: Any, buffers: Any) -> None:
        """Browser requests ``{"type": "open", "id", "request"}``, answered by one ``{"type": "opened", "request",
        "id", "ok", "payload"?, "buffer_paths"?, "error"?}`` each (the inspector's state, its bytes as buffers)."""
        fields = content if isinstance(content, dict) else {}
        request = fields.get("request")
        reply: dict[str, Any] = {
            "type": "opened" if fields.get("type") == "open" else "error",
            "request": echo(request),  # only what the reply can carry back (no lone surrogates, no nesting)
            "id": echo(fields.get("id")),
        }
        try:
            if fields.get("type") != "open":
                raise InputError(f"unknown message of type {fields.get('type')!r}; expected an 'open' request")
            inspector = self.open_example(fields.get("id"))  # type: ignore[arg-type]  (checked in open)
            stripped, paths, data = _remove_buffers(inspector_state(inspector))
            self.send({**reply, "ok": True, "payload": stripped, "buffer_paths": paths}, buffers=data or None)
        except Exception as error:  # answered to the browser, never raised into the comm
            log.error("mmviz: %s", error)
            self.send({**reply, "ok": False, "error": printable(str(error))})
        except BaseException:
            self.send({**reply, "ok": False, "error": "interrupted: the kernel was stopped"})
            raise

    @traitlets.validate("sort")
    def _check_sort(self, proposal: dict[str, Any]) -> dict[str, Any]:
        value = proposal["value"]
        if not isinstance(value, dict) or set(value) != {"column", "descending"}:
            raise traitlets.TraitError(f"sort must be {{'column': name, 'descending': bool}}, not {value!r}")
        column, descending = value["column"], value["descending"]
        sortable = {c["name"] for c in self._columns}
        if not isinstance(column, str) or (column != "" and column not in sortable):
            raise traitlets.TraitError(f"sort column must be '' (table order) or one of {sorted(sortable)}")
        if not isinstance(descending, bool):
            raise traitlets.TraitError(f"sort descending must be true or false, not {descending!r}")
        return {"column": column, "descending": descending}

    @traitlets.validate("text_filter")
    def _check_text_filter(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        if not isinstance(value, str) or len(value) > 1000:
            raise traitlets.TraitError("the text filter must be a string of at most 1000 characters")
        return value

    @traitlets.validate("ranges")
    def _check_ranges(self, proposal: dict[str, Any]) -> dict[str, list[float | None]]:
        value = proposal["value"]
        if not isinstance(value, dict):
            raise traitlets.TraitError(f"ranges must map numeric columns to [low, high], not {type(value).__name__}")
        numeric = set(self.numeric_columns)
        checked: dict[str, list[float | None]] = {}
        for column, bounds in value.items():
            if column not in numeric:
                raise traitlets.TraitError(f"ranges: {column!r} is not a numeric column ({sorted(numeric)})")
            if not isinstance(bounds, list | tuple) or len(bounds) != 2:
                raise traitlets.TraitError(f"ranges[{column!r}] must be [low, high] (None: open), not {bounds!r}")
            pair = [_bound(column, b) for b in bounds]
            if pair[0] is not None and pair[1] is not None and pair[0] > pair[1]:
                raise traitlets.TraitError(f"ranges[{column!r}]: low {pair[0]} is above high {pair[1]}")
            checked[column] = pair
        return checked

    def to_html(self, path: str | Path | None = None, *, plots: Sequence[Any] = (), traces: str = "kept") -> str:
        """A standalone HTML page of this widget (no server, no CDN); written to ``path`` when given.

        Args:
            plots: bokeh plots shown under the table (e.g. ``[mmviz.plots.sweep_histogram(result, "answer_logprob")]``);
                a box select in a :func:`mmviz.plots.sweep_histogram` filters the page's rows.
            traces: ``"kept"``: embed the inspectors of the kept traces (up to :data:`EXPORT_TRACES_LIMIT` bytes;
                a row left out says so when clicked), ``"none"``: embed none.

        Example:
            >>> view.to_html("sweep.html", plots=[mmviz.plots.sweep_histogram(view, "seconds")])  # doctest: +SKIP
        """
        if traces not in ("kept", "none"):
            raise InputError(f"traces must be 'kept' or 'none', not {traces!r}")
        inspectors: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        used = 0
        for example_id in self._result.ids if traces == "kept" else []:
            if not self._result.has_trace(example_id):
                continue
            if used > EXPORT_TRACES_LIMIT:
                skipped[example_id] = "its trace was left out of this page (the page's size limit)"
                continue
            inspector = Inspector(self._result.trace(example_id))
            payload = export.widget_payload(inspector, _prefetched(inspector))
            used += sum(len(b["data"]) for b in payload["buffers"])
            inspectors[example_id] = payload
        for example_id in self._result.ids:
            if example_id not in inspectors and example_id not in skipped:
                skipped[example_id] = (self.can_open(example_id) or "its trace was not embedded in this page").replace(
                    "this SweepWidget has no model", "an exported page has no kernel"
                )
        page = export.to_html(
            self,
            f"mmviz · sweep of {len(self._result)} examples",
            mount="mountSweepStatic",
            plots=plots,
            extra={"inspectors": inspectors, "unavailable": skipped},
        )
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def __repr__(self) -> str:
        return f"<mmviz.SweepWidget of {len(self._result)} examples in {self._result.directory}>"


def inspector_state(inspector: Inspector) -> dict[str, Any]:
    """What the sweep widget's pane draws: the Inspector's synced state with its answers to fetch requests (the
    per-head maps of every layer up to the Inspector's export limit, the lens and projection when available)."""
    skip = {"_esm", "_css", "_anywidget_id", "_dom_classes", "layout", "tabbable", "tooltip"}
    state = {key: value for key, value in inspector.get_state().items() if key not in skip and not key.startswith("_")}
    state["prefetched"] = _prefetched(inspector)
    return state


def _prefetched(inspector: Inspector) -> dict[str, Any]:
    """The Inspector's answers to the browser's fetch requests, as its own ``to_html(heads="auto")`` embeds them."""
    return inspector._prefetched(inspector._exported_heads("auto"))


_AXES = {"knockout_delta": "layer windows", "lens_rank": "depths"}
"""What an array statistic's entries are, where they are not layers (``(L,)``) or layers × heads (``(L, H)``)."""


def sweep_columns(result: SweepResult) -> list[dict[str, Any]]:
    """The table's columns, in order: ``{"name", "kind": "text" | "number", "label", "values", "series"?}``.

    ``id``, ``status`` and ``answer`` first, then the example's fields and the statistics, ``seconds`` last. A number
    column's ``values`` is float64 ``(examples,)`` (NaN: none): a scalar's value, or an array statistic's mean over
    its entries (with ``series``: its profile ``(examples, L)``, the mean over any further axis, e.g. heads).

    Example:
        >>> [c["name"] for c in sweep_columns(result)][:3]                      # doctest: +SKIP
        ['id', 'status', 'answer']
    """
    table = result.table
    n = table.num_rows
    columns: list[dict[str, Any]] = [
        {"name": name, "kind": "text", "label": name, "values": _texts(table, name)}
        for name in ("id", "status", "answer")
    ]
    for field in table.schema:
        name, kind = field.name, field.type
        if name in FIXED_COLUMNS:
            continue
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind):
            columns.append({"name": name, "kind": "text", "label": name, "values": _texts(table, name)})
        elif pa.types.is_floating(kind) or pa.types.is_integer(kind):
            columns.append({"name": name, "kind": "number", "label": name, "values": _numbers(table, name)})
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            try:
                array = result.column(name)
            except (ValueError, TypeError):  # ragged: shown nowhere rather than wrongly
                continue
            if array.ndim < 2 or array.shape[1] == 0 or not np.issubdtype(array.dtype, np.number):
                continue
            with warnings.catch_warnings():  # a failed example's row is all NaN: its mean is NaN, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(array.reshape(n, -1), axis=1)
                profile = np.nanmean(array.reshape(*array.shape[:2], -1), axis=2)
            over = _AXES.get(name, "layers" if array.ndim == 2 else "layers × heads" if array.ndim == 3 else "entries")
            columns.append(
                {
                    "name": name,
                    "kind": "number",
                    "label": f"{name} (mean over {over})",
                    "values": mean,
                    "series": profile.astype(np.float32),
                }
            )
    if "seconds" in table.column_names:
        columns.append({"name": "seconds", "kind": "number", "label": "seconds", "values": _numbers(table, "seconds")})
    return columns


def sweep_payload(result: SweepResult, columns: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``table_data`` trait (``js/src/protocol/sweep.ts`` reads it): per row its id, error (``""`` when it did
    not fail), thumbnail (PNG bytes, ``b""`` when none) and whether its trace was kept, and every column of
    :func:`sweep_columns` (numbers as float32 bytes, NaN = none; a series as float32 ``[examples, length]``)."""
    table = result.table
    n = table.num_rows
    shown = sweep_columns(result) if columns is None else columns
    thumbnails = table.column("thumbnail").to_pylist() if "thumbnail" in table.column_names else [None] * n
    out_columns = []
    for c in shown:
        entry: dict[str, Any] = {"name": c["name"], "kind": c["kind"], "label": c["label"]}
        if c["kind"] == "number":
            entry["values"] = np.asarray(c["values"], "<f4").tobytes()
            if "series" in c:
                series = np.asarray(c["series"], "<f4")
                entry["series"] = {"length": int(series.shape[1]), "data": series.tobytes()}
        else:
            entry["values"] = list(c["values"])
        out_columns.append(entry)
    statuses = _texts(table, "status")
    errors = _texts(table, "error")
    return {
        "v": 1,
        "n": n,
        "ids": result.ids,
        "errors": [error if status == "error" else "" for status, error in zip(statuses, errors, strict=True)],
        "thumbnails": [bytes(t) if t else b"" for t in thumbnails],
        "kept": [result.has_trace(i) for i in result.ids],
        "columns": out_columns,
    }


def _texts(table: pa.Table, name: str) -> list[str]:
    if name not in table.column_names:
        return [""] * table.num_rows
    return ["" if v is None else str(v) for v in table.column(name).to_pylist()]


def _numbers(table: pa.Table, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in table.column(name).to_pylist()], dtype=float)


def visible_rows(
    columns: list[dict[str, Any]],
    text_filter: str,
    ranges: dict[str, Sequence[float | None]],
    sort: dict[str, Any],
    *,
    fixed_texts: Sequence[Sequence[str]] = (),
) -> list[int]:
    """The rows a filter keeps, in the sort's order (what ``js/src/sweep-table.ts`` ``visibleRows`` does).

    A row is kept when every ranged column's value lies in ``[low, high]`` (NaN never does) and, for a non-empty
    ``text_filter``, one of its text cells (or ``fixed_texts``: the errors) contains it (case ignored). Sorting is
    stable; NaN sorts last either way.
    """
    by_name = {c["name"]: c for c in columns}
    n = len(columns[0]["values"]) if columns else 0
    needle = text_filter.strip().lower()
    kept: list[int] = []
    for row in range(n):
        ok = True
        for name, (low, high) in ranges.items():
            value = float(by_name[name]["values"][row])
            if math.isnan(value) or (low is not None and value < low) or (high is not None and value > high):
                ok = False
                break
        if ok and needle:
            cells = [c["values"][row] for c in columns if c["kind"] == "text"] + [t[row] for t in fixed_texts]
            ok = any(needle in str(cell).lower() for cell in cells)
        if ok:
            kept.append(row)
    column = sort.get("column", "")
    if column and column in by_name:
        values = by_name[column]["values"]
        if by_name[column]["kind"] == "number":
            present = [r for r in kept if not math.isnan(float(values[r]))]
            missing = [r for r in kept if math.isnan(float(values[r]))]
            present.sort(key=lambda r: float(values[r]), reverse=bool(sort.get("descending")))
            kept = present + missing
        else:
            kept.sort(key=lambda r: str(values[r]), reverse=bool(sort.get("descending")))
    return kept


def _bound(column: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise traitlets.TraitError(f"ranges[{column!r}]: a bound is a finite number or None, not {value!r}")
    return float(value)
