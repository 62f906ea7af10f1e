"""CLIP / SigLIP dual encoders: vision-tower attention, patch–text similarity and patch boxes, each checked against an
independent computation (the model run eager with ``output_attentions``, its own modules with a self-only attention
mask, its own processor on coordinate-encoding images).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmviz
from mmviz import wire
from mmviz.adapters import CLIPAdapter, DualEncoderAdapter, GenerativeAdapter, SiglipAdapter, adapter_for
from mmviz.capture import CaptureBudgetError, CapturePlan, attention_modules, snapshot
from mmviz.errors import InputError, ProcessorMismatchError, UnsupportedModelError
from mmviz.methods.similarity import Similarity, similarity
from tests.families.build_clip import build_clip, build_siglip
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image

BUILDERS = {"clip": build_clip, "siglip": build_siglip}
CAPTION = "a photo of a red square"
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8))
RAW = {"do_rescale": False, "do_normalize": False, "return_tensors": "np"}
TOL = 0.6  # original px: uint8 rounding inside the resampler alone moves a cell's mean by up to ≈0.5 px


class Family(tuple):
    """``(name, model, processor, adapter)`` with a short repr (hypothesis prints its arguments)."""

    def __repr__(self) -> str:
        return f"<{self[0]}>"


@pytest.fixture(params=list(BUILDERS), scope="module")
def family(request):
    model, processor = BUILDERS[request.param]()
    return Family((request.param, model, processor, adapter_for(model, processor)))


@pytest.fixture(scope="module")
def traced(family):
    _, model, processor, _ = family
    return mmviz.trace(model, processor, IMAGE, CAPTION)


def _inputs(adapter, image=IMAGE, caption=CAPTION):
    return adapter.encode([image], adapter.format_prompt(caption, n_images=1))


def _eager_copy(model):
    twin = copy.deepcopy(model)
    twin.set_attn_implementation({"vision_config": "eager"})
    return twin


# -- registry and layout -----------------------------------------------------------------------------------------
def test_registered_as_dual_encoders():
    families = mmviz.supported_families()
    assert families["clip"] == "CLIP" and families["siglip"] == "SigLIP"
    assert type(adapter_for(*build_clip())) is CLIPAdapter
    assert type(adapter_for(*build_siglip())) is SiglipAdapter
    assert issubclass(CLIPAdapter, DualEncoderAdapter) and issubclass(SiglipAdapter, DualEncoderAdapter)


def test_only_the_vision_tower_is_switched(family):
    _, model, _, _ = family
    found = attention_modules(model, "vision_config")
    assert found == [layer.self_attn for layer in model.vision_model.encoder.layers]
    assert not set(map(id, found)) & {id(layer.self_attn) for layer in model.text_model.encoder.layers}


def test_trace_fields(family, traced):
    name, model, _, adapter = family
    caption_ids = _inputs(adapter)["input_ids"][0].numpy()
    n_caption, g = len(caption_ids), adapter.grid_size
    n = n_caption + int(name == "clip") + g * g
    assert len(traced.tokens) == len(traced.layout) == len(traced.token_ids) == n
    np.testing.assert_array_equal(traced.token_ids[:n_caption], caption_ids)
    assert (traced.token_ids[n_caption:] == -1).all()
    assert traced.answer == "" and traced.answer_start == n and traced.answer_logprobs.shape == (0,)
    assert traced.run is None and traced.hidden_states is None and traced.vision_attention is None
    assert traced.prompt == CAPTION
    assert (traced.num_layers, traced.num_heads) == (2, 4)
    np.testing.assert_array_equal(traced.layers, [0, 1])
    np.testing.assert_array_equal(traced.query_positions, np.arange(n_caption, n))
    kinds = [row["kind"] for row in traced.layout.rows()]
    assert set(kinds[:n_caption]) <= {"text", "special"} and kinds[n_caption - 1] == "special"
    if name == "clip":  # "<|startoftext|> a photo ... <|endoftext|>", then [CLS]
        assert kinds[0] == "special" and "".join(traced.tokens[1 : n_caption - 1]) == CAPTION
        cls = traced.layout.row(n_caption)
        assert (cls["token"], cls["kind"], cls["box"], cls["image_index"]) == ("[CLS]", "special", None, 0)
    else:  # " a photo ... square" then "</s>" padding up to the text tower's full length
        assert "".join(traced.tokens[: CAPTION.count(" ") + 2]).strip().startswith(CAPTION[:12])
        assert n_caption == model.config.text_config.max_position_embeddings
    patches = traced.image_positions
    assert len(patches) == g * g and (patches == np.arange(n - g * g, n)).all()
    assert {traced.layout.row(int(p))["view"] for p in patches} == {"base"}
    np.testing.assert_array_equal(traced.layout.grid[patches], np.stack(np.divmod(np.arange(g * g), g), axis=1))
    assert_views_tile(traced.layout)
    assert_boxes_inside(traced.layout)


# -- attention -----------------------------------------------------------------------------------------------------
def test_attention_rows_equal_eager(family, traced):
    _, model, _, adapter = family
    inputs = _inputs(adapter)
    n_caption = inputs["input_ids"].shape[1]
    with torch.no_grad():
        eager = _eager_copy(model).vision_model(pixel_values=inputs["pixel_values"], output_attentions=True)
    expected = torch.stack([layer[0] for layer in eager.attentions]).numpy()  # (L, H, N_v, N_v)
    rows = traced.attention_rows
    assert rows.dtype == np.float32 and rows.shape == (2, 4, len(traced.query_positions), len(traced.tokens))
    np.testing.assert_allclose(rows[..., n_caption:], expected, atol=1e-5, rtol=0)
    assert (rows[..., :n_caption] == 0).all()  # vision tokens never see the caption: true zeros
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        traced.attention(layer=traced.num_layers - 1, head="mean"),
        expected[-1].mean(0)[:, -len(traced.image_positions) :],
        atol=1e-5,
    )


def test_capture_plans(family, traced):
    _, model, processor, _ = family
    n_caption = int(traced.query_positions[0])
    subset = traced.query_positions[[0, 3, -1]]
    small = mmviz.trace(
        model,
        processor,
        IMAGE,
        CAPTION,
        capture=CapturePlan(layers=[traced.num_layers - 1], head_mean=True, queries=subset),
    )
    np.testing.assert_array_equal(small.layers, [1])
    np.testing.assert_array_equal(small.query_positions, subset)
    expected = traced.attention_rows[1:, :, [0, 3, -1]].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(small.attention_rows, expected, atol=1e-6)
    full = mmviz.trace(model, processor, IMAGE, CAPTION, capture=CapturePlan(vision_attention=True, layers=[0]))
    n_vision = len(traced.tokens) - n_caption
    assert full.vision_attention.shape == (2, 1, 4, n_vision, n_vision)
    np.testing.assert_allclose(full.vision_attention[:, 0], traced.attention_rows[..., n_caption:], atol=1e-6)
    np.testing.assert_allclose(full.attention_rows, traced.attention_rows[:1], atol=1e-6)
    with pytest.raises(InputError, match="vision-tower positions"):
        mmviz.trace(model, processor, IMAGE, CAPTION, capture=CapturePlan(queries=[0, n_caption]))
    with pytest.raises(InputError, match="hidden_states"):
        mmviz.trace(model, processor, IMAGE, CAPTION, capture=CapturePlan(hidden_states=True))
    with pytest.raises(CaptureBudgetError):
        mmviz.trace(model, processor, IMAGE, CAPTION, capture=CapturePlan(budget_bytes=64))


# -- similarity ----------------------------------------------------------------------------------------------------
def _independent_similarity(name, model, inputs):
    """Patch embeddings from the model's OWN modules: CLIP's last layer under a self-only (diagonal) attention mask,
    SigLIP's pooling head called on one patch at a time (a softmax over a single key is 1)."""
    twin = _eager_copy(model)
    with torch.no_grad():
        text = twin.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        text = text.pooler_output[0]
        vision = twin.vision_model(pixel_values=inputs["pixel_values"], output_hidden_states=True)
        if name == "clip":
            before_last = vision.hidden_states[-2]
            n = before_last.shape[1]
            diagonal = torch.full((n, n), torch.finfo(before_last.dtype).min).fill_diagonal_(0)[None, None]
            last = twin.vision_model.encoder.layers[-1](before_last, diagonal)
            patches = twin.visual_projection(twin.vision_model.post_layernorm(last))[0, 1:]
        else:
            hidden = vision.last_hidden_state
            patches = torch.cat([twin.vision_model.head(hidden[:, [p]]) for p in range(hidden.shape[1])])
        output = twin(**inputs)
    cosine = torch.nn.functional.cosine_similarity(text[None], patches, dim=-1)
    return cosine.numpy(), output, text


