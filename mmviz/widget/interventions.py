"""The Inspector's Interventions panel, kernel side: ablate chosen image patches or knock out attention in a layer
window, one forward each, and reply Δ log p of every answer token; slide a knockout window over the depth.

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

from mmviz import interventions
from mmviz.errors import InputError
from mmviz.interventions import DEFAULT_FILL, FILLS, PRESETS, Ablate, Knockout, KnockoutCurve, Result
from mmviz.records import Trace
from mmviz.widget.browser_state import printable, whole

FINITE = 1e30
"""Scores that are not finite (log p of an impossible token: −inf) are sent as ±1e30: JSON has no infinity."""


def _number(value: float) -> float:
    return float(np.nan_to_num(float(value), nan=0.0, posinf=FINITE, neginf=-FINITE))


def run_payload(index: int, result: Result) -> dict[str, Any]:
    """One kept run as plain JSON: ``index`` in the history, the intervention (``to_dict``), its ``label``, and
    per answer token ``positions``, ``clean`` log p and ``delta`` (Δ log p)."""
    effect = result.effect
    return {
        "v": 1,
        "index": int(index),
        "intervention": result.intervention.to_dict(),
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

    def __init__(self, trace: Trace) -> None:
        self._trace = trace

    def meta(self) -> dict[str, Any]:
        """``meta["interventions"]``: whether new runs are possible, the choices, and every kept run and curve (so a
        loaded trace and a standalone page show them)."""
        trace = self._trace
        curve = trace.results.get(interventions.CURVE_KEY)
        return {
            "can_run": trace.run is not None and len(trace.image_positions) > 0,
            "fills": list(FILLS),
            "default_fill": DEFAULT_FILL,
            "presets": list(PRESETS),
            "history": [run_payload(i, r) for i, r in enumerate(interventions.history(trace))],
            "curve": curve_payload(curve) if isinstance(curve, KnockoutCurve) else None,
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
            fill = raw.get("fill", DEFAULT_FILL)
            if not isinstance(fill, str) or fill not in FILLS:
                raise InputError(f"fill must be one of {list(FILLS)}, not {printable(repr(fill))[:100]}")
            chosen: Ablate | Knockout = Ablate(tuple(positions), fill)  # type: ignore[arg-type]
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
