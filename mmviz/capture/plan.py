"""Capture plans: what one analysis forward records, and how many bytes that takes, checked before running."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmviz import selection
from mmviz.adapters.base import ModelShape
from mmviz.errors import InputError, MmvizError

FLOAT_BYTES = 4


class CaptureBudgetError(MmvizError, MemoryError):
    """The planned capture would exceed the memory budget; raised before anything is allocated."""


def default_budget() -> int:
    """A quarter of the machine's physical memory (the rest stays for the model and the user)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 * 1024**3


@dataclass(frozen=True)
class CapturePlan:
    """What the analysis forward records.

    Args:
        queries: positions whose attention rows are recorded: ``"text"`` (every text and answer token, the
            default), ``"all"``, or explicit positions.
        layers: decoder layers ``0 … L−1`` whose attention rows are recorded (None: all).
        head_mean: store only the mean over heads (H× less memory; per-head views become unavailable).
        hidden_states: also record the residual stream entering the first layer and leaving every layer.
        vision_attention: also record the vision tower's own attention (every row of every layer).
        budget_bytes: refuse plans above this many bytes (None: :func:`default_budget`).

    Example:
        >>> mmviz.trace(model, processor, image, "Why?", capture=CapturePlan(layers=[20, 21], head_mean=True))
        ... # doctest: +SKIP
    """

    queries: str | Sequence[int] = "text"
    layers: Sequence[int] | None = None
    head_mean: bool = False
    hidden_states: bool = False
    vision_attention: bool = False
    budget_bytes: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.queries, str) and self.queries not in ("text", "all"):
            raise InputError(f"queries must be 'text', 'all' or a list of positions, not {self.queries!r}")
        layers = self.layers
        if layers is not None and (
            isinstance(layers, (str, bytes))
            or not isinstance(layers, Sequence | np.ndarray)
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in layers)
        ):  # the range is checked against the model when it is traced, before anything runs
            raise InputError(f"layers must be a list of decoder layer numbers (e.g. [0, 5]) or None, not {layers!r}")
        budget = self.budget_bytes
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise InputError(
                f"budget_bytes must be a positive number of bytes (e.g. 4 * 2**30) or None, not {budget!r}"
            )

    def layer_indices(self, num_layers: int) -> tuple[int, ...]:
        """The recorded decoder layers, checked against the model's ``num_layers`` (``InputError`` if out of range)."""
        return tuple(range(num_layers)) if self.layers is None else selection.layers(self.layers, num_layers)

    def estimate(self, shape: ModelShape, n_positions: int, n_queries: int, *, n_logits: int = 0) -> dict[str, int]:
        """Bytes each part of the capture keeps, and the largest transient while it is recorded, before running.

        Their sum bounds what a trace adds to the process's peak memory besides the model's own forward (its
        activations, and the KV cache while generating): every part is written once, in place, into its final
        array, so nothing here exists twice (measured in ``tests/test_memory.py`` and ``benchmarks/capture.py``).
        ``n_logits`` is the number of logit rows the analysis forward keeps (the answer's, plus one).

        Example:
            >>> CapturePlan(head_mean=True).estimate(shape, n_positions=640, n_queries=64)   # doctest: +SKIP
            {'attention rows': 5242880, 'transient per layer': ..., 'logits': 0}
        """
        n_layers = len(self.layer_indices(shape.num_layers))
        heads = 1 if self.head_mean else shape.num_heads
        # One layer at a time: the scores of every head (alive while they are averaged, or computed on another
        # device) and float32 copies of its queries and of its keys repeated over the query-head groups.
        transient = FLOAT_BYTES * (
            shape.num_heads * n_queries * n_positions + (n_queries + 2 * n_positions) * shape.hidden_size
        )
        parts = {"attention rows": FLOAT_BYTES * n_layers * heads * n_queries * n_positions}
        if shape.cross_layers:  # every position's cross-attention rows, and the final rows over the keys
            cross = shape.cross_layers * n_positions + n_layers * n_queries
            parts["cross-attention rows"] = FLOAT_BYTES * heads * cross * shape.cross_keys
        if self.hidden_states:
            parts["hidden states"] = FLOAT_BYTES * (shape.num_layers + 1) * n_positions * shape.hidden_size
        if self.vision_attention:
            vision_layer = FLOAT_BYTES * shape.vision_heads * shape.vision_tokens**2 * shape.num_images
            parts["vision attention"] = shape.vision_layers * vision_layer
            # joining one layer's chunks over all images at once (Qwen2-VL's block-diagonal join)
            transient = max(transient, vision_layer * (shape.num_images + 1))
        parts["transient per layer"] = transient
        parts["logits"] = 2 * FLOAT_BYTES * n_logits * shape.vocab_size  # the answer's logits and log-softmax
        return parts

    def check(
        self, shape: ModelShape, n_positions: int, n_queries: int, *, n_logits: int = 0, longest: str = ""
    ) -> dict[str, int]:
        """Raise :class:`CaptureBudgetError` (saying how to shrink the plan) if the estimate exceeds the budget;
        ``longest`` names what made the sequence that long (it joins the advice)."""
        parts = self.estimate(shape, n_positions, n_queries, n_logits=n_logits)
        total = sum(parts.values())
        budget = self.budget_bytes if self.budget_bytes is not None else default_budget()
        if total > budget:
            listed = ", ".join(f"{name} {_gib(size)}" for name, size in parts.items() if size)
            raise CaptureBudgetError(
                f"this capture needs ≈{_gib(total)} ({listed}) but the budget is {_gib(budget)}; shrink it with "
                f"CapturePlan(layers=[...] for fewer layers, queries=[...] for fewer query rows, head_mean=True, "
                f"hidden_states=False, vision_attention=False) or raise budget_bytes"
                + (f"; the sequence is this long because of {longest}" if longest else "")
            )
        return parts


