"""Compare two traces: the same image with two prompts, two images with one prompt, or two models (of any family)
on one image and prompt.

Maps are compared on the ORIGINAL image's pixels, not on token grids, so a LLaVA trace (24×24 tokens) and a
Qwen2-VL trace (a grid the processor chose) line up: each map row is painted onto a common grid of the image
(its longer side :data:`GRID_SIDE` px; every cell gets the area-weighted mean of the tokens whose boxes overlap
it), and only the cells both traces reach are compared. Answer tokens are paired by their text. For every
(method, layer, answer-token pair) the comparison reports

* ``js``: the Jensen–Shannon divergence (base 2, so 0 … 1) of the two maps, each normalised to sum to 1 over the
  shared cells;
* ``spearman``: the Spearman rank correlation of the two maps over the shared cells (average ranks for ties);
* ``iou_topk``: the intersection over union of the two maps' top-``top_k`` cells;
* ``logprob_a``, ``logprob_b``, ``delta_logprob`` (A − B): the log-probability of each paired answer token,

and whether the answer changed.

Choices, stated once:

* **Views.** An image seen through several views (LLaVA-NeXT's base view and high-res crops, Idefics3's tiles and
  global image) is compared on ONE view: the one with the most tokens (the finest; the widget's default view).
  Views are never averaged.
* **Two different images** line up by relative position: cell (i, j) of the grid is the same fraction of the
  width and height in both images; the grid is shaped after A's image.
* **Signed maps** (gradient × input) enter the divergence, the top-k overlap and the A − B map by their
  magnitude (how much a pixel matters, whichever way); Spearman uses the signed values.
* **Layers.** Per-layer maps are paired by relative depth ``layer / (L − 1)`` (the identity when both models have
  the same number of layers); the table's ``layer`` is A's layer and ``layer_b`` the one of B it is paired with.
* **Top-k ties.** A map's top set holds every shared cell whose value is at least the value of its
  ``ceil(top_k · n)``-th largest cell, so tied cells are all in or all out.
* **Undefined values** are NaN: a map that is zero on every shared cell has no distribution (``js``), a constant
  map no ranks (``spearman``); an answer token without a partner in the other answer is listed in
  :attr:`Comparison.unpaired`, not in the table.

Example:
    >>> a = mmviz.trace(model, processor, scene.image, "What color is the circle?")            # doctest: +SKIP
    >>> b = mmviz.trace(model, processor, scene.image, "What color is the square?")            # doctest: +SKIP
    >>> comparison = mmviz.compare(a, b)                                                       # doctest: +SKIP
    >>> comparison.most_divergent("attention", n=1)[0]["js"]                                   # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmviz.errors import InputError
from mmviz.progress import progress
from mmviz.records import Map, Trace

GRID_SIDE = 64
"""Longer side, in cells, of the common grid maps are compared on (the image is never upsampled)."""

TOP_K = 0.1
"""Default share of the shared cells counted as a map's top cells (``iou_topk``)."""

FROM_ATTENTION = ("attention", "attention_max", "attention_sinks_masked")
"""Methods a trace without its model (``trace.run is None``, e.g. loaded from a file) can still compute."""

COVERED_SHARE = 0.5
"""A grid cell counts as covered by a trace when at least this share of its area lies in the chosen view's boxes."""


@dataclass(frozen=True)
class TokenPair:
    """One answer token of A paired with one of B.

    Attributes:
        index: the pair's number (the table's ``pair`` column).
        position_a, position_b: sequence positions of the two tokens.
        token_a, token_b: their display strings.
        same_text: the two tokens carry the same text (else they stand in the same place of answers that differ).
    """

    index: int
    position_a: int
    position_b: int
    token_a: str
    token_b: str
    same_text: bool


