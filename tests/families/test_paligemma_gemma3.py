"""PaliGemma and Gemma 3 adapters against their real processors and tiny random-weight models.

The layout is checked against what the processor produced (inserted tokens, markers, the pixels of every cell of a
coordinate-encoding image) and against the model: the analysis forward (prompt + answer, per-token inputs extended
by the adapter) gives the logits ``generate`` gave, and the recorded attention rows show the bidirectional blocks.
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
from mmviz.adapters import Gemma3Adapter, PaliGemmaAdapter, adapter_for
from mmviz.adapters.layout import IMAGE, TEXT
from mmviz.capture import CapturePlan, recording_hidden_states
from mmviz.errors import ProcessorMismatchError
from tests.families.build_gemma_blip import (
    GEMMA3_TOKENS,
    PALIGEMMA_PATCH,
    PALIGEMMA_SIZE,
    build_gemma3,
    build_paligemma,
    gemma3_processor,
    paligemma_processor,
)
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image

BUILDERS = {"paligemma": build_paligemma, "gemma3": build_gemma3}
RAW = {"do_rescale": False, "do_normalize": False}  # pixel values stay the image's own uint8 values
TOLERANCE = 0.6  # px; the resampler rounds to uint8: an exact x.5 mean (256 px → 16 cells) is off by 0.5 px
WIDE = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (40, 1, 3)))
TALL = Image.fromarray(np.tile(np.linspace(0, 255, 90, dtype=np.uint8)[:, None, None], (1, 30, 3)))


@pytest.fixture(params=sorted(BUILDERS), scope="module")
def family(request):
    model, processor = BUILDERS[request.param]()
    return model, processor, adapter_for(model, processor)


def encode(adapter, images, **kwargs):
    """The processor's own output for the adapter's prompt, and the adapter's layout of it."""
    text = adapter.format_prompt("Describe it.", n_images=len(images))
    options = {"add_special_tokens": False} if text.startswith(adapter.tokenizer.bos_token) else {}
    inputs = dict(adapter.processor(images=list(images), text=text, return_tensors="pt", **options, **kwargs))
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), list(images), inputs)


def cell_size(adapter) -> int:
    """Canvas pixels per token side: the patch (PaliGemma) or the pooled block of patches (Gemma 3)."""
    patch = int(adapter.model.config.vision_config.patch_size)
    return patch * adapter.pool_size if isinstance(adapter, Gemma3Adapter) else patch


# -- registry and module paths -----------------------------------------------------------------------------------
def test_registered_families_and_modules(family):
    model, _, adapter = family
    expected = {"paligemma": PaliGemmaAdapter, "gemma3": Gemma3Adapter}[model.config.model_type]
    assert type(adapter) is expected
    assert mmviz.adapters.supported_families()[model.config.model_type] == adapter.family
    assert adapter.language_model() is model.model.language_model
    assert len(adapter.decoder_layers()) == model.config.text_config.num_hidden_layers
    assert adapter.final_norm() is model.model.language_model.norm
    assert adapter.unembedding() is model.lm_head


def test_lens_logits_reproduce_the_models_logits_with_the_soft_cap(family):
    """Final norm once, unembedding and the soft cap where the model's head applies one (PaliGemma, not Gemma 3's
    multimodal head): the last residual gives the model's logits, also where the cap bends them."""
    model, processor, _ = family
    model = copy.deepcopy(model)
    assert model.config.text_config.final_logit_softcapping  # the config names a cap, so the check covers it
    with torch.no_grad():
        model.lm_head.weight.mul_(400.0)  # logits of tens: tanh(x / 30) · 30 is far from x there
    adapter = mmviz.adapters.adapter_for(model, processor)
    inputs = adapter.encode([WIDE], adapter.format_prompt("What is in the picture?", 1))
    with torch.no_grad(), recording_hidden_states(adapter.decoder_layers()) as hidden:
        logits = model(**inputs).logits
    last = hidden[len(adapter.decoder_layers())]
    with torch.no_grad():
        lens = adapter.lens_logits(last)
    assert logits.abs().max() > 20
    torch.testing.assert_close(lens, logits, atol=1e-3, rtol=1e-4)


