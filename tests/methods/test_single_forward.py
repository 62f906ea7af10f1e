"""Methods computed from one forward: attention aggregations, image share, rollout, logit lens, projections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmviz.errors import InputError
from mmviz.methods import attention, image_share, logit_lens, projection, rollout, sink_positions


def test_attention_mean_matches_trace(trace):
    result = attention(trace)
    np.testing.assert_allclose(result.values, trace.attention(head="mean"), atol=1e-6)
    assert result.layers.tolist() == trace.layers.tolist()
    top = attention(trace, heads="max")
    assert (top.values >= result.values - 1e-7).all()
    one = attention(trace, heads=1, layers=[-1])
    np.testing.assert_allclose(one.values[0], trace.attention(layer=-1, head=1), atol=1e-6)


def test_attention_sink_masking_renormalises(trace):
    masked = attention(trace, mask_sinks=[0], normalise="raw")
    full = trace.attention_rows.copy()
    full[..., 0] = 0
    full /= np.maximum(full.sum(-1, keepdims=True), 1e-12)  # the first row reads only the sink: stays 0
    np.testing.assert_allclose(masked.values, full[..., trace.image_positions].mean(1), atol=1e-6)
    shares = attention(trace, normalise="image").values
    after_image = trace.query_positions > trace.image_positions.max()  # earlier rows cannot see the image
    np.testing.assert_allclose(shares[:, after_image].sum(-1), 1.0, atol=1e-5)
    assert (shares[:, ~after_image] == 0).all()
    assert sink_positions(trace).tolist()[0] == 0
    with pytest.raises(InputError, match="normalise"):
        attention(trace, normalise="log")


def test_image_share_groups_partition_attention(trace):
    share = image_share(trace)
    total = sum(share.groups.values())
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    image = trace.attention_rows[..., trace.layout.positions("image")].sum(-1)  # (L, H, Q)
    np.testing.assert_allclose(share.share, image.mean(-1), atol=1e-6)
    np.testing.assert_allclose(share.row_share, image, atol=1e-6)
    rows = trace.attention_rows.astype(np.float64)
    entropy = -(rows * np.log(np.where(rows > 0, rows, 1.0))).sum(-1)
    np.testing.assert_allclose(share.row_entropy, entropy, atol=1e-4)
    np.testing.assert_allclose(share.entropy, entropy.mean(-1), atol=1e-4)
    assert (share.entropy > 0).all()
    answer = image_share(trace, rows="answer")
    assert answer.positions.min() == trace.answer_start - 1


def _eager_attention(trace) -> list[torch.Tensor]:
    run = trace.run
    run.model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            output = run.model(input_ids=run.input_ids, use_cache=False, output_attentions=True, **run.inputs)
    finally:
        run.model.set_attn_implementation({"text_config": "sdpa"})
    return [a[0].double().mean(0) for a in output.attentions]


def test_rollout_rows_sum_to_one_and_match_matrix_product(trace):
    result = rollout(trace)
    np.testing.assert_allclose(result.text_values.sum(-1), 1.0, atol=1e-5)
    n = len(trace.tokens)
    product = torch.eye(n, dtype=torch.float64)
    for mixed in _eager_attention(trace):  # R = Â_L … Â_1 built the slow way, from eager attention
        step = 0.5 * mixed + 0.5 * torch.eye(n, dtype=torch.float64)
        product = (step / step.sum(-1, keepdim=True)) @ product
    expected = product[torch.as_tensor(trace.query_positions)].numpy()
    np.testing.assert_allclose(result.text_values, expected, atol=1e-5)
    masked = rollout(trace, mask_sinks=True)
    assert masked.text_values[:, 1:].sum() > result.text_values[:, 1:].sum()


def test_logit_lens_last_layer_is_the_model(trace, trace_all_rows):
    for source in (trace, trace_all_rows):  # recomputed hidden states, and captured ones
        lens = logit_lens(source, k=3)
        np.testing.assert_allclose(lens.answer_probs[-1], np.exp(source.answer_logprobs), rtol=1e-4, atol=1e-6)
        run = source.run
        with torch.no_grad():
            logits = run.model(input_ids=run.input_ids, use_cache=False, **run.inputs).logits[0]
        assert (lens.top_ids[-1, :, 0] == logits.argmax(-1).numpy()).all()
        assert lens.map.values.shape == (lens.top_ids.shape[0], len(source.tokens) - source.answer_start, 16)
        assert (lens.answer_ranks[-1][np.exp(source.answer_logprobs) > 0.5] == 0).all()


def test_projection_is_one_frame_for_all_layers(trace_all_rows):
    result = projection(trace_all_rows)
    depths = trace_all_rows.hidden_states.shape[0]
    assert result.coords.shape == (depths, len(trace_all_rows.tokens), 2)
    assert 0 < result.explained <= 1
    assert result.is_image.sum() == 16 and (result.grid[~result.is_image] == -1).all()
    assert (result.modality_gap >= 0).all() and (result.modality_gap <= 2).all()
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="umap-learn"):
            projection(trace_all_rows, method="umap")


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
