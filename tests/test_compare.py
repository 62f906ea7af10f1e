"""``mmviz.compare``: maps on the original image's pixels, answer tokens paired by text, and the metrics — checked by
their properties, against hand computations on designed maps, on traces without their model, and across two
families (tiny LLaVA vs tiny Qwen2-VL)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import mmviz
from mmviz.errors import InputError
from mmviz.evaluation.comparison import (
    average_ranks,
    jensen_shannon,
    pair_answer_tokens,
    position_links,
    spearman,
    top_set,
)
from mmviz.records import Map
from mmviz.widget.comparison import ComparisonWidget, comparison_payload

PROMPT = "What is in the picture?"


@pytest.fixture(scope="module")
def square_model():
    """56 px canvas, 14 px patches: on a 56×56 image each of the 4×4 tokens reads exactly a 14×14 px block."""
    return mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=3, seed=4)


@pytest.fixture(scope="module")
def square_image() -> Image.Image:
    y, x = np.mgrid[0:56, 0:56]
    return Image.fromarray(np.stack([x * 4, y * 4, np.full_like(x, 90)], axis=-1).astype(np.uint8))


@pytest.fixture(scope="module")
def two_prompts(llava_small, photo):
    model, processor = llava_small
    a = mmviz.trace(model, processor, photo, PROMPT, answer="A red square.")
    b = mmviz.trace(model, processor, photo, "What color is the triangle?", answer="A blue square.")
    return a, b


def designed(trace: mmviz.Trace, hot: dict[int, float]) -> Map:
    """A map over the trace's image tokens: ``hot[token index] = value`` for every answer token, 0 elsewhere."""
    positions = trace.answer_start + np.arange(len(trace.answer_logprobs))
    values = np.zeros((len(positions), len(trace.image_positions)), np.float32)
    for column, value in hot.items():
        values[:, column] = value
    return Map(
        method="designed",
        label="designed",
        meaning="a map made by hand",
        values=values,
        positions=positions,
        columns=trace.image_positions,
    )


def test_a_trace_compared_with_itself_has_zero_divergence_and_correlation_one(small_trace):
    small_trace = dataclasses.replace(small_trace, maps={})  # the shared fixture may carry other tests' maps
    comparison = mmviz.compare(small_trace, small_trace)
    table = comparison.table
    assert set(table["method"]) == {"attention"}
    assert len(table["js"]) == small_trace.num_layers * len(small_trace.answer_logprobs)
    np.testing.assert_allclose(table["js"], 0.0, atol=1e-12)
    np.testing.assert_array_equal(table["spearman"], 1.0)
    np.testing.assert_array_equal(table["iou_topk"], 1.0)
    np.testing.assert_array_equal(table["delta_logprob"], 0.0)
    assert not comparison.answer_changed and comparison.delta_logprob == 0.0
    assert all(pair.same_text for pair in comparison.pairs) and comparison.unpaired == {"a": [], "b": []}
    for layer in ["mean", *range(small_trace.num_layers)]:
        (diff,) = comparison.difference("attention", layer=layer, pair=2)
        assert np.nanmax(np.abs(diff)) == 0.0