# -- layout against the processor ------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 900), height=st.integers(1, 900))
@example(width=10, height=10)
@example(width=900, height=3)  # very wide
@example(width=3, height=900)  # very tall
def test_layout_matches_processor(family, width, height):
    _, _, adapter = family
    image = Image.new("RGB", (width, height), "gray")
    inputs, layout = encode(adapter, [image])
    g = adapter.grid_size
    inserted = int((inputs["input_ids"] == adapter.image_token_id).sum())
    assert len(layout.image_positions) == inserted == g * g
    assert (layout.kinds[layout.image_positions] == IMAGE).all()
    assert {tuple(shape) for shape in layout.grid_shape[layout.image_positions]} == {(g, g)}
    assert (layout.grid[layout.image_positions] == np.argwhere(np.ones((g, g)))).all()  # raster order
    assert_views_tile(layout)
    assert_boxes_inside(layout)
    np.testing.assert_allclose(layout.images[0].covered, (0, 0, width, height), atol=1e-4)
    if isinstance(adapter, Gemma3Adapter):
        markers = layout.positions("image_sep")
        assert [layout.tokens[p] for p in markers] == ["<start_of_image>", "<end_of_image>"]
        assert markers.tolist() == [layout.image_positions[0] - 1, layout.image_positions[-1] + 1]
        assert np.isnan(layout.boxes[markers]).all() and (layout.image_index[markers] == 0).all()
    else:
        after = layout.image_positions[-1] + 1  # the processor puts <bos> right after the image tokens
        assert layout.tokens[after] == "<bos>" and layout.kinds[after] != IMAGE
        assert layout.image_positions[0] == 0
        assert adapter.tokenizer.decode(inputs["input_ids"][0, -1:]) == "\n"  # the processor's trailing "\n"
        assert layout.kinds[-1] == TEXT


def test_multi_image_layout(family):
    _, _, adapter = family
    _, layout = encode(adapter, [WIDE, TALL])
    g = adapter.grid_size
    first, second = (layout.image_positions[layout.image_index[layout.image_positions] == i] for i in (0, 1))
    assert len(first) == len(second) == g * g and first.max() < second.min()
    assert layout.boxes[second].max(axis=0)[2] == pytest.approx(TALL.width)
    assert layout.boxes[first].max(axis=0)[2] == pytest.approx(WIDE.width)
    assert_views_tile(layout)


def decoded_cells(adapter, inputs, image_index: int = 0) -> np.ndarray:
    """Mean (x, y) of the coordinate-image pixels the processor put into each token's canvas cell."""
    pixels = inputs["pixel_values"][image_index].numpy()
    cell = cell_size(adapter)
    g = adapter.grid_size
    blocks = pixels[:2, : g * cell, : g * cell].reshape(2, g, cell, g, cell).mean(axis=(2, 4))
    return blocks.reshape(2, -1).T


def box_centres(layout, positions) -> np.ndarray:
    """Box centres in pixel-index units (pixel i spans [i, i + 1), so its coordinate value is centre − 0.5)."""
    boxes = layout.boxes[positions].astype(np.float64)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(2, 256), height=st.integers(2, 256))
@example(width=250, height=90)  # wide
@example(width=70, height=240)  # tall
@example(width=256, height=4)  # very wide
@example(width=4, height=256)  # very tall
@example(width=10, height=10)  # upscaled
def test_boxes_land_where_the_processor_put_the_pixels(family, width, height):
    """Every token's box centre = the mean original coordinate of the pixels in its canvas cell."""
    _, _, adapter = family
    inputs, layout = encode(adapter, [coordinate_image(width, height)], **RAW)
    error = np.abs(decoded_cells(adapter, inputs) - box_centres(layout, layout.image_positions))
    assert error.max() < TOLERANCE


def test_boxes_land_per_image_with_two_images(family):
    _, _, adapter = family
    images = [coordinate_image(250, 90), coordinate_image(70, 240)]
    inputs, layout = encode(adapter, images, **RAW)
    for index in (0, 1):
        positions = layout.image_positions[layout.image_index[layout.image_positions] == index]
        assert np.abs(decoded_cells(adapter, inputs, index) - box_centres(layout, positions)).max() < TOLERANCE


