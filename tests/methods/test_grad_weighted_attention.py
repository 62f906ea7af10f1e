"""Gradient-weighted attention at one layer equals A ⊙ (∂F/∂A)⁺ from eager attention with retain_grad."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmviz.errors import InputError
from mmviz.methods import grad_weighted_attention
from mmviz.methods.grad_weighted_attention import default_layer


def test_grad_weighted_attention_matches_an_eager_reference(trace):
    position, layer = trace.answer_start + 1, 1
    result = grad_weighted_attention(trace, position, layer=layer)
    run = trace.run
    model = run.model
    model.set_attn_implementation({"text_config": "eager"})
    try:
        output = model(input_ids=run.input_ids, use_cache=False, output_attentions=True, **run.inputs)
        attention = output.attentions[layer]
        attention.retain_grad()
        torch.log_softmax(output.logits[0, position - 1].float(), -1)[run.input_ids[0, position]].backward()
        row = (attention[0, :, position - 1] * attention.grad[0, :, position - 1].clamp_min(0)).mean(0)
        expected = row.detach()[trace.image_positions].numpy()
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
        model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(result.values[0], expected, rtol=1e-4, atol=1e-9)
    assert result.info["layer"] == layer and expected.max() > 0


def test_the_default_layer_is_middle_to_late(trace):
    assert [default_layer(n) for n in (1, 3, 4, 32)] == [0, 2, 2, 21]
    assert grad_weighted_attention(trace).info["layer"] == default_layer(trace.num_layers)
    with pytest.raises(InputError):
        grad_weighted_attention(trace, layer=trace.num_layers)


@pytest.mark.parametrize("name", ["grad_weighted_attention", "tam", "relative_attention"])
def test_maps_change_when_the_weights_are_randomised(fresh_llava, photo, name):
    """The cascading randomisation check (Adebayo et al.): the map depends on what the model learned."""
    import mmviz
    from mmviz.evaluation import randomization_check

    model, processor = fresh_llava
    traced = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
    result = randomization_check(traced, lambda t: t.compute(name), steps=2)
    assert result.correlation[-1] < 0.9, result
