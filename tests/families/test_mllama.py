"""Llama 3.2 Vision (``mllama``): the image columns are the cross-attention keys, checked against independent
references: eager attention of a copy of the model, hand-written autograd and masks, and the processor's tiling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import mmviz
from mmviz.adapters import MllamaAdapter, adapter_for
from mmviz.adapters.layout import IMAGE_SEP
from mmviz.capture import AttentionRecorder, recording
from mmviz.errors import UnsupportedModelError
from mmviz.records import CATALOGUE
from mmviz.widget.payloads import method_catalogue
from tests.families.build_mllama import MLLAMA_CROSS_LAYERS, MLLAMA_PATCH, MLLAMA_TILE, build_mllama
from tests.families.checks import coordinate_image

WIDE = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (40, 1, 3)))
CROSS = MLLAMA_CROSS_LAYERS[0]
ATOL = 1e-5


@pytest.fixture(scope="module")
def built():
    return build_mllama()


@pytest.fixture(scope="module")
def traced(built):
    model, processor = built
    return mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red cat")


def _plain_inputs(trace):
    run = trace.run
    return {"input_ids": run.input_ids, "attention_mask": torch.ones_like(run.input_ids), **run.inputs}


def _eager_attentions(model, trace):
    """Per decoder layer, the probabilities of an EAGER copy of the model (self rows over positions, cross rows
    over the cross-attention keys), float32 ``(H, N, ·)``."""
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        output = reference(**_plain_inputs(trace), use_cache=False, output_attentions=True)
    return [layer[0].float() for layer in output.attentions]


def test_adapter_and_layout(traced, built):
    model, processor = built
    adapter = adapter_for(model, processor)
    assert isinstance(adapter, MllamaAdapter) and adapter.cross_attention_layers == (CROSS,)
    layout = traced.layout
    keys = layout.keys
    per_tile = (MLLAMA_TILE // MLLAMA_PATCH) ** 2 + 1
    assert len(keys) == 4 * per_tile  # max_image_tiles tiles of G² patches + CLS, padding tiles included
    # 120×40 → one row of three 32-px tiles (canvas 96×32, scale 0.8): every patch of the 3 real tiles has a box
    np.testing.assert_array_equal(traced.image_positions, [t * per_tile + 1 + j for t in range(3) for j in range(16)])
    np.testing.assert_allclose(keys.boxes[traced.image_positions[0]], [0, 0, 10, 10])
    np.testing.assert_allclose(keys.boxes[traced.image_positions[-1]], [110, 30, 120, 40])
    assert keys.grid_shape[traced.image_positions[0]].tolist() == [4, 12]  # one grid over the tiled canvas
    assert keys.grid[per_tile + 1].tolist() == [0, 4]  # tile 1, patch 0
    assert not np.isfinite(keys.boxes[[0, per_tile, 3 * per_tile + 1]]).any()  # CLS, CLS, padding tile
    (marker,) = np.flatnonzero(layout.kinds == IMAGE_SEP)
    assert layout.tokens[marker] == "<|image|>" and set(keys.anchors[traced.image_positions]) == {marker}


def test_cross_rows_match_eager(traced, built):
    """The recorded cross-attention rows (text query → vision key, every head) are the eager model's."""
    model, _ = built
    eager = _eager_attentions(model, traced)
    slot = int(np.flatnonzero(traced.layers == CROSS)[0])
    recorded = torch.from_numpy(traced.attention_rows[slot])
    expected = eager[CROSS][:, torch.as_tensor(traced.query_positions)]
    assert recorded.shape == expected.shape
    assert float((recorded - expected).abs().max()) <= ATOL


def test_self_layers_read_the_image_through_the_cross_layers(traced, built):
    """A self-attention layer's image map is its row over positions composed with the positions' cross-attention
    in the cross layers before it (head and layer mean); before the first cross layer it is 0."""
    model, _ = built
    eager = _eager_attentions(model, traced)
    queries = torch.as_tensor(traced.query_positions)
    weights = eager[CROSS].mean(dim=0)  # (N, K)
    after = int(np.flatnonzero(traced.layers == CROSS + 1)[0])
    expected = eager[CROSS + 1][:, queries] @ weights
    assert float((torch.from_numpy(traced.attention_rows[after]) - expected).abs().max()) <= ATOL
    before = int(np.flatnonzero(traced.layers == 0)[0])
    assert not traced.attention_rows[before].any()
    # the attention method reads those rows at the image keys
    values = mmviz.methods.attention(traced).values  # (L, Q, P)
    np.testing.assert_allclose(
        values[after], expected.mean(dim=0)[:, torch.as_tensor(traced.image_positions)].numpy(), atol=ATOL
    )