def test_similarity_map_matches_independent_computation(family, traced):
    name, model, _, adapter = family
    inputs = _inputs(adapter)
    expected, output, text = _independent_similarity(name, model, inputs)
    result = traced.maps["similarity"]
    assert result.method == "similarity" and result.signed and "noisy" in result.meaning
    assert result.values.shape == (1, adapter.grid_size**2)
    np.testing.assert_array_equal(result.columns, traced.image_positions)
    np.testing.assert_allclose(result.values[0], expected, atol=1e-5)
    assert np.abs(result.values).max() > 0.05  # not trivially zero

    # the pooled position is where the text tower pools: its final state, projected, is the caption embedding
    pooled = int(result.positions[0])
    assert result.info["pooled_position"] == pooled
    with torch.no_grad():
        states = model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        at_pooled = states.last_hidden_state[0, pooled]
        head = model.text_projection if name == "clip" else model.text_model.head
        torch.testing.assert_close(head(at_pooled), text, atol=1e-5, rtol=0)
    if name == "clip":
        assert traced.tokens[pooled] == "<|endoftext|>" and pooled == int(traced.query_positions[0]) - 1
    else:
        assert pooled == int(traced.query_positions[0]) - 1  # the last caption position (padding included)

    # the image–caption similarity is the model's own: logit = exp(scale) · cosine (+ bias for SigLIP)
    logit = float(output.logits_per_image[0, 0])
    scale, bias = float(model.logit_scale.detach().exp()), float(getattr(model, "logit_bias", torch.zeros(1)).detach())
    info = result.info
    assert info["logit_per_image"] == pytest.approx(logit, abs=1e-5)
    assert info["cosine"] == pytest.approx((logit - bias) / scale, abs=1e-5)
    assert info["logit_scale"] == pytest.approx(scale) and info["caption"] == CAPTION
    if name == "siglip":
        assert info["logit_bias"] == pytest.approx(bias)
        assert info["probability"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)


