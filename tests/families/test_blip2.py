"""BLIP-2: query tokens without boxes, soft cells through the Q-Former's cross-attention, the widget's composition.

The query positions are checked against the processor (which prepends them), the soft weights against the
Q-Former's cross-attention recomputed by hand from its own query/key projections, the cells against the pixels the
processor put into every ViT patch (coordinate-encoding images), and the widget's maps against
``trace.attention(...) @ weights``. Gradient methods run with the query positions as columns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmviz
from mmviz import wire
from mmviz.adapters import Blip2Adapter, SoftCells, TokenLayout, adapter_for
from mmviz.adapters.layout import IMAGE, QUERY, VIEWS
from mmviz.capture import recording_hidden_states
from mmviz.errors import InputError, ProcessorMismatchError
from mmviz.methods import CATALOGUE
from mmviz.widget.payloads import display_cells, map_payload
from tests.families.build_gemma_blip import BLIP2_PATCH, BLIP2_QUERIES, BLIP2_SIZE, blip2_processor, build_blip2
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image

RAW = {"do_rescale": False, "do_normalize": False}
TOLERANCE = 0.6  # px; the resampler rounds to uint8: an exact x.5 mean (256 px → 32) is off by 0.5 px
G = BLIP2_SIZE // BLIP2_PATCH
WIDE = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (40, 1, 3)))
TALL = Image.fromarray(np.tile(np.linspace(0, 255, 90, dtype=np.uint8)[:, None, None], (1, 30, 3)))


@pytest.fixture(scope="module")
def blip2():
    model, processor = build_blip2()
    return model, processor, adapter_for(model, processor)


@pytest.fixture(scope="module")
def wide_trace(blip2):
    model, processor, _ = blip2
    return mmviz.trace(model, processor, WIDE, "What is in the picture?", max_new_tokens=3)


def encode(adapter, image, **kwargs):
    inputs = dict(
        adapter.processor(images=[image], text=adapter.format_prompt("Describe it.", 1), return_tensors="pt", **kwargs)
    )
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), [image], inputs)


# -- soft-cell variant of tests/families/checks.py (which checks the positions that have boxes) ---------------------
def cells_layout(layout: TokenLayout) -> TokenLayout:
    """The soft cells as a direct layout (one boxed "position" per cell), for the shared box checks."""
    soft = layout.soft
    n = len(soft)
    return TokenLayout(
        tokens=[""] * n,
        kinds=np.full(n, IMAGE, np.uint8),
        image_index=soft.image_index,
        view=np.full(n, VIEWS.index("query"), np.uint8),
        grid=soft.grid,
        grid_shape=np.tile(np.asarray(soft.grid_shape, np.int32), (n, 1)),
        boxes=soft.boxes,
        images=layout.images,
    )


def assert_soft_cells_tile(layout: TokenLayout) -> None:
    """Per image, the soft cells tile its covered region (no gaps, no overlaps) inside the image, and every
    query's weights over them are a distribution."""
    soft = layout.soft
    assert soft is not None and np.isfinite(soft.boxes).all()
    np.testing.assert_allclose(soft.weights.sum(axis=1), 1.0, atol=1e-5)
    assert (soft.weights >= 0).all()
    cells = cells_layout(layout)
    assert len(cells.image_positions) == len(soft)
    assert_views_tile(cells)
    assert_boxes_inside(cells)


# -- registry and module paths -----------------------------------------------------------------------------------
def test_registered_and_module_paths(blip2):
    model, _, adapter = blip2
    assert type(adapter) is Blip2Adapter and mmviz.adapters.supported_families()["blip-2"] == "BLIP-2"
    decoder = model.language_model.model.decoder  # OPT: no model.model wrapper, a full causal LM
    assert adapter.language_model() is decoder
    assert list(adapter.decoder_layers()) == list(decoder.layers)
    assert adapter.final_norm() is decoder.final_layer_norm
    assert adapter.unembedding() is model.language_model.lm_head
    assert adapter.num_layers == 2 and adapter.num_heads == 4


def test_lens_logits_reproduce_the_models_logits(blip2):
    model, _, adapter = blip2
    inputs = adapter.encode([WIDE], adapter.format_prompt("What is in the picture?", 1))
    with torch.no_grad(), recording_hidden_states(adapter.decoder_layers()) as hidden:
        logits = model(**inputs).logits
    with torch.no_grad():
        lens = adapter.lens_logits(hidden[len(adapter.decoder_layers())])
    torch.testing.assert_close(lens, logits, atol=1e-4, rtol=1e-4)


