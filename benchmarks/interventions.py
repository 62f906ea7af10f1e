"""The shapes-world check of "ask the model, not the map": ablating the queried object's patches must hurt the
answer, ablating as many background patches must not.

Run: ``python benchmarks/interventions.py`` (100 held-out scenes; with ``--map`` 27 minutes on 2 shared, loaded
CPU cores) or ``--quick`` (10 scenes). Prints one markdown table and writes it with the per-scene numbers to
``--out`` (JSON); exit status 0 either way (a benchmark, not a test).

Model: ``mmviz.zoo.load("shapes-vlm")``. Scenes: seeds 300 … 399 (held out: below
``mmviz.zoo.shapes.TRAIN_SEED_START``), one colour question each (the first). Fills:

* token fills at the language model's input: ``mean``, ``zero``, ``blur``, and ``other`` (the tokens of another
  held-out scene, drawn at random per scene, at the same positions);
* pixel fills before the vision tower (``paint``: the tokens' boxes painted, the image processed again and the whole
  model run): with the image's mean colour (the library's ``fill="paint"``), mid grey or the blurred image's pixels,
  and with the mean colour on boxes widened by a quarter or half a box on every side (``margin=0.25``, ``0.5``).

Selection rules:

* ``cover≥20%``: tokens whose box is at least 20 % covered by the object's mask;
* ``cover>0``: tokens the mask touches at all;
* ``cover≥20%+border``: the 20 % tokens and their 8 grid neighbours;
* ``cover>0+border2``: every token the mask touches and the grid cells up to 2 away;
* ``top of RISE`` (``--map``): the top tokens of the best map of the faithfulness table (RISE, zero baseline, 256
  masks), as many as ``cover≥20%+border`` chose (what "top k%" of that map selects in the widget);
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
from mmviz.methods import rise
from mmviz.methods.ablation import ablate_many
from mmviz.zoo import scene
from mmviz.zoo.shapes import TRAIN_SEED_START

DROP = -2.0
FILLS: dict[str, dict] = {
    "mean": {"baseline": "mean"},
    "zero": {"baseline": "zero"},
    "blur": {"baseline": "blur"},
    "other": {"baseline": "other"},  # other_image: a random other held-out scene, chosen per scene
    "paint": {"baseline": "paint"},  # the library's fill="paint": the image's mean colour, no margin
    "paint, gray": {"baseline": "paint", "colour": "gray"},
    "paint, blurred pixels": {"baseline": "paint", "colour": "blur"},
    "paint, margin 0.25": {"baseline": "paint", "margin": 0.25},
    "paint, margin 0.5": {"baseline": "paint", "margin": 0.5},
}
SELECTIONS = {
    "cover≥20%": {"coverage": 0.2, "border": 0},
    "cover>0": {"coverage": 0.0, "border": 0},
    "cover≥20%+border": {"coverage": 0.2, "border": 1},
    "cover>0+border2": {"coverage": 0.0, "border": 2},
}
VARIANTS = ("blur", "paint, gray", "paint, blurred pixels", "paint, margin 0.25", "paint, margin 0.5")
"""Run only for the widget's selections (``cover≥20%+border``, which is ``object_patches``' default, and the top of
the map) and the ceiling: the other selection rules get the remaining fills (2 cores: about half the time)."""
WIDGET_SELECTION = "cover≥20%+border"
TOP_MAP = "top of RISE (zero)"
CEILING = "all image tokens"
"""Not a selection: every image token ablated, the most any selection can do (no background is left to compare)."""


def colour_question(s):  # the first question that asks for a colour
    return next((q for q in s.questions if q.text.startswith("What color")), None)


def ablated(trace: mmviz.Trace, jobs: list[tuple[np.ndarray, dict]], other) -> list[float]:
    """Δ log p(answer) for each ``(positions, fill options)`` job, all through one ``ablate_many`` call (one clean
    forward, the token fills batched): one answer token on the shapes model; the sum covers several."""
    requests = [
        {"positions": list(positions), **options, **({"other_image": other} if options["baseline"] == "other" else {})}
        for positions, options in jobs
        if len(positions)
    ]
    effects = iter(ablate_many(trace, requests))
    return [float(next(effects).delta.sum()) if len(positions) else 0.0 for positions, _ in jobs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 scenes instead of 100")
    parser.add_argument("--first", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))  # beside this script
    parser.add_argument("--map", action="store_true", help="also select the top of RISE's map (≈1 s per scene)")
    args = parser.parse_args()
    count = 10 if args.quick else 100
    seeds = range(args.first, args.first + count)
    assert seeds[-1] < TRAIN_SEED_START, "held-out scenes only"
    model, processor = mmviz.zoo.load("shapes-vlm")
    rows: list[dict] = []
    selections = [*SELECTIONS, *([TOP_MAP] if args.map else [])]
    started = time.perf_counter()
    for seed in seeds:
        s = scene(seed)
        q = colour_question(s)
        if q is None:
            continue
        trace = mmviz.trace(model, processor, s.image, q.text, answer=q.answer)
        mask = s.objects[q.object_index].mask
        columns = np.asarray(trace.image_positions)
        background = columns[coverage_of(trace, mask) == 0]
        rng = np.random.default_rng(seed)
        other_seed = int(rng.choice([other for other in seeds if other != seed]))
        other = scene(other_seed).image
        row: dict = {"seed": seed, "question": q.text, "answer": q.answer, "other": other_seed}

        chosen = {name: object_patches(trace, mask, **rule) for name, rule in SELECTIONS.items()}
        if args.map:
            values = rise(trace, trace.answer_start, baseline="zero", n_masks=256).values.reshape(-1)
            size = len(chosen[WIDGET_SELECTION])
            chosen[TOP_MAP] = columns[np.argsort(-values, kind="stable")[:size]]
        jobs: list[tuple[np.ndarray, dict]] = []
        cells: list[tuple[str, dict]] = []
        for name, on_object in chosen.items():
            size = min(len(on_object), len(background))
            random_bg = rng.choice(background, size=size, replace=False) if size else background[:0]
            for fill, options in FILLS.items():
                if fill in VARIANTS and name not in (WIDGET_SELECTION, TOP_MAP):
                    continue
                jobs += [(on_object, options), (random_bg, options)]
                cells.append((f"{name}|{fill}", {"n": len(on_object)}))
                if name == TOP_MAP:
                    cells[-1][1]["on_object"] = float(np.isin(on_object, chosen["cover>0"]).mean())
        for fill, options in FILLS.items():
            jobs += [(columns, options), (columns[:0], options)]
            cells.append((f"{CEILING}|{fill}", {"n": len(columns)}))
        deltas = ablated(trace, jobs, other)
        for index, (key, cell) in enumerate(cells):
            row[key] = {**cell, "object": deltas[2 * index], "background": deltas[2 * index + 1]}
        rows.append(row)
        print(f"scene {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    # The library's Ablate gives the same numbers as the method it calls (checked on the last scene).
    for fill in ("zero", "paint"):
        batched = ablated(trace, [(columns[:5], FILLS[fill]), (columns[:3], FILLS["mean"])], None)[0]
        assert abs(Ablate(columns[:5], fill).apply(trace).delta.sum() - batched) < 1e-5
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
    for name in [*selections, CEILING]:
        for fill in FILLS:
            if f"{name}|{fill}" not in rows[0]:
                continue
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