@dataclass(frozen=True)
class PixelGrid:
    """How one trace's image columns land on the common grid.

    Attributes:
        shapes: ``(rows, cols)`` of each image's grid; the cells of image 0 come first, then image 1, …
        weights: float32 ``(G, C)``: cell g's value is ``weights[g] @ column values`` (area-weighted mean of the
            columns whose boxes overlap it; zero rows for cells not covered). ``C`` is the number of map columns
            (image tokens, or BLIP-2's query tokens composed through their soft cells).
        covered: ``(G,)`` whether the chosen view reaches the cell.
        views: the view code compared for each image (see :data:`mmviz.adapters.layout.VIEWS`).
    """

    shapes: list[tuple[int, int]]
    weights: np.ndarray
    covered: np.ndarray
    views: list[int]

    def paint(self, values: np.ndarray) -> np.ndarray:
        """``(…, C)`` column values → ``(…, G)`` cell values, NaN where not covered."""
        cells = np.asarray(values, dtype=np.float32) @ self.weights.T
        cells[..., ~self.covered] = np.nan
        return cells


@dataclass(frozen=True)
class MethodComparison:
    """Everything compared for one method: the normalised maps on the grid and the metrics.

    Attributes:
        method: the method's name.
        signed: whether its values can be negative.
        layers_a, layers_b: ``(S,)`` the paired layers (−1 once for a map that does not depend on the layer).
        pixels_a, pixels_b: float32 ``(S, K, G)``: each pair's map on the grid, normalised to sum to 1 over the
            shared cells (magnitudes for signed maps), NaN outside them; K = number of pairs.
        mean_a, mean_b: float32 ``(K, G)``: the same for the mean over layers (equal to the only slice otherwise).
        js, spearman, iou_topk: float64 ``(S, K)``.
        shared: ``(G,)`` the cells both traces' maps reach (the ones compared).
    """

    method: str
    signed: bool
    layers_a: np.ndarray
    layers_b: np.ndarray
    pixels_a: np.ndarray
    pixels_b: np.ndarray
    mean_a: np.ndarray
    mean_b: np.ndarray
    js: np.ndarray
    spearman: np.ndarray
    iou_topk: np.ndarray
    shared: np.ndarray

    @property
    def layered(self) -> bool:
        return bool(self.layers_a[0] >= 0)


