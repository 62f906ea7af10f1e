"""The logit lens at every depth."""

from __future__ import annotations

import numpy as np
import torch

from mmviz.methods import (
    logit_lens,
)


def test_logit_lens_last_layer_is_the_model(trace, trace_all_rows):
    for source in (trace, trace_all_rows):  # recomputed hidden states, and captured ones
        lens = logit_lens(source, k=3)
        np.testing.assert_allclose(lens.answer_probs[-1], np.exp(source.answer_logprobs), rtol=1e-4, atol=1e-6)
        run = source.run
        with torch.no_grad():
            logits = run.model(input_ids=run.input_ids, use_cache=False, **run.inputs).logits[0]
        assert (lens.top_ids[-1, :, 0] == logits.argmax(-1).numpy()).all()
        depths = lens.top_ids.shape[0]  # the embeddings and every layer; the map holds the layers only
        assert lens.map.values.shape == (depths - 1, len(source.tokens) - source.answer_start, 16)
        np.testing.assert_array_equal(lens.map.layers, np.arange(source.num_layers))
        final = torch.softmax(logits.float(), -1)[source.image_positions][:, source.token_ids[source.answer_start :]]
        np.testing.assert_allclose(lens.map.values[-1], final.T.numpy(), rtol=1e-4, atol=1e-6)  # after the last layer
        assert (lens.answer_ranks[-1][np.exp(source.answer_logprobs) > 0.5] == 0).all()


def test_logit_lens_reads_every_position_against_its_target(trace):
    """Text positions are read against the next token (answer token t at t − 1, matching answer_ranks), image
    positions against the first answer token; the ranks are those of a full sort of the lens distribution."""
    lens = logit_lens(trace, k=3)
    ids = trace.token_ids
    n = len(ids)
    assert lens.target_ids.shape == (n,) and lens.target_ranks.shape == (trace.num_layers + 1, n)
    text = np.setdiff1d(np.arange(n - 1), trace.image_positions)
    np.testing.assert_array_equal(lens.target_ids[text], ids[text + 1])
    np.testing.assert_array_equal(lens.target_ids[trace.image_positions], ids[trace.answer_start])
    assert lens.target_ids[-1] == lens.top_ids[-1, -1, 0]
    predicting = np.arange(trace.answer_start - 1, n - 1)
    np.testing.assert_array_equal(lens.target_ranks[:, predicting], lens.answer_ranks)
    top = lens.target_ranks == 0
    np.testing.assert_array_equal(top, lens.top_ids[:, :, 0] == lens.target_ids[None, :])
