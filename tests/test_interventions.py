"""``mmviz.interventions``: the objects round trip as plain data, ``apply`` is exactly ``mmviz.methods.ablate`` /
``knockout``, runs are kept across save → load, a loaded trace without its model refuses to run with a clear
message, and the model is left as found, also when an intervention fails midway."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mmviz
import mmviz.methods.ablation
from mmviz import interventions
from mmviz.capture import snapshot
from mmviz.errors import InputError
from mmviz.interventions import Ablate, Knockout, from_dict, history, knockout_curve, object_patches
from mmviz.methods import ablate, knockout
from mmviz.methods.ablation import image_inputs
from mmviz.zoo import scene

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes_vlm():
    return mmviz.zoo.load("shapes-vlm")


@pytest.fixture(scope="module")
def shapes_scene():
    s = scene(301)
    return s, next(q for q in s.questions if q.text.startswith("What color"))


@pytest.fixture()
def shapes_trace(shapes_vlm, shapes_scene):
    model, processor = shapes_vlm
    s, q = shapes_scene
    return mmviz.trace(model, processor, s.image, q.text, answer=q.answer)


@pytest.mark.parametrize(
    "item",
    [
        Ablate([7, 5, 5, 6]),
        Ablate((3,), fill="blur"),
        Ablate((3, 4), fill="paint"),
        Knockout(range(0, 2)),
        Knockout([1], to="last_prompt"),
        Knockout([0, 2], sources=[3, 4], to=[70, 71]),
    ],
)
def test_objects_round_trip_as_plain_json(item):
    data = json.loads(json.dumps(item.to_dict()))
    assert from_dict(data) == item
    assert isinstance(item.describe(), str) and item.describe()


def test_positions_are_normalised_and_bad_fields_refused():
    assert Ablate(np.array([9, 3, 3])).positions == (3, 9)
    assert Knockout([2.0, 1]).layers == (1, 2)  # JSON numbers may arrive as floats
    for bad in (
        lambda: Ablate([]),
        lambda: Ablate([1.5]),
        lambda: Ablate([True]),
        lambda: Ablate([-1]),
        lambda: Ablate("12"),
        lambda: Ablate([1], fill="noise"),
        lambda: Ablate([1], fill="other"),  # no other_image
        lambda: Ablate([1], fill="zero", other_image=np.zeros((4, 4, 3), np.uint8)),  # other_image, wrong fill
        lambda: Ablate([1], fill="other", other_image="/no/such/image.png"),
        lambda: Ablate([1], fill="other", other_image=np.zeros((4, 4, 3), np.float32)),
        lambda: Ablate([1], fill="other", other_image=np.zeros((4, 4, 5), np.uint8)),
        lambda: Ablate([1], fill="other", other_image=[[[300, 0, 0]]]),
        lambda: Ablate([1], fill="other", other_image=[[1, 2], [3]]),
        lambda: Ablate([1], fill="other", other_image=12),
        lambda: Knockout([0], to="everything"),
        lambda: Knockout([0], sources="text"),
        lambda: from_dict({"kind": "ablate"}),
        lambda: from_dict({"kind": "ablate", "positions": [1], "evil": 1}),
        lambda: from_dict({"kind": "steer", "positions": [1]}),
        lambda: from_dict([1, 2]),
    ):
        with pytest.raises(InputError):
            bad()


def test_apply_equals_the_methods(shapes_trace):
    trace = shapes_trace
    chosen = trace.image_positions[10:20].tolist()
    for fill in ("mean", "zero", "blur"):
        ours = Ablate(chosen, fill).apply(trace)
        theirs = ablate(trace, chosen, baseline=fill)
        np.testing.assert_allclose(ours.delta, theirs.delta, atol=1e-6)
    np.testing.assert_allclose(
        Knockout(range(0, 2)).apply(trace).delta, knockout(trace, layers=range(0, 2)).delta, atol=1e-6
    )
    last = Knockout([1], to="last_prompt").apply(trace)
    np.testing.assert_allclose(last.delta, knockout(trace, to=[trace.answer_start - 1], layers=[1]).delta, atol=1e-6)
    assert not trace.results  # apply on an object keeps nothing


def _answer_logprob(trace, logits: torch.Tensor) -> float:
    """log p of the (one-token) answer from full-sequence logits ``(1, N, V)``: read by hand at the row before it."""
    row = torch.log_softmax(logits[0, trace.answer_start - 1].double(), dim=-1)
    return float(row[int(trace.run.input_ids[0, trace.answer_start])])


def test_paint_is_the_model_on_the_painted_image(shapes_trace, shapes_vlm):
    """``fill="paint"`` against a by-hand reference: the boxes painted with NumPy, the processor, a plain forward."""
    trace = shapes_trace
    model, processor = shapes_vlm
    chosen = trace.image_positions[[0, 9, 10, 27]].tolist()
    pixels = np.array(trace.images[0], dtype=np.uint8)
    colour = np.rint(pixels.reshape(-1, 3).astype(np.float64).mean(axis=0)).astype(np.uint8)
    painted = pixels.copy()
    for x0, y0, x1, y1 in trace.layout.boxes[chosen]:
        painted[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = colour
    assert (painted != pixels).any()
    values = processor.image_processor(Image.fromarray(painted), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(input_ids=trace.run.input_ids, pixel_values=values).logits
    effect = Ablate(chosen, "paint").apply(trace)
    assert effect.changed[0] == pytest.approx(_answer_logprob(trace, logits), abs=1e-5)
    assert effect.clean[0] == pytest.approx(float(trace.answer_logprobs[0]), abs=1e-5)
    # A margin widens every box by that share of its side (8-pixel boxes: 4 pixels more on every side).
    wide = ablate(trace, chosen[:1], baseline="paint", margin=0.5)
    by_hand = pixels.copy()
    x0, y0, x1, y1 = trace.layout.boxes[chosen[0]]
    by_hand[max(int(y0) - 4, 0) : int(y1) + 4, max(int(x0) - 4, 0) : int(x1) + 4] = colour
    values = processor.image_processor(Image.fromarray(by_hand), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(input_ids=trace.run.input_ids, pixel_values=values).logits
    assert wide.changed[0] == pytest.approx(_answer_logprob(trace, logits), abs=1e-5)


def test_paint_on_the_object_hurts_and_on_the_background_does_not(shapes_trace, shapes_scene):
    trace = shapes_trace
    s, q = shapes_scene
    mask = s.objects[q.object_index].mask
    on_object = object_patches(trace, mask)
    far = trace.image_positions[interventions.coverage_of(trace, mask) == 0][: len(on_object)]
    assert Ablate(on_object, "paint").apply(trace).delta[0] < -2
    assert abs(Ablate(far, "paint").apply(trace).delta[0]) < 0.5


def test_other_is_a_by_hand_replacement_of_the_image_rows(shapes_trace, shapes_vlm):
    """``fill="other"`` against a by-hand reference: the other image resized and processed, its projected features
    put into the chosen rows of ``inputs_embeds`` (the clean image's features elsewhere), a plain forward."""
    trace = shapes_trace
    model, processor = shapes_vlm
    other = scene(345).image.resize((48, 40))  # another size: resized back to the traced image's
    chosen = trace.image_positions[5:30].tolist()
    ids = trace.run.input_ids
    with torch.no_grad():

        def features(image: Image.Image) -> torch.Tensor:
            values = processor.image_processor(image, return_tensors="pt")["pixel_values"]
            out = model.get_image_features(pixel_values=values)
            out = getattr(out, "pooler_output", out)
            return torch.cat(list(out), dim=0) if isinstance(out, (list, tuple)) else out.reshape(-1, out.shape[-1])

        clean = features(trace.images[0])
        replaced = features(other.resize(trace.images[0].size, Image.Resampling.BICUBIC))
        embeds = model.get_input_embeddings()(ids).clone()
        image_rows = torch.nonzero(ids[0] == model.config.image_token_id)[:, 0]
        assert image_rows.tolist() == trace.image_positions.tolist()
        embeds[0, image_rows] = clean.to(embeds.dtype)
        picked = torch.as_tensor(np.isin(trace.image_positions, chosen))
        embeds[0, image_rows[picked]] = replaced[picked].to(embeds.dtype)
        logits = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits
    effect = Ablate(chosen, "other", other_image=other).apply(trace)
    assert effect.changed[0] == pytest.approx(_answer_logprob(trace, logits), abs=1e-5)
    # The image itself as the other image changes nothing.
    assert Ablate(chosen, "other", other_image=trace.images[0]).apply(trace).delta[0] == pytest.approx(0, abs=1e-5)


def test_other_images_are_kept_as_uint8_arrays_and_survive_save_and_load(shapes_trace, tmp_path):
    trace = shapes_trace
    other = scene(346).image
    path = tmp_path / "other.png"
    other.save(path)
    from_path = Ablate(trace.image_positions[:6], "other", other_image=path)
    from_pil = Ablate(trace.image_positions[:6], "other", other_image=other)
    from_array = Ablate(trace.image_positions[:6], "other", other_image=np.asarray(other))
    assert from_path == from_pil == from_array and hash(from_path) == hash(from_array)
    assert from_path.other_image.dtype == np.uint8 and from_path.other_image.shape == (64, 64, 3)
    assert not from_path.other_image.flags.writeable
    assert from_path != Ablate(trace.image_positions[:6], "other", other_image=scene(347).image)
    data = from_path.to_dict()
    assert from_dict(data) == from_path
    as_json = json.loads(json.dumps({**data, "other_image": data["other_image"].tolist()}))
    assert from_dict(as_json) == from_path  # JSON numbers (nested lists) are accepted too
    assert "other_image" not in from_path.to_dict(image=False)
    with pytest.raises(InputError, match="needs other_image"):
        from_dict(from_path.to_dict(image=False))
    effects = interventions.apply(trace, [from_path, Ablate(trace.image_positions[:6], "paint")])
    loaded = mmviz.load(trace.save(tmp_path / "t.mmviz"))
    kept = history(loaded)
    assert [r.intervention for r in kept] == [from_path, Ablate(trace.image_positions[:6], "paint")]
    np.testing.assert_array_equal(kept[0].intervention.other_image, np.asarray(other))
    for effect, result in zip(effects, kept, strict=True):
        np.testing.assert_allclose(result.effect.delta, effect.delta)
    # Re-linked, the loaded intervention runs again to the same numbers.
    model, processor = trace.run.model, trace.run.adapter.processor
    again = loaded.attach(model, processor)
    np.testing.assert_allclose(kept[0].intervention.apply(again).delta, effects[0].delta, atol=1e-6)


def test_a_replacement_image_of_another_layout_is_refused(shapes_trace):
    run = shapes_trace.run
    with pytest.raises(InputError, match="traced one"):
        image_inputs(run, [Image.new("RGB", (32, 64))])
    with pytest.raises(InputError, match="replacement images"):
        image_inputs(run, [])
    with pytest.raises(InputError, match="margin"):
        ablate(shapes_trace, shapes_trace.image_positions[:2], baseline="paint", margin=-1)
    with pytest.raises(InputError, match="colour"):
        ablate(shapes_trace, shapes_trace.image_positions[:2], baseline="paint", colour="pink")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="needs other_image"):
        ablate(shapes_trace, shapes_trace.image_positions[:2], baseline="other")


