"""``Map``: the common result of every method that explains tokens with image regions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mmviz import selection
from mmviz.errors import InputError


@dataclass(frozen=True, repr=False)
class Map:
    """Values per image position for some sequence positions, and what they mean.

    Attributes:
        method: the method's name: its key in :data:`mmviz.methods.CATALOGUE` (``"relevancy"``, ``"attention_max"``).
        label: a short human label for menus.
        meaning: one or two plain sentences: what a high value says, and what it does not.
        values: float32 ``(R, P)`` — row r belongs to sequence position ``positions[r]``, column p to image position
            ``columns[p]`` — or ``(L, R, P)`` when the map depends on a layer (see ``layers``).
        positions: ``(R,)`` the sequence position of each row: the explained token (``rows == "targets"``) or the
            query whose attention/flow the row shows (``rows == "queries"``; the row predicting token t is t − 1).
        columns: ``(P,)`` image positions (the trace's ``image_positions``).
        signed: values can be negative (draw with a diverging colour map centred at 0).
        layers: ``(L,)`` the decoder layer of each slice when the map is per layer (slice ℓ = at or after decoder
            layer ``layers[ℓ]``), else None. Only decoder layers: never the embeddings, never negative.
        text_values: optional float32 ``(R, N)`` over every sequence position (e.g. relevancy of prompt tokens).
        info: what the numbers depend on (baseline, steps, completeness error, ...).

    Example:
        >>> m = mmviz.methods.relevancy(trace)                     # doctest: +SKIP
        >>> m.row(trace.answer_start).shape                       # one value per image token   # doctest: +SKIP
        (576,)
    """

    method: str
    label: str
    meaning: str
    values: np.ndarray
    positions: np.ndarray
    columns: np.ndarray
    signed: bool = False
    layers: np.ndarray | None = None
    text_values: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    rows: Literal["targets", "queries"] = "targets"

    def __post_init__(self) -> None:
        expected = 3 if self.layers is not None else 2
        if self.layers is not None and len(self.layers) and int(np.min(self.layers)) < 0:
            raise ValueError(f"{self.method}: layers must be decoder layers (≥ 0), not {self.layers.tolist()}")
        if (
            self.values.ndim != expected
            or self.values.shape[-2:] != (len(self.positions), len(self.columns))
            or (self.layers is not None and self.values.shape[0] != len(self.layers))
        ):
            raise ValueError(
                f"{self.method}: values of shape {self.values.shape} do not match {len(self.positions)} rows × "
                f"{len(self.columns)} image columns" + (f" × {len(self.layers)} layers" if expected == 3 else "")
            )

    def row(self, position: int, layer: selection.LayerChoice | None = None) -> np.ndarray:
        """The ``(P,)`` values for sequence ``position``; for per-layer maps ``layer`` picks a slice (one of
        :attr:`layers`, ``"mean"`` over them, or None: the last)."""
        found = np.flatnonzero(self.positions == position)
        if len(found) == 0:
            raise InputError(f"{self.method} has no row for position {position} (rows: {self.positions.tolist()})")
        if self.layers is None:
            if layer is not None:
                raise InputError(f"{self.method} is not per layer; call row(position) without a layer")
            return self.values[found[0]]
        if layer is None:
            return self.values[-1, found[0]]
        if layer == selection.MEAN:
            return self.values[:, found[0]].mean(axis=0)
        chosen = selection.layer(layer, int(self.layers.max()) + 1, mean=True)
        selection.captured([chosen], self.layers.tolist(), what=f"layers of the {self.method} map")  # type: ignore[list-item]
        return self.values[int(np.flatnonzero(self.layers == chosen)[0]), found[0]]

    def for_target(self, position: int, layer: selection.LayerChoice | None = None) -> np.ndarray:
        """The row that explains the token at ``position``: its own row for target maps, the row of the query that
        predicts it (``position − 1``) for query maps (attention, rollout)."""
        return self.row(position - 1 if self.rows == "queries" else position, layer)

    def __repr__(self) -> str:
        shape = "×".join(str(s) for s in self.values.shape)
        return f"<mmviz.Map {self.method}: {shape}, {'signed' if self.signed else 'non-negative'}>"
