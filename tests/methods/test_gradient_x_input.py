"""Gradient × input against finite differences of the score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmviz.methods import (
    Target,
    gradient_x_input,
)
from tests.methods.scoring import score_with


def test_gradient_x_input_matches_finite_differences(trace):
    target = Target.logprob(trace.answer_start)
    result = gradient_x_input(trace, target)
    columns = torch.as_tensor(trace.image_positions)
    clean = trace.run.embeddings()[:, columns]
    for column in np.argsort(-np.abs(result.values[0]))[:3]:  # the largest entries: well above rounding noise
        step = 1e-2
        up, down = clean.clone(), clean.clone()
        up[0, column] *= 1 + step
        down[0, column] *= 1 - step
        derivative = (score_with(trace, target, up) - score_with(trace, target, down)) / (2 * step)
        assert result.values[0, column] == pytest.approx(derivative, rel=2e-2, abs=1e-5)
