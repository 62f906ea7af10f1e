"""After trace / inspect the user's model is exactly as it was, also when the call fails midway."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import mmviz
from mmviz.capture import attention as capture_attention
from mmviz.capture import snapshot


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
