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


def test_relevancy_through_the_vision_tower_matches_eager_reference(trace_for_relevancy):
    trace = trace_for_relevancy
    position = trace.answer_start + 1
    result = relevancy(trace, Target.logprob(position), vision=True)
    run = trace.run
    model = run.model
    model.set_attn_implementation({"text_config": "eager", "vision_config": "eager"})
    vision_weights: list[torch.Tensor] = []
    modules = [m for m in model.model.vision_tower.modules() if type(m).__name__ == "CLIPAttention"]

    def keep(module, args, output):
        output[1].retain_grad()
        vision_weights.append(output[1])

    handles = [module.register_forward_hook(keep) for module in modules]
    try:
        pixels = run.inputs["pixel_values"].clone().requires_grad_(True)
        inputs = {**run.inputs, "pixel_values": pixels}
        output = model(input_ids=run.input_ids, use_cache=False, output_attentions=True, **inputs)
        for attention in output.attentions:
            attention.retain_grad()
        torch.log_softmax(output.logits[0, position - 1].float(), -1)[run.input_ids[0, position]].backward()
        n = run.length
        text = torch.eye(n)
        for attention in output.attentions:
            text = text + (attention.grad[0] * attention[0]).clamp(min=0).mean(0).detach() @ text
        row = (text - torch.eye(n))[position - 1][torch.as_tensor(trace.image_positions)]
        tokens = vision_weights[0].shape[-1]
        vit = torch.eye(tokens)
        for weights in vision_weights:
            grad = torch.zeros_like(weights) if weights.grad is None else weights.grad
            vit = vit + (grad[0] * weights[0]).clamp(min=0).mean(0).detach() @ vit
        scattered = torch.zeros(tokens)
        scattered[1:] = row  # CLS first, then the 4×4 patches in raster order
        expected = (scattered @ vit)[1:].numpy()
    finally:
        for handle in handles:
            handle.remove()
        model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
        model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(result.values[0], expected, atol=1e-4, rtol=1e-3)
    assert not np.allclose(result.values[0], row.numpy(), atol=1e-6)  # the vision tower changed the map
