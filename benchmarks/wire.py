"""Bytes on the wire for a LLaVA-1.5-7B-shaped trace: mmviz's binary envelopes vs BertViz-style JSON.

Run: ``python benchmarks/wire.py``. Prints one table; everything is measured in this process.
Shape: 32 layers × 32 heads × 64 text rows × 576 image tokens (LLaVA-1.5-7B with a short prompt + answer).
"""

from __future__ import annotations

import json
import time

import numpy as np

from mmviz import wire

LAYERS, HEADS, ROWS, PATCHES = 32, 32, 64, 576


def main() -> None:
    rng = np.random.default_rng(0)
    attention = rng.dirichlet(np.full(PATCHES, 0.3), size=(LAYERS, HEADS, ROWS)).astype(np.float32)

    start = time.perf_counter()
    heads = wire.encode(attention, scale_dims=3)
    mean = wire.encode(attention.mean(axis=1), scale_dims=2)
    encode_seconds = time.perf_counter() - start

    # BertViz ships nested JSON lists of floats; measure one layer and scale (the whole would be ~1 GB of text).
    one_layer_json = len(json.dumps(attention[0].tolist()))
    json_bytes = one_layer_json * LAYERS
    rows = [
        ("BertViz-style JSON, all heads", json_bytes, 1.0),
        ("float32 binary, all heads", attention.nbytes, json_bytes / attention.nbytes),
        ("mmviz uint8 envelope, all heads", wire.nbytes(heads), json_bytes / wire.nbytes(heads)),
        ("mmviz uint8 envelope, head mean", wire.nbytes(mean), json_bytes / wire.nbytes(mean)),
    ]
    decoded = wire.decode(heads)
    step = (attention.max(-1) - attention.min(-1)) / 255
    print(f"trace shape {LAYERS}×{HEADS}×{ROWS}×{PATCHES} = {attention.size:,} values")
    print(f"{'payload':36s} {'bytes':>14s} {'JSON / this':>12s}")
    for name, size, ratio in rows:
        print(f"{name:36s} {size:>14,d} {ratio:>11.1f}×")
    print(f"encode time (heads + mean): {encode_seconds:.2f} s")
    print(f"max error / quantisation step: {(np.abs(decoded - attention).max(-1) / step).max():.3f} (≤ 0.5 expected)")


if __name__ == "__main__":
    main()