def test_trace_records_attention_rows_of_the_opt_decoder(wide_trace):
    """OPT attention runs through transformers' AttentionInterface, so mmviz's function records every layer."""
    trace = wide_trace
    assert trace.attention_rows.shape[:2] == (2, 4)
    np.testing.assert_allclose(trace.attention_rows.sum(-1), 1.0, atol=1e-4)
    assert trace.attention(layer=trace.num_layers - 1, head="mean").shape == (len(trace.query_positions), BLIP2_QUERIES)
    assert (trace.attention(layer=0, head="mean") > 0).all()  # every text row reads the query tokens


# -- layout: query positions and soft cells --------------------------------------------------------------------------
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 900), height=st.integers(1, 900))
@example(width=10, height=10)
@example(width=900, height=3)  # very wide
@example(width=3, height=900)  # very tall
def test_layout_matches_processor(blip2, width, height):
    _, _, adapter = blip2
    image = Image.new("RGB", (width, height), "gray")
    inputs, layout = encode(adapter, image)
    inserted = np.flatnonzero(inputs["input_ids"][0].numpy() == adapter.image_token_id)
    assert inserted.tolist() == list(range(BLIP2_QUERIES))  # the processor PREPENDS the queries, before <bos>
    assert layout.tokens[BLIP2_QUERIES] == "</s>"
    np.testing.assert_array_equal(layout.image_positions, inserted)
    np.testing.assert_array_equal(layout.positions("query"), inserted)
    assert (layout.kinds[inserted] == QUERY).all() and (layout.view[inserted] == VIEWS.index("query")).all()
    assert np.isnan(layout.boxes[inserted]).all()  # queries have no box...
    assert (layout.grid[inserted] == np.stack([np.zeros(BLIP2_QUERIES), np.arange(BLIP2_QUERIES)], 1)).all()
    assert (layout.grid_shape[inserted] == (1, BLIP2_QUERIES)).all()  # ...only their order, as a 1 × Qn strip
    assert len(layout.positions("image")) == 0
    soft = layout.soft
    assert soft.weights.shape == (BLIP2_QUERIES, G * G) and soft.weights.dtype == np.float32
    assert soft.grid_shape == (G, G) and (soft.grid == np.argwhere(np.ones((G, G)))).all()
    assert soft.label.startswith("indirect")
    np.testing.assert_allclose(layout.images[0].covered, (0, 0, width, height), atol=1e-4)
    assert_soft_cells_tile(layout)


def test_soft_weights_are_the_qformer_cross_attention(blip2):
    """Recompute softmax(q·kᵀ/√d) from the cross-attention modules' own projections: mean over heads and layers,
    CLS dropped, renormalised; and the model's attention implementation is left as it was."""
    model, _, adapter = blip2
    inputs, layout = encode(adapter, WIDE)
    captured: dict[str, list[torch.Tensor]] = {"q": [], "k": []}
    handles = []
    for layer in model.qformer.encoder.layer:
        if layer.has_cross_attention:
            attention = layer.crossattention.attention
            handles.append(attention.query.register_forward_hook(lambda m, a, out: captured["q"].append(out)))
            handles.append(attention.key.register_forward_hook(lambda m, a, out: captured["k"].append(out)))
    try:
        with torch.no_grad():
            model.get_image_features(inputs["pixel_values"])
    finally:
        for handle in handles:
            handle.remove()
    heads = model.config.qformer_config.num_attention_heads
    assert len(captured["q"]) == model.config.qformer_config.num_hidden_layers == 2
    maps = []
    for q, k in zip(captured["q"], captured["k"], strict=True):
        q = q[0].view(q.shape[1], heads, -1).transpose(0, 1)
        k = k[0].view(k.shape[1], heads, -1).transpose(0, 1)
        maps.append(torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1))
    expected = torch.stack(maps).mean(dim=(0, 1))[:, 1:]  # layers, heads; CLS is ViT token 0
    expected = (expected / expected.sum(-1, keepdim=True)).numpy()
    np.testing.assert_allclose(layout.soft.weights, expected, atol=1e-5)
    assert not np.allclose(layout.soft.weights, 1 / G**2, atol=1e-3)  # not uniform: the check has teeth
    assert model.config.qformer_config._attn_implementation == "sdpa"  # restored after the eager pass


