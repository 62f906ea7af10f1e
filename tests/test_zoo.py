"""The shapes world and the tiny models trained on it that ship in ``mmviz/zoo/weights/``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mmviz
from mmviz import zoo
from mmviz.zoo import shapes, train

SEEDS = range(60)


@pytest.fixture(scope="module")
def shapes_vlm():
    return zoo.load("shapes-vlm")


@pytest.fixture(scope="module")
def shapes_clip():
    return zoo.load("shapes-clip")


# -- the world ---------------------------------------------------------------------------------------------------
def test_scene_is_deterministic():
    a, b = shapes.scene(123), shapes.scene(123)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert [(o.shape, o.color, o.box) for o in a.objects] == [(o.shape, o.color, o.box) for o in b.objects]
    assert a.questions == b.questions
    assert not np.array_equal(np.asarray(a.image), np.asarray(shapes.scene(124).image))


def test_scene_is_the_same_at_any_size():
    small, large = shapes.scene(7), shapes.scene(7, size=256)
    assert large.image.size == (256, 256) and small.image.size == (shapes.DEFAULT_SIZE,) * 2
    assert [(o.shape, o.color) for o in small.objects] == [(o.shape, o.color) for o in large.objects]
    for s, big in zip(small.objects, large.objects, strict=True):
        assert np.allclose(np.array(big.box) / 4, s.box, atol=1.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_objects_masks_and_boxes_agree(seed):
    scene = shapes.scene(seed)
    pixels = np.asarray(scene.image)
    assert scene.image.mode == "RGB"
    assert 2 <= len(scene.objects) <= 3
    assert len({o.shape for o in scene.objects}) == len(scene.objects)  # one object per shape
    assert len({o.color for o in scene.objects}) == len(scene.objects)  # and per colour
    covered = np.zeros(pixels.shape[:2], dtype=int)
    for obj in scene.objects:
        assert obj.shape in shapes.SHAPES and obj.color in shapes.COLORS
        assert obj.mask.shape == pixels.shape[:2] and obj.mask.dtype == bool
        x0, y0, x1, y1 = obj.box
        ys, xs = np.nonzero(obj.mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)  # the tight box
        assert obj.mask.sum() >= 0.3 * (x1 - x0) * (y1 - y0)
        assert (pixels[obj.mask] == shapes.COLORS[obj.color]).all()
        covered += obj.mask
    assert covered.max() == 1  # masks are disjoint
    assert (pixels[covered == 0] == shapes.BACKGROUND).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_each_question_names_exactly_one_object(seed):
    scene = shapes.scene(seed)
    assert len(scene.questions) == 2 * len(scene.objects)
    for question in scene.questions:
        named = [
            i for i, o in enumerate(scene.objects) if f" {o.shape}?" in question.text or f" {o.color}?" in question.text
        ]
        assert named == [question.object_index]
        target = scene.objects[question.object_index]
        assert question.answer == (target.color if question.text.startswith("What color") else target.shape)


def test_captions_cover_the_world():
    captions = shapes.all_captions()
    assert len(captions) == len(set(captions)) == 210
    assert shapes.caption([("green", "triangle"), ("red", "circle")]) == "a red circle and a green triangle"
    assert shapes.caption([("orange", "square"), ("red", "circle"), ("blue", "triangle")]) == (
        "a red circle, an orange square and a blue triangle"
    )
    assert all(shapes.scene(seed).caption in captions for seed in SEEDS)


def test_split_convention():
    assert not shapes.is_training_seed(0) and not shapes.is_training_seed(shapes.TRAIN_SEED_START - 1)
    assert shapes.is_training_seed(shapes.TRAIN_SEED_START)
    assert all(not shapes.is_training_seed(seed) for seed, _ in train.held_out_questions(1000))


def test_the_tokenizer_covers_the_world():
    tokenizer = train.word_tokenizer()
    text = " ".join([*shapes.all_captions(), *(q.text for s in SEEDS for q in shapes.scene(s).questions)])
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer("What color is the triangle?")["input_ids"], skip_special_tokens=True) == (
        "what color is the triangle?"
    )


# -- loading -----------------------------------------------------------------------------------------------------
def test_zoo_exports():
    assert zoo.scene is shapes.scene
    assert zoo.available() == ["shapes-vlm", "shapes-clip"]
    assert callable(zoo.tiny_llava)


def test_load_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"'shapes-gpt'.*shapes-vlm, shapes-clip"):
        zoo.load("shapes-gpt")


def test_load_missing_weights_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python -m mmviz\.zoo\.train clip"):
        zoo.load("shapes-clip")


def test_load_round_trip(shapes_vlm, shapes_clip):
    from transformers import CLIPModel, CLIPProcessor, LlavaForConditionalGeneration, LlavaProcessor

    model, processor = shapes_vlm
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(processor, LlavaProcessor)
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.float32}
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    clip, clip_processor = shapes_clip
    assert isinstance(clip, CLIPModel) and isinstance(clip_processor, CLIPProcessor)
    assert not clip.training and {p.dtype for p in clip.parameters()} == {torch.float32}


def test_shipped_weights_are_small_and_documented():
    for name, limit in (("shapes-vlm", 10), ("shapes-clip", 2)):
        folder = zoo.WEIGHTS / name
        size = sum(f.stat().st_size for f in folder.iterdir())
        assert size <= limit * 2**20, f"{name}: {size} bytes"
        record = json.loads((folder / "training.json").read_text())
        assert record["command"] == f"python -m mmviz.zoo.train {name.split('-')[1]}"
        assert record["train_seconds"] > 0


# -- the shipped models work -------------------------------------------------------------------------------------
def test_shipped_vlm_answers_held_out_binding_questions(shapes_vlm):
    model, processor = shapes_vlm
    metrics = train.evaluate_vlm(model, processor, count=100)
    assert metrics["accuracy"] >= 0.95, metrics


def test_shipped_clip_retrieves_held_out_captions(shapes_clip):
    model, processor = shapes_clip
    metrics = train.evaluate_clip(model, processor, count=100)
    assert metrics["top1_accuracy"] >= 0.9, metrics


def test_shipped_vlm_through_mmviz_trace(shapes_vlm):
    model, processor = shapes_vlm
    scene = shapes.scene(11, size=192)  # a larger render: the processor resizes it
    question = scene.questions[0]
    trace = mmviz.trace(model, processor, scene.image, question.text)
    assert trace.answer.strip() == question.answer
    assert trace.layout.images[0].width == 192


# -- training ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vlm", "clip"])
def test_training_command_runs_and_saves_a_loadable_model(kind, tmp_path):
    out = tmp_path / kind
    assert train.main([kind, "--steps", "3", "--eval", "8", "--out", str(out), "--set", "batch_size=4"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["recipe"]["steps"] == 3 and record["recipe"]["batch_size"] == 4
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    assert processor.tokenizer.pad_token == "<pad>"
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_training_is_deterministic():
    recipe = train.VLMRecipe(steps=2, batch_size=4, warmup=1)
    first, _, _ = train.train_vlm(recipe)
    second, _, _ = train.train_vlm(recipe)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shapes-vlm", "shapes-clip"])
def test_the_recipe_retrains_the_shipped_run(name):
    """The first logged stretch of the shipped run, retrained from its recorded recipe, gives the recorded loss (the
    command is seeded and deterministic; a full retrain matching the shipped accuracy is in the README)."""
    record = json.loads((zoo.WEIGHTS / name / "training.json").read_text())
    recipe_class, train_function = (
        (train.VLMRecipe, train.train_vlm) if name == "shapes-vlm" else (train.CLIPRecipe, train.train_clip)
    )
    recipe = recipe_class(**record["recipe"])
    every = record["log_every"]
    _, _, again = train_function(recipe, log_every=every, stop_after=every)
    assert again["losses"][0] == pytest.approx(record["losses"][0], rel=1e-3)


@pytest.mark.slow
def test_the_faithfulness_command_prints_every_method_and_writes_the_curves(tmp_path, capsys):
    from mmviz.__main__ import main
    from mmviz.evaluation.shapes import VARIANTS
    from mmviz.methods import CATALOGUE

    curves = tmp_path / "curves.html"
    main(["faithfulness", "--scenes", "3", "--sanity-scenes", "1", "--plot", str(curves)])
    printed = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in printed.splitlines() if line.startswith("| ") and "%" in line]
    assert sorted(rows) == sorted([*CATALOGUE, *VARIANTS, "random map (chance)"])
    assert curves.stat().st_size > 10_000 and "Deletion" in curves.read_text()
