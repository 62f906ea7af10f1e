"""Train the shapes-world models shipped in ``mmviz/zoo/weights/`` (one reproducible command each).

    python -m mmviz.zoo.train vlm     # tiny LLaVA (CLIP tower + projector + Llama decoder) → weights/shapes-vlm/
    python -m mmviz.zoo.train clip    # tiny CLIP dual encoder, contrastive → weights/shapes-clip/

Both are built from real transformers classes with real processors (``LlavaProcessor`` / ``CLIPProcessor`` around
``CLIPImageProcessorPil`` and a word-level tokenizer over the world's closed vocabulary), trained from scratch
on training seeds of :mod:`mmviz.zoo.shapes` (``>= TRAIN_SEED_START``), evaluated on held-out seeds (below it)
and saved with ``save_pretrained``; ``training.json`` beside the weights records the recipe, the accuracy and
the time. Training is seeded and runs with deterministic algorithms on a fixed number of threads, so a retrain
reproduces the shipped model (bit for bit on the same machine and torch build).

``--steps N`` shortens a run and ``--out DIR`` writes elsewhere (the tests use both); ``--eval N`` sets the
number of held-out questions (VLM) or scenes (CLIP).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mmviz.zoo import shapes
from mmviz.zoo.tiny import LLAVA_CHAT_TEMPLATE, _clip_image_processor

WEIGHTS = Path(__file__).parent / "weights"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN, "<unk>"]
WORDS = [
    "user",
    "assistant",
    ":",
    "?",
    ".",
    ",",
    "what",
    "color",
    "shape",
    "is",
    "the",
    "describe",
    "image",
    "a",
    "an",
    "and",
    *shapes.COLORS,
    *shapes.SHAPES,
]


# -- tokenizer and processors ------------------------------------------------------------------------------------
def word_tokenizer(special_tokens: list[str] = SPECIAL_TOKENS, *, eos: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the world's closed vocabulary (lower-cased; other words become ``<unk>``).

    It prepends ``<s>`` (and appends ``</s>`` when ``eos``); ``special_tokens`` come first in the vocabulary.
    """
    vocab = {token: index for index, token in enumerate([*special_tokens, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>" if eos else "<s> $A", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    extra = {"extra_special_tokens": {"image_token": IMAGE_TOKEN}} if IMAGE_TOKEN in vocab else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=True,
        **extra,
    )


# -- the VLM -----------------------------------------------------------------------------------------------------
@dataclass
class VLMRecipe:
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 256
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_mlp: int = 384
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.05
    caption_fraction: float = 0.3  # share of training samples that ask "Describe the image."
    single_object: float = 0.0  # curriculum: share of one-object scenes at step 0, falling linearly to 0 ...
    single_object_until: float = 0.3  # ... at this fraction of the steps
    seed: int = 0
    threads: int = 2  # fixed, so that a retrain repeats the same float reductions


def build_vlm(recipe: VLMRecipe) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    tokenizer = word_tokenizer()
    processor = LlavaProcessor(
        image_processor=_clip_image_processor(recipe.image_size),
        tokenizer=tokenizer,
        patch_size=recipe.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped again by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    vision = CLIPVisionConfig(
        hidden_size=recipe.vision_hidden,
        intermediate_size=recipe.vision_mlp,
        num_hidden_layers=recipe.vision_layers,
        num_attention_heads=recipe.vision_heads,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        projection_dim=recipe.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=recipe.text_hidden,
        intermediate_size=recipe.text_mlp,
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=recipe.text_heads,
        num_key_value_heads=recipe.text_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(recipe.image_size // recipe.patch_size) ** 2,
        vision_feature_layer=-1,  # from scratch, the last layer is the one trained to feed the projector
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(recipe.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 24
    return model, processor


def chat_prompt(processor: Any, question: str) -> str:
    """The prompt exactly as mmviz (and a user's ``apply_chat_template``) builds it."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


class VLMData:
    """Training batches: processor-encoded prompts, answer tokens ending in ``</s>``, loss on the answer only."""

    def __init__(self, processor: Any, caption_fraction: float, seed: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.caption_fraction = caption_fraction
        self.rng = random.Random(seed)
        self.prompt_ids: dict[str, list[int]] = {}
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id

    def encode_prompt(self, question: str) -> list[int]:
        if question not in self.prompt_ids:
            dummy = shapes.scene(0).image
            ids = self.processor(images=[dummy], text=chat_prompt(self.processor, question))["input_ids"][0]
            self.prompt_ids[question] = [int(i) for i in ids]
        return self.prompt_ids[question]

    def answer_ids(self, answer: str) -> list[int]:
        return [*self.tokenizer(answer, add_special_tokens=False)["input_ids"], self.eos]

    def sample(self, scene: shapes.Scene) -> tuple[str, str]:
        if self.rng.random() < self.caption_fraction:
            return shapes.DESCRIBE_QUESTION, scene.caption
        question = self.rng.choice(scene.questions)
        return question.text, question.answer

    def batch(self, size: int, single_object: float = 0.0) -> dict[str, torch.Tensor]:
        scenes = []
        for _ in range(size):
            seed = self.rng.randrange(shapes.TRAIN_SEED_START, 2**31)
            scenes.append(shapes.scene(seed, num_objects=1 if self.rng.random() < single_object else None))
        pixel_values = self.processor.image_processor(images=[s.image for s in scenes], return_tensors="pt")[
            "pixel_values"
        ]
        rows, labels = [], []
        for scene in scenes:
            question, answer = self.sample(scene)
            prompt, target = self.encode_prompt(question), self.answer_ids(answer)
            rows.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
        width = max(map(len, rows))
        input_ids = torch.full((size, width), self.pad)
        label_ids = torch.full((size, width), -100)
        mask = torch.zeros((size, width), dtype=torch.long)
        for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            label_ids[i, : len(row)] = torch.tensor(label)
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values, "labels": label_ids}


def held_out_questions(count: int) -> list[tuple[int, shapes.Question]]:
    """The first ``count`` binding questions of held-out seeds 0, 1, 2, … (all of a scene's questions in turn)."""
    out: list[tuple[int, shapes.Question]] = []
    seed = 0
    while len(out) < count:
        assert not shapes.is_training_seed(seed)
        out.extend((seed, q) for q in shapes.scene(seed).questions)
        seed += 1
    return out[:count]


@torch.no_grad()
def evaluate_vlm(model: Any, processor: Any, count: int = 1000, batch_size: int = 100) -> dict[str, Any]:
    """Greedy ``model.generate`` through the processor on ``count`` held-out questions; exact-match accuracy.

    Prompts of equal token length are batched together, so no padding is involved.
    """
    model.eval()
    items = held_out_questions(count)
    groups: dict[int, list[tuple[int, shapes.Question]]] = {}
    for seed, question in items:
        length = len(processor.tokenizer(question.text, add_special_tokens=False)["input_ids"])
        groups.setdefault(length, []).append((seed, question))
    correct = 0
    by_kind: dict[str, list[int]] = {"color": [0, 0], "shape": [0, 0]}
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            images = [shapes.scene(seed).image for seed, _ in chunk]
            prompts = [chat_prompt(processor, q.text) for _, q in chunk]
            inputs = processor(images=images, text=prompts, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for (_, question), answer in zip(chunk, answers, strict=True):
                ok = answer.strip() == question.answer
                correct += ok
                kind = "color" if question.text.startswith("What color") else "shape"
                by_kind[kind][0] += ok
                by_kind[kind][1] += 1
    return {
        "questions": len(items),
        "accuracy": correct / len(items),
        "accuracy_color_questions": by_kind["color"][0] / max(1, by_kind["color"][1]),
        "accuracy_shape_questions": by_kind["shape"][0] / max(1, by_kind["shape"][1]),
    }


def _lr_lambda(warmup: int, steps: int):
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return schedule


class _Progress:
    """The running loss and accuracy of a training run, printed and recorded every ``every`` steps."""

    def __init__(self, steps: int, every: int, metric: str) -> None:
        self.steps, self.every, self.metric = steps, every, metric
        self.start = time.perf_counter()
        self.losses: list[float] = []
        self.loss, self.hits, self.total = 0.0, 0, 0

    def add(self, step: int, loss: float, hits: int, total: int) -> None:
        self.loss, self.hits, self.total = self.loss + loss, self.hits + hits, self.total + total
        if (step + 1) % self.every:
            return
        mean = self.loss / self.every
        self.losses.append(round(mean, 6))
        elapsed = time.perf_counter() - self.start
        accuracy = self.hits / max(1, self.total)
        print(
            f"step {step + 1}/{self.steps}  loss {mean:.4f}  {self.metric} {accuracy:.3f}  {elapsed:.0f}s", flush=True
        )
        self.loss, self.hits, self.total = 0.0, 0, 0

    def record(self) -> dict[str, Any]:
        return {
            "train_seconds": round(time.perf_counter() - self.start, 1),
            "log_every": self.every,
            "losses": self.losses,
        }


def _update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def _setup(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "embed" in name or "norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def train_vlm(
    recipe: VLMRecipe, *, log_every: int = 50, stop_after: int | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Train the VLM; ``stop_after`` ends the run early (same schedule), to check a run's start against a record.

    Returns the model, its processor and a record with ``train_seconds`` and ``losses`` (the mean training loss of
    every ``log_every`` steps).
    """
    _setup(recipe.seed, recipe.threads)
    model, processor = build_vlm(recipe)
    data = VLMData(processor, recipe.caption_fraction, recipe.seed)
    optimizer = _optimizer(model, recipe.lr, recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe.warmup, recipe.steps))
    model.train()
    log = _Progress(recipe.steps, log_every, "question accuracy")
    for step in range(recipe.steps if stop_after is None else min(stop_after, recipe.steps)):
        single = recipe.single_object * max(0.0, 1 - step / max(1, recipe.single_object_until * recipe.steps))
        batch = data.batch(recipe.batch_size, single)
        output = model(**batch)
        loss = output.loss
        with torch.no_grad():  # teacher-forced exact match of question answers (captions are longer)
            targets = batch["labels"][:, 1:]
            answered = targets != -100
            right = ((output.logits[:, :-1].argmax(-1) == targets) | ~answered).all(-1)
            is_question = answered.sum(-1) <= 2
            hits, total = int((right & is_question).sum()), int(is_question.sum())
        _update(model, optimizer, scheduler, loss)
        log.add(step, loss.item(), hits, total)
    model.eval()
    return model, processor, log.record()


# -- CLIP --------------------------------------------------------------------------------------------------------
# CLIP's text tower pools at the first ``</s>``, but treats an ``eos_token_id`` of 2 as a legacy config (pooling at
# the highest token id instead), so here ``</s>`` must not get id 2.
CLIP_SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]


@dataclass
class CLIPRecipe:
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    vision_mlp: int = 256
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_mlp: int = 256
    projection_dim: int = 64
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0
    threads: int = 2  # fixed, so that a retrain repeats the same float reductions


def build_clip(recipe: CLIPRecipe) -> tuple[CLIPModel, CLIPProcessor]:
    tokenizer = word_tokenizer(CLIP_SPECIAL_TOKENS, eos=True)
    processor = CLIPProcessor(image_processor=_clip_image_processor(recipe.image_size), tokenizer=tokenizer)
    longest = max(len(tokenizer(c)["input_ids"]) for c in shapes.all_captions())
    config = CLIPConfig(
        text_config={
            "hidden_size": recipe.text_hidden,
            "intermediate_size": recipe.text_mlp,
            "num_hidden_layers": recipe.text_layers,
            "num_attention_heads": recipe.text_heads,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 2 * longest,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "projection_dim": recipe.projection_dim,
        },
        vision_config={
            "hidden_size": recipe.vision_hidden,
            "intermediate_size": recipe.vision_mlp,
            "num_hidden_layers": recipe.vision_layers,
            "num_attention_heads": recipe.vision_heads,
            "image_size": recipe.image_size,
            "patch_size": recipe.patch_size,
            "projection_dim": recipe.projection_dim,
        },
        projection_dim=recipe.projection_dim,
    )
    torch.manual_seed(recipe.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CLIPModel(config)
    return model, processor


def train_clip(
    recipe: CLIPRecipe, *, log_every: int = 100, stop_after: int | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Contrastive training against the world's full caption set (:func:`shapes.all_captions`).

    Each step encodes a batch of training scenes and all 210 captions in one ``CLIPModel`` forward; the loss is
    the mean of image→caption cross-entropy over all captions and caption→image cross-entropy over the batch
    (for each caption present in the batch, its images share the target). ``stop_after`` and the record as in
    :func:`train_vlm`.
    """
    _setup(recipe.seed, recipe.threads)
    model, processor = build_clip(recipe)
    captions = shapes.all_captions()
    index = {c: i for i, c in enumerate(captions)}
    text = processor.tokenizer(captions, padding=True, return_tensors="pt")
    rng = random.Random(recipe.seed)
    optimizer = _optimizer(model, recipe.lr, recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe.warmup, recipe.steps))
    model.train()
    log = _Progress(recipe.steps, log_every, "top-1")
    for step in range(recipe.steps if stop_after is None else min(stop_after, recipe.steps)):
        scenes = [shapes.scene(rng.randrange(shapes.TRAIN_SEED_START, 2**31)) for _ in range(recipe.batch_size)]
        pixel_values = processor.image_processor(images=[s.image for s in scenes], return_tensors="pt")["pixel_values"]
        targets = torch.tensor([index[s.caption] for s in scenes])
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixel_values)
        image_to_text = F.cross_entropy(out.logits_per_image, targets)
        present = targets.unique()
        same = (targets[None, :] == present[:, None]).float()  # (captions present, images)
        text_to_image = -(torch.log_softmax(out.logits_per_text[present], dim=-1) * same / same.sum(-1, keepdim=True))
        loss = (image_to_text + text_to_image.sum(-1).mean()) / 2
        _update(model, optimizer, scheduler, loss)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
            hits = int((out.logits_per_image.argmax(-1) == targets).sum())
        log.add(step, loss.item(), hits, len(targets))
    model.eval()
    return model, processor, log.record()


@torch.no_grad()
def evaluate_clip(model: Any, processor: Any, count: int = 1000, batch_size: int = 250) -> dict[str, Any]:
    """Top-1 caption retrieval for held-out seeds ``0 … count-1`` among all 210 captions of the world.

    One ``processor(text=captions, images=…, padding=True)`` + ``model(**inputs)`` per batch; a scene counts as
    right when its own caption has the highest ``logits_per_image``.
    """
    model.eval()
    captions = shapes.all_captions()
    correct = 0
    for start in range(0, count, batch_size):
        scenes = [shapes.scene(seed) for seed in range(start, min(count, start + batch_size))]
        inputs = processor(text=captions, images=[s.image for s in scenes], padding=True, return_tensors="pt")
        best = model(**inputs).logits_per_image.argmax(-1)
        correct += sum(captions[int(b)] == s.caption for b, s in zip(best, scenes, strict=True))
    return {"scenes": count, "captions": len(captions), "top1_accuracy": correct / count}


# -- command line ------------------------------------------------------------------------------------------------
def _save(model: Any, processor: Any, out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def _environment() -> dict[str, str]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmviz.zoo.train", description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=["vlm", "clip"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: mmviz/zoo/weights/…)")
    parser.add_argument("--eval", type=int, default=None, help="held-out questions (vlm) / scenes (clip)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a recipe field")
    args = parser.parse_args(argv)

    if args.model == "vlm":
        recipe = VLMRecipe()
        name, count = "shapes-vlm", 1000 if args.eval is None else args.eval
    else:
        recipe = CLIPRecipe()
        name, count = "shapes-clip", 1000 if args.eval is None else args.eval
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(recipe, key, type(getattr(recipe, key))(value))
    if args.steps is not None:
        recipe.steps = args.steps
        recipe.warmup = min(recipe.warmup, max(1, args.steps // 10))
    out = args.out or WEIGHTS / name
    command = "python -m mmviz.zoo.train " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.model == "vlm":
        model, processor, record = train_vlm(recipe)
        start = time.perf_counter()
        metrics = evaluate_vlm(model, processor, count)
    else:
        model, processor, record = train_clip(recipe)
        start = time.perf_counter()
        metrics = evaluate_clip(model, processor, count)
    record["eval_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(metrics), flush=True)
    record = {
        "model": name,
        "command": command.strip(),
        "recipe": asdict(recipe),
        "held_out": f"seeds < {shapes.TRAIN_SEED_START}; trained on seeds >= {shapes.TRAIN_SEED_START}",
        **metrics,
        **record,
        "environment": _environment(),
    }
    _save(model, processor, out, record)
    print(f"saved to {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
