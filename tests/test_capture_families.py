"""Capture engine across model families: recorded rows equal eager attention, logits equal the user's default path.

Every model is a tiny random-weight instance built from a config (no download), in float32:

- Qwen2-VL: M-RoPE positions for the image tokens, built by hand (no processor: it needs torchvision);
- PaliGemma: a bidirectional image + prompt prefix (``token_type_ids``), causal suffix;
- plain decoders with GQA and a sliding window (Mistral, Qwen2, Gemma 3 text), switched with the top-level key
  ``""`` because a ``*ForCausalLM`` has no ``text_config`` sub-config;
- Gemma 2 (softcapped attention logits, which stock sdpa refuses; eager by default), with and without the cap:
  mmviz keeps an eager sub-model on its own eager path;
- LLaVA during ``generate`` with a KV cache: the single decode row of every step.

Rows are compared with ``output_attentions=True`` of a deep copy switched to ``eager`` (max abs ≤ 1e-5), for all
query rows and for a subset; logits with the capture on are compared with ``torch.equal`` to logits with it off.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    MistralConfig,
    MistralForCausalLM,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from mmviz.capture import AttentionRecorder, recording
from mmviz.zoo import tiny_llava

TOLERANCE = 1e-5
VOCAB = 128
TEXT = {  # a small decoder: 2 layers, hidden 64, 4 query heads sharing 2 KV heads (GQA)
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 256,
}
WINDOW, SEQUENCE = 8, 24


# --------------------------------------------------------------------------------------------- shared helpers


def capture(model, key, inputs, query_positions=None):
    """One forward with mmviz's attention function on the sub-model ``key``: (recorder, logits)."""
    recorder = AttentionRecorder(query_positions)
    with torch.no_grad(), recording(model, {key: recorder}):
        logits = model(**inputs).logits
    return recorder, logits


def eager_attentions(model, key, inputs):
    """Attention probabilities of a deep copy whose sub-model ``key`` runs eager: one (B, H, N, N) per layer."""
    reference = copy.deepcopy(model)
    reference.set_attn_implementation({key: "eager"})
    with torch.no_grad():
        attentions = reference(**inputs, output_attentions=True).attentions
    assert attentions, "eager returned no attention weights"
    return attentions


def subset_of(n_tokens):
    return [0, n_tokens // 2, n_tokens - 1]


def assert_rows_equal_eager_and_logits_unchanged(model, key, inputs, num_layers):
    """All rows, then a subset of rows: every layer equals eager, and the capture leaves the logits bitwise equal.

    Returns the recorder of all rows, for model-specific checks of the pattern.
    """
    n_tokens = inputs["input_ids"].shape[1]
    with torch.no_grad():
        plain = model(**inputs).logits
    expected = eager_attentions(model, key, inputs)
    recorders = {}
    for positions in (None, subset_of(n_tokens)):
        recorder, logits = capture(model, key, inputs, positions)
        assert torch.equal(logits, plain), f"logits changed by the capture (max {(logits - plain).abs().max():.3g})"
        assert sorted(recorder.rows) == list(range(num_layers))
        rows_index = list(range(n_tokens)) if positions is None else positions
        for layer, rows in recorder.rows.items():
            assert rows.shape == (1, expected[layer].shape[1], len(rows_index), n_tokens)
            error = (rows - expected[layer][:, :, rows_index]).abs().max().item()
            assert error <= TOLERANCE, f"positions={positions} layer {layer}: max abs {error:.3g}"
        recorders[positions is None] = recorder
    return recorders[True]


def masks_reaching_attention(attention_modules):
    """Forward pre-hooks that log the ``attention_mask`` each module receives; returns (log, handles)."""
    log = []

    def hook(module, args, kwargs):
        log.append(kwargs.get("attention_mask"))

    handles = [module.register_forward_pre_hook(hook, with_kwargs=True) for module in attention_modules]
    return log, handles


# --------------------------------------------------------------------------------------------- Qwen2-VL (M-RoPE)

QWEN_IMAGE, QWEN_VIDEO, QWEN_VISION_START, QWEN_VISION_END = 120, 121, 122, 123
QWEN_GRID = (1, 4, 6)  # (t, h, w) patches; spatial_merge_size 2 → 4·6/4 = 6 image tokens in a 2×3 grid


@pytest.fixture(scope="module")
def qwen2_vl():
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,  # the merger projects to the text hidden size
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "in_channels": 3,
            "spatial_merge_size": 2,
        },
        text_config={
            **TEXT,
            # head_dim 16 → 8 rotary frequencies, split over (temporal, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        image_token_id=QWEN_IMAGE,
        video_token_id=QWEN_VIDEO,
        vision_start_token_id=QWEN_VISION_START,
        vision_end_token_id=QWEN_VISION_END,
    )
    return Qwen2VLForConditionalGeneration(config).eval()


