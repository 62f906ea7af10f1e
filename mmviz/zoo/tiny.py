"""A tiny random-weight LLaVA-1.5 built entirely offline: real transformers classes, a real processor.

It stands in for a downloaded checkpoint in tests, examples and CI. Its weights are random, so its maps show
structure of the architecture, not of meaning.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT:") as a chat template.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_CORPUS = """
USER: What is in the picture? ASSISTANT: A red circle next to a blue square.
USER: What color is the triangle? ASSISTANT: The triangle is green.
USER: Describe the image. ASSISTANT: There is a yellow square above a purple circle on a white background.
USER: How many shapes are there? ASSISTANT: There are three shapes: a circle, a square and a triangle.
USER: Where is the cat? ASSISTANT: The cat sits on the left, under the window, near the door.
What is the color of the object in the top left corner of the image? It is orange.
Is there a dog in the photo? No, there is no dog. Yes, there is a small brown dog.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 , . ? ! : ;
"""


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained (deterministically) on a small built-in corpus."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.strip().splitlines(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def _clip_image_processor(image_size: int) -> Any:
    try:  # the PIL backend needs no torchvision
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # pragma: no cover - transformers < 5 has one backend
        from transformers import CLIPImageProcessor as processor_class
    return processor_class(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )


def tiny_llava(
    *,
    image_size: int = 336,
    patch_size: int = 14,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    hidden_size: int = 64,
    seed: int = 0,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random-weight LLaVA-1.5 and its processor; the default has LLaVA-1.5's 24×24 = 576 image tokens.

    Example:
        >>> model, processor = tiny_llava(image_size=56)
        >>> trace = mmviz.trace(model, processor, image, "What is in the picture?")   # doctest: +SKIP
    """
    tokenizer = tiny_tokenizer()
    image_processor = _clip_image_processor(image_size)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped again by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), processor
