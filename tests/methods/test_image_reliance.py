"""Image reliance per answer token on the shapes model, against KLs computed by hand from two forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmviz
from mmviz.errors import InputError
from mmviz.methods import Target, gradient_x_input, image_dependent_targets, image_reliance, integrated_gradients
from mmviz.methods.common import scores
from mmviz.zoo.shapes import COLOR_QUESTION


@pytest.fixture(scope="module")
def shapes():
    return mmviz.zoo.load("shapes-vlm")


@pytest.fixture(scope="module")
def colour_trace(shapes) -> mmviz.Trace:
    """The colour question of a held-out scene, answered with the colour word and the end of the answer."""
    model, processor = shapes
    world = mmviz.zoo.scene(3)
    question = next(q for q in world.questions if q.text.startswith(COLOR_QUESTION.split("{")[0]))
    tokenizer = processor.tokenizer
    answer = [tokenizer.convert_tokens_to_ids(question.answer), tokenizer.convert_tokens_to_ids("</s>")]
    return mmviz.trace(model, processor, world.image, question.text, answer=answer)


def hand_kl(model, input_ids, pixel_values, other_pixels, start):
    """KL(p ‖ q) and log p − log q of the answer tokens, from two plain forwards of the model."""
    with torch.no_grad():
        real = model(input_ids=input_ids, pixel_values=pixel_values, use_cache=False).logits[0].double()
        other = model(input_ids=input_ids, pixel_values=other_pixels, use_cache=False).logits[0].double()
    p, q = torch.log_softmax(real, -1), torch.log_softmax(other, -1)
    rows = torch.arange(start - 1, input_ids.shape[1] - 1)
    ids = input_ids[0, start:]
    kl = (p[rows].exp() * (p[rows] - q[rows])).sum(-1)
    return kl.numpy(), (p[rows, ids] - q[rows, ids]).numpy()


@pytest.mark.parametrize("baseline", ["blur", "blank"])
def test_kl_equals_two_forwards_by_hand(colour_trace, shapes, baseline):
    model, processor = shapes
    run = colour_trace.run
    if baseline == "blur":
        other = run.blurred_inputs()["pixel_values"]
    else:
        grey = Image.new("RGB", colour_trace.images[0].size, (128, 128, 128))
        other = processor.image_processor([grey], return_tensors="pt")["pixel_values"]
    kl, pcxmi = hand_kl(model, run.input_ids, run.inputs["pixel_values"], other, colour_trace.answer_start)
    reliance = image_reliance(colour_trace, baseline)
    np.testing.assert_allclose(reliance.kl, kl, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(reliance.pcxmi, pcxmi, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(reliance.real_logprobs, colour_trace.answer_logprobs, atol=1e-5)
    assert image_reliance(colour_trace, baseline) is reliance, "kept on the trace, not rerun"


@pytest.mark.parametrize("baseline", ["blur", "blank", "mean"])
def test_the_colour_depends_on_the_image_and_the_end_does_not(colour_trace, baseline):
    reliance = image_reliance(colour_trace, baseline)
    assert reliance.tokens[-1] == "</s>"
    colour, end = reliance.kl
    # a blurred image keeps the shapes' colours, so it moves the colour word far less than a blank one
    floor = 5e-3 if baseline == "blur" else 1.0
    assert colour > floor and end < 1e-4 and colour > 100 * end, reliance
    assert reliance.pcxmi[0] > floor / 10, "the real image made the colour word more likely"
    threshold = floor / 2
    np.testing.assert_array_equal(reliance.dependent(threshold), [colour_trace.answer_start])
    np.testing.assert_array_equal(reliance.dependent(threshold=0.0, top=2), reliance.positions)
    (target,) = image_dependent_targets(colour_trace, threshold=threshold, baseline=baseline)
    assert target == Target.logprob(colour_trace.answer_start)
    with pytest.raises(InputError, match="no answer token"):
        image_dependent_targets(colour_trace, threshold=1e6, baseline=baseline)


def test_image_contrast_target_is_log_p_real_minus_log_p_baseline(colour_trace):
    start = colour_trace.answer_start
    reliance = image_reliance(colour_trace, "blur")
    (resolved,) = image_dependent_targets(colour_trace, top=1, contrast=True)
    assert resolved.reference == pytest.approx(reliance.baseline_logprobs[0])
    assert scores(colour_trace.run, [resolved])[0] == pytest.approx(reliance.pcxmi[0], abs=1e-4)
    # a constant offset: gradients, and so gradient maps, are those of the log-probability
    contrast = gradient_x_input(colour_trace, Target.image_contrast(start))
    np.testing.assert_allclose(contrast.values, gradient_x_input(colour_trace, start).values, rtol=1e-5, atol=1e-7)
    # IG from the same blurred baseline explains the contrast exactly: attributions add up to the P-CXMI
    ig = integrated_gradients(colour_trace, Target.image_contrast(start), steps=16, baseline="blur")
    assert ig.values.sum() == pytest.approx(reliance.pcxmi[0], rel=0.02)
    with pytest.raises(InputError, match="baseline value"):
        Target.image_contrast(start)(torch.zeros(1, 2, 4), colour_trace.run.input_ids, start - 1)


def test_image_reliance_is_saved_with_the_trace(colour_trace, tmp_path):
    reliance = image_reliance(colour_trace, "mean")
    loaded = mmviz.load(colour_trace.save(tmp_path / "scene.mmviz"))
    kept = loaded.results["image_reliance:baseline=mean"]
    np.testing.assert_allclose(kept.kl, reliance.kl)
    assert kept.tokens == reliance.tokens and kept.baseline == "mean"
    with pytest.raises(InputError, match="baseline must be"):
        image_reliance(colour_trace, "zero")
