"""Interventions: ask the model what it needs, not the map. One object per experiment, shared by the Python API,
the widget's Interventions panel and saved traces.

* :class:`Ablate` replaces chosen image tokens' embeddings by a fill (:func:`mmviz.methods.ablate`);
* :class:`Knockout` cuts the attention edges ``sources → to`` in a window of decoder layers
  (:func:`mmviz.methods.knockout`).

Each has ``apply(trace)`` (one intervention, nothing kept) and plain-data ``to_dict`` / ``from_dict``. The module
function :func:`apply` runs several, validated all before the first forward, and KEEPS them with their effects in
``trace.results`` (:class:`InterventionLog`, a registered kept result), so ``trace.save`` → ``mmviz.load`` keeps
them: a loaded trace shows them (:func:`history`) and refuses to run new ones until its model is attached.
:func:`knockout_curve` slides a window of layers over the depth (one forward per window) and is kept too.

Example:
    >>> from mmviz.interventions import Ablate, Knockout, apply
    >>> apply(trace, [Ablate(trace.image_positions[:8], fill="zero"), Knockout(layers=range(0, 2))])  # doctest: +SKIP
    [Effect(...), Effect(...)]
    >>> history(trace)[-1].effect.delta                                                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mmviz import selection
from mmviz.errors import InputError
from mmviz.methods import Effect, ablate, knockout
from mmviz.methods.target import TargetLike
from mmviz.records import Trace
from mmviz.records.trace_file import kept_result

Fill = Literal["mean", "zero", "blur"]
FILLS: tuple[str, ...] = ("mean", "zero", "blur")
"""What replaces an ablated token: the mean image token of this input, zeros, or the blurred image's token (the
baselines of :func:`mmviz.methods.ablate`, same names)."""

DEFAULT_FILL: Fill = "zero"
"""The fill the widget starts with: on the shapes world zero hurts the answer most often for every selection rule
(``benchmarks/interventions.py``: 73 % of 100 held-out scenes vs mean 65 %, blur 43 %, object patches + border;
background ≤ 2 % for all). Blur keeps the object's colour, so it removes the least."""

DEFAULT_COVERAGE = 0.2
""":func:`object_patches`' default: a token is on the object when at least this share of its box is covered."""

DEFAULT_BORDER = 1
""":func:`object_patches`' default ring of grid cells around the covered tokens: the vision tower spreads an object
into its neighbours, and the ring raises the shapes-world hit rate (67 → 73 %, zero fill) at 2 % background hits."""

PRESETS: tuple[str, ...] = ("answer", "last_prompt")
"""Knockout targets by name: the rows that predict the answer tokens, or the last prompt token's row only."""

LOG_KEY = "interventions"
"""Where :func:`apply` keeps its log in ``trace.results``."""

CURVE_KEY = "knockout_curve"
"""Where :func:`knockout_curve` keeps its latest curve in ``trace.results``."""

MAX_POSITIONS = 1 << 20
"""Longer position lists than this are refused before anything is built from them (a hostile file or message)."""


def _positions(values: object, name: str) -> tuple[int, ...]:
    """Sequence positions as a sorted tuple of distinct ints ≥ 0 (bounds are the trace's to check)."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise InputError(f"{name} must be a list of sequence positions, not {values!r}"[:300])
    items = list(values)  # type: ignore[call-overload]
    if len(items) > MAX_POSITIONS:
        raise InputError(f"{name} lists {len(items)} positions; at most {MAX_POSITIONS}")
    out = set()
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            if isinstance(item, (float, np.floating)) and float(item).is_integer():
                item = int(item)  # JSON numbers may arrive as floats
            else:
                raise InputError(f"{name} must hold whole numbers, not {item!r}"[:300])
        if item < 0:
            raise InputError(f"{name} must hold positions ≥ 0, not {item}")
        out.add(int(item))
    if not out:
        raise InputError(f"{name} is empty: choose at least one position")
    return tuple(sorted(out))


def _no_model(trace: Trace) -> None:
    """A trace without its model shows kept interventions but cannot run new ones: say so, and how to fix it."""
    if trace.run is None:
        kept = len(history(trace))
        raise InputError(
            f"this trace has no model attached, so interventions cannot run ({kept} kept intervention"
            f"{'' if kept == 1 else 's'} can still be read with mmviz.interventions.history(trace)); "
            f"re-link it first: trace = trace.attach(model, processor)"
        )


@dataclass(frozen=True)
class Ablate:
    """Replace the image tokens at sequence ``positions`` by ``fill`` and rerun once.

    Attributes:
        positions: image positions (:attr:`Trace.image_positions`); stored sorted and without repeats.
        fill: ``"mean"`` (mean image token), ``"zero"`` or ``"blur"`` (the blurred image's token).

    Example:
        >>> Ablate(trace.image_positions[:4], fill="blur").apply(trace).delta       # doctest: +SKIP
    """

    positions: tuple[int, ...]
    fill: Fill = DEFAULT_FILL

    kind = "ablate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _positions(self.positions, "positions"))
        if self.fill not in FILLS:
            raise InputError(f"fill must be one of {list(FILLS)}, not {self.fill!r}"[:300])

    def check(self, trace: Trace) -> None:
        """Raise :class:`InputError` unless every position is one of ``trace``'s image positions (no model run)."""
        unknown = sorted(set(self.positions) - set(np.asarray(trace.image_positions).tolist()))
        if unknown:
            raise InputError(
                f"positions {unknown[:5]} are not image positions with a box; choose from trace.image_positions"
            )

    def apply(self, trace: Trace, targets: TargetLike = None) -> Effect:
        """The :class:`~mmviz.methods.Effect` of this ablation (nothing is kept; :func:`apply` keeps)."""
        _no_model(trace)
        self.check(trace)
        return ablate(trace, list(self.positions), targets, baseline=self.fill)

    def describe(self) -> str:
        return f"ablate {len(self.positions)} image token{'' if len(self.positions) == 1 else 's'} ({self.fill} fill)"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "positions": list(self.positions), "fill": self.fill}