def qwen2_vl_inputs(config):
    grid_t, grid_h, grid_w = QWEN_GRID
    vision = config.vision_config
    n_image = grid_t * grid_h * grid_w // vision.spatial_merge_size**2
    ids = [1, 5, 6, QWEN_VISION_START] + [QWEN_IMAGE] * n_image + [QWEN_VISION_END, 7, 8, 9, 10]
    input_ids = torch.tensor([ids])
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": input_ids,
        "pixel_values": torch.randn(grid_t * grid_h * grid_w, patch_dim, generator=generator),
        "image_grid_thw": torch.tensor([QWEN_GRID]),
        "mm_token_type_ids": (input_ids == QWEN_IMAGE).int(),  # what the processor returns: 1 = image token
    }


def test_qwen2_vl_language_model_is_the_text_config_sub_model(qwen2_vl):
    assert "text_config" in qwen2_vl.config.sub_configs
    assert qwen2_vl.config.text_config._attn_implementation == "sdpa"


def test_qwen2_vl_image_tokens_get_2d_mrope_positions(qwen2_vl):
    inputs = qwen2_vl_inputs(qwen2_vl.config)
    positions, _ = qwen2_vl.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    image = inputs["input_ids"][0] == QWEN_IMAGE
    _, height, width = positions[:, 0, image]
    assert not torch.equal(height, width)  # rows and columns differ: M-RoPE is really exercised


def test_qwen2_vl_rows_equal_eager_and_logits_are_unchanged(qwen2_vl):
    inputs = qwen2_vl_inputs(qwen2_vl.config)
    rows = assert_rows_equal_eager_and_logits_unchanged(qwen2_vl, "text_config", inputs, num_layers=2).rows
    for layer_rows in rows.values():  # causal: nothing above the diagonal
        assert torch.triu(layer_rows[0], diagonal=1).max() == 0


# --------------------------------------------------------------------------------------------- PaliGemma (prefix)

PALI_IMAGE = 120
PALI_SUFFIX = 3


@pytest.fixture(scope="module")
def paligemma():
    torch.manual_seed(0)
    config = PaliGemmaConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 28,
            "patch_size": 14,  # 2×2 = 4 image tokens
            "vision_use_head": False,
        },
        text_config={**TEXT, "model_type": "gemma", "num_key_value_heads": 1, "head_dim": 16},
        image_token_index=PALI_IMAGE,
        vocab_size=VOCAB,
        projection_dim=64,
        hidden_size=64,
    )
    return PaliGemmaForConditionalGeneration(config).eval()


def paligemma_inputs(config, with_token_types=True):
    """[image × 4] <bos> prompt "\\n" | suffix: the prefix is image + prompt (token type 0), the suffix type 1."""
    n_image = config.text_config.num_image_tokens
    ids = torch.tensor([[PALI_IMAGE] * n_image + [2, 5, 6, 7, 1] + [8, 9, 10][:PALI_SUFFIX]])
    n_prefix = ids.shape[1] - PALI_SUFFIX
    inputs = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))}
    if with_token_types:
        inputs["token_type_ids"] = torch.tensor([[0] * n_prefix + [1] * PALI_SUFFIX])
    return inputs, n_prefix


