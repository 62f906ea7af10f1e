"""TokenLayout: one row per sequence position, linking every token to its pixels in the ORIGINAL image."""

from __future__ import annotations

from collections.abc import Sequence
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
class CrossKeys:
    """Image cells that the text reads through CROSS-attention layers: keys, not sequence positions.

    Families such as Llama 3.2 Vision (``mllama``) never put the image into the sequence: decoder layers of their own
    (the cross-attention layers) attend from every text position to the vision tower's output, ``K`` keys (images ×
    tiles × tokens per tile, CLS and padding included). The image columns of such a trace are key indices ``0 … K−1``
    (:attr:`columns`, those with a box), its attention rows run over the ``K`` keys, and the methods that perturb or
    differentiate the image act on the cross-attention states at those keys. The arrays mirror
    :class:`TokenLayout`'s, one row per key.

    Attributes:
        boxes: ``(K, 4)`` ``x0, y0, x1, y1`` in ORIGINAL image pixels, NaN for keys without one (CLS, padding tiles,
            patches that see only padding).
        grid: ``(K, 2)`` row and column of the patch in its tile's grid (``-1`` when none).
        grid_shape: ``(K, 2)`` rows and columns of that grid (``0`` when none).
        image_index: ``(K,)`` which image a key belongs to (``-1`` for padding tiles).
        view: ``(K,)`` ``uint8`` codes into :data:`VIEWS` (``"tile"`` for patches of a tile).
        anchors: ``(K,)`` sequence position of the image's placeholder token (``-1`` for padding tiles).
        label: how the image is reached, shown with maps drawn on these keys.

    Example:
        >>> keys = trace.layout.keys                                       # doctest: +SKIP
        >>> keys.boxes[trace.image_positions[:2]]                          # doctest: +SKIP
        array([[ 0.,  0., 10., 10.], [10.,  0., 20., 10.]], dtype=float32)
    """

    boxes: np.ndarray
    grid: np.ndarray
    grid_shape: np.ndarray
    image_index: np.ndarray
    view: np.ndarray
    anchors: np.ndarray
    label: str = "through the cross-attention layers"

    def __post_init__(self) -> None:
        n = len(self.boxes)
        shapes = {"boxes": (n, 4), "grid": (n, 2), "grid_shape": (n, 2), "image_index": (n,), "view": (n,)}
        for name, shape in {**shapes, "anchors": (n,)}.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"cross keys: {name} has shape {getattr(self, name).shape}, expected {shape}")

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def columns(self) -> np.ndarray:
        """Key indices that have a box: the image columns of every map."""
        return np.flatnonzero(np.isfinite(self.boxes[:, 0]))


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
        frames: for a video, ``(N, 2)`` int32: the first and last ORIGINAL frame each position covers (``-1`` for
            positions outside the video). Video tokens are image tokens (kind ``image``) of view ``"frame"``; their
            ``image_index`` is the first frame of their span and :attr:`images` holds one geometry per frame.
            None for a prompt of images.
        keys: for cross-attention families (Llama 3.2 Vision), the :class:`CrossKeys` that are the image columns;
            None otherwise.

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
    frames: np.ndarray | None = None
    keys: CrossKeys | None = None

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
        box; maps over them reach the image through ``soft.weights``. With :attr:`keys` (a cross-attention family)
        they are key indices into :attr:`keys`, not sequence positions.
        """
        if self.soft is not None:
            return self.soft.positions
        if self.keys is not None:
            return self.keys.columns
        return np.flatnonzero((self.kinds == IMAGE) & np.isfinite(self.boxes[:, 0]))

    @property
    def column_table(self) -> TokenLayout | CrossKeys:
        """What :attr:`image_positions` index: this layout (sequence positions), or its :class:`CrossKeys` (key
        indices of a cross-attention family). Both have ``boxes``, ``grid``, ``grid_shape``, ``image_index`` and
        ``view``.

        Example:
            >>> table = layout.column_table                                        # doctest: +SKIP
            >>> table.boxes[layout.image_positions].shape                          # doctest: +SKIP
            (576, 4)
        """
        return self if self.keys is None else self.keys

    @property
    def is_video(self) -> bool:
        """Whether the image tokens come from a video (each covers the frames in :attr:`frames`)."""
        return self.frames is not None

    def frame_positions(self, frames: int | Sequence[int]) -> np.ndarray:
        """Image positions whose frame span overlaps ``frames`` (one frame index or several), in sequence order.

        Example:
            >>> trace.layout.frame_positions(0)[:3]       # the tokens that see frame 0   # doctest: +SKIP
            array([5, 6, 7])
        """
        if self.frames is None:
            raise ValueError("this layout has no frames: it was traced from images, not a video")
        wanted = np.atleast_1d(np.asarray(frames, dtype=np.int64))
        first, last = self.frames[:, 0], self.frames[:, 1]
        hit = (first[:, None] <= wanted[None, :]) & (wanted[None, :] <= last[:, None]) & (first[:, None] >= 0)
        return np.flatnonzero(hit.any(axis=1) & (self.kinds == IMAGE))

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
            **({"frames": self._span(position)} if self.frames is not None else {}),
        }

    def _span(self, position: int) -> tuple[int, int] | None:
        first, last = (int(v) for v in self.frames[position])  # type: ignore[index]
        return (first, last) if first >= 0 else None

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
        self.frames: np.ndarray | None = None
        self.keys: CrossKeys | None = None

    def mark_frames(self, positions: np.ndarray, first: int, last: int) -> None:
        """Mark ``positions`` as covering original frames ``first … last`` of a video (the layout becomes a video's)."""
        if self.frames is None:
            self.frames = np.full((len(self.tokens), 2), -1, np.int32)
        self.frames[positions] = (first, last)

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
            frames=self.frames,
            keys=self.keys,
        )