def relevancy_transient_bytes(num_heads: int, n_positions: int, head_dim: int, rows_per_chunk: int) -> int:
    """Peak bytes relevancy allocates for one layer's step ``R ← R + R·Ā_ℓ`` (besides the model and the stash).

    Ā_ℓ is built ``rows_per_chunk`` query rows at a time (:mod:`mmviz.methods.relevancy`), so the bound is a fixed
    part plus a part per row of the chunk; nothing in it is ``N × N``. Fixed (once per layer): float32 keys and values
    repeated over the query-head groups, the float32 gradient at the attention output (``H·N·d`` each) and a few
    ``N``-vectors (the relevance before and after the step, the indices of its non-zero rows). Per row: its scores
    turned into probabilities in place and the gradient of those probabilities (``H·N`` each, the product and its
    clamp are written in place), its head mean, its mask row (``2·N``), its query and output-gradient rows
    (``3·H·d``). Not part of it: the stash the call keeps throughout (every layer's q, k, v, and the gradients at
    the attention outputs of the current backward).

    Example:
        >>> relevancy_transient_bytes(num_heads=32, n_positions=2940, head_dim=128, rows_per_chunk=256) // 2**20
        342
    """
    per_row = num_heads * (2 * n_positions + 3 * head_dim) + 3 * n_positions
    fixed = 3 * num_heads * n_positions * head_dim + 5 * n_positions
    return FLOAT_BYTES * (fixed + max(0, min(rows_per_chunk, n_positions)) * per_row)


def relevancy_rows_per_chunk(num_heads: int, n_positions: int, head_dim: int, budget_bytes: int | None = None) -> int:
    """Query rows per chunk that keep :func:`relevancy_transient_bytes` within ``budget_bytes`` (None:
    :func:`default_budget`), at most ``n_positions``; :class:`CaptureBudgetError` if not even one row fits.

    Example:
        >>> relevancy_rows_per_chunk(num_heads=32, n_positions=2940, head_dim=128, budget_bytes=2**30)
        1110
    """
    budget = default_budget() if budget_bytes is None else budget_bytes
    fixed = relevancy_transient_bytes(num_heads, n_positions, head_dim, 0)
    per_row = relevancy_transient_bytes(num_heads, n_positions, head_dim, 1) - fixed
    rows = (budget - fixed) // per_row
    if rows < 1:
        raise CaptureBudgetError(
            f"relevancy needs ≈{_bytes_text(fixed + per_row)} per layer even one query row at a time ({num_heads} "
            f"heads × {n_positions} positions: {_bytes_text(fixed)} for the layer's keys, values and output gradient, "
            f"{_bytes_text(per_row)} per row) but the budget is {_bytes_text(budget)}; raise it with "
            f"relevancy(trace, budget_bytes=...) or shorten the sequence (a smaller image, fewer views or tiles, a "
            f"shorter prompt or answer)"
        )
    return int(min(rows, n_positions))


def _bytes_text(size: int) -> str:
    """:func:`_gib` and the exact bytes (a need and a budget may round alike), or the bytes alone below a MiB."""
    return f"{_gib(size)} ({size:,} bytes)" if size >= 2**20 else f"{size:,} bytes"


def _gib(size: int) -> str:
    return f"{size / 1024**3:.2f} GiB" if size >= 1024**3 / 10 else f"{size / 1024**2:.1f} MiB"
