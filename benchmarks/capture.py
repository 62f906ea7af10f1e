"""Cost of mmviz's attention capture vs a plain forward and vs eager ``output_attentions=True``.

Run: ``python benchmarks/capture.py`` (about a minute on 2 idle CPU cores) or ``python benchmarks/capture.py --quick``
(a smoke run of ~10 s, used by CI); ``--full-width`` measures the 576-token shape at LLaVA-1.5-7B's real widths
(CLIP-L/336 and a 4096-wide, 32-head language model cut to 2 layers; several minutes). Prints one markdown table and
the PASS/FAIL lines; the exit status is 0 either way (a benchmark, not a test).

Everything runs in this one process, on the CPU, inside ``torch.no_grad()``, with ``torch.set_num_threads`` set to
the cores this process may use and fixed seeds. Three ways of running the same teacher-forced analysis forward
(prompt + answer, ``use_cache=False``, ``logits_to_keep`` = answer length + 1, exactly as ``mmviz.trace`` calls it)
are compared, and the whole of ``mmviz.trace`` besides:

* ``plain``: the model's default SDPA attention, nothing recorded (the baseline);
* ``capture``: the same forward inside ``recording(model, {"text_config": AttentionRecorder(text_positions)})``,
  i.e. mmviz's attention function recording the rows of every text (non-image) position of every layer and head,
  the default of ``mmviz.trace``;
* ``eager``: a deep copy of the model with ``set_attn_implementation({"text_config": "eager"})``, called with
  ``output_attentions=True``: what existing tools do (every layer's full ``(B, H, N, N)`` matrix);
* ``trace``: ``mmviz.trace(model, processor, image, prompt, answer=...)`` with the default plan (preprocessing, the
  same forward and building the ``Trace``), with its capture estimate (what the budget is checked against) in the
  last column: its peak stays within the plain forward's peak + the estimate (``benchmarks/memory.py`` checks that
  bound over more plans).

Model: ``mmviz.zoo.tiny_llava`` (a real ``LlavaForConditionalGeneration`` with random weights and a real processor)
with the language model scaled so that the whole run stays on a CPU budget: hidden size 512, 8 decoder layers,
8 query heads with 4 key/value heads (GQA, head dim 64, as in real LLaVA checkpoints), MLP width 1024. The attention
cost, which is what differs between the modes, depends on the sequence length, heads and head dim, all realistic
here; only the width of the projections and the depth are smaller than in a 7B model. ``--quick`` uses hidden
size 256 and 4 layers. Two real token counts:

* LLaVA-1.5: 336 px canvas, 14 px patches → 24² = 576 image tokens + ~60 text tokens (prompt + answer);
* LLaVA-NeXT-sized: 742 px canvas, 14 px patches → 53² = 2809 image tokens + ~60 text ≈ 2.87k tokens (the token
  count of a LLaVA-NeXT any-res sequence, 2,928 for a 672×672 image, as one grid).

Time: wall-clock (``time.perf_counter``) of the forward alone (for ``capture`` including entering and leaving
``recording`` and building the recorder); inputs are preprocessed once beforehand. Each mode is warmed up once per
shape, then the modes are run round-robin k times (k = 7 at 576 image tokens, 5 at 2.9k; 3 and 1 with ``--quick``)
and the median is reported. The timed runs are the memory runs, so they include the cost of the RSS sampler
thread and of re-faulting pages after ``malloc_trim`` (both measured at a few percent at most, and the same for
every mode).
Other load on the machine shows up directly in the times: run it on an otherwise idle machine.

Memory: peak resident set size above the pre-run baseline, measured by ``benchmarks/memory.py``'s ``measured``
(``malloc_trim`` before, 1 ms RSS sampling cross-checked against the kernel's ``VmHWM``; the footnote prints how much
sampling alone missed), while the run's outputs (logits, recorded rows, ``out.attentions``, the trace) are still
alive, since a caller holds them. Models (and the eager copy) are built before any measurement, so their weights are
part of the baseline. The table reports the largest peak over the measured runs of a mode. MB = 10⁶ bytes.

Captured data: the sum of ``nbytes`` of ``recorder.rows`` (capture), of ``out.attentions`` (eager) and of the trace's
attention rows (trace).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transformers
from memory import MB, Peak, measured  # benchmarks/memory.py: peak RSS
from memory import SLACK as MEMORY_SLACK
from PIL import Image
from tqdm.auto import tqdm

import mmviz
from mmviz.adapters import adapter_for
from mmviz.capture import AttentionRecorder, CapturePlan, recording
from mmviz.zoo import tiny_llava

MODES: tuple[str, ...] = ("plain", "capture", "eager", "trace")
PROMPT = "What is in the picture? Describe the shapes and colors."
ANSWER = "There is a yellow square above a purple circle on a white background, and the cat sits on the left."
TIME_TARGET = 1.3  # capture time ÷ plain time at 576 image tokens, at most
MEMORY_TARGET = 4.0  # eager peak ÷ capture peak at ~2.9k tokens, at least


@dataclass(frozen=True)
class Shape:
    """One token count: the canvas and patch size of the vision tower and how often each mode is repeated."""

    name: str
    image_size: int
    patch_size: int
    repeats: int

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class ModelSize:
    """Width and depth of the language model."""

    hidden_size: int
    num_layers: int
    num_heads: int = 8
    num_kv_heads: int = 4


FULL_WIDTH = ModelSize(hidden_size=4096, num_layers=2, num_heads=32, num_kv_heads=32)
"""LLaVA-1.5-7B's language model (Llama-2-7B: 4096 wide, 32 heads, MLP 11008) cut to 2 layers, behind the real
CLIP-L/336 vision tower: the CPU figures at real width (``--full-width``)."""


def full_width_llava(num_layers: int) -> tuple[Any, Any]:
    """LLaVA-1.5-7B's towers at full width with random weights, the language model cut to ``num_layers``."""
    from gpu import CLIP_L_336, LLAMA_2_7B, build  # benchmarks/gpu.py: the 7B configs, built offline
    from gpu import Shape as ModelConfigs

    configs = ModelConfigs(
        "LLaVA-1.5-7B width", "llava", CLIP_L_336, {**LLAMA_2_7B, "num_hidden_layers": num_layers}, (640, 480), 1
    )
    return build(configs, torch.device("cpu"), torch.float32)


