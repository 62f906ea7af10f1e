"""Grouping image tokens into square windows of their view's grid (for occlusion, RISE and knockout maps)."""

from __future__ import annotations

import numpy as np

from mmviz.adapters.layout import TokenLayout


def window_ids(layout: TokenLayout, columns: np.ndarray, size: int) -> np.ndarray:
    """For each image column, the id of the ``size × size`` window of its (image, view) grid it falls in."""
    keys = np.stack(
        [
            layout.image_index[columns],
            layout.view[columns],
            layout.grid_shape[columns, 0],
            layout.grid_shape[columns, 1],
            layout.grid[columns, 0] // size,
            layout.grid[columns, 1] // size,
        ],
        axis=1,
    )
    _, ids = np.unique(keys, axis=0, return_inverse=True)
    return ids.reshape(-1)


def grid_groups(layout: TokenLayout, columns: np.ndarray) -> list[np.ndarray]:
    """Column indices of each (image, view) token grid."""
    keys = np.stack([layout.image_index[columns], layout.view[columns]], axis=1)
    _, ids = np.unique(keys, axis=0, return_inverse=True)
    return [np.flatnonzero(ids.reshape(-1) == group) for group in range(ids.max() + 1)]
