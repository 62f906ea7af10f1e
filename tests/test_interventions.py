"""``mmviz.interventions``: the objects round trip as plain data, ``apply`` is exactly ``mmviz.methods.ablate`` /
``knockout``, runs are kept across save → load, a loaded trace without its model refuses to run with a clear
message, and the model is left as found, also when an intervention fails midway."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmviz
from mmviz import interventions
from mmviz.capture import snapshot
from mmviz.errors import InputError
from mmviz.interventions import Ablate, Knockout, from_dict, history, knockout_curve, object_patches
from mmviz.methods import ablate, knockout
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


def test_knockout_curve_is_one_knockout_per_window(shapes_trace):
    trace = shapes_trace
    curve = knockout_curve(trace, 2, to="answer")
    assert curve.starts.tolist() == list(range(trace.num_layers - 1))
    for start, delta in zip(curve.starts, curve.delta, strict=True):
        expected = knockout(trace, [trace.answer_start], layers=range(start, start + 2)).delta[0]
        assert delta == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InputError, match="width"):
        knockout_curve(trace, trace.num_layers + 1)


def test_model_left_as_found_also_when_an_intervention_fails(shapes_trace):
    trace = shapes_trace
    model = trace.run.model
    model.train()  # an unusual state the methods must restore
    before = snapshot(model)
    interventions.apply(trace, [Ablate(trace.image_positions[:3], "blur"), Knockout([0, 1])])
    assert snapshot(model) == before

    class Boom(RuntimeError):
        pass

    def explode(*args):
        raise Boom("midway")

    layer = model.model.language_model.layers[1] if hasattr(model.model, "language_model") else None
    assert layer is not None
    handle = layer.register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            interventions.apply(trace, [Ablate(trace.image_positions[:3], "zero")])
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
