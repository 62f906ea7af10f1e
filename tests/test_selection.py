"""One selection vocabulary: layers are decoder layers 0 … L−1 or "mean", heads 0 … H−1 or "mean", depths 0 … L.

Out-of-range selections, from either end, raise InputError naming the valid range wherever one is accepted:
nothing counts from the end and nothing wraps (a 4-layer model's layer 100 used to read as layer 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import traitlets

import mmviz
from mmviz import plots, selection
from mmviz.capture import CapturePlan
from mmviz.errors import InputError
from mmviz.methods import attention, knockout, knockout_map, rollout


def test_the_validator_accepts_indices_and_named_values_only():
    assert selection.layer(np.int64(2), 4) == 2 and selection.layer("mean", 4) == "mean"
    assert selection.layers([3, 1, 3], 4) == (1, 3) and selection.heads(range(2), 2) == (0, 1)
    assert selection.depth(4, 5) == 4
    for bad in (4, -1, -4, 100, True, 1.0, "last", None):
        with pytest.raises(InputError, match=r"decoder layer in 0…3 or 'mean'"):
            selection.layer(bad, 4)
    with pytest.raises(InputError, match=r"decoder layer in 0…3$"):
        selection.layer("mean", 4, mean=False)
    with pytest.raises(InputError, match="is empty"):
        selection.layers([], 4)
    assert selection.layers([], 4, empty=True) == ()
    with pytest.raises(InputError, match="list of indices"):
        selection.layers("0", 4)


@pytest.fixture(scope="module")
def edges(small_trace):
    """The first invalid value past each end of the layer and head ranges."""
    return {"layer": (-1, small_trace.num_layers), "head": (-1, small_trace.num_heads)}


def test_the_trace_and_its_maps_refuse_layers_and_heads_outside_the_model(small_trace, edges):
    last = small_trace.num_layers - 1
    for layer in edges["layer"]:
        with pytest.raises(InputError, match=rf"layer {layer} is out of range: choose a decoder layer in 0…{last}"):
            small_trace.attention(layer=layer)
    for head in edges["head"]:
        with pytest.raises(InputError, match=rf"head {head} is out of range.*0…{small_trace.num_heads - 1}"):
            small_trace.attention(head=head)
    per_layer = attention(small_trace)
    position = int(per_layer.positions[0])
    np.testing.assert_array_equal(per_layer.row(position, layer=last), per_layer.row(position))
    np.testing.assert_allclose(per_layer.row(position, layer="mean"), per_layer.values[:, 0].mean(axis=0))
    for layer in edges["layer"]:
        with pytest.raises(InputError, match="out of range"):
            per_layer.row(position, layer=layer)


def test_methods_refuse_layers_and_heads_outside_the_model(small_trace, edges):
    too_far = small_trace.num_layers + 96
    with pytest.raises(InputError, match=rf"layer {too_far} is out of range"):  # the example: it read layer 0
        attention(small_trace, layers=[too_far])
    for layer in edges["layer"]:
        with pytest.raises(InputError, match="decoder layer in 0…"):
            attention(small_trace, layers=[layer])
        with pytest.raises(InputError, match="decoder layer in 0…"):
            knockout(small_trace, layers=[layer])
        with pytest.raises(InputError, match="decoder layer in 0…"):
            knockout_map(small_trace, layers=[0, layer], window=4)
        with pytest.raises(InputError, match=r"start_layer .* out of range"):
            rollout(small_trace, start_layer=layer)
    for head in edges["head"]:
        with pytest.raises(InputError, match="head in 0…"):
            attention(small_trace, heads=head)
        with pytest.raises(InputError, match="head in 0…"):
            attention(small_trace, heads=[0, head])
    for position in (-1, len(small_trace.tokens)):
        with pytest.raises(InputError, match="sequence position in 0…"):
            knockout(small_trace, sources=[position])


def test_capture_plans_refuse_layers_the_model_does_not_have(llava_small, photo, edges):
    model, processor = llava_small
    for layer in edges["layer"]:
        with pytest.raises(InputError, match="decoder layer in 0…"):
            mmviz.trace(model, processor, photo, "What?", answer="A cat.", capture=CapturePlan(layers=[layer]))


def test_the_inspector_and_the_plots_use_the_same_vocabulary(small_trace, edges):
    inspector = mmviz.Inspector(small_trace)
    inspector.layer, inspector.head = "mean", "mean"
    for layer in edges["layer"]:
        with pytest.raises(traitlets.TraitError, match="decoder layer in 0…"):
            inspector.layer = layer
    for head in edges["head"]:
        with pytest.raises(traitlets.TraitError, match="head in 0…"):
            inspector.head = head
    with pytest.raises(InputError, match="decoder layer in 0…"):
        inspector.extra("heads", small_trace.num_layers)
    depths = small_trace.num_layers + 1
    for depth in (-1, depths):
        with pytest.raises(InputError, match=rf"depth {depth} is out of range.*0…{depths - 1}"):
            plots.projection(small_trace, depth=depth)