@dataclass
class Measurement:
    """Wall times, peak memory above baseline and captured bytes of every measured run of one (shape, mode)."""

    seconds: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    missed_by_sampling: list[int] = field(default_factory=list)
    captured_bytes: int = 0
    estimate_bytes: int = 0

    def add(self, peak: Peak) -> None:
        self.seconds.append(peak.seconds)
        self.peak_bytes.append(peak.bytes)
        self.missed_by_sampling.append(peak.missed_by_sampling)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak(self) -> int:
        return max(self.peak_bytes)


# -- the modes -------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One shape's models and inputs, built before anything is measured."""

    model: torch.nn.Module
    eager: torch.nn.Module
    processor: Any
    image: Image.Image
    inputs: dict[str, Any]
    query_positions: np.ndarray
    sequence_length: int
    estimate_bytes: int


def build_case(shape: Shape, size: ModelSize, seed: int = 0) -> Case:
    """The tiny LLaVA for ``shape`` (plus its eager copy) and the inputs of one teacher-forced forward; at
    :data:`FULL_WIDTH` the real LLaVA-1.5-7B widths (``benchmarks/gpu.py``'s configs) cut to its layer count."""
    if size == FULL_WIDTH:
        model, processor = full_width_llava(size.num_layers)
    else:
        model, processor = tiny_llava(
            image_size=shape.image_size,
            patch_size=shape.patch_size,
            num_layers=size.num_layers,
            num_heads=size.num_heads,
            num_kv_heads=size.num_kv_heads,
            hidden_size=size.hidden_size,
            seed=seed,
        )
    eager = copy.deepcopy(model)
    eager.set_attn_implementation({"text_config": "eager"})
    adapter = adapter_for(model, processor)
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    encoded = adapter.encode([image], adapter.format_prompt(PROMPT, n_images=1))
    answer = adapter.tokenizer(" " + ANSWER, add_special_tokens=False)["input_ids"]
    input_ids = torch.cat([encoded["input_ids"], torch.tensor([answer])], dim=1)
    layout = adapter.layout(input_ids[0].numpy(), [image], encoded)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": encoded["pixel_values"],
        "use_cache": False,
        "logits_to_keep": len(answer) + 1,
    }
    n_positions, n_queries = int(input_ids.shape[1]), len(layout.text_positions)
    estimate = CapturePlan().estimate(adapter.model_shape(1), n_positions, n_queries, n_logits=len(answer) + 1)
    return Case(model, eager, processor, image, inputs, layout.text_positions, n_positions, sum(estimate.values()))


def run(case: Case, mode: str) -> tuple[Any, int]:
    """Run one forward in ``mode``; returns what a caller keeps (outputs, recorder) and the bytes of attention."""
    if mode == "plain":
        return case.model(**case.inputs), 0
    if mode == "capture":
        recorder = AttentionRecorder(case.query_positions)
        with recording(case.model, {"text_config": recorder}):
            output = case.model(**case.inputs)
        return (output, recorder), sum(rows.nbytes for rows in recorder.rows.values())
    if mode == "eager":
        output = case.eager(**case.inputs, output_attentions=True)
        return output, sum(attention.nbytes for attention in output.attentions)
    if mode == "trace":
        trace = mmviz.trace(case.model, case.processor, case.image, PROMPT, answer=ANSWER)
        return trace, trace.attention_rows.nbytes
    raise ValueError(f"unknown mode {mode!r}")


