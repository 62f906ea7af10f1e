"""What the neuron and SAE views show: the k most active units at every position, and a card per unit.

A *unit* is an SAE latent or an MLP neuron. :class:`TopActivations` keeps, for every sequence position, the indices
(int32) and activations (float16) of its k most active units — the compact form the widget fetches per layer — and
each unit's exact activation over all positions on request (:meth:`TopActivations.activation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from mmviz.errors import InputError

Kind = Literal["sae", "neurons"]


@dataclass(frozen=True, repr=False)
class UnitCard:
    """One unit at a glance.

    Attributes:
        unit: its index; ``label``: the SAE file's label, or "".
        top_tokens / top_logits: the tokens its output direction promotes most, read through the model's final
            norm and unembedding (a logit lens of the direction).
        peak_position / peak_activation: where in the sequence it fires most, and how much.
        active_positions: how many positions it is active (> 0) at.
    """

    unit: int
    label: str
    top_tokens: list[str]
    top_logits: list[float]
    peak_position: int
    peak_activation: float
    active_positions: int


@dataclass(frozen=True, repr=False)
class TopActivations:
    """The ``k`` most active units at every position of a trace.

    Attributes:
        kind: ``"sae"`` (latents of a sparse autoencoder) or ``"neurons"`` (MLP neurons).
        layer: the decoder layer: whose MLP the neurons belong to, or after which the SAE reads the residual
            stream (−1 for an SAE on the embeddings).
        width: how many units there are (d_sae or the MLP width).
        indices: int32 ``(N, k)`` unit indices, most active first; ``values``: float16 ``(N, k)`` activations.
        reconstruction_error: SAE only: float32 ``(N,)`` ‖x − x̂‖ / ‖x‖ at every position (the SAE's error term).
        labels: unit → label (SAE files may carry them).

    Example:
        >>> codes = mmviz.features.encode(trace, sae, k=32)            # doctest: +SKIP
        >>> codes.top_at(trace.image_positions[5])[:3]                 # doctest: +SKIP
        [(17, 4.2), (3, 1.1), (250, 0.7)]
    """

    kind: Kind
    layer: int
    width: int
    indices: np.ndarray
    values: np.ndarray
    reconstruction_error: np.ndarray | None = None
    labels: dict[int, str] = field(default_factory=dict)
    _exact: Callable[[int], np.ndarray] | None = field(default=None, compare=False)
    _direction: Callable[[int], tuple[list[str], list[float]]] | None = field(default=None, compare=False)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def top_at(self, position: int) -> list[tuple[int, float]]:
        """``(unit, activation)`` of the k most active units at sequence ``position``, most active first."""
        row = self._row(position)
        return [(int(u), float(v)) for u, v in zip(self.indices[row], self.values[row], strict=True) if v > 0]

    def activation(self, unit: int) -> np.ndarray:
        """float32 ``(N,)``: ``unit``'s activation at every position — exact (recomputed from the kept states), not
        only where it made the top k."""
        self._check_unit(unit)
        if self._exact is not None:
            return self._exact(int(unit))
        found = self.indices == unit  # rebuilt from a file without the source: the top-k part is all there is
        return np.where(found, self.values.astype(np.float32), 0.0).sum(axis=1).astype(np.float32)

    def card(self, unit: int, k: int = 8) -> UnitCard:
        """The :class:`UnitCard` of ``unit``: its promoted tokens, label and where it fires."""
        activation = self.activation(unit)
        tokens, logits = self._direction(int(unit)) if self._direction is not None else ([], [])
        peak = int(np.argmax(activation))
        return UnitCard(
            unit=int(unit),
            label=self.labels.get(int(unit), ""),
            top_tokens=tokens[:k],
            top_logits=logits[:k],
            peak_position=peak,
            peak_activation=float(activation[peak]),
            active_positions=int((activation > 0).sum()),
        )

    def _row(self, position: int) -> int:
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise InputError(f"position must be a sequence position (an int), not {position!r}")
        if not 0 <= position < len(self.indices):
            raise InputError(f"position {position} is outside the sequence (0 … {len(self.indices) - 1})")
        return int(position)

    def _check_unit(self, unit: int) -> None:
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < self.width:
            raise InputError(f"unit must be an index in 0 … {self.width - 1}, not {unit!r}")

    def __repr__(self) -> str:
        what = "SAE latents" if self.kind == "sae" else "MLP neurons"
        where = f"layer {self.layer}, {len(self.indices)} positions"
        return f"<mmviz.TopActivations top-{self.k} of {self.width} {what} at {where}>"


def top_k(activations: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 indices and float16 values (clipped to float16's range) of the ``k`` largest entries of every row of
    ``(N, width)``."""
    best = activations.topk(min(k, activations.shape[-1]), dim=-1)
    limit = torch.finfo(torch.float16).max  # an activation past float16's range is kept at its edge, not as inf
    values = best.values.clamp(-limit, limit).to(torch.float16)
    return best.indices.to(torch.int32).cpu().numpy(), values.cpu().numpy()


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a whole number ≥ 1 (units kept per position), not {k!r}")
    return int(k)
