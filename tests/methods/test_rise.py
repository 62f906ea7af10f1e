"""RISE: random soft token masks."""

from __future__ import annotations

import numpy as np

from mmviz.methods import (
    Target,
    rise,
)
from mmviz.methods.rise import random_masks


def test_rise_masks_and_determinism(trace):
    masks = random_masks(trace.layout, trace.image_positions, 200, window=2, keep=0.5, seed=0)
    assert masks.min() >= 0 and masks.max() <= 1 and abs(float(masks.mean()) - 0.5) < 0.08
    first = rise(trace, Target.logprob(trace.answer_start), n_masks=32, seed=1)
    again = rise(trace, Target.logprob(trace.answer_start), n_masks=32, seed=1)
    other = rise(trace, Target.logprob(trace.answer_start), n_masks=32, seed=2)
    np.testing.assert_array_equal(first.values, again.values)
    assert not np.array_equal(first.values, other.values)
