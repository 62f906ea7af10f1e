"""``python -m mmviz``: command-line tasks, for batch jobs under a scheduler as well as by hand.

* ``python -m mmviz faithfulness --scenes 200`` scores every map method on the shapes world
  (:func:`mmviz.evaluation.shapes.evaluate`) and prints the markdown table; ``--plot curves.html`` also writes the
  bokeh deletion / insertion curves (:func:`mmviz.plots.faithfulness_curves`).
* ``python -m mmviz sweep --model DIR --data FILE --stats image_share lens_rank --out DIR`` runs
  :func:`mmviz.sweep` (``--data shapes:500`` sweeps 500 held-out scenes of the shapes world).
* ``python -m mmviz trace --model DIR --image cat.png --prompt "What is it?" --html out.html`` traces one example
  and writes the inspector's offline page (``--save out.mmviz`` writes the trace file).

``--model`` is a zoo name (``shapes-vlm``) or a checkpoint directory (``from_pretrained``, offline).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmviz.errors import InputError, MmvizError
from mmviz.evaluation.shapes import FAST_SETTINGS, VARIANTS, evaluate
from mmviz.sweeps import STATISTICS, sweep
from mmviz.tracing import trace
from mmviz.widget.inspector import Inspector
from mmviz.zoo import available, load
from mmviz.zoo.shapes import sweep_examples


def faithfulness(args: argparse.Namespace) -> None:
    """Print the faithfulness table of the shapes world (and write the curves when ``--plot`` is given)."""
    torch.manual_seed(0)
    model, processor = load(args.model)
    result = evaluate(model, processor, scenes=args.scenes, methods=args.methods, sanity_scenes=args.sanity_scenes)
    variants = {name: settings for name, (_, settings) in VARIANTS.items()}
    print(f"{args.model}, {args.scenes} held-out scenes (seeds 0…{args.scenes - 1})")
    print(f"settings: {FAST_SETTINGS}; variants: {variants}")
    print(result.table())
    if args.plot:
        from bokeh.io import output_file, save  # bokeh is the optional `plots` extra

        from mmviz.plots import faithfulness_curves

        output_file(args.plot, title="mmviz faithfulness")
        save(faithfulness_curves(result))
        print(f"curves written to {args.plot}")


def load_model(name: str) -> tuple[torch.nn.Module, Any]:
    """A zoo model by name, or a checkpoint directory read offline with ``from_pretrained``."""
    if name in available():
        return load(name)
    path = Path(name)
    if not (path / "config.json").is_file():
        raise InputError(f"--model {name!r} is neither a zoo model ({available()}) nor a checkpoint directory")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    return model, AutoProcessor.from_pretrained(path, local_files_only=True)


def read_examples(data: str) -> list[dict[str, Any]]:
    """``shapes:N`` (held-out scenes), or a table file (``.parquet``, ``.jsonl``, ``.csv``) with ``image`` (a path,
    relative to the file) and ``prompt`` columns, optional ``id``, ``answer``, ``box`` and other fields."""
    if data.startswith("shapes:"):
        return sweep_examples(int(data.split(":", 1)[1]))
    path = Path(data)
    if not path.is_file():
        raise InputError(f"--data {data!r}: no such file (or use shapes:N)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".csv":
        import csv

        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
    else:
        raise InputError(f"--data {data!r}: read .parquet, .jsonl or .csv tables (or shapes:N)")
    for row in rows:
        if isinstance(row.get("image"), str) and not Path(row["image"]).is_absolute():
            row["image"] = str(path.parent / row["image"])
        if isinstance(row.get("box"), str):
            row["box"] = json.loads(row["box"])
    return rows


def run_sweep(args: argparse.Namespace) -> None:
    """Sweep a data set and print the per-layer means of every per-layer statistic."""
    model, processor = load_model(args.model)
    result = sweep(
        model, processor, read_examples(args.data), stats=args.stats, out=args.out, keep=args.keep,
        engine=args.engine, max_new_tokens=args.max_new_tokens, actors=args.actors,
    )  # fmt: skip
    print(f"{len(result)} examples in {args.out} ({len(result.failed)} failed)")
    for name in result.per_layer_columns():
        print(f"{name} (mean per layer): " + " ".join(f"{value:.3f}" for value in result.per_layer(name).mean))


def run_trace(args: argparse.Namespace) -> None:
    """Trace one example; write the inspector's page and / or the trace file."""
    model, processor = load_model(args.model)
    traced = trace(model, processor, args.image, args.prompt, answer=args.answer, methods=args.methods)
    print(f"answer: {traced.answer!r}")
    if args.save:
        print(f"trace written to {traced.save(args.save)}")
    if args.html:
        Inspector(traced).to_html(args.html)
        print(f"page written to {args.html}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmviz", description="mmviz command-line tasks.")
    commands = parser.add_subparsers(dest="command", required=True)
    scoring = commands.add_parser("faithfulness", help="faithfulness of every map method on the shapes world")
    scoring.add_argument("--scenes", type=int, default=200, help="held-out scenes to evaluate (default 200)")
    scoring.add_argument("--model", default="shapes-vlm", help="zoo model (default shapes-vlm)")
    scoring.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    scoring.add_argument("--sanity-scenes", type=int, default=3, help="scenes for the randomisation check")
    scoring.add_argument("--plot", default=None, help="write the deletion / insertion curves (bokeh) to this HTML")
    scoring.set_defaults(run=faithfulness)

    sweeping = commands.add_parser("sweep", help="statistics of every example of a data set (mmviz.sweep)")
    sweeping.add_argument("--model", required=True, help="zoo model name or checkpoint directory")
    sweeping.add_argument("--data", required=True, help="shapes:N, or a .parquet / .jsonl / .csv table")
    sweeping.add_argument("--stats", nargs="+", default=["image_share", "answer_logprob"], choices=sorted(STATISTICS))
    sweeping.add_argument("--out", required=True, help="directory of the table (re-running resumes it)")
    sweeping.add_argument("--keep", default="none", choices=["none", "outliers", "all"], help="traces to save")
    sweeping.add_argument("--engine", default="local", choices=["local", "ray"])
    sweeping.add_argument("--actors", type=int, default=2, help="model copies on Ray (default 2)")
    sweeping.add_argument("--max-new-tokens", type=int, default=32)
    sweeping.set_defaults(run=run_sweep)

    tracing = commands.add_parser("trace", help="trace one example; write its page and / or its trace file")
    tracing.add_argument("--model", required=True, help="zoo model name or checkpoint directory")
    tracing.add_argument("--image", required=True)
    tracing.add_argument("--prompt", required=True)
    tracing.add_argument("--answer", default=None, help="the answer to analyse (default: generate it)")
    tracing.add_argument("--methods", nargs="*", default=[], help="maps to compute (e.g. relevancy)")
    tracing.add_argument("--html", default=None, help="write the inspector's offline page here")
    tracing.add_argument("--save", default=None, help="write the trace file here (.mmviz or a directory)")
    tracing.set_defaults(run=run_trace)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except MmvizError as error:  # bad input: its message, not a traceback
        parser.exit(2, f"mmviz {args.command}: {error}\n")


if __name__ == "__main__":
    main()
