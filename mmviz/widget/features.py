"""The Inspector's Features panel, kernel side: MLP neurons and SAE latents per position, fetched per layer through
the widget's one request channel, a unit's exact activation and card on request, and clamping an SAE latent.

Everything the browser sends is validated here before anything runs (types, ranges, unknown kinds, no SAE given);
a bad request raises :class:`~mmviz.InputError`, which the Inspector answers with ``ok: false``. The contract is
``docs/widget-protocol.md`` ("Features"); ``js/src/protocol/features.ts`` parses these payloads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmviz import wire
from mmviz.errors import InputError
from mmviz.features import SparseAutoencoder, TopActivations, UnitCard, clamp, encode, neurons
from mmviz.features.states import check_depth
from mmviz.methods.common import Effect
from mmviz.records import Trace
from mmviz.selection import index
from mmviz.widget.browser_state import printable, whole

TOP_K = 16
"""Units kept per position in the panel's payloads: the list shows the strongest few, and half of the library's
default k halves the bytes of every layer (``N × k × 6`` bytes: int32 index + float16 value)."""

LABEL_CHARS = 200
"""Labels and card tokens are cut to this many characters: they come from files and tokenizers, not from mmviz."""

FLOAT16_MAX = 65504.0
"""Activations beyond float16's range (a huge MLP activation) are clipped to it rather than refused."""

FETCHES = ("neurons", "sae", "unit")
"""The fetch kinds this panel serves (besides the Inspector's own ``heads``, ``lens``, ``projection``)."""

KINDS = ("neurons", "sae")


def text(value: object) -> str:
    """A label or token string that can cross to the browser: UTF-8-safe (no lone surrogates), bounded."""
    return printable(str(value))[:LABEL_CHARS]


def features_payload(top: TopActivations) -> dict[str, Any]:
    """One layer's top-k units at every position, for the Features panel.

    ``indices`` int32 ``[N·k]`` (raw little-endian bytes), ``values`` float16 envelope ``[N, k]`` (most active
    first; a position with fewer than k active units has zeros at the end), ``labels`` for the units that appear
    (``{"17": "red object"}``), and for an SAE ``reconstruction_error`` float16 envelope ``[N]``.
    """
    values = np.clip(np.nan_to_num(top.values.astype(np.float32)), -FLOAT16_MAX, FLOAT16_MAX)
    used = np.unique(top.indices).tolist()
    payload: dict[str, Any] = {
        "v": 1,
        "kind": top.kind,
        "layer": int(top.layer),
        "width": int(top.width),
        "k": top.k,
        "n_positions": len(top.indices),
        "indices": np.ascontiguousarray(top.indices, dtype="<i4").tobytes(),
        "values": wire.encode(values, dtype="float16"),
        "labels": {str(unit): text(top.labels[unit]) for unit in used if unit in top.labels},
        "reconstruction_error": None,
    }
    if top.reconstruction_error is not None:
        error = np.clip(np.nan_to_num(top.reconstruction_error), 0.0, FLOAT16_MAX)
        payload["reconstruction_error"] = wire.encode(error, dtype="float16")
    return payload


def unit_payload(top: TopActivations, unit: int) -> dict[str, Any]:
    """One unit's exact activation at every position (float32 envelope ``[N]``) and its card."""
    activation = np.nan_to_num(top.activation(unit), posinf=FLOAT16_MAX, neginf=-FLOAT16_MAX)
    return {
        "v": 1,
        "kind": top.kind,
        "layer": int(top.layer),
        "unit": int(unit),
        "activation": wire.encode(activation, dtype="float32"),
        "card": card_payload(top.card(unit)),
    }


def card_payload(card: UnitCard) -> dict[str, Any]:
    """A :class:`~mmviz.features.UnitCard` as JSON (its strings made safe to send)."""
    return {
        "label": text(card.label),
        "top_tokens": [text(token) for token in card.top_tokens],
        "top_logits": [float(v) for v in card.top_logits],
        "peak_position": int(card.peak_position),
        "peak_activation": float(np.nan_to_num(card.peak_activation)),
        "active_positions": int(card.active_positions),
    }


def clamp_payload(effect: Effect, latent: int, value: float) -> dict[str, Any]:
    """The answer's change when ``latent`` is set to ``value``: ``positions`` int32 ``[T]`` (the answer tokens),
    ``delta`` and ``clean`` float32 envelopes ``[T]`` (Δ log p and log p without the clamp)."""
    return {
        "v": 1,
        "latent": int(latent),
        "value": float(value),
        "positions": np.asarray(effect.positions, dtype="<i4").tobytes(),
        "delta": wire.encode(np.asarray(effect.delta, dtype=np.float32), dtype="float32"),
        "clean": wire.encode(np.asarray(effect.clean, dtype=np.float32), dtype="float32"),
        "description": text(effect.description),
    }


def _integer(content: dict[str, Any], key: str) -> Any:
    """``content[key]`` with a whole float (JSON numbers may arrive as floats) made an int; absent: None."""
    return whole(content.get(key))


