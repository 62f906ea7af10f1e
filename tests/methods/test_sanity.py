"""The cascading weight-randomisation sanity check (it re-traces, so it sits above trace())."""

from __future__ import annotations

import torch

import mmviz
from mmviz.evaluation import randomization_check
from mmviz.methods import gradient_x_input


def test_randomization_check_restores_weights(fresh_llava, photo):
    model, processor = fresh_llava
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
    result = randomization_check(trace, gradient_x_input, steps=3)
    assert result.passed and result.correlation[-1] < 0.5
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
