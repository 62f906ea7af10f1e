"""Qwen2-VL / Qwen2.5-VL adapters against their real processors and tiny random-weight models.

The layout is checked against what the processor actually produced (``image_grid_thw``, inserted tokens, the
pixels of every patch), against the model itself (which LLM position a local change of the image reaches, with
and without Qwen2.5-VL's window permutation) and against generation (M-RoPE positions of the analysis forward).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmviz
from mmviz.adapters import Qwen2_5_VLAdapter, Qwen2VLAdapter, adapter_for
from mmviz.errors import InputError, ProcessorMismatchError
from tests.families.build_qwen_idefics import QWEN_SIZE, build_qwen2_5_vl, build_qwen2_vl
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image

BUILDERS = {"qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl}
RAW = {"do_rescale": False, "do_normalize": False}  # pixel values stay the image's own uint8 values
TOLERANCE = 0.6  # px; the resampler alone moves a cell's mean by up to ≈0.5 px (uint8 rounding, edge clamping)


@pytest.fixture(params=sorted(BUILDERS), scope="module")
def qwen(request):
    model, processor = BUILDERS[request.param]()
    return model, processor, adapter_for(model, processor)


def encode(adapter, images, **kwargs):
    text = adapter.format_prompt("Describe it.", n_images=len(images))
    inputs = dict(adapter.processor(images=list(images), text=text, return_tensors="pt", **kwargs))
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), list(images), inputs)


def test_registered_families():
    families = mmviz.adapters.supported_families()
    assert families["qwen2_vl"] == "Qwen2-VL" and families["qwen2_5_vl"] == "Qwen2.5-VL"
    assert isinstance(adapter_for(*build_qwen2_5_vl()), Qwen2_5_VLAdapter)
    assert type(adapter_for(*build_qwen2_vl())) is Qwen2VLAdapter


def test_decoder_modules(qwen):
    model, _, adapter = qwen
    assert adapter.language_model() is model.model.language_model
    assert len(adapter.decoder_layers()) == model.config.text_config.num_hidden_layers
    assert adapter.final_norm() is model.model.language_model.norm
    assert adapter.unembedding() is model.lm_head


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(8, 700), height=st.integers(8, 700))
@example(width=10, height=10)
@example(width=700, height=8)  # very wide
@example(width=8, height=700)  # very tall
@example(width=500, height=400)  # over max_pixels: shrunk
def test_layout_matches_processor(qwen, width, height):
    _, processor, adapter = qwen
    image = Image.new("RGB", (width, height), "gray")
    inputs, layout = encode(adapter, [image])
    (t, h, w) = inputs["image_grid_thw"][0].tolist()
    m = processor.image_processor.merge_size
    inserted = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert t == 1 and len(layout.image_positions) == inserted == h * w // m**2
    assert QWEN_SIZE["shortest_edge"] <= h * w * 14**2 <= QWEN_SIZE["longest_edge"]
    rows = {tuple(r) for r in layout.grid_shape[layout.image_positions]}
    assert rows == {(h // m, w // m)}
    assert (layout.grid[layout.image_positions] == np.argwhere(np.ones((h // m, w // m)))).all()  # raster order
    assert_views_tile(layout)
    assert_boxes_inside(layout)
    np.testing.assert_allclose(layout.images[0].covered, (0, 0, width, height))
    markers = layout.positions("image_sep")
    assert [layout.tokens[p] for p in markers] == ["<|vision_start|>", "<|vision_end|>"]
    assert markers.tolist() == [layout.image_positions[0] - 1, layout.image_positions[-1] + 1]
    assert (layout.image_index[markers] == 0).all() and np.isnan(layout.boxes[markers]).all()


def decoded_blocks(processor, adapter, inputs) -> np.ndarray:
    """Mean (x, y) of the coordinate-image pixels the processor put into each LLM token's m×m patch block."""
    patch, m = adapter.patch_size, adapter.merge_size
    patches = inputs["pixel_values"].numpy().reshape(-1, 3, processor.image_processor.temporal_patch_size, patch, patch)
    blocks = patches.reshape(-1, m * m, *patches.shape[1:])  # the merger fuses m² consecutive patch rows
    return np.stack([blocks[:, :, 0].mean(axis=(1, 2, 3, 4)), blocks[:, :, 1].mean(axis=(1, 2, 3, 4))], 1)


def box_centres(layout, positions) -> np.ndarray:
    """Box centres in pixel-index units (pixel i spans [i, i + 1), so its coordinate value is centre − 0.5)."""
    boxes = layout.boxes[positions].astype(np.float64)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(4, 255), height=st.integers(4, 255))
@example(width=250, height=90)  # wide
@example(width=70, height=240)  # tall
@example(width=255, height=5)  # very wide
@example(width=5, height=255)  # very tall
@example(width=10, height=10)  # upscaled to min_pixels
@example(width=255, height=255)  # shrunk to max_pixels
def test_boxes_land_where_the_processor_put_the_pixels(qwen, width, height):
    """Every token's box centre = the mean original coordinate of the pixels in its 2×2 patch block."""
    _, processor, adapter = qwen
    inputs, layout = encode(adapter, [coordinate_image(width, height)], **RAW)
    error = np.abs(decoded_blocks(processor, adapter, inputs) - box_centres(layout, layout.image_positions))
    assert error.max() < TOLERANCE


