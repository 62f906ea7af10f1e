"""Occlusion: one block at a time replaced by the baseline."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.methods import (
    Target,
    ablate,
    occlusion,
)


def test_occlusion_window_one_equals_single_token_ablation(trace):
    target = Target.logprob(trace.answer_start)
    result = occlusion(trace, target, window=1, baseline="mean")
    for column in (0, 7, 15):
        effect = ablate(trace, [int(trace.image_positions[column])], target, baseline="mean")
        assert result.values[0, column] == pytest.approx(-effect.delta[0], abs=1e-5)
    blocks = occlusion(trace, target, window=2, baseline="mean").values[0].reshape(4, 4)
    assert np.allclose(blocks[:2, :2], blocks[0, 0])  # one value per 2×2 block