@dataclass(frozen=True)
class Knockout:
    """Cut the attention edges ``sources → to`` in decoder ``layers`` and rerun once.

    Attributes:
        layers: decoder layers ``0 … L−1`` (a window such as ``range(0, 2)``); sorted, without repeats.
        sources: ``"image"`` (every image position) or sequence positions whose keys may no longer be read.
        to: the query rows that lose them: ``"answer"`` (the rows predicting the answer tokens), ``"last_prompt"``
            (the last prompt token's row, which predicts the first answer token) or sequence positions.

    Example:
        >>> Knockout(layers=range(0, 2), to="last_prompt").apply(trace).delta        # doctest: +SKIP
    """

    layers: tuple[int, ...]
    sources: Literal["image"] | tuple[int, ...] = "image"
    to: Literal["answer", "last_prompt"] | tuple[int, ...] = "answer"

    kind = "knockout"

    def __post_init__(self) -> None:
        layers = _positions(self.layers, "layers")
        object.__setattr__(self, "layers", layers)
        if isinstance(self.sources, str):
            if self.sources != "image":
                raise InputError(f"sources must be 'image' or a list of positions, not {self.sources!r}"[:300])
        else:
            object.__setattr__(self, "sources", _positions(self.sources, "sources"))
        if isinstance(self.to, str):
            if self.to not in PRESETS:
                raise InputError(f"to must be one of {list(PRESETS)} or a list of positions, not {self.to!r}"[:300])
        else:
            object.__setattr__(self, "to", _positions(self.to, "to"))

    def queries(self, trace: Trace) -> list[int]:
        """The query rows that lose the sources, as sequence positions of ``trace``."""
        if self.to == "answer":
            return list(range(max(trace.answer_start - 1, 0), len(trace.tokens) - 1))
        if self.to == "last_prompt":
            return [trace.answer_start - 1]
        return list(self.to)  # type: ignore[arg-type]

    def check(self, trace: Trace) -> None:
        """Raise :class:`InputError` unless the layers and positions exist in ``trace`` (no model run)."""
        selection.layers(self.layers, trace.num_layers)
        n = len(trace.tokens)
        if trace.answer_start < 1 or trace.answer_start >= n:
            raise InputError("this trace has no answer after a prompt token: a knockout has no rows to cut")
        if not isinstance(self.sources, str):
            selection.indices(self.sources, n, "sources", unit="sequence position")
        selection.indices(self.queries(trace), n, "to", unit="sequence position")

    def apply(self, trace: Trace, targets: TargetLike = None) -> Effect:
        """The :class:`~mmviz.methods.Effect` of this knockout (nothing is kept; :func:`apply` keeps)."""
        _no_model(trace)
        self.check(trace)
        return knockout(trace, targets, sources=self.sources, to=self.queries(trace), layers=list(self.layers))

    def describe(self) -> str:
        first, last = self.layers[0], self.layers[-1]
        window = f"layer {first}" if first == last else f"layers {first}–{last}"
        if len(self.layers) != last - first + 1:
            window = f"layers {list(self.layers)}"
        sources = "image" if self.sources == "image" else f"{len(self.sources)} positions"
        to = self.to.replace("_", " ") if isinstance(self.to, str) else f"{len(self.to)} positions"
        return f"knockout {sources} → {to} in {window}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layers": list(self.layers),
            "sources": self.sources if isinstance(self.sources, str) else list(self.sources),
            "to": self.to if isinstance(self.to, str) else list(self.to),
        }