def test_similarity_for_several_captions(family, traced):
    name, model, processor, _ = family
    texts = ["a blue circle", CAPTION, "a cat sits near the door"]
    result = similarity(model, processor, IMAGE, texts)
    assert isinstance(result, Similarity) and result.texts == texts
    assert result.patches.shape == (3, result.grid_shape[0] * result.grid_shape[1])
    np.testing.assert_allclose(result.patches[1], traced.maps["similarity"].values[0], atol=1e-5)  # padding-proof
    np.testing.assert_allclose(result.heatmap(CAPTION).ravel(), result.patches[1])
    with torch.no_grad():
        own = model(**processor(images=[IMAGE], text=texts, return_tensors="pt", **_padding(name, model)))
    np.testing.assert_allclose(result.logits, own.logits_per_image[0].numpy(), atol=1e-5)
    bias = float(getattr(model, "logit_bias", torch.zeros(1)).detach())
    np.testing.assert_allclose(
        result.pooled, (result.logits - bias) / float(model.logit_scale.detach().exp()), atol=1e-5
    )
    if name == "clip":
        np.testing.assert_allclose(result.probabilities, torch.softmax(own.logits_per_image[0], -1).numpy(), atol=1e-6)
    else:
        np.testing.assert_allclose(result.probabilities, torch.sigmoid(own.logits_per_image[0]).numpy(), atol=1e-6)
    np.testing.assert_allclose(result.patch_softmax().sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.boxes, traced.layout.boxes[traced.image_positions])
    single = similarity(model, processor, IMAGE, CAPTION)
    np.testing.assert_allclose(single.patches[0], result.patches[1], atol=1e-5)
    assert "Similarity" in repr(single)


