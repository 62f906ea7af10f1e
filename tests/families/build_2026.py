"""The 2026 families: Qwen3-VL (+ MoE), InternVL, Mistral 3 (Pixtral vision) and Aya Vision.

Each builder assembles the family's REAL processor class offline (its image processor with small sizes, the tiny
byte-level tokenizer of :mod:`mmviz.zoo.tiny` extended with the family's special tokens, a chat template in the
family's format) around a tiny random-weight model: 2 decoder layers of width 64, a 1–2 layer vision tower.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    Cohere2Config,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralImageProcessorPil,
    PixtralProcessor,
    Qwen2Config,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from tests.families.build_qwen_idefics import (
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL,
    _llm_sizes,
    family_tokenizer,
    seeded_model,
)
from tests.families.registry import family_case

# --- Qwen3-VL ---------------------------------------------------------------------------------------------------
QWEN3_PATCH = 16  # Qwen3-VL's patch size: a merged token covers 32×32 px of the resized image
QWEN3_SIZE = {"shortest_edge": 64 * 64, "longest_edge": 32 * 32 * 64}  # 4 … 64 merged tokens


def qwen3_processor() -> Qwen3VLProcessor:
    """A real ``Qwen3VLProcessor`` (Qwen2-VL's image processor with 16-px patches, as the checkpoints ship it)."""
    tokenizer = family_tokenizer(["<|im_start|>", "<|im_end|>", *QWEN_SPECIAL.values()], QWEN_SPECIAL)
    sizes = {"size": QWEN3_SIZE, "patch_size": QWEN3_PATCH, "merge_size": 2, "temporal_patch_size": 2}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(**sizes),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**sizes),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _qwen3(moe: bool, seed: int) -> tuple[torch.nn.Module, Any]:
    processor = qwen3_processor()
    tokenizer = processor.tokenizer
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_SPECIAL.items()}
    # head_dim 16 → 8 rotary frequencies split over (t, row, col), interleaved as in the checkpoints
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    text = _llm_sizes(len(tokenizer), tokenizer) | {"rope_parameters": mrope, "head_dim": 16}
    if moe:
        text |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1}
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": QWEN3_PATCH,
        "out_hidden_size": 64,
        "num_position_embeddings": 64,  # an 8×8 table, interpolated to every grid
        "deepstack_visual_indexes": [0],  # features of vision layer 0 are added after decoder layer 0
    }
    config_class, model_class = (
        (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration)
        if moe
        else (Qwen3VLConfig, Qwen3VLForConditionalGeneration)
    )
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
    )
    return seeded_model(model_class, config, tokenizer, seed), processor


@family_case("qwen3_vl", kind="grid")
def build_qwen3_vl() -> tuple[torch.nn.Module, Any]:
    return _qwen3(moe=False, seed=21)


@family_case("qwen3_vl_moe", kind="grid")
def build_qwen3_vl_moe() -> tuple[torch.nn.Module, Any]:
    return _qwen3(moe=True, seed=22)


# --- InternVL ---------------------------------------------------------------------------------------------------
INTERNVL_TILE = 32  # a 32-px tile, 4-px patches: 8×8 patches, pixel-shuffled to 4×4 = 16 tokens per tile
INTERNVL_PATCH = 4
INTERNVL_MAX_TILES = 6
INTERNVL_SPECIAL = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
# InternVL3's ChatML format: each image is "<IMG_CONTEXT>\n" before the text.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def internvl_processor(**image_options: Any) -> InternVLProcessor:
    """A real ``InternVLProcessor`` (``GotOcr2ImageProcessorPil`` cutting 32-px tiles, up to 6 + a thumbnail)."""
    tokenizer = family_tokenizer(["<|im_start|>", "<|im_end|>", *INTERNVL_SPECIAL.values()], INTERNVL_SPECIAL)
    options = {"size": {"height": INTERNVL_TILE, "width": INTERNVL_TILE}, "max_patches": INTERNVL_MAX_TILES}
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessorPil(**(options | image_options)),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size={"height": INTERNVL_TILE, "width": INTERNVL_TILE}),
        image_seq_length=(INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )


@family_case("internvl", kind="tiled")
def build_internvl() -> tuple[torch.nn.Module, Any]:
    processor = internvl_processor()
    tokenizer = processor.tokenizer
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": INTERNVL_TILE,
        "patch_size": INTERNVL_PATCH,
    }
    config = InternVLConfig(
        vision_config=vision,
        text_config=Qwen2Config(**_llm_sizes(len(tokenizer), tokenizer)),
        image_token_id=processor.image_token_id,
        image_seq_length=processor.image_seq_length,
        downsample_ratio=0.5,
    )
    return seeded_model(InternVLForConditionalGeneration, config, tokenizer, 23), processor