@pytest.mark.parametrize("size", [(250, 90), (70, 240)], ids=["wide", "tall"])
def test_coordinate_check_catches_a_wrong_order(qwen, size):
    """Negative control: reading the same boxes in column-major order is off by many pixels."""
    _, processor, adapter = qwen
    inputs, layout = encode(adapter, [coordinate_image(*size)], **RAW)
    rows, cols = layout.grid_shape[layout.image_positions[0]]
    assert rows > 1 and cols > 1
    column_major = box_centres(layout, layout.image_positions).reshape(rows, cols, 2).transpose(1, 0, 2)
    assert np.abs(decoded_blocks(processor, adapter, inputs) - column_major.reshape(-1, 2)).max() > 5


def _vision_hooks(model, captured):
    """Zero the vision tower's attention (patches stay independent) and record merger output and LLM input."""
    visual = model.model.visual

    def no_attention(module, args, output):
        return torch.zeros_like(output)

    def merger(module, args, output):
        captured["merger"] = output.detach().clone()

    def llm(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"][0].detach().clone()

    handles = [block.attn.register_forward_hook(no_attention) for block in visual.blocks]
    handles.append(visual.merger.register_forward_hook(merger))
    handles.append(model.model.language_model.register_forward_pre_hook(llm, with_kwargs=True))
    return handles


def test_llm_positions_follow_the_layout_through_the_vision_tower(qwen):
    """Change the pixels inside ONE token's box: exactly that LLM position changes (not assumed: measured).

    The vision tower's attention is zeroed so each merged token depends on its own 2×2 patches only. For
    Qwen2.5-VL the merger output is in window order (checked to differ from raster order), and the model restores
    raster order before the LLM: the layout's position is still the one that changes.
    """
    model, _, adapter = qwen
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (112, 168, 3), dtype=np.uint8)  # 4×6 blocks of 28 px: no resize
    inputs, layout = encode(adapter, [Image.fromarray(base)])
    image_positions = layout.image_positions
    captured: dict[str, torch.Tensor] = {}
    handles = _vision_hooks(model, captured)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
            reference = {key: value.clone() for key, value in captured.items()}
            merger_order = []
            for k, position in enumerate(image_positions):
                x0, y0, x1, y1 = (int(v) for v in layout.boxes[position])
                changed = base.copy()
                changed[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4] = 255 - changed[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4]
                model(**encode(adapter, [Image.fromarray(changed)])[0], use_cache=False)
                llm_delta = (captured["embeds"] - reference["embeds"]).abs().amax(-1)
                assert np.flatnonzero(llm_delta.numpy() > 1e-6).tolist() == [position], k
                merger_delta = (captured["merger"] - reference["merger"]).abs().amax(-1)
                (moved,) = np.flatnonzero(merger_delta.numpy() > 1e-6)
                merger_order.append(int(moved))
    finally:
        for handle in handles:
            handle.remove()
    if isinstance(adapter, Qwen2_5_VLAdapter):
        assert merger_order != list(range(len(image_positions)))  # the window permutation is real …
        assert sorted(merger_order) == list(range(len(image_positions)))  # … and a permutation
    else:
        assert merger_order == list(range(len(image_positions)))


def test_analysis_forward_uses_generation_positions(qwen):
    """M-RoPE: the teacher-forced answer log-probs equal generation's own step scores (same 3-D positions)."""
    model, processor, adapter = qwen
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 150, 3), dtype=np.uint8))
    trace = mmviz.trace(model, processor, image, "What is in the picture?", max_new_tokens=4)
    text = adapter.format_prompt("What is in the picture?", n_images=1)
    inputs = adapter.encode([image], text)
    with torch.no_grad():
        generated = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    answer = generated.sequences[0, inputs["input_ids"].shape[1] :]
    assert trace.token_ids[trace.answer_start :].tolist() == answer.tolist()
    expected = [
        torch.log_softmax(score[0].float(), -1)[token].item()
        for score, token in zip(generated.scores, answer, strict=True)
    ]
    np.testing.assert_allclose(trace.answer_logprobs, expected, atol=1e-4)


def test_token_types_are_extended_for_the_answer(qwen):
    _, _, adapter = qwen
    inputs, _ = encode(adapter, [Image.new("RGB", (40, 90), "blue")])
    prompt_types = inputs["mm_token_type_ids"].clone()
    extended = adapter.analysis_inputs(inputs, n_answer=3)
    assert extended["mm_token_type_ids"].shape[-1] == prompt_types.shape[-1] + 3
    assert torch.equal(extended["mm_token_type_ids"][:, :-3], prompt_types)
    assert extended["mm_token_type_ids"][0, -3:].tolist() == [0, 0, 0]
    assert torch.equal(inputs["mm_token_type_ids"], prompt_types)  # the processor's outputs are left as they were
    assert extended["pixel_values"] is inputs["pixel_values"]