def test_metrics_are_symmetric_and_the_changes_antisymmetric(two_prompts):
    a, b = two_prompts
    forward, backward = mmviz.compare(a, b), mmviz.compare(b, a)
    for key in ("js", "spearman", "iou_topk"):
        np.testing.assert_allclose(forward.table[key], backward.table[key], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(forward.table["delta_logprob"], -backward.table["delta_logprob"], rtol=1e-6)
    assert forward.delta_logprob == pytest.approx(-backward.delta_logprob)
    assert forward.answer_changed and backward.answer_changed
    assert (forward.table["js"] > 0).all(), "two prompts read the image differently"
    for layer in (0, "mean"):
        (ab,) = forward.difference("attention", layer=layer, pair=0)
        (ba,) = backward.difference("attention", layer=layer, pair=0)
        np.testing.assert_allclose(ab, -ba, atol=1e-6)


def test_answer_tokens_pair_by_text(two_prompts):
    a, b = two_prompts
    pairs, unpaired = pair_answer_tokens(a, b)
    texts = [(p.token_a, p.token_b, p.same_text) for p in pairs]
    assert texts[0] == (" A", " A", True) and texts[-2:] == [(" square", " square", True), (".", ".", True)]
    assert not any(same for _, _, same in texts[1:-2]), "' red' and ' blue' differ: paired in order, not as equal"
    assert unpaired == {"a": [], "b": []}
    # The same words split differently pair by the characters they share; extra tokens stay unpaired.
    fake = lambda tokens: SimpleNamespace(  # noqa: E731
        tokens=["<s>", *tokens], answer_start=1, answer_logprobs=np.zeros(len(tokens))
    )
    pairs, unpaired = pair_answer_tokens(fake([" re", "d", " box", "."]), fake([" red", " box", " now", "."]))
    assert [(p.token_a, p.token_b, p.same_text) for p in pairs] == [
        (" re", " red", True),
        ("d", " red", True),
        (" box", " box", True),
        (".", ".", True),
    ]
    assert unpaired == {"a": [], "b": [3]}


def test_position_links_follow_pairs_and_prompt_text(two_prompts):
    a, b = two_prompts
    comparison = mmviz.compare(a, b)
    links = position_links(a, b, comparison.pairs)
    for pair in comparison.pairs:
        assert links[pair.position_a] == pair.position_b
        assert links[pair.position_a - 1] == pair.position_b - 1  # the query rows that predict them
    what = a.tokens.index("What")  # both prompts start "USER: <image>\nWhat"
    assert b.tokens[links[what]] == "What" and b.tokens[links[what - 1]] == a.tokens[what - 1]
    assert (links[a.layout.image_positions] == -1).all(), "image tokens are linked by pixels, not by text"


def test_a_shifted_map_moves_the_overlap_as_computed_by_hand(square_model, square_image):
    model, processor = square_model
    a = mmviz.trace(model, processor, square_image, PROMPT, answer="A red square.")
    b = mmviz.trace(model, processor, square_image, "What color is the triangle?", answer="A red square.")
    assert len(a.image_positions) == 16
    a.maps["designed"] = designed(a, {0: 1.0, 1: 0.5})  # tokens (0, 0) and (0, 1)
    b.maps["designed"] = designed(b, {1: 1.0, 2: 0.5})  # the same map, one token to the right
    comparison = mmviz.compare(a, b, methods=["designed"], top_k=0.1, grid_side=56)
    assert comparison.grid_shape == [(56, 56)] and comparison.shared.all()
    result = comparison.methods["designed"]
    # Painted on pixels: token k of the 4×4 grid is the 14×14 block (k // 4, k % 4); A sums to 1 over 3136 cells.
    cells = result.pixels_a[0, 0].reshape(56, 56)
    np.testing.assert_allclose(cells[:14, :14], (1.0 / 1.5) / 196, rtol=1e-5)
    np.testing.assert_allclose(cells[:14, 14:28], (0.5 / 1.5) / 196, rtol=1e-5)
    assert (cells[14:] == 0).all() and (cells[:, 28:] == 0).all()
    # The top 10% = 314 cells: the 314th largest is a 0.5 cell, so both hot tokens (392 cells) are in each top set;
    # they share one token of 196 cells out of three tokens: IoU = 196 / 588.
    np.testing.assert_allclose(comparison.table["iou_topk"], 196 / 588)
    # Jensen–Shannon by hand, per token mass: A (2/3, 1/3, 0), B (0, 2/3, 1/3), M (1/3, 1/2, 1/6).
    kl_a = 2 / 3 * math.log2((2 / 3) / (1 / 3)) + 1 / 3 * math.log2((1 / 3) / (1 / 2))
    kl_b = 2 / 3 * math.log2((2 / 3) / (1 / 2)) + 1 / 3 * math.log2((1 / 3) / (1 / 6))
    np.testing.assert_allclose(comparison.table["js"], (kl_a + kl_b) / 2, rtol=1e-6)
    # Spearman by hand: average ranks of the 3136 cells (ties share their mean rank), Pearson of the ranks.
    value_a = np.zeros(16)
    value_a[[0, 1]] = [1.0, 0.5]
    value_b = np.zeros(16)
    value_b[[1, 2]] = [1.0, 0.5]
    block = lambda v: np.kron(v.reshape(4, 4), np.ones((14, 14))).ravel()  # noqa: E731
    ranks = lambda v: np.array([np.mean(np.flatnonzero(np.sort(v) == x)) for x in v])  # noqa: E731
    expected = np.corrcoef(ranks(block(value_a)), ranks(block(value_b)))[0, 1]
    np.testing.assert_allclose(comparison.table["spearman"], expected, rtol=1e-9)
    # The A − B map: +1 uniform share is 1/3136 of the mass; A's first token holds 2/3 of it over 196 cells.
    (diff,) = comparison.difference("designed", pair=0)
    np.testing.assert_allclose(diff[0, 0], (2 / 3) / 196 * 3136, rtol=1e-5)
    np.testing.assert_allclose(diff[0, 20], (1 / 3 - 2 / 3) / 196 * 3136, rtol=1e-5)
    np.testing.assert_allclose(diff[0, 30], -(1 / 3) / 196 * 3136, rtol=1e-5)
    # Shifted twice as far, the top sets no longer meet.
    b.maps["designed"] = designed(b, {2: 1.0, 3: 0.5})
    assert (mmviz.compare(a, b, methods=["designed"], grid_side=56).table["iou_topk"] == 0).all()


def test_pixels_no_token_reads_are_left_out(two_prompts):
    a, b = two_prompts  # a 160×90 photo; CLIP's centre crop reads only the middle 90×90
    comparison = mmviz.compare(a, b)
    assert comparison.grid_shape == [(36, 64)]
    shared = comparison.shared.reshape(36, 64)
    x0, _, x1, _ = a.layout.images[0].covered
    columns = np.flatnonzero(shared.all(axis=0))
    assert (~shared[:, : int(x0 / 2.5) - 1]).all() and (~shared[:, int(np.ceil(x1 / 2.5)) + 1 :]).all()
    assert columns[0] * 2.5 == pytest.approx(x0, abs=2.5) and (columns[-1] + 1) * 2.5 == pytest.approx(x1, abs=2.5)
    (diff,) = comparison.difference("attention", layer=1, pair=0)
    assert np.isnan(diff[~shared]).all() and np.isfinite(diff[shared]).all()
    pixels = comparison.methods["attention"].pixels_a
    np.testing.assert_allclose(np.nansum(pixels, axis=-1), 1.0, rtol=1e-5)


def test_traces_without_their_model_compare_what_they_carry(two_prompts):
    a, b = two_prompts
    a.compute("attention_max")
    b.compute("attention_max")
    saved_a, saved_b = dataclasses.replace(a, run=None), dataclasses.replace(b, run=None)
    assert set(mmviz.compare(saved_a, saved_b).methods) == {"attention", "attention_max"}, "what both carry"
    comparison = mmviz.compare(saved_a, saved_b, methods=["attention", "attention_max", "attention_sinks_masked"])
    live = mmviz.compare(a, b, methods=["attention", "attention_max", "attention_sinks_masked"])
    np.testing.assert_allclose(comparison.table["js"], live.table["js"])
    assert list(comparison.methods) == ["attention", "attention_max", "attention_sinks_masked"]
    with pytest.raises(InputError, match="no 'relevancy' map and no model to compute it"):
        mmviz.compare(saved_a, saved_b, methods=["relevancy"])
    ComparisonWidget(comparison)  # the widget needs no model either


def test_bad_input_says_what_to_do(two_prompts, small_trace):
    a, b = two_prompts
    partial = dataclasses.replace(
        a, run=None, layers=a.layers[:1], attention_rows=a.attention_rows[:1], maps={}, num_layers=a.num_layers
    )
    with pytest.raises(InputError, match="share no method to compare"):
        mmviz.compare(partial, b)
    with pytest.raises(InputError, match=r"two mmviz\.Trace"):
        mmviz.compare(a, "b.png")
    with pytest.raises(InputError, match="top_k"):
        mmviz.compare(a, b, top_k=0)
    with pytest.raises(InputError, match="methods is a list"):
        mmviz.compare(a, b, methods="attention")
    with pytest.raises(InputError, match="same number of images"):
        mmviz.compare(a, dataclasses.replace(b, images=[*b.images, *b.images]))
    comparison = mmviz.compare(a, b)
    with pytest.raises(InputError, match="was not compared"):
        comparison.rows("relevancy")
    with pytest.raises(InputError, match="pair must be"):
        comparison.difference("attention", pair=99)
    with pytest.raises(InputError, match=r"ComparisonWidget takes an mmviz\.Comparison"):
        ComparisonWidget(small_trace)


def test_metric_helpers_on_small_arrays():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(jensen_shannon(p, q), [0.5, 0.0])
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [2.5, 0.0, 2.5, 1.0])
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(3), np.arange(3.0)))
    np.testing.assert_array_equal(top_set(np.array([5.0, 4.0, 4.0, 1.0]), 0.5), [True, True, True, False])


