"""Qwen2-VL / Qwen2.5-VL (dynamic resolution, 2×2 merge) and Idefics3 / SmolVLM (tiles + global image).

Each builder assembles the family's REAL processor class offline: its image processor (small sizes so tests are
fast), its video processor where the processor requires one, the tiny byte-level tokenizer of
:mod:`mmviz.zoo.tiny` extended with the family's special tokens, and a chat template in the family's format.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from mmviz.zoo.tiny import tiny_tokenizer
from tests.families.registry import family_case

# --- Qwen2-VL / Qwen2.5-VL ------------------------------------------------------------------------------------
QWEN_SPECIAL = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# min 4 merged tokens, max 64: a 28·28·64 px budget keeps the vision tower tiny
QWEN_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64}

# --- Idefics3 / SmolVLM ---------------------------------------------------------------------------------------
IDEFICS_TILE = 64  # max_image_size["longest_edge"]: one tile is 64×64 px
IDEFICS_LONGEST = 3 * IDEFICS_TILE  # size["longest_edge"]: at most 3 tiles along the longest side
IDEFICS_PATCH = 8  # SigLIP patch → 8×8 patches per tile
IDEFICS_SCALE = 2  # pixel shuffle → 4×4 = 16 tokens per tile
IDEFICS_SEQ_LEN = (IDEFICS_TILE // IDEFICS_PATCH // IDEFICS_SCALE) ** 2
IDEFICS_SPECIAL = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]
IDEFICS3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}{{ ':' }}"
    "{% else %}{{ ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_CHAT_TEMPLATE = "<|im_start|>" + IDEFICS3_CHAT_TEMPLATE


def family_tokenizer(special: list[str], named: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """:func:`mmviz.zoo.tiny.tiny_tokenizer` plus the family's special tokens (``named`` also become attributes,
    e.g. ``tokenizer.image_token``, which some processors read)."""
    backend = tiny_tokenizer().backend_tokenizer
    backend.add_special_tokens(special)
    named = named or {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", extra_special_tokens=named
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in special if t not in named.values()]})
    return tokenizer


def _llm_sizes(vocab_size: int, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _finish(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def seeded_model(model_class: type, config: Any, tokenizer: PreTrainedTokenizerFast, seed: int) -> torch.nn.Module:
    """The tiny random-weight model of ``config``, seeded, in eval mode and ready for generation."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random init of a tiny config: transformers' size warnings are noise
        model = model_class(config)
    return _finish(model, tokenizer)


def _qwen(version: str, seed: int) -> tuple[torch.nn.Module, Any]:
    tokenizer = family_tokenizer(["<|im_start|>", "<|im_end|>", *QWEN_SPECIAL.values()], QWEN_SPECIAL)
    image_processor = Qwen2VLImageProcessorPil(size=QWEN_SIZE, patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(size=QWEN_SIZE, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor_class = Qwen2VLProcessor if version == "2" else Qwen2_5_VLProcessor
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_SPECIAL.items()}
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3]}  # (t, row, col) frequencies of head_dim 16
    text = _llm_sizes(len(tokenizer), tokenizer) | {"rope_parameters": mrope}
    if version == "2":
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14}
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    else:
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "window_size": 56,  # 2×2 merged tokens per window: the window permutation is not the identity
            "fullatt_block_indexes": [1],
        }
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
    )
    return seeded_model(model_class, config, tokenizer, seed), processor


@family_case("qwen2_vl", kind="grid")
def build_qwen2_vl() -> tuple[torch.nn.Module, Any]:
    return _qwen("2", seed=11)


@family_case("qwen2_5_vl", kind="grid")
def build_qwen2_5_vl() -> tuple[torch.nn.Module, Any]:
    return _qwen("2.5", seed=12)


def idefics_image_processor(family: str, **overrides: Any) -> Any:
    """The family's PIL image processor with tiny tiles (``overrides`` e.g. ``do_image_splitting=False``)."""
    processor_class = Idefics3ImageProcessorPil if family == "idefics3" else SmolVLMImageProcessorPil
    options = {"size": {"longest_edge": IDEFICS_LONGEST}, "max_image_size": {"longest_edge": IDEFICS_TILE}}
    return processor_class(**(options | overrides))


def idefics_processor(family: str, tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> Any:
    """A real ``Idefics3Processor`` / ``SmolVLMProcessor`` around ``tokenizer`` (``overrides``: image processor)."""
    image_processor = idefics_image_processor(family, **overrides)
    if family == "idefics3":
        return Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=IDEFICS_SEQ_LEN,
            chat_template=IDEFICS3_CHAT_TEMPLATE,
        )
    pytest.importorskip("num2words", reason="SmolVLMProcessor needs the num2words package")
    return SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(max_image_size={"longest_edge": IDEFICS_TILE}),
        image_seq_len=IDEFICS_SEQ_LEN,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )


def _idefics(family: str, seed: int) -> tuple[torch.nn.Module, Any]:
    special = IDEFICS_SPECIAL + (["<|im_start|>", "<video>"] if family == "smolvlm" else [])
    tokenizer = family_tokenizer(special, {"image_token": "<image>"})
    processor = idefics_processor(family, tokenizer)
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": IDEFICS_TILE,
        "patch_size": IDEFICS_PATCH,
    }
    text = LlamaConfig(**_llm_sizes(len(tokenizer), tokenizer))
    config_class, model_class = (
        (Idefics3Config, Idefics3ForConditionalGeneration)
        if family == "idefics3"
        else (SmolVLMConfig, SmolVLMForConditionalGeneration)
    )
    config = config_class(
        vision_config=vision,
        text_config=text,
        scale_factor=IDEFICS_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return seeded_model(model_class, config, tokenizer, seed), processor


@family_case("idefics3", kind="tiled")
def build_idefics3() -> tuple[torch.nn.Module, Any]:
    return _idefics("idefics3", seed=13)


@family_case("smolvlm", kind="tiled")
def build_smolvlm() -> tuple[torch.nn.Module, Any]:
    return _idefics("smolvlm", seed=14)