def decoded_cells(inputs) -> np.ndarray:
    pixels = inputs["pixel_values"][0].numpy()
    blocks = pixels[:2].reshape(2, G, BLIP2_PATCH, G, BLIP2_PATCH).mean(axis=(2, 4))
    return blocks.reshape(2, -1).T


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(2, 256), height=st.integers(2, 256))
@example(width=250, height=90)  # wide
@example(width=70, height=240)  # tall
@example(width=256, height=4)  # very wide
@example(width=4, height=256)  # very tall
@example(width=10, height=10)
def test_cells_land_where_the_processor_put_the_pixels(blip2, width, height):
    _, _, adapter = blip2
    inputs, layout = encode(adapter, coordinate_image(width, height), **RAW)
    boxes = layout.soft.boxes.astype(np.float64)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5
    assert np.abs(decoded_cells(inputs) - centres).max() < TOLERANCE


@pytest.mark.parametrize("size", [(250, 90), (70, 240)], ids=["wide", "tall"])
def test_cell_check_catches_a_wrong_order(blip2, size):
    _, _, adapter = blip2
    inputs, layout = encode(adapter, coordinate_image(*size), **RAW)
    boxes = layout.soft.boxes.astype(np.float64)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5
    column_major = centres.reshape(G, G, 2).transpose(1, 0, 2).reshape(-1, 2)
    assert np.abs(decoded_cells(inputs) - column_major).max() > 5


def test_soft_cells_validate_their_shapes():
    boxes = np.zeros((4, 4), np.float32)
    grid = np.zeros((4, 2), np.int32)
    image_index = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match="sum to 1"):
        SoftCells(np.arange(2), np.ones((2, 4), np.float32), boxes, grid, (2, 2), image_index)
    with pytest.raises(ValueError, match="query positions"):
        SoftCells(np.arange(3), np.full((2, 4), 0.25, np.float32), boxes, grid, (2, 2), image_index)


# -- end to end: methods and the widget --------------------------------------------------------------------------
def test_analysis_forward_gives_the_logits_generate_gave(blip2, wide_trace):
    model, _, adapter = blip2
    inputs = adapter.encode([WIDE], adapter.format_prompt("What is in the picture?", 1))
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    answer = out.sequences[0, inputs["input_ids"].shape[1] :]
    np.testing.assert_array_equal(wide_trace.token_ids[wide_trace.answer_start :], answer.numpy())
    logits = torch.stack(out.logits)[:, 0].float()
    expected = torch.log_softmax(logits, -1).gather(1, answer[:, None])[:, 0].numpy()
    np.testing.assert_allclose(wide_trace.answer_logprobs, expected, atol=1e-4)


def test_gradient_method_runs_on_the_query_columns(wide_trace):
    trace = wide_trace
    result = mmviz.methods.gradient_x_input(trace)
    np.testing.assert_array_equal(result.columns, trace.layout.soft.positions)
    assert result.values.shape == (len(trace.tokens) - trace.answer_start, BLIP2_QUERIES)
    assert np.isfinite(result.values).all() and np.abs(result.values).max() > 0
    on_cells = display_cells(result.values, trace.layout)
    assert on_cells.shape == (len(result.values), G * G)


