"""Families mmviz has no adapter for, laid out by measurement (:class:`mmviz.adapters.GenericAdapter`).

Each builder assembles the family's REAL processor class offline (small image sizes, the tiny byte-level tokenizer
of :mod:`mmviz.zoo.tiny` extended with the family's special tokens, a chat template in the family's format) around
a tiny random-weight model. The cases are registered with ``measured=True``: their layout is what the model reads
(``layout.source == "measured"``), so the matrix marks their rows as measured.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    Cohere2VisionConfig,
    Cohere2VisionForConditionalGeneration,
    Cohere2VisionImageProcessor,
    Cohere2VisionProcessor,
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLImageProcessorPil,
    DeepseekVLProcessor,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessorPil,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    Glm46VConfig,
    Glm46VForConditionalGeneration,
    Glm46VImageProcessorPil,
    Glm46VProcessor,
    Glm46VVideoProcessor,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    LightOnOcrConfig,
    LightOnOcrForConditionalGeneration,
    LightOnOcrProcessor,
    Llama4Config,
    Llama4ForConditionalGeneration,
    Llama4ImageProcessor,
    Llama4Processor,
    LlamaConfig,
    Ovis2Config,
    Ovis2ForConditionalGeneration,
    Ovis2ImageProcessorPil,
    Ovis2Processor,
    PixtralImageProcessorPil,
    Qwen2Config,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VideoLlavaProcessor,
    VideoLlavaVideoProcessor,
)

from tests.families.build_2026 import cohere2_text
from tests.families.build_llava_next import LLAVA_NEXT_CHAT_TEMPLATE, PATCH, TILE
from tests.families.build_qwen_idefics import _llm_sizes, family_tokenizer, seeded_model
from tests.families.registry import family_case


def _clip_vision(size: int = TILE, patch: int = PATCH) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=size,
        patch_size=patch,
        projection_dim=32,
    )


# --- Video-LLaVA (its image path: one CLIP grid per image) ------------------------------------------------------
VIDEO_LLAVA_SIZE = 28


@family_case("video_llava", kind="grid", measured=True)
def build_video_llava() -> tuple[torch.nn.Module, Any]:
    """Tiny Video-LLaVA: CLIP tower (CLS dropped), Llama decoder, its own CLIP-style image processor."""
    tokenizer = family_tokenizer(["<image>", "<video>"])
    size = {"shortest_edge": VIDEO_LLAVA_SIZE}
    crop = {"height": VIDEO_LLAVA_SIZE, "width": VIDEO_LLAVA_SIZE}
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size=size, crop_size=crop),
        video_processor=VideoLlavaVideoProcessor(size=size, crop_size=crop),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    )
    config = VideoLlavaConfig(
        vision_config=_clip_vision(VIDEO_LLAVA_SIZE),
        text_config=LlamaConfig(**_llm_sizes(len(tokenizer), tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(VIDEO_LLAVA_SIZE // PATCH) ** 2,
    )
    return seeded_model(VideoLlavaForConditionalGeneration, config, tokenizer, seed=42), processor


# --- Command A Vision (Cohere2-Vision: tiles + a thumbnail, pixel-shuffled SigLIP) ------------------------------
COHERE_TILE = 32  # SigLIP on 32-px tiles of 4-px patches: 8×8 patches, pixel-shuffled to 4×4 = 16 tokens per tile
COHERE_PATCH = 4
COHERE_SPECIAL = {
    "image_token": "<|IMG_PATCH|>",
    "boi_token": "<|START_OF_IMG|>",
    "eoi_token": "<|END_OF_IMG|>",
    "img_line_break_token": "<|IMG_LINE_BREAK|>",
}
COHERE_TURNS = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>"]
# command-a-vision's turn format: the image placeholder before the text of the user turn.
COHERE_CHAT_TEMPLATE = (
    "{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if message['role'] == 'user' %}<|USER_TOKEN|>{% else %}<|CHATBOT_TOKEN|>{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|IMG_PATCH|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


@family_case("cohere2_vision", kind="tiled", measured=True)
def build_cohere2_vision() -> tuple[torch.nn.Module, Any]:
    """Tiny Command A Vision: 32-px tiles (up to 4) + a thumbnail, SigLIP, pixel shuffle 2, Cohere2 decoder."""
    tokenizer = family_tokenizer([*COHERE_TURNS, *COHERE_SPECIAL.values()], COHERE_SPECIAL)
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids(COHERE_SPECIAL["image_token"])
    tile = {"height": COHERE_TILE, "width": COHERE_TILE}
    image_processor = Cohere2VisionImageProcessor(
        size=tile, patch_size=COHERE_TILE // COHERE_PATCH // 2, max_patches=4, crop_to_patches=True
    )
    processor = Cohere2VisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=COHERE_CHAT_TEMPLATE
    )
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": COHERE_TILE,
        "patch_size": COHERE_PATCH,
        "vision_use_head": False,
    }
    text = cohere2_text(tokenizer)
    config = Cohere2VisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.image_token_id,
        downsample_factor=2,
        alignment_intermediate_size=64,
    )
    return seeded_model(Cohere2VisionForConditionalGeneration, config, tokenizer, seed=43), processor


# --- DeepSeek-VL (pad to square, SigLIP, one grid per image) ----------------------------------------------------
DEEPSEEK_SIZE = 32  # the padded square, 4-px patches: 8×8 = 64 tokens per image
DEEPSEEK_PATCH = 4
# deepseek-vl's "User: <image_placeholder>...\n\nAssistant:" format.
DEEPSEEK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}User: {% else %}Assistant: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image_placeholder>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@family_case("deepseek_vl", kind="grid", measured=True)
def build_deepseek_vl() -> tuple[torch.nn.Module, Any]:
    """Tiny DeepSeek-VL: the image padded to a 32-px square, SigLIP (4-px patches), MLP aligner, Llama decoder."""
    tokenizer = family_tokenizer(["<image_placeholder>"], {"image_token": "<image_placeholder>"})
    processor = DeepseekVLProcessor(
        image_processor=DeepseekVLImageProcessorPil(size={"height": DEEPSEEK_SIZE, "width": DEEPSEEK_SIZE}),
        tokenizer=tokenizer,
        chat_template=DEEPSEEK_CHAT_TEMPLATE,
        num_image_tokens=(DEEPSEEK_SIZE // DEEPSEEK_PATCH) ** 2,
    )
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": DEEPSEEK_SIZE,
        "patch_size": DEEPSEEK_PATCH,
        "vision_use_head": False,
    }
    config = DeepseekVLConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_llm_sizes(len(tokenizer), tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
    )
    return seeded_model(DeepseekVLForConditionalGeneration, config, tokenizer, seed=44), processor


# --- GLM-4.1V (Qwen2-VL-style dynamic resolution, 2×2 merge, 3-D rope) ------------------------------------------
GLM4V_PATCH = 14
GLM4V_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64}  # 4 … 64 merged tokens
GLM4V_SPECIAL = {
    "image_token": "<|image|>",
    "video_token": "<|video|>",
}
GLM4V_OTHER = ["<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|user|>",
               "<|assistant|>"]  # fmt: skip
# GLM-4.1V-Thinking's format: "<|user|>\n<|begin_of_image|><|image|><|end_of_image|>...<|assistant|>\n".
GLM4V_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _glm4v(classes: tuple[type, ...], seed: int) -> tuple[torch.nn.Module, Any]:
    """GLM-4.1V / GLM-4.6V (same tower and decoder): ``classes`` = (processor, image processor, video processor,
    config, model)."""
    processor_class, image_class, video_class, config_class, model_class = classes
    tokenizer = family_tokenizer([*GLM4V_SPECIAL.values(), *GLM4V_OTHER], GLM4V_SPECIAL)
    sizes = {"size": GLM4V_SIZE, "patch_size": GLM4V_PATCH, "merge_size": 2, "temporal_patch_size": 2}
    processor = processor_class(
        image_processor=image_class(**sizes),
        tokenizer=tokenizer,
        video_processor=video_class(**sizes),
        chat_template=GLM4V_CHAT_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in [*GLM4V_SPECIAL.values(), *GLM4V_OTHER]}
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "partial_rotary_factor": 1.0}
    text = _llm_sizes(len(tokenizer), tokenizer) | {"rope_parameters": mrope}
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": GLM4V_PATCH,
        "image_size": 56,
        "out_hidden_size": 64,
    }
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    return seeded_model(model_class, config, tokenizer, seed=seed), processor


@family_case("glm4v", kind="grid", measured=True)
def build_glm4v() -> tuple[torch.nn.Module, Any]:
    """Tiny GLM-4.1V: 14-px patches merged 2×2 (a conv), interpolated position table, GLM-4 decoder."""
    classes = (Glm4vProcessor, Glm4vImageProcessorPil, Glm4vVideoProcessor, Glm4vConfig, Glm4vForConditionalGeneration)
    return _glm4v(classes, seed=45)


@family_case("glm46v", kind="grid", measured=True)
def build_glm46v() -> tuple[torch.nn.Module, Any]:
    """Tiny GLM-4.6V: GLM-4.1V's tower and decoder under the GLM-4.6V classes (its processor adds timestamps to
    video frames only)."""
    classes = (
        Glm46VProcessor,
        Glm46VImageProcessorPil,
        Glm46VVideoProcessor,
        Glm46VConfig,
        Glm46VForConditionalGeneration,
    )
    return _glm4v(classes, seed=48)


# --- Janus (DeepSeek's unified model: its understanding path, a SigLIP-style tower on a padded square) -----------
JANUS_SIZE = 32  # the padded square, 4-px patches: 8×8 = 64 tokens per image
JANUS_PATCH = 4
JANUS_SPECIAL = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}
JANUS_CHAT_TEMPLATE = DEEPSEEK_CHAT_TEMPLATE  # Janus-Pro keeps DeepSeek-VL's "User: …\n\nAssistant:" turns


@family_case("janus", kind="grid", measured=True)
def build_janus() -> tuple[torch.nn.Module, Any]:
    """Tiny Janus: the image padded to a 32-px square, its vision tower (4-px patches) + aligner, Llama decoder;
    the image-generation VQ-VAE is built tiny and never runs."""
    tokenizer = family_tokenizer(list(JANUS_SPECIAL.values()), JANUS_SPECIAL)
    tokens = (JANUS_SIZE // JANUS_PATCH) ** 2
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": JANUS_SIZE, "width": JANUS_SIZE}),
        tokenizer=tokenizer,
        chat_template=JANUS_CHAT_TEMPLATE,
        num_image_tokens=tokens,
    )
    text = _llm_sizes(len(tokenizer), tokenizer)
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": JANUS_SIZE,
        "patch_size": JANUS_PATCH,
        "projection_dim": text["hidden_size"],
        "num_image_tokens": tokens,
    }
    vq = {
        "embed_dim": 8,
        "num_embeddings": 64,
        "latent_channels": 32,
        "base_channels": 32,
        "channel_multiplier": [1, 1],
        "num_res_blocks": 1,
        "num_patches": JANUS_SIZE // JANUS_PATCH,
        "projection_dim": text["hidden_size"],
        "image_token_embed_dim": text["hidden_size"],
    }
    config = JanusConfig(
        text_config=LlamaConfig(**text),
        vision_config=vision,
        vq_config=vq,
        image_token_id=tokenizer.convert_tokens_to_ids(JANUS_SPECIAL["image_token"]),
    )
    return seeded_model(JanusForConditionalGeneration, config, tokenizer, seed=47), processor


# --- LightOnOCR (Pixtral vision, 2×2 patch merge, Qwen3 decoder) ------------------------------------------------
LIGHTON_PATCH = 4  # 4-px patches merged 2×2: one token per 8×8 px of the resized image
LIGHTON_LONGEST = 64  # size["longest_edge"]: at most 8×8 tokens
LIGHTON_SPECIAL = {
    "image_token": "<|image_pad|>",
    "image_break_token": "<|vision_pad|>",
    "image_end_token": "<|vision_end|>",
}
# LightOnOCR's ChatML format: the image placeholder before the user's text.
LIGHTON_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image_pad|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@family_case("lighton_ocr", kind="grid", measured=True)
def build_lighton_ocr() -> tuple[torch.nn.Module, Any]:
    """Tiny LightOnOCR: Pixtral's variable patch grid (longest edge 64 px) with a break token per row, Qwen3."""
    tokenizer = family_tokenizer(["<|im_start|>", "<|im_end|>", *LIGHTON_SPECIAL.values()], LIGHTON_SPECIAL)
    for name, token in LIGHTON_SPECIAL.items():
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    processor = LightOnOcrProcessor(
        image_processor=PixtralImageProcessorPil(
            size={"longest_edge": LIGHTON_LONGEST}, patch_size={"height": LIGHTON_PATCH, "width": LIGHTON_PATCH}
        ),
        tokenizer=tokenizer,
        patch_size=LIGHTON_PATCH,
        spatial_merge_size=2,
        chat_template=LIGHTON_CHAT_TEMPLATE,
    )
    vision = {
        "model_type": "pixtral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "head_dim": 16,
        "image_size": LIGHTON_LONGEST,
        "patch_size": LIGHTON_PATCH,
    }
    text = {"model_type": "qwen3", **_llm_sizes(len(tokenizer), tokenizer), "head_dim": 16}
    config = LightOnOcrConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.image_token_id,
        spatial_merge_size=2,
    )
    return seeded_model(LightOnOcrForConditionalGeneration, config, tokenizer, seed=49), processor