def _padding(name, model):
    if name == "siglip":
        return {"padding": "max_length", "max_length": model.config.text_config.max_position_embeddings}
    return {"padding": True}


def test_similarity_needs_a_dual_encoder():
    from mmviz.zoo import tiny_llava

    model, processor = tiny_llava(image_size=56, num_layers=1)
    with pytest.raises(UnsupportedModelError, match="dual encoder"):
        similarity(model, processor, IMAGE, CAPTION)


# -- geometry -------------------------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(width=st.integers(10, 250), height=st.integers(10, 250))
@example(width=250, height=12)  # very wide
@example(width=12, height=250)  # very tall
@example(width=10, height=10)
@example(width=56, height=56)
def test_boxes_follow_the_processor(family, width, height):
    """Each patch's box centre is where the processor put the pixels that patch sees (coordinate image)."""
    name, _, processor, adapter = family
    image = coordinate_image(width, height)
    inputs = _inputs(adapter, image)
    layout = adapter.layout(inputs["input_ids"][0].numpy(), [image], inputs)
    assert_views_tile(layout)
    assert_boxes_inside(layout)
    pixels = processor.image_processor(images=[image], **RAW)["pixel_values"][0]
    p, g = adapter.patch_size, adapter.grid_size
    x = pixels[0].reshape(g, p, g, p).mean(axis=(1, 3)).ravel()
    y = pixels[1].reshape(g, p, g, p).mean(axis=(1, 3)).ravel()
    boxes = layout.boxes[layout.image_positions].astype(np.float64)
    np.testing.assert_allclose(x, (boxes[:, 0] + boxes[:, 2]) / 2 - 0.5, atol=TOL)
    np.testing.assert_allclose(y, (boxes[:, 1] + boxes[:, 3]) / 2 - 0.5, atol=TOL)
    covered = layout.images[0].covered
    if name == "siglip":  # stretch: every pixel reaches a patch
        np.testing.assert_allclose(covered, (0, 0, width, height), atol=1e-9)
    else:  # layouts.md §3.1: integer resize of the shortest side to S, then a centred S×S crop (floor offsets)
        s = adapter.image_size
        new_w, new_h = (s, int(height * s / width)) if width <= height else (int(width * s / height), s)
        ox, oy = (new_w - s) // 2, (new_h - s) // 2
        expected = (ox * width / new_w, oy * height / new_h, (ox + s) * width / new_w, (oy + s) * height / new_h)
        np.testing.assert_allclose(covered, expected, atol=1e-6)
        assert min(covered[2] - covered[0], covered[3] - covered[1]) == pytest.approx(min(width, height))


