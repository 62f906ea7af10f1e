"""Grad-CAM against an autograd reference over every layer."""

from __future__ import annotations

import numpy as np
import torch

from mmviz.methods import (
    Target,
    grad_cam,
)


def test_grad_cam_matches_autograd_reference(trace):
    target = Target.logprob(trace.answer_start + 1)
    result = grad_cam(trace, target)
    run = trace.run
    columns = torch.as_tensor(trace.image_positions)
    model = run.model
    output = model(input_ids=run.input_ids, use_cache=False, output_hidden_states=True, **run.inputs)
    states = output.hidden_states[1:-1]  # outputs of layers 0 … L-2 (the last entry is after the final norm)
    for state in states:
        state.retain_grad()
    torch.log_softmax(output.logits[0, target.first_logit], -1)[run.input_ids[0, target.position]].backward()
    for layer, state in enumerate(states):
        x, g = state[0, columns].detach(), state.grad[0, columns]
        expected = torch.relu(x @ g.mean(0)).numpy()
        np.testing.assert_allclose(result.values[layer, 0], expected, rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)
    assert result.values.shape == (3, 1, 16) and result.values.max() > 0
