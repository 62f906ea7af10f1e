"""Patch ablation: replacing chosen image tokens."""

from __future__ import annotations

import numpy as np

from mmviz.methods import (
    ablate,
)


def test_ablating_nothing_changes_nothing(trace):
    effect = ablate(trace, [])
    assert (effect.delta == 0).all()
    everything = ablate(trace, trace.image_positions)
    assert np.abs(everything.delta).max() > 1e-4
