"""LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video: a stretched base view + an un-padded anyres high-res grid with
row newlines (LLaVA-NeXT-Video: its images; its frames are pooled 2×2).

Both tiny models use 28-px tiles cut into 7-px patches (a 4×4 feature grid per tile) and pinpoints of up to 2×2 or
1×3 tiles, so the high-res grid reaches 8×8 cells and the feature-level un-padding drops whole rows / columns for
most aspect ratios. The OneVision model uses ``anyres_max_2`` (at most 2·4² = 32 high-res cells before bilinear
down-sampling), so its larger canvases are down-sampled as ``anyres_max_9`` does for real 27×27-patch checkpoints.
"""

from __future__ import annotations

import warnings

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)

from mmviz.zoo.tiny import tiny_tokenizer
from tests.families.build_qwen_idefics import _llm_sizes, family_tokenizer, seeded_model
from tests.families.registry import family_case

TILE = 28
PATCH = 7
PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]
ONEVISION_ASPECT_RATIO = "anyres_max_2"

# llava-v1.6-mistral's conversation format: "[INST] <image>\n... [/INST]".
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{% endif %} [/INST]"
    "{% else %} "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}{% endfor %}"
)

# llava-onevision-qwen2's ChatML format: "<|im_start|>user <image>\n...<|im_end|>\n<|im_start|>assistant\n".
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}<image>{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'video') %}<video>{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + item['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _text_kwargs(tokenizer) -> dict:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vision_kwargs() -> dict:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TILE,
        patch_size=PATCH,
    )


def _finish(model_class, config, tokenizer, seed: int):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


@family_case("llava_next", kind="tiled")
def build_llava_next():
    """Tiny LLaVA-NeXT: CLIP tower ("default" strategy drops CLS), Llama decoder, PIL image processor."""
    tokenizer = tiny_tokenizer()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped again by the "default" strategy
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        image_token="<image>",
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**_vision_kwargs(), projection_dim=32),
        text_config=LlamaConfig(**_text_kwargs(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(TILE // PATCH) ** 2,
    )
    return _finish(LlavaNextForConditionalGeneration, config, tokenizer, seed=5), processor


@family_case("llava_onevision", kind="tiled", resampled=True)
def build_llava_onevision():
    """Tiny LLaVA-OneVision: SigLIP tower ("full" strategy), Qwen2 decoder, torchvision image processor."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<video>"]})
    image_processor = LlavaOnevisionImageProcessor(size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS)
    video_processor = LlavaOnevisionVideoProcessor(size={"height": TILE, "width": TILE})
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=(TILE // PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio=ONEVISION_ASPECT_RATIO,
    )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_vision_kwargs()),
        text_config=Qwen2Config(**_text_kwargs(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=ONEVISION_ASPECT_RATIO,
    )
    model = _finish(LlavaOnevisionForConditionalGeneration, config, tokenizer, seed=6)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return model, processor


@family_case("llava_next_video", kind="tiled")
def build_llava_next_video():
    """Tiny LLaVA-NeXT-Video: CLIP tower, Llama decoder; images through LLaVA-NeXT's anyres image processor, frames
    through its video processor (shortest edge 28, centre crop 28) and the 2×2 average-pooling resampler."""
    tokenizer = family_tokenizer(["<image>", "<video>"])
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(
            size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}
        ),
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
        ),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    )
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(**_vision_kwargs(), projection_dim=32),
        text_config=LlamaConfig(**_llm_sizes(len(tokenizer), tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(TILE // PATCH) ** 2,
    )
    return seeded_model(LlavaNextVideoForConditionalGeneration, config, tokenizer, seed=41), processor