def test_apply_batches_consecutive_ablations_to_the_same_numbers(shapes_trace, shapes_scene):
    trace = shapes_trace
    other = scene(303).image
    s, q = shapes_scene
    on_object = object_patches(trace, s.objects[q.object_index].mask)
    chosen = [
        Ablate(on_object, "zero"),
        Ablate(on_object, "mean"),
        Ablate(trace.image_positions[30:40], "blur"),
        Ablate(trace.image_positions[30:40], "other", other_image=other),
        Ablate(trace.image_positions[30:40], "paint"),
        Knockout([0, 1]),
        Ablate(trace.image_positions[:3], "zero"),
        Ablate(trace.image_positions[:5], "zero"),
    ]
    alone = [item.apply(trace) for item in chosen]
    together = interventions.apply(trace, chosen)
    assert [r.intervention for r in history(trace)] == chosen
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(b.clean, a.clean, atol=1e-6)
        np.testing.assert_allclose(b.delta, a.delta, atol=1e-5)
        assert a.description == b.description
    assert together[0].delta[0] < -2 and together[1].delta[0] < -2  # the batch does change the answer
    with pytest.raises(InputError, match="batch_size"):
        mmviz.methods.ablation.ablate_many(trace, [{"positions": [5]}], batch_size=0)
    with pytest.raises(InputError, match="request"):
        mmviz.methods.ablation.ablate_many(trace, [{"positions": [5], "fill": "zero"}])


