"""One projection frame for every depth."""

from __future__ import annotations

import pytest

from mmviz.errors import InputError
from mmviz.methods import (
    projection,
)


def test_projection_is_one_frame_for_all_layers(trace_all_rows):
    result = projection(trace_all_rows)
    depths = trace_all_rows.hidden_states.shape[0]
    assert result.coords.shape == (depths, len(trace_all_rows.tokens), 2)
    assert 0 < result.explained <= 1
    assert result.is_image.sum() == 16 and (result.grid[~result.is_image] == -1).all()
    assert (result.modality_gap >= 0).all() and (result.modality_gap <= 2).all()
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="umap-learn"):
            projection(trace_all_rows, method="umap")