def benchmark(shapes: list[Shape], size: ModelSize) -> dict[tuple[str, str], Measurement]:
    """Warm up and measure every (shape, mode); the modes run round-robin so drift hits them alike."""
    results: dict[tuple[str, str], Measurement] = {}
    total = sum((1 + shape.repeats) * len(MODES) for shape in shapes)
    with tqdm(total=total, desc="runs", unit="run") as progress:
        for shape in shapes:
            progress.set_postfix_str(f"building {shape.name}")
            case = build_case(shape, size)
            for mode in MODES:
                progress.set_postfix_str(f"{shape.name} {mode} warm-up")
                run(case, mode)
                progress.update()
                results[shape.name, mode] = Measurement()
            for _ in range(shape.repeats):
                for mode in MODES:
                    progress.set_postfix_str(f"{shape.name} {mode}")
                    measurement = results[shape.name, mode]
                    with measured() as peak:
                        kept, measurement.captured_bytes = run(case, mode)
                    measurement.add(peak)
                    measurement.estimate_bytes = case.estimate_bytes if mode == "trace" else 0
                    del kept  # freed after the measured window: a caller holds the outputs
                    progress.update()
            tqdm.write(
                f"{shape.name}: {case.sequence_length} tokens ({shape.image_tokens} image, "
                f"{len(case.query_positions)} text positions recorded)"
            )
            del case
            gc.collect()
    return results


def report(shapes: list[Shape], results: dict[tuple[str, str], Measurement]) -> None:
    """Print the markdown table, the PASS/FAIL lines of the two targets and a footnote on the memory sampling."""
    print("| shape | mode | time (s) | time ÷ plain | peak MB | peak ÷ capture | captured MB | estimate MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in shapes:
        plain, capture = results[shape.name, "plain"], results[shape.name, "capture"]
        for mode in MODES:
            m = results[shape.name, mode]
            captured = f"{m.captured_bytes / MB:.2f}" if mode != "plain" else "—"
            estimate = f"{m.estimate_bytes / MB:.2f}" if m.estimate_bytes else "—"
            print(
                f"| {shape.name} | {mode} | {m.median_seconds:.3f} | {m.median_seconds / plain.median_seconds:.2f}× "
                f"| {m.peak / MB:.1f} | {m.peak / max(capture.peak, 1):.2f}× | {captured} | {estimate} |"
            )
    small, large = shapes[0].name, shapes[-1].name
    time_ratio = results[small, "capture"].median_seconds / results[small, "plain"].median_seconds
    memory_ratio = results[large, "eager"].peak / max(results[large, "capture"].peak, 1)
    print()
    print(
        f"{'PASS' if time_ratio <= TIME_TARGET else 'FAIL'}: capture time at {small} = {time_ratio:.2f}× plain SDPA "
        f"(target ≤ {TIME_TARGET}×)"
    )
    print(
        f"{'PASS' if memory_ratio >= MEMORY_TARGET else 'FAIL'}: eager peak memory at {large} = {memory_ratio:.1f}× "
        f"capture's (target ≥ {MEMORY_TARGET:.0f}×)"
    )
    bound = max(
        results[s.name, "trace"].peak - results[s.name, "plain"].peak - results[s.name, "trace"].estimate_bytes
        for s in shapes
    )
    print(
        f"{'PASS' if bound <= MEMORY_SLACK else 'FAIL'}: trace peak − (plain peak + estimate) = {bound / MB:.1f} MB at "
        f"most (target ≤ {MEMORY_SLACK / MB:.1f} MB: the estimate bounds what a trace adds)"
    )
    missed = max(max(m.missed_by_sampling) for m in results.values())
    print(f"\nmemory: largest peak missed by 1 ms RSS sampling alone (vs VmHWM) = {missed / MB:.1f} MB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, few repeats: a smoke run for CI")
    parser.add_argument(
        "--full-width", action="store_true", help="LLaVA-1.5-7B widths (CLIP-L/336, 4096-wide LM cut to 2 layers)"
    )
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()  # the vision tower's "sdpa does not support output_attentions"
    if args.full_width:
        size = FULL_WIDTH
        shapes = [Shape("576 img, full width", 336, 14, repeats=1 if args.quick else 3)]
    elif args.quick:
        size = ModelSize(hidden_size=256, num_layers=4)
        shapes = [Shape("576 img", 336, 14, repeats=3), Shape("2.9k seq", 742, 14, repeats=1)]
    else:
        size = ModelSize(hidden_size=512, num_layers=8)
        shapes = [Shape("576 img", 336, 14, repeats=7), Shape("2.9k seq", 742, 14, repeats=5)]
    model_name = "LLaVA-1.5-7B widths" if size == FULL_WIDTH else "tiny LLaVA"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
        f"{model_name}, language model: hidden {size.hidden_size}, {size.num_layers} layers, {size.num_heads} heads "
        f"/ {size.num_kv_heads} KV heads{' (--quick)' if args.quick else ''}"
    )
    with torch.no_grad():
        results = benchmark(shapes, size)
    print()
    report(shapes, results)


if __name__ == "__main__":
    main()
