"""Sweeps on the shapes world: the table against statistics computed by hand, failures recorded, resuming, kept
traces, reductions, and the examples a sweep accepts. The Ray engine is in ``tests/test_sweep_ray.py``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import mmviz
from mmviz.methods import image_share, logit_lens
from mmviz.sweeps import STATISTICS, bootstrap_mean, examples_from, statistic
from mmviz.sweeps.table import TABLE
from mmviz.zoo import shapes

ALL_STATS = ["image_share", "head_entropy", "sinks", "answer_logprob", "lens_rank", "pointing_game", "knockout"]


def scene_rows(seeds) -> list[dict]:
    rows = []
    for seed in seeds:
        scene = shapes.scene(seed)
        question = scene.questions[0]
        rows.append(
            {
                "id": f"scene-{seed}",
                "image": scene.image,
                "prompt": question.text,
                "answer": question.answer,
                "mask": scene.objects[question.object_index].mask,
                "asks_for": "color" if "color" in question.text else "shape",
            }
        )
    return rows


@pytest.fixture(scope="module")
def shapes_vlm():
    return mmviz.zoo.load("shapes-vlm")


@pytest.fixture()
def user_statistic():
    """Register statistics for one test and remove them afterwards."""
    names = []

    def register(name, function, **options):
        statistic(name, description="a test statistic", **options)(function)
        names.append(name)
        return name

    yield register
    for name in names:
        STATISTICS.pop(name, None)


@pytest.fixture(scope="module")
def full_sweep(shapes_vlm, tmp_path_factory):
    model, processor = shapes_vlm
    rows = [*scene_rows(range(6)), {"id": "broken", "image": "/no/such/image.png", "prompt": "What is it?"}]
    out = tmp_path_factory.mktemp("sweep")
    return mmviz.sweep(model, processor, rows, stats=ALL_STATS, out=out, keep="all", chunk=4), rows


def test_every_statistic_is_what_the_trace_gives(shapes_vlm, full_sweep):
    model, processor = shapes_vlm
    result, rows = full_sweep
    assert result.ids == [row["id"] for row in rows] and len(result) == 7
    row = rows[2]
    trace = mmviz.trace(model, processor, row["image"], row["prompt"], answer=row["answer"])
    index = result.ids.index(row["id"])
    share = image_share(trace, rows="answer")
    np.testing.assert_allclose(result.column("image_share")[index], share.groups["image"], rtol=1e-6)
    np.testing.assert_allclose(result.column("image_share_heads")[index], share.share, rtol=1e-6)
    np.testing.assert_allclose(result.column("head_entropy")[index], share.entropy, rtol=1e-6)
    np.testing.assert_array_equal(result.column("lens_rank")[index], logit_lens(trace).answer_ranks[:, 0])
    assert result.column("answer_logprob")[index] == pytest.approx(float(trace.answer_logprobs.sum()), rel=1e-6)
    layers = model.config.text_config.num_hidden_layers
    assert result.column("pointing_game").shape == (7, layers)
    assert result.column("knockout_delta").shape[1] == len(range(0, layers, max(1, layers // 4)))
    assert ((result.column("energy_in_box")[:6] >= 0) & (result.column("energy_in_box")[:6] <= 1)).all()
    assert result.table.column("asks_for").to_pylist()[:6] == [r["asks_for"] for r in rows[:6]]


def test_a_failing_example_is_recorded_and_the_sweep_goes_on(full_sweep):
    result, _ = full_sweep
    assert list(result.failed) == ["broken"] and "does not exist" in result.failed["broken"]
    assert np.isnan(result.column("image_share")[result.ids.index("broken")]).all()
    assert result.table.column("status").to_pylist().count("ok") == 6


def test_kept_traces_reopen_without_the_model(full_sweep):
    result, rows = full_sweep
    kept = result.trace("scene-3")
    assert kept.run is None and rows[3]["prompt"] in kept.prompt
    np.testing.assert_allclose(
        image_share(kept, rows="answer").groups["image"], result.column("image_share")[3], atol=1e-2
    )
    with pytest.raises(mmviz.InputError, match="no kept trace"):
        result.trace("broken")


def test_an_interrupted_sweep_resumes_without_losing_or_repeating_an_example(shapes_vlm, tmp_path, user_statistic):
    model, processor = shapes_vlm
    rows = scene_rows(range(7))
    calls = []

    def stop_at_the_fifth(trace, example):
        calls.append(example.id)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the user pressed stop mid-sweep
        return {"answer_length": len(trace.tokens) - trace.answer_start}

    name = user_statistic("interruptible", stop_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        mmviz.sweep(model, processor, rows, stats=["answer_logprob", name], out=tmp_path, chunk=2)
    partial = mmviz.sweeps.load(tmp_path)
    assert partial.ids == ["scene-0", "scene-1", "scene-2", "scene-3"], "complete parts only"
    resumed = mmviz.sweep(model, processor, rows, stats=["answer_logprob", name], out=tmp_path, chunk=2)
    assert sorted(resumed.ids) == sorted(row["id"] for row in rows) and len(set(resumed.ids)) == 7
    assert calls[5:] == ["scene-4", "scene-5", "scene-6"], "only the unfinished examples ran again"
    with pytest.raises(mmviz.InputError, match="other settings"):
        mmviz.sweep(model, processor, rows, stats=["image_share"], out=tmp_path)


def test_outliers_are_the_traces_kept(shapes_vlm, tmp_path, user_statistic):
    model, processor = shapes_vlm
    rows = scene_rows(range(8))
    name = user_statistic("planted", lambda trace, example: {"planted": 100.0 if example.id == "scene-5" else 1.0})
    result = mmviz.sweep(model, processor, rows, stats=[name], out=tmp_path, keep="outliers")
    kept = sorted(path.stem for path in (tmp_path / "traces").glob("*.mmviz"))
    assert kept == ["scene-5"] and mmviz.sweeps.outlier_ids(result) == ["scene-5"]
    picked = mmviz.sweep(
        model, processor, rows, stats=[name], out=tmp_path / "predicate", keep=lambda row: row["id"] == "scene-1"
    )
    assert [p.stem for p in (tmp_path / "predicate" / "traces").glob("*.mmviz")] == ["scene-1"] and len(picked) == 8


def test_per_layer_means_with_bootstrap_intervals_and_groups(full_sweep):
    result, _ = full_sweep
    values = result.column("image_share")[:6]
    curve = result.per_layer("image_share")
    np.testing.assert_allclose(curve.mean, values.mean(axis=0))
    assert curve.count == 6 and (curve.low <= curve.mean).all() and (curve.mean <= curve.high).all()
    groups = result.per_layer("image_share", by="asks_for")
    kinds = np.array(result.table.column("asks_for").to_pylist()[:6])
    for kind, group in groups.items():
        np.testing.assert_allclose(group.mean, values[kinds == kind].mean(axis=0))
    with pytest.raises(mmviz.InputError, match="no column 'nope'"):
        result.per_layer("image_share", by="nope")


def test_bootstrap_intervals_shrink_with_more_examples_and_vanish_for_constants():
    rng = np.random.default_rng(0)
    constant = bootstrap_mean(np.full((20, 3), 0.5))
    assert (constant.low == 0.5).all() and (constant.high == 0.5).all()
    small, large = (bootstrap_mean(rng.normal(size=(n, 1))) for n in (20, 2000))
    assert (large.high - large.low) < (small.high - small.low) / 5  # ~1/sqrt(100) = 1/10
    covered = 0
    for seed in range(200):  # the 95% interval covers the true mean (0) about 95% of the time
        draws = np.random.default_rng(seed).normal(size=(40, 1))
        interval = bootstrap_mean(draws, resamples=400, seed=seed)
        covered += bool(interval.low[0] <= 0 <= interval.high[0])
    assert 0.88 <= covered / 200 <= 0.99


def test_examples_come_as_dicts_tables_or_dataset_rows(tmp_path):
    scene = shapes.scene(1)
    dicts = [{"image": scene.image, "question": "What color is the circle?", "template": "t1", "box": [1, 2, 3, 4]}]
    (example,) = examples_from(dicts)
    assert (example.id, example.prompt, example.fields, example.box) == ("0", dicts[0]["question"], {"template": "t1"},
                                                                          (1.0, 2.0, 3.0, 4.0))  # fmt: skip
    png = tmp_path / "scene.png"
    scene.image.save(png)
    arrow = pa.table({"id": ["a"], "image": [{"bytes": png.read_bytes(), "path": None}], "prompt": ["What?"]})
    (from_arrow,) = examples_from(arrow)
    assert from_arrow.id == "a" and from_arrow.image.size == scene.image.size
    with pytest.raises(mmviz.InputError, match="needs an 'image' and a 'prompt'"):
        list(examples_from([{"image": scene.image}]))


def test_bad_sweep_arguments_say_what_to_pass(shapes_vlm, tmp_path):
    model, processor = shapes_vlm
    rows = scene_rows([0])
    for arguments, message in (
        ({"stats": ["nope"]}, r"unknown statistic 'nope'"),
        ({"stats": "image_share"}, r"stats must be a list"),
        ({"keep": "some"}, r"keep must be"),
        ({"engine": "spark"}, r"engine must be 'local' or 'ray'"),
        ({"chunk": 0}, r"chunk must be a positive number"),
    ):
        with pytest.raises(mmviz.InputError, match=message):
            mmviz.sweep(model, processor, rows, out=tmp_path / "bad", **arguments)
    assert not (tmp_path / "bad" / TABLE).exists(), "nothing written"


def test_pointing_game_needs_the_object(shapes_vlm, tmp_path):
    model, processor = shapes_vlm
    rows = [{k: v for k, v in row.items() if k != "mask"} for row in scene_rows([0])]
    result = mmviz.sweep(model, processor, rows, stats=["pointing_game"], out=tmp_path)
    assert "has no box or mask" in result.failed["scene-0"]


def test_the_ray_engine_without_ray_says_how_to_install_it(shapes_vlm, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'", name="ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    model, processor = shapes_vlm
    with pytest.raises(mmviz.InputError, match=r"pip install 'mmviz\[ray\]'"):
        mmviz.sweep(model, processor, scene_rows([0]), out=tmp_path, engine="ray")