def test_paligemma_mask_reaching_the_function_is_bidirectional_on_the_prefix(paligemma):
    inputs, n_prefix = paligemma_inputs(paligemma.config)
    n_tokens = inputs["input_ids"].shape[1]
    log, handles = masks_reaching_attention([layer.self_attn for layer in paligemma.model.language_model.layers])
    try:
        capture(paligemma, "text_config", inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert len(log) == 2
    for mask in log:
        assert mask is not None and mask.dtype == torch.bool and mask.shape == (1, 1, n_tokens, n_tokens)
        allowed = mask[0, 0]
        assert allowed[:n_prefix, :n_prefix].all()  # every prefix token sees the whole prefix, later ones included
        assert not allowed[:n_prefix, n_prefix:].any()  # ... but not the suffix
        suffix = torch.ones(PALI_SUFFIX, PALI_SUFFIX, dtype=torch.bool).tril()
        assert torch.equal(allowed[n_prefix:, n_prefix:], suffix)  # the suffix is causal
        assert allowed[n_prefix:, :n_prefix].all()


def test_paligemma_rows_equal_eager_and_prefix_rows_see_later_prefix_tokens(paligemma):
    inputs, n_prefix = paligemma_inputs(paligemma.config)
    rows = assert_rows_equal_eager_and_logits_unchanged(paligemma, "text_config", inputs, num_layers=2).rows
    for layer_rows in rows.values():
        prefix_rows = layer_rows[0, :, :n_prefix]
        assert prefix_rows[:, 0, 1:n_prefix].min() > 0  # the first token attends to every later prefix token
        assert prefix_rows[:, :, :n_prefix].min() > 0
        assert prefix_rows[:, :, n_prefix:].max() == 0  # never to the suffix
        suffix_rows = layer_rows[0, :, n_prefix:, n_prefix:]
        assert torch.triu(suffix_rows, diagonal=1).max() == 0


def test_paligemma_without_token_types_rows_follow_the_sdpa_output_not_eager(paligemma):
    """Without ``token_type_ids`` the mask is skipped (None) and PaliGemma's Gemma attention has ``is_causal=False``.

    So sdpa attends bidirectionally over everything while eager applies its causal mask (a transformers
    inconsistency). mmviz's rows must describe the output it computes: equal to eager given an explicit all-zero
    (fully bidirectional) float mask.
    """
    inputs, _ = paligemma_inputs(paligemma.config, with_token_types=False)
    n_tokens = inputs["input_ids"].shape[1]
    with torch.no_grad():
        plain = paligemma(**inputs).logits
    recorder, logits = capture(paligemma, "text_config", inputs)
    assert torch.equal(logits, plain)
    bidirectional = {**inputs, "attention_mask": torch.zeros(1, 1, n_tokens, n_tokens)}
    expected = eager_attentions(paligemma, "text_config", bidirectional)
    for layer, rows in recorder.rows.items():
        assert (rows - expected[layer]).abs().max() <= TOLERANCE
        assert rows[0, :, 0, -1].min() > 0  # the first token sees the last one


# --------------------------------------------------------------------------------------------- GQA + sliding window


def mistral():
    return MistralForCausalLM(MistralConfig(**TEXT, sliding_window=WINDOW))


def qwen2():
    config = Qwen2Config(**TEXT, sliding_window=WINDOW, use_sliding_window=True, max_window_layers=0)
    return Qwen2ForCausalLM(config)


def gemma3_text():  # alternating: layer 0 sliding, layer 1 full
    config = Gemma3TextConfig(**TEXT, head_dim=16, sliding_window=WINDOW, sliding_window_pattern=2)
    return Gemma3ForCausalLM(config)


SLIDING_DECODERS = [
    pytest.param(mistral, (0, 1), id="mistral"),
    pytest.param(qwen2, (0, 1), id="qwen2"),
    pytest.param(gemma3_text, (0,), id="gemma3-text"),
]


def decoder_inputs():
    return {"input_ids": torch.randint(0, VOCAB, (1, SEQUENCE), generator=torch.Generator().manual_seed(1))}


def build(factory):
    torch.manual_seed(0)
    return factory().eval()


def test_a_causal_lm_has_no_text_config_so_that_key_switches_nothing():
    """Why plain decoders are recorded under the top-level key "": the sub-config key is silently ignored."""
    model = build(mistral)
    assert model.config.sub_configs == {}
    model.set_attn_implementation({"text_config": "eager"})
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation({"": "eager"})
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize(("factory", "windowed_layers"), SLIDING_DECODERS)
def test_sliding_window_gqa_rows_equal_eager_and_respect_the_window(factory, windowed_layers):
    model = build(factory)
    attention = model.model.layers[0].self_attn
    assert attention.num_key_value_groups > 1  # GQA
    rows = assert_rows_equal_eager_and_logits_unchanged(model, "", decoder_inputs(), num_layers=2).rows
    assert model.config._attn_implementation == "sdpa"  # restored after recording
    query = torch.arange(SEQUENCE)[:, None]
    key = torch.arange(SEQUENCE)[None, :]
    causal = key <= query
    in_window = causal & (key > query - WINDOW)
    for layer, layer_rows in rows.items():
        probabilities = layer_rows[0]
        allowed = in_window if layer in windowed_layers else causal
        assert probabilities[:, ~allowed].max() == 0, f"layer {layer}: attention outside its pattern"
        assert probabilities[:, allowed].min() > 0, f"layer {layer}: a key inside the pattern got nothing"
        if layer not in windowed_layers:  # a full-attention layer reaches beyond the window
            assert probabilities[:, -1, : SEQUENCE - WINDOW].max() > 0


# --------------------------------------------------------------------------------------------- Gemma 2 (softcap)


@pytest.mark.parametrize("softcap", [50.0, None], ids=["softcap-50", "no-softcap"])  # Gemma 2 checkpoints cap at 50
def test_gemma2_rows_equal_eager_and_logits_equal_its_default_eager_path(softcap):
    torch.manual_seed(0)
    config = Gemma2Config(**TEXT, head_dim=16, sliding_window=WINDOW, attn_logit_softcapping=softcap)
    model = Gemma2ForCausalLM(config).eval()
    assert model.config._attn_implementation == "eager"
    assert_rows_equal_eager_and_logits_unchanged(model, "", decoder_inputs(), num_layers=2)


# --------------------------------------------------------------------------------------------- decode steps (LLaVA)

NEW_TOKENS = 3


@pytest.fixture(scope="module")
def llava_two_layers():
    return tiny_llava(image_size=56, num_layers=2)


def test_decode_steps_record_the_single_new_row_equal_to_eager(llava_two_layers, photo):
    model, processor = llava_two_layers
    inputs = processor(images=[photo], text="USER: <image>\nWhat is it? ASSISTANT:", return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]
    layers = model.model.language_model.layers
    recorder = AttentionRecorder(query_positions=None)
    steps: list[list[torch.Tensor]] = [[] for _ in layers]  # recorder.rows[layer] is overwritten on every call

    def keep(layer):
        return lambda module, args, output: steps[layer].append(recorder.rows[layer].clone())

    handles = [layer.self_attn.register_forward_hook(keep(index)) for index, layer in enumerate(layers)]
    generation = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    try:
        with torch.no_grad(), recording(model, {"text_config": recorder}):
            sequence = model.generate(**inputs, **generation)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, **generation), sequence)  # capture does not change generation

    # The last token is generated but never fed back, so the last call's query is position n_prompt + NEW_TOKENS - 2.
    full = {"input_ids": sequence[:, :-1], "pixel_values": inputs["pixel_values"]}
    expected = eager_attentions(model, "text_config", full)
    n_tokens = full["input_ids"].shape[1]
    for layer, calls in enumerate(steps):
        assert len(calls) == NEW_TOKENS  # prefill + one call per fed-back token
        assert calls[0].shape[2:] == (n_prompt, n_prompt)
        assert (calls[0] - expected[layer][:, :, :n_prompt, :n_prompt]).abs().max() <= TOLERANCE
        for step, rows in enumerate(calls[1:], start=1):
            position = n_prompt + step - 1
            assert rows.shape[2:] == (1, position + 1)  # one query row, the cache plus itself as keys
            assert (rows[:, :, 0] - expected[layer][:, :, position, : position + 1]).abs().max() <= TOLERANCE
        last = recorder.rows[layer]  # after generate the recorder holds the last step
        assert last.shape[2:] == (1, n_tokens)
        assert (last[:, :, 0] - expected[layer][:, :, -1]).abs().max() <= TOLERANCE


