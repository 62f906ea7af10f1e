"""``mmviz.Inspector``: the linked image / token / attention widget over a :class:`~mmviz.Trace`."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets
from PIL import Image

from mmviz.adapters.layout import VIEWS, TokenLayout
from mmviz.inputs import ImageLike
from mmviz.methods import CATALOGUE, Map
from mmviz.tracing import Trace, trace
from mmviz.widget import bundle, export, wire

MAX_DISPLAY_SIDE = 1024
"""Images are shipped downscaled to this long side; boxes stay in original pixels (the browser rescales)."""

MAP_LABEL = "raw attention"
MAP_DESCRIPTION = (
    "Softmax attention probability from the token's query row to each image token. It shows where a head "
    "reads, not what caused the answer."
)


class Inspector(anywidget.AnyWidget):
    """Linked views of a trace: hover a token to see where it looked, hover a patch to see who looked at it.

    Everything a hover or a layer/head change needs is shipped to the browser once, as quantised binary
    envelopes (``docs/widget-protocol.md``); the kernel is not involved while you explore.

    Example:
        >>> inspector = mmviz.inspect(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> inspector.layer = 3; inspector.head = -1      # select layer 3, mean over heads   # doctest: +SKIP
        >>> inspector.trace.answer                                                            # doctest: +SKIP
    """

    _esm = bundle.esm()
    _css = bundle.css()

    revision = traitlets.Int(0).tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    token_layout = traitlets.Dict().tag(sync=True)
    images = traitlets.List(traitlets.Bytes()).tag(sync=True)
    attention = traitlets.Dict().tag(sync=True)
    attention_mean = traitlets.Dict().tag(sync=True)
    meta = traitlets.Dict().tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(-1).tag(sync=True)
    pinned = traitlets.Int(-1).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    method = traitlets.Unicode("attention").tag(sync=True)
    methods = traitlets.List(traitlets.Dict()).tag(sync=True)
    maps = traitlets.Dict().tag(sync=True)
    busy = traitlets.Unicode("").tag(sync=True)

    def __init__(self, trace: Trace, *, layer: int | None = None, head: int = -1) -> None:
        if not isinstance(trace, Trace):
            raise TypeError(f"Inspector takes an mmviz.Trace (from mmviz.trace(...)), not {type(trace).__name__}")
        if trace.head_mean or len(trace.layers) != trace.num_layers:
            raise ValueError(
                "the Inspector shows every layer and head; trace with the default capture plan "
                "(CapturePlan(layers=None, head_mean=False)) to inspect it"
            )
        bundle.warn_if_missing()
        self._trace = trace
        super().__init__()
        with self.hold_sync():
            self._send_trace(trace)
            self.layer = trace.num_layers - 1 if layer is None else layer
            self.head = head
        self.on_msg(self._on_message)

    def compute(self, method: str) -> Map:
        """Compute ``method`` (a name in :data:`mmviz.methods.CATALOGUE`) for every answer token and show it.

        The widget's method switcher calls this for methods not computed yet; the result is cached in
        ``trace.maps`` and shipped once.

        Example:
            >>> inspector.compute("relevancy")                       # doctest: +SKIP
            <mmviz.Map relevancy: 3×576, non-negative>
        """
        if method not in CATALOGUE or method == "attention":
            names = sorted(set(CATALOGUE) - {"attention"})
            raise ValueError(f"unknown method {method!r}; choose from {names}")
        if method not in self._trace.maps:
            self.busy = method
            try:
                self._trace.maps[method] = CATALOGUE[method].compute(self._trace)
            finally:
                self.busy = ""
        with self.hold_sync():
            self.maps = {**self.maps, method: map_payload(self._trace.maps[method], self._trace.layout)}
            self.methods = method_catalogue(self._trace)
        return self._trace.maps[method]

    def _on_message(self, widget: Any, content: Any, buffers: Any) -> None:
        """Browser requests: ``{"type": "compute", "method": name, "request": id}``. Anything malformed is logged and
        answered with an error; the widget and the kernel keep working."""
        request = content.get("request") if isinstance(content, dict) else None
        try:
            if not isinstance(content, dict) or content.get("type") != "compute":
                raise ValueError(f"unknown message {str(content)[:200]!r}; expected {{'type': 'compute', ...}}")
            name = content.get("method")
            if not isinstance(name, str):
                raise ValueError("a compute request needs a method name (a string)")
            self.compute(name)
            self.send({"type": "computed", "method": name, "request": request, "ok": True})
        except Exception as error:  # reported to the browser, never raised into the comm
            self.log.error("mmviz: %s", error)
            method = content.get("method") if isinstance(content, dict) else None
            self.send({"type": "computed", "method": method, "request": request, "ok": False, "error": str(error)})

    @property
    def trace(self) -> Trace:
        """The :class:`~mmviz.Trace` this widget shows."""
        return self._trace

    @traitlets.validate("layer")
    def _check_layer(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if not 0 <= value < self._trace.num_layers:
            raise traitlets.TraitError(f"layer must be in 0…{self._trace.num_layers - 1}, got {value}")
        return value

    @traitlets.validate("head")
    def _check_head(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if not -1 <= value < self._trace.num_heads:
            raise traitlets.TraitError(f"head must be -1 (mean) or in 0…{self._trace.num_heads - 1}, got {value}")
        return value

    @traitlets.validate("method")
    def _check_method(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        names = set(CATALOGUE) | set(self._trace.maps)
        if value not in names:
            raise traitlets.TraitError(f"method must be one of {sorted(names)}, got {value!r}")
        return value

    @traitlets.validate("pinned")
    def _check_pinned(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if not -1 <= value < len(self._trace.tokens):
            raise traitlets.TraitError(f"pinned must be -1 or a position in 0…{len(self._trace.tokens) - 1}")
        return value

    def _send_trace(self, trace: Trace) -> None:
        attention = display_cells(trace.attention(), trace.layout)  # (L, H, Q, P), or (L, H, Q, C) soft cells
        self.tokens = list(trace.tokens)
        self.token_layout = layout_payload(trace)
        self.images = [png_bytes(image) for image in trace.images]
        self.attention = wire.encode(attention, scale_dims=3)
        self.attention_mean = wire.encode(attention.mean(axis=1), scale_dims=2)
        self.meta = {
            "family": trace.family,
            "model_name": trace.model_name,
            "n_layers": trace.num_layers,
            "n_heads": trace.num_heads,
            "map_label": MAP_LABEL,
            "map_description": MAP_DESCRIPTION + _indirect_note(trace.layout),
        }
        self.methods = method_catalogue(trace)
        self.maps = {name: map_payload(result, trace.layout) for name, result in trace.maps.items()}
        self.revision += 1

    def to_html(self, path: str | Path | None = None) -> str:
        """A standalone HTML page of this widget (no server, no CDN); written to ``path`` when given."""
        page = export.to_html(self, title=f"mmviz · {self._trace.model_name}")
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def __repr__(self) -> str:
        return f"<mmviz.Inspector of {self._trace!r}>"


def layout_payload(trace: Trace) -> dict[str, Any]:
    """The ``token_layout`` trait: the columns the browser needs, as little-endian binary.

    With soft cells (BLIP-2) the browser's columns are the cells: their boxes, grid, image and view ("query"); each
    cell's ``image_positions`` entry is the query it weighs most, and ``soft`` carries the query positions and the
    ``(Qn, C)`` weights that composed every shipped map.
    """
    layout = trace.layout
    columns = trace.image_positions
    payload = {
        "v": 1,
        "n_positions": len(layout),
        "kinds": layout.kinds.astype(np.uint8).tobytes(),
        "answer_start": int(trace.answer_start),
        "query_positions": trace.query_positions.astype("<i4").tobytes(),
        "image_positions": columns.astype("<i4").tobytes(),
        "boxes": layout.boxes[columns].astype("<f4").tobytes(),
        "grid": layout.grid[columns].astype("<i4").tobytes(),
        "image_index": layout.image_index[columns].astype("<i4").tobytes(),
        "view": layout.view[columns].astype(np.uint8).tobytes(),
        "view_names": list(VIEWS),
        "images": [geometry.to_dict() for geometry in layout.images],
    }
    soft = layout.soft
    if soft is not None:
        payload.update(
            image_positions=soft.positions[np.argmax(soft.weights, axis=0)].astype("<i4").tobytes(),
            boxes=soft.boxes.astype("<f4").tobytes(),
            grid=soft.grid.astype("<i4").tobytes(),
            image_index=soft.image_index.astype("<i4").tobytes(),
            view=np.full(len(soft), VIEWS.index("query"), np.uint8).tobytes(),
            soft={
                "positions": soft.positions.astype("<i4").tobytes(),
                "weights": soft.weights.astype("<f4").tobytes(),
                "label": soft.label,
            },
        )
    return payload


def display_cells(values: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Values over the image columns ``(…, P)`` → values over the cells the widget draws.

    The identity for direct layouts (one box per image token); ``values @ soft.weights`` ``(…, C)`` when the image
    reaches the language model only through query tokens (:class:`~mmviz.adapters.layout.SoftCells`): each cell
    gets the queries' values weighted by how much each query reads it.
    """
    if layout.soft is None:
        return values
    return (np.asarray(values, dtype=np.float32) @ layout.soft.weights).astype(np.float32)


def _indirect_note(layout: TokenLayout) -> str:
    """The sentence appended to a map's description when it is drawn through soft cells."""
    if layout.soft is None:
        return ""
    label = layout.soft.label
    return (
        f" {label[:1].upper()}{label[1:]}: each cell shows the query tokens' values weighted by how much each query "
        f"reads that cell."
    )


def method_catalogue(trace: Trace) -> list[dict[str, Any]]:
    """The ``methods`` trait: every catalogue method (computed? computable: needs the model?), then any other map
    the trace carries (e.g. a dual encoder's patch–text similarity)."""
    entries = [
        {**spec.describe(), "computed": name == "attention" or name in trace.maps, "available": trace.run is not None}
        for name, spec in CATALOGUE.items()
    ]
    for name, result in trace.maps.items():
        if name not in CATALOGUE:
            layered = result.layers is not None
            cost = "instant"
            entries.append(
                {
                    "name": name,
                    "label": result.label,
                    "meaning": result.meaning,
                    "signed": result.signed,
                    "layered": layered,
                    "cost": cost,
                    "computed": True,
                    "available": True,
                }
            )
    return entries


def map_payload(result: Map, layout: TokenLayout | None = None) -> dict[str, Any]:
    """One entry of the ``maps`` trait: values ``[L?, R, P]`` (uint8, one range per row), rows' positions, layers.

    Per-layer maps keep the slices of decoder layers ``0 … L−1`` (slice ℓ = after layer ℓ); others have one slice.
    Given the trace's ``layout``, maps over its soft-cell query columns are composed onto the cells
    (:func:`display_cells`, ``P`` becomes ``C``) and their meaning says so.
    """
    values = result.values
    meaning = result.meaning
    layers = None
    if result.layers is not None:
        keep = result.layers >= 0
        values, layers = values[keep], [int(layer) for layer in result.layers[keep]]
    if layout is not None and layout.soft is not None and np.array_equal(result.columns, layout.soft.positions):
        values = display_cells(np.nan_to_num(values), layout)
        meaning += _indirect_note(layout)
    return {
        "label": result.label,
        "meaning": meaning,
        "signed": bool(result.signed),
        "rows": result.rows,
        "values": wire.encode(np.nan_to_num(values), scale_dims=values.ndim - 1),
        "positions": np.asarray(result.positions).astype("<i4").tobytes(),
        "layers": layers,
    }


def png_bytes(image: Image.Image) -> bytes:
    """PNG of ``image``, downscaled to :data:`MAX_DISPLAY_SIDE` on its long side if larger."""
    if max(image.size) > MAX_DISPLAY_SIDE:
        image = image.copy()
        image.thumbnail((MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def inspect(
    model: torch.nn.Module,
    processor: Any,
    image: ImageLike | Sequence[ImageLike],
    prompt: str,
    *,
    answer: str | Sequence[int] | None = None,
    max_new_tokens: int = 32,
    methods: Sequence[str] = (),
) -> Inspector:
    """Trace ``model`` on ``image`` and ``prompt`` (see :func:`mmviz.trace`) and return an :class:`Inspector`.

    ``methods`` are computed right away (e.g. ``("relevancy",)``); the widget's method switcher computes the others
    on request.

    Example:
        >>> model, processor = mmviz.zoo.tiny_llava()
        >>> mmviz.inspect(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
    """
    return Inspector(
        trace(model, processor, image, prompt, answer=answer, max_new_tokens=max_new_tokens, methods=methods)
    )