def test_module_apply_keeps_runs_and_checks_all_first(shapes_trace):
    trace = shapes_trace
    good, knock = Ablate(trace.image_positions[:4], "zero"), Knockout([0])
    effects = interventions.apply(trace, [good, knock])
    kept = history(trace)
    assert [r.intervention for r in kept] == [good, knock]
    np.testing.assert_allclose(kept[0].effect.delta, effects[0].delta)
    # One bad intervention in a batch: nothing runs, nothing more is kept.
    with pytest.raises(InputError, match="not image positions"):
        interventions.apply(trace, [good, Ablate([0])])
    with pytest.raises(InputError, match="decoder layer"):
        interventions.apply(trace, [Knockout([99])])
    assert len(history(trace)) == 2


def test_kept_across_save_and_load_and_refused_without_a_model(shapes_trace, tmp_path):
    trace = shapes_trace
    interventions.apply(trace, [Ablate(trace.image_positions[:6], "mean"), Knockout([0, 1], to="last_prompt")])
    curve = knockout_curve(trace, 2)
    loaded = mmviz.load(trace.save(tmp_path / "t.mmviz"))
    before, after = history(trace), history(loaded)
    assert [r.intervention for r in after] == [r.intervention for r in before]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a.effect.delta, b.effect.delta)
        np.testing.assert_array_equal(a.effect.positions, b.effect.positions)
    kept = loaded.results[interventions.CURVE_KEY]
    np.testing.assert_allclose(kept.delta, curve.delta)
    assert kept.width == 2
    for run in (
        lambda: interventions.apply(loaded, [Ablate(loaded.image_positions[:2])]),
        lambda: Ablate(loaded.image_positions[:2]).apply(loaded),
        lambda: knockout_curve(loaded, 1),
    ):
        with pytest.raises(InputError, match=r"no model attached.*2 kept interventions.*attach"):
            run()
    assert len(history(loaded)) == 2


