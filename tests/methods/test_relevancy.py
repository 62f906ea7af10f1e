"""Relevancy through the dO·Vᵀ identity equals an eager-mode reference of the same rules."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import mmviz
from mmviz.capture import CaptureBudgetError
from mmviz.capture.attention import row_scores
from mmviz.capture.plan import relevancy_rows_per_chunk, relevancy_transient_bytes
from mmviz.errors import InputError
from mmviz.methods import Target, relevancy
from mmviz.zoo import tiny_llava
from tests.families.registry import cases

# the module itself: the attribute mmviz.methods.relevancy is the function
relevancy_module = importlib.import_module("mmviz.methods.relevancy")


def eager_relevancy(trace: mmviz.Trace, position: int) -> np.ndarray:
    """Reference: eager attention weights with retain_grad, full R matrices, R ← R + Ā·R layer by layer."""
    run = trace.run
    model = run.model
    model.set_attn_implementation({"text_config": "eager"})
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        output = model(
            input_ids=run.input_ids,
            attention_mask=torch.ones_like(run.input_ids),
            use_cache=False,
            output_attentions=True,
            **run.inputs,
        )
        attentions = output.attentions
        for attention in attentions:
            attention.retain_grad()
        score = torch.log_softmax(output.logits[0, position - 1].float(), -1)[run.input_ids[0, position]]
        score.backward()
        n = run.length
        relevance = torch.eye(n)
        for attention in attentions:
            weighted = (attention.grad[0] * attention[0]).clamp(min=0).mean(0).detach()
            relevance = relevance + weighted @ relevance
        return (relevance - torch.eye(n))[position - 1].numpy()
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
        model.zero_grad(set_to_none=True)
        for parameter in model.parameters():
            parameter.requires_grad_(True)


@pytest.fixture(scope="module")
def trace_for_relevancy(llava_small, photo):
    model, processor = llava_small
    return mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")


def test_relevancy_matches_eager_reference(trace_for_relevancy):
    trace = trace_for_relevancy
    result = relevancy(trace)
    assert result.values.shape == (len(trace.tokens) - trace.answer_start, len(trace.image_positions))
    for row, position in enumerate(result.positions):
        expected = eager_relevancy(trace, int(position))
        np.testing.assert_allclose(result.text_values[row], expected, atol=1e-4, rtol=1e-3)
        assert np.abs(expected[trace.image_positions]).max() > 0  # the comparison is not between zeros


def test_relevancy_targets_are_fresh(trace_for_relevancy):
    """Each target's map equals the map computed for it alone (no stale or accumulated gradients)."""
    trace = trace_for_relevancy
    together = relevancy(trace)
    for row, position in enumerate(together.positions):
        alone = relevancy(trace, Target.logprob(int(position)))
        np.testing.assert_allclose(together.values[row], alone.values[0], atol=1e-6)


def test_relevancy_through_the_vision_tower_matches_eager_reference(trace_for_relevancy):
    trace = trace_for_relevancy
    position = trace.answer_start + 1
    result = relevancy(trace, Target.logprob(position), vision=True)
    run = trace.run
    model = run.model
    model.set_attn_implementation({"text_config": "eager", "vision_config": "eager"})
    vision_weights: list[torch.Tensor] = []
    modules = [m for m in model.model.vision_tower.modules() if type(m).__name__ == "CLIPAttention"]

    def keep(module, args, output):
        output[1].retain_grad()
        vision_weights.append(output[1])

    handles = [module.register_forward_hook(keep) for module in modules]
    try:
        pixels = run.inputs["pixel_values"].clone().requires_grad_(True)
        inputs = {**run.inputs, "pixel_values": pixels}
        output = model(input_ids=run.input_ids, use_cache=False, output_attentions=True, **inputs)
        for attention in output.attentions:
            attention.retain_grad()
        torch.log_softmax(output.logits[0, position - 1].float(), -1)[run.input_ids[0, position]].backward()
        n = run.length
        text = torch.eye(n)
        for attention in output.attentions:
            text = text + (attention.grad[0] * attention[0]).clamp(min=0).mean(0).detach() @ text
        row = (text - torch.eye(n))[position - 1][torch.as_tensor(trace.image_positions)]
        tokens = vision_weights[0].shape[-1]
        vit = torch.eye(tokens)
        for weights in vision_weights:
            grad = torch.zeros_like(weights) if weights.grad is None else weights.grad
            vit = vit + (grad[0] * weights[0]).clamp(min=0).mean(0).detach() @ vit
        scattered = torch.zeros(tokens)
        scattered[1:] = row  # CLS first, then the 4×4 patches in raster order
        expected = (scattered @ vit)[1:].numpy()
    finally:
        for handle in handles:
            handle.remove()
        model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
        model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(result.values[0], expected, atol=1e-4, rtol=1e-3)
    assert not np.allclose(result.values[0], row.numpy(), atol=1e-6)  # the vision tower changed the map