@pytest.mark.parametrize("size", [(250, 90), (70, 240)], ids=["wide", "tall"])
def test_coordinate_check_catches_a_wrong_geometry(family, size):
    """Negative controls: column-major order, or an aspect-keeping resize instead of the stretch, are caught."""
    _, _, adapter = family
    inputs, layout = encode(adapter, [coordinate_image(*size)], **RAW)
    g = adapter.grid_size
    decoded = decoded_cells(adapter, inputs)
    column_major = box_centres(layout, layout.image_positions).reshape(g, g, 2).transpose(1, 0, 2).reshape(-1, 2)
    assert np.abs(decoded - column_major).max() > 5
    side = max(size)  # a square cell grid over the long side (as if the aspect were kept and padded)
    square = (np.argwhere(np.ones((g, g)))[:, ::-1] + 0.5) * side / g - 0.5
    assert np.abs(decoded - square).max() > 5


# -- processor mismatches ------------------------------------------------------------------------------------------
def test_a_processor_of_another_size_is_rejected(family):
    model, _, adapter = family
    if isinstance(adapter, PaliGemmaAdapter):
        processor = paligemma_processor(size={"height": 2 * PALIGEMMA_SIZE, "width": 2 * PALIGEMMA_SIZE})
    else:
        processor = gemma3_processor(size={"height": 32, "width": 32})
    with pytest.raises(ProcessorMismatchError, match="vision tower takes"):
        mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red")


