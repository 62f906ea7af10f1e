"""A finished (or partly finished) sweep: its table, and the reductions papers report (per-layer means with bootstrap
confidence intervals, by group)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmviz.errors import InputError
from mmviz.records import Trace, load
from mmviz.sweeps import table


@dataclass(frozen=True)
class LayerCurve:
    """A statistic's mean per layer (or per entry) over examples, with a bootstrap confidence interval.

    Attributes:
        mean, low, high: ``(L,)`` (or the statistic's shape): the mean and the interval's bounds.
        count: the examples that entered it (failed examples and NaNs are left out).
        confidence: e.g. 0.95.
    """

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: int
    confidence: float


@dataclass(frozen=True)
class SweepResult:
    """The table of a sweep directory (``mmviz.sweep(...)`` returns it; :func:`mmviz.sweeps.load` reopens it).

    Example:
        >>> result = mmviz.sweeps.load("runs/first")                      # doctest: +SKIP
        >>> result.per_layer("image_share").mean                          # doctest: +SKIP
        >>> result.per_layer("image_share", by="question_type")["color"]  # doctest: +SKIP
    """

    directory: Path
    table: pa.Table

    @classmethod
    def load(cls, directory: str | Path) -> SweepResult:
        path = Path(directory)
        if not (path / table.TABLE).is_dir():
            raise InputError(f"{path} holds no sweep table ({table.TABLE}/*.parquet); run mmviz.sweep(..., out=...)")
        return cls(path, table.read_table(path))

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def ids(self) -> list[str]:
        return [str(value) for value in self.table.column("id").to_pylist()]

    @property
    def failed(self) -> dict[str, str]:
        """Example id → error, for the examples that failed."""
        if "error" not in self.table.column_names:
            return {}
        statuses, errors = self.table.column("status").to_pylist(), self.table.column("error").to_pylist()
        return {i: str(e) for i, status, e in zip(self.ids, statuses, errors, strict=True) if status == "error"}

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame (needs pandas)."""
        return self.table.to_pandas()

    def column(self, name: str) -> np.ndarray:
        """A statistic as one array ``(examples, …)`` (NaN for failed examples)."""
        return table.column_array(self.table, name)

    def scalar_columns(self) -> list[str]:
        """Columns with one number per example (statistics and numeric fields, not ``seconds``)."""
        names = []
        for field in self.table.schema:
            if field.name != "seconds" and (pa.types.is_floating(field.type) or pa.types.is_integer(field.type)):
                names.append(field.name)
        return names

    def per_layer_columns(self) -> list[str]:
        """Columns with one list of numbers per example (per layer, per window): what :meth:`per_layer` averages."""
        return [
            field.name
            for field in self.table.schema
            if pa.types.is_list(field.type)
            and (pa.types.is_floating(field.type.value_type) or pa.types.is_integer(field.type.value_type)
                 or pa.types.is_boolean(field.type.value_type))
        ]  # fmt: skip

    def per_layer(
        self,
        name: str,
        *,
        by: str | None = None,
        confidence: float = 0.95,
        resamples: int = 1000,
        seed: int = 0,
    ) -> LayerCurve | dict[str, LayerCurve]:
        """The mean of statistic ``name`` over examples, entry by entry (per layer for a per-layer statistic), with a
        percentile bootstrap interval; with ``by``, one curve per value of that column."""
        values = self.column(name)
        if by is None:
            return bootstrap_mean(values, confidence=confidence, resamples=resamples, seed=seed)
        if by not in self.table.column_names:
            raise InputError(f"the sweep has no column {by!r} to group by; it has {self.table.column_names}")
        groups = np.array(self.table.column(by).to_pylist(), dtype=object)
        return {  # examples without a value in ``by`` (a failed one without the field) belong to no group
            str(group): bootstrap_mean(values[groups == group], confidence=confidence, resamples=resamples, seed=seed)
            for group in sorted({g for g in groups.tolist() if g is not None}, key=str)
        }

    def has_trace(self, example_id: str) -> bool:
        """Whether the sweep kept the trace of ``example_id``."""
        return table.trace_path(self.directory, example_id).exists()

    def trace(self, example_id: str) -> Trace:
        """The kept trace of an example (``keep=`` in :func:`mmviz.sweep`)."""
        if not self.has_trace(example_id):
            raise InputError(f"no kept trace for example {example_id!r}: sweep with keep='all' (or a predicate)")
        return load(table.trace_path(self.directory, example_id))


def bootstrap_mean(values: np.ndarray, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> LayerCurve:
    """Mean over the first axis with a percentile bootstrap interval (rows with NaN left out).

    Example:
        >>> bootstrap_mean(np.array([[0.1, 0.2], [0.3, 0.4]])).mean
        array([0.2, 0.3])
    """
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie strictly between 0 and 1, not {confidence}")
    values = np.asarray(values, dtype=float)
    flat = values.reshape(len(values), -1)
    kept = flat[np.isfinite(flat).all(axis=1)]
    shape = values.shape[1:]
    if len(kept) == 0:
        empty = np.full(shape, np.nan)
        return LayerCurve(empty, empty, empty, 0, confidence)
    rng = np.random.default_rng(seed)
    n = len(kept)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=resamples)  # how often each example is drawn, per resample
    means = counts @ kept / n  # (resamples, entries), without materialising the resampled rows
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=0)
    return LayerCurve(kept.mean(axis=0).reshape(shape), low.reshape(shape), high.reshape(shape), len(kept), confidence)


def load_sweep(directory: str | Path) -> SweepResult:
    """Reopen a sweep directory (its table; its kept traces through :meth:`SweepResult.trace`).

    Example:
        >>> mmviz.sweeps.load("runs/first").failed                # doctest: +SKIP
        {}
    """
    return SweepResult.load(directory)
