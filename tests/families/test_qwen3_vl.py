"""Qwen3-VL / Qwen3-VL-MoE adapters against their real processor and tiny random-weight models.

The layout is Qwen2-VL's (16-px patches, 2×2 merge): checked against the processor's ``image_grid_thw`` and
inserted tokens over many image sizes, and against the pixels the processor put into each token's patch block.
Then what is new in Qwen3-VL: the DeepStack features land exactly on the layout's image positions, the captured
rows equal eager attention with the logits unchanged, and the teacher-forced answer equals generation's scores
(interleaved M-RoPE positions).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmviz
from mmviz.adapters import Qwen3VLAdapter, Qwen3VLMoeAdapter, adapter_for
from mmviz.capture import recording_hidden_states
from tests.families.build_2026 import QWEN3_PATCH, QWEN3_SIZE, build_qwen3_vl, build_qwen3_vl_moe
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image
from tests.families.test_qwen2_vl import RAW, TOLERANCE, box_centres, decoded_blocks, encode
from tests.test_capture_families import assert_rows_equal_eager_and_logits_unchanged

BUILDERS = {"qwen3_vl": build_qwen3_vl, "qwen3_vl_moe": build_qwen3_vl_moe}


@pytest.fixture(params=sorted(BUILDERS), scope="module")
def qwen3(request):
    model, processor = BUILDERS[request.param]()
    return model, processor, adapter_for(model, processor)


def test_registered_families():
    families = mmviz.adapters.supported_families()
    assert families["qwen3_vl"] == "Qwen3-VL" and families["qwen3_vl_moe"] == "Qwen3-VL-MoE"
    assert type(adapter_for(*build_qwen3_vl())) is Qwen3VLAdapter
    assert type(adapter_for(*build_qwen3_vl_moe())) is Qwen3VLMoeAdapter


def test_decoder_modules(qwen3):
    model, _, adapter = qwen3
    assert adapter.language_model() is model.model.language_model
    assert len(adapter.decoder_layers()) == model.config.text_config.num_hidden_layers
    assert adapter.final_norm() is model.model.language_model.norm
    assert adapter.unembedding() is model.lm_head
    assert adapter.patch_size == QWEN3_PATCH and adapter.deepstack_layers == (0,)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(8, 700), height=st.integers(8, 700))
@example(width=10, height=10)
@example(width=700, height=8)  # very wide
@example(width=8, height=700)  # very tall
@example(width=500, height=400)  # over max_pixels: shrunk
def test_layout_matches_processor(qwen3, width, height):
    _, processor, adapter = qwen3
    image = Image.new("RGB", (width, height), "gray")
    inputs, layout = encode(adapter, [image])
    (t, h, w) = inputs["image_grid_thw"][0].tolist()
    m = processor.image_processor.merge_size
    inserted = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert t == 1 and len(layout.image_positions) == inserted == h * w // m**2
    assert QWEN3_SIZE["shortest_edge"] <= h * w * QWEN3_PATCH**2 <= QWEN3_SIZE["longest_edge"]
    assert {tuple(r) for r in layout.grid_shape[layout.image_positions]} == {(h // m, w // m)}
    assert (layout.grid[layout.image_positions] == np.argwhere(np.ones((h // m, w // m)))).all()  # raster order
    assert_views_tile(layout)
    assert_boxes_inside(layout)
    np.testing.assert_allclose(layout.images[0].covered, (0, 0, width, height))
    markers = layout.positions("image_sep")
    assert [layout.tokens[p] for p in markers] == ["<|vision_start|>", "<|vision_end|>"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(4, 255), height=st.integers(4, 255))
@example(width=250, height=90)
@example(width=70, height=240)
@example(width=10, height=10)
def test_boxes_land_where_the_processor_put_the_pixels(qwen3, width, height):
    """Every token's box centre = the mean original coordinate of the pixels in its 2×2 block of 16-px patches."""
    _, processor, adapter = qwen3
    inputs, layout = encode(adapter, [coordinate_image(width, height)], **RAW)
    error = np.abs(decoded_blocks(processor, adapter, inputs) - box_centres(layout, layout.image_positions))
    assert error.max() < TOLERANCE


