"""The Inspector's Interventions panel, kernel side: ablate chosen image patches or knock out attention in a layer
window, one forward each, and reply Δ log p of every answer token; slide a knockout window over the depth; on
request, greedily decode a new answer with the intervention applied (:func:`mmviz.interventions.generate`); and
measure every answer token's image reliance (KL against a baseline image, :func:`mmviz.methods.image_reliance`) for
the token strip.

Every run goes through :func:`mmviz.interventions.apply`, so it is KEPT in ``trace.results`` (saved with the trace,
shown by ``to_html`` exports and by the widget of a loaded trace, which cannot run new ones). Everything the browser
sends is validated here before anything runs: the intervention's kind and every field (types, ranges; positions
must be image positions, layers decoder layers, targets a preset), with no unknown fields. A bad request raises
:class:`~mmviz.InputError`, which the Inspector answers with ``ok: false``. The contract is
``docs/widget-protocol.md`` ("Interventions"); ``js/src/protocol/interventions.ts`` parses these payloads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from mmviz import interventions
from mmviz.errors import InputError
from mmviz.interventions import (
    DEFAULT_NEW_TOKENS,
    FILLS,
    MAX_NEW_TOKENS,
    PRESETS,
    Ablate,
    Generation,
    Knockout,
    KnockoutCurve,
    Result,
    default_fill,
)
from mmviz.methods import ImageReliance, image_reliance
from mmviz.methods.common import model_run
from mmviz.methods.image_reliance import RELIANCE_BASELINES
from mmviz.records import Trace
from mmviz.widget.browser_state import printable, whole

FINITE = 1e30
"""Scores that are not finite (log p of an impossible token: −inf) are sent as ±1e30: JSON has no infinity."""


OTHER_FILL = "other"
"""The fill that puts another image's tokens at the selected positions: offered only with ``other_image=``."""

DEFAULT_RELIANCE_BASELINE = "blank"
"""The baseline the token strip measures image reliance against first: a uniform grey image. Blurring keeps an
object's colour (on the shapes world the colour answer's KL is 0.012 nats against the blurred image but 5.6
against the blank one, :data:`mmviz.methods.image_reliance.DEFAULT_THRESHOLD`), so the blank image separates the
words read off the image from the template best; the strip can switch to ``"blur"`` or ``"mean"``."""

RELIANCE_PREFIX = "image_reliance:baseline="
"""How :func:`mmviz.methods.image_reliance` keys its kept results in ``trace.results``."""


def _number(value: float) -> float:
    return float(np.nan_to_num(float(value), nan=0.0, posinf=FINITE, neginf=-FINITE))


def described(chosen: Ablate | Knockout) -> dict[str, Any]:
    """``chosen.to_dict()`` as plain JSON: an "other" fill's image stays in the kernel (the browser never sends it)."""
    return chosen.to_dict(image=False) if isinstance(chosen, Ablate) else chosen.to_dict()


def run_payload(index: int, result: Result) -> dict[str, Any]:
    """One kept run as plain JSON: ``index`` in the history, the intervention (``to_dict``), its ``label``, and
    per answer token ``positions``, ``clean`` log p and ``delta`` (Δ log p)."""
    effect = result.effect
    return {
        "v": 1,
        "index": int(index),
        "intervention": described(result.intervention),
        "label": printable(result.intervention.describe())[:200],
        "description": printable(effect.description)[:300],
        "positions": [int(p) for p in effect.positions],
        "clean": [_number(v) for v in effect.clean],
        "delta": [_number(v) for v in effect.delta],
    }


def curve_payload(curve: KnockoutCurve) -> dict[str, Any]:
    """A knockout-by-window curve as plain JSON: window ``width``, ``starts`` (first layer of each window) and
    ``delta`` (Δ log p of the first answer token per window), ``clean`` (its log p)."""
    return {
        "v": 1,
        "width": int(curve.width),
        "sources": curve.sources,
        "to": curve.to,
        "starts": [int(s) for s in np.asarray(curve.starts)],
        "delta": [_number(v) for v in np.asarray(curve.delta)],
        "clean": _number(curve.clean),
    }


def reliance_payload(reliance: ImageReliance) -> dict[str, Any]:
    """Image reliance as plain JSON for the token strip: the ``baseline`` image, and per answer token its
    ``positions``, ``kl`` (KL(p_real ‖ p_baseline) of the next-token distribution, nats, ≥ 0) and ``pcxmi``
    (log p_real − log p_baseline of the token). A few numbers per answer token: the strip shades and sorts by them
    without asking the kernel again.

    Example:
        >>> reliance_payload(mmviz.methods.image_reliance(trace, "blank"))["kl"]      # doctest: +SKIP
        [5.61, 3.1e-05]
    """
    return {
        "v": 1,
        "baseline": reliance.baseline,
        "positions": [int(p) for p in np.asarray(reliance.positions)],
        "kl": [_number(v) for v in np.asarray(reliance.kl)],
        "pcxmi": [_number(v) for v in np.asarray(reliance.pcxmi)],
    }


