"""``python -m mmviz``: command-line tasks.

``python -m mmviz faithfulness --scenes 200`` scores every map method on the shapes world
(:func:`mmviz.evaluation.shapes.evaluate`) and prints the markdown table; ``--plot curves.html`` also writes the
bokeh deletion / insertion curves (:func:`mmviz.plots.faithfulness_curves`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from mmviz.evaluation.shapes import FAST_SETTINGS, VARIANTS, evaluate
from mmviz.zoo import load


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
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