@dataclass(frozen=True, repr=False)
class Comparison:
    """Two traces compared on the original image's pixels: metrics per (method, layer, answer-token pair).

    Attributes:
        a, b: the traces.
        pairs: the paired answer tokens (:class:`TokenPair`).
        unpaired: ``{"a": [...], "b": [...]}`` answer positions without a partner.
        methods: method name → :class:`MethodComparison`.
        grid_shape: ``(rows, cols)`` of the common grid of each image (A's images, in order).
        shared: ``(G,)`` the cells both traces reach for every compared method.
        top_k: the share of cells in a map's top set.
        table: the tidy table, column name → array, one row per (method, layer, pair): ``method``, ``layer`` (A's;
            −1 when the map has no layers), ``layer_b``, ``pair``, ``position_a``, ``position_b``, ``token_a``,
            ``token_b``, ``same_text``, ``js``, ``spearman``, ``iou_topk``, ``logprob_a``, ``logprob_b``,
            ``delta_logprob`` (A − B). ``pandas.DataFrame(comparison.table)`` makes a data frame of it.

    Example:
        >>> comparison = mmviz.compare(a, b)                              # doctest: +SKIP
        >>> comparison.answer_changed, comparison.delta_logprob          # doctest: +SKIP
        (True, -3.2)
        >>> comparison.per_layer("attention")["js"]          # mean over pairs, per layer   # doctest: +SKIP
    """

    a: Trace
    b: Trace
    pairs: list[TokenPair]
    unpaired: dict[str, list[int]]
    methods: dict[str, MethodComparison]
    grid_shape: list[tuple[int, int]]
    shared: np.ndarray
    top_k: float
    table: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def answer_changed(self) -> bool:
        """The two answers differ (compared as text, surrounding whitespace ignored)."""
        return self.a.answer.strip() != self.b.answer.strip()

    @property
    def delta_logprob(self) -> float:
        """log p(A's answer | A) − log p(B's answer | B): the change of the whole answer's log-probability."""
        return float(np.sum(self.a.answer_logprobs) - np.sum(self.b.answer_logprobs))

    def rows(self, method: str | None = None, layer: int | None = None) -> list[dict[str, Any]]:
        """The table as a list of dicts, optionally only ``method`` and A's ``layer``.

        Example:
            >>> comparison.rows("attention", layer=3)[0]["iou_topk"]        # doctest: +SKIP
            0.25
        """
        keep = np.ones(len(self.table["method"]), dtype=bool)
        if method is not None:
            self._method(method)
            keep &= self.table["method"] == method
        if layer is not None:
            keep &= self.table["layer"] == layer
        return [{key: _plain(column[i]) for key, column in self.table.items()} for i in np.flatnonzero(keep)]

    def per_layer(self, method: str) -> dict[str, np.ndarray]:
        """Per paired layer, the mean over answer-token pairs of ``js``, ``spearman`` and ``iou_topk`` (NaNs
        ignored), with ``layer`` (A's) and ``layer_b``."""
        result = self._method(method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column is NaN, as documented
            return {
                "layer": result.layers_a.copy(),
                "layer_b": result.layers_b.copy(),
                "js": np.nanmean(result.js, axis=1),
                "spearman": np.nanmean(result.spearman, axis=1),
                "iou_topk": np.nanmean(result.iou_topk, axis=1),
            }

    def most_divergent(self, method: str, n: int = 5, layer: int | None = None) -> list[dict[str, Any]]:
        """The ``n`` table rows of ``method`` with the largest ``js`` (at A's ``layer``, or any layer)."""
        rows = [row for row in self.rows(method, layer) if not math.isnan(row["js"])]
        return sorted(rows, key=lambda row: -row["js"])[:n]

    def difference(self, method: str, layer: int | str | None = None, pair: int = 0) -> list[np.ndarray]:
        """The signed A − B map of one pair on each image's grid: ``(rows, cols)`` per image, the difference of the
        two normalised maps in units of a uniform map's share (+1: A puts one uniform cell's worth more there),
        NaN where not both traces reach. ``layer``: A's layer, ``"mean"`` (the mean over layers) or None (the
        last, or the only slice).

        Example:
            >>> diff = comparison.difference("attention", layer="mean")[0]     # doctest: +SKIP
        """
        result = self._method(method)
        if not 0 <= pair < len(self.pairs):
            raise InputError(f"pair must be 0 … {len(self.pairs) - 1} (the index of comparison.pairs), not {pair}")
        if layer == "mean":
            a, b = result.mean_a[pair], result.mean_b[pair]
        else:
            s = self._slice(result, layer)
            a, b = result.pixels_a[s, pair], result.pixels_b[s, pair]
        flat = (a - b) * float(result.shared.sum())
        return self._split(flat)

    def _slice(self, result: MethodComparison, layer: int | str | None) -> int:
        if layer is None:
            return len(result.layers_a) - 1
        if not result.layered:
            raise InputError(f"{result.method} does not depend on the layer; leave layer out")
        found = np.flatnonzero(result.layers_a == layer)
        if len(found) == 0:
            raise InputError(f"layer must be one of A's layers of {result.method}: {result.layers_a.tolist()}")
        return int(found[0])

    def _split(self, flat: np.ndarray) -> list[np.ndarray]:
        out, start = [], 0
        for rows, cols in self.grid_shape:
            out.append(flat[start : start + rows * cols].reshape(rows, cols))
            start += rows * cols
        return out

    def _method(self, method: str) -> MethodComparison:
        if method not in self.methods:
            raise InputError(f"{method!r} was not compared; choose one of {list(self.methods)}")
        return self.methods[method]

    def __repr__(self) -> str:
        lines = [
            f"<mmviz.Comparison A: {self.a.model_name} {self.a.answer.strip()!r} · "
            f"B: {self.b.model_name} {self.b.answer.strip()!r}"
            f"{' (answer changed)' if self.answer_changed else ''}, Δ log p = {self.delta_logprob:+.3f}, "
            f"{len(self.pairs)} token pairs>"
        ]
        for name in self.methods:
            summary = self.per_layer(name)
            lines.append(
                f"  {name}: JS {np.nanmean(summary['js']):.3g}, Spearman {np.nanmean(summary['spearman']):.3f}, "
                f"IoU@{self.top_k:.0%} {np.nanmean(summary['iou_topk']):.3f} (mean over layers and pairs)"
            )
        return "\n".join(lines)


def compare(
    a: Trace,
    b: Trace,
    *,
    methods: Sequence[str] | None = None,
    top_k: float = TOP_K,
    grid_side: int = GRID_SIDE,
) -> Comparison:
    """Compare two traces on the original image's pixels, per (method, layer, answer-token pair).

    Args:
        a, b: traces (:func:`mmviz.trace`, or loaded from files: a trace without its model compares the maps it
            carries and the attention-based ones).
        methods: method names to compare; default every map both traces carry, plus ``"attention"``. A method a
            trace lacks is computed (:meth:`~mmviz.Trace.compute`) when the trace has its model.
        top_k: share of the shared cells that make a map's top set for ``iou_topk`` (0 < top_k ≤ 1).
        grid_side: longer side of the common grid, in cells.

    Returns:
        a :class:`Comparison`; show it with ``mmviz.ComparisonWidget(comparison)``.

    Example:
        >>> comparison = mmviz.compare(trace_llava, trace_qwen, methods=["attention"])   # doctest: +SKIP
        >>> comparison.rows("attention")[0]["spearman"]                                 # doctest: +SKIP
    """
    for name, trace in (("a", a), ("b", b)):
        if not isinstance(trace, Trace):
            raise InputError(f"compare takes two mmviz.Trace objects; {name} is a {type(trace).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not 0 < top_k <= 1:
        raise InputError(f"top_k is a share of the cells, 0 < top_k ≤ 1 (0.1 = the top 10%), not {top_k!r}")
    if isinstance(grid_side, bool) or not isinstance(grid_side, int) or grid_side < 2:
        raise InputError(f"grid_side is a number of cells ≥ 2, not {grid_side!r}")
    if len(a.images) != len(b.images) or not a.images:
        raise InputError(
            f"A has {len(a.images)} image(s) and B {len(b.images)}; compare traces with the same number of images"
        )
    if len(a.answer_logprobs) == 0 or len(b.answer_logprobs) == 0:
        raise InputError("both traces need an answer to compare (trace a generative model, or pass answer=...)")
    names = _methods(a, b, methods)
    pairs, unpaired = pair_answer_tokens(a, b)
    if not pairs:
        raise InputError("the two answers have no tokens to pair; give both traces an answer")

    shapes = [_grid_shape(image.width, image.height, grid_side) for image in a.images]
    maps = {}
    grids: dict[tuple[bytes, bytes], tuple[PixelGrid, PixelGrid]] = {}
    shared = None
    for name in progress(names, desc="mmviz: comparing", disable=len(names) < 3):
        map_a, map_b = _map(a, name, "A"), _map(b, name, "B")
        key = (np.asarray(map_a.columns).tobytes(), np.asarray(map_b.columns).tobytes())
        if key not in grids:
            grids[key] = (pixel_grid(a, map_a, shapes), pixel_grid(b, map_b, shapes))
        grid_a, grid_b = grids[key]
        both = grid_a.covered & grid_b.covered
        if not both.any():
            raise InputError("the two traces reach no common part of the image; compare traces of one scene framing")
        shared = both if shared is None else shared & both
        maps[name] = _compare_method(name, map_a, map_b, a, b, pairs, grid_a, grid_b, both, top_k)
    assert shared is not None
    comparison = Comparison(
        a=a, b=b, pairs=pairs, unpaired=unpaired, methods=maps, grid_shape=shapes, shared=shared, top_k=float(top_k)
    )
    comparison.table.update(_table(comparison))
    return comparison


# --- answer alignment ---------------------------------------------------------------------------------------------


def pair_answer_tokens(a: Trace, b: Trace) -> tuple[list[TokenPair], dict[str, list[int]]]:
    """Pair A's answer tokens with B's by their text.

    Tokens of equal text (after a character-level diff of the two answers, so different tokenisers of the same
    words pair up by how many characters they share) pair; in a stretch where the answers differ, the tokens pair
    in order (``same_text=False``: "green" ↔ "red"); what is left over is unpaired.

    Example:
        >>> pairs, unpaired = pair_answer_tokens(a, b)                # doctest: +SKIP
        >>> [(p.token_a, p.token_b, p.same_text) for p in pairs]      # doctest: +SKIP
        [(' green', ' red', False), ('.', '.', True)]
    """
    tokens_a = _answer_tokens(a)
    tokens_b = _answer_tokens(b)
    found: list[tuple[int, int, bool]] = []
    matcher = difflib.SequenceMatcher(None, [_norm(t) for t in tokens_a], [_norm(t) for t in tokens_b], autojunk=False)
    for tag, i0, i1, j0, j1 in matcher.get_opcodes():
        if tag == "equal":
            found.extend((i0 + k, j0 + k, True) for k in range(i1 - i0))
        elif tag == "replace":
            found.extend(_pair_stretch(tokens_a, range(i0, i1), tokens_b, range(j0, j1)))
    pairs = [
        TokenPair(
            index=k,
            position_a=a.answer_start + i,
            position_b=b.answer_start + j,
            token_a=tokens_a[i],
            token_b=tokens_b[j],
            same_text=same,
        )
        for k, (i, j, same) in enumerate(found)
    ]
    used_a = {i for i, _, _ in found}
    used_b = {j for _, j, _ in found}
    unpaired = {
        "a": [a.answer_start + i for i in range(len(tokens_a)) if i not in used_a],
        "b": [b.answer_start + j for j in range(len(tokens_b)) if j not in used_b],
    }
    return pairs, unpaired


def _pair_stretch(
    tokens_a: list[str], rows_a: range, tokens_b: list[str], rows_b: range
) -> list[tuple[int, int, bool]]:
    """Pairs inside a stretch where the token lists differ: by shared characters when the stretch spells the same
    text on both sides (different tokenisations), else in order."""
    text_a = [_norm(tokens_a[i]) for i in rows_a]
    text_b = [_norm(tokens_b[j]) for j in rows_b]
    if "".join(text_a) != "".join(text_b):
        return [(i, j, False) for i, j in zip(rows_a, rows_b, strict=False)]
    owner_b = [j for j, text in zip(rows_b, text_b, strict=True) for _ in text]
    out, start = [], 0
    for i, text in zip(rows_a, text_a, strict=True):
        owners = owner_b[start : start + len(text)]
        start += len(text)
        if owners:
            out.append((i, max(set(owners), key=lambda j: (owners.count(j), -j)), True))
    return out


def _answer_tokens(trace: Trace) -> list[str]:
    start = trace.answer_start
    return list(trace.tokens[start : start + len(trace.answer_logprobs)])


def _norm(token: str) -> str:
    return "".join(token.split())


def position_links(a: Trace, b: Trace, pairs: Sequence[TokenPair]) -> np.ndarray:
    """``(N_a,)`` for every position of A the position of B that corresponds to it (−1: none): answer tokens by
    their pairs, prompt tokens by a diff of the two prompts' text tokens (image tokens are linked by pixels)."""
    links = np.full(len(a.tokens), -1, dtype=np.int64)
    text_a = [i for i in range(a.answer_start) if a.layout.image_index[i] < 0]
    text_b = [j for j in range(b.answer_start) if b.layout.image_index[j] < 0]
    matcher = difflib.SequenceMatcher(
        None, [_norm(a.tokens[i]) for i in text_a], [_norm(b.tokens[j]) for j in text_b], autojunk=False
    )
    for tag, i0, i1, j0, j1 in matcher.get_opcodes():
        if tag in ("equal", "replace"):
            for i, j in zip(range(i0, i1), range(j0, j1), strict=False):
                links[text_a[i]] = text_b[j]
    for pair in pairs:  # the row predicting each paired token (what a query map shows for it) links too
        links[pair.position_a - 1] = pair.position_b - 1
    for pair in pairs:
        links[pair.position_a] = pair.position_b
    return links


# --- maps on the original image's pixels ----------------------------------------------------------------------------


def _grid_shape(width: int, height: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def pixel_grid(trace: Trace, result: Map, shapes: Sequence[tuple[int, int]]) -> PixelGrid:
    """Where ``result``'s columns land on the common grid (``shapes[k]`` cells for image k), for ``trace``.

    Cell (i, j) of image k spans the same fraction of the image in every trace: ``x ∈ [j, j + 1) · W / cols``.
    Each cell takes the area-weighted mean of the columns of the image's chosen view whose boxes overlap it.
    """
    layout = trace.layout
    columns = np.asarray(result.columns)
    soft = layout.soft
    if soft is not None and np.array_equal(columns, soft.positions):
        boxes = soft.boxes.astype(np.float64)
        images = soft.image_index
        views = np.zeros(len(boxes), dtype=np.int64)
        compose = soft.weights.astype(np.float32)  # (C, cells): query values → cell values
    else:
        table = layout.column_table  # the layout, or a cross-attention family's keys
        boxes = table.boxes[columns].astype(np.float64)
        images = table.image_index[columns]
        views = table.view[columns].astype(np.int64)
        compose = None
    blocks, covered, chosen = [], [], []
    for k, (rows, cols) in enumerate(shapes):
        geometry = layout.images[k] if k < len(layout.images) else None
        width = geometry.width if geometry else trace.images[k].width
        height = geometry.height if geometry else trace.images[k].height
        mine = np.flatnonzero(images == k)
        view = _finest_view(boxes[mine], views[mine])
        mine = mine[views[mine] == view] if len(mine) else mine
        chosen.append(view)
        xs = np.arange(cols + 1) * (width / cols)
        ys = np.arange(rows + 1) * (height / rows)
        cell_x0, cell_y0 = np.meshgrid(xs[:-1], ys[:-1])
        cell_x1, cell_y1 = np.meshgrid(xs[1:], ys[1:])
        cx0, cy0, cx1, cy1 = (v.reshape(-1, 1) for v in (cell_x0, cell_y0, cell_x1, cell_y1))
        b = boxes[mine]
        overlap_x = np.clip(np.minimum(cx1, b[:, 2]) - np.maximum(cx0, b[:, 0]), 0, None)
        overlap_y = np.clip(np.minimum(cy1, b[:, 3]) - np.maximum(cy0, b[:, 1]), 0, None)
        area = overlap_x * overlap_y  # (cells, boxes)
        cell_area = (cx1 - cx0) * (cy1 - cy0)
        reached = area.sum(axis=1)
        block = np.zeros((rows * cols, len(boxes)), dtype=np.float64)
        block[:, mine] = area / np.maximum(reached, 1e-12)[:, None]
        blocks.append(block)
        covered.append(reached >= COVERED_SHARE * cell_area[:, 0])
    weights = np.concatenate(blocks).astype(np.float32)
    if compose is not None:
        weights = weights @ compose.T  # (G, cells) @ (cells, queries)
    return PixelGrid(shapes=list(shapes), weights=weights, covered=np.concatenate(covered), views=chosen)


def _finest_view(boxes: np.ndarray, views: np.ndarray) -> int:
    """The view with the most boxes (ties: the smaller mean box, then the lower code), as the widget's default."""
    if len(views) == 0:
        return 0
    best, best_key = 0, None
    for code in np.unique(views):
        chosen = boxes[views == code]
        area = float(np.mean((chosen[:, 2] - chosen[:, 0]) * (chosen[:, 3] - chosen[:, 1])))
        key = (-len(chosen), area, int(code))
        if best_key is None or key < best_key:
            best, best_key = int(code), key
    return best


# --- the metrics ---------------------------------------------------------------------------------------------------


def _methods(a: Trace, b: Trace, methods: Sequence[str] | None) -> list[str]:
    if methods is None:
        names = ["attention", *[name for name in a.maps if name in b.maps and name != "attention"]]
        usable = [name for name in names if _available(a, name) and _available(b, name)]
        if not usable:
            raise InputError(
                "the two traces share no method to compare: compute one on both (trace.compute('relevancy')) "
                "or trace with the default capture plan, which records the attention"
            )
        return usable
    if isinstance(methods, str) or not all(isinstance(name, str) for name in methods):
        raise InputError(f"methods is a list of method names, e.g. ['attention', 'relevancy'], not {methods!r}")
    names = list(dict.fromkeys(methods))
    if not names:
        raise InputError("methods is empty; name at least one method, e.g. methods=['attention']")
    for name in names:
        for label, trace in (("A", a), ("B", b)):
            if not _available(trace, name):
                have = sorted({"attention", *trace.maps})
                raise InputError(
                    f"trace {label} has no {name!r} map and no model to compute it (loaded from a file?); compute it "
                    f"before saving, or compare one of {have}"
                )
    return names


def _available(trace: Trace, name: str) -> bool:
    if name in trace.maps or trace.run is not None:
        return True
    return name in FROM_ATTENTION and trace.attention_rows.size > 0 and len(trace.layers) == trace.num_layers


def _map(trace: Trace, name: str, label: str) -> Map:
    if name in trace.maps:
        return trace.maps[name]
    try:
        return trace.compute(name)
    except InputError as error:
        raise InputError(f"trace {label}: {error}") from None


def _rows_of(result: Map, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(S, K, C)`` the rows explaining each answer position (the row predicting it for query maps; zeros and
    ``found = False`` where the map has no row), and ``(K,)`` found."""
    values = result.values if result.layers is not None else result.values[None]
    lookup = {int(p): r for r, p in enumerate(result.positions)}
    shift = 1 if result.rows == "queries" else 0
    index = [lookup.get(int(p) - shift, -1) for p in positions]
    found = np.array([i >= 0 for i in index], dtype=bool)
    rows = values[:, [max(i, 0) for i in index]].astype(np.float32)
    rows[:, ~found] = 0
    return rows, found


def _layer_pairs(result_a: Map, result_b: Map, a: Trace, b: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A's layers, the B layer paired with each by relative depth, and its slice index in B's map."""
    if result_a.layers is None or result_b.layers is None:
        if (result_a.layers is None) != (result_b.layers is None):
            raise InputError(f"{result_a.method}: one map is per layer and the other is not; recompute both alike")
        return np.array([-1]), np.array([-1]), np.array([0])
    layers_a = np.asarray(result_a.layers, dtype=np.int64)
    layers_b = np.asarray(result_b.layers, dtype=np.int64)
    depth_a = layers_a / max(1, a.num_layers - 1)
    depth_b = layers_b / max(1, b.num_layers - 1)
    distance = np.round(np.abs(depth_b[None, :] - depth_a[:, None]), 9)
    # the nearest depth, halves up (as the widget's scrubber, Math.round): the last of equally near slices
    slices_b = len(depth_b) - 1 - distance[:, ::-1].argmin(axis=1)
    return layers_a, layers_b[slices_b], slices_b


def _normalised(cells: np.ndarray, shared: np.ndarray, signed: bool) -> np.ndarray:
    """Cell values → a distribution over the shared cells (magnitudes for signed maps); NaN elsewhere, and all NaN
    for a map with no mass there."""
    mass = np.abs(cells) if signed else np.clip(cells, 0, None)
    mass = np.where(shared, np.nan_to_num(mass), 0.0)
    total = mass.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, mass / total, np.nan)
    out[..., ~shared] = np.nan
    return out.astype(np.float32)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits (0 … 1) of distributions along the last axis; NaN where either is NaN."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = (p + q) / 2

    def kl(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(x > 0, x * np.log2(np.where(x > 0, x, 1) / np.where(m > 0, m, 1)), 0.0)
        return terms.sum(axis=-1)

    out = np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0)
    bad = np.isnan(p).any(axis=-1) | np.isnan(q).any(axis=-1)
    return np.where(bad, np.nan, out)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0 … n−1 along the last axis, tied values sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1, values.shape[-1])
    out = np.empty_like(flat)
    for r, row in enumerate(flat):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out[r] = (starts + (counts - 1) / 2)[inverse]
    return out.reshape(values.shape)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation along the last axis (average ranks for ties); NaN for a constant row."""
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx -= rx.mean(axis=-1, keepdims=True)
    ry -= ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (rx * ry).sum(axis=-1) / np.where(denominator > 0, denominator, 1), np.nan)


def top_set(values: np.ndarray, top_k: float) -> np.ndarray:
    """Boolean mask of the top cells along the last axis: every value ≥ the ``ceil(top_k · n)``-th largest."""
    n = values.shape[-1]
    count = max(1, math.ceil(top_k * n - 1e-9))
    threshold = -np.partition(-values, count - 1, axis=-1)[..., count - 1 : count]
    return values >= threshold


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> np.ndarray:
    """Intersection over union along the last axis."""
    union = (mask_a | mask_b).sum(axis=-1)
    return np.where(union > 0, (mask_a & mask_b).sum(axis=-1) / np.maximum(union, 1), np.nan)


def _compare_method(
    name: str,
    map_a: Map,
    map_b: Map,
    a: Trace,
    b: Trace,
    pairs: Sequence[TokenPair],
    grid_a: PixelGrid,
    grid_b: PixelGrid,
    shared: np.ndarray,
    top_k: float,
) -> MethodComparison:
    signed = bool(map_a.signed or map_b.signed)
    layers_a, layers_b, slices_b = _layer_pairs(map_a, map_b, a, b)
    rows_a, found_a = _rows_of(map_a, [p.position_a for p in pairs])
    rows_b, found_b = _rows_of(map_b, [p.position_b for p in pairs])
    cells_a = grid_a.paint(rows_a)  # (S_a, K, G)
    cells_b = grid_b.paint(rows_b)[slices_b]
    mean_a = _normalised(cells_a.mean(axis=0), shared, signed)
    mean_b = _normalised(grid_b.paint(rows_b).mean(axis=0), shared, signed)
    pix_a = _normalised(cells_a, shared, signed)
    pix_b = _normalised(cells_b, shared, signed)
    missing = ~(found_a & found_b)
    for pix in (pix_a, pix_b):
        pix[:, missing] = np.nan
    mean_a[missing] = np.nan
    mean_b[missing] = np.nan

    js = jensen_shannon(pix_a[..., shared], pix_b[..., shared])
    raw_a = np.nan_to_num(cells_a[..., shared])
    raw_b = np.nan_to_num(cells_b[..., shared])
    rho = spearman(raw_a, raw_b)
    mag_a = np.abs(raw_a) if signed else raw_a
    mag_b = np.abs(raw_b) if signed else raw_b
    overlap = iou(top_set(mag_a, top_k), top_set(mag_b, top_k)).astype(np.float64)
    for metric in (rho, overlap):
        metric[:, missing] = np.nan
    return MethodComparison(
        method=name,
        signed=signed,
        layers_a=layers_a,
        layers_b=layers_b,
        pixels_a=pix_a,
        pixels_b=pix_b,
        mean_a=mean_a,
        mean_b=mean_b,
        js=js,
        spearman=rho,
        iou_topk=overlap,
        shared=shared,
    )


def _table(comparison: Comparison) -> dict[str, np.ndarray]:
    a, b = comparison.a, comparison.b
    columns: dict[str, list[Any]] = {
        key: []
        for key in (
            "method",
            "layer",
            "layer_b",
            "pair",
            "position_a",
            "position_b",
            "token_a",
            "token_b",
            "same_text",
            "js",
            "spearman",
            "iou_topk",
            "logprob_a",
            "logprob_b",
            "delta_logprob",
        )
    }
    for name, result in comparison.methods.items():
        for s, (layer_a, layer_b) in enumerate(zip(result.layers_a, result.layers_b, strict=True)):
            for pair in comparison.pairs:
                logprob_a = float(a.answer_logprobs[pair.position_a - a.answer_start])
                logprob_b = float(b.answer_logprobs[pair.position_b - b.answer_start])
                for key, value in (
                    ("method", name),
                    ("layer", int(layer_a)),
                    ("layer_b", int(layer_b)),
                    ("pair", pair.index),
                    ("position_a", pair.position_a),
                    ("position_b", pair.position_b),
                    ("token_a", pair.token_a),
                    ("token_b", pair.token_b),
                    ("same_text", pair.same_text),
                    ("js", float(result.js[s, pair.index])),
                    ("spearman", float(result.spearman[s, pair.index])),
                    ("iou_topk", float(result.iou_topk[s, pair.index])),
                    ("logprob_a", logprob_a),
                    ("logprob_b", logprob_b),
                    ("delta_logprob", logprob_a - logprob_b),
                ):
                    columns[key].append(value)
    types = {"method": object, "token_a": object, "token_b": object, "same_text": bool}
    return {
        key: np.array(values, dtype=types.get(key, np.int64 if key in _INTS else np.float64))
        for key, values in columns.items()
    }


_INTS = {"layer", "layer_b", "pair", "position_a", "position_b"}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
