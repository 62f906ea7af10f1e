"""Per-axis affine maps between ORIGINAL image pixels and a processor's output canvas.

A processor's pad / resize / centre-crop chain is a per-axis affine map ``canvas = original · s + t`` built with
the processor's own integer sizes; a token's cell on the canvas maps back to original pixels through its inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Affine:
    """``canvas_x = x · sx + tx`` and ``canvas_y = y · sy + ty``."""

    sx: float = 1.0
    sy: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    def then(self, other: Affine) -> Affine:
        """The map that applies ``self`` first and ``other`` second."""
        return Affine(
            sx=self.sx * other.sx,
            sy=self.sy * other.sy,
            tx=self.tx * other.sx + other.tx,
            ty=self.ty * other.sy + other.ty,
        )

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``(n, 4)`` canvas boxes ``x0, y0, x1, y1`` back to original pixels (not clipped)."""
        boxes = np.asarray(boxes, dtype=np.float64)
        out = np.empty_like(boxes)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - self.tx) / self.sx
        out[:, [1, 3]] = (boxes[:, [1, 3]] - self.ty) / self.sy
        return out


def resize(width: int, height: int, new_width: int, new_height: int) -> Affine:
    """Resizing ``width × height`` to the integer size ``new_width × new_height`` (each axis separately)."""
    return Affine(sx=new_width / width, sy=new_height / height)


def shortest_edge_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """The size transformers' ``get_resize_output_image_size(default_to_square=False)`` produces."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)


def center_crop(width: int, height: int, crop_width: int, crop_height: int) -> Affine:
    """Cropping (or padding, when smaller) the centre ``crop_width × crop_height``; offsets floor as in transformers."""
    return Affine(tx=-((width - crop_width) // 2), ty=-((height - crop_height) // 2))


def pad_to_square(width: int, height: int) -> tuple[Affine, int]:
    """Padding to a ``max(width, height)`` square with the image centred (floor offsets); returns the side."""
    side = max(width, height)
    return Affine(tx=(side - width) // 2, ty=(side - height) // 2), side


def grid_boxes(rows: int, cols: int, cell_width: float, cell_height: float) -> np.ndarray:
    """Canvas boxes of a ``rows × cols`` grid of cells, raster order, as an ``(rows·cols, 4)`` array."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([c * cell_width, r * cell_height, (c + 1) * cell_width, (r + 1) * cell_height], axis=1)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip boxes to the image; a box left with no area becomes NaN (that token covers only padding)."""
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    out[empty] = np.nan
    return out
