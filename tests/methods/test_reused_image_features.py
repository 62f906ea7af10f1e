"""Batched edited forwards without the vision tower (issue 17): ``ModelRun.edited_forward`` runs the language model
+ head alone on the recorded clean forward's inputs, once the model has confirmed it gives the full forward's logits.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

import mmviz
from mmviz.capture import run as run_module
from mmviz.capture import snapshot
from mmviz.capture.run import replacing_columns
from mmviz.methods import Target, integrated_gradients, occlusion, rise
from mmviz.progress import quiet
from tests.families.registry import cases
from tests.families.test_families import WIDE
from tests.test_model_untouched import Interrupt, hook_counts, implementations, odd_state_model  # noqa: F401

GENERATIVE = [case for case in cases() if case.gradients]
# Cheap settings: the comparison, not the method's accuracy, is under test.
METHODS = {
    "integrated_gradients": lambda trace, target: integrated_gradients(trace, target, steps=8, batch_size=4),
    "occlusion": lambda trace, target: occlusion(trace, target, window=2, batch_size=3),
    "rise": lambda trace, target: rise(trace, target, n_masks=12, batch_size=5),
}


def _fresh(trace: mmviz.Trace, **options: object) -> mmviz.Trace:
    """The trace with a new run (nothing decided yet), no kept maps."""
    return dataclasses.replace(trace, run=dataclasses.replace(trace.run, **options), maps={})


def _edited_values(trace: mmviz.Trace, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image columns and ``batch`` random edits of their clean embeddings (every row different)."""
    columns = torch.as_tensor(trace.image_positions)
    clean = trace.run.embeddings()[:, columns]
    noise = torch.randn(batch, *clean.shape[1:], generator=torch.Generator().manual_seed(seed))
    return columns, clean + noise * clean.std()


FALLS_BACK = {
    "qwen3_vl": "DeepStack features are (image tokens, d) side inputs the replay cannot batch",
    "qwen3_vl_moe": "DeepStack features are (image tokens, d) side inputs the replay cannot batch",
}
"""Families whose confirmation refuses the fast path (their edited forwards are full forwards: correct, slower)."""


@pytest.mark.parametrize("case", GENERATIVE, ids=[case.id for case in GENERATIVE])
def test_the_fast_path_gives_the_full_forwards_logits_and_gradients_on_every_family(case):
    model, processor = case.build()
    with quiet():
        trace = mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red")
    run = _fresh(trace).run
    before = snapshot(model), hook_counts(model)
    columns, values = _edited_values(trace, batch=3)
    first = trace.answer_start - 1
    with torch.no_grad():
        full = run.forward(batch=3, edit=replacing_columns(columns, values), first_logit=first)
        fast = run.edited_forward(batch=3, edit=replacing_columns(columns, values), first_logit=first)
    if case.id in FALLS_BACK:
        assert run.edited_path == "full" and run.edited_path_reason, FALLS_BACK[case.id]
    elif not getattr(case, "measured", False):  # a measured family may go either way; the values must agree
        assert run.edited_path == "fast", run.edited_path_reason
    assert fast.shape == full.shape
    np.testing.assert_allclose(fast.numpy(), full.numpy(), rtol=1e-5, atol=1e-5 * float(full.abs().max()))

    def gradient(forward) -> torch.Tensor:  # d(Σ log p(answer token)) / d(edited image embeddings)
        leaf = values.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = forward(batch=3, edit=replacing_columns(columns, leaf), first_logit=first)
            logits.log_softmax(-1)[:, 0, int(run.input_ids[0, first + 1])].sum().backward()
        return leaf.grad

    expected, got = gradient(run.forward), gradient(run.edited_forward)
    assert got.abs().max() > 0
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert (snapshot(model), hook_counts(model)) == before


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_give_the_same_map_with_the_fast_path_on_and_forced_off(trace, name):
    target = Target.logprob(trace.answer_start)
    fast, full = _fresh(trace), _fresh(trace, reuse_image_features=False)
    on, off = METHODS[name](fast, target), METHODS[name](full, target)
    assert (on.info["forward"], off.info["forward"]) == ("fast", "full")
    assert full.run.edited_path_reason == "reuse_image_features=False"
    scale = float(np.abs(off.values).max())
    assert scale > 0
    np.testing.assert_allclose(on.values, off.values, rtol=1e-5, atol=1e-5 * scale)