def test_widget_composes_maps_onto_the_cells(wide_trace):
    trace = wide_trace
    weights = trace.layout.soft.weights
    inspector = mmviz.Inspector(trace)
    expected = trace.attention() @ weights  # (L, H, Q, C)
    shipped = np.stack([wire.decode(inspector.extra("heads", layer)) for layer in range(trace.num_layers)])
    assert shipped.shape == expected.shape
    step = (expected.max(-1, keepdims=True) - expected.min(-1, keepdims=True)) / 510
    assert np.all(np.abs(shipped - expected) <= step + 1e-6)
    mean = wire.decode(inspector.attention_mean)
    expected_mean = trace.attention().mean(axis=1) @ weights
    assert np.abs(mean - expected_mean).max() <= (expected_mean.max() - expected_mean.min()) / 255
    np.testing.assert_allclose(display_cells(trace.attention(layer=0, head=1), trace.layout), expected[0, 1], atol=1e-6)
    layout = inspector.token_layout
    np.testing.assert_array_equal(np.frombuffer(layout["boxes"], "<f4").reshape(-1, 4), trace.layout.soft.boxes)
    np.testing.assert_array_equal(np.frombuffer(layout["grid"], "<i4").reshape(-1, 2), trace.layout.soft.grid)
    assert set(np.frombuffer(layout["view"], np.uint8)) == {VIEWS.index("query")}
    cell_positions = np.frombuffer(layout["image_positions"], "<i4")
    assert len(cell_positions) == G * G and set(cell_positions) <= set(trace.layout.soft.positions)
    np.testing.assert_array_equal(np.frombuffer(layout["soft"]["positions"], "<i4"), trace.layout.soft.positions)
    np.testing.assert_array_equal(np.frombuffer(layout["soft"]["weights"], "<f4").reshape(weights.shape), weights)
    assert "Indirect: through the Q-Former's cross-attention" in inspector.meta["map_description"]
    gradient = inspector.compute("gradient_x_input")
    shipped_map = wire.decode(inspector.maps["gradient_x_input"]["values"])
    composed = gradient.values @ weights
    step = (composed.max(-1, keepdims=True) - composed.min(-1, keepdims=True)) / 510
    assert np.all(np.abs(shipped_map - composed) <= step + 1e-6)
    assert "Indirect" in inspector.maps["gradient_x_input"]["meaning"]
    assert "mmviz" in inspector.to_html()


CHEAP = {"integrated_gradients": {"steps": 4}, "rise": {"n_masks": 16}, "knockout": {"window": 4}}


@pytest.fixture(scope="module")
def red_trace(blip2):
    model, processor, _ = blip2
    return mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red")


@pytest.mark.parametrize("method", sorted(set(CATALOGUE) - {"attention"}))
def test_every_catalogue_method_runs_and_is_composed_onto_the_cells(red_trace, method):
    """Columns are the query positions (the LLM inputs carrying the image); the widget draws them on the cells."""
    trace = red_trace
    compute = CATALOGUE[method].compute
    result = compute(trace, **CHEAP[method]) if method in CHEAP else compute(trace)  # cheap settings: fast tests
    np.testing.assert_array_equal(result.columns, trace.layout.soft.positions)
    assert np.isfinite(result.values).all()
    payload = map_payload(result, trace.layout)
    shipped = wire.decode(payload["values"])
    kept = result.values if result.layers is None else result.values[result.layers >= 0]
    assert shipped.shape == (*kept.shape[:-1], G * G)
    composed = kept @ trace.layout.soft.weights
    assert np.all(np.abs(shipped - composed) <= np.ptp(composed, axis=-1, keepdims=True) / 510 + 1e-6)
    assert payload["meaning"].endswith("reads that cell.")


def test_direct_layouts_are_shown_as_they_are():
    """The composition is the identity for families whose image tokens have boxes."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    layout = TokenLayout([], *(np.zeros(0),) * 6)
    assert display_cells(values, layout) is values


def test_inspector_on_a_tall_image(blip2):
    model, processor, _ = blip2
    trace = mmviz.trace(model, processor, TALL, "What is in the picture?", answer="red")
    assert trace.layout.images[0].width == TALL.width
    assert_soft_cells_tile(trace.layout)
    assert "mmviz" in mmviz.Inspector(trace).to_html()


# -- input and processor errors -------------------------------------------------------------------------------------
def test_prompt_format_and_input_errors(blip2):
    model, processor, adapter = blip2
    assert adapter.format_prompt("What is it?", 1) == "Question: What is it? Answer:"
    assert adapter.format_prompt("Question: What is it? Answer:", 1) == "Question: What is it? Answer:"
    with pytest.raises(InputError, match="one image"):
        mmviz.trace(model, processor, [WIDE, TALL], "Compare them.", answer="same")
    with pytest.raises(InputError, match="without"):
        mmviz.trace(model, processor, WIDE, "<image> What is it?", answer="red")


def test_processor_mismatches_are_rejected(blip2):
    model, _, _ = blip2
    processor = blip2_processor()
    processor.num_query_tokens = BLIP2_QUERIES // 2
    with pytest.raises(ProcessorMismatchError, match="num_query_tokens"):
        adapter_for(model, processor)
    other_size = blip2_processor(size={"height": 2 * BLIP2_SIZE, "width": 2 * BLIP2_SIZE})
    with pytest.raises(ProcessorMismatchError, match="vision tower takes"):
        mmviz.trace(model, other_size, WIDE, "What is in the picture?", answer="red")
