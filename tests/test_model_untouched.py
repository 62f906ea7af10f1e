"""After trace / inspect the user's model is exactly as it was, also when the call fails midway."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from PIL import Image

import mmviz
from mmviz.capture import attention as capture_attention
from mmviz.capture import snapshot
from mmviz.methods import CATALOGUE


def hook_counts(model):
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
        for m in model.modules()
    ]


def implementations(model):
    config = model.config
    return (
        config._attn_implementation,
        config.text_config._attn_implementation,
        config.vision_config._attn_implementation,
    )


def reference_logits(model, processor, photo):
    inputs = processor(images=[photo], text="USER: <image>\nDescribe it. ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture()
def odd_state_model(fresh_llava):
    """A model in an unusual state: training mode, eager attention, one frozen parameter, one user hook."""
    model, processor = fresh_llava
    model.train()
    model.set_attn_implementation({"text_config": "eager"})
    first = next(model.parameters())
    first.requires_grad_(False)
    model.lm_head.register_forward_hook(lambda *args: None)
    # transformers installs its own output-capturing hooks on a model's first forward and keeps them; run one so
    # that the counts below measure what mmviz adds, not what transformers adds once.
    reference_logits(model, processor, Image.new("RGB", (20, 20)))
    return model, processor


@pytest.mark.parametrize("entry", [mmviz.trace, mmviz.inspect])
def test_trace_and_inspect_leave_the_model_unchanged(odd_state_model, photo, entry):
    model, processor = odd_state_model
    before = snapshot(model), hook_counts(model), implementations(model)
    model.eval()
    logits_before = reference_logits(model, processor, photo)
    model.train()
    entry(model, processor, photo, "What is in the picture?", max_new_tokens=3)
    assert (snapshot(model), hook_counts(model), implementations(model)) == before
    assert implementations(model)[1:] == ("eager", "sdpa")
    assert model.training and not next(model.parameters()).requires_grad
    model.eval()
    assert torch.equal(reference_logits(model, processor, photo), logits_before)


def test_a_failure_inside_the_analysis_forward_still_restores_everything(odd_state_model, photo, monkeypatch):
    model, processor = odd_state_model
    before = snapshot(model), hook_counts(model), implementations(model)

    def explode(self, *args, **kwargs):
        raise RuntimeError("boom in layer")

    monkeypatch.setattr(capture_attention.AttentionRecorder, "record", explode)
    with pytest.raises(RuntimeError, match="boom in layer"):
        mmviz.trace(model, processor, photo, "What is in the picture?", answer="A square.")
    assert (snapshot(model), hook_counts(model), implementations(model)) == before
    assert capture_attention._ACTIVE.get() is None


def test_a_failure_during_generation_still_restores_everything(odd_state_model, photo, monkeypatch):
    model, processor = odd_state_model
    before = snapshot(model), hook_counts(model), implementations(model)

    def broken_generate(*args, **kwargs):
        raise KeyboardInterrupt  # the user pressed stop

    monkeypatch.setattr(model, "generate", broken_generate)
    with pytest.raises(KeyboardInterrupt):
        mmviz.trace(model, processor, photo, "What is in the picture?")
    monkeypatch.undo()
    assert (snapshot(model), hook_counts(model), implementations(model)) == before


class Interrupt:
    """Raises KeyboardInterrupt (the user pressing stop) in the ``at``-th call of the language model: ``"before"``
    it runs or ``"after"`` it returned (the method's own passes are then half done)."""

    def __init__(self, model, at: int, when: str = "before") -> None:
        self.calls, self.at, self.fired = 0, at, False
        language_model = model.model.language_model
        self.handles = [language_model.register_forward_pre_hook(self.before)]
        if when == "after":
            self.handles.append(language_model.register_forward_hook(self.after))
        self.when = when

    def before(self, *args) -> None:
        self.calls += 1
        self._maybe("before")

    def after(self, *args) -> None:
        self._maybe("after")

    def _maybe(self, when: str) -> None:
        if self.calls == self.at and when == self.when and not self.fired:
            self.fired = True
            raise KeyboardInterrupt

    def __enter__(self) -> Interrupt:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


INTERRUPTED = [
    (name, at, when) for name in CATALOGUE for at, when in ((1, "before"), (1, "after"), (2, "before"))
]


@pytest.fixture(scope="module")
def interrupted_trace():
    model, processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=3, seed=5)
    model.train()
    model.set_attn_implementation({"text_config": "eager"})
    photo = Image.new("RGB", (40, 30), (200, 30, 30))
    return mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")


@pytest.mark.parametrize("name, at, when", INTERRUPTED)
def test_an_interruption_inside_any_method_leaves_the_model_as_found(interrupted_trace, name, at, when):
    """Stopped before the first forward of the language model, after it (mid-way through the method's passes),
    or before the second."""
    trace = dataclasses.replace(interrupted_trace, maps={})
    model = trace.run.model
    before = snapshot(model), hook_counts(model), implementations(model), model.training
    with Interrupt(model, at, when) as interrupt, contextlib.suppress(KeyboardInterrupt):
        trace.compute(name)
    if not interrupt.fired:
        assert interrupt.calls < at, "ran to the end without the interruption firing"
        pytest.skip(f"{name} runs the language model {interrupt.calls} time(s)")
    assert (snapshot(model), hook_counts(model), implementations(model), model.training) == before
    assert name not in trace.maps, "nothing half-computed is kept"
    assert capture_attention._ACTIVE.get() is None


def test_an_interrupted_compute_from_the_widget_answers_the_browser_and_restores_everything(interrupted_trace):
    trace = dataclasses.replace(interrupted_trace, maps={})
    inspector = mmviz.Inspector(trace)
    model = trace.run.model
    before = snapshot(model), hook_counts(model), implementations(model), model.training
    sent = []
    inspector.send = lambda content, buffers=None: sent.append(content)
    with Interrupt(model, 1), pytest.raises(KeyboardInterrupt):
        inspector._handle_msg(
            {"content": {"data": {"method": "custom", "content": {"type": "compute", "method": "relevancy",
                                                                   "request": "r1"}}}, "buffers": []}
        )  # fmt: skip
    assert sent == [
        {"type": "computed", "request": "r1", "method": "relevancy", "ok": False,
         "error": "interrupted: the kernel was stopped"}
    ]  # fmt: skip
    assert inspector.busy == "" and "relevancy" not in inspector.maps
    assert (snapshot(model), hook_counts(model), implementations(model), model.training) == before
