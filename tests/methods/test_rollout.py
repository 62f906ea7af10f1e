"""Attention rollout."""

from __future__ import annotations

import numpy as np
import torch

from mmviz.methods import (
    rollout,
)


def _eager_attention(trace) -> list[torch.Tensor]:
    run = trace.run
    run.model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            output = run.model(input_ids=run.input_ids, use_cache=False, output_attentions=True, **run.inputs)
    finally:
        run.model.set_attn_implementation({"text_config": "sdpa"})
    return [a[0].double().mean(0) for a in output.attentions]


def test_rollout_rows_sum_to_one_and_match_matrix_product(trace):
    result = rollout(trace)
    np.testing.assert_allclose(result.text_values.sum(-1), 1.0, atol=1e-5)
    n = len(trace.tokens)
    product = torch.eye(n, dtype=torch.float64)
    for mixed in _eager_attention(trace):  # R = Â_L … Â_1 built the slow way, from eager attention
        step = 0.5 * mixed + 0.5 * torch.eye(n, dtype=torch.float64)
        product = (step / step.sum(-1, keepdim=True)) @ product
    expected = product[torch.as_tensor(trace.query_positions)].numpy()
    np.testing.assert_allclose(result.text_values, expected, atol=1e-5)
    masked = rollout(trace, mask_sinks=True)
    assert masked.text_values[:, 1:].sum() > result.text_values[:, 1:].sum()
