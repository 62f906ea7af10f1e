"""Layout checks, and the coordinate image they read boxes back from, shared by every family's tests."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmviz.adapters import VIEWS, TokenLayout


def coordinate_image(width: int, height: int) -> Image.Image:
    """Red = x, green = y of every pixel (so at most 256 px per side)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.arange(width)[None, :]
    pixels[..., 1] = np.arange(height)[:, None]
    return Image.fromarray(pixels)


def _box_groups(layout: TokenLayout):
    """``(label, boxes, image)`` per (image, view); query-based layouts (BLIP-2) group their soft cells per image,
    cross-attention layouts (Llama 3.2 Vision) their keys per (image, view)."""
    if layout.soft is not None:
        soft = layout.soft
        for image in np.unique(soft.image_index):
            yield f"image {image}, soft cells", soft.boxes[soft.image_index == image], int(image)
        return
    image_positions = layout.image_positions
    table = layout.column_table
    for image in np.unique(table.image_index[image_positions]):
        mine = image_positions[table.image_index[image_positions] == image]
        for view in np.unique(table.view[mine]):  # this image's own views (another image may have fewer)
            group = mine[table.view[mine] == view]
            yield f"image {image}, view {VIEWS[view]!r}", table.boxes[group], int(image)


def assert_views_tile(layout: TokenLayout, atol: float = 1e-3, resampled: bool = False) -> None:
    """Within every (image, view), the boxes tile a rectangle inside the image's covered region: no gaps, no
    overlaps; and every image's views together span its covered region.

    ``resampled``: the family bilinearly down-samples a view's feature grid (LLaVA-OneVision above
    ``anyres_max_N``), so each token reads its neighbours' cells too; a view whose boxes overlap must then be a
    resampled grid (:func:`assert_resampled_grid`) instead of a tiling.

    Boxes are what a token reads, so a view may read less than the image's covered region (LLaVA-NeXT's unpadded
    crop view leaves out the strips that only its padding covered, which its base view reads). Boxes may be empty
    (cells that only see padding). Tiling = pairwise overlaps have zero area and the areas sum to the area of the
    union's bounding box.
    """
    spans: dict[int, list[np.ndarray]] = {}
    for label, group, image in _box_groups(layout):
        covered = np.asarray(layout.images[image].covered, dtype=np.float64)
        boxes = group.astype(np.float64)
        area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
        boxes, area = boxes[area > 0], area[area > 0]
        assert len(boxes), f"{label}: no box has an area"
        bounds = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
        inside = (bounds[:2] >= covered[:2] - atol).all() and (bounds[2:] <= covered[2:] + atol).all()
        assert inside, f"{label}: boxes {bounds} reach outside the covered region {covered}"
        spans.setdefault(image, []).append(bounds)
        if resampled and overlapping(boxes).any():
            assert_resampled_grid(label, boxes, atol)
            continue
        bounds_area = (bounds[2] - bounds[0]) * (bounds[3] - bounds[1])
        assert abs(area.sum() - bounds_area) <= atol * max(1.0, bounds_area), f"{label}: areas do not add up"
        overlap = _overlap_areas(boxes)
        assert overlap.max() <= atol, f"{label}: boxes overlap by {overlap.max():.4f} px²"
    for image, bounds in spans.items():
        union = np.array([*np.min(bounds, axis=0)[:2], *np.max(bounds, axis=0)[2:]])
        covered = np.asarray(layout.images[image].covered, dtype=np.float64)
        np.testing.assert_allclose(union, covered, atol=atol, err_msg=f"image {image}: views do not span covered")


def _overlap_areas(boxes: np.ndarray) -> np.ndarray:
    """``(n, n)`` overlap area of every pair of boxes (zero on the diagonal)."""
    width = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    height = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    overlap = np.clip(width, 0, None) * np.clip(height, 0, None)
    np.fill_diagonal(overlap, 0)
    return overlap


def overlapping(boxes: np.ndarray, atol: float = 1e-3) -> np.ndarray:
    """Per box: whether another box overlaps it by more than ``atol`` px²."""
    return (_overlap_areas(np.asarray(boxes, np.float64)) > atol).any(axis=1)


def assert_resampled_grid(label: str, boxes: np.ndarray, atol: float = 1e-3) -> None:
    """The raster-order boxes of a bilinearly down-sampled grid: one x span per column and one y span per row,
    both ends of consecutive spans moving forward, no gap between them (a token reads its own cells and its
    neighbour's)."""
    cols = int(np.sum(np.abs(boxes[:, 1] - boxes[0, 1]) <= atol))
    assert len(boxes) % cols == 0, f"{label}: {len(boxes)} boxes are no grid of {cols} columns"
    grid = boxes.reshape(-1, cols, 4)
    x_spans, y_spans = grid[0][:, [0, 2]], grid[:, 0][:, [1, 3]]  # (cols, 2), (rows, 2)
    np.testing.assert_allclose(grid[..., [0, 2]], np.broadcast_to(x_spans, grid[..., [0, 2]].shape), atol=atol)
    np.testing.assert_allclose(grid[..., [1, 3]], np.broadcast_to(y_spans[:, None], grid[..., [1, 3]].shape), atol=atol)
    for spans in (x_spans, y_spans):
        first, last = spans[:, 0], spans[:, 1]
        assert (np.diff(first) > 0).all(), f"{label}: spans do not move forward"
        assert (first[1:] <= last[:-1] + atol).all(), f"{label}: a gap between spans"
        assert (np.diff(last) > 0).all(), f"{label}: a span holds the next one"


def assert_boxes_inside(layout: TokenLayout) -> None:
    """Every box lies inside its original image."""
    for label, boxes, image in _box_groups(layout):
        geometry = layout.images[image]
        for x0, y0, x1, y1 in boxes:
            inside = 0 <= x0 <= x1 <= geometry.width + 1e-3 and 0 <= y0 <= y1 <= geometry.height + 1e-3
            assert inside, (label, x0, y0, x1, y1)
