"""Gemma 3n against its real processor and a tiny random-weight model (timm's MobileNetV5 at a quarter width).

The layout: soft tokens on the encoder's G × G map over the stretched square canvas, checked against the pixels
the processor put into each cell. The language model: AltUp keeps several residual streams, and mmviz reads them as
the model's last step does, so the logit lens of the last layer is the model's own logits (also where the final soft
cap bends them), which reading the first stream alone is not. Then capture exactness (rows equal eager, logits
unchanged), the teacher-forced answer equal to generation's (per-layer inputs replayed), and the refusals: a layout
that cannot be measured, an SAE clamp on stacked streams, a processor of another token count or canvas.
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
from mmviz.adapters import Gemma3nAdapter, adapter_for, verify
from mmviz.capture import recording_hidden_states
from mmviz.errors import ProcessorMismatchError, UnsupportedModelError
from mmviz.features.clamp import clamp
from mmviz.features.sae import SparseAutoencoder
from mmviz.features.states import residual_stream
from tests.families.build_gemma3n import GEMMA3N_GRID, GEMMA3N_SIZE, HAS_TIMM, build_gemma3n, gemma3n_processor
from tests.families.checks import assert_boxes_inside, assert_views_tile, coordinate_image
from tests.test_capture_families import assert_rows_equal_eager_and_logits_unchanged

pytestmark = pytest.mark.skipif(
    not HAS_TIMM, reason="Gemma 3n's vision tower needs timm (pip install 'mmviz[gemma3n]')"
)

RAW = {"do_rescale": False}  # pixel values stay the image's own uint8 values (the processor does not normalise)
TOLERANCE = 0.6  # px; the bilinear resampler rounds to uint8
WIDE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 120, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def gemma3n():
    model, processor = build_gemma3n()
    return model, processor, adapter_for(model, processor)


def encode(adapter, images, **kwargs):
    text = adapter.format_prompt("Describe it.", n_images=len(images))
    inputs = dict(
        adapter.processor(images=list(images), text=text, return_tensors="pt", add_special_tokens=False, **kwargs)
    )
    return inputs, adapter.layout(inputs["input_ids"][0].numpy(), list(images), inputs)


def test_registered_and_modules(gemma3n):
    model, _, adapter = gemma3n
    assert type(adapter) is Gemma3nAdapter and mmviz.adapters.supported_families()["gemma3n"] == "Gemma 3n"
    assert adapter.language_model() is model.model.language_model
    assert len(adapter.decoder_layers()) == model.config.text_config.num_hidden_layers
    assert adapter.final_norm() is model.model.language_model.norm
    assert adapter.unembedding() is model.lm_head
    assert adapter.grid_size == GEMMA3N_GRID and adapter.canvas_size == GEMMA3N_SIZE


def test_prompt_has_one_bos_and_the_block_is_marked(gemma3n):
    _, processor, adapter = gemma3n
    text = adapter.format_prompt("What is in the picture?", 1)
    ids = adapter.encode([WIDE], text)["input_ids"][0]
    assert int((ids == processor.tokenizer.bos_token_id).sum()) == 1 and int(ids[0]) == processor.tokenizer.bos_token_id
    _, layout = encode(adapter, [WIDE])
    assert [layout.tokens[p] for p in layout.positions("image_sep")] == ["<start_of_image>", "<end_of_image>"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(2, 256), height=st.integers(2, 256))
@example(width=250, height=90)
@example(width=70, height=240)
@example(width=10, height=10)
def test_boxes_land_where_the_processor_put_the_pixels(gemma3n, width, height):
    """Every token's box centre = the mean original coordinate of the pixels in its S/G-px canvas cell, and the
    boxes tile the whole image (a stretch: nothing padded)."""
    _, _, adapter = gemma3n
    inputs, layout = encode(adapter, [coordinate_image(width, height)], **RAW)
    pixels = inputs["pixel_values"][0].numpy()
    g, cell = GEMMA3N_GRID, GEMMA3N_SIZE // GEMMA3N_GRID
    decoded = pixels[:2].reshape(2, g, cell, g, cell).mean(axis=(2, 4)).reshape(2, -1).T
    boxes = layout.boxes[layout.image_positions].astype(np.float64)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - 0.5
    assert np.abs(decoded - centres).max() < TOLERANCE * max(1.0, width / 64, height / 64)
    assert_views_tile(layout)
    assert_boxes_inside(layout)
    np.testing.assert_allclose(layout.images[0].covered, (0, 0, width, height))


def test_lens_of_the_last_layer_is_the_models_logits_through_the_altup_merge(gemma3n):
    """Final norm once after the AltUp merge, unembedding and the soft cap: the last layer's residual gives the
    model's logits where the cap bends them; the first stream alone (no merge) does not."""
    model, processor, _ = gemma3n
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(400.0)  # logits of tens: the cap (30) bends them
    adapter = adapter_for(model, processor)
    inputs = adapter.encode([WIDE], adapter.format_prompt("What is in the picture?", 1))
    layers = adapter.decoder_layers()
    with torch.no_grad(), recording_hidden_states(layers, readout=adapter.residual) as hidden:
        logits = model(**inputs).logits
    with torch.no_grad():
        lens = adapter.lens_logits(hidden[len(layers)])
    assert logits.abs().max() > 20
    torch.testing.assert_close(lens, logits, atol=1e-3, rtol=1e-4)
    with torch.no_grad(), recording_hidden_states(layers) as raw:  # the default readout keeps the streams stacked
        model(**inputs)
    first_stream = raw[len(layers)][0]
    with torch.no_grad():
        assert (adapter.lens_logits(first_stream) - logits).abs().max() > 1e-2