def test_logits_identical_with_capture(traced, built):
    model, _ = built
    inputs = _plain_inputs(traced)
    with torch.no_grad():
        plain = model(**inputs, use_cache=False).logits
        recorder = AttentionRecorder(layers=[CROSS], keys_are_positions=False)
        with recording(model, {"text_config": None}, cross_layers=[CROSS], cross_recorder=recorder):
            captured = model(**inputs, use_cache=False).logits
    assert torch.equal(plain, captured)
    assert recorder.rows[CROSS].shape[-1] == len(traced.layout.keys)
    start = traced.answer_start
    log_probs = torch.log_softmax(plain[0, start - 1 : -1].float(), dim=-1)
    answer = traced.run.input_ids[0, start:]
    np.testing.assert_array_equal(traced.answer_logprobs, log_probs.gather(1, answer[:, None])[:, 0].numpy())


@pytest.mark.parametrize("size", [(120, 40), (30, 90), (10, 10), (64, 64), (200, 50)])
def test_boxes_follow_the_processors_tiling(built, size):
    """Every key's box holds the original pixels its patch shows in the processor's own tiles (a coordinate image:
    red = x, green = y), and the tiles are the processor's aspect-ratio tiles."""
    model, processor = built
    adapter = adapter_for(model, processor)
    image = coordinate_image(*size)
    inputs = adapter.encode([image], adapter.format_prompt("Describe it.", 1))
    layout = adapter.layout(inputs["input_ids"][0].numpy(), [image], inputs)
    keys = layout.keys
    real = int(inputs["aspect_ratio_mask"].sum())
    ip = processor.image_processor
    mean, std = np.asarray(ip.image_mean)[:, None, None], np.asarray(ip.image_std)[:, None, None]
    tiles = (inputs["pixel_values"][0, 0].double().numpy() * std + mean) * 255  # (T, 3, S, S)
    g, per_tile = MLLAMA_TILE // MLLAMA_PATCH, (MLLAMA_TILE // MLLAMA_PATCH) ** 2 + 1
    assert set(keys.image_index[keys.columns]) == {0}
    assert {column // per_tile for column in keys.columns} == set(range(real))
    checked = 0
    for column in keys.columns:
        tile, j = divmod(int(column) - 1, per_tile)
        r, c = divmod(j, g)
        patch = tiles[tile, :2, r * MLLAMA_PATCH : (r + 1) * MLLAMA_PATCH, c * MLLAMA_PATCH : (c + 1) * MLLAMA_PATCH]
        box = keys.boxes[column]
        shown = patch.sum(axis=0) > 0.5  # pixels of the image, not of the black padding
        if not shown.all():
            continue  # a patch the padding cuts: the measured-layout test covers it
        x, y = patch[0][shown], patch[1][shown]
        # a pixel's value is its source column / row index: the box spans those pixels, ±1 resampling step
        assert box[0] - 1.5 <= x.min() and x.max() + 1 <= box[2] + 1.5, (size, column, box, x.min(), x.max())
        assert box[1] - 1.5 <= y.min() and y.max() + 1 <= box[3] + 1.5, (size, column, box, y.min(), y.max())
        checked += 1
    assert checked > 0
    report = mmviz.adapters.verify(model, processor, image)
    assert report.ok and report.worst <= 1.5, report.summary()


def _cross_states_leaf(model, trace):
    """A hand-written gradient reference: the language model's cross-attention states replaced by a float leaf."""
    box: dict[str, torch.Tensor] = {}

    def swap(module, args, kwargs):
        states = kwargs["cross_attention_states"]
        leaf = states.detach().float().reshape(1, -1, states.shape[-1]).requires_grad_(True)
        box["leaf"] = leaf
        return args, {**kwargs, "cross_attention_states": leaf.reshape(states.shape).to(states.dtype)}

    return box, model.model.language_model.register_forward_pre_hook(swap, with_kwargs=True)


def test_gradient_x_input_reaches_the_cross_attention_keys(traced, built):
    model, _ = built
    result = mmviz.methods.gradient_x_input(traced)
    start = traced.answer_start
    answer = traced.run.input_ids[0, start:]
    box, handle = _cross_states_leaf(model, traced)
    trainable = [parameter.requires_grad for parameter in model.parameters()]
    model.requires_grad_(False)  # gradients reach the leaf only
    try:
        logits = model(**_plain_inputs(traced), use_cache=False).logits[0].float()
    finally:
        handle.remove()
        for parameter, flag in zip(model.parameters(), trainable, strict=True):
            parameter.requires_grad_(flag)
    leaf = box["leaf"]
    columns = torch.as_tensor(traced.image_positions)
    for row, position in enumerate(range(start, traced.run.length)):
        leaf.grad = None
        torch.log_softmax(logits[position - 1], dim=-1)[answer[row]].backward(retain_graph=True)
        expected = (leaf.grad[0, columns] * leaf.detach()[0, columns]).sum(dim=-1)
        np.testing.assert_allclose(result.values[row], expected.numpy(), atol=ATOL, rtol=1e-4)
    assert np.abs(result.values).max() > 0


def test_knockout_cuts_text_to_image_cross_attention(traced, built):
    model, _ = built
    start = traced.answer_start
    effect = mmviz.methods.knockout(traced, to="all", layers=[CROSS])
    # reference: the cross layer's additive mask gets the dtype's minimum at every (position, image key)
    image = torch.zeros(len(traced.layout.keys), dtype=torch.bool)
    image[torch.as_tensor(traced.image_positions)] = True
    attention = model.model.language_model.layers[CROSS].cross_attn

    def cut(module, args, kwargs):
        mask = kwargs["attention_mask"]
        return args, {**kwargs, "attention_mask": mask.masked_fill(image, torch.finfo(mask.dtype).min)}

    handle = attention.register_forward_pre_hook(cut, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**_plain_inputs(traced), use_cache=False).logits[0].float()
    finally:
        handle.remove()
    answer = traced.run.input_ids[0, start:]
    log_probs = torch.log_softmax(logits[start - 1 : -1], dim=-1).gather(1, answer[:, None])[:, 0]
    np.testing.assert_allclose(effect.changed, log_probs.double().numpy(), atol=ATOL)
    np.testing.assert_allclose(effect.clean, traced.answer_logprobs, atol=ATOL)
    assert np.abs(effect.delta).max() > 1e-4  # the image mattered
    # self-attention layers hold no image key: cutting there changes nothing
    np.testing.assert_array_equal(mmviz.methods.knockout(traced, to="all", layers=[0, 2]).delta, 0.0)


def test_knockout_map_and_perturbations_run_on_keys(traced):
    for name in ("knockout", "occlusion", "integrated_gradients", "rise"):
        result = traced.compute(name)
        assert result.values.shape[-1] == len(traced.image_positions)
        assert np.isfinite(result.values).all(), name
    # perturbations replay the language model alone on edited cross-attention states, confirmed against the model
    assert traced.run.edited_path == "fast", traced.run.edited_path_reason


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_the_catalogue_says_which_methods_a_cross_attention_family_refuses(traced, name):
    """Walk the registry: a method whose spec needs the image at sequence positions is refused with why, the
    widget's catalogue marks it unavailable with that reason; every other method gives a finite map over the keys."""
    spec = CATALOGUE[name]
    entry = next(e for e in method_catalogue(traced) if e["name"] == name)
    if spec.sequence_positions:
        with pytest.raises(UnsupportedModelError, match="cross-attention layers"):
            traced.compute(name)
        assert entry["available"] is False and "sequence positions" in entry["unavailable"]
        return
    assert entry["available"] is True and "unavailable" not in entry
    if spec.cost == "slow":
        pytest.skip(f"{name} is slow; test_knockout_map_and_perturbations_run_on_keys runs the slow ones")
    result = traced.compute(name)
    assert result.values.shape[-1] == len(traced.image_positions) and np.isfinite(result.values).all()


def test_trace_file_keeps_the_keys(traced, tmp_path):
    loaded = mmviz.load(traced.save(tmp_path / "mllama.mmviz"))
    for name in ("boxes", "grid", "grid_shape", "image_index", "view", "anchors"):
        np.testing.assert_array_equal(getattr(loaded.layout.keys, name), getattr(traced.layout.keys, name), name)
    np.testing.assert_array_equal(loaded.image_positions, traced.image_positions)
    assert loaded.attention_rows.shape == traced.attention_rows.shape


def test_capture_plan_subsets_are_slices_of_the_full_capture(traced, built):
    model, processor = built
    queries = [int(p) for p in traced.query_positions[[5, 12, -1]]]
    plan = mmviz.CapturePlan(head_mean=True, layers=[CROSS, CROSS + 1], queries=queries)
    small = mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red cat", capture=plan)
    rows = [int(np.flatnonzero(traced.query_positions == q)[0]) for q in queries]
    expected = traced.attention_rows[CROSS:, :, rows].mean(axis=1, keepdims=True)
    assert small.attention_rows.shape == expected.shape
    np.testing.assert_allclose(small.attention_rows, expected, atol=1e-6)


def test_ablation_replaces_the_vision_keys_states(traced, built):
    model, _ = built
    chosen = traced.image_positions[:8]
    effect = mmviz.methods.ablate(traced, chosen, baseline="zero")

    def zero(module, args, kwargs):
        states = kwargs["cross_attention_states"]
        flat = states.reshape(1, -1, states.shape[-1]).clone()
        flat[0, torch.as_tensor(chosen)] = 0.0
        return args, {**kwargs, "cross_attention_states": flat.reshape(states.shape)}

    handle = model.model.language_model.register_forward_pre_hook(zero, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**_plain_inputs(traced), use_cache=False).logits[0].float()
    finally:
        handle.remove()
    start = traced.answer_start
    answer = traced.run.input_ids[0, start:]
    log_probs = torch.log_softmax(logits[start - 1 : -1], dim=-1).gather(1, answer[:, None])[:, 0]
    np.testing.assert_allclose(effect.changed, log_probs.double().numpy(), atol=ATOL)
    assert np.abs(effect.delta).max() > 0
    painted = mmviz.methods.ablate(traced, chosen, baseline="paint")  # the keys' boxes painted before the ViT
    assert np.isfinite(painted.delta).all() and np.abs(painted.delta).max() > 0


def test_pointing_game_reads_the_keys_boxes(traced):
    from mmviz.evaluation.faithfulness import pointing_game

    columns = traced.image_positions
    values = np.zeros(len(columns))
    values[20] = 1.0  # tile 1, patch (1, 0): x 40…50, y 10…20 of the 120×40 image
    x0, y0, x1, y1 = (int(v) for v in traced.layout.keys.boxes[columns[20]])
    assert (x0, y0, x1, y1) == (40, 10, 50, 20)
    mask = np.zeros((40, 120), bool)
    mask[15, 45] = True
    assert pointing_game(values, traced.layout, mask)
    mask[:] = False
    mask[35, 5] = True
    assert not pointing_game(values, traced.layout, mask)


def test_object_patches_read_the_keys_boxes(traced):
    """Selecting by an object mask picks the keys whose boxes it covers (keys index the column table, not the
    sequence), and their ablation runs."""
    from mmviz.interventions import Ablate, coverage_of, object_patches

    mask = np.zeros((40, 120), bool)
    mask[10:20, 40:50] = True  # exactly the box of key column 20 (tile 1, patch (1, 0))
    shares = coverage_of(traced, mask)
    assert shares.argmax() == 20 and shares[20] == 1.0 and np.sort(shares)[-2] < 1.0
    chosen = object_patches(traced, mask, border=0)
    assert chosen.tolist() == [int(traced.image_positions[20])]
    with_border = object_patches(traced, mask, border=1)
    table = traced.layout.keys
    assert len(with_border) > 1 and set(table.image_index[with_border].tolist()) == {0}
    assert np.isfinite(Ablate(chosen.tolist(), fill="zero").apply(traced).delta).all()


def test_a_greedy_answer_under_a_cross_attention_knockout(traced, built):
    """``mmviz.interventions.generate`` cuts text → image keys in the cross layer too: its first new token is the
    argmax of the prompt's last row with that row's cross-attention to the image masked by hand."""
    from mmviz.interventions import Knockout, _prompt_inputs, generate

    model, _ = built
    start = traced.answer_start
    image = torch.zeros(len(traced.layout.keys), dtype=torch.bool)
    image[torch.as_tensor(traced.image_positions)] = True

    def cut(module, args, kwargs):
        mask = kwargs["attention_mask"].clone()
        mask[..., start - 1, :] = mask[..., start - 1, :].masked_fill(image, torch.finfo(mask.dtype).min)
        return args, {**kwargs, "attention_mask": mask}

    prompt = {"input_ids": traced.run.input_ids[:, :start], **_prompt_inputs(traced, traced.run, 0)}
    prompt["attention_mask"] = torch.ones_like(prompt["input_ids"])
    handle = model.model.language_model.layers[CROSS].cross_attn.register_forward_pre_hook(cut, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**prompt, use_cache=False).logits[0, -1].float()
    finally:
        handle.remove()
    generated = generate(traced, Knockout([CROSS]), max_new_tokens=2)
    assert generated.token_ids[0] == int(torch.argmax(logits))
    assert len(generated.token_ids) >= 1 and generated.stopped in ("eos", "length")