# --- Llama 4 (tiles + a global image, pixel-shuffled vision tower; "<|image|>" expands to "<|patch|>" tokens) ---
LLAMA4_TILE = 28  # 28-px tiles of 7-px patches: 4×4 patches, pixel-shuffled to 2×2 = 4 tokens per tile
LLAMA4_PATCH = 7
LLAMA4_SPECIAL = ["<|image|>", "<|image_start|>", "<|image_end|>", "<|patch|>", "<|tile_x_separator|>",
                  "<|tile_y_separator|>", "<|header_start|>", "<|header_end|>", "<|eot|>"]  # fmt: skip
# Llama 4's header format: the image placeholder before the user's text.
LLAMA4_CHAT_TEMPLATE = (
    "{% for message in messages %}<|header_start|>{{ message['role'] }}<|header_end|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}"
)


@family_case("llama4", kind="tiled", measured=True)
def build_llama4() -> tuple[torch.nn.Module, Any]:
    """Tiny Llama 4: up to 4 tiles of 28 px + the global image, 7-px patches pixel-shuffled 2×2, a 2-layer MoE
    decoder with 2 experts."""
    tokenizer = family_tokenizer(LLAMA4_SPECIAL)
    processor = Llama4Processor(
        image_processor=Llama4ImageProcessor(size={"height": LLAMA4_TILE, "width": LLAMA4_TILE}, max_patches=4),
        tokenizer=tokenizer,
        patch_size=LLAMA4_PATCH,
        pixel_shuffle_ratio=0.5,
        chat_template=LLAMA4_CHAT_TEMPLATE,
    )
    vision = {
        "hidden_size": 32,
        "intermediate_size": 128,  # the pixel-shuffled width (4 × 32) the adapter MLP reads
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": LLAMA4_TILE,
        "patch_size": LLAMA4_PATCH,
        "vision_output_dim": 64,
        "projector_input_dim": 64,
        "projector_output_dim": 64,
    }
    text = _llm_sizes(len(tokenizer), tokenizer) | {
        "intermediate_size_mlp": 128,
        "head_dim": 16,
        "num_local_experts": 2,
        "attention_chunk_size": 256,
    }
    config = Llama4Config(
        vision_config=vision,
        text_config=text,
        boi_token_index=tokenizer.convert_tokens_to_ids("<|image_start|>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<|image_end|>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<|patch|>"),
    )
    return seeded_model(Llama4ForConditionalGeneration, config, tokenizer, seed=50), processor