def test_deepstack_features_land_on_the_layouts_image_positions(qwen3):
    """The model adds DeepStack features where its ``visual_pos_masks`` says: exactly the layout's image tokens."""
    model, _, adapter = qwen3
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 160, 3), dtype=np.uint8))
    inputs, layout = encode(adapter, [image])
    seen = {}

    def keep(module, args, kwargs):
        seen["mask"] = kwargs["visual_pos_masks"][0].clone()
        seen["deepstack"] = kwargs["deepstack_visual_embeds"]

    handle = model.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
    assert np.flatnonzero(seen["mask"].numpy()).tolist() == layout.image_positions.tolist()
    assert len(seen["deepstack"]) == len(adapter.deepstack_layers)
    assert seen["deepstack"][0].shape[0] == len(layout.image_positions)


def test_recorded_states_hold_the_deepstack_features(qwen3):
    """h_1 is what decoder layer 1 reads: layer 0's output plus the DeepStack features at the image positions (the
    raw output misses them), so the lens and the projection see the state the model goes on with."""
    model, _, adapter = qwen3
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    inputs, layout = encode(adapter, [image])
    layers = adapter.decoder_layers()
    outputs = {}
    handle = layers[0].register_forward_hook(lambda module, args, output: outputs.__setitem__(0, output.detach()))
    seen = {}

    def keep(module, args, kwargs):
        seen["deepstack"] = kwargs["deepstack_visual_embeds"][0].detach()

    hook = model.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad(), recording_hidden_states(layers, readout=adapter.residual) as states:
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
        hook.remove()
    image_positions = layout.image_positions
    added = states[1][0] - outputs[0][0].float()
    torch.testing.assert_close(added[image_positions], seen["deepstack"].float(), atol=1e-5, rtol=1e-5)
    others = np.setdiff1d(np.arange(added.shape[0]), image_positions)
    assert added[others].abs().max() == 0


def test_rows_equal_eager_and_logits_are_unchanged(qwen3):
    """Capture exactness with the processor's own inputs (DeepStack on, interleaved M-RoPE): every recorded row
    equals the eager attention of a copy within 1e-5, and the logits with the capture on are bitwise equal."""
    model, _, adapter = qwen3
    inputs, _ = encode(adapter, [Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 96, 3), np.uint8))])
    assert_rows_equal_eager_and_logits_unchanged(model, "text_config", inputs, num_layers=adapter.num_layers)


def test_analysis_forward_uses_generation_positions(qwen3):
    """Interleaved M-RoPE: the teacher-forced answer log-probs equal generation's own step scores."""
    model, processor, adapter = qwen3
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 150, 3), dtype=np.uint8))
    trace = mmviz.trace(model, processor, image, "What is in the picture?", max_new_tokens=4)
    inputs = adapter.encode([image], adapter.format_prompt("What is in the picture?", n_images=1))
    with torch.no_grad():
        generated = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    answer = generated.sequences[0, inputs["input_ids"].shape[1] :]
    assert trace.token_ids[trace.answer_start :].tolist() == answer.tolist()
    expected = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(generated.scores, answer, strict=True)]
    np.testing.assert_allclose(trace.answer_logprobs, expected, atol=1e-4)


def test_vision_attention_rows_sum_to_one_in_raster_order(qwen3):
    """The vision tower attends per image (no windows): the recorded maps are one full block per image."""
    model, processor, _ = qwen3
    image = np.zeros((64, 96, 3), np.uint8)  # multiples of 32: kept, a 4 × 6 patch grid
    trace = mmviz.trace(
        model, processor, image, "What?", answer="red", capture=mmviz.CapturePlan(vision_attention=True)
    )
    vision = model.config.vision_config
    assert trace.vision_attention.shape == (vision.depth, 1, vision.num_heads, 24, 24)
    np.testing.assert_allclose(trace.vision_attention.sum(-1), 1.0, atol=1e-5)
    assert (trace.vision_attention > 0).all()
