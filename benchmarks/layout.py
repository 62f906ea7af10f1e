"""Measured layout cost: vision-tower passes and seconds of ``mmviz.adapters.measure_layout`` on the CPU.

Run: ``python benchmarks/layout.py`` (LLaVA-1.5's shape: a 336-px canvas, 14-px patches, 576 image tokens, a random
tiny tower via ``mmviz.zoo.tiny_llava(image_size=336)``) or ``--quick`` (a 56-px canvas, 16 tokens: a smoke run).
Each row measures a fresh probe (cache off); times are the median of 3 runs (``time.perf_counter``). Columns:
forward / backward passes through the vision tower (the language model never runs), processor calls (constant and
ramp images), seconds, and the worst offset between the adapter's boxes and the measured ones (``verify``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from mmviz.adapters import adapter_for, measure_layout, verify
from mmviz.zoo import tiny_llava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 56-px canvas: a smoke run for CI")
    args = parser.parse_args()
    torch.set_num_threads(2)
    image_size = 56 if args.quick else 336
    model, processor = tiny_llava(image_size=image_size)
    adapter = adapter_for(model, processor)
    print("| image | tokens | forward | backward | processor calls | seconds | worst offset (px) |")
    print("|---|---|---|---|---|---|---|")
    for size in [(640, 480), (336, 336)] if not args.quick else [(200, 120)]:
        image = Image.new("RGB", size, "gray")
        seconds, measured = [], None
        for _ in range(1 if args.quick else 3):
            start = time.perf_counter()
            measured = measure_layout(adapter, [image], cache=False)
            seconds.append(time.perf_counter() - start)
        assert measured is not None
        report = verify(model, processor, image)
        passes = measured.passes
        print(
            f"| {size[0]}×{size[1]} | {len(measured)} | {passes['forward']} | {passes['backward']} | "
            f"{passes['processor']} | {statistics.median(seconds):.2f} | {report.worst:.2f} |"
        )


if __name__ == "__main__":
    main()
