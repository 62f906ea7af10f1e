"""Every registered method on the accelerator, in float32 and bfloat16: the method contract of
``tests/methods/test_contract.py`` (spec, shapes, float32 finite values, model left as found) and the same map as
the same weights give on the CPU in float32 (tight in float32, loose in bfloat16). Then the methods that return
something other than a map (logit lens, projection, knockout, ablation, image share), relevancy through the vision
tower, and the evaluation helpers that run the model (faithfulness curves, the weight-randomisation check)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import mmviz
import mmviz.methods
from mmviz.evaluation import deletion_insertion, randomization_check
from mmviz.methods import CATALOGUE, Target
from tests.gpu.helpers import (
    assert_close_to_cpu,
    assert_left_as_found,
    dtype_id,
    found,
    tf32_off,
    weights,
)

QUICK = {"integrated_gradients": {"steps": 4}, "rise": {"n_masks": 8}}
"""Cheap settings, as in the CPU contract test: the same settings on both devices, so the maps are comparable."""


def fresh(trace: mmviz.Trace) -> mmviz.Trace:
    """The trace without kept maps and results, so every method really runs."""
    return dataclasses.replace(trace, maps={})


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_method_honours_its_spec_on_the_device_and_matches_the_cpu(traces, dtype, name):
    on_device, on_cpu = (fresh(t) for t in traces)
    spec = CATALOGUE[name]
    model = on_device.run.model
    before, values = found(model), weights(model)
    with tf32_off():
        result = on_device.compute(name, **QUICK.get(name, {}))
        expected = on_cpu.compute(name, **QUICK.get(name, {}))
    assert_left_as_found(model, before, values)
    assert (result.method, result.label, result.meaning) == (name, spec.label, spec.meaning)
    assert result.signed == spec.signed and result.rows == spec.rows
    assert (result.layers is not None) == spec.per_layer
    answer = np.arange(on_device.answer_start, len(on_device.tokens))
    expected_rows = on_device.query_positions if spec.rows == "queries" else answer
    np.testing.assert_array_equal(result.positions, expected_rows)
    np.testing.assert_array_equal(result.columns, on_device.image_positions)
    shape = (len(expected_rows), len(on_device.image_positions))
    assert result.values.shape == ((len(result.layers), *shape) if spec.per_layer else shape)
    assert result.values.dtype == np.float32 and np.isfinite(result.values).all()
    if not spec.signed:
        assert result.values.min() >= -1e-6
    assert_close_to_cpu(result.values, expected.values, dtype, name)
    if result.text_values is not None:
        assert_close_to_cpu(result.text_values, expected.text_values, dtype, f"{name} (text values)")


def _target(trace: mmviz.Trace) -> Target:
    return Target.logprob(trace.answer_start)


def _effect_delta(effect: mmviz.methods.Effect) -> np.ndarray:
    return np.asarray(effect.delta, dtype=np.float64)


def _curves(trace: mmviz.Trace) -> np.ndarray:
    """Deletion and insertion curves of a fixed ranking (the image tokens in reverse reading order)."""
    ranking = np.arange(len(trace.image_positions), dtype=np.float64)
    curves = deletion_insertion(trace, ranking, _target(trace), steps=4)
    return np.stack([curves.deletion, curves.insertion])


OTHER = {
    "image_share": lambda t: mmviz.methods.image_share(t).row_share,
    "logit_lens (answer probabilities)": lambda t: mmviz.methods.logit_lens(t).answer_probs,
    "projection (modality gap)": lambda t: mmviz.methods.projection(t).modality_gap,
    "knockout (image → targets)": lambda t: _effect_delta(mmviz.methods.knockout(t, layers=[0])),
    "ablate (first image tokens)": lambda t: _effect_delta(mmviz.methods.ablate(t, t.image_positions[:4])),
    "relevancy through the vision tower": lambda t: mmviz.methods.relevancy(t, vision=True).values,
    "deletion / insertion curves": lambda t: _curves(t),
}


@pytest.mark.parametrize("what", list(OTHER))
def test_the_other_methods_run_on_the_device_and_match_the_cpu(traces, dtype, what):
    on_device, on_cpu = (fresh(t) for t in traces)
    model = on_device.run.model
    before, values = found(model), weights(model)
    with tf32_off():
        got = np.asarray(OTHER[what](on_device))
        expected = np.asarray(OTHER[what](on_cpu))
    assert_left_as_found(model, before, values)
    assert_close_to_cpu(got, expected, dtype, what)


def test_the_logit_lens_reads_the_same_top_tokens_in_float32(traces, dtype):
    if dtype != torch.float32:
        pytest.skip("bfloat16 reorders near-ties among the top tokens")
    on_device, on_cpu = (fresh(t) for t in traces)
    with tf32_off():
        lens, expected = mmviz.methods.logit_lens(on_device), mmviz.methods.logit_lens(on_cpu)
    # Random weights leave near-ties (gaps of 1e-4 in log-probability): a top-1 counts where the CPU's is clear.
    clear = np.log(expected.top_probs[..., 0]) - np.log(expected.top_probs[..., 1]) > 1e-3
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(lens.top_ids[..., 0][clear], expected.top_ids[..., 0][clear])
    assert np.abs(lens.answer_ranks - expected.answer_ranks).max() <= 1, "a near-tie swaps one place at most"


def test_the_randomisation_check_restores_every_weight_on_the_device(traces, dtype):
    on_device = fresh(traces[0])
    model = on_device.run.model
    before, values = found(model), weights(model)
    result = randomization_check(on_device, mmviz.methods.gradient_x_input, steps=2)
    assert len(result.correlation) == 2 and np.isfinite(result.correlation).all(), dtype_id(dtype)
    assert_left_as_found(model, before, values)


def test_maps_and_rows_never_hold_device_tensors(traces):
    """Everything a trace keeps is host memory: numpy arrays, so a trace outlives the GPU and pickles nowhere."""
    on_device = fresh(traces[0])
    for name in ("attention", "relevancy", "gradient_x_input"):
        result = on_device.compute(name)
        assert isinstance(result.values, np.ndarray)
    assert isinstance(on_device.attention_rows, np.ndarray)
    assert on_device.hidden_states is None or isinstance(on_device.hidden_states, np.ndarray)