def test_paligemma_image_seq_length_mismatch_is_rejected():
    model, _ = build_paligemma()
    processor = paligemma_processor(image_seq_length=(PALIGEMMA_SIZE // PALIGEMMA_PATCH) ** 2 - 1)
    with pytest.raises(ProcessorMismatchError, match="image tokens"):
        mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red")


def test_gemma3_pan_and_scan_is_rejected_with_advice():
    model, _ = build_gemma3()
    processor = gemma3_processor()
    adapter = adapter_for(model, processor)
    text = adapter.format_prompt("What is in the picture?", 1)
    # Gemma3Processor's own defaults switch Pan & Scan off; a processor configured to crop adds 4 crop views here.
    processor.images_kwargs = {**processor.images_kwargs, "do_pan_and_scan": True, "pan_and_scan_min_crop_size": 8}
    assert processor(images=[WIDE], text=text, return_tensors="pt")["pixel_values"].shape[0] > 1
    with pytest.raises(ProcessorMismatchError, match="do_pan_and_scan=False"):
        adapter.encode([WIDE], text)


def test_gemma3_prompt_has_one_bos():
    model, processor = build_gemma3()
    adapter = adapter_for(model, processor)
    text = adapter.format_prompt("What is in the picture?", 1)
    assert text.startswith("<bos><start_of_turn>user\n<start_of_image>")
    ids = adapter.encode([WIDE], text)["input_ids"][0]
    assert int((ids == processor.tokenizer.bos_token_id).sum()) == 1 and int(ids[0]) == processor.tokenizer.bos_token_id
    assert processor.tokenizer.convert_ids_to_tokens(int(ids[-1])) == "Ċ"  # "<start_of_turn>model\n"


def test_gemma3_rejects_a_processor_with_another_token_count():
    model, _ = build_gemma3()
    processor = gemma3_processor()
    processor.image_seq_length = GEMMA3_TOKENS // 4
    with pytest.raises(ProcessorMismatchError, match="tokens but the model gives"):
        adapter_for(model, processor)


# -- the analysis forward is the forward generation ran ------------------------------------------------------------
def _generate_logits(model, adapter, image, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = adapter.encode([image], adapter.format_prompt("What is in the picture?", 1))
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[0, inputs["input_ids"].shape[1] :], torch.stack(out.logits)[:, 0].float()


def test_analysis_forward_gives_the_logits_generate_gave(family):
    """Teacher-forcing the generated answer reproduces generation's logits: the per-token inputs the adapter
    extends over the answer (token_type_ids) give the answer tokens the mask generation gave them."""
    model, processor, adapter = family
    answer, logits = _generate_logits(model, adapter, TALL, n_tokens=4)
    trace = mmviz.trace(model, processor, TALL, "What is in the picture?", max_new_tokens=4)
    np.testing.assert_array_equal(trace.token_ids[trace.answer_start :], answer.numpy())
    expected = torch.log_softmax(logits, dim=-1).gather(1, answer[:, None])[:, 0].numpy()
    np.testing.assert_allclose(trace.answer_logprobs, expected, atol=1e-4)
    # The full logit rows agree too (not only the picked tokens).
    run = trace.run
    with torch.no_grad():
        replay = run.forward(first_logit=trace.answer_start - 1)[0, :-1]
    torch.testing.assert_close(replay, logits, atol=1e-4, rtol=1e-4)


def test_the_wrong_answer_token_type_changes_the_logits(family):
    """Negative control: the answer tokens with the other token type (PaliGemma: bidirectional prefix, Gemma 3: an
    image block) give different logits, so the check above does test the adapter's extension."""
    model, _, adapter = family
    trace = mmviz.trace(model, adapter.processor, TALL, "What is in the picture?", answer="red circle square")
    run = trace.run
    n_answer = len(trace.tokens) - trace.answer_start
    assert run.inputs["token_type_ids"].shape[1] == len(trace.tokens)
    wrong = run.inputs["token_type_ids"].clone()
    wrong[:, -n_answer:] = 0 if isinstance(adapter, PaliGemmaAdapter) else 1
    with torch.no_grad():
        right_logits = run.forward(first_logit=trace.answer_start - 1)
        wrong_logits = run.forward(first_logit=trace.answer_start - 1, inputs={**run.inputs, "token_type_ids": wrong})
    assert (right_logits - wrong_logits).abs().max() > 1e-3


def test_recorded_rows_show_the_bidirectional_blocks(family):
    """The rows mmviz records follow the model's mask: PaliGemma's prefix (image + prompt) attends both ways and
    the answer causally; Gemma 3's image tokens see their whole block but nothing after it; text is causal."""
    model, _, adapter = family
    trace = mmviz.trace(
        model, adapter.processor, TALL, "What is in the picture?", answer="red circle", capture=CapturePlan("all")
    )
    rows = trace.attention_rows.mean(axis=(0, 1))  # (N, N): every query position
    n = len(trace.tokens)
    later = np.triu(np.ones((n, n), bool), k=1)
    image = trace.image_positions
    if isinstance(adapter, PaliGemmaAdapter):
        prefix = np.arange(trace.answer_start)
        assert (rows[np.ix_(prefix, prefix)] > 0).all()  # bidirectional prefix, also image → prompt
        answer = np.arange(trace.answer_start, n)
        assert rows[answer][later[answer]].max() == 0  # the answer is causal
        assert rows[np.ix_(prefix, answer)].max() == 0  # the prefix never sees the answer
    else:
        block = np.arange(image[0] - 1, image[-1] + 2)  # markers are text: causal
        assert (rows[np.ix_(image, image)] > 0).all()  # bidirectional inside the block...
        assert rows[np.ix_(image, np.arange(image[-1] + 1, n))].max() == 0  # ...and nothing after it
        text = np.setdiff1d(np.arange(n), image)
        assert rows[text][later[text]].max() == 0  # text is causal
        assert rows[block[0], image].max() == 0  # <start_of_image> does not see its block


def test_trace_end_to_end_with_methods(family):
    model, processor, adapter = family
    trace = mmviz.trace(model, processor, WIDE, "What is in the picture?", max_new_tokens=3)
    assert len(trace.image_positions) == adapter.grid_size**2
    gradient = mmviz.methods.gradient_x_input(trace)
    assert gradient.values.shape == (len(trace.tokens) - trace.answer_start, len(trace.image_positions))
    assert np.isfinite(gradient.values).all() and np.abs(gradient.values).max() > 0
    assert "mmviz" in mmviz.Inspector(trace).to_html()