def test_the_divergence_plot_has_a_line_per_method_linked_to_the_widget(two_prompts):
    import mmviz.plots

    a, b = two_prompts
    comparison = mmviz.compare(a, b)
    view = ComparisonWidget(comparison)
    plot = mmviz.plots.divergence(view)
    (line,) = plot.select({"name": "divergence:attention"})
    np.testing.assert_allclose(line.data_source.data["y"], comparison.per_layer("attention")["js"])
    (marker,) = plot.select({"name": mmviz.plots.LAYER_MARKER})
    view.layer = 1
    assert marker.location == 1
    with pytest.raises(TypeError, match=r"mmviz\.Comparison"):
        mmviz.plots.divergence(a)


def test_comparison_widget_state_and_validation(two_prompts):
    a, b = two_prompts
    comparison = mmviz.compare(a, b)
    view = ComparisonWidget(comparison)
    assert view.comparison is comparison and view.trace is a and view.kind == "comparison"
    assert view.layer == a.num_layers - 1 and view.method == "attention"
    payload = comparison_payload(comparison)
    diff = mmviz.wire.decode(payload["methods"]["attention"]["diff"])
    assert diff.shape == (a.num_layers + 1, len(comparison.pairs), 36 * 64)
    (expected,) = comparison.difference("attention", layer="mean", pair=1)
    np.testing.assert_allclose(diff[-1, 1], np.nan_to_num(expected).ravel(), atol=2e-3)
    assert np.frombuffer(payload["links_a"], "<i4").shape == (len(a.tokens),)
    assert set(view.side_a["prefetched"]) == {"heads:mean", *(f"heads:{layer}" for layer in range(a.num_layers))}
    view.set_state({"layer": 0, "method": "attention"})
    assert view.layer == 0
    view.set_state({"layer": 99})  # out of range: refused, nothing changes
    view.set_state({"side_a": {}})  # kernel-owned
    assert view.layer == 0 and view.side_a["tokens"] == list(a.tokens)
    page = view.to_html()
    assert "mountComparisonStatic" in page and "cdn." not in page


