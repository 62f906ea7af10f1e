"""Cost of every mmviz method in units of one plain forward pass of the same model and sequence.

Run: ``python benchmarks/methods.py`` (a few minutes on 2 idle CPU cores) or ``--quick`` (a smoke run, used by CI).
Prints one markdown table and a PASS/FAIL line; the exit status is 0 either way (a benchmark, not a test).
``--repeats N`` times every method N times (median; the unit F is the median of max(5, N)), for a loaded machine;
``--only WORD …`` runs the rows whose name contains one of the words (the relevancy bound and memory table need
both relevancy rows, so they are skipped when those are left out).

Model: ``mmviz.zoo.tiny_llava`` scaled like ``benchmarks/capture.py`` (a real ``LlavaForConditionalGeneration``,
random weights, real processor): LLaVA-1.5's 336 px canvas with 14 px patches → 576 image tokens, language model
hidden 512, 8 layers, 8 query / 4 key-value heads (``--quick``: 112 px → 64 image tokens, hidden 256, 4 layers).

Units, measured in this process right before the methods:

* **F**: the plain teacher-forced forward over prompt + answer (no grad, the model's SDPA attention), median of 5;
* **F+B**: one forward with a gradient leaf at the image embeddings plus one backward of one answer token's
  log-probability (what one gradient target costs at least).

The interventions (``mmviz.interventions``) are timed the same way: one ablation of 20 image tokens per fill (one clean
forward, which gives the clean scores and the embeddings the token fills edit, and one with the fill; ``blur`` and
``other`` one more for the replacement tokens; ``paint``: the painted image through the processor and the whole
model), one knockout of a 2-layer window, and the knockout curve (one knockout per window of 1 layer).

Every method runs with its defaults on ONE target (the first answer token) except the target-agnostic ones
(attention from the trace, rollout, logit lens), timed once after a warm-up call on a smaller problem. Relevancy is
also run on 4 targets: its marginal cost per extra target, (t₄ − t₁)/3, is compared with F+B (the acceptance
bound "≤ 1 forward + 1 backward per target token").

Integrated Gradients, occlusion and RISE run their batched edited forwards through the language model + head alone
(``ModelRun.edited_forward``: the image features of one clean forward reused). The model confirms that path once
per run (one full forward + one language-model-only forward, compared); that one-time cost is measured and printed
before the table, so the rows are the steady state. IG is also run with the path forced off
(``reuse_image_features=False``: the vision tower runs for every batch row) and the ratio printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

import mmviz
from mmviz.interventions import Ablate, Knockout, knockout_curve
from mmviz.methods import (
    Target,
    attention,
    grad_cam,
    grad_weighted_attention,
    gradient_x_input,
    image_reliance,
    integrated_gradients,
    knockout_map,
    logit_lens,
    occlusion,
    projection,
    relative_attention,
    relevancy,
    rise,
    rollout,
    tam,
)
from mmviz.methods.common import EmbeddingLeaf, gradient_context
from mmviz.zoo import tiny_llava

PROMPT = "What is in the picture? Describe the shapes and colors."
ANSWER = "There is a yellow square above a purple circle."


def build(quick: bool, full_width: bool = False) -> mmviz.Trace:
    if full_width:  # LLaVA-1.5-7B's widths, the language model cut to 2 layers (benchmarks/capture.py's row)
        from capture import full_width_llava

        model, processor = full_width_llava(2)
    else:
        size, hidden, layers = (112, 256, 4) if quick else (336, 512, 8)
        model, processor = tiny_llava(
            image_size=size, patch_size=14, num_layers=layers, num_heads=8, num_kv_heads=4, hidden_size=hidden, seed=0
        )
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    return mmviz.trace(model, processor, image, PROMPT, answer=ANSWER)


def seconds(work: Callable[[], object], repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relevancy_memory(quick: bool) -> None:
    """Peak memory of relevancy on one target at a longer sequence (issue 17), printed as a second table.

    Model: the same tiny LLaVA with 2 layers, 8 query / 4 key-value heads, hidden 512 at 476 px (34×34 = 1,156 image
    tokens, ≈1,200 positions; ``--quick``: 112 px). Peak RSS above the pre-run baseline (``benchmarks/memory.py``'s
    :func:`measured`; torch's allocations are invisible to tracemalloc) of the whole call, larger of 2 runs, and of
    each layer's step ``r ← r + r·Ā_ℓ`` alone (the largest, in a separate run), next to
    :func:`relevancy_transient_bytes`, the stated bound of a step, for the default budget and for a budget that
    forces chunks of 128 query rows (``--quick``: a quarter of the rows). Before issue 17 a step held ≈ 5 H×N×N
    float32 tensors: the call peaked at 359 MB here (240 MB above F+B), 1.6 GB at 2,850 positions (1.3 GB above).
    """
    from memory import MB, measured  # benchmarks/memory.py: peak RSS

    from mmviz.capture.plan import relevancy_rows_per_chunk, relevancy_transient_bytes
    from mmviz.methods.relevancy import AttentionStash
    from mmviz.progress import quiet

    heads, hidden = 8, 512
    model, processor = tiny_llava(
        image_size=112 if quick else 476, patch_size=14, num_layers=2, num_heads=heads, num_kv_heads=4,
        hidden_size=hidden, seed=0,
    )  # fmt: skip
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    trace = mmviz.trace(model, processor, image, PROMPT, answer=ANSWER)
    first, n, head_dim = Target.logprob(trace.answer_start), len(trace.tokens), hidden // heads
    step = AttentionStash.step
    step_peaks: list[int] = []

    def measured_step(self: AttentionStash, layer: int, relevance: torch.Tensor, **options: object) -> torch.Tensor:
        with measured() as result:
            updated = step(self, layer, relevance, **options)  # type: ignore[arg-type]
        step_peaks.append(result.bytes)
        return updated

    print(f"\nrelevancy memory, 1 target: {n} positions, 2 layers, {heads} heads\n")
    print("| budget | rows per chunk | time (s) | call peak MB | largest step peak MB | bound per step MB |")
    print("|---|---:|---:|---:|---:|---:|")
    chunk = min(128, max(1, n // 4))
    budgets = (("default", None), (f"{chunk} rows", relevancy_transient_bytes(heads, n, head_dim, chunk)))
    with quiet():
        for label, budget in budgets:
            relevancy(trace, first, budget_bytes=budget)  # warm-up: one-time caches belong to the baseline
            runs = []
            for _ in range(2):
                with measured() as result:
                    kept = relevancy(trace, first, budget_bytes=budget)
                del kept  # freed after the measured window: a caller holds the outputs
                runs.append(result)
            step_peaks.clear()
            AttentionStash.step = measured_step  # type: ignore[method-assign]
            try:
                relevancy(trace, first, budget_bytes=budget)
            finally:
                AttentionStash.step = step  # type: ignore[method-assign]
            rows = relevancy_rows_per_chunk(heads, n, head_dim, budget)
            bound = relevancy_transient_bytes(heads, n, head_dim, rows)
            print(
                f"| {label} | {rows} | {min(r.seconds for r in runs):.2f} | {max(r.bytes for r in runs) / MB:.1f} "
                f"| {max(step_peaks) / MB:.1f} | {bound / MB:.1f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model and image: a smoke run")
    parser.add_argument(
        "--full-width",
        action="store_true",
        help="LLaVA-1.5-7B widths cut to 2 layers; the methods of a few passes, IG with 4 steps (tens of minutes)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="time every method this many times (median)")
    parser.add_argument("--only", nargs="+", metavar="WORD", help="only the rows whose name contains a WORD")
    args = parser.parse_args()
    torch.manual_seed(0)
    trace = build(args.quick, args.full_width)
    run = trace.run
    first = Target.logprob(trace.answer_start)

    def plain() -> None:
        with torch.no_grad():
            run.forward(first_logit=trace.answer_start - 1)

    def forward_backward() -> None:
        leaf = EmbeddingLeaf()
        with gradient_context(run):
            logits = run.forward(edit=leaf, first_logit=first.first_logit)
            first(logits, run.input_ids, first.first_logit).sum().backward()

    plain()
    unit = seconds(plain, repeats=max(5, args.repeats))
    forward_backward()
    unit_fb = seconds(forward_backward, repeats=max(3, args.repeats))
    four = [Target.logprob(p) for p in range(trace.answer_start, trace.answer_start + 4)]
    # The same trace with a run that never reuses image features: every batched forward runs the vision tower.
    full_forwards = dataclasses.replace(trace, run=dataclasses.replace(run, reuse_image_features=False), maps={})
    steps = 4 if args.full_width else 32
    ig_fast = f"integrated gradients ({steps} steps)"
    ig_full = f"integrated gradients ({steps} steps), vision tower per row"

    def confirm_fast_path() -> None:  # the first edited forward of a run confirms (or refuses) the fast path
        with torch.no_grad():
            run.edited_forward(batch=1, edit=lambda embeds: embeds, first_logit=first.first_logit)

    confirmation = seconds(confirm_fast_path)
    chosen = trace.image_positions[100:120] if len(trace.image_positions) > 120 else trace.image_positions[:20]
    other = Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    methods: list[tuple[str, str, Callable[[], object]]] = [
        ("attention (from the trace)", "0 (captured)", lambda: attention(trace, mask_sinks=True)),
        ("rollout", "1 F", lambda: rollout(trace)),
        ("logit lens (all positions, top-5)", "1 F + lens", lambda: logit_lens(trace)),
        ("projection (PCA)", "1 F + PCA", lambda: projection(trace)),
        ("relevancy, 1 target", "1 F + 1 B", lambda: relevancy(trace, first)),
        ("relevancy, 4 targets", "1 F + 4 B", lambda: relevancy(trace, four)),
        ("Grad-CAM (all layers)", "1 F + 1 B", lambda: grad_cam(trace, first)),
        ("gradient × input", "1 F + 1 B", lambda: gradient_x_input(trace, first)),
        ("image reliance (blur)", "2 F", lambda: image_reliance(dataclasses.replace(trace, maps={}), "blur")),
        ("image reliance (mean)", "2 F", lambda: image_reliance(dataclasses.replace(trace, maps={}), "mean")),
        ("TAM", "1 F", lambda: tam(trace, first)),
        ("relative attention", "1 traced F", lambda: relative_attention(trace)),
        ("gradient-weighted attention (1 layer)", "1 F + 1 B", lambda: grad_weighted_attention(trace, first)),
        (ig_fast, f"{steps} (F + B) + 3 F", lambda: integrated_gradients(trace, first, steps=steps)),
        (ig_full, f"{steps} (F + B) + 3 F", lambda: integrated_gradients(full_forwards, first, steps=steps)),
        ("occlusion (2×2 windows)", "#windows F", lambda: occlusion(trace, first)),
        ("RISE (256 masks)", "256 F", lambda: rise(trace, first, n_masks=64 if args.quick else 256)),
        ("knockout map (2×2 windows)", "#windows F", lambda: knockout_map(trace, first)),
        ("ablation, zero fill (20 tokens)", "2 F", lambda: Ablate(chosen, "zero").apply(trace)),
        ("ablation, blur fill (20 tokens)", "3 F", lambda: Ablate(chosen, "blur").apply(trace)),
        ("ablation, other image (20 tokens)", "3 F", lambda: Ablate(chosen, "other", other_image=other).apply(trace)),
        ("ablation, paint (20 tokens' boxes)", "2 F + processor", lambda: Ablate(chosen, "paint").apply(trace)),
        ("knockout (2-layer window)", "2 F", lambda: Knockout(range(0, 2)).apply(trace)),
        (
            f"knockout curve (width 1, {trace.num_layers} windows)",
            f"{2 * trace.num_layers} F",
            lambda: knockout_curve(trace, 1),
        ),
    ]
    if args.full_width:  # hundreds of forwards each at this width: the few-pass methods only
        methods = [m for m in methods if not m[0].startswith(("projection", "occlusion", "RISE", "knockout"))]
    if args.only:
        methods = [m for m in methods if any(word in m[0] for word in args.only)]
    print(f"image tokens: {len(trace.image_positions)}, sequence: {len(trace.tokens)}, layers: {trace.num_layers}")
    print(f"unit F = {unit * 1000:.1f} ms; F+B = {unit_fb * 1000:.1f} ms ({unit_fb / unit:.2f} F)")
    print(
        f"edited forwards: {run.edited_path} path ({run.edited_path_reason}), confirmed once per run in "
        f"{confirmation / unit:.1f} F\n"
    )
    print("| method | passes (theory) | time (s) | cost (F) |")
    print("|---|---|---:|---:|")
    timings: dict[str, float] = {}
    for name, passes, work in methods:
        if args.repeats > 1:
            work()  # warm-up: one-time costs (the fast path's confirmation, first-call allocations) are not the row's
        timings[name] = seconds(work, repeats=args.repeats)
        print(f"| {name} | {passes} | {timings[name]:.2f} | {timings[name] / unit:.1f} |", flush=True)
    if ig_full in timings and ig_fast in timings:
        ig_ratio = timings[ig_full] / timings[ig_fast]
        print(
            f"\nIntegrated Gradients with the vision tower run per batch row (fast path off) / with the image "
            f"features reused (on): {ig_ratio:.2f}×"
        )
    if not {"relevancy, 4 targets", "relevancy, 1 target"} <= set(timings):
        return
    marginal = (timings["relevancy, 4 targets"] - timings["relevancy, 1 target"]) / 3
    verdict = "PASS" if marginal <= unit_fb * 1.1 else "FAIL"
    print(
        f"\n{verdict}: relevancy costs {marginal / unit:.2f} F per extra target; one forward + one backward is "
        f"{unit_fb / unit:.2f} F (bound: ≤ 1 F + 1 B, 10% timing tolerance)"
    )
    if not args.full_width:
        relevancy_memory(args.quick)


if __name__ == "__main__":
    main()
