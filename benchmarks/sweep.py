"""Sweep throughput: examples per second, local vs Ray on this machine's CPUs, and the machinery's overhead.

Run: ``python benchmarks/sweep.py`` (a few minutes on 2 CPU cores) or ``--quick``. The shipped shapes VLM on held-out
scenes (:func:`mmviz.zoo.shapes.sweep_examples`), answers given (teacher-forced, no generation), in one process:

* ``bare trace()``: a plain loop of ``mmviz.trace`` calls (the baseline);
* ``sweep, no statistics``: ``mmviz.sweep(stats=[])`` on the same examples: the machinery alone (examples in,
  thumbnails, Parquet parts, progress) — its overhead over the baseline is the target (≤ 10%);
* ``bare trace() + statistics`` and ``sweep + statistics``: the same with image share, lens rank and pointing game;
* ``sweep on Ray``: ``engine="ray"`` with an actor pool of 2 after ``ray.init(num_cpus=2)``, timed from the call
  (actor start-up and model loading included) and, separately, that start-up.

Each local mode runs three times round-robin after a warm-up; the table shows the fastest run. Other load on the machine
shows up directly in the times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mmviz
from mmviz.progress import quiet
from mmviz.sweeps import STATISTICS, Example, examples_from
from mmviz.zoo.shapes import sweep_examples

STATS = ["image_share", "lens_rank", "pointing_game"]
TARGET = 0.10


def bare(model, processor, examples: list[Example], stats: list[str]) -> None:
    with quiet():
        for example in examples:
            traced = mmviz.trace(model, processor, example.image, example.prompt, answer=example.answer)
            for name in stats:
                STATISTICS[name].function(traced, example)


def swept(model, processor, rows, stats: list[str], **options) -> None:
    with tempfile.TemporaryDirectory() as out, quiet():
        mmviz.sweep(model, processor, rows, stats=stats, out=Path(out) / "run", **options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few examples, no Ray: a smoke run for CI")
    args = parser.parse_args(argv)
    count = 12 if args.quick else 120
    model, processor = mmviz.zoo.load("shapes-vlm")
    rows = sweep_examples(count)
    examples = list(examples_from(rows))
    modes = {
        "bare trace()": lambda: bare(model, processor, examples, []),
        "sweep, no statistics": lambda: swept(model, processor, rows, []),
        "bare trace() + statistics": lambda: bare(model, processor, examples, STATS),
        "sweep + statistics": lambda: swept(model, processor, rows, STATS),
    }
    bare(model, processor, examples[:4], STATS)  # warm-up (and pyarrow's one-time Parquet set-up, ~0.25 s)
    swept(model, processor, rows[:4], STATS)
    seconds: dict[str, float] = {}
    for _ in range(3):
        for name, run in modes.items():
            start = time.perf_counter()
            run()
            seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - start)
    ray_note = ""
    if not args.quick:
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_note = f"; ray.init {time.perf_counter() - start:.1f} s (not in the row)"
        start = time.perf_counter()
        swept(model, processor, rows, STATS, engine="ray", actors=2)
        seconds["sweep + statistics on Ray (2 actors)"] = time.perf_counter() - start
        ray.shutdown()
    print(f"shapes-vlm, {count} held-out scenes, answers given; statistics: {STATS}{ray_note}")
    print("| mode | seconds | examples / s | ÷ bare |")
    print("|---|---:|---:|---:|")
    for name, value in seconds.items():
        with_stats = "statistics" in name and "no statistics" not in name
        base = seconds["bare trace() + statistics" if with_stats else "bare trace()"]
        print(f"| {name} | {value:.2f} | {count / value:.1f} | {value / base:.3f} |")
    overhead = seconds["sweep, no statistics"] / seconds["bare trace()"] - 1
    print(f"\n{'PASS' if overhead <= TARGET else 'FAIL'}: sweep machinery overhead {overhead:+.1%} over bare trace() "
          f"(target ≤ {TARGET:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
