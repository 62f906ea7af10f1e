"""The planted colour feature (tests/features/planted.py) on the shapes model: it lights up on that colour's
object, is listed first there, and switched off it lowers that colour's answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmviz
from mmviz.capture import snapshot
from mmviz.features import clamp, encode, load_sae
from mmviz.zoo import scene
from tests.features.planted import planted_sae

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes_vlm():
    return mmviz.zoo.load("shapes-vlm")


@pytest.fixture(scope="module")
def sae(shapes_vlm, tmp_path_factory):
    return load_sae(planted_sae(*shapes_vlm, tmp_path_factory.mktemp("sae") / "red"))


def _red_questions(model, processor, seeds):
    for seed in seeds:
        s = scene(seed)
        for question in s.questions:
            if question.answer == "red":
                trace = mmviz.trace(model, processor, s.image, question.text, answer=question.answer)
                yield trace, s.objects[question.object_index]


def test_the_planted_feature_lights_the_object_and_switching_it_off_lowers_the_colour(shapes_vlm, sae):
    model, processor = shapes_vlm
    before, weights = snapshot(model), [p.detach().clone() for p in model.parameters()]
    deltas, listed_first, inside = [], 0, 0
    for trace, obj in _red_questions(model, processor, range(300, 330)):  # held out from the probe's scenes
        codes = encode(trace, sae, k=4)
        activation = codes.activation(0)[trace.image_positions]
        peak = int(trace.image_positions[np.argmax(activation)])
        x0, y0, x1, y1 = trace.layout.boxes[peak]
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        inside += obj.box[0] <= centre[0] < obj.box[2] and obj.box[1] <= centre[1] < obj.box[3]
        listed_first += codes.top_at(peak)[0][0] == 0
        effect = clamp(trace, sae, 0, 0.0, positions=trace.image_positions, targets=trace.answer_start)
        deltas.append(float(effect.delta[0]))
    assert len(deltas) >= 8
    assert inside == len(deltas) and listed_first == len(deltas)
    assert np.mean(np.array(deltas) <= -2.0) >= 0.75 and np.median(deltas) < -4, deltas
    assert snapshot(model) == before, "hooks removed, flags restored"
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True)), "weights untouched"


def test_both_layouts_give_the_same_codes_and_the_card_names_the_label(shapes_vlm, sae, tmp_path_factory):
    model, processor = shapes_vlm
    trace, _ = next(_red_questions(model, processor, range(300, 330)))
    sparsify = load_sae(sae.source + "-sparsify", depth=0)
    a, b = encode(trace, sae, k=4), encode(trace, sparsify, k=4)
    np.testing.assert_allclose(a.activation(0), b.activation(0), atol=1e-5)
    card = a.card(0)
    assert card.label == "red object" and card.active_positions > 0 and len(card.top_tokens) == 8
    activation = a.activation(0)
    assert card.peak_activation == pytest.approx(activation.max())
    assert activation[card.peak_position] == activation.max()


def test_encoding_in_blocks_matches_one_block_and_a_tiny_budget_is_refused(shapes_vlm, sae):
    model, processor = shapes_vlm
    trace, _ = next(_red_questions(model, processor, range(300, 330)))
    whole = encode(trace, sae, k=4)
    blocks = encode(trace, sae, k=4, budget_bytes=3 * (3 * sae.d_sae + sae.d_in) * 4)  # three positions a block
    np.testing.assert_array_equal(whole.indices, blocks.indices)
    np.testing.assert_allclose(whole.reconstruction_error, blocks.reconstruction_error, rtol=1e-5)
    with pytest.raises(mmviz.CaptureBudgetError, match="raise budget_bytes"):
        encode(trace, sae, budget_bytes=16)
