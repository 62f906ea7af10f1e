"""Peak memory: what one block of code adds to this process, and ``mmviz.trace`` against its capture estimate.

Run: ``python benchmarks/memory.py`` (about a minute on 2 CPU cores) prints one markdown table: for several capture
plans on a random-weight LLaVA, the peak resident memory that ``mmviz.trace`` adds above the pre-run baseline, next
to the peak of the model's own work on the same sequence (its ``generate`` when the answer is generated, and the
same teacher-forced forward with nothing recorded), the sum of ``CapturePlan.estimate`` (what the budget is checked
against) and the bytes the returned trace keeps. The estimate covers what mmviz adds, so the claim is
``trace peak ≤ own peak + estimate`` (+ :data:`SLACK` for allocator rounding and the processor). ``--json`` prints the
rows as JSON; ``tests/test_memory.py`` runs that and holds every row to the claim. ``benchmarks/capture.py`` uses
:func:`measured` for its peaks.

Measuring: before a run, ``gc.collect()`` and glibc's ``malloc_trim(0)`` (freed heap pages of the previous run go
back to the OS, so the next run's allocations show up in RSS again), then the baseline RSS is read. During the run a
background thread reads ``/proc/self/statm`` every ~1 ms and keeps the maximum; where the kernel allows it, the
maximum is cross-checked against its exact high-water mark (``VmHWM`` in ``/proc/self/status``, reset by writing
``5`` to ``/proc/self/clear_refs``) and the larger is used. The peak is measured while the run's outputs are still
alive, since a caller holds them. Models are built, and every case is run once, before anything is measured, so
weights and one-time caches are part of the baseline. MB = 10⁶ bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1e6
SLACK = 16 * 2**20
"""Allowed above the model's own peak + the estimate: allocator rounding, the processor's arrays, small tensors."""


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """``gc.collect()``, then glibc's ``malloc_trim(0)``: give freed heap pages back to the OS (no-op elsewhere)."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def rss_bytes(fd: int) -> int:
    """Resident set size of this process, from the already open ``/proc/self/statm``."""
    return int(os.pread(fd, 128, 0).split()[1]) * PAGE_SIZE


def reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``); False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        return False
    return True


def high_water_mark() -> int:
    """``VmHWM`` (peak RSS since the last reset) in bytes."""
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


