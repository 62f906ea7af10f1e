"""Per-example statistics of a sweep: one function of a :class:`~mmviz.Trace` each, in one registry.

A statistic returns named columns: numbers, or small arrays of a fixed shape for a given model (one value per
layer, per layer and head, per layer window). The sweep table gets one column per returned name. Register your
own with :func:`statistic`; the built-ins below are what papers on VLM internals report over data sets.

Example:
    >>> @statistic("answer_length", description="number of answer tokens")
    ... def answer_length(trace, example):
    ...     return {"answer_length": len(trace.tokens) - trace.answer_start}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mmviz.errors import InputError
from mmviz.evaluation.faithfulness import pointing_game
from mmviz.methods import image_share, knockout, logit_lens
from mmviz.records import Trace

Columns = dict[str, Any]
"""Column name → a number, a bool, a string or a NumPy array (fixed shape across the examples of one model)."""


@dataclass(frozen=True)
class Example:
    """One example of a sweep: an image and a prompt, optionally the answer to analyse and grounding targets.

    Attributes:
        id: a stable identifier (the table's key; resuming skips ids already in the table).
        image: a PIL image, an ``H×W×3`` uint8 array or a path.
        prompt: the question.
        answer: the answer to analyse (None: the model generates it).
        box: ``(x0, y0, x1, y1)`` in the image's pixels, the object the answer is about (pointing game).
        mask: a boolean ``H×W`` mask of that object (instead of, or with, ``box``).
        fields: the example's other scalar fields (question type, template...): copied into the table.
    """

    id: str
    image: Any
    prompt: str
    answer: str | None = None
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def object_mask(self, width: int, height: int) -> np.ndarray | None:
        """The object's mask on the original image (from ``mask``, or the ``box`` rasterised); None without one."""
        if self.mask is not None:
            mask = np.asarray(self.mask, dtype=bool)
            if mask.shape != (height, width):
                raise InputError(f"example {self.id}: mask is {mask.shape}, the image is {(height, width)}")
            return mask
        if self.box is None:
            return None
        x0, y0, x1, y1 = (float(v) for v in self.box)
        ys, xs = np.mgrid[0:height, 0:width]
        return (xs + 0.5 >= x0) & (xs + 0.5 <= x1) & (ys + 0.5 >= y0) & (ys + 0.5 <= y1)


Function = Callable[..., Columns]


@dataclass(frozen=True)
class Statistic:
    """A registered statistic: ``function(trace, example, **settings) -> columns``."""

    name: str
    function: Function
    description: str
    needs_model: bool = False
    needs_object: bool = False


STATISTICS: dict[str, Statistic] = {}


def statistic(
    name: str, *, description: str, needs_model: bool = False, needs_object: bool = False
) -> Callable[[Function], Function]:
    """Register ``function(trace, example, **settings) -> {column: value}`` under ``name``.

    ``needs_model``: it runs the model again (knockout); ``needs_object``: it needs the example's box or mask.
    """

    def register(function: Function) -> Function:
        if name in STATISTICS and STATISTICS[name].function is not function:
            raise ValueError(f"a statistic named {name!r} is registered already")
        STATISTICS[name] = Statistic(name, function, description, needs_model, needs_object)
        return function

    return register


def resolve(stats: Any) -> list[tuple[Statistic, dict[str, Any]]]:
    """``["image_share", ("knockout", {"window": 4})]`` → registered statistics with their settings."""
    if isinstance(stats, str) or not isinstance(stats, list | tuple):
        raise InputError(f"stats must be a list of statistic names (e.g. ['image_share']), not {stats!r}")
    resolved = []
    for entry in stats:
        name, settings = (entry, {}) if isinstance(entry, str) else (entry if isinstance(entry, tuple) else (None, {}))
        if not isinstance(name, str) or name not in STATISTICS or not isinstance(settings, Mapping):
            raise InputError(
                f"unknown statistic {entry!r}; choose from {sorted(STATISTICS)} (or ('name', {{settings}}))"
            )
        resolved.append((STATISTICS[name], dict(settings)))
    return resolved


# -- the built-ins ---------------------------------------------------------------------------------------------
@statistic("image_share", description="attention mass the answer rows put on image tokens: per layer, per head")
def _image_share(trace: Trace, example: Example) -> Columns:
    share = image_share(trace, rows="answer")
    return {"image_share": share.groups["image"], "image_share_heads": share.share}


@statistic("head_entropy", description="attention entropy of the answer rows per layer and head (nats)")
def _head_entropy(trace: Trace, example: Example) -> Columns:
    return {"head_entropy": image_share(trace, rows="answer").entropy}


@statistic("sinks", description="per layer: the position the answer rows attend to most, its mass, and position 0's")
def _sinks(trace: Trace, example: Example) -> Columns:
    rows = np.flatnonzero(trace.query_positions >= trace.answer_start - 1)
    layers = range(len(trace.layers))  # one layer at a time (a loaded trace reads it lazily)
    received = np.stack([np.asarray(trace.attention_rows[i])[:, rows].mean(axis=(0, 1)) for i in layers])
    return {
        "sink_position": received.argmax(axis=-1).astype(np.int64),
        "sink_mass": received.max(axis=-1),
        "first_token_mass": received[:, 0],
    }


@statistic("answer_logprob", description="log p of the answer (sum and mean over its tokens)")
def _answer_logprob(trace: Trace, example: Example) -> Columns:
    logprobs = np.asarray(trace.answer_logprobs, np.float64)
    return {
        "answer_logprob": float(logprobs.sum()),
        "answer_logprob_mean": float(logprobs.mean()) if len(logprobs) else float("nan"),
        "answer_tokens": len(logprobs),
    }


@statistic("lens_rank", description="logit-lens rank of the first answer token at every depth (0 = top)")
def _lens_rank(trace: Trace, example: Example, k: int = 5) -> Columns:
    lens = logit_lens(trace, k=k)
    return {"lens_rank": lens.answer_ranks[:, 0].astype(np.int64), "lens_prob": lens.answer_probs[:, 0]}


@statistic(
    "pointing_game",
    description="per layer: does the attention maximum of the first answer token fall on the object; the share of "
    "its attention inside the object (energy)",
    needs_object=True,
)
def _pointing_game(trace: Trace, example: Example, method: str = "attention") -> Columns:
    image = trace.images[0]
    mask = example.object_mask(image.width, image.height)
    if mask is None:
        raise InputError(f"example {example.id} has no box or mask: pointing_game needs the object")
    result = trace.compute(method)
    position = trace.answer_start if method != "attention" else trace.answer_start - 1
    columns = trace.image_positions
    inside = _box_inside(trace, columns, mask)
    slices = range(len(result.layers)) if result.layers is not None else [None]
    hits, energy = [], []
    for layer in slices:
        values = result.row(position, None if layer is None else int(result.layers[layer]))
        hits.append(pointing_game(values, trace.layout, mask))
        positive = np.clip(values, 0, None)
        energy.append(float(positive[inside].sum() / max(positive.sum(), 1e-12)))
    return {"pointing_game": np.array(hits), "energy_in_box": np.array(energy, np.float32)}


def _box_inside(trace: Trace, columns: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which image columns' boxes hold a pixel of ``mask``."""
    inside = np.zeros(len(columns), bool)
    for index, (x0, y0, x1, y1) in enumerate(trace.layout.column_table.boxes[columns]):  # positions, or keys
        rows, cols = slice(int(np.floor(y0)), int(np.ceil(y1))), slice(int(np.floor(x0)), int(np.ceil(x1)))
        inside[index] = bool(mask[rows, cols].any())
    return inside


@statistic(
    "knockout",
    description="Δ log p of the answer when the answer rows cannot attend to the image in a window of layers",
    needs_model=True,
)
def _knockout(trace: Trace, example: Example, window: int = 0) -> Columns:
    size = window or max(1, trace.num_layers // 4)
    starts = list(range(0, trace.num_layers, size))
    deltas = [float(knockout(trace, layers=range(start, min(start + size, trace.num_layers))).delta.sum())
              for start in starts]  # fmt: skip
    return {"knockout_delta": np.array(deltas, np.float32), "knockout_window_start": np.array(starts, np.int64)}


def thumbnail(image: Image.Image, side: int = 64) -> bytes:
    """A small PNG of ``image`` for the sweep table."""
    import io

    small = image.convert("RGB").copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return buffer.getvalue()