@pytest.mark.slow
def test_two_families_compare_end_to_end(llava_small, photo):
    from tests.families.build_qwen_idefics import build_qwen2_vl

    llava, llava_processor = llava_small
    qwen, qwen_processor = build_qwen2_vl()
    a = mmviz.trace(llava, llava_processor, photo, PROMPT, answer="A red square.")
    b = mmviz.trace(qwen, qwen_processor, photo, PROMPT, answer="A red square.")
    assert (a.family, b.family) == ("LLaVA-1.5", "Qwen2-VL")
    assert len(a.image_positions) != len(b.image_positions), "different token grids over the same image"
    comparison = mmviz.compare(a, b)
    result = comparison.methods["attention"]
    # 3 LLaVA layers against 2 Qwen2-VL layers, paired by relative depth, halves up (0, ½, 1 → 0, 1, 1).
    assert result.layers_a.tolist() == [0, 1, 2] and result.layers_b.tolist() == [0, 1, 1]
    assert [p.token_a for p in comparison.pairs] == [p.token_b for p in comparison.pairs]
    # Qwen2-VL reads the whole photo, LLaVA's centre crop only the middle: the shared cells are LLaVA's.
    llava_only = mmviz.compare(a, a).shared
    np.testing.assert_array_equal(comparison.shared, llava_only)
    assert np.isfinite(comparison.table["js"]).all() and (comparison.table["js"] > 0).all()
    assert comparison.table["layer_b"].tolist()[: len(comparison.pairs)] == [0] * len(comparison.pairs)
    page = ComparisonWidget(comparison).to_html()
    assert "Qwen2-VL" in page


def test_a_saved_trace_compares_like_the_one_it_was_saved_from(two_prompts, tmp_path):
    """Last month's file against today's trace: the maps it carries and its attention (quantised in the file to
    half a step of each row) give the same pairs and nearly the same figures."""
    a, b = two_prompts
    loaded = mmviz.load(a.save(tmp_path / "a.mmviz"))
    fresh, reopened = mmviz.compare(a, b), mmviz.compare(loaded, b)
    assert [(p.token_a, p.token_b) for p in reopened.pairs] == [(p.token_a, p.token_b) for p in fresh.pairs]
    assert reopened.answer_changed == fresh.answer_changed and reopened.delta_logprob == fresh.delta_logprob
    # rank statistics move most: a quantisation step can reorder two near-equal tokens of a 4×4 grid
    for key, tolerance in (("js", 0.02), ("spearman", 0.1), ("iou_topk", 0.25)):
        np.testing.assert_allclose(reopened.table[key], fresh.table[key], atol=tolerance, err_msg=key)
