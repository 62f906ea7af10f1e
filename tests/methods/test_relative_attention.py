"""Relative attention: the question's attention rows over the generic prompt's, per answer token and layer."""

from __future__ import annotations

import numpy as np

import mmviz
from mmviz.methods import relative_attention


def test_relative_attention_divides_by_the_generic_prompts_attention(trace):
    result = relative_attention(trace, generic="Describe the image.")
    run = trace.run
    answer = trace.token_ids[trace.answer_start :].tolist()
    generic = mmviz.trace(run.model, run.adapter.processor, list(run.images), "Describe the image.", answer=answer)
    for k, position in enumerate(range(trace.answer_start, len(trace.tokens))):
        question = trace.attention(head="mean")[:, trace.row_of(position - 1)]
        reference = generic.attention(head="mean")[:, generic.row_of(generic.answer_start + k - 1)]
        np.testing.assert_allclose(result.values[:, k], question / np.maximum(reference, 1e-6), rtol=1e-4)
    assert result.info["generic_prompt"] == "Describe the image."


def test_the_same_prompt_as_generic_gives_ones(trace):
    result = relative_attention(trace, generic="What is in the picture?")
    np.testing.assert_allclose(result.values, 1.0, rtol=1e-4)