class RssSampler:
    """Background thread reading the RSS every ``interval`` seconds and keeping the maximum.

    Example:
        >>> with RssSampler() as sampler:
        ...     work()                                  # doctest: +SKIP
        >>> sampler.peak - sampler.baseline            # doctest: +SKIP
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.fd = os.open("/proc/self/statm", os.O_RDONLY)
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.fd))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = rss_bytes(self.fd)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.fd))
        os.close(self.fd)


@dataclass
class Peak:
    """One measured block: wall time, peak RSS above the baseline, and how much 1 ms sampling alone missed."""

    seconds: float = 0.0
    bytes: int = 0
    missed_by_sampling: int = 0


@contextlib.contextmanager
def measured() -> Iterator[Peak]:
    """Time the block and measure its peak RSS above the baseline taken just before it (filled in on exit).

    Example:
        >>> with measured() as peak:
        ...     kept = np.ones(10**7)
        >>> peak.bytes > 79e6
        True
    """
    result = Peak()
    release_free_memory()
    exact = reset_high_water_mark()
    with RssSampler() as sampler:
        start = time.perf_counter()
        yield result
        result.seconds = time.perf_counter() - start
    top = max(sampler.peak, high_water_mark()) if exact else sampler.peak
    result.bytes = top - sampler.baseline
    result.missed_by_sampling = top - sampler.peak


# -- mmviz.trace against its estimate ---------------------------------------------------------------------------
PROMPT = "What is in the picture? Describe the shapes and colors."
ANSWER = "There is a yellow square above a purple circle on a white background."


@dataclass(frozen=True)
class TraceCase:
    """One capture plan on one model shape."""

    name: str
    image_size: int
    plan: dict[str, Any]
    generate: int = 0  # > 0: let the model generate this many tokens instead of giving the answer
    model: dict[str, Any] = field(default_factory=dict)


CASES = (
    TraceCase("text rows (default), 2.9k positions", 742, {}),
    TraceCase("every row, 640 positions", 336, {"queries": "all"}),
    TraceCase("every row, head mean, 1.3k positions", 504, {"queries": "all", "head_mean": True}),
    TraceCase(
        "every row + hidden states + vision attention, generated",
        336,
        {"queries": "all", "hidden_states": True, "vision_attention": True},
        generate=12,
    ),
)
MODEL = {"hidden_size": 256, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4}


def trace_case(case: TraceCase, runs: int = 2) -> dict[str, Any]:
    """Measure ``mmviz.trace`` for ``case`` and the model's own work on the same sequence (each warmed up once,
    then the largest peak of ``runs`` runs)."""
    import mmviz
    from mmviz.adapters import adapter_for
    from mmviz.capture import CapturePlan
    from mmviz.progress import quiet
    from mmviz.zoo import tiny_llava

    model, processor = tiny_llava(image_size=case.image_size, patch_size=14, **{**MODEL, **case.model})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    plan = CapturePlan(**case.plan)
    answer = None if case.generate else ANSWER

    def trace() -> Any:
        with quiet():  # no progress bars in the measured runs
            return mmviz.trace(
                model, processor, image, PROMPT, answer=answer, max_new_tokens=case.generate or 1, capture=plan
            )

    kept = trace()
    run, n_answer = kept.run, len(kept.tokens) - kept.answer_start
    prompt_ids = run.input_ids[:, : kept.answer_start]

    def own() -> Any:  # what the user's model costs by itself on this sequence
        with torch.no_grad():
            if case.generate:
                model.generate(input_ids=prompt_ids, **run.inputs, max_new_tokens=case.generate, do_sample=False)
            return model(
                input_ids=run.input_ids,
                attention_mask=torch.ones_like(run.input_ids),
                use_cache=False,
                logits_to_keep=n_answer + 1,
                **run.inputs,
            )

    own()
    del kept
    peaks: dict[str, list[int]] = {"trace": [], "own": []}
    for _ in range(runs):
        for name, work in (("own", own), ("trace", trace)):
            with measured() as peak:
                kept = work()
            peaks[name].append(peak.bytes)
            del kept
    kept = trace()
    parts = plan.estimate(
        adapter_for(model, processor).model_shape(1), len(kept.tokens), len(kept.query_positions), n_logits=n_answer + 1
    )
    arrays = (kept.attention_rows, kept.hidden_states, kept.vision_attention)
    return {
        "case": case.name,
        "positions": len(kept.tokens),
        "peak": max(peaks["trace"]),
        "own": max(peaks["own"]),
        "estimate": sum(parts.values()),
        "parts": parts,
        "kept": sum(array.nbytes for array in arrays if array is not None),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (for tests/test_memory.py)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    rows = [trace_case(case) for case in CASES]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; tiny LLaVA, language model {MODEL}")
    print("| plan | positions | trace keeps MB | estimate MB | model's own peak MB | trace peak MB | trace − own MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['case']} | {row['positions']} | {row['kept'] / MB:.1f} | {row['estimate'] / MB:.1f} "
            f"| {row['own'] / MB:.1f} | {row['peak'] / MB:.1f} | {(row['peak'] - row['own']) / MB:.1f} |"
        )
    worst = max(row["peak"] - row["own"] - row["estimate"] for row in rows)
    print(
        f"\n{'PASS' if worst <= SLACK else 'FAIL'}: largest trace peak − (own peak + estimate) = {worst / MB:.1f} MB "
        f"(≤ {SLACK / MB:.1f})"
    )


if __name__ == "__main__":
    main()