def test_a_curve_kept_without_per_token_deltas_still_loads(shapes_trace, tmp_path):
    """Files written before a kept result gained fields with defaults load, the missing fields at their defaults."""
    trace = shapes_trace
    old = interventions.KnockoutCurve(
        width=1, sources="image", to="answer", starts=np.arange(2), delta=np.array([-1.0, 0.5]), clean=-0.2
    )
    trace.results[interventions.CURVE_KEY] = old
    directory = trace.save(tmp_path / "old")
    sidecar = directory / "trace.json"
    data = json.loads(sidecar.read_text())
    fields = data["results"][interventions.CURVE_KEY]["fields"]
    del fields["positions"], fields["token_delta"]  # as an older mmviz wrote it
    sidecar.write_text(json.dumps(data))
    kept = mmviz.load(directory).results[interventions.CURVE_KEY]
    assert kept.positions is None and kept.token_delta is None
    np.testing.assert_array_equal(kept.per_token(), [[-1.0], [0.5]])
    fields["surprise"] = 1  # unknown fields are still refused
    sidecar.write_text(json.dumps(data))
    with pytest.raises(Exception, match="surprise"):
        mmviz.load(directory)


def test_knockout_curve_is_one_knockout_per_window(shapes_trace):
    trace = shapes_trace
    curve = knockout_curve(trace, 2, to="answer")
    assert curve.starts.tolist() == list(range(trace.num_layers - 1))
    assert curve.positions.tolist() == list(range(trace.answer_start, len(trace.tokens)))
    for start, delta, per_token in zip(curve.starts, curve.delta, curve.token_delta, strict=True):
        expected = knockout(trace, [trace.answer_start], layers=range(start, start + 2)).delta[0]
        assert delta == pytest.approx(expected, abs=1e-6)
        every = knockout(trace, None, layers=range(start, start + 2)).delta  # every answer token
        np.testing.assert_allclose(per_token, every, atol=1e-6)
    with pytest.raises(InputError, match="width"):
        knockout_curve(trace, trace.num_layers + 1)


def test_model_left_as_found_also_when_an_intervention_fails(shapes_trace):
    trace = shapes_trace
    model = trace.run.model
    model.train()  # an unusual state the methods must restore
    before = snapshot(model)
    interventions.apply(
        trace,
        [
            Ablate(trace.image_positions[:3], "blur"),
            Ablate(trace.image_positions[:3], "paint"),
            Ablate(trace.image_positions[:3], "other", other_image=scene(302).image),
            Knockout([0, 1]),
        ],
    )
    assert snapshot(model) == before

    class Boom(RuntimeError):
        pass

    def explode(*args):
        raise Boom("midway")

    layer = model.model.language_model.layers[1] if hasattr(model.model, "language_model") else None
    assert layer is not None
    handle = layer.register_forward_pre_hook(explode)
    try:
        for fill in ("zero", "paint"):
            with pytest.raises(Boom):
                interventions.apply(trace, [Ablate(trace.image_positions[:3], fill)])
        with pytest.raises(Boom):
            Ablate(trace.image_positions[:3], "other", other_image=scene(302).image).apply(trace)
        with pytest.raises(Boom):
            Knockout([0]).apply(trace)
    finally:
        handle.remove()
    assert snapshot(model) == before
    model.eval()


def test_object_patches_follow_the_mask(shapes_trace, shapes_scene):
    trace = shapes_trace
    s, q = shapes_scene
    mask = s.objects[q.object_index].mask
    strict = object_patches(trace, mask, border=0)
    loose = object_patches(trace, mask, coverage=0)
    wide = object_patches(trace, mask)
    assert 0 < len(strict) <= len(loose) and set(strict) <= set(loose) and set(strict) < set(wide)
    x0, y0, x1, y1 = s.objects[q.object_index].box
    for box in trace.layout.boxes[strict]:
        assert box[0] < x1 and box[2] > x0 and box[1] < y1 and box[3] > y0
