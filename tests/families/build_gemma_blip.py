"""PaliGemma (SigLIP stretch, bidirectional prefix), Gemma 3 (pooled grid in marker blocks) and BLIP-2 (Q-Former).

Each builder assembles the family's REAL processor class offline: its PIL image processor (small sizes so tests are
fast), the tiny byte-level tokenizer of :mod:`mmviz.zoo.tiny` extended with the family's special tokens, and, for
Gemma 3, a chat template in Gemma's ``<start_of_turn>`` format. The language models are the families' own:
Gemma 2 for PaliGemma 2 (eager attention, logit soft caps), Gemma 3 text (sliding and full layers, final soft cap)
and OPT for BLIP-2, as in the released checkpoints.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessorPil,
    Gemma2Config,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    OPTConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from mmviz.zoo.tiny import tiny_tokenizer
from tests.families.registry import family_case

PALIGEMMA_SIZE = 48  # SigLIP canvas: 48 px / 8-px patches → 6×6 = 36 image tokens
PALIGEMMA_PATCH = 8
GEMMA3_SIZE = 64  # 64 px / 8-px patches = 8×8 patches, pooled 2×2 → 4×4 = 16 tokens
GEMMA3_PATCH = 8
GEMMA3_TOKENS = 16
BLIP2_SIZE = 32  # 32 px / 8-px patches → 4×4 ViT patch cells (+ CLS)
BLIP2_PATCH = 8
BLIP2_QUERIES = 8

GEMMA_SPECIAL = ["<bos>", "<eos>"]
GEMMA3_NAMED = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}

# Gemma 3's chat format: "<bos><start_of_turn>user\n<start_of_image>…<end_of_turn>\n<start_of_turn>model\n".
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma_tokenizer(special: list[str], named: dict[str, str] | None = None, **options: Any) -> PreTrainedTokenizerFast:
    """The tiny BPE tokenizer with Gemma's ``<bos>``/``<eos>`` and the family's special tokens (``named`` ones also
    become attributes such as ``tokenizer.boi_token``, which the processors read); adds ``<bos>`` like Gemma's."""
    backend = tiny_tokenizer().backend_tokenizer
    backend.add_special_tokens([*GEMMA_SPECIAL, *special])
    named = named or {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens=named,
        add_bos_token=True,
        **options,
    )
    extra = [token for token in special if token not in named.values()]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def _finish(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def _build(model_class: type, config: Any, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_class(config)


def _siglip(image_size: int, patch_size: int) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def _gemma_sizes(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def paligemma_processor(**image_options: Any) -> PaliGemmaProcessor:
    """A real ``PaliGemmaProcessor``: SigLIP PIL image processor (stretch to a square) + Gemma-style tokenizer."""
    tokenizer = gemma_tokenizer(["<image>"], {"image_token": "<image>"})
    seq_length = (PALIGEMMA_SIZE // PALIGEMMA_PATCH) ** 2
    options = {"size": {"height": PALIGEMMA_SIZE, "width": PALIGEMMA_SIZE}, "image_seq_length": seq_length}
    image_processor = SiglipImageProcessorPil(**(options | image_options))
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


@family_case("paligemma", kind="grid")
def build_paligemma() -> tuple[torch.nn.Module, Any]:
    processor = paligemma_processor()
    tokenizer = processor.tokenizer
    text = Gemma2Config(
        **_gemma_sizes(tokenizer),
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        query_pre_attn_scalar=16,
    )
    config = PaliGemmaConfig(
        vision_config=_siglip(PALIGEMMA_SIZE, PALIGEMMA_PATCH),
        text_config=text,
        image_token_index=processor.image_token_id,
        projection_dim=64,
    )
    return _finish(_build(PaliGemmaForConditionalGeneration, config, seed=21), tokenizer), processor


def gemma3_processor(**image_options: Any) -> Gemma3Processor:
    """A real ``Gemma3Processor``: Gemma 3 PIL image processor (stretch) + tokenizer + Gemma's chat template."""
    tokenizer = gemma_tokenizer(["<start_of_turn>", "<end_of_turn>", *GEMMA3_NAMED.values()], GEMMA3_NAMED)
    options = {"size": {"height": GEMMA3_SIZE, "width": GEMMA3_SIZE}}
    image_processor = Gemma3ImageProcessorPil(**(options | image_options))
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=GEMMA3_TOKENS,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )


@family_case("gemma3", kind="grid")
def build_gemma3() -> tuple[torch.nn.Module, Any]:
    processor = gemma3_processor()
    tokenizer = processor.tokenizer
    text = Gemma3TextConfig(
        **_gemma_sizes(tokenizer),
        sliding_window=8,  # shorter than an image block: the bidirectional overlay meets the window
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=16,
    )
    config = Gemma3Config(
        vision_config=_siglip(GEMMA3_SIZE, GEMMA3_PATCH),
        text_config=text,
        mm_tokens_per_image=GEMMA3_TOKENS,
        image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
    )
    model = _build(Gemma3ForConditionalGeneration, config, seed=22)
    with torch.no_grad():  # transformers initialises the projection to zeros: the image would not reach the LM
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.1)
    return _finish(model, tokenizer), processor


def blip2_processor(**image_options: Any) -> Blip2Processor:
    """A real ``Blip2Processor``: BLIP PIL image processor (stretch) + OPT-style tokenizer (``</s>`` is also BOS).

    The tokenizer gets no ``image_token`` attribute: ``Blip2Processor`` then registers ``<image>`` itself, as the
    released processors do (with an ``image_token`` attribute the 5.24 processor fails on ``.content`` of a str).
    """
    backend = tiny_tokenizer().backend_tokenizer
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="</s>", eos_token="</s>", pad_token="<pad>", add_bos_token=True
    )
    options = {"size": {"height": BLIP2_SIZE, "width": BLIP2_SIZE}}
    image_processor = BlipImageProcessorPil(**(options | image_options))
    return Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=BLIP2_QUERIES)


@family_case("blip-2", kind="query", multi_image=False)
def build_blip2() -> tuple[torch.nn.Module, Any]:
    processor = blip2_processor()
    tokenizer = processor.tokenizer
    vision = Blip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=BLIP2_SIZE,
        patch_size=BLIP2_PATCH,
        initializer_range=0.02,  # the class default 1e-10 makes every patch feature ≈ 0: uniform cross-attention
    )
    qformer = Blip2QFormerConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        cross_attention_frequency=1,  # both layers cross-attend: the soft maps average two layers
        vocab_size=len(tokenizer),
    )
    text = OPTConfig(
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=BLIP2_QUERIES,
        image_token_index=tokenizer.convert_tokens_to_ids(str(processor.image_token)),
    )
    model = _build(Blip2ForConditionalGeneration, config, seed=23)
    with torch.no_grad():  # the std-0.02 init gives equal queries and near-uniform cross-attention: add structure
        torch.nn.init.normal_(model.query_tokens, std=1.0)
        for layer in model.qformer.encoder.layer:
            if layer.has_cross_attention:
                for projection in (layer.crossattention.attention.query, layer.crossattention.attention.key):
                    torch.nn.init.normal_(projection.weight, std=0.5)
    return _finish(model, tokenizer), processor
