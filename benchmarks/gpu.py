"""mmviz on a GPU at LLaVA-1.5-7B and LLaVA-NeXT-7B shapes: trace and inspect latency, method costs, peak memory.

Run: ``python benchmarks/gpu.py --out gpu.json`` on a CUDA machine (a few minutes on an H100-class GPU; no network:
everything is built from configs) or ``python benchmarks/gpu.py --quick`` (tiny shapes, any device, the CPU too:
the smoke run of ``tests/test_benchmarks.py``). Prints one markdown table and the PASS/FAIL lines of the targets;
``--out`` also writes every number as JSON (rewritten after each shape, so a run cut short keeps what it measured).
The exit status is 0 either way (a benchmark, not a test): a measure that fails is reported with its error.

Models (random weights, bfloat16, full depth and width, initialised on the GPU directly): LLaVA-1.5-7B is a
CLIP ViT-L/14 at 336 px (24 layers, width 1024, 576 image tokens) with a 2-layer GELU projector and a
Llama-2-7B-like decoder (32 layers, width 4096, 32 heads, MLP 11008, vocabulary 32064); LLaVA-NeXT-7B is the same
towers with anyres tiling (pinpoints up to 672 × 672: a 672 × 672 image gives 576 base + 2,352 high-res tokens with
row newlines = 2,928 image tokens). The processors are the real transformers classes assembled offline with
``mmviz.zoo``'s tiny tokenizer (its vocabulary is smaller than the model's: ids it lacks are shown as "�").
``--quick``: the same classes with a 64-wide, 2-layer decoder and a 56 px vision tower.

Measures, all in this one process, with ``torch.cuda.synchronize()`` around every timed call; medians of the repeats
after one warm-up:

* **plain forward**: the teacher-forced forward over prompt + answer (SDPA, no grad, ``logits_to_keep`` = answer + 1,
  exactly as ``mmviz.trace`` runs it) — the unit F of the ratios;
* **analysis forward**: the same forward recording every text row of every layer and head (mmviz's attention
  function, ``benchmarks/capture.py``'s ``capture``), and the whole ``mmviz.trace(..., answer=...)``;
* **inspect → widget ready**: ``mmviz.inspect(...)`` until the ``Inspector`` is constructed with its first payload,
  with the answer given and with the answer generated (greedy, ``max_new_tokens=32``: random weights never stop
  early); goal ≤ 2 s on an H100-class GPU;
* **relevancy** for 1 and 4 answer tokens, the cost per extra target against F+B (one forward with a gradient
  leaf plus one backward, the bound of ``benchmarks/methods.py``);
* **integrated gradients**, 32 steps, one target (path points per forward halved after an out-of-memory error);
* **peak GPU memory** above what the model holds (``torch.cuda.max_memory_allocated``) of the plain forward,
  ``mmviz.trace`` and an eager ``output_attentions=True`` forward (what other tools record: every layer's full
  attention matrix). CUDA only: on the CPU these are reported as skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
)

import mmviz
from mmviz.adapters import adapter_for
from mmviz.capture import AttentionRecorder, recording
from mmviz.methods import Target, integrated_gradients, relevancy
from mmviz.methods.common import EmbeddingLeaf, gradient_context
from mmviz.progress import quiet
from mmviz.zoo.tiny import IMAGE_TOKEN, LLAVA_CHAT_TEMPLATE, tiny_tokenizer

PROMPT = "What is in the picture? Describe the shapes and colors."
ANSWER = "There is a yellow square above a purple circle on a white background, and the cat sits on the left."
INSPECT_TARGET = 2.0  # seconds from mmviz.inspect(...) to the Inspector with its first payload, at most
CAPTURE_TARGET = 1.3  # analysis forward ÷ plain forward, at most (benchmarks/capture.py's target)
MEMORY_TARGET = 4.0  # eager output_attentions peak ÷ trace peak at the LLaVA-NeXT shape, at least
IG_STEPS = 32  # integrated gradients' default; --quick: 8
NEW_TOKENS = 32  # mmviz.trace's default max_new_tokens; --quick: 8
GENERATED = "mmviz.inspect → widget ready, answer generated"
INTEGRATED = "integrated gradients, 1 target"

CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
LLAMA_2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "vocab_size": 32064,
}
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 56,
    "patch_size": 14,
    "projection_dim": 32,
}
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "vocab_size": 32064,
}


@dataclass(frozen=True)
class Shape:
    """One model to build: its family, tower configs, the input image's size and how often each measure repeats."""

    name: str
    family: str  # "llava" or "llava_next"
    vision: dict[str, Any]
    text: dict[str, Any]
    image_size: tuple[int, int]  # (width, height) of the input image
    repeats: int
    pinpoints: tuple[tuple[int, int], ...] = ()
    ig_steps: int = IG_STEPS
    new_tokens: int = NEW_TOKENS


