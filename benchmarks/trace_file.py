"""Trace files: size against the trace's float32 arrays, save and load times, and what a layer switch reads.

Run: ``python benchmarks/trace_file.py`` (about half a minute) or ``--quick``. The trace is ``benchmarks/widget.py``'s
LLaVA-1.5-7B-shaped synthetic trace: 32 layers × 32 heads × 64 text rows × (576 image + 64 text) positions of
softmax attention. Everything runs in this process; times are the median of 3 runs (``time.perf_counter``), the
file's page cache warm (a second read of the same file) — a cold disk adds its read time to the first layer.

* float32: ``attention_rows.nbytes`` (what the trace holds in memory; maps and layout are small beside it);
* ``.mmviz``: one zip (deflate level 1); directory: the same members unpacked (safetensors memory-mapped directly);
* open: ``mmviz.load`` (sidecar, safetensors header, layout, images; no attention read);
* one layer: ``trace.attention(layer=l)`` on the loaded trace, what the widget's layer switch asks for, with the
  bytes it read; all layers: ``np.asarray(trace.attention_rows)``;
* error: the largest |loaded − original| against the stated bound (half a quantisation step of each row).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from widget import FULL, QUICK, synthetic_trace  # benchmarks/widget.py

import mmviz

MB = 1e6
TARGET = 0.25  # file size ÷ float32 arrays, at most


def timed(work: Any, repeats: int = 3) -> tuple[float, Any]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small trace: a smoke run for CI")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    trace = synthetic_trace(shape["layers"], shape["heads"], shape["text"], shape["grid"])
    rows = trace.attention_rows
    print(f"trace: attention rows {rows.shape} float32 = {rows.nbytes / MB:.1f} MB")
    print("| form | file MB | ÷ float32 | save (s) | open (s) | one layer (ms) | one layer read MB | all layers (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    layer = shape["layers"] // 2
    with tempfile.TemporaryDirectory() as scratch:
        for form, name in (("one .mmviz zip", "trace.mmviz"), ("directory", "trace")):
            path = Path(scratch) / name
            save_seconds, _ = timed(lambda path=path: trace.save(path))
            open_seconds, loaded = timed(lambda path=path: mmviz.load(path))
            before = loaded.attention_rows.bytes_read
            layer_seconds, _ = timed(lambda loaded=loaded: loaded.attention(layer=layer), repeats=1)
            layer_bytes = loaded.attention_rows.bytes_read - before
            all_seconds, values = timed(lambda loaded=loaded: np.asarray(loaded.attention_rows), repeats=1)
            ratios[form] = size(path) / rows.nbytes
            print(
                f"| {form} | {size(path) / MB:.1f} | {ratios[form]:.3f} | {save_seconds:.2f} | {open_seconds:.3f} "
                f"| {layer_seconds * 1e3:.1f} | {layer_bytes / MB:.2f} | {all_seconds:.2f} |"
            )
    step = (rows.max(-1, keepdims=True) - rows.min(-1, keepdims=True)) / 255
    error = np.abs(values - rows)
    worst = float((error / (step / 2 + 1e-12)).max())
    print(f"\nlargest error {error.max():.2e}; largest error ÷ half a step {worst:.3f} (≤ 1 by construction)")
    ratio = ratios["one .mmviz zip"]
    print(f"{'PASS' if ratio <= TARGET else 'FAIL'}: the .mmviz file is {ratio:.3f} of the float32 arrays "
          f"(target ≤ {TARGET})")  # fmt: skip


if __name__ == "__main__":
    main()