def generation_payload(trace: Trace, chosen: Ablate | Knockout | None, generated: Generation) -> dict[str, Any]:
    """A greedy answer (:func:`mmviz.interventions.generate`) as plain JSON: the ``intervention`` (``to_dict``, or
    None for the clean model) and its ``label``, the new ``token_ids``, their display ``tokens`` and decoded
    ``text``, why decoding ``stopped`` (``"eos"`` or ``"length"``), and the trace's own answer as ``original``."""
    ids = list(generated.token_ids)
    return {
        "v": 1,
        "intervention": None if chosen is None else described(chosen),
        "label": "no intervention" if chosen is None else printable(chosen.describe())[:200],
        "token_ids": ids,
        "tokens": [printable(t)[:200] for t in model_run(trace).adapter.display_tokens(ids)],
        "text": printable(generated.text)[:4000],
        "original": printable(trace.answer)[:4000],
        "stopped": generated.stopped,
    }


def _strings(content: dict[str, Any], allowed: set[str], what: str) -> None:
    extra = sorted(printable(str(key))[:40] for key in set(content) - allowed)
    if extra:
        raise InputError(f"{what} has no field {extra[0]!r}; its fields are {sorted(allowed)}")


def _whole_list(value: object, name: str, limit: int) -> list[int]:
    """A JSON list of whole numbers (floats like 3.0 allowed), at most ``limit`` long; else :class:`InputError`."""
    if not isinstance(value, list):
        raise InputError(f"{name} must be a list of whole numbers, not {printable(repr(value))[:100]}")
    if len(value) > limit:
        raise InputError(f"{name} lists {len(value)} entries; this trace has at most {limit}")
    out = []
    for item in value:
        item = whole(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise InputError(f"{name} must hold whole numbers, not {printable(repr(item))[:100]}")
        out.append(item)
    return out


class Interventions:
    """What the Interventions panel can ask of one trace: run an ablation or a knockout, and a knockout curve."""

    def __init__(self, trace: Trace, other_image: Image.Image | None = None) -> None:
        if other_image is not None and not isinstance(other_image, Image.Image):
            raise InputError(f"other_image must be a PIL image, not {type(other_image).__name__}")
        self._trace = trace
        self._other_image = other_image.convert("RGB") if other_image is not None else None

    @property
    def fills(self) -> list[str]:
        """The fills the panel offers: :data:`mmviz.interventions.FILLS`, "other" only with an ``other_image``."""
        return [f for f in FILLS if f != OTHER_FILL or self._other_image is not None]

    def reliance(self) -> list[dict[str, Any]]:
        """Every image reliance kept on the trace (:func:`~mmviz.methods.image_reliance`), as
        :func:`reliance_payload`."""
        kept = [
            (key, value)
            for key, value in self._trace.results.items()
            if key.startswith(RELIANCE_PREFIX) and isinstance(value, ImageReliance)
        ]
        return [reliance_payload(value) for _, value in sorted(kept)]

    def meta(self) -> dict[str, Any]:
        """``meta["interventions"]``: whether new runs are possible, the choices, and every kept run and curve (so a
        loaded trace and a standalone page show them)."""
        trace = self._trace
        curve = trace.results.get(interventions.CURVE_KEY)
        return {
            "can_run": trace.run is not None and len(trace.image_positions) > 0,
            "fills": self.fills,
            "default_fill": default_fill(trace),
            "presets": list(PRESETS),
            "history": [run_payload(i, r) for i, r in enumerate(interventions.history(trace))],
            "curve": curve_payload(curve) if isinstance(curve, KnockoutCurve) else None,
            "max_new_tokens": MAX_NEW_TOKENS,
            "reliance": {
                "can_measure": trace.run is not None and trace.answer_start < len(trace.tokens),
                "baselines": list(RELIANCE_BASELINES),
                "default_baseline": DEFAULT_RELIANCE_BASELINE,
                "kept": self.reliance(),
            },
        }

    def parse(self, raw: object) -> Ablate | Knockout:
        """The intervention a browser message describes, every field checked against this trace."""
        trace = self._trace
        if not isinstance(raw, dict):
            raise InputError("an intervene request needs an intervention object ({'kind': 'ablate' | 'knockout', …})")
        kind = raw.get("kind")
        if kind == "ablate":
            _strings(raw, {"kind", "positions", "fill"}, "an ablate intervention")
            positions = _whole_list(raw.get("positions"), "positions", len(trace.tokens))
            if not positions:
                raise InputError("positions is empty: select at least one image patch")
            fill = raw.get("fill", default_fill(trace))
            if not isinstance(fill, str) or fill not in self.fills:
                hint = " (the 'other' fill needs mmviz.inspect(..., other_image=...))" if fill == OTHER_FILL else ""
                raise InputError(f"fill must be one of {self.fills}, not {printable(repr(fill))[:100]}{hint}")
            extra = {"other_image": self._other_image} if fill == OTHER_FILL else {}
            chosen: Ablate | Knockout = Ablate(tuple(positions), fill, **extra)  # type: ignore[arg-type]
        elif kind == "knockout":
            _strings(raw, {"kind", "layers", "sources", "to"}, "a knockout intervention")
            layers = _whole_list(raw.get("layers"), "layers", trace.num_layers)
            if not layers:
                raise InputError(f"layers is empty: choose a window of decoder layers in 0…{trace.num_layers - 1}")
            sources = raw.get("sources", "image")
            if sources != "image":
                raise InputError("sources must be 'image' (the panel knocks out the image tokens)")
            to = raw.get("to", "answer")
            if not isinstance(to, str) or to not in PRESETS:
                raise InputError(f"to must be one of {list(PRESETS)}, not {printable(repr(to))[:100]}")
            chosen = Knockout(tuple(layers), "image", to)  # type: ignore[arg-type]
        else:
            raise InputError(
                f"unknown intervention kind {printable(repr(kind))[:100]}; expected 'ablate' or 'knockout'"
            )
        chosen.check(trace)
        return chosen

    def intervene(self, content: dict[str, Any]) -> dict[str, Any]:
        """``{"type": "intervene", "intervention": {...}}``: run it (kept in the trace) and reply its run payload."""
        chosen = self.parse(content.get("intervention"))
        interventions.apply(self._trace, [chosen])
        kept = interventions.history(self._trace)
        return run_payload(len(kept) - 1, kept[-1])

    def curve(self, content: dict[str, Any]) -> dict[str, Any]:
        """``{"type": "curve", "width", "to"?}``: Δ log p of the first answer token with the image knocked out of a
        window of ``width`` layers at every depth (one forward per window)."""
        width = whole(content.get("width"))
        layers = self._trace.num_layers
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= layers:
            raise InputError(
                f"width must be a whole number of layers in 1…{layers}, not {printable(repr(width))[:100]}"
            )
        to = content.get("to", "answer")
        if not isinstance(to, str) or to not in PRESETS:
            raise InputError(f"to must be one of {list(PRESETS)}, not {printable(repr(to))[:100]}")
        return curve_payload(interventions.knockout_curve(self._trace, width, to=to))

    def generate(self, content: dict[str, Any]) -> dict[str, Any]:
        """``{"type": "generate", "intervention": {...} | null, "max_new_tokens"?}``: the greedy answer with the
        intervention applied (:func:`mmviz.interventions.generate`; null: the clean model). Nothing is kept."""
        trace = self._trace
        model_run(trace)  # refused at once without a model
        raw = content.get("intervention")
        chosen = None if raw is None else self.parse(raw)
        budget = whole(content.get("max_new_tokens", DEFAULT_NEW_TOKENS))
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= MAX_NEW_TOKENS:
            raise InputError(
                f"max_new_tokens must be a whole number in 1…{MAX_NEW_TOKENS}, not {printable(repr(budget))[:100]}"
            )
        return generation_payload(trace, chosen, interventions.generate(trace, chosen, max_new_tokens=budget))

    def measure_reliance(self, content: dict[str, Any]) -> dict[str, Any]:
        """``{"type": "reliance", "baseline"?}``: every answer token's image reliance against ``baseline``
        (``"blank"``, ``"blur"`` or ``"mean"``; two forwards, kept on the trace), as :func:`reliance_payload`."""
        baseline = content.get("baseline", DEFAULT_RELIANCE_BASELINE)
        if not isinstance(baseline, str) or baseline not in RELIANCE_BASELINES:
            raise InputError(
                f"baseline must be one of {list(RELIANCE_BASELINES)}, not {printable(repr(baseline))[:100]}"
            )
        key = RELIANCE_PREFIX + baseline
        if key not in self._trace.results:
            model_run(self._trace)  # a kept measurement needs no model; a new one does
        return reliance_payload(image_reliance(self._trace, baseline))  # type: ignore[arg-type]