def test_rows_equal_eager_and_logits_are_unchanged(gemma3n):
    """Capture exactness with the processor's own inputs (sliding and full layers, the last two sharing keys and
    values): every recorded row equals eager attention within 1e-5, the logits with the capture on are bitwise
    equal."""
    model, _, adapter = gemma3n
    inputs, _ = encode(adapter, [WIDE])
    assert_rows_equal_eager_and_logits_unchanged(model, "text_config", inputs, num_layers=adapter.num_layers)


def test_analysis_forward_gives_the_logits_generate_gave(gemma3n):
    """Teacher-forcing the generated answer reproduces generation's log-probs (the per-layer inputs of the answer
    tokens are the ones generation computed)."""
    model, processor, adapter = gemma3n
    trace = mmviz.trace(model, processor, WIDE, "What is in the picture?", max_new_tokens=4)
    inputs = adapter.encode([WIDE], adapter.format_prompt("What is in the picture?", 1))
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    answer = out.sequences[0, inputs["input_ids"].shape[1] :]
    assert trace.token_ids[trace.answer_start :].tolist() == answer.tolist()
    expected = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.logits, answer, strict=True)]
    np.testing.assert_allclose(trace.answer_logprobs, expected, atol=1e-4)


def test_gradient_and_lens_methods_run_and_leave_the_model_as_found(gemma3n):
    model, processor, _ = gemma3n
    trace = mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red")
    for result in (
        mmviz.methods.relevancy(trace),
        mmviz.methods.grad_cam(trace),
        mmviz.methods.gradient_x_input(trace),
    ):
        assert np.isfinite(result.values).all() and np.abs(result.values).max() > 0
    lens = mmviz.methods.logit_lens(trace)
    # the last depth reads the model's own distribution: its answer probabilities are the answer's
    np.testing.assert_allclose(np.log(lens.answer_probs[-1]), trace.answer_logprobs, atol=1e-4)


def test_sae_latents_read_the_merged_state_and_a_clamp_is_refused(gemma3n):
    """An SAE reads the merged residual state (one per position); clamping would have to edit stacked streams, so it
    is refused with why, and the model is left as found."""
    model, processor, adapter = gemma3n
    trace = mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red")
    d = int(model.config.text_config.hidden_size)
    generator = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(
        W_enc=torch.randn(d, 8, generator=generator),
        b_enc=torch.zeros(8),
        W_dec=torch.randn(8, d, generator=generator),
        b_dec=torch.zeros(d),
        depth=2,
    )
    assert residual_stream(trace, 2).shape == (len(trace.tokens), d)
    hooks = [len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in adapter.decoder_layers()]
    with pytest.raises(UnsupportedModelError, match="stacked streams"):
        clamp(trace, sae, 0)
    assert [len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in adapter.decoder_layers()] == hooks


def test_the_layout_cannot_be_measured_and_verify_says_why(gemma3n):
    model, processor, _ = gemma3n
    with pytest.raises(UnsupportedModelError, match="not patch-local"):
        verify(model, processor, WIDE)


def test_a_processor_of_another_token_count_or_canvas_is_rejected(gemma3n):
    model, _, _ = gemma3n
    processor = gemma3n_processor()
    processor.image_seq_length = GEMMA3N_GRID**2 // 4
    with pytest.raises(ProcessorMismatchError, match="tokens but the model gives"):
        adapter_for(model, processor)
    processor = gemma3n_processor()
    processor.image_processor.size = {"height": 64, "width": 48}
    with pytest.raises(ProcessorMismatchError, match="square canvas"):
        mmviz.trace(model, processor, WIDE, "What is in the picture?", answer="red")
