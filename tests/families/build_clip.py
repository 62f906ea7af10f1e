"""CLIP and SigLIP: dual encoders (text tower + vision tower), each with its REAL processor class built offline.

CLIP gets the real ``CLIPTokenizer`` class (byte-level BPE with ``</w>`` word ends, ``<|startoftext|>`` /
``<|endoftext|>``) over a vocabulary trained here on a few captions; SigLIP's own tokenizer needs sentencepiece, so it
gets a SentencePiece-style (``▁``) fast tokenizer with SigLIP's special tokens (``</s>`` appended, ``</s>`` pads,
``<unk>``). Image processors are the PIL backends with small sizes so the towers stay tiny.
"""

from __future__ import annotations

import json
import warnings

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

from tests.families.registry import family_case

CLIP_IMAGE, CLIP_PATCH = 56, 8  # 7×7 patches + CLS
SIGLIP_IMAGE, SIGLIP_PATCH = 48, 12  # 4×4 patches, no CLS
SIGLIP_TEXT_LENGTH = 16  # SigLIP pads every caption to the text tower's full length

_CAPTIONS = """
a photo of a red square
a photo of a blue circle next to a green triangle
a yellow square above a purple circle on a white background
what is in the picture? describe the image.
a cat sits on the left, under the window, near the door
a small brown dog. the quick brown fox jumps over the lazy dog
0 1 2 3 4 5 6 7 8 9 , . ? ! : ;
""".strip().splitlines()

# CLIPTokenizer's own pre-tokenisation pattern (words, single digits, punctuation runs, the two special tokens)
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_tokenizer(vocab_size: int = 320) -> CLIPTokenizer:
    """The real ``CLIPTokenizer`` class over a tiny vocabulary trained with CLIP's own normaliser / pre-tokeniser."""
    trained = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix=""))
    trained.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    trained.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    trained.train_from_iterator(_CAPTIONS, trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77)


def siglip_tokenizer(vocab_size: int = 160) -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer with SigLIP's special tokens: ``</s>`` appended and used for padding."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False)
    tokenizer.train_from_iterator(_CAPTIONS, trainer=trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_max_length=SIGLIP_TEXT_LENGTH,
    )


def _towers(vocab: int, max_positions: int, image_size: int, patch_size: int, **ids: int) -> dict:
    text = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        **ids,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    return {"text_config": text, "vision_config": vision}


@family_case("clip", kind="dual", multi_image=False, gradients=False)
def build_clip() -> tuple[CLIPModel, CLIPProcessor]:
    tokenizer = clip_tokenizer()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE}, crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CLIPConfig(**_towers(len(tokenizer), 77, CLIP_IMAGE, CLIP_PATCH, **ids), projection_dim=24)
    torch.manual_seed(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CLIPModel(config)
    return model.eval(), processor


@family_case("siglip", kind="dual", multi_image=False, gradients=False)
def build_siglip() -> tuple[SiglipModel, SiglipProcessor]:
    tokenizer = siglip_tokenizer()
    image_processor = SiglipImageProcessorPil(size={"height": SIGLIP_IMAGE, "width": SIGLIP_IMAGE})
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    eos = tokenizer.eos_token_id
    ids = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id}
    config = SiglipConfig(**_towers(len(tokenizer), SIGLIP_TEXT_LENGTH, SIGLIP_IMAGE, SIGLIP_PATCH, **ids))
    torch.manual_seed(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SiglipModel(config)
    with torch.no_grad():  # SigLIP initialises logit scale/bias at random; make the logits' scale readable
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-1.0)
    return model.eval(), processor
