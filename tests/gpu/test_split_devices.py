"""A model split over two devices with accelerate's ``dispatch_model``: the vision tower on the CPU and the language
model on ``cuda:0``, the other way round, and the vision tower's weights offloaded to the CPU (kept there, run on
the GPU). mmviz must send its inputs where the model runs them, record the same rows and compute the same maps as
the whole model on the CPU, and leave the dispatched model (its hooks, placement and weights) as it found it."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import mmviz
from tests.gpu.helpers import (
    ANSWER,
    PROMPT,
    TOLERANCES,
    assert_close_to_cpu,
    assert_left_as_found,
    found,
    tf32_off,
    weights,
)

VISION = ("model.vision_tower", "model.multi_modal_projector")
LANGUAGE = ("model.language_model", "lm_head")
METHODS = {"rollout": {}, "gradient_x_input": {}, "relevancy": {}, "integrated_gradients": {"steps": 4},
           "occlusion": {}, "logit_lens": {}}  # fmt: skip

# name → (device of the vision side, device of the language side, main device: where "cpu" entries run)
SPLITS = {
    "vision on cpu, language model on cuda:0": ("cpu", "gpu", "cpu"),
    "language model on cpu, vision on cuda:0": ("gpu", "cpu", "cpu"),
    "vision weights offloaded to cpu, run on cuda:0": ("cpu", "gpu", "gpu"),
}


def dispatched(model: torch.nn.Module, split: str, device: torch.device) -> torch.nn.Module:
    """A copy of ``model`` dispatched by accelerate as ``split`` says (the GPU is the CPU in a dry run)."""
    accelerate = pytest.importorskip("accelerate")
    gpu: int | str = (device.index or 0) if device.type == "cuda" else "cpu"
    vision, language, main = ((gpu if side == "gpu" else "cpu") for side in SPLITS[split])
    device_map = {**dict.fromkeys(VISION, vision), **dict.fromkeys(LANGUAGE, language)}
    return accelerate.dispatch_model(copy.deepcopy(model), device_map=device_map, main_device=main)


def devices_used(model: torch.nn.Module) -> set[str]:
    return {t.device.type for t in [*model.parameters(), *model.buffers()]}


@pytest.mark.parametrize("split", list(SPLITS))
def test_a_model_split_over_two_devices_traces_like_the_whole_model(llava_small, photo, device, split):
    model, processor = llava_small
    split_model = dispatched(model, split, device)
    if device.type == "cuda":
        expected = {"cpu", "cuda"} if SPLITS[split][2] == "cpu" else {"cuda", "meta"}
        assert expected <= devices_used(split_model), f"the split really spans {expected}"
    with tf32_off():
        reference = mmviz.trace(copy.deepcopy(model), processor, photo, PROMPT, answer=ANSWER)
        warm = mmviz.trace(split_model, processor, photo, PROMPT, answer=ANSWER)  # transformers' first-call hooks
        before, values = found(split_model), weights(split_model)
        traced = mmviz.trace(split_model, processor, photo, PROMPT, answer=ANSWER)
        maps = {name: traced.compute(name, **settings) for name, settings in METHODS.items()}
        expected_maps = {name: reference.compute(name, **settings) for name, settings in METHODS.items()}
    assert_left_as_found(split_model, before, values)
    tolerance = TOLERANCES[torch.float32]
    assert traced.token_ids.tolist() == reference.token_ids.tolist() == warm.token_ids.tolist()
    rows_error = np.abs(traced.attention_rows - reference.attention_rows).max()
    assert rows_error <= tolerance.rows_cpu, f"rows: max abs {rows_error:.3g}"
    logprob_error = np.abs(traced.answer_logprobs - reference.answer_logprobs).max()
    assert logprob_error <= tolerance.logprob, f"answer log-probabilities: max abs {logprob_error:.3g}"
    for name, result in maps.items():
        assert_close_to_cpu(result.values, expected_maps[name].values, torch.float32, f"{name} ({split})")


def test_a_split_model_generates_and_inspects(llava_small, photo, device):
    model, processor = llava_small
    split_model = dispatched(model, "vision on cpu, language model on cuda:0", device)
    mmviz.trace(split_model, processor, photo, PROMPT, answer=ANSWER)  # transformers' first-call hooks
    before, values = found(split_model), weights(split_model)
    inspector = mmviz.inspect(split_model, processor, photo, PROMPT, max_new_tokens=3, methods=["relevancy"])
    assert inspector.trace.answer_start < len(inspector.trace.token_ids)
    assert "relevancy" in inspector.maps and inspector.attention_mean
    again = dataclasses.replace(inspector.trace, maps={})
    assert np.isfinite(again.compute("grad_cam").values).all()
    assert_left_as_found(split_model, before, values)
