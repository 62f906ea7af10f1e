"""Relevancy through the dO·Vᵀ identity equals an eager-mode reference of the same rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmviz
from mmviz.methods import Target, relevancy


def eager_relevancy(trace: mmviz.Trace, position: int) -> np.ndarray:
    """Reference: eager attention weights with retain_grad, full R matrices, R ← R + Ā·R layer by layer."""
    run = trace.run
    model = run.model
    model.set_attn_implementation({"text_config": "eager"})
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        output = model(
            input_ids=run.input_ids,
            attention_mask=torch.ones_like(run.input_ids),
            use_cache=False,
            output_attentions=True,
            **run.inputs,
        )
        attentions = output.attentions
        for attention in attentions:
            attention.retain_grad()
        score = torch.log_softmax(output.logits[0, position - 1].float(), -1)[run.input_ids[0, position]]
        score.backward()
        n = run.length
        relevance = torch.eye(n)
        for attention in attentions:
            weighted = (attention.grad[0] * attention[0]).clamp(min=0).mean(0).detach()
            relevance = relevance + weighted @ relevance
        return (relevance - torch.eye(n))[position - 1].numpy()
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
        model.zero_grad(set_to_none=True)
        for parameter in model.parameters():
            parameter.requires_grad_(True)


@pytest.fixture(scope="module")
def trace_for_relevancy(llava_small, photo):
    model, processor = llava_small
    return mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")


def test_relevancy_matches_eager_reference(trace_for_relevancy):
    trace = trace_for_relevancy
    result = relevancy(trace)
    assert result.values.shape == (len(trace.tokens) - trace.answer_start, len(trace.image_positions))
    for row, position in enumerate(result.positions):
        expected = eager_relevancy(trace, int(position))
        np.testing.assert_allclose(result.text_values[row], expected, atol=1e-4, rtol=1e-3)
        assert np.abs(expected[trace.image_positions]).max() > 0  # the comparison is not between zeros


def test_relevancy_targets_are_fresh(trace_for_relevancy):
    """Each target's map equals the map computed for it alone (no stale or accumulated gradients)."""
    trace = trace_for_relevancy
    together = relevancy(trace)
    for row, position in enumerate(together.positions):
        alone = relevancy(trace, Target.logprob(int(position)))
        np.testing.assert_allclose(together.values[row], alone.values[0], atol=1e-6)