# --- Ovis2 (global image + tiles; each patch's feature is a soft token over a visual vocabulary) -----------------
OVIS2_TILE = 32  # 32-px tiles of 4-px patches: 8×8 patches, strided 2×2 to 4×4 = 16 tokens per tile
OVIS2_PATCH = 4
OVIS2_INDICATORS = ["<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"]
# Ovis2's ChatML format: "<image>\n" before the user's text.
OVIS2_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@family_case("ovis2", kind="tiled", measured=True)
def build_ovis2() -> tuple[torch.nn.Module, Any]:
    """Tiny Ovis2: the global image, then up to 4 tiles of 32 px; a 1-layer tower whose 2×2-strided patch features
    become soft tokens over a 64-entry visual vocabulary; Qwen2 decoder. ``<image>`` expands to ``<IMG_ATOM>``s."""
    tokenizer = family_tokenizer(["<|im_start|>", "<|im_end|>", "<image>", "<IMG_ATOM>", *OVIS2_INDICATORS])
    tokens = (OVIS2_TILE // OVIS2_PATCH // 2) ** 2
    processor = Ovis2Processor(
        image_processor=Ovis2ImageProcessorPil(
            size={"height": OVIS2_TILE, "width": OVIS2_TILE}, crop_to_patches=True, max_patches=4
        ),
        tokenizer=tokenizer,
        chat_template=OVIS2_CHAT_TEMPLATE,
        image_seq_length=tokens,
    )
    text = _llm_sizes(len(tokenizer), tokenizer)
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": OVIS2_TILE,
        "patch_size": OVIS2_PATCH,
        "vocab_size": 64,
        "hidden_stride": 2,
    }
    config = Ovis2Config(
        vision_config=vision,
        text_config=Qwen2Config(**text),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_ATOM>"),
        visual_indicator_token_ids=tokenizer.convert_tokens_to_ids(OVIS2_INDICATORS),
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
    )
    return seeded_model(Ovis2ForConditionalGeneration, config, tokenizer, seed=51), processor