# --------------------------------------------------------------------------------- Llama 3.2 Vision (mllama)


@pytest.mark.parametrize("subset", [False, True], ids=["all-rows", "subset"])
def test_mllama_cross_attention_rows_equal_eager_and_logits_are_unchanged(subset):
    """The cross-attention layer's rows (text query → vision key: tiles × (patches + CLS), padding tiles included)
    and the self-attention layers' rows, recorded in one forward, equal an eager copy's; logits unchanged."""
    from PIL import Image

    from tests.families.build_mllama import MLLAMA_CROSS_LAYERS, build_mllama

    model, processor = build_mllama()
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = dict(processor(images=[Image.new("RGB", (70, 30), "teal")], text=text, return_tensors="pt"))
    n = inputs["input_ids"].shape[1]
    queries = subset_of(n) if subset else None
    cross = AttentionRecorder(queries, keys_are_positions=False)
    positional = AttentionRecorder(queries)
    with torch.no_grad():
        plain = model(**inputs).logits
        with recording(model, {"text_config": positional}, cross_layers=MLLAMA_CROSS_LAYERS, cross_recorder=cross):
            logits = model(**inputs).logits
    assert torch.equal(plain, logits)
    eager = eager_attentions(model, "text_config", inputs)
    rows = slice(None) if queries is None else queries
    assert sorted(cross.rows) == MLLAMA_CROSS_LAYERS
    assert sorted(positional.rows) == [layer for layer in range(len(eager)) if layer not in MLLAMA_CROSS_LAYERS]
    for layer, recorded in {**positional.rows, **cross.rows}.items():
        expected = eager[layer][:, :, rows]
        assert recorded.shape == expected.shape, layer
        assert (recorded - expected).abs().max() <= TOLERANCE, f"layer {layer}"
