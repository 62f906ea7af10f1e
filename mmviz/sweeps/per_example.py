"""One example of a sweep: its trace and its row (the same code in every engine)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mmviz.errors import MmvizError
from mmviz.progress import quiet
from mmviz.records import Trace
from mmviz.sweeps import table
from mmviz.sweeps.statistics import Example, Statistic, thumbnail
from mmviz.tracing import trace as run_trace


def run_example(
    model: torch.nn.Module,
    processor: Any,
    example: Example,
    stats: list[tuple[Statistic, dict[str, Any]]],
    trace_options: dict[str, Any],
) -> tuple[dict[str, Any], Trace | None]:
    """One example's row (``status`` ``"error"`` with the message when anything fails) and its trace."""
    start = time.perf_counter()
    row: dict[str, Any] = {"id": example.id, **example.fields}
    try:
        with quiet():
            traced = run_trace(model, processor, example.image, example.prompt, answer=example.answer, **trace_options)
            for spec, settings in stats:
                for name, value in spec.function(traced, example, **settings).items():
                    row[name] = value
    except (MmvizError, ValueError, RuntimeError, TypeError, IndexError, KeyError, OSError) as error:
        row.update(status="error", error=f"{type(error).__name__}: {error}", seconds=time.perf_counter() - start)
        return row, None
    row.update(
        status="ok",
        error=None,
        seconds=time.perf_counter() - start,
        answer=traced.answer,
        thumbnail=thumbnail(traced.images[0]),
    )
    return row, traced


def keep_trace(keep: Any, row: dict[str, Any], traced: Trace | None, out: Path) -> None:
    """Save ``traced`` under ``out/traces`` when ``keep`` asks for it during the sweep (``"all"`` or a predicate of
    the row; ``"outliers"`` are chosen once the table is complete)."""
    if traced is not None and (keep == "all" or (callable(keep) and keep(row))):
        traced.save(table.trace_path(out, row["id"]))
