"""TokenLayout: one row per sequence position, linking every token to its pixels in the ORIGINAL image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS: tuple[str, ...] = ("text", "special", "image", "image_newline", "image_sep", "query")
"""Token kinds; the index of a kind is its code in :attr:`TokenLayout.kinds` and on the wire."""

VIEWS: tuple[str, ...] = ("", "base", "crop", "tile", "global", "query", "frame")
"""Views of an image inside one sequence (several may cover the same pixels; they are never averaged)."""

TEXT, SPECIAL, IMAGE, IMAGE_NEWLINE, IMAGE_SEP, QUERY = range(len(KINDS))

LAYOUT_SOURCES: tuple[str, ...] = ("adapter", "measured")
"""Where a layout's boxes come from (:attr:`TokenLayout.source`)."""


@dataclass(frozen=True)
class ImageGeometry:
    """Size of an original image and the region of it that reaches any token (outside it: cropped away)."""

    width: int
    height: int
    covered: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "covered": [float(v) for v in self.covered]}


@dataclass(frozen=True)
class SoftCells:
    """Image cells reached only INDIRECTLY: query tokens that have no box, each with a soft map over the cells.

    Families such as BLIP-2 feed the language model learned query embeddings (Q-Former outputs) instead of patch
    tokens. Each query reads the ViT patch grid through cross-attention, so a value per query position (an attention
    column, a gradient) is shown on the image as ``values @ weights``: a weighted sum over the queries per cell.

    Attributes:
        positions: ``(Qn,)`` sequence positions of the query tokens, in sequence order (the image columns).
        weights: float32 ``(Qn, C)``, rows summing to 1: each query's attention over the ``C`` cells.
        boxes: ``(C, 4)`` cell boxes ``x0, y0, x1, y1`` in ORIGINAL image pixels.
        grid: ``(C, 2)`` row and column of each cell in its image's patch grid.
        grid_shape: rows and columns of that grid.
        image_index: ``(C,)`` which image each cell belongs to.
        label: how the cells are reached, shown with every map drawn through them.

    Example:
        >>> soft = trace.layout.soft                                   # doctest: +SKIP
        >>> cells = trace.attention(layer="mean", head="mean") @ soft.weights   # (rows, C)   # doctest: +SKIP
    """

    positions: np.ndarray
    weights: np.ndarray
    boxes: np.ndarray
    grid: np.ndarray
    grid_shape: tuple[int, int]
    image_index: np.ndarray
    label: str = "indirect: through the Q-Former's cross-attention"

    def __post_init__(self) -> None:
        n_queries, n_cells = self.weights.shape
        if self.positions.shape != (n_queries,):
            raise ValueError(f"{len(self.positions)} query positions for {n_queries} weight rows")
        if self.boxes.shape != (n_cells, 4) or self.grid.shape != (n_cells, 2) or self.image_index.shape != (n_cells,):
            raise ValueError(f"boxes / grid / image_index do not describe the {n_cells} cells of the weights")
        if not np.allclose(self.weights.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("every query's weights over the cells must sum to 1")

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class TokenLayout:
    """Columnar table with one row per sequence position.

    Attributes:
        tokens: display string of every position.
        kinds: ``uint8`` codes into :data:`KINDS`.
        image_index: which image a position belongs to (``-1`` for text).
        view: ``uint8`` codes into :data:`VIEWS`.
        grid: ``(N, 2)`` row and column of the cell in its view's token grid (``-1`` when none).
        grid_shape: ``(N, 2)`` rows and columns of that grid (``0`` when none).
        boxes: ``(N, 4)`` ``x0, y0, x1, y1`` in ORIGINAL image pixels, NaN for positions without a box.
        images: the geometry of every image in the prompt.
        soft: for query-based families (BLIP-2), the cells the query tokens reach indirectly; None otherwise.
        source: where the boxes come from: ``"adapter"`` (the family's adapter states them) or ``"measured"``
            (read from the model by :func:`mmviz.adapters.measured.measure_layout`, for families without one).

    Example:
        >>> layout.positions("image")[:3]            # doctest: +SKIP
        array([5, 6, 7])
        >>> layout.row(5)["box"]                     # doctest: +SKIP
        (0.0, 0.0, 26.7, 26.7)
    """

    tokens: list[str]
    kinds: np.ndarray
    image_index: np.ndarray
    view: np.ndarray
    grid: np.ndarray
    grid_shape: np.ndarray
    boxes: np.ndarray
    images: list[ImageGeometry] = field(default_factory=list)
    soft: SoftCells | None = None
    source: str = "adapter"

    def __len__(self) -> int:
        return len(self.tokens)

    def positions(self, *kinds: str) -> np.ndarray:
        """Sequence positions whose kind is one of ``kinds``."""
        codes = [KINDS.index(kind) for kind in kinds]
        return np.flatnonzero(np.isin(self.kinds, codes))

    @property
    def image_positions(self) -> np.ndarray:
        """Image positions that have a box, in sequence order: the columns of every image map.

        With :attr:`soft` cells these are the query positions (the LLM inputs that carry the image), which have no
        box; maps over them reach the image through ``soft.weights``.
        """
        if self.soft is not None:
            return self.soft.positions
        return np.flatnonzero((self.kinds == IMAGE) & np.isfinite(self.boxes[:, 0]))

    @property
    def text_positions(self) -> np.ndarray:
        """Text and special-token positions: the rows of attention maps."""
        return self.positions("text", "special")

    def row(self, position: int) -> dict[str, Any]:
        """Everything known about one position, as plain Python values."""
        has_box = bool(np.isfinite(self.boxes[position, 0]))
        has_grid = bool(self.grid[position, 0] >= 0)
        return {
            "pos": position,
            "token": self.tokens[position],
            "kind": KINDS[self.kinds[position]],
            "image_index": int(self.image_index[position]) if self.image_index[position] >= 0 else None,
            "view": VIEWS[self.view[position]] or None,
            "grid_rc": tuple(int(v) for v in self.grid[position]) if has_grid else None,
            "grid_shape": tuple(int(v) for v in self.grid_shape[position]) if has_grid else None,
            "box": tuple(float(v) for v in self.boxes[position]) if has_box else None,
        }

    def rows(self) -> list[dict[str, Any]]:
        """The whole table as a list of dicts (handy for ``pandas.DataFrame(layout.rows())``)."""
        return [self.row(i) for i in range(len(self))]


class LayoutBuilder:
    """Fills a :class:`TokenLayout` position by position; adapters start from text and mark image spans."""

    def __init__(self, tokens: list[str], special: np.ndarray) -> None:
        n = len(tokens)
        self.tokens = list(tokens)
        self.kinds = np.where(special, SPECIAL, TEXT).astype(np.uint8)
        self.image_index = np.full(n, -1, np.int32)
        self.view = np.zeros(n, np.uint8)
        self.grid = np.full((n, 2), -1, np.int32)
        self.grid_shape = np.zeros((n, 2), np.int32)
        self.boxes = np.full((n, 4), np.nan, np.float32)
        self.images: list[ImageGeometry] = []
        self.soft: SoftCells | None = None

    def mark_grid(
        self,
        positions: np.ndarray,
        *,
        image_index: int,
        view: str,
        grid_shape: tuple[int, int],
        boxes: np.ndarray,
    ) -> None:
        """Mark ``positions`` (raster order) as the cells of one view's ``rows × cols`` token grid."""
        rows, cols = grid_shape
        if len(positions) != rows * cols or boxes.shape != (rows * cols, 4):
            raise ValueError(f"{len(positions)} positions / {len(boxes)} boxes for a {rows}×{cols} grid")
        cells = np.arange(rows * cols)
        self.kinds[positions] = IMAGE
        self.image_index[positions] = image_index
        self.view[positions] = VIEWS.index(view)
        self.grid[positions] = np.stack([cells // cols, cells % cols], axis=1)
        self.grid_shape[positions] = (rows, cols)
        self.boxes[positions] = boxes

    def build(self) -> TokenLayout:
        return TokenLayout(
            tokens=self.tokens,
            kinds=self.kinds,
            image_index=self.image_index,
            view=self.view,
            grid=self.grid,
            grid_shape=self.grid_shape,
            boxes=self.boxes,
            images=list(self.images),
            soft=self.soft,
        )