Intervention = Ablate | Knockout
KINDS: dict[str, type[Ablate] | type[Knockout]] = {"ablate": Ablate, "knockout": Knockout}


def from_dict(data: object) -> Intervention:
    """The intervention ``to_dict()`` described; :class:`InputError` for anything else (unknown kinds or keys)."""
    if not isinstance(data, dict):
        raise InputError(f"an intervention must be an object with a 'kind', not {type(data).__name__}")
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InputError(f"unknown intervention kind {kind!r}; expected one of {list(KINDS)}"[:300])
    allowed = {"kind", *cls.__dataclass_fields__}
    extra = sorted(str(key) for key in set(data) - allowed)
    if extra:
        raise InputError(f"a {kind} intervention has no field {extra[0]!r}; its fields are {sorted(allowed)}"[:300])
    required = {"positions"} if cls is Ablate else {"layers"}
    missing = sorted(required - set(data))
    if missing:
        raise InputError(f"a {kind} intervention needs {missing[0]!r}")
    return cls(**{key: value for key, value in data.items() if key != "kind"})


@dataclass(frozen=True)
class Result:
    """One kept intervention and its :class:`~mmviz.methods.Effect`."""

    intervention: Intervention
    effect: Effect


@kept_result("interventions")
@dataclass(frozen=True)
class InterventionLog:
    """The interventions :func:`apply` ran on a trace, oldest first, as plain data (saved with the trace).

    Each run is ``{"intervention": to_dict(), "positions", "clean", "changed", "delta": arrays [T],
    "description": str}``. Checked when built, so a damaged file is refused on load rather than shown.
    """

    runs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.runs, list):
            raise InputError("an intervention log holds a list of runs")
        for run in self.runs:
            if not isinstance(run, dict) or set(run) != {"intervention", "positions", "clean", "changed", "delta",
                                                          "description"}:  # fmt: skip
                raise InputError("a kept intervention run is malformed")
            from_dict(run["intervention"])
            arrays = [np.asarray(run[key]) for key in ("positions", "clean", "changed", "delta")]
            if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or not isinstance(run["description"], str):
                raise InputError("a kept intervention run's arrays disagree")

    def results(self) -> list[Result]:
        return [
            Result(
                from_dict(run["intervention"]),
                Effect(
                    positions=np.asarray(run["positions"], np.int64),
                    clean=np.asarray(run["clean"], np.float64),
                    changed=np.asarray(run["changed"], np.float64),
                    delta=np.asarray(run["delta"], np.float64),
                    description=str(run["description"]),
                ),
            )
            for run in self.runs
        ]


def history(trace: Trace) -> list[Result]:
    """Every intervention kept on ``trace`` (by :func:`apply`, or in the file it was loaded from), oldest first."""
    log = trace.results.get(LOG_KEY)
    return log.results() if isinstance(log, InterventionLog) else []


def apply(trace: Trace, interventions: Sequence[Intervention], targets: TargetLike = None) -> list[Effect]:
    """Run ``interventions`` on ``trace`` and keep each with its effect in ``trace.results`` (see :func:`history`).

    All are checked against the trace before the first forward, so a bad one runs and keeps nothing. Each is one
    forward of its own (ablations with different positions or fills, and knockouts in different layers, cannot
    share one); the model is left as found, also when one fails (the methods restore it), and the runs that
    finished before a failure stay kept.

    Example:
        >>> apply(trace, [Ablate([5, 6, 7]), Ablate([5, 6, 7], fill="blur")])     # doctest: +SKIP
    """
    if isinstance(interventions, (Ablate, Knockout)):
        interventions = [interventions]
    chosen = list(interventions)
    for item in chosen:
        if not isinstance(item, (Ablate, Knockout)):
            raise InputError(f"apply takes Ablate and Knockout objects, not {type(item).__name__}")
    _no_model(trace)
    for item in chosen:
        item.check(trace)
    log = trace.results.get(LOG_KEY)
    if not isinstance(log, InterventionLog):
        log = trace.results[LOG_KEY] = InterventionLog()
    effects = []
    for item in chosen:
        result = item.apply(trace, targets)
        log.runs.append(
            {
                "intervention": item.to_dict(),
                "positions": np.asarray(result.positions, np.int64),
                "clean": np.asarray(result.clean, np.float64),
                "changed": np.asarray(result.changed, np.float64),
                "delta": np.asarray(result.delta, np.float64),
                "description": result.description,
            }
        )
        effects.append(result)
    return effects