@pytest.mark.parametrize("size", [(120, 40), (40, 120)], ids=["wide", "tall"])
def test_pixels_outside_the_crop_reach_no_token(size):
    """CLIP centre-crops: changing pixels outside ``covered`` (beyond the resampling filter's reach) changes nothing
    the model sees; changing pixels inside does."""
    model, processor = build_clip()
    adapter = adapter_for(model, processor)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    x0, y0, x1, y1 = adapter.patch_boxes(Image.fromarray(base))[1].covered
    assert (x1 - x0, y1 - y0) == (40, 40) and (x0 > 0) != (y0 > 0)
    margin = 3  # bicubic support: 2 resized px ≈ 2 × (40 / 56) original px
    outside = np.ones(base.shape[:2], bool)
    outside[max(0, int(y0) - margin) : int(y1) + margin, max(0, int(x0) - margin) : int(x1) + margin] = False
    changed = base.copy()
    changed[outside] = 255 - changed[outside]

    def pixels(array):
        return processor.image_processor(images=[Image.fromarray(array)], return_tensors="np")["pixel_values"]

    np.testing.assert_array_equal(pixels(base), pixels(changed))
    inside = base.copy()
    inside[int(y0) + 5, int(x0) + 5] = 255 - inside[int(y0) + 5, int(x0) + 5]
    assert not np.array_equal(pixels(base), pixels(inside))


# -- the user's model ----------------------------------------------------------------------------------------------
def test_model_left_untouched(family):
    _, model, processor, _ = family
    twin = copy.deepcopy(model).train()
    twin.vision_model.embeddings.requires_grad_(False)
    before = snapshot(twin)
    implementations = {key: getattr(twin.config, key)._attn_implementation for key in ("text_config", "vision_config")}
    mmviz.trace(twin, processor, IMAGE, CAPTION)
    similarity(twin, processor, IMAGE, [CAPTION, "a dog"])
    assert snapshot(twin) == before
    assert {key: getattr(twin.config, key)._attn_implementation for key in implementations} == implementations
    assert twin.training and not twin.vision_model.embeddings.patch_embedding.weight.requires_grad


# -- widget --------------------------------------------------------------------------------------------------------
def test_inspector(traced):
    widget = mmviz.Inspector(traced)
    entries = {entry["name"]: entry for entry in widget.methods}
    assert entries["similarity"]["computed"] and entries["similarity"]["signed"]
    assert "similarity" in widget.maps and widget.maps["similarity"]["signed"]
    mean = wire.decode(widget.attention_mean)
    assert mean.shape == (2, len(traced.query_positions), len(traced.image_positions))
    heads = wire.decode(widget.extra("heads", 1))
    assert heads.shape == (4, len(traced.query_positions), len(traced.image_positions))
    assert widget.meta["extras"] == {"heads": True, "lens": False, "projection": False}, "no language model"
    with pytest.raises(ValueError, match="needs the model's language model"):
        widget.extra("lens")
    widget.method = "similarity"
    html = widget.to_html()
    assert "mmviz" in html and len(html) > 1000


# -- errors ----------------------------------------------------------------------------------------------------------
def test_clear_errors(family):
    name, model, processor, adapter = family
    with pytest.raises(InputError, match="generates nothing"):
        mmviz.trace(model, processor, IMAGE, CAPTION, answer="red")
    with pytest.raises(InputError, match="one image"):
        mmviz.trace(model, processor, [IMAGE, IMAGE], CAPTION)
    with pytest.raises(InputError, match="do not apply"):
        mmviz.trace(model, processor, IMAGE, CAPTION, methods=["relevancy"])
    with pytest.raises(InputError, match="at most"):
        mmviz.trace(model, processor, IMAGE, " ".join(["red"] * 100))
    traced = mmviz.trace(model, processor, IMAGE, CAPTION)
    with pytest.raises(InputError, match="dual encoder"):  # no language model to run again
        mmviz.methods.relevancy(traced)
    with pytest.raises(InputError, match="dual encoder"):
        traced.compute("relevancy")
    assert not isinstance(adapter, GenerativeAdapter), "a dual encoder has no language model, image placeholder, lens"
    other = build_siglip() if name == "clip" else build_clip()
    with pytest.raises(ProcessorMismatchError):
        mmviz.trace(model, other[1], IMAGE, CAPTION)
