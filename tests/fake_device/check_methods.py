"""Every method on an accelerator, without one: the model on a fake device that refuses to meet CPU tensors (run
in its own interpreter by ``tests/test_devices.py``).

A CPU tensor multiplied with a device tensor, ``.numpy()`` on a device tensor, a CPU mask against device scores:
each raises under :mod:`tests.fake_device.accelerator` as it would on CUDA, and the values must equal a CPU run of
the same weights (the fake device computes on the CPU). A model dispatched by accelerate over both devices runs
every method too.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import mmviz
import mmviz.interventions
from mmviz.capture import snapshot
from mmviz.methods import CATALOGUE
from mmviz.zoo import tiny_llava
from tests.fake_device.accelerator import FakeAcceleratorTensor, fake_accelerator

QUICK = {"integrated_gradients": {"steps": 4}, "rise": {"n_masks": 8}, "occlusion": {"window": 2}}
"""Cheap settings: the question is where tensors live, not how good the maps are."""

PROMPT, ANSWER = "What is in the picture?", "A red square."
OTHER = np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)
"""Another image for the ``"other"`` fill (another size: resized to the traced image's)."""
FORWARD_ONLY = ("attention", "attention_max", "rollout", "logit_lens", "occlusion", "rise", "knockout")


def test_the_fake_device_refuses_what_cuda_refuses():
    """The harness itself: mixed devices and NumPy views raise; copies, scalars, CPU indices and autograd work."""
    with fake_accelerator() as device:
        on_device = torch.arange(4.0, device=device)
        assert on_device.device.type == "fakegpu" and isinstance(on_device, FakeAcceleratorTensor)
        with pytest.raises(RuntimeError, match="same device"):
            on_device * torch.ones(4)
        with pytest.raises((TypeError, RuntimeError), match="numpy"):  # CUDA: TypeError
            on_device.numpy()
        assert torch.equal(on_device.cpu(), torch.arange(4.0)) and (on_device * torch.tensor(2.0)).sum().item() == 12
        assert torch.equal(on_device[torch.tensor([1, 3])].cpu(), torch.tensor([1.0, 3.0]))
        leaf = torch.ones(3).to(device).requires_grad_(True)
        (leaf * 3).sum().backward()
        assert torch.equal(leaf.grad.cpu(), torch.full((3,), 3.0))


@pytest.fixture(scope="module")
def models(photo):
    """The same tiny LLaVA on the CPU and on the fake accelerator, traced on both."""
    model, processor = tiny_llava(image_size=56, patch_size=14, num_layers=2, seed=5)
    on_device = copy.deepcopy(model)
    with fake_accelerator() as device:
        on_device.to(device)
        device_trace = mmviz.trace(on_device, processor, photo, PROMPT, answer=ANSWER)
    cpu_trace = mmviz.trace(model, processor, photo, PROMPT, answer=ANSWER)
    return cpu_trace, device_trace


def _fresh(trace: mmviz.Trace) -> mmviz.Trace:
    return dataclasses.replace(trace, maps={})  # results start empty too


def test_capture_on_the_device_matches_the_cpu(models):
    cpu_trace, device_trace = models
    np.testing.assert_allclose(device_trace.attention_rows, cpu_trace.attention_rows, atol=1e-6)
    np.testing.assert_allclose(device_trace.answer_logprobs, cpu_trace.answer_logprobs, atol=1e-5)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_method_runs_on_the_device_and_matches_the_cpu(models, name):
    cpu_trace, device_trace = _fresh(models[0]), _fresh(models[1])
    model = device_trace.run.model
    before = snapshot(model)
    expected = cpu_trace.compute(name, **QUICK.get(name, {}))
    with fake_accelerator():
        result = device_trace.compute(name, **QUICK.get(name, {}))
    assert snapshot(model) == before
    assert all(isinstance(p, FakeAcceleratorTensor) for p in model.parameters()), "the model stays on its device"
    assert isinstance(result.values, np.ndarray)
    np.testing.assert_allclose(result.values, expected.values, rtol=1e-4, atol=1e-5)


def _beyond_the_catalogue(trace: mmviz.Trace) -> tuple[np.ndarray, ...]:
    """Interventions (every ablation fill that re-runs pixels or tokens, a knockout curve), the lens, image share, a
    faithfulness curve, neurons and an SAE."""
    from mmviz.evaluation import deletion_insertion
    from mmviz.methods import Target

    columns = trace.image_positions[:4]
    values = np.arange(len(trace.image_positions), dtype=np.float64)
    width = trace.run.adapter.text_config.hidden_size
    weights = torch.Generator().manual_seed(0)
    sae = mmviz.features.SparseAutoencoder(
        W_enc=torch.randn(width, 8, generator=weights),
        b_enc=torch.zeros(8),
        W_dec=torch.randn(8, width, generator=weights),
        b_dec=torch.zeros(width),
        depth=1,
    )
    return (
        mmviz.methods.ablate(trace, columns).delta,
        mmviz.methods.ablate(trace, columns, baseline="paint").delta,
        mmviz.methods.ablate(trace, columns, baseline="other", other_image=OTHER).delta,
        mmviz.interventions.Ablate(columns, "other", other_image=OTHER).apply(trace).delta,
        mmviz.interventions.knockout_curve(trace, 1).token_delta,
        mmviz.methods.knockout(trace).delta,
        mmviz.methods.logit_lens(trace).answer_probs,
        mmviz.methods.image_share(trace).share,
        deletion_insertion(trace, values, Target.logprob(trace.answer_start), steps=3).deletion,
        mmviz.features.neurons(trace, 1, k=4).values.astype(np.float32),
        mmviz.features.encode(trace, sae, k=3).values.astype(np.float32),
        mmviz.features.clamp(trace, sae, 2, 0.0).delta,
    )


def test_interventions_lens_curves_and_neurons_run_on_the_device(models):
    cpu_trace, device_trace = _fresh(models[0]), _fresh(models[1])
    with fake_accelerator():
        results = _beyond_the_catalogue(device_trace)
    expected = _beyond_the_catalogue(cpu_trace)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_a_model_split_over_two_devices_runs_every_method(photo):
    """accelerate's dispatch with a device map of ``cpu`` and the accelerator: the vision tower's weights stay on the
    CPU and accelerate's hooks bring them to the accelerator for its forward (how ``device_map`` treats ``"cpu"``)."""
    accelerate = pytest.importorskip("accelerate")
    model, processor = tiny_llava(image_size=56, patch_size=14, num_layers=2, seed=6)
    expected = mmviz.trace(model, processor, photo, PROMPT, answer=ANSWER)
    with fake_accelerator() as device:
        split = accelerate.dispatch_model(
            copy.deepcopy(model),
            device_map={
                "model.vision_tower": "cpu",
                "model.multi_modal_projector": device,
                "model.language_model": device,
                "lm_head": device,
            },
        )
        assert not isinstance(next(split.model.vision_tower.parameters()), FakeAcceleratorTensor)
        trace = mmviz.trace(split, processor, photo, PROMPT, answer=ANSWER)
        maps = {name: trace.compute(name, **QUICK.get(name, {})) for name in CATALOGUE}
    np.testing.assert_allclose(trace.answer_logprobs, expected.answer_logprobs, atol=1e-5)
    for name, result in maps.items():
        np.testing.assert_allclose(
            result.values, expected.compute(name, **QUICK.get(name, {})).values, rtol=1e-4, atol=1e-5, err_msg=name
        )


def test_a_model_split_over_two_accelerators_keeps_each_layers_work_on_its_device(photo):
    """``device_map`` over two accelerators (as "auto" does on a two-GPU machine): the vision tower and the first
    decoder layer on ``fakegpu:0``, the second layer and the head on ``fakegpu:1``; the capture and every
    forward-only method keep each layer's tensors on that layer's device and agree with the CPU. (Gradient methods
    are left out here: autograd sizes its per-device queues from a device count the Python backend cannot raise
    above one.)"""
    accelerate = pytest.importorskip("accelerate")
    model, processor = tiny_llava(image_size=56, patch_size=14, num_layers=2, seed=6)
    expected = mmviz.trace(model, processor, photo, PROMPT, answer=ANSWER)
    with fake_accelerator():
        first, second = torch.device("fakegpu", 0), torch.device("fakegpu", 1)
        split = accelerate.dispatch_model(
            copy.deepcopy(model),
            device_map={
                "model.vision_tower": first,
                "model.multi_modal_projector": first,
                "model.language_model.embed_tokens": first,
                "model.language_model.rotary_emb": first,
                "model.language_model.layers.0": first,
                "model.language_model.layers.1": second,
                "model.language_model.norm": second,
                "lm_head": second,
            },
        )
        assert split.lm_head.weight.device == second and split.model.vision_tower.device == first
        trace = mmviz.trace(split, processor, photo, PROMPT, answer=ANSWER)
        maps = {name: trace.compute(name, **QUICK.get(name, {})) for name in FORWARD_ONLY}
        lens = mmviz.methods.logit_lens(trace).answer_probs
    np.testing.assert_allclose(trace.answer_logprobs, expected.answer_logprobs, atol=1e-5)
    np.testing.assert_allclose(lens, mmviz.methods.logit_lens(expected).answer_probs, rtol=1e-4, atol=1e-6)
    for name, result in maps.items():
        np.testing.assert_allclose(
            result.values, expected.compute(name, **QUICK.get(name, {})).values, rtol=1e-4, atol=1e-5, err_msg=name
        )
