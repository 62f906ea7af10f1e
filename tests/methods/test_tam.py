"""Token activation maps: the ECI residual against a formula written out here, and the rank-Gaussian filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmviz.methods import tam
from mmviz.methods.tam import rank_gaussian_filter


def test_tam_residual_matches_the_formula(trace):
    position = trace.answer_start + 1
    result = tam(trace, position, filtered=False)
    run = trace.run
    with torch.no_grad():
        logits = run.model(input_ids=run.input_ids, use_cache=False, **run.inputs).logits[0].double()
    ids, columns = trace.token_ids, trace.image_positions
    own = logits[columns, ids[position]].clamp_min(0)
    context = [j for j in range(1, position) if j not in set(columns.tolist()) and ids[j] != ids[position]]
    weights = logits[context, ids[position]].clamp_min(0)
    weights = weights / weights.sum()
    interference = logits[columns][:, ids[context]].clamp_min(0) @ weights
    scale = float(own @ interference / (interference @ interference))
    residual = (own - scale * interference).clamp_min(0).numpy()
    np.testing.assert_allclose(result.values[0], residual / residual.max(), rtol=1e-4, atol=1e-6)
    assert result.info["interference_scale"][0] == pytest.approx(scale, rel=1e-4)


def test_rank_gaussian_filter_keeps_flat_maps_and_removes_isolated_spikes(trace):
    columns = trace.image_positions  # a 4×4 grid
    np.testing.assert_allclose(rank_gaussian_filter(np.full(16, 0.5), trace, columns), 0.5)
    np.testing.assert_array_equal(rank_gaussian_filter(np.zeros(16), trace, columns), 0.0)
    spike = np.zeros(16)
    spike[5] = 1.0
    assert rank_gaussian_filter(spike, trace, columns)[5] < 0.2, "one hot cell among zeros is noise"
    block = np.zeros(16)
    block[[0, 1, 4, 5]] = 1.0
    filtered = rank_gaussian_filter(block, trace, columns)
    assert filtered[[0, 1, 4, 5]].min() > filtered[[10, 11, 14, 15]].max(), "a region survives"
    default = tam(trace)
    assert default.values.shape == (len(trace.tokens) - trace.answer_start, 16) and default.values.max() <= 1.0
