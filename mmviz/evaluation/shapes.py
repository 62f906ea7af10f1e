"""Faithfulness of every map method on the shapes world, where the right region is KNOWN.

For N held-out scenes, each asking the colour of one shape, the trained model is traced with the true answer and
every method's map for the answer token is scored: pointing game against the queried object's mask, deletion and
insertion AUC (token space, blurred-image fill), and the cascading weight-randomisation sanity check on a few
scenes. Layered maps are reduced over layers (mean; max for the logit lens, as in arXiv 2410.02762).

Run: ``python -m mmviz faithfulness --scenes 200`` (prints a markdown table; ``--plot curves.html`` also writes the
bokeh deletion / insertion curves).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mmviz.evaluation.faithfulness import Curves, deletion_insertion, pointing_game
from mmviz.evaluation.sanity import randomization_check
from mmviz.methods import CATALOGUE, Map, Target
from mmviz.progress import progress, quiet
from mmviz.records import Trace, model_name
from mmviz.tracing import trace
from mmviz.zoo.shapes import COLOR_QUESTION, scene

FAST_SETTINGS = {"rise": {"n_masks": 128}, "integrated_gradients": {"steps": 16}}
"""Settings that keep the evaluation affordable (documented in the table's notes)."""

VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "integrated_gradients, zero baseline": ("integrated_gradients", {"baseline": "zero", "steps": 32}),
    "rise, zero baseline": ("rise", {"baseline": "zero", "n_masks": 256}),
    "occlusion, zero baseline": ("occlusion", {"baseline": "zero"}),
}
"""Methods whose result hangs on a baseline, run again with another one: a blurred image keeps the shapes'
colours, so as a baseline it hides the very evidence a colour question needs (arXiv 1703.01365 §3)."""


@dataclass
class MethodScore:
    """One method's scores over the evaluated scenes."""

    method: str
    hits: list[bool] = field(default_factory=list)
    deletion: list[Curves] = field(default_factory=list)
    sanity: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def pointing(self) -> float:
        return float(np.mean(self.hits)) if self.hits else float("nan")

    @property
    def deletion_auc(self) -> float:
        return float(np.mean([c.deletion_auc for c in self.deletion])) if self.deletion else float("nan")

    @property
    def insertion_auc(self) -> float:
        return float(np.mean([c.insertion_auc for c in self.deletion])) if self.deletion else float("nan")

    @property
    def randomised_correlation(self) -> float:
        return float(np.mean(self.sanity)) if self.sanity else float("nan")

    def mean_curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fractions, mean deletion curve, mean insertion curve."""
        return (
            self.deletion[0].fractions,
            np.mean([c.deletion for c in self.deletion], axis=0),
            np.mean([c.insertion for c in self.deletion], axis=0),
        )


@dataclass
class Evaluation:
    """Scores per method plus the random-map baseline (what chance gives)."""

    scores: dict[str, MethodScore]
    scenes: int
    model: str

    def table(self) -> str:
        """A markdown table: one row per method, best pointing accuracy first."""
        lines = [
            "| method | pointing game ↑ | deletion AUC ↓ | insertion AUC ↑ | corr. after randomisation ↓ | s / scene |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        ranked = sorted(self.scores.values(), key=lambda s: -s.pointing)
        for score in ranked:
            sanity = "—" if np.isnan(score.randomised_correlation) else f"{score.randomised_correlation:.2f}"
            per_scene = score.seconds / max(self.scenes, 1)
            lines.append(
                f"| {score.method} | {score.pointing:.1%} | {score.deletion_auc:.3f} | {score.insertion_auc:.3f} | "
                f"{sanity} | {per_scene:.2f} |"
            )
        return "\n".join(lines)


def _reduce(result: Map, position: int) -> np.ndarray:
    if result.layers is None:
        return result.for_target(position)
    rows = np.stack([result.for_target(position, layer=int(layer)) for layer in result.layers])
    return rows.max(axis=0) if result.method == "logit_lens" else rows.mean(axis=0)


def _compute(name: str, traced: Trace) -> Map:
    """The map of evaluated entry ``name``: a catalogue method with :data:`FAST_SETTINGS`, or a :data:`VARIANTS`."""
    method, settings = VARIANTS.get(name, (name, FAST_SETTINGS.get(name, {})))
    if not CATALOGUE[method].targeted:  # where the model reads: nothing to explain, their own defaults
        return traced.compute(method)
    return traced.compute(method, targets=Target.logprob(traced.answer_start), **settings)


def evaluate(
    model: torch.nn.Module,
    processor: object,
    *,
    scenes: int = 200,
    methods: Sequence[str] | None = None,
    sanity_scenes: int = 3,
    first_seed: int = 0,
) -> Evaluation:
    """Score every map method on ``scenes`` held-out scenes (seeds ``first_seed …``).

    Example:
        >>> model, processor = mmviz.zoo.load("shapes-vlm")
        >>> result = evaluate(model, processor, scenes=20)                 # doctest: +SKIP
        >>> print(result.table())                                          # doctest: +SKIP
    """
    names = [*CATALOGUE, *VARIANTS] if methods is None else list(methods)
    unknown = sorted(set(names) - set(CATALOGUE) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {[*CATALOGUE, *VARIANTS]}")
    scores = {name: MethodScore(name) for name in [*names, "random map (chance)"]}
    rng = np.random.default_rng(0)
    for index in progress(range(scenes), desc="mmviz: faithfulness", unit="scene", leave=True):
        with quiet():
            _score_scene(model, processor, first_seed + index, names, scores, rng, sanity=index < sanity_scenes)
    return Evaluation(scores, scenes, model_name(model))


def _score_scene(
    model: torch.nn.Module,
    processor: object,
    seed: int,
    names: list[str],
    scores: dict[str, MethodScore],
    rng: np.random.Generator,
    *,
    sanity: bool,
) -> None:
    """Trace one scene's colour question with the true answer and score every method's map on it."""
    world = scene(seed)
    question = next(q for q in world.questions if q.text.startswith(COLOR_QUESTION.split("{")[0]))
    mask = world.objects[question.object_index].mask
    traced = trace(model, processor, world.image, question.text, answer=question.answer)
    target = Target.logprob(traced.answer_start)
    for name in [*names, "random map (chance)"]:
        start = time.perf_counter()
        if name == "random map (chance)":
            values = rng.normal(size=len(traced.image_positions))
        else:
            result = _compute(name, traced)
            values = _reduce(result, traced.answer_start)
        score = scores[name]
        score.hits.append(pointing_game(values, traced.layout, mask))
        score.deletion.append(deletion_insertion(traced, values, target))
        if sanity and name != "random map (chance)":
            check = randomization_check(traced, lambda t, name=name: _compute(name, t), steps=2)
            score.sanity.append(float(check.correlation[-1]))
        score.seconds += time.perf_counter() - start
