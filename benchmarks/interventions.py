"""The shapes-world check of "ask the model, not the map": ablating the queried object's patches must hurt the
answer, ablating as many background patches must not.

Run: ``python benchmarks/interventions.py`` (100 held-out scenes, a few minutes on 2 CPU cores) or ``--quick``
(10 scenes). Prints one markdown table and writes it with the per-scene numbers to ``--out`` (JSON); exit status 0
either way (a benchmark, not a test).

Model: ``mmviz.zoo.load("shapes-vlm")``. Scenes: seeds 300 … 399 (held out: below
``mmviz.zoo.shapes.TRAIN_SEED_START``), one colour question each (the first). For every fill (mean, zero, blur) and
selection rule:

* ``cover≥20%``: tokens whose box is at least 20 % covered by the object's mask;
* ``cover>0``: tokens the mask touches at all;
* ``cover≥20%+border``: the 20 % tokens and their 8 grid neighbours;
* ``cover>0+border2``: every token the mask touches and the grid cells up to 2 away;
* ``all image tokens``: the ceiling (no background left to compare: its column reads 0 %);

the object's tokens are ablated (``mmviz.interventions.Ablate``) and, separately, as many random tokens with 0 %
object (seeded per scene). Reported: the share of scenes whose answer log p drops by ≥ 2 nats (criterion: ≥ 90 %
for the object, ≤ 5 % for the background) and the median Δ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import mmviz
from mmviz.interventions import Ablate, coverage_of, object_patches
from mmviz.zoo import scene
from mmviz.zoo.shapes import TRAIN_SEED_START

DROP = -2.0
FILLS = ("mean", "zero", "blur")
SELECTIONS = {
    "cover≥20%": {"coverage": 0.2, "border": 0},
    "cover>0": {"coverage": 0.0, "border": 0},
    "cover≥20%+border": {"coverage": 0.2, "border": 1},
    "cover>0+border2": {"coverage": 0.0, "border": 2},
}
CEILING = "all image tokens"
"""Not a selection: every image token ablated, the most any selection can do (no background is left to compare)."""


def colour_question(s):  # the first question that asks for a colour
    return next((q for q in s.questions if q.text.startswith("What color")), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 scenes instead of 100")
    parser.add_argument("--first", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))  # beside this script
    args = parser.parse_args()
    count = 10 if args.quick else 100
    seeds = range(args.first, args.first + count)
    assert seeds[-1] < TRAIN_SEED_START, "held-out scenes only"
    model, processor = mmviz.zoo.load("shapes-vlm")
    rows: list[dict] = []
    started = time.perf_counter()
    for seed in seeds:
        s = scene(seed)
        q = colour_question(s)
        if q is None:
            continue
        trace = mmviz.trace(model, processor, s.image, q.text, answer=q.answer)
        mask = s.objects[q.object_index].mask
        background = np.asarray(trace.image_positions)[coverage_of(trace, mask) == 0]
        rng = np.random.default_rng(seed)
        row: dict = {"seed": seed, "question": q.text, "answer": q.answer}
        for name, rule in SELECTIONS.items():
            on_object = object_patches(trace, mask, **rule)
            size = min(len(on_object), len(background))
            random_bg = rng.choice(background, size=size, replace=False) if size else background[:0]
            for fill in FILLS:
                # One answer token on the shapes model; the sum covers answers of several tokens.
                hit = float(Ablate(on_object, fill).apply(trace).delta.sum()) if len(on_object) else 0.0
                miss = float(Ablate(random_bg, fill).apply(trace).delta.sum()) if size else 0.0
                row[f"{name}|{fill}"] = {"n": len(on_object), "object": hit, "background": miss}
        for fill in FILLS:
            everything = float(Ablate(trace.image_positions, fill).apply(trace).delta.sum())
            row[f"{CEILING}|{fill}"] = {"n": len(trace.image_positions), "object": everything, "background": 0.0}
        rows.append(row)
    elapsed = time.perf_counter() - started
    table = [
        f"Shapes world, {len(rows)} held-out scenes (seeds {seeds[0]}–{seeds[-1]}), one colour question each; "
        f"share of scenes with Δ log p(answer) ≤ {DROP} nats ({elapsed:.0f} s)",
        "",
        "| selection | fill | tokens (median) | object: share ≤ −2 | object: median Δ | background: share ≤ −2 "
        "| pass |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for name in [*SELECTIONS, CEILING]:
        for fill in FILLS:
            cells = [row[f"{name}|{fill}"] for row in rows]
            hit = float(np.mean([c["object"] <= DROP for c in cells]))
            miss = float(np.mean([c["background"] <= DROP for c in cells]))
            median = statistics.median(c["object"] for c in cells)
            tokens = statistics.median(c["n"] for c in cells)
            ok = hit >= 0.9 and miss <= 0.05
            summary[f"{name}|{fill}"] = {"object_share": hit, "background_share": miss, "object_median": median}
            verdict = "PASS" if ok else "fail"
            table.append(f"| {name} | {fill} | {tokens:.0f} | {hit:.0%} | {median:+.2f} | {miss:.0%} | {verdict} |")
    print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "scenes": rows}, indent=1, ensure_ascii=False))
    print(f"\nper-scene numbers: {args.out}")


if __name__ == "__main__":
    main()
