"""Methods that run the model again: gradients, IG, occlusion, RISE, knockout, ablation, sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmviz
from mmviz.capture.run import replacing_columns
from mmviz.errors import InputError
from mmviz.methods import (
    Target,
    ablate,
    grad_cam,
    gradient_x_input,
    integrated_gradients,
    knockout,
    knockout_map,
    occlusion,
    randomization_check,
    rise,
)
from mmviz.methods.knockout import scores
from mmviz.methods.rise import random_masks


def _score_with(trace, target: Target, values: torch.Tensor) -> float:
    run = trace.run
    columns = torch.as_tensor(trace.image_positions)
    with torch.no_grad():
        logits = run.forward(edit=replacing_columns(columns, values), first_logit=target.first_logit)
    return float(target(logits, run.input_ids, target.first_logit)[0])


def test_targets_read_the_predicting_row(trace):
    run = trace.run
    span = Target.span(range(trace.answer_start, len(trace.tokens)))
    assert scores(run, [span])[0] == pytest.approx(trace.answer_logprobs.sum(), abs=1e-4)
    first = trace.answer_start
    other = int(trace.token_ids[first + 1])
    logit, contrast = scores(run, [Target.logit(first), Target.contrast(first, other)])
    with torch.no_grad():
        row = run.model(input_ids=run.input_ids, use_cache=False, **run.inputs).logits[0, first - 1]
    assert logit == pytest.approx(float(row[trace.token_ids[first]]), abs=1e-4)
    assert contrast == pytest.approx(float(row[trace.token_ids[first]] - row[other]), abs=1e-4)
    with pytest.raises(InputError, match="1…"):
        gradient_x_input(trace, [0])


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
        derivative = (_score_with(trace, target, up) - _score_with(trace, target, down)) / (2 * step)
        assert result.values[0, column] == pytest.approx(derivative, rel=2e-2, abs=1e-5)


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


def test_integrated_gradients_completeness(trace):
    result = integrated_gradients(trace, Target.logprob(trace.answer_start))
    assert result.info["completeness_error"][0] < 0.05
    columns = torch.as_tensor(trace.image_positions)
    clean = trace.run.embeddings()[:, columns]
    blurred = trace.run.embeddings(trace.run.blurred_inputs())[:, columns]
    target = Target.logprob(trace.answer_start)
    change = _score_with(trace, target, clean) - _score_with(trace, target, blurred)
    assert result.values.sum() == pytest.approx(change, rel=0.05, abs=1e-4)


def test_occlusion_window_one_equals_single_token_ablation(trace):
    target = Target.logprob(trace.answer_start)
    result = occlusion(trace, target, window=1, fill="mean")
    for column in (0, 7, 15):
        effect = ablate(trace, [int(trace.image_positions[column])], target, fill="mean")
        assert result.values[0, column] == pytest.approx(-effect.delta[0], abs=1e-5)
    blocks = occlusion(trace, target, window=2, fill="mean").values[0].reshape(4, 4)
    assert np.allclose(blocks[:2, :2], blocks[0, 0])  # one value per 2×2 block


def test_rise_masks_and_determinism(trace):
    masks = random_masks(trace.layout, trace.image_positions, 200, cell=2, keep=0.5, seed=0)
    assert masks.min() >= 0 and masks.max() <= 1 and abs(float(masks.mean()) - 0.5) < 0.08
    first = rise(trace, Target.logprob(trace.answer_start), n_masks=32, seed=1)
    again = rise(trace, Target.logprob(trace.answer_start), n_masks=32, seed=1)
    other = rise(trace, Target.logprob(trace.answer_start), n_masks=32, seed=2)
    np.testing.assert_array_equal(first.values, again.values)
    assert not np.array_equal(first.values, other.values)


def test_ablating_nothing_changes_nothing(trace):
    effect = ablate(trace, [])
    assert (effect.delta == 0).all()
    everything = ablate(trace, trace.image_positions)
    assert np.abs(everything.delta).max() > 1e-4


def test_knockout_of_every_image_edge_makes_the_answer_image_blind(llava_small, photo):
    model, processor = llava_small
    other = photo.transpose(0).rotate(180)
    question, answer = "What is in the picture?", "A red square."
    traces = [mmviz.trace(model, processor, image, question, answer=answer) for image in (photo, other)]
    clean = [scores(t.run, [Target.span(range(t.answer_start, len(t.tokens)))])[0] for t in traces]
    assert abs(clean[0] - clean[1]) > 1e-4  # the image matters before the knockout
    blind = [knockout(t, Target.span(range(t.answer_start, len(t.tokens))), to="all").changed[0] for t in traces]
    assert blind[0] == pytest.approx(blind[1], abs=1e-5)
    untouched = knockout(traces[0], layers=[])
    assert (untouched.delta == 0).all()


def test_knockout_map_blocks(trace):
    result = knockout_map(trace, Target.logprob(trace.answer_start), window=2)
    assert result.values.shape == (1, 16) and np.abs(result.values).max() > 0
    assert np.allclose(result.values[0].reshape(4, 4)[:2, :2], result.values[0, 0])


def test_randomization_check_restores_weights(fresh_llava, photo):
    model, processor = fresh_llava
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
    result = randomization_check(trace, gradient_x_input, steps=3)
    assert result.passed and result.correlation[-1] < 0.5
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
