"""MLP neurons per position against a by-hand MLP, their cards against a by-hand logit lens, the budget and the
model left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmviz
from mmviz.capture import snapshot
from mmviz.errors import InputError
from mmviz.features import neurons


@pytest.fixture(scope="module")
def trace(llava_small, photo):
    model, processor = llava_small
    return mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")


def _by_hand(trace, layer):
    """act(gate(x)) · up(x) from the MLP's own input, recorded by a hook written here."""
    mlp = trace.run.adapter.decoder_layers()[layer].mlp
    seen = []
    handle = mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()[0]))
    try:
        with torch.no_grad():
            trace.run.forward(first_logit=trace.run.length - 1)
    finally:
        handle.remove()
    with torch.no_grad():
        return (mlp.act_fn(mlp.gate_proj(seen[0])) * mlp.up_proj(seen[0])).numpy()


@pytest.mark.parametrize("layer", [0, 2])
def test_neurons_match_the_mlp_computed_by_hand(trace, layer):
    model = trace.run.model
    before = snapshot(model)
    mlp = neurons(trace, layer, k=5)
    expected = _by_hand(trace, layer)
    assert snapshot(model) == before
    assert mlp.indices.shape == (len(trace.tokens), 5) and mlp.values.dtype == np.float16
    np.testing.assert_allclose(mlp.values.astype(np.float32), -np.sort(-expected, axis=1)[:, :5], rtol=2e-3, atol=1e-4)
    for unit in (0, 7, expected.shape[1] - 1):
        np.testing.assert_allclose(mlp.activation(unit), expected[:, unit], rtol=2e-3, atol=1e-4)
    position = int(trace.image_positions[3])
    best = [int(u) for u in np.argsort(-expected[position])[:5] if expected[position, u] > 0]
    assert [u for u, _ in mlp.top_at(position)] == best


def test_a_neuron_card_reads_its_output_direction_through_the_lens(trace):
    mlp = neurons(trace, 1, k=4)
    card = mlp.card(11, k=6)
    adapter = trace.run.adapter
    direction = adapter.mlp_output_projection(1).weight[:, 11].detach()
    with torch.no_grad():
        ids = adapter.lens_logits(direction[None]).float()[0].topk(6).indices.tolist()
    assert card.top_tokens == adapter.display_tokens(ids)
    assert card.peak_activation == pytest.approx(float(mlp.activation(11).max()))


def test_bad_arguments_and_a_small_budget_say_what_to_do(trace):
    with pytest.raises(InputError, match="decoder layer"):
        neurons(trace, 99)
    with pytest.raises(InputError, match="k must be"):
        neurons(trace, 0, k=0)
    with pytest.raises(mmviz.CaptureBudgetError, match="raise budget_bytes"):
        neurons(trace, 0, budget_bytes=100)
    mlp = neurons(trace, 0, k=3)
    with pytest.raises(InputError, match="unit must be"):
        mlp.activation(10**6)
    with pytest.raises(InputError, match="outside the sequence"):
        mlp.top_at(10**6)


def test_activations_past_float16s_range_are_kept_at_its_edge():
    from mmviz.features.codes import top_k

    indices, values = top_k(torch.tensor([[1e6, 2.0, -1e6]]), 2)
    assert indices.tolist() == [[0, 1]] and np.isfinite(values).all() and values[0, 0] == np.float16(65504)