# -- bounded memory: Ā built a block of query rows at a time (issue 17) -------------------------------------------
def _text_dims(trace: mmviz.Trace) -> tuple[int, int, int]:
    """(heads, positions, head_dim) of the language model's attention, as the stash holds it."""
    config = trace.run.adapter.text_config
    heads = int(config.num_attention_heads)
    return heads, trace.run.length, int(getattr(config, "head_dim", None) or config.hidden_size // heads)


def _chunk_spy(monkeypatch: pytest.MonkeyPatch, most: int | None = None) -> list[int]:
    """Record the rows per chunk relevancy uses (``most``: cap them, to chunk a tower the budget cannot reach alone)."""
    used: list[int] = []

    def spy(*args, **kwargs):
        rows = relevancy_rows_per_chunk(*args, **kwargs)
        rows = rows if most is None else min(rows, most)
        used.append(rows)
        return rows

    monkeypatch.setattr(relevancy_module, "relevancy_rows_per_chunk", spy)
    return used


def _assert_same_maps(chunked: mmviz.Map, whole: mmviz.Map) -> None:
    """Equal up to summation order: ≤ 1e-6 of the scale. R = I + …, so a text row (the target's own entry
    included, 1 + δ before the identity is taken off) is computed at scale ≥ 1; image columns at their own."""
    image_scale = np.abs(whole.values).max()
    assert image_scale > 0  # not a comparison between zeros
    assert np.abs(chunked.values - whole.values).max() <= 1e-6 * image_scale
    text_scale = max(1.0, float(np.abs(whole.text_values).max()))
    assert np.abs(chunked.text_values - whole.text_values).max() <= 1e-6 * text_scale


def _family_trace(name: str, llava_small, photo) -> mmviz.Trace:
    if name == "llava":
        model, processor = llava_small
    else:
        model, processor = next(case for case in cases() if case.id == name).build()
    return mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")


@pytest.mark.parametrize("family", ["llava", "gemma3", "paligemma"])  # all GQA 4/2; sliding window; softcap, prefix
@pytest.mark.parametrize("rows", [1, 3])
def test_chunked_relevancy_equals_one_chunk(family, rows, llava_small, photo, monkeypatch):
    """A budget that fits ``rows`` query rows per chunk gives the map of one chunk holding every row."""
    trace = _family_trace(family, llava_small, photo)
    heads, n, head_dim = _text_dims(trace)
    used = _chunk_spy(monkeypatch)
    whole = relevancy(trace, budget_bytes=relevancy_transient_bytes(heads, n, head_dim, n))
    assert set(used) == {n}
    used.clear()
    chunked = relevancy(trace, budget_bytes=relevancy_transient_bytes(heads, n, head_dim, rows))
    assert set(used) == {rows}
    _assert_same_maps(chunked, whole)


def test_chunked_relevancy_through_the_vision_tower_equals_one_chunk(trace_for_relevancy, monkeypatch):
    trace = trace_for_relevancy
    target = Target.logprob(trace.answer_start + 1)
    whole = relevancy(trace, target, vision=True)
    used = _chunk_spy(monkeypatch, most=2)
    chunked = relevancy(trace, target, vision=True)
    assert used and set(used) == {2}
    _assert_same_maps(chunked, whole)


def test_rows_after_the_target_are_never_computed(trace_for_relevancy, monkeypatch):
    """Causal: the target's relevance never reaches a later row, so no score of a later query row is computed."""
    trace = trace_for_relevancy
    target = Target.logprob(trace.answer_start)
    computed: list[torch.Tensor] = []

    def spy(*args, **kwargs):
        computed.append(args[5].cpu())
        return row_scores(*args, **kwargs)

    monkeypatch.setattr(relevancy_module, "row_scores", spy)
    relevancy(trace, target)
    reached = torch.cat(computed)
    assert int(reached.max()) == target.first_logit and len(computed) == trace.num_layers


def test_rows_per_chunk_follow_the_budget():
    heads, n, head_dim = 32, 2940, 128
    per_row = relevancy_transient_bytes(heads, n, head_dim, 1) - relevancy_transient_bytes(heads, n, head_dim, 0)
    assert per_row == 4 * (heads * (2 * n + 3 * head_dim) + 3 * n)  # two score-sized rows, nothing N×N
    for rows in (1, 7, 256):
        budget = relevancy_transient_bytes(heads, n, head_dim, rows)
        assert relevancy_rows_per_chunk(heads, n, head_dim, budget) == rows
        if rows > 1:
            assert relevancy_rows_per_chunk(heads, n, head_dim, budget - 1) == rows - 1
    assert relevancy_rows_per_chunk(heads, n, head_dim, 10**15) == n  # never more rows than there are
    assert relevancy_transient_bytes(heads, n, head_dim, 10 * n) == relevancy_transient_bytes(heads, n, head_dim, n)
    with pytest.raises(CaptureBudgetError, match="budget_bytes"):
        relevancy_rows_per_chunk(heads, n, head_dim, relevancy_transient_bytes(heads, n, head_dim, 1) - 1)


def test_a_budget_below_one_row_fails_before_the_model_runs(trace_for_relevancy):
    trace = trace_for_relevancy
    calls: list[int] = []
    handle = trace.run.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(CaptureBudgetError, match=r"relevancy needs .* per layer even one query row"):
            relevancy(trace, budget_bytes=1000)
        with pytest.raises(CaptureBudgetError, match="budget_bytes"):  # the vision tower's own check
            relevancy(trace, vision=True, budget_bytes=1000)
    finally:
        handle.remove()
    assert not calls


@pytest.mark.parametrize("budget", [0, -1, True, 1.5, "1GB"])
def test_budget_bytes_must_be_a_positive_number_of_bytes(trace_for_relevancy, budget):
    with pytest.raises(InputError, match="budget_bytes"):
        relevancy(trace_for_relevancy, budget_bytes=budget)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_relevancy_on_cuda_stays_there_and_within_its_budget(photo, monkeypatch):
    """On an accelerator: the same map as on the CPU, every relevance vector on the device, and each layer's step
    allocates no more than the budget (the rows per chunk are chosen so that the stated bound fits it)."""
    model, processor = tiny_llava(image_size=476, patch_size=14, num_layers=2, num_heads=8, hidden_size=512, seed=2)
    trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
    on_cpu = relevancy(trace, vision=True)
    model.to("cuda")
    trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
    heads, n, head_dim = _text_dims(trace)
    budget = relevancy_transient_bytes(heads, n, head_dim, 256)  # ≈ 32 MB: chunks of 256 rows of ~1,200
    step = relevancy_module.AttentionStash.step
    peaks: list[int] = []

    def measured_step(self, layer, relevance, **kwargs):
        assert relevance.is_cuda  # never a CPU vector against device tensors
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = step(self, layer, relevance, **kwargs)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - before)
        return result

    monkeypatch.setattr(relevancy_module.AttentionStash, "step", measured_step)
    on_cuda = relevancy(trace, vision=True, budget_bytes=budget)
    # another device's forward and backward: the reference tests' tolerance, not summation order's
    np.testing.assert_allclose(on_cuda.values, on_cpu.values, rtol=1e-3, atol=1e-4 * np.abs(on_cpu.values).max())
    slack = 4 * 2**20  # the caching allocator rounds blocks up (a large block keeps a remainder under 1 MiB)
    assert peaks and max(peaks) <= budget + slack, (max(peaks), budget)
    assert max(peaks) < heads * n * n * 4  # less than ONE H×N×N float32 tensor (the unchunked step held ≈ 5)
