"""Bad input gets one clear error that says what to do, and nothing in the model changes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

import mmviz
from mmviz.capture import snapshot
from mmviz.inputs import load_image
from mmviz.zoo import tiny_llava


def test_images_come_as_pil_arrays_or_paths(tmp_path, photo):
    path = tmp_path / "photo.png"
    photo.save(path)
    array = np.asarray(photo)
    for image in (photo, array, path, str(path)):
        loaded = load_image(image)
        assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), array)
    gray = load_image(np.full((4, 5), 7, np.uint8))
    assert np.asarray(gray).shape == (4, 5, 3)
    transparent = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    assert np.asarray(load_image(transparent)).min() == 255  # composited on white, not black


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 5, 3), np.float32), "dtype uint8"),
        (np.zeros((3, 4, 5), np.uint8), "H×W×3"),
        ("/no/such/file.png", "does not exist"),
        (42, "PIL image"),
        (Image.new("RGB", (0, 0)), "empty"),
    ],
)
def test_unusable_images_say_what_to_pass(llava_small, image, message):
    model, processor = llava_small
    with pytest.raises(mmviz.InputError, match=message):
        mmviz.trace(model, processor, image, "What is it?")


def test_a_file_that_is_not_an_image(tmp_path, llava_small):
    model, processor = llava_small
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(mmviz.InputError, match="cannot read"):
        mmviz.trace(model, processor, path, "What is it?")


@pytest.mark.parametrize("prompt", ["", "   ", None])
def test_empty_prompts_are_rejected(llava_small, photo, prompt):
    model, processor = llava_small
    with pytest.raises(mmviz.InputError, match="prompt"):
        mmviz.trace(model, processor, photo, prompt)


def test_bad_answers_and_lengths(llava_small, photo):
    model, processor = llava_small
    with pytest.raises(mmviz.InputError, match="answer is empty"):
        mmviz.trace(model, processor, photo, "What?", answer=" ")
    with pytest.raises(mmviz.InputError, match="must lie in"):
        mmviz.trace(model, processor, photo, "What?", answer=[10**6])
    with pytest.raises(mmviz.InputError, match="max_new_tokens"):
        mmviz.trace(model, processor, photo, "What?", max_new_tokens=0)
    with pytest.raises(TypeError):
        mmviz.trace(model, processor, photo, "What?", max_tokens=3)  # unknown keyword


def test_unsupported_models_name_the_supported_families():
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
    )
    model = LlamaForCausalLM(config)
    _, processor = tiny_llava(image_size=28, num_layers=1)
    with pytest.raises(mmviz.UnsupportedModelError, match=r"'llama'.*LLaVA-1\.5 \(llava\).*register_adapter"):
        mmviz.trace(model, processor, np.zeros((8, 8, 3), np.uint8), "What?")


def test_a_processor_from_another_model_is_caught_before_the_model_runs(llava_small, photo):
    model, _ = llava_small
    state = snapshot(model)
    _, other_size = tiny_llava(image_size=112, num_layers=1)
    with pytest.raises(mmviz.ProcessorMismatchError, match="vision tower takes 56×56"):
        mmviz.trace(model, other_size, photo, "What?")
    with pytest.raises(mmviz.ProcessorMismatchError, match="not a tokenizer"):
        mmviz.trace(model, other_size.tokenizer, photo, "What?")
    wrong_token = copy.deepcopy(model)
    wrong_token.config.image_token_id = 5
    with pytest.raises(mmviz.ProcessorMismatchError, match="image token"):
        mmviz.trace(wrong_token, other_size, photo, "What?")
    _, processor = llava_small
    with pytest.raises(mmviz.ProcessorMismatchError, match="placeholders"):
        mmviz.trace(model, processor, photo, "USER: <image><image>\nWhat? ASSISTANT:")
    assert snapshot(model) == state


def test_a_processor_with_the_wrong_token_count_is_caught(llava_small, photo):
    model, processor = llava_small
    wrong = copy.deepcopy(processor)
    wrong.num_additional_image_tokens = 0  # inserts 15 tokens where the model needs 16
    with pytest.raises(mmviz.ProcessorMismatchError, match="inserted 15 image tokens"):
        mmviz.trace(model, wrong, photo, "What?")
    small_vocab = copy.deepcopy(model)
    small_vocab.config.text_config.vocab_size = 10
    with pytest.raises(mmviz.ProcessorMismatchError, match="vocabulary"):
        mmviz.trace(small_vocab, processor, photo, "What?")
    assert torch.is_tensor(next(model.parameters()))


def test_a_user_adapter_adds_a_family(fresh_llava, photo):
    """A family mmviz does not know (here: a LLaVA-built model under a new model_type) is laid out by measurement;
    one it cannot measure is refused with why, the list of supported families and register_adapter; a registered
    adapter takes over."""
    from mmviz.adapters import _REGISTRY as registry
    from mmviz.adapters import LlavaAdapter, supported_families

    model, processor = fresh_llava
    model.config.model_type = "my_vlm"
    measured = mmviz.trace(model, processor, photo, "What?", answer="red")
    assert measured.layout.source == "measured" and len(measured.image_positions) == 16
    model.config.image_token_id, image_token = None, model.config.image_token_id
    try:
        with pytest.raises(
            mmviz.UnsupportedModelError, match=r"'my_vlm'.*no image_token_id.*Qwen2-VL \(qwen2_vl\).*register_adapter"
        ):
            mmviz.trace(model, processor, photo, "What?", answer="red")
    finally:
        model.config.image_token_id = image_token

    class MyAdapter(LlavaAdapter):
        family = "My-VLM"
        model_types = ("my_vlm",)

    try:
        assert mmviz.register_adapter(MyAdapter) is MyAdapter
        assert supported_families()["my_vlm"] == "My-VLM"
        with pytest.raises(ValueError, match="already has the adapter MyAdapter"):
            mmviz.register_adapter(type("Other", (LlavaAdapter,), {"family": "X", "model_types": ("my_vlm",)}))
        trace = mmviz.trace(model, processor, photo, "What?", answer="red")
        assert trace.family == "My-VLM" and len(trace.image_positions) == 16 and trace.layout.source == "adapter"
    finally:
        registry.pop("my_vlm", None)
    with pytest.raises(TypeError, match="Adapter subclass"):
        mmviz.register_adapter(object)


def test_a_16_bit_image_is_scaled_not_clipped_and_wide_modes_say_how_to_convert():
    ramp = Image.fromarray((np.arange(256, dtype=np.uint16) * 257).reshape(1, 256))  # 0 … 65535
    assert ramp.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(load_image(ramp))[0, :, 0], np.arange(256))  # not all white
    for mode, values in (("F", np.linspace(0, 1, 12, dtype=np.float32)), ("I", np.arange(12, dtype=np.int32))):
        with pytest.raises(mmviz.InputError, match=r"convert it to 8-bit first, e\.g\. Image\.fromarray"):
            load_image(Image.fromarray(values.reshape(3, 4), mode=mode))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"methods": "relevancy"}, r"methods must be a list of method names"),
        ({"methods": None}, r"methods must be a list of method names"),
        ({"methods": [["relevancy"]]}, r"unknown methods \[\['relevancy'\]\]"),
        ({"capture": "all"}, r"capture must be a mmviz.CapturePlan"),
        ({"answer": 5}, r"answer must be text, a list of token ids or None"),
        ({"max_new_tokens": True}, r"max_new_tokens must be a positive integer"),
    ],
)
def test_wrong_argument_types_get_one_line_errors(llava_small, photo, arguments, message):
    model, processor = llava_small
    before = snapshot(model)
    with pytest.raises(mmviz.InputError, match=message):
        mmviz.trace(model, processor, photo, "What is it?", **arguments)
    assert snapshot(model) == before


@pytest.mark.parametrize(
    "plan, message",
    [
        ({"layers": ["0"]}, r"layers must be a list of decoder layer numbers"),
        ({"layers": [0.5]}, r"layers must be a list of decoder layer numbers"),
        ({"layers": "0"}, r"layers must be a list of decoder layer numbers"),
        ({"budget_bytes": "4G"}, r"budget_bytes must be a positive number of bytes"),
        ({"budget_bytes": 0}, r"budget_bytes must be a positive number of bytes"),
        ({"queries": "answer"}, r"queries must be 'text', 'all'"),
    ],
)
def test_capture_plans_check_their_types_when_made(plan, message):
    with pytest.raises(mmviz.InputError, match=message):
        mmviz.CapturePlan(**plan)


def test_plan_layers_and_the_prompt_are_checked_before_generation(llava_small, photo, monkeypatch):
    model, processor = llava_small
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("generation ran before the check"))
    for layers in ([], [3], [-1]):
        with pytest.raises(mmviz.InputError, match="decoder layer"):
            mmviz.trace(model, processor, photo, "What is it?", capture=mmviz.CapturePlan(layers=layers))
    with pytest.raises(mmviz.InputError, match="lone surrogate"):
        mmviz.trace(model, processor, photo, "What is \ud800 it?")


def test_a_huge_generation_length_is_named_in_the_budget_message(llava_small, photo):
    model, processor = llava_small
    with pytest.raises(mmviz.CaptureBudgetError, match=r"because of max_new_tokens=1000000000 \(lower it\)"):
        mmviz.trace(model, processor, photo, "What is it?", max_new_tokens=10**9)


def test_an_image_placeholder_in_the_answer_is_never_generated_and_refused_when_given(fresh_llava, photo):
    model, processor = fresh_llava
    question = "What is in the picture?"
    plain = mmviz.trace(model, processor, photo, question, max_new_tokens=4)
    first, image_id = int(plain.token_ids[plain.answer_start]), model.config.image_token_id
    with torch.no_grad():  # the image placeholder now beats the first answer token by far
        model.lm_head.weight[image_id] = model.lm_head.weight[first] * 10
    prompt = plain.token_ids[: plain.answer_start][None]
    unrestricted = model.generate(input_ids=torch.as_tensor(prompt), **plain.run.inputs, max_new_tokens=1)
    assert int(unrestricted[0, -1]) == image_id, "without mmviz's suppression the model generates it"
    traced = mmviz.trace(model, processor, photo, question, max_new_tokens=4)
    np.testing.assert_array_equal(traced.token_ids[traced.answer_start :], plain.token_ids[plain.answer_start :])
    with pytest.raises(mmviz.InputError, match=r"the answer holds the image placeholder token\(s\) \['<image>'\]"):
        mmviz.trace(model, processor, photo, question, answer="a <image> b")
