"""Interventions: ask the model what it needs, not the map. One object per experiment, shared by the Python API,
the widget's Interventions panel and saved traces.

* :class:`Ablate` replaces chosen image tokens' embeddings by a fill, or paints their boxes on the image before the
  vision tower (:func:`mmviz.methods.ablate`);
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

import dataclasses
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from mmviz import selection
from mmviz.capture.run import ModelRun
from mmviz.errors import InputError
from mmviz.inputs import load_image
from mmviz.methods import Effect, ablate, knockout
from mmviz.methods.ablation import ablate_many, ablation_change
from mmviz.methods.common import inference_context, model_run
from mmviz.methods.knockout import cutting, sources_mask
from mmviz.methods.target import TargetLike
from mmviz.records import Trace
from mmviz.records.trace_file import kept_result

Fill = Literal["mean", "zero", "blur", "paint", "other"]
FILLS: tuple[str, ...] = ("mean", "zero", "blur", "paint", "other")
"""What replaces an ablated token (the fills of :func:`mmviz.methods.ablate`, same names): the mean image token of
this input, zeros, the blurred image's token, the token's box painted with the image's mean colour before the
vision tower (``"paint"``: a pixel occlusion, the whole model runs again), or another image's token at the same
position (``"other"``, with ``other_image``)."""

DEFAULT_FILL: Fill = "zero"
"""The token fill :func:`default_fill` falls back to: zero hurts the answer most often of the token fills for every
selection rule (``benchmarks/interventions.py``, 100 held-out scenes, object patches + border: zero 73 %, other
73 %, mean 65 %, blur 43 %; background 3 %, 14 %, 1 %, 1 %). Blur keeps the object's colour, so it removes the
least. Painting the pixels (``"paint"``) reaches 91 % at 1 % background, at one full forward of the whole model."""


def default_fill(trace: Trace) -> Fill:
    """The fill the widget starts with for ``trace``: ``"paint"`` where every image column has a box on one image
    (it removes what the patches show: 91 % of object selections vs 1 % of background ones on the shapes world),
    else :data:`DEFAULT_FILL` (query tokens have no box; a video token fuses several frames).

    Example:
        >>> default_fill(trace)                          # doctest: +SKIP
        'paint'
    """
    layout = trace.layout
    table = layout.column_table
    boxes = np.asarray(table.boxes)[np.asarray(trace.image_positions)]
    paintable = len(boxes) > 0 and layout.soft is None and not layout.is_video and bool(np.isfinite(boxes).all())
    return "paint" if paintable else DEFAULT_FILL

MAX_OTHER_PIXELS = 1 << 26
"""``other_image`` larger than this many pixels is refused (a hostile file or message)."""

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
        fill: ``"mean"`` (mean image token), ``"zero"``, ``"blur"`` (the blurred image's token), ``"paint"`` (the
            tokens' boxes painted with the image's mean colour before the vision tower) or ``"other"``
            (``other_image``'s token at the same position).
        other_image: ``fill="other"`` only: a PIL image, a path or an ``H×W×3`` uint8 array; kept as a read-only
            uint8 array (so it is saved with the trace), resized to the traced image's size when applied.

    Example:
        >>> Ablate(trace.image_positions[:4], fill="blur").apply(trace).delta       # doctest: +SKIP
        >>> Ablate(trace.image_positions[:4], fill="other", other_image="dog.png").apply(trace)   # doctest: +SKIP
    """

    positions: tuple[int, ...]
    fill: Fill = DEFAULT_FILL
    other_image: np.ndarray | None = field(default=None, repr=False)

    kind = "ablate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _positions(self.positions, "positions"))
        if self.fill not in FILLS:
            raise InputError(f"fill must be one of {list(FILLS)}, not {self.fill!r}"[:300])
        if self.fill == "other":
            object.__setattr__(self, "other_image", _other_image(self.other_image))
        elif self.other_image is not None:
            raise InputError(f"other_image is only used by fill='other', not fill={self.fill!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ablate):
            return NotImplemented
        if (self.positions, self.fill) != (other.positions, other.fill):
            return False
        if self.other_image is None or other.other_image is None:
            return self.other_image is None and other.other_image is None
        return bool(np.array_equal(self.other_image, other.other_image))

    def __hash__(self) -> int:
        image = None if self.other_image is None else (self.other_image.shape, self.other_image.tobytes()[:4096])
        return hash((self.positions, self.fill, image))

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
        return ablate(trace, list(self.positions), targets, baseline=self.fill, other_image=self.other_image)

    def describe(self) -> str:
        what = {"paint": "boxes painted", "other": "another image's tokens"}.get(self.fill, f"{self.fill} fill")
        return f"ablate {len(self.positions)} image token{'' if len(self.positions) == 1 else 's'} ({what})"

    def to_dict(self, *, image: bool = True) -> dict[str, Any]:
        """Plain data for :func:`from_dict`; ``fill="other"`` adds ``other_image`` (a uint8 ``H×W×3`` array, which
        trace files store as an array; ``image=False`` leaves it out, for a JSON-only description)."""
        data: dict[str, Any] = {"kind": self.kind, "positions": list(self.positions), "fill": self.fill}
        if self.other_image is not None and image:
            data["other_image"] = self.other_image
        return data


def _other_image(value: object) -> np.ndarray:
    """``other_image`` as a read-only ``H×W×3`` uint8 array; :class:`InputError` when missing or not an image."""
    if value is None:
        raise InputError(
            "fill='other' needs other_image: the image whose tokens replace the chosen ones "
            "(a PIL image, a path or an H×W×3 uint8 array)"
        )
    if isinstance(value, list):  # JSON: nested lists of whole numbers 0…255
        try:
            value = np.asarray(value)
        except ValueError:
            raise InputError("other_image must be an H×W×3 array of whole numbers 0…255 (ragged lists given)") from None
    if isinstance(value, np.ndarray):
        if value.size > 3 * MAX_OTHER_PIXELS:
            raise InputError(f"other_image holds {value.size} values; at most {3 * MAX_OTHER_PIXELS}")
        if value.dtype.kind in "iu" and value.dtype != np.uint8 and value.size:
            if value.min() < 0 or value.max() > 255:
                raise InputError("other_image must hold whole numbers 0…255")
            value = value.astype(np.uint8)
    elif isinstance(value, Image.Image) and value.width * value.height > MAX_OTHER_PIXELS:
        raise InputError(f"other_image has {value.width * value.height} pixels; at most {MAX_OTHER_PIXELS}")
    array = np.array(load_image(value), dtype=np.uint8)  # type: ignore[arg-type]  # a copy: the caller's stays theirs
    if array.shape[0] * array.shape[1] > MAX_OTHER_PIXELS:
        raise InputError(f"other_image has {array.shape[0] * array.shape[1]} pixels; at most {MAX_OTHER_PIXELS}")
    array.setflags(write=False)
    return array


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

    All are checked against the trace before the first forward, so a bad one runs and keeps nothing. Consecutive
    ablations share their work (:func:`mmviz.methods.ablation.ablate_many`: one clean forward, the token fills
    batched; their scores equal one :meth:`Ablate.apply` each up to batching's rounding, ~1e-6); each knockout is
    a forward of its own (knockouts in different layers cannot share one). The model is left as found, also when
    one fails (the methods restore it), and the runs that finished before a failure stay kept (a group of
    consecutive ablations finishes together).

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
    groups: list[list[Intervention]] = []
    for item in chosen:  # consecutive ablations together, knockouts one by one
        if groups and isinstance(item, Ablate) and isinstance(groups[-1][0], Ablate):
            groups[-1].append(item)
        else:
            groups.append([item])
    for group in groups:
        finished: list[tuple[Intervention, Effect]]
        if len(group) > 1:
            requests = [
                {"positions": list(a.positions), "baseline": a.fill, "other_image": a.other_image}  # type: ignore[union-attr]
                for a in group
            ]
            finished = list(zip(group, ablate_many(trace, requests, targets), strict=True))
        else:
            finished = [(group[0], group[0].apply(trace, targets))]
        for item, result in finished:
            _keep(log, item, result)
            effects.append(result)
    return effects


MAX_NEW_TOKENS = 64
"""The longest answer :func:`generate` decodes: each token is one full forward (no cache, so the intervention applies
to every step exactly as to the teacher-forced run)."""

DEFAULT_NEW_TOKENS = 32
""":func:`generate`'s default number of new tokens (``mmviz.trace``'s default)."""

PER_TOKEN_INPUTS: dict[str, int] = {"token_type_ids": -1, "mm_token_type_ids": -1, "cross_attention_mask": 1}
"""Processor outputs with one entry per sequence position (along this axis), which families' ``analysis_inputs``
extend over the answer: PaliGemma's and Gemma 3's token types, Qwen2-VL's and GLM's ``mm_token_type_ids``, Mllama's
``cross_attention_mask``."""


@dataclass(frozen=True)
class Generation:
    """A greedy answer decoded with an intervention applied (:func:`generate`).

    Attributes:
        token_ids: the new tokens, the stop token included when decoding ``stopped`` at ``"eos"``.
        stopped: ``"eos"`` or ``"length"``.
        text: the decoded answer, special tokens skipped.
    """

    token_ids: tuple[int, ...]
    stopped: str
    text: str


def generate(
    trace: Trace, intervention: Intervention | None = None, *, max_new_tokens: int = DEFAULT_NEW_TOKENS
) -> Generation:
    """Greedily decode a new answer after ``trace``'s prompt with ``intervention`` applied at every step (None: the
    clean model).

    Each step is one full forward over the prompt + the tokens so far with the same change the teacher-forced run
    makes (:func:`mmviz.methods.ablation.ablation_change`, :func:`mmviz.methods.knockout.cutting`, rows from the
    last prompt token on for ``to="answer"``), so the first new token is the argmax of exactly the distribution
    whose Δ log p :meth:`Ablate.apply` / :meth:`Knockout.apply` report. Image placeholder ids are never generated
    (as in :func:`mmviz.trace`). Nothing is kept; the model is left as found, also when this raises.

    Example:
        >>> generate(trace, Knockout(range(0, 2)), max_new_tokens=8).text          # doctest: +SKIP
        'blue'
    """
    bad = isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
    if bad or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be a whole number in 1…{MAX_NEW_TOKENS}, not {max_new_tokens!r}")
    if intervention is not None and not isinstance(intervention, (Ablate, Knockout)):
        raise InputError(f"generate takes an Ablate or a Knockout, not {type(intervention).__name__}")
    _no_model(trace)
    run = model_run(trace)
    if intervention is not None:
        intervention.check(trace)
    prompt = run.input_ids[:, : trace.answer_start]
    stops = _stop_ids(run)
    placeholders = np.asarray(trace.layout.positions("image", "image_newline", "image_sep"))
    never = sorted({int(i) for i in np.asarray(trace.token_ids)[placeholders]})
    length = trace.answer_start + max_new_tokens
    ids: list[int] = []
    with inference_context(run):
        edit, inputs = None, None
        if isinstance(intervention, Ablate):
            request = {"positions": list(intervention.positions), "baseline": intervention.fill}
            edit, inputs = ablation_change(trace, run, {**request, "other_image": intervention.other_image})
        with _cut(trace, run, intervention, length) if isinstance(intervention, Knockout) else nullcontext():
            for _ in range(max_new_tokens):
                tail = torch.as_tensor([ids], dtype=prompt.dtype, device=prompt.device).reshape(1, len(ids))
                step = dataclasses.replace(
                    run, input_ids=torch.cat([prompt, tail], dim=1), inputs=_prompt_inputs(trace, run, len(ids), inputs)
                )
                logits = step.forward(edit=edit, first_logit=step.length - 1)[0, -1]
                blocked = [i for i in never if i < logits.shape[0]]
                if blocked:
                    logits[blocked] = -torch.inf
                ids.append(int(torch.argmax(logits)))
                if ids[-1] in stops:
                    break
    stopped = "eos" if ids and ids[-1] in stops else "length"
    return Generation(tuple(ids), stopped, run.adapter.tokenizer.decode(ids, skip_special_tokens=True))


def _cut(trace: Trace, run: ModelRun, chosen: Knockout, length: int) -> AbstractContextManager[None]:
    """:func:`mmviz.methods.knockout.cutting` for ``chosen`` over sequences of up to ``length`` positions: "answer"
    rows are every row from the last prompt token on (each predicts an answer token, generated ones too)."""
    keys = trace.layout.keys is not None
    sources = sources_mask(trace, chosen.sources, length)
    queries = torch.zeros(length, dtype=torch.bool)
    if chosen.to == "answer":
        queries[trace.answer_start - 1 :] = True
    else:
        queries[torch.as_tensor(chosen.queries(trace), dtype=torch.long)] = True
    return cutting(run, sources, queries, set(chosen.layers), keys=keys)


def _stop_ids(run: ModelRun) -> set[int]:
    """The token ids that end an answer: the generation config's ``eos_token_id`` (an id or a list), else the
    tokenizer's."""
    eos = getattr(getattr(run.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(run.adapter.tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _prompt_inputs(
    trace: Trace, run: ModelRun, n_new: int, inputs: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The run's side inputs (or ``inputs``, e.g. painted pixels) for the prompt + ``n_new`` tokens: the per-token
    inputs (:data:`PER_TOKEN_INPUTS`, extended over the traced answer) cut back to the prompt and extended again over
    ``n_new`` tokens by the adapter's ``analysis_inputs``; pixel inputs unchanged."""
    cut = dict(run.inputs if inputs is None else inputs)
    for key, axis in PER_TOKEN_INPUTS.items():
        value = cut.get(key)
        if isinstance(value, torch.Tensor) and value.ndim > max(axis, 0) and value.shape[axis] == run.length:
            cut[key] = value.narrow(axis % value.ndim, 0, trace.answer_start)
    return run.adapter.analysis_inputs(cut, n_new)


def _keep(log: InterventionLog, item: Intervention, result: Effect) -> None:
    """Append one run to ``log``."""
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


@kept_result("knockout_curve")
@dataclass(frozen=True)
class KnockoutCurve:
    """Δ log p when a window of ``width`` layers starting at each of ``starts`` is knocked out (``sources → to``,
    as :class:`Knockout`).

    Attributes:
        starts: ``(W,)`` the first decoder layer of each window.
        delta: ``(W,)`` Δ log p of the first answer token per window.
        clean: the first answer token's log p without a knockout.
        positions: ``(A,)`` every answer token's position (None in curves kept before they were recorded).
        token_delta: ``(W, A)`` Δ log p of every answer token per window (same forwards; None as ``positions``).
    """

    width: int
    sources: str
    to: str
    starts: np.ndarray
    delta: np.ndarray
    clean: float
    positions: np.ndarray | None = None
    token_delta: np.ndarray | None = None

    def __post_init__(self) -> None:
        starts, delta = np.asarray(self.starts), np.asarray(self.delta)
        if starts.ndim != 1 or starts.shape != delta.shape or not isinstance(self.width, int) or self.width < 1:
            raise InputError("a knockout curve's starts and deltas disagree")
        if self.sources != "image" or self.to not in PRESETS:
            raise InputError("a kept knockout curve has unknown sources or targets")
        if (self.positions is None) != (self.token_delta is None):
            raise InputError("a knockout curve keeps its answer positions and per-token deltas together")
        if self.positions is not None:
            positions, tokens = np.asarray(self.positions), np.asarray(self.token_delta)
            if positions.ndim != 1 or not len(positions) or tokens.shape != (len(starts), len(positions)):
                raise InputError("a knockout curve's per-token deltas disagree with its windows and positions")

    def per_token(self) -> np.ndarray:
        """``(W, A)`` Δ log p of every answer token per window (only the first token's for curves without them)."""
        if self.token_delta is None:
            return np.asarray(self.delta, np.float64)[:, None]
        return np.asarray(self.token_delta, np.float64)


def knockout_curve(trace: Trace, width: int = 1, *, sources: str = "image", to: str = "answer") -> KnockoutCurve:
    """Slide a window of ``width`` decoder layers over the depth, knock ``sources → to`` out in each (one forward
    per window) and report Δ log p of the first answer token (``delta``) and of every answer token
    (``token_delta``, from the same forwards); kept as ``trace.results["knockout_curve"]``.

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
    answer = list(range(trace.answer_start, len(trace.tokens)))  # answer_start first: delta is its column
    effects = [window.apply(trace, answer) for window in windows]
    per_token = np.stack([np.asarray(e.delta, np.float64) for e in effects])
    curve = KnockoutCurve(
        width=width,
        sources=sources,
        to=to,
        starts=np.arange(len(windows), dtype=np.int64),
        delta=per_token[:, 0].copy(),
        clean=float(effects[0].clean[0]),
        positions=np.asarray(answer, np.int64),
        token_delta=per_token,
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
        table = trace.layout.column_table  # positions, or a cross-attention family's keys
        grid = np.asarray(table.grid)[columns]
        same = np.asarray(table.image_index)[columns] == image
        near = (np.abs(grid[:, None, :] - grid[chosen][None, :, :]).max(axis=2) <= border).any(axis=1)
        chosen = chosen | (near & same)
    return columns[chosen]


def coverage_of(trace: Trace, mask: np.ndarray, *, image: int = 0) -> np.ndarray:
    """For every image position (a cross-attention family: every key), the share of its box (original pixels) that
    ``mask`` covers (0 for other images)."""
    mask = np.asarray(mask, bool)
    columns = np.asarray(trace.image_positions)
    table = trace.layout.column_table
    boxes, which = np.asarray(table.boxes)[columns], np.asarray(table.image_index)[columns]
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


def frame_positions(trace: Trace, frames: int | Sequence[int]) -> np.ndarray:
    """The video-token positions that cover any of ``frames`` (original frame indices of a video trace): with
    ``temporal_patch_size`` 2, frame 2k or 2k + 1 selects the whole group of tokens that fuse frames 2k and 2k + 1.

    Example:
        >>> trace = mmviz.trace(model, processor, video=frames, prompt="What happens?")   # doctest: +SKIP
        >>> Ablate(frame_positions(trace, 0), fill="zero").apply(trace).delta             # doctest: +SKIP
    """
    layout = trace.layout
    if not layout.is_video:
        raise InputError("this trace was made from images, not a video: select positions with object_patches(...)")
    wanted = np.atleast_1d(np.asarray(frames))
    if wanted.dtype.kind not in "iu" or wanted.size == 0:
        raise InputError(f"frames must be frame indices (ints), not {frames!r}"[:200])
    n_frames = len(trace.images)
    bad = wanted[(wanted < 0) | (wanted >= n_frames)]
    if bad.size:
        raise InputError(f"frame {int(bad[0])} is outside the video's frames 0…{n_frames - 1}")
    return layout.frame_positions(wanted.tolist())