def test_two_images_each_get_their_own_grid(qwen):
    model, processor, adapter = qwen
    wide, tall = Image.new("RGB", (200, 50), "red"), Image.new("RGB", (40, 160), "green")
    inputs, layout = encode(adapter, [wide, tall])
    grids = inputs["image_grid_thw"].tolist()
    for index, (_, h, w) in enumerate(grids):
        positions = layout.image_positions[layout.image_index[layout.image_positions] == index]
        assert len(positions) == h * w // 4
        assert {tuple(s) for s in layout.grid_shape[positions]} == {(h // 2, w // 2)}
    markers = layout.positions("image_sep")
    assert layout.image_index[markers].tolist() == [0, 0, 1, 1]
    assert [g.width for g in layout.images] == [200, 40]
    trace = mmviz.trace(model, processor, [wide, tall], "Which is taller?", answer="the second")
    assert set(trace.layout.image_index[trace.image_positions]) == {0, 1}


def test_prompt_without_chat_template(qwen):
    model, processor, _ = qwen
    bare = copy.copy(processor)
    bare.chat_template = None
    adapter = adapter_for(model, bare)
    text = adapter.format_prompt("Compare.", n_images=2)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    trace = mmviz.trace(model, bare, [Image.new("RGB", (60, 60)), Image.new("RGB", (90, 30))], "Compare.", answer="no")
    assert len(trace.layout.positions("image_sep")) == 4


def test_processor_with_another_merge_size_is_refused(qwen):
    model, processor, _ = qwen
    other = copy.copy(processor)
    other.image_processor = copy.deepcopy(processor.image_processor)
    other.image_processor.merge_size = 1
    with pytest.raises(ProcessorMismatchError, match="merge_size"):
        adapter_for(model, other)


def test_layout_refuses_a_grid_that_does_not_match_the_tokens(qwen):
    _, _, adapter = qwen
    image = Image.new("RGB", (84, 56))
    inputs, _ = encode(adapter, [image])
    inputs["image_grid_thw"] = torch.tensor([[1, 4, 8]])
    with pytest.raises(ProcessorMismatchError, match="image_grid_thw"):
        adapter.layout(inputs["input_ids"][0].numpy(), [image], inputs)


def test_too_elongated_image_is_an_input_error(qwen):
    model, processor, _ = qwen
    with pytest.raises(InputError, match="aspect"):
        mmviz.trace(model, processor, Image.new("RGB", (800, 3)), "What is it?", answer="a line")


def test_vision_attention_is_in_raster_patch_order_with_windows_undone(qwen):
    """The vision tower's own attention (``CapturePlan(vision_attention=True)``): rows sum to one; Qwen2.5-VL's
    window layers attend only inside their window ON THE ORIGINAL GRID (so the window permutation is undone); and a
    patch brightened alone changes the row of its own raster index most (so the order is raster, not the tower's)."""
    model, processor, adapter = qwen
    height, width = 84, 112  # multiples of 28: the processor keeps the size, a 6 × 8 patch grid
    dark = np.zeros((height, width, 3), np.uint8)
    bright = dark.copy()
    r, c = 3, 5
    bright[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] = 255
    plan = mmviz.CapturePlan(vision_attention=True)
    maps = [mmviz.trace(model, processor, image, "What?", answer="red", capture=plan) for image in (dark, bright)]
    attention = [t.vision_attention for t in maps]  # (L_v, 1, H_v, 48, 48)
    depth = int(model.config.vision_config.depth)
    assert attention[0].shape == (depth, 1, int(model.config.vision_config.num_heads), 48, 48)
    for a in attention:
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    change = np.abs(attention[1][0, 0] - attention[0][0, 0]).sum(axis=(0, 2))  # layer 0: per query patch
    assert int(np.argmax(change)) == r * 8 + c

    rows, cols = np.divmod(np.arange(48), 8)
    vision = model.config.vision_config
    full_layers = set(getattr(vision, "fullatt_block_indexes", range(depth)) or ())
    if adapter.family == "Qwen2-VL":
        full_layers = set(range(depth))
    side = int(getattr(vision, "window_size", 0)) // adapter.patch_size  # window side in patches
    for layer in range(depth):
        nonzero = (attention[0][layer, 0] > 0).all(axis=0)
        if layer in full_layers:
            assert nonzero.all(), f"layer {layer} attends over the whole image"
        else:
            window = (rows // side) * 100 + cols // side
            assert (nonzero == (window[:, None] == window[None, :])).all(), f"layer {layer}: windows on the grid"


def test_vision_attention_of_images_of_different_sizes_is_refused(qwen):
    model, processor, _ = qwen
    plan = mmviz.CapturePlan(vision_attention=True)
    images = [Image.new("RGB", (112, 84)), Image.new("RGB", (56, 56))]
    with pytest.raises(InputError, match="one image at a time"):
        mmviz.trace(model, processor, images, "Compare.", answer="no", capture=plan)