class Features:
    """What the Features panel can ask for on one trace: neurons of any decoder layer (with the model), and the
    latents of ``sae`` when given. Top-k results are computed once per (kind, layer) and kept."""

    def __init__(self, trace: Trace, sae: SparseAutoencoder | None = None) -> None:
        if sae is not None and not isinstance(sae, SparseAutoencoder):
            raise InputError(f"sae must come from mmviz.features.load_sae(path), not {type(sae).__name__}")
        if sae is not None:
            if sae.depth is None:
                raise InputError(
                    "this SAE's file does not say which layer it reads: load it with load_sae(path, depth=...)"
                )
            check_depth(trace, sae.depth)
        self._trace = trace
        self._sae = sae
        self._cache: dict[tuple[str, int], TopActivations] = {}

    @property
    def sae(self) -> SparseAutoencoder | None:
        return self._sae

    def meta(self) -> dict[str, Any]:
        """``meta["features"]``: whether neurons can be read (the model is attached) and the SAE's layer and width."""
        sae = None
        if self._sae is not None:
            sae = {"layer": int(self._sae.depth) - 1, "width": int(self._sae.d_sae)}  # type: ignore[operator]
        return {"neurons": self._trace.run is not None, "sae": sae, "k": TOP_K}

    def top(self, kind: str, layer: int | None = None) -> TopActivations:
        """The kept top-k of ``kind`` (``"neurons"`` of decoder ``layer``, or ``"sae"``), computed on first use."""
        if kind == "sae":
            sae = self._require_sae()
            key = ("sae", 0)
            if key not in self._cache:
                self._cache[key] = encode(self._trace, sae, k=TOP_K)
            return self._cache[key]
        if kind != "neurons":
            raise InputError(f"kind must be one of {list(KINDS)}, not {kind!r}")
        chosen = int(index(layer, self._trace.num_layers, "layer", unit="decoder layer"))
        if self._trace.run is None:
            raise InputError("neurons need the model: this trace has none attached (trace.attach(model, processor))")
        key = ("neurons", chosen)
        if key not in self._cache:
            self._cache[key] = neurons(self._trace, chosen, k=TOP_K)
        return self._cache[key]

    def fetch(self, what: str, content: dict[str, Any]) -> dict[str, Any]:
        """The payload of a fetch request for ``what`` in :data:`FETCHES`, its fields validated first."""
        if what == "neurons":
            if "layer" not in content:
                raise InputError("a neurons fetch needs a decoder layer ('layer': 0 … L−1)")
            return features_payload(self.top("neurons", _integer(content, "layer")))
        if what == "sae":
            self._check_sae_layer(content)
            return features_payload(self.top("sae"))
        if what == "unit":
            kind = content.get("kind")
            if not isinstance(kind, str) or kind not in KINDS:
                raise InputError(f"a unit fetch needs kind 'neurons' or 'sae', not {printable(repr(kind))[:200]}")
            if kind == "sae":
                self._check_sae_layer(content)
            elif "layer" not in content:
                raise InputError("a neurons unit fetch needs a decoder layer ('layer': 0 … L−1)")
            top = self.top(kind, _integer(content, "layer"))
            unit = int(index(_integer(content, "unit"), top.width, "unit", unit=f"{kind} unit"))
            return unit_payload(top, unit)
        raise InputError(f"unknown feature fetch {what!r}; expected one of {list(FETCHES)}")

    def clamp(self, content: dict[str, Any]) -> dict[str, Any]:
        """``{"type": "clamp", "latent", "value"?}``: set SAE ``latent`` to ``value`` (default 0) at every image
        position and report Δ log p of every answer token (:func:`mmviz.features.clamp`)."""
        sae = self._require_sae()
        latent = int(index(_integer(content, "latent"), sae.d_sae, "latent", unit="SAE latent"))
        value = content.get("value", 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise InputError(f"value must be a finite number (0 switches the latent off), not {value!r}"[:300])
        if len(self._trace.image_positions) == 0:
            raise InputError("this trace has no image positions to clamp the latent at")
        effect = clamp(self._trace, sae, latent, float(value), positions=self._trace.image_positions.tolist())
        return clamp_payload(effect, latent, float(value))

    def _require_sae(self) -> SparseAutoencoder:
        if self._sae is None:
            raise InputError("no SAE was given: show one with mmviz.inspect(..., sae=mmviz.features.load_sae(path))")
        return self._sae

    def _check_sae_layer(self, content: dict[str, Any]) -> None:
        """An SAE request names no layer, or the SAE's own (there is one SAE, at one layer)."""
        expected = int(self._require_sae().depth) - 1  # type: ignore[arg-type]
        layer = _integer(content, "layer")
        if "layer" in content and (isinstance(layer, bool) or layer != expected):
            raise InputError(f"the SAE reads after layer {expected}; it has no codes at layer {layer!r}"[:300])
