"""mmviz.trace: prompt handling, two-pass protocol, the Trace API."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mmviz
from mmviz.adapters.layout import KINDS
from mmviz.errors import InputError


def full_logits(model, processor, trace):
    pixel_values = processor(images=trace.images, text=trace.prompt, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(input_ids=torch.tensor(trace.token_ids)[None], pixel_values=pixel_values).logits[0]


def test_a_plain_question_gets_the_chat_template_and_the_image_placeholder(small_trace):
    assert small_trace.prompt == "USER: <image>\nWhat is in the picture? ASSISTANT:"
    assert small_trace.answer == " A red square."
    answer_tokens = small_trace.tokens[small_trace.answer_start :]
    assert "".join(answer_tokens) == " A red square."
    kinds = [KINDS[k] for k in small_trace.layout.kinds]
    assert kinds.count("image") == 16 and kinds[0] == "special"


def test_a_formatted_prompt_is_used_as_is_and_a_processor_without_template_gets_the_family_format(llava_small, photo):
    model, processor = llava_small
    formatted = "USER: <image>\nIs it red? ASSISTANT:"
    assert mmviz.trace(model, processor, photo, formatted, answer="Yes").prompt == formatted
    bare = copy.deepcopy(processor)
    bare.chat_template = None
    assert mmviz.trace(model, bare, photo, "Is it red?", answer="Yes").prompt == formatted


def test_answer_logprobs_are_read_one_position_before_each_answer_token(llava_small, small_trace):
    model, processor = llava_small
    log_probs = torch.log_softmax(full_logits(model, processor, small_trace), dim=-1)
    start = small_trace.answer_start
    ids = small_trace.token_ids
    expected = [log_probs[t - 1, ids[t]].item() for t in range(start, len(ids))]
    np.testing.assert_allclose(small_trace.answer_logprobs, expected, atol=1e-5)


def test_a_generated_answer_is_the_greedy_continuation_the_analysis_pass_agrees_with(llava_small, photo):
    model, processor = llava_small
    trace = mmviz.trace(model, processor, photo, "Describe the image.", max_new_tokens=5)
    assert len(trace.token_ids) - trace.answer_start == 5 or trace.token_ids[-1] == processor.tokenizer.eos_token_id
    logits = full_logits(model, processor, trace)
    start = trace.answer_start
    predicted = logits[start - 1 : len(trace.token_ids) - 1].argmax(-1).numpy()
    np.testing.assert_array_equal(predicted, trace.token_ids[start:])  # teacher forcing reproduces greedy


def test_attention_selections(small_trace):
    everything = small_trace.attention()
    n_layers, n_heads, n_rows, n_columns = everything.shape
    assert (n_layers, n_heads, n_columns) == (3, 4, 16)
    assert n_rows == len(small_trace.query_positions) == len(small_trace.layout.text_positions)
    np.testing.assert_array_equal(small_trace.attention(layer=small_trace.num_layers - 1), everything[-1])
    np.testing.assert_allclose(small_trace.attention(head="mean"), everything.mean(axis=1))
    np.testing.assert_array_equal(small_trace.attention(layer=1, head=2), everything[1, 2])
    np.testing.assert_allclose(small_trace.attention(layer=0, head="mean"), everything[0].mean(axis=0))
    last = int(small_trace.query_positions[-1])
    assert small_trace.row_of(last) == n_rows - 1
    with pytest.raises(ValueError, match="no attention row"):
        small_trace.row_of(int(small_trace.image_positions[0]))
    for outside in (3, -1, -4):  # no counting from the end, no wrapping
        with pytest.raises(InputError, match=rf"layer {outside} is out of range: choose a decoder layer in 0…2"):
            small_trace.attention(layer=outside)
    np.testing.assert_allclose(small_trace.attention(layer="mean"), everything.mean(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="'max'"):
        small_trace.attention(head="max")


def test_tokens_before_the_image_cannot_attend_to_it_and_later_ones_can(small_trace):
    first_image = int(small_trace.image_positions[0])
    mass = small_trace.attention().sum(axis=-1)  # (L, H, Q): attention mass on the image
    before = small_trace.query_positions < first_image
    assert mass[..., before].max() == 0
    assert mass[..., ~before].min() > 0


def test_repr_summarises(small_trace):
    text = repr(small_trace)
    assert "LLaVA-1.5" in text and "16 image tokens" in text and "3 layers × 4 heads" in text


def test_word_starts_merge_sub_word_pieces_only():
    from mmviz.adapters.tokens import word_starts

    strings = ["<s>", " The", " gir", "affe", "?", "\n", "Next", " one"]
    text = [False, True, True, True, True, True, True, True]
    assert word_starts(None, strings, text) == [True, True, True, False, False, True, True, True]
    assert word_starts(None, [" a", "b"], [True, False]) == [True, True], "a special token starts its own word"
