"""The method contract: every map method declares its :class:`MethodSpec` once, next to its function.

``@method(...)`` registers the function in :data:`CATALOGUE` under the spec's name; the function builds its
result with ``spec.map(...)``, the one factory of a :class:`~mmviz.records.map.Map`, so ``Map.method`` is always
the catalogue key and the spec's label, meaning and sign travel with every map. A preset of another method (the
maximum over heads of attention) is a :func:`variant`: its own name, label and meaning, the same function.

The catalogue lives here, beside :class:`~mmviz.records.trace.Trace`, so that ``trace.compute(name)`` finds a
method by name without the trace importing the methods; importing :mod:`mmviz.methods` fills it.

Example:
    >>> @method("my_saliency", label="My saliency", meaning="What it says.", cost="fast")   # doctest: +SKIP
    ... def my_saliency(trace, targets=None):
    ...     return my_saliency.spec.map(values=..., positions=..., columns=trace.image_positions)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import numpy as np

from mmviz.errors import InputError
from mmviz.records.map import Map

Trace = Any
"""A :class:`mmviz.records.trace.Trace`; not imported here, because the trace looks its methods up in this module."""

Cost = Literal["instant", "fast", "slow"]
Rows = Literal["targets", "queries"]


_F = TypeVar("_F", bound=Callable[..., Map])


@dataclass(frozen=True)
class MethodSpec:
    """What a map method is, and what a user should expect before running it.

    Attributes:
        name: the key in :data:`CATALOGUE`, ``Trace.maps`` and the widget; every map it makes carries it.
        function: ``function(trace, **settings) -> Map``.
        label: menu label.
        meaning: plain-language description of the map: what a high value says, and what it does not.
        signed: values can be negative (diverging colours centred at 0).
        per_layer: one map per decoder layer (the layer selector picks it).
        targeted: explains a score (a :class:`~mmviz.methods.Target`, default every answer token) rather than
            describing where the model reads.
        cost: ``"instant"`` (from the captured forward), ``"fast"`` (a few passes), ``"slow"`` (many passes).
        rows: whether map rows are explained ``"targets"`` or attention ``"queries"`` (the row predicting token t
            is t − 1).
        settings: the preset arguments of a :func:`variant` (empty for a method's own entry).
        sequence_positions: it needs the image at SEQUENCE positions (hidden states, residual streams or
            position-to-position attention there), so a family whose text reads the image through cross-attention
            keys refuses it (``mmviz.methods.common.sequence_image_positions``) and the widget says why.
    """

    name: str
    function: Callable[..., Map] = field(repr=False)
    label: str
    meaning: str
    signed: bool = False
    per_layer: bool = False
    targeted: bool = True
    cost: Cost = "fast"
    rows: Rows = "targets"
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sequence_positions: bool = False

    def map(
        self,
        *,
        values: np.ndarray,
        positions: np.ndarray,
        columns: np.ndarray,
        layers: np.ndarray | None = None,
        text_values: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
    ) -> Map:
        """The :class:`Map` of this method: its name, label, meaning, sign and row kind, with these numbers."""
        return Map(
            method=self.name,
            label=self.label,
            meaning=self.meaning,
            values=np.asarray(values, dtype=np.float32),
            positions=np.asarray(positions, dtype=np.int64),
            columns=np.asarray(columns, dtype=np.int64),
            signed=self.signed,
            layers=None if layers is None else np.asarray(layers, dtype=np.int64),
            text_values=None if text_values is None else np.asarray(text_values, dtype=np.float32),
            info={} if info is None else info,
            rows=self.rows,
        )

    def compute(self, trace: Trace, **settings: Any) -> Map:
        """Run the method on ``trace`` with its preset settings and ``settings``; the map records them in
        ``info["settings"]`` and carries this spec's name, label and meaning."""
        chosen = {**self.settings, **settings}
        result = self.function(trace, **chosen)
        if result.method != self.name:  # a variant: the same function under another name
            result = replace(result, method=self.name, label=self.label, meaning=self.meaning)
        result.info["settings"] = chosen
        return result

    def describe(self) -> dict[str, object]:
        """The spec as plain data (what the widget's method switcher lists)."""
        return {
            "name": self.name,
            "label": self.label,
            "meaning": self.meaning,
            "signed": self.signed,
            "layered": self.per_layer,
            "cost": self.cost,
        }


CATALOGUE: dict[str, MethodSpec] = {}
"""Every registered map method by name, cheapest first (instant, fast, slow; registration order within a cost):
the order of the widget's method switcher."""

_COST_ORDER = {"instant": 0, "fast": 1, "slow": 2}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`CATALOGUE` (a name is registered once)."""
    known = CATALOGUE.get(spec.name)
    if known is not None and _origin(known.function) != _origin(spec.function):  # a reloaded module may re-register
        raise ValueError(f"a method named {spec.name!r} is already registered ({_origin(known.function)})")
    CATALOGUE[spec.name] = spec
    ordered = sorted(CATALOGUE.values(), key=lambda entry: _COST_ORDER[entry.cost])  # stable: registration order
    CATALOGUE.clear()
    CATALOGUE.update((entry.name, entry) for entry in ordered)
    return spec


def method(
    name: str,
    *,
    label: str,
    meaning: str,
    signed: bool = False,
    per_layer: bool = False,
    targeted: bool = True,
    cost: Cost = "fast",
    rows: Rows = "targets",
    sequence_positions: bool = False,
) -> Callable[[_F], _F]:
    """Declare a map method: register the decorated function under ``name`` and attach its spec as ``.spec``."""

    def declare(function: _F) -> _F:
        spec = MethodSpec(
            name,
            function,
            label,
            meaning,
            signed,
            per_layer,
            targeted,
            cost,
            rows,
            sequence_positions=sequence_positions,
        )
        function.spec = register(spec)  # type: ignore[attr-defined]
        return function

    return declare


def variant(of: Callable[..., Map], name: str, *, label: str, meaning: str, **settings: Any) -> MethodSpec:
    """Register a preset of the method ``of`` (e.g. attention with ``heads="max"``) as its own catalogue entry.

    Example:
        >>> variant(attention, "attention_max", label="Attention (max)", meaning="…", heads="max")  # doctest: +SKIP
    """
    base: MethodSpec = of.spec  # type: ignore[attr-defined]
    return register(replace(base, name=name, label=label, meaning=meaning, settings=MappingProxyType(settings)))


def lookup(name: object) -> MethodSpec:
    """The spec named ``name``, or an :class:`InputError` listing the catalogue."""
    if not isinstance(name, str) or name not in CATALOGUE:
        raise InputError(f"unknown method {name!r}; choose from {list(CATALOGUE)}")
    return CATALOGUE[name]


def _origin(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"