# --- Mistral 3 (Pixtral vision) ---------------------------------------------------------------------------------
MISTRAL3_PATCH = 4  # 4-px patches merged 2×2: one token per 8×8 px of the resized image
MISTRAL3_LONGEST = 64  # size["longest_edge"]: at most 8×8 tokens
MISTRAL3_SPECIAL = ["[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
# Mistral-Small-3.1's format: "[INST]" + one "[IMG]" per image + the text + "[/INST]".
MISTRAL3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST]"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}[IMG]{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}[/INST]"
    "{% else %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
)


def mistral3_processor() -> PixtralProcessor:
    """A real ``PixtralProcessor`` (``PixtralImageProcessorPil``, longest edge 64 px, 4-px patches merged 2×2)."""
    tokenizer = family_tokenizer(MISTRAL3_SPECIAL, {"image_token": "[IMG]"})
    return PixtralProcessor(
        image_processor=PixtralImageProcessorPil(
            size={"longest_edge": MISTRAL3_LONGEST}, patch_size={"height": MISTRAL3_PATCH, "width": MISTRAL3_PATCH}
        ),
        tokenizer=tokenizer,
        patch_size=MISTRAL3_PATCH,
        spatial_merge_size=2,
        chat_template=MISTRAL3_CHAT_TEMPLATE,
    )


@family_case("mistral3", kind="grid")
def build_mistral3() -> tuple[torch.nn.Module, Any]:
    processor = mistral3_processor()
    tokenizer = processor.tokenizer
    vision = {
        "model_type": "pixtral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "head_dim": 16,
        "image_size": MISTRAL3_LONGEST,
        "patch_size": MISTRAL3_PATCH,
    }
    config = Mistral3Config(
        vision_config=vision,
        text_config=MistralConfig(**_llm_sizes(len(tokenizer), tokenizer)),
        image_token_index=processor.image_token_id,
        spatial_merge_size=2,
    )
    return seeded_model(Mistral3ForConditionalGeneration, config, tokenizer, 24), processor


# --- Aya Vision -------------------------------------------------------------------------------------------------
AYA_TILE = 32  # SigLIP on 32-px tiles of 4-px patches: 8×8 patches, pixel-shuffled to 4×4 = 16 tokens per tile
AYA_PATCH = 4
AYA_MAX_TILES = 4
AYA_SPECIAL = [
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|START_OF_IMG|>",
    "<|END_OF_IMG|>",
    "<|IMG_PATCH|>",
    "<|IMG_LINE_BREAK|>",
]
# aya-vision's turn format: the image placeholder "<image>" before the text of the user turn.
AYA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if message['role'] == 'user' %}<|USER_TOKEN|>{% else %}<|CHATBOT_TOKEN|>{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


def aya_processor() -> AyaVisionProcessor:
    """A real ``AyaVisionProcessor`` around ``GotOcr2ImageProcessorPil`` (32-px tiles, up to 4 + a thumbnail)."""
    tokenizer = family_tokenizer([*AYA_SPECIAL, "<image>"], {"image_token": "<image>"})
    size = {"height": AYA_TILE, "width": AYA_TILE}
    return AyaVisionProcessor(
        image_processor=GotOcr2ImageProcessorPil(size=size, max_patches=AYA_MAX_TILES),
        tokenizer=tokenizer,
        patch_size=AYA_PATCH,
        downsample_factor=2,
        img_size=AYA_TILE,
        chat_template=AYA_CHAT_TEMPLATE,
    )


def cohere2_text(tokenizer: Any) -> Cohere2Config:
    """A tiny Cohere2 decoder. Cohere2 interleaves sliding-window and global layers (every 4th is global): one of
    each here, so that text rows still reach the first tiles through the global layer."""
    return Cohere2Config(
        **_llm_sizes(len(tokenizer), tokenizer),
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        logit_scale=0.5,
    )


@family_case("aya_vision", kind="tiled")
def build_aya_vision() -> tuple[torch.nn.Module, Any]:
    processor = aya_processor()
    tokenizer = processor.tokenizer
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": AYA_TILE,
        "patch_size": AYA_PATCH,
        "vision_use_head": False,
    }
    text = cohere2_text(tokenizer)
    config = AyaVisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=processor.image_token_id,
        downsample_factor=2,
        vision_feature_select_strategy="full",
    )
    return seeded_model(AyaVisionForConditionalGeneration, config, tokenizer, 25), processor