def full_shapes() -> list[Shape]:
    """LLaVA-1.5-7B and LLaVA-NeXT-7B (llava-v1.6-vicuna-7b's pinpoints)."""
    side = CLIP_L_336["image_size"]
    pinpoints = ((side, 2 * side), (2 * side, side), (2 * side, 2 * side), (3 * side, side), (side, 3 * side))
    return [
        Shape("LLaVA-1.5-7B", "llava", CLIP_L_336, LLAMA_2_7B, (640, 480), repeats=5),
        Shape("LLaVA-NeXT-7B", "llava_next", CLIP_L_336, LLAMA_2_7B, (672, 672), repeats=3, pinpoints=pinpoints),
    ]


def quick_shapes() -> list[Shape]:
    """The same two families at toy size (seconds on a CPU)."""
    side = TINY_VISION["image_size"]
    pinpoints = ((side, 2 * side), (2 * side, side), (2 * side, 2 * side))
    return [
        Shape("tiny LLaVA-1.5", "llava", TINY_VISION, TINY_TEXT, (80, 60), 1, ig_steps=8, new_tokens=8),
        Shape("tiny LLaVA-NeXT", "llava_next", TINY_VISION, TINY_TEXT, (112, 112), 1, pinpoints, 8, 8),
    ]


# -- building the models offline ---------------------------------------------------------------------------------------
def _clip_image_processor(side: int) -> Any:
    try:  # the PIL backend needs no torchvision
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # pragma: no cover - transformers without the PIL backend classes
        from transformers import CLIPImageProcessor as processor_class
    return processor_class(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def _llava_next_image_processor(side: int, pinpoints: list[list[int]]) -> Any:
    try:
        from transformers import LlavaNextImageProcessorPil as processor_class
    except ImportError:  # pragma: no cover
        from transformers import LlavaNextImageProcessor as processor_class
    return processor_class(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_grid_pinpoints=pinpoints
    )


def build(shape: Shape, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """The model with random weights, initialised on ``device`` in ``dtype``, and its processor (both offline)."""
    tokenizer = tiny_tokenizer()
    side, patch = shape.vision["image_size"], shape.vision["patch_size"]
    vision = CLIPVisionConfig(**shape.vision)
    text = LlamaConfig(
        **{**shape.text, "vocab_size": max(shape.text["vocab_size"], len(tokenizer))},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common = {
        "vision_config": vision,
        "text_config": text,
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "image_seq_length": (side // patch) ** 2,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }
    processor_options = {
        "tokenizer": tokenizer,
        "patch_size": patch,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,  # CLIP's CLS, dropped again by the "default" strategy
        "chat_template": LLAVA_CHAT_TEMPLATE,  # llava-v1.5 and llava-v1.6-vicuna: "USER: <image>\n... ASSISTANT:"
        "image_token": IMAGE_TOKEN,
    }
    if shape.family == "llava":
        model_class: type = LlavaForConditionalGeneration
        config: Any = LlavaConfig(**common)
        processor: Any = LlavaProcessor(image_processor=_clip_image_processor(side), **processor_options)
    else:
        pinpoints = [list(p) for p in shape.pinpoints]
        model_class = LlavaNextForConditionalGeneration
        config = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
        image_processor = _llava_next_image_processor(side, pinpoints)
        processor = LlavaNextProcessor(image_processor=image_processor, **processor_options)
    torch.manual_seed(0)
    with warnings.catch_warnings(), device:
        warnings.simplefilter("ignore")
        model = model_class._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), processor


# -- measuring ---------------------------------------------------------------------------------------------------------
@dataclass
class Measure:
    """One row of the table: a value with its unit, a ratio to the row's reference, a status and a note."""

    name: str
    unit: str
    value: float | None = None
    ratio: float | None = None
    ratio_of: str = ""
    status: str = "ok"  # "ok", "skipped" or "error"
    note: str = ""
    samples: list[float] = field(default_factory=list)


class Bench:
    """Runs the measures of one shape, each guarded: an error or the time budget skips that measure only."""

    def __init__(self, device: torch.device, deadline: float) -> None:
        self.device = device
        self.deadline = deadline
        self.measures: dict[str, Measure] = {}

    def sync(self) -> None:
        """Wait for the device's queued work (CUDA launches are asynchronous)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, work: Callable[[], object], repeats: int, warm: bool = True) -> list[float]:
        """Wall times of ``repeats`` calls of ``work`` (after one untimed warm-up call)."""
        if warm:
            work()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            work()
            self.sync()
            times.append(time.perf_counter() - start)
        return times

    def peak_bytes(self, work: Callable[[], object]) -> float:
        """Peak CUDA memory above what was allocated before ``work`` (its result kept alive until read)."""
        gc.collect()
        torch.cuda.empty_cache()
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        kept = work()
        self.sync()
        peak = torch.cuda.max_memory_allocated(self.device) - baseline
        del kept
        return float(peak)

    def run(self, name: str, unit: str, measure: Callable[[Measure], None], *, cuda_only: bool = False) -> Measure:
        """Fill ``Measure(name, unit)`` with ``measure``; skipped past the deadline or (``cuda_only``) without CUDA."""
        row = Measure(name, unit)
        self.measures[name] = row
        if cuda_only and self.device.type != "cuda":
            row.status, row.note = "skipped", "CUDA only"
        elif time.monotonic() > self.deadline:
            row.status, row.note = "skipped", "time budget spent"
        else:
            try:
                measure(row)
            except Exception as error:  # a benchmark reports every failure and goes on
                row.status, row.note = "error", f"{type(error).__name__}: {error}"[:300]
                traceback.print_exc(file=sys.stderr)
            finally:
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return row

    def ratio(self, name: str, of: str) -> None:
        """Set ``name``'s ratio to the value of ``of`` (when both were measured)."""
        row, reference = self.measures.get(name), self.measures.get(of)
        if row and reference and row.value is not None and reference.value:
            row.ratio, row.ratio_of = row.value / reference.value, of


@dataclass
class Case:
    """A built model with the inputs of its teacher-forced analysis forward."""

    model: torch.nn.Module
    processor: Any
    image: Image.Image
    inputs: dict[str, Any]
    query_positions: np.ndarray
    info: dict[str, Any]


def prepare(shape: Shape, device: torch.device, dtype: torch.dtype) -> Case:
    """Build the model and the inputs of one teacher-forced forward over prompt + answer (as ``mmviz.trace`` does)."""
    start = time.perf_counter()
    model, processor = build(shape, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    built = time.perf_counter() - start
    rng = np.random.default_rng(0)
    width, height = shape.image_size
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    adapter = adapter_for(model, processor)
    encoded = adapter.encode([image], adapter.format_prompt(PROMPT, n_images=1))
    answer = adapter.tokenizer(" " + ANSWER, add_special_tokens=False)["input_ids"]
    input_ids = torch.cat([encoded["input_ids"], torch.tensor([answer])], dim=1)
    layout = adapter.layout(input_ids[0].numpy(), [image], encoded)
    others = {
        k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        for k, v in encoded.items()
        if k not in ("input_ids", "attention_mask")
    }
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        **others,
        "use_cache": False,
        "logits_to_keep": len(answer) + 1,
    }
    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": built,
        "sequence": int(input_ids.shape[1]),
        "image_tokens": len(layout.positions("image", "image_newline", "image_sep")),
        "text_rows_recorded": len(layout.text_positions),
        "answer_tokens": len(answer),
        "layers": adapter.num_layers,
        "heads": adapter.num_heads,
    }
    return Case(model, processor, image, inputs, layout.text_positions, info)


def measure_shape(case: Case, bench: Bench, shape: Shape) -> None:
    """Every measure of the module docstring for one built model."""
    model, processor, image = case.model, case.processor, case.image
    repeats, few = shape.repeats, max(1, shape.repeats - 2)

    def plain() -> Any:
        with torch.no_grad():
            return model(**case.inputs).logits

    def capture() -> Any:
        recorder = AttentionRecorder(case.query_positions)
        with torch.no_grad(), recording(model, {"text_config": recorder}):
            return model(**case.inputs).logits, recorder

    def traced() -> mmviz.Trace:
        return mmviz.trace(model, processor, image, PROMPT, answer=ANSWER)

    timing = partial(_timing, bench)
    bench.run("plain forward (F)", "s", timing(plain, repeats))
    bench.run("analysis forward (capture every text row)", "s", timing(capture, repeats))
    bench.ratio("analysis forward (capture every text row)", "plain forward (F)")
    bench.run("mmviz.trace, answer given", "s", timing(traced, few))
    bench.ratio("mmviz.trace, answer given", "plain forward (F)")

    opened: list[Any] = []  # closed after timing: ipywidgets keeps every open widget (and so its trace and model)

    def inspect_given() -> None:
        opened.append(mmviz.inspect(model, processor, image, PROMPT, answer=ANSWER))

    def inspect_generated() -> None:
        opened.append(mmviz.inspect(model, processor, image, PROMPT, max_new_tokens=shape.new_tokens))

    bench.run("mmviz.inspect → widget ready, answer given", "s", timing(inspect_given, few))
    generated = bench.run(GENERATED, "s", timing(inspect_generated, few))
    if generated.status == "ok":
        generated.note = f"{shape.new_tokens} new tokens; goal ≤ {INSPECT_TARGET:g} s on an H100-class GPU"
    for inspector in opened:
        inspector.close()
    opened.clear()

    if bench.measures["mmviz.trace, answer given"].status == "ok":
        measure_methods(traced(), bench, few, shape.ig_steps)  # traced() ran above: it does not raise here

    def memory(work: Callable[[], object]) -> Callable[[Measure], None]:
        def fill(row: Measure) -> None:
            row.value = bench.peak_bytes(work) / 1e6

        return fill

    def eager() -> Any:
        text_config = model.config.text_config
        original = text_config._attn_implementation
        model.set_attn_implementation({"text_config": "eager"})
        try:
            with torch.no_grad():
                output = model(**case.inputs, output_attentions=True)
            if not output.attentions:
                raise RuntimeError("eager returned no attention weights")
            return output
        finally:
            model.set_attn_implementation({"text_config": original})

    bench.run("peak GPU memory: plain forward", "MB", memory(plain), cuda_only=True)
    bench.run("peak GPU memory: mmviz.trace", "MB", memory(traced), cuda_only=True)
    bench.run("peak GPU memory: eager output_attentions=True", "MB", memory(eager), cuda_only=True)
    bench.ratio("peak GPU memory: eager output_attentions=True", "peak GPU memory: mmviz.trace")


def _timing(bench: Bench, work: Callable[[], object], count: int) -> Callable[[Measure], None]:
    """A measure that times ``work`` ``count`` times (after a warm-up) and keeps the median."""

    def fill(row: Measure) -> None:
        row.samples = bench.seconds(work, count)
        row.value = statistics.median(row.samples)

    return fill


def measure_methods(trace: mmviz.Trace, bench: Bench, few: int, steps: int) -> None:
    """F+B, relevancy for 1 and 4 targets, and integrated gradients on a trace of the shape's model."""
    run = trace.run
    timing = partial(_timing, bench)
    first = Target.logprob(trace.answer_start)
    four = [Target.logprob(p) for p in range(trace.answer_start, min(trace.answer_start + 4, len(trace.tokens)))]

    def forward_backward() -> None:
        leaf = EmbeddingLeaf()
        with gradient_context(run):
            logits = run.forward(edit=leaf, first_logit=first.first_logit)
            first(logits, run.input_ids, first.first_logit).sum().backward()

    bench.run("forward + backward, 1 target (F+B)", "s", timing(forward_backward, few))
    bench.ratio("forward + backward, 1 target (F+B)", "plain forward (F)")
    bench.run("relevancy, 1 target", "s", timing(lambda: relevancy(trace, first), few))
    bench.run(f"relevancy, {len(four)} targets", "s", timing(lambda: relevancy(trace, four), few))

    def per_target(row: Measure) -> None:
        one = bench.measures["relevancy, 1 target"]
        several = bench.measures[f"relevancy, {len(four)} targets"]
        if one.value is None or several.value is None or len(four) < 2:
            raise RuntimeError("relevancy was not measured")
        row.value = (several.value - one.value) / (len(four) - 1)
        row.note = "bound: ≤ 1 F + 1 B per target (10% timing tolerance)"

    bench.run("relevancy per extra target", "s", per_target)
    bench.ratio("relevancy per extra target", "forward + backward, 1 target (F+B)")

    def integrated(row: Measure) -> None:
        batch, refused = 8, []  # 8: integrated_gradients' default batch_size
        while True:
            try:
                row.samples = bench.seconds(
                    lambda batch=batch: integrated_gradients(trace, first, steps=steps, batch_size=batch),
                    1,
                    warm=False,
                )
                break
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
                refused.append(batch)
                batch //= 2
                gc.collect()
                torch.cuda.empty_cache()
        row.value = row.samples[0]
        row.note = f"{steps} steps, {batch} path points per forward"
        if refused:
            row.note += f" (out of memory with {', '.join(map(str, refused))})"

    bench.run(INTEGRATED, "s", integrated)
    bench.ratio(INTEGRATED, "forward + backward, 1 target (F+B)")


# -- reporting ---------------------------------------------------------------------------------------------------------
def _value(row: Measure) -> str:
    """The table's value cell: the number, or the status of a measure that has none."""
    if row.status != "ok" or row.value is None:
        return f"{row.status}"
    return f"{row.value:.3f}" if row.unit == "s" else f"{row.value:,.0f}"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """The markdown table: one row per shape and measure."""
    print("| shape | measure | value | unit | ratio | note |")
    print("|---|---|---:|---|---:|---|")
    for shape, result in results.items():
        for row in result["measures"].values():
            ratio = f"{row.ratio:.2f}× {row.ratio_of}" if row.ratio is not None else ""
            print(f"| {shape} | {row.name} | {_value(row)} | {row.unit} | {ratio} | {row.note} |")


def verdicts(results: dict[str, dict[str, Any]], judged: bool) -> list[dict[str, Any]]:
    """The PASS/FAIL lines of the targets (judged only in a full run on CUDA)."""
    lines = []
    for shape, result in results.items():
        measures: dict[str, Measure] = result["measures"]
        checks = [
            (GENERATED, "≤", INSPECT_TARGET, "value"),
            ("analysis forward (capture every text row)", "≤", CAPTURE_TARGET, "ratio"),
            ("relevancy per extra target", "≤", 1.1, "ratio"),
        ]
        if result["family"] == "llava_next":
            checks.append(("peak GPU memory: eager output_attentions=True", "≥", MEMORY_TARGET, "ratio"))
        for name, sense, target, what in checks:
            row = measures.get(name)
            number = None if row is None or row.status != "ok" else getattr(row, what)
            if number is None:
                verdict = "SKIP"
            elif not judged:
                verdict = "INFO"
            else:
                verdict = "PASS" if (number <= target if sense == "≤" else number >= target) else "FAIL"
            lines.append({"shape": shape, "measure": name, "of": what, "value": number, "target": f"{sense} {target:g}",
                          "verdict": verdict})  # fmt: skip
    return lines


def write_json(path: Path | None, meta: dict[str, Any], results: dict[str, dict[str, Any]], lines: list) -> None:
    """Write everything measured so far (and the verdicts) to ``path`` as JSON; nothing without ``--out``."""
    if path is None:
        return
    shapes = {
        shape: {
            **{k: v for k, v in result.items() if k != "measures"},
            "measures": {name: asdict(row) for name, row in result["measures"].items()},
        }
        for shape, result in results.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "shapes": shapes, "targets": lines}, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Build each shape, measure it, print the table and the verdicts; 0 whatever was measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes on any device (the CPU too): a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON to this path")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu (--quick only)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later measures are skipped past it")
    parser.add_argument("--shapes", nargs="*", default=None, help="names of the shapes to run (default: all)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.bfloat16
    shapes = quick_shapes() if args.quick else full_shapes()
    if args.shapes:
        shapes = [s for s in shapes if s.name in args.shapes]
    meta: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mmviz": mmviz.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "quick": args.quick,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {meta['device_name']} ({device}), "
          f"{meta['dtype']}{' (--quick)' if args.quick else ''}")  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    if device.type != "cuda" and not args.quick:
        print("the full shapes need a CUDA device (7B parameters in bfloat16); run --quick on this machine")
        meta["skipped"] = "no CUDA device"
        print_table(results)
        write_json(args.out, meta, results, [])
        return 0
    transformers.logging.set_verbosity_error()  # the vision tower's "sdpa does not support output_attentions"
    deadline = time.monotonic() + args.budget
    for shape in shapes:
        bench = Bench(device, deadline)
        result: dict[str, Any] = {"family": shape.family, "measures": bench.measures}
        results[shape.name] = result
        if time.monotonic() > deadline:
            result["skipped"] = "time budget spent"
            continue
        try:
            case = prepare(shape, device, dtype)
        except Exception as error:  # reported; the next shape still runs
            traceback.print_exc(file=sys.stderr)
            result["error"] = f"building: {type(error).__name__}: {error}"[:300]
            print(f"{shape.name}: {result['error']}", flush=True)
            continue
        result.update(case.info)
        print(f"{shape.name}: {case.info['parameters'] / 1e9:.2f} B parameters built in "
              f"{case.info['build_seconds']:.1f} s; {case.info['sequence']} tokens ({case.info['image_tokens']} image, "
              f"{case.info['text_rows_recorded']} text rows recorded)", flush=True)  # fmt: skip
        with quiet():
            measure_shape(case, bench, shape)
        del case
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_json(args.out, meta, results, [])
    lines = verdicts(results, judged=device.type == "cuda" and not args.quick)
    print()
    print_table(results)
    print()
    for line in lines:
        value = "—" if line["value"] is None else f"{line['value']:.2f}"
        print(f"{line['verdict']}: {line['shape']}, {line['measure']} ({line['of']}) = {value} "
              f"(target {line['target']})")  # fmt: skip
    write_json(args.out, meta, results, lines)
    if args.out is not None:
        print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
