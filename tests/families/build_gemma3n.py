"""Gemma 3n: a MobileNetV5 vision tower (timm, through transformers' ``TimmWrapperModel``), soft tokens in marker
blocks, the Gemma 3n text model (AltUp, per-layer inputs, KV sharing) and an audio tower that stays unused.

The REAL ``Gemma3nProcessor`` is assembled offline: SigLIP's PIL image processor (a stretch to a square canvas,
no normalisation, as the checkpoints ship it, at 64 px instead of 768), Gemma 3n's audio feature extractor and the
tiny byte-level tokenizer with Gemma 3n's special tokens placed as the model expects them: text ids first, then
the vision tokens (``vision_config.vocab_offset``: ``<end_of_image>``, ``<image_soft_token>``, …), then the audio
tokens. The MobileNetV5 encoder is timm's own at a quarter of its channels, its fused output pooled to 4×4 = 16
soft tokens (the checkpoints: 16×16 = 256). Needs ``timm`` (the ``gemma3n`` extra); skipped without it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from transformers import (
    Gemma3nAudioConfig,
    Gemma3nAudioFeatureExtractor,
    Gemma3nConfig,
    Gemma3nForConditionalGeneration,
    Gemma3nProcessor,
    Gemma3nTextConfig,
    Gemma3nVisionConfig,
    SiglipImageProcessorPil,
)

from tests.families.build_gemma_blip import GEMMA3_CHAT_TEMPLATE, _build, _finish, gemma_tokenizer
from tests.families.registry import family_case

GEMMA3N_SIZE = 64  # the stretched square canvas (checkpoints: 768)
GEMMA3N_GRID = 4  # soft tokens per side (checkpoints: 16)
TEXT_SPECIAL = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<start_of_audio>"]
VISION_SPECIAL = ["<end_of_image>", "<image_soft_token>", "<vision_2>", "<vision_3>"]  # from vision vocab_offset
AUDIO_SPECIAL = ["<end_of_audio>", "<audio_soft_token>", "<audio_2>", "<audio_3>"]  # from audio vocab_offset
NAMED = {
    "image_token": "<image_soft_token>",
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "audio_token": "<audio_soft_token>",
    "boa_token": "<start_of_audio>",
    "eoa_token": "<end_of_audio>",
}
HAS_TIMM = importlib.util.find_spec("timm") is not None
# Gemma 3n's template writes the soft token where an image goes; the processor expands it to
# "\n\n<start_of_image>" + soft tokens + "<end_of_image>\n\n".
CHAT_TEMPLATE = GEMMA3_CHAT_TEMPLATE.replace("<start_of_image>", "<image_soft_token>")


def gemma3n_processor() -> Gemma3nProcessor:
    """A real ``Gemma3nProcessor`` with Gemma 3n's chat template (``<image_soft_token>`` where the image goes)."""
    tokenizer = gemma_tokenizer([*TEXT_SPECIAL, *VISION_SPECIAL, *AUDIO_SPECIAL], NAMED)
    size = {"height": GEMMA3N_SIZE, "width": GEMMA3N_SIZE}
    image_processor = SiglipImageProcessorPil(size=size, do_normalize=False, resample=2)  # bilinear, [0, 1] pixels
    return Gemma3nProcessor(
        feature_extractor=Gemma3nAudioFeatureExtractor(),
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=GEMMA3N_GRID**2,
        audio_seq_length=4,
        chat_template=CHAT_TEMPLATE,
    )


@family_case(
    "gemma3n",
    kind="grid",
    not_patch_local="a convolutional vision tower (MobileNetV5): every token's receptive field spans the image",
)
def build_gemma3n() -> tuple[torch.nn.Module, Any]:
    if not HAS_TIMM:
        pytest.skip("Gemma 3n's vision tower needs timm: pip install 'mmviz[gemma3n]'")
    processor = gemma3n_processor()
    tokenizer = processor.tokenizer
    vision_offset = tokenizer.convert_tokens_to_ids(VISION_SPECIAL[0])
    audio_offset = tokenizer.convert_tokens_to_ids(AUDIO_SPECIAL[0])
    assert audio_offset == vision_offset + len(VISION_SPECIAL) and len(tokenizer) == audio_offset + len(AUDIO_SPECIAL)
    layers = 4
    text = Gemma3nTextConfig(
        vocab_size=len(tokenizer),
        vocab_size_per_layer_input=vision_offset,  # per-layer embeddings for text ids only, as in the checkpoints
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_size_per_layer_input=8,
        num_kv_shared_layers=2,  # the last two layers reuse the keys / values of earlier ones
        layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        sliding_window=8,
        altup_num_inputs=2,
        laurel_rank=4,
        activation_sparsity_pattern=[0.0] * layers,
        final_logit_softcapping=30.0,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = Gemma3nVisionConfig(
        model_args={"channel_multiplier": 0.25, "msfa_output_resolution": GEMMA3N_GRID},
        vocab_size=len(VISION_SPECIAL),
        vocab_offset=vision_offset,
    )
    audio = Gemma3nAudioConfig(
        vocab_size=len(AUDIO_SPECIAL),
        vocab_offset=audio_offset,
        hidden_size=32,
        conf_num_attention_heads=2,
        conf_num_hidden_layers=1,
        sscp_conv_channel_size=[8, 4],
    )
    config = Gemma3nConfig(
        text_config=text,
        vision_config=vision,
        audio_config=audio,
        vision_soft_tokens_per_image=GEMMA3N_GRID**2,
        audio_soft_tokens_per_image=4,
        image_token_id=tokenizer.image_token_id,
        boi_token_id=tokenizer.convert_tokens_to_ids(NAMED["boi_token"]),
        eoi_token_id=vision_offset,
        audio_token_id=tokenizer.convert_tokens_to_ids(NAMED["audio_token"]),
        boa_token_id=tokenizer.convert_tokens_to_ids(NAMED["boa_token"]),
        eoa_token_id=audio_offset,
    )
    return _finish(_build(Gemma3nForConditionalGeneration, config, seed=26), tokenizer), processor
