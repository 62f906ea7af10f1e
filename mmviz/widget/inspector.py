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

from mmviz.inputs import ImageLike
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

    @traitlets.validate("pinned")
    def _check_pinned(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if not -1 <= value < len(self._trace.tokens):
            raise traitlets.TraitError(f"pinned must be -1 or a position in 0…{len(self._trace.tokens) - 1}")
        return value

    def _send_trace(self, trace: Trace) -> None:
        attention = trace.attention()  # (L, H, Q, P)
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
            "map_description": MAP_DESCRIPTION,
        }
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
    """The ``token_layout`` trait: the columns the browser needs, as little-endian binary."""
    layout = trace.layout
    columns = trace.image_positions
    return {
        "v": 1,
        "n_positions": len(layout),
        "kinds": layout.kinds.astype(np.uint8).tobytes(),
        "answer_start": int(trace.answer_start),
        "query_positions": trace.query_positions.astype("<i4").tobytes(),
        "image_positions": columns.astype("<i4").tobytes(),
        "boxes": layout.boxes[columns].astype("<f4").tobytes(),
        "grid": layout.grid[columns].astype("<i4").tobytes(),
        "image_index": layout.image_index[columns].astype("<i4").tobytes(),
        "images": [geometry.to_dict() for geometry in layout.images],
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
) -> Inspector:
    """Trace ``model`` on ``image`` and ``prompt`` (see :func:`mmviz.trace`) and return an :class:`Inspector`.

    Example:
        >>> model, processor = mmviz.zoo.tiny_llava()
        >>> mmviz.inspect(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
    """
    return Inspector(trace(model, processor, image, prompt, answer=answer, max_new_tokens=max_new_tokens))