class VisionCalls:
    """Counts the vision tower's calls and the images (batch rows) it encodes, while in a ``with`` block."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = self.images = 0
        self.tower = model.model.vision_tower

    def count(self, module, args, kwargs) -> None:
        pixels = args[0] if args else kwargs["pixel_values"]
        self.calls, self.images = self.calls + 1, self.images + int(pixels.shape[0])

    def __enter__(self) -> VisionCalls:
        self.handle = self.tower.register_forward_pre_hook(self.count, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_vision_tower_runs_once_per_call_not_once_per_batch_element(trace, name):
    """Zero-baseline settings (the blurred baseline encodes the blurred image once more). On the run's first use the
    confirmation adds one clean forward; after that the clean embeddings are the tower's only work."""
    target = Target.logprob(trace.answer_start)
    settings = {"integrated_gradients": {"steps": 8, "batch_size": 4}, "occlusion": {}, "rise": {"n_masks": 12}}[name]
    method = {"integrated_gradients": integrated_gradients, "occlusion": occlusion, "rise": rise}[name]
    fast, full = _fresh(trace), _fresh(trace, reuse_image_features=False)
    model = trace.run.model
    with VisionCalls(model) as first:
        method(fast, target, baseline="zero", **settings)
    with VisionCalls(model) as again:
        method(fast, target, baseline="zero", **settings)
    with VisionCalls(model) as forced_off:
        method(full, target, baseline="zero", **settings)
    assert (first.calls, first.images) == (2, 2)  # the clean embeddings + the one confirming forward
    assert (again.calls, again.images) == (1, 1)
    # Forced off, the tower encodes every batch row: IG's 8 path points + F(x), F(x′); occlusion's 4 blocks of the
    # 4×4 grid + the unoccluded input; RISE's 12 masks (each + the clean embeddings).
    assert forced_off.images == 1 + {"integrated_gradients": 10, "occlusion": 5, "rise": 12}[name]


def test_fast_path_methods_leave_an_odd_state_model_as_found(odd_state_model, photo):  # noqa: F811
    model, processor = odd_state_model
    with quiet():
        trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
    before = snapshot(model), hook_counts(model), implementations(model)
    target = Target.logprob(trace.answer_start)
    for method in METHODS.values():
        method(trace, target)
    assert trace.run.edited_path == "fast", trace.run.edited_path_reason
    assert (snapshot(model), hook_counts(model), implementations(model)) == before
    assert model.training and not next(model.parameters()).requires_grad


def test_a_failing_direct_call_falls_back_to_the_full_forward_and_says_why(trace, monkeypatch):
    target = Target.logprob(trace.answer_start)
    model = trace.run.model
    before = snapshot(model), hook_counts(model)
    reference = METHODS["occlusion"](_fresh(trace, reuse_image_features=False), target)

    def refuse(value, batch):
        raise RuntimeError("this family's language model cannot be replayed")

    monkeypatch.setattr(run_module, "_batched", refuse)
    fallen = _fresh(trace)
    result = METHODS["occlusion"](fallen, target)
    assert fallen.run.edited_path == "full" and "cannot be replayed" in fallen.run.edited_path_reason
    assert result.info["forward"] == "full"
    np.testing.assert_array_equal(result.values, reference.values)
    assert (snapshot(model), hook_counts(model)) == before


@pytest.mark.parametrize("at", [2, 3])
def test_an_interruption_during_the_confirmation_leaves_the_model_as_found_and_nothing_decided(trace, at):
    """Zero baseline: the language model's 1st call is the clean embeddings, the 2nd the confirming full forward,
    the 3rd the direct call being confirmed."""
    fresh = _fresh(trace)
    model = trace.run.model
    before = snapshot(model), hook_counts(model), implementations(model), model.training
    with Interrupt(model, at) as interrupt, contextlib.suppress(KeyboardInterrupt):
        integrated_gradients(fresh, Target.logprob(trace.answer_start), steps=4, baseline="zero")
    assert interrupt.fired
    assert (snapshot(model), hook_counts(model), implementations(model), model.training) == before
    assert fresh.run.edited_path is None, "an interrupted confirmation decides nothing"
    integrated_gradients(fresh, Target.logprob(trace.answer_start), steps=4, baseline="zero")
    assert fresh.run.edited_path == "fast"


def test_a_trace_made_in_inference_mode_serves_the_fast_path_to_a_later_gradient_method(llava_small, photo):
    """The recording is made outside inference mode, so IG (under no_grad) can backpropagate through its masks."""
    model, processor = llava_small
    with torch.inference_mode():
        trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
        first = METHODS["occlusion"](trace, Target.logprob(trace.answer_start))
    assert trace.run.edited_path == "fast" and np.isfinite(first.values).all()
    with torch.no_grad():
        result = METHODS["integrated_gradients"](trace, Target.logprob(trace.answer_start))
    assert np.isfinite(result.values).all() and np.abs(result.values).max() > 0