@kept_result("knockout_curve")
@dataclass(frozen=True)
class KnockoutCurve:
    """Δ log p of the first answer token when a window of ``width`` layers starting at each of ``starts`` is
    knocked out (``sources → to``, as :class:`Knockout`)."""

    width: int
    sources: str
    to: str
    starts: np.ndarray
    delta: np.ndarray
    clean: float

    def __post_init__(self) -> None:
        starts, delta = np.asarray(self.starts), np.asarray(self.delta)
        if starts.ndim != 1 or starts.shape != delta.shape or not isinstance(self.width, int) or self.width < 1:
            raise InputError("a knockout curve's starts and deltas disagree")
        if self.sources != "image" or self.to not in PRESETS:
            raise InputError("a kept knockout curve has unknown sources or targets")


def knockout_curve(trace: Trace, width: int = 1, *, sources: str = "image", to: str = "answer") -> KnockoutCurve:
    """Slide a window of ``width`` decoder layers over the depth, knock ``sources → to`` out in each (one forward
    per window) and report Δ log p of the first answer token; kept as ``trace.results["knockout_curve"]``.

    Example:
        >>> curve = knockout_curve(trace, width=2)                # doctest: +SKIP
        >>> curve.starts[np.argmin(curve.delta)]                  # where the image is read   # doctest: +SKIP
    """
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width <= trace.num_layers:
        raise InputError(f"width must be a whole number of layers in 1…{trace.num_layers}, not {width!r}"[:300])
    width = int(width)
    _no_model(trace)
    windows = [Knockout(range(start, start + width), sources, to) for start in range(trace.num_layers - width + 1)]  # type: ignore[arg-type]
    windows[0].check(trace)
    first = [trace.answer_start]  # the first answer token: the curve is one number per window
    effects = [window.apply(trace, first) for window in windows]
    curve = KnockoutCurve(
        width=width,
        sources=sources,
        to=to,
        starts=np.arange(len(windows), dtype=np.int64),
        delta=np.array([float(e.delta[0]) for e in effects], np.float64),
        clean=float(effects[0].clean[0]),
    )
    trace.results[CURVE_KEY] = curve
    return curve


def object_patches(
    trace: Trace, mask: np.ndarray, *, coverage: float = DEFAULT_COVERAGE, image: int = 0, border: int = DEFAULT_BORDER
) -> np.ndarray:
    """The image positions whose box is at least ``coverage`` covered by ``mask`` (bool, the original image's
    ``(height, width)``), widened by ``border`` grid cells around them.

    Example:
        >>> s = mmviz.zoo.scene(300); q = s.questions[0]
        >>> object_patches(trace, s.objects[q.object_index].mask)             # doctest: +SKIP
    """
    shares = coverage_of(trace, mask, image=image)
    columns = np.asarray(trace.image_positions)
    chosen = shares >= coverage if coverage > 0 else shares > 0
    if border > 0 and chosen.any():
        # Grid neighbours (Chebyshev distance ≤ border) of a chosen cell, in the same image only.
        layout = trace.layout
        grid = np.asarray(layout.grid)[columns]
        same = np.asarray(layout.image_index)[columns] == image
        near = (np.abs(grid[:, None, :] - grid[chosen][None, :, :]).max(axis=2) <= border).any(axis=1)
        chosen = chosen | (near & same)
    return columns[chosen]


def coverage_of(trace: Trace, mask: np.ndarray, *, image: int = 0) -> np.ndarray:
    """For every image position, the share of its box (original pixels) that ``mask`` covers (0 for other images)."""
    mask = np.asarray(mask, bool)
    columns = np.asarray(trace.image_positions)
    boxes = np.asarray(trace.layout.boxes)[columns]
    which = np.asarray(trace.layout.image_index)[columns]
    shares = np.zeros(len(columns), np.float64)
    height, width = mask.shape
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if which[i] != image:
            continue
        left, top = int(np.clip(np.floor(x0), 0, width)), int(np.clip(np.floor(y0), 0, height))
        right, bottom = int(np.clip(np.ceil(x1), 0, width)), int(np.clip(np.ceil(y1), 0, height))
        if right > left and bottom > top:
            shares[i] = float(mask[top:bottom, left:right].mean())
    return shares
