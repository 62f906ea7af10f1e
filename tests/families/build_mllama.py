"""Llama 3.2 Vision (``mllama``): the text reads the image through cross-attention layers, not placeholder tokens.

The builder assembles the REAL ``MllamaProcessor`` offline (its PIL image processor with 32-px tiles and up to 4
aspect-ratio tiles, the tiny byte-level tokenizer of :mod:`mmviz.zoo.tiny` extended with Llama 3's special tokens, a
chat template in Llama 3's ``<|start_header_id|>`` format) around a tiny random-weight
``MllamaForConditionalGeneration``: 3 decoder layers of width 64 of which layer 1 is a cross-attention layer, a
1 + 1 layer tiled ViT with 8-px patches (4 × 4 patches + CLS per tile). The cross-attention gates are set non-zero
(the released checkpoints learned them; zero gates would make the image invisible to the text).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
)

from tests.families.build_qwen_idefics import family_tokenizer, seeded_model
from tests.families.registry import family_case

MLLAMA_TILE = 32  # a 32-px tile, 8-px patches: 4 × 4 patches + CLS = 17 vision tokens per tile
MLLAMA_PATCH = 8
MLLAMA_MAX_TILES = 4
MLLAMA_CROSS_LAYERS = [1]
MLLAMA_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|image|>",
    "<|python_tag|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]

# Llama 3.2 Vision's chat format: "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>…<|eot_id|>".
MLLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def mllama_processor() -> MllamaProcessor:
    """A real ``MllamaProcessor``: ``MllamaImageProcessorPil`` (32-px tiles, ≤ 4 tiles) + the tiny tokenizer."""
    tokenizer = family_tokenizer(MLLAMA_SPECIAL)
    tokenizer.bos_token = "<|begin_of_text|>"
    tokenizer.eos_token = "<|eot_id|>"
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    image_processor = MllamaImageProcessorPil(
        size={"height": MLLAMA_TILE, "width": MLLAMA_TILE}, max_image_tiles=MLLAMA_MAX_TILES
    )
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_CHAT_TEMPLATE)


def mllama_model(processor: MllamaProcessor, seed: int = 31) -> torch.nn.Module:
    """The tiny random ``MllamaForConditionalGeneration`` for :func:`mllama_processor` (cross gates set non-zero)."""
    tokenizer = processor.tokenizer
    text = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "cross_attention_layers": MLLAMA_CROSS_LAYERS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_global_layers": 1,
        "attention_heads": 2,
        "image_size": MLLAMA_TILE,
        "patch_size": MLLAMA_PATCH,
        "max_num_tiles": MLLAMA_MAX_TILES,
        "vision_output_dim": 64,  # hidden_size × (1 + len(intermediate_layers_indices))
        "intermediate_layers_indices": [0],
    }
    config = MllamaConfig(
        text_config=text, vision_config=vision, image_token_index=tokenizer.convert_tokens_to_ids("<|image|>")
    )
    model = seeded_model(MllamaForConditionalGeneration, config, tokenizer, seed)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for gate in ("cross_attn_attn_gate", "cross_attn_mlp_gate"):
                if hasattr(layer, gate):
                    getattr(layer, gate).fill_(0.8)
    return model


@family_case("mllama", kind="cross")
def build_mllama() -> tuple[torch.nn.Module, Any]:
    processor = mllama_processor()
    return mllama_model(processor), processor
