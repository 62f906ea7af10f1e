"""The sweep table: one Parquet row per example, written in parts so that an interrupted sweep loses at most a part.

Columns: ``id``, ``status`` (``"ok"`` / ``"error"``), ``error``, ``seconds``, ``answer``, ``thumbnail`` (a small PNG),
the example's own scalar fields, then every statistic's columns (numbers, or nested lists for arrays). The
directory holds ``table/part-*.parquet`` (the local engine's parts and Ray's writer's files alike) and
``traces/<id>.mmviz`` for the kept traces.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmviz.errors import InputError

TABLE = "table"
TRACES = "traces"
SETTINGS = "sweep.json"


def to_cell(value: Any) -> Any:
    """A statistic's value as Parquet can hold it (arrays become nested lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts) → a table; columns absent from a row (a failed example's statistics) are null there."""
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row if name not in names)
    return pa.table({name: pa.array([to_cell(row.get(name)) for row in rows]) for name in names})


def write_part(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as one new part of the table (atomically: a part is complete or absent)."""
    folder = out / TABLE
    folder.mkdir(parents=True, exist_ok=True)
    written = len(list(folder.glob("part-*.parquet")))  # parts sort in the order they were written
    path = folder / f"part-{written:06d}-{uuid.uuid4().hex[:8]}.parquet"
    partial = path.with_suffix(".partial")
    pq.write_table(rows_to_table(rows), partial)
    partial.replace(path)
    return path


def read_table(out: Path) -> pa.Table:
    """Every part of the table in ``out`` (concatenated; columns a part lacks are null there)."""
    parts = sorted((out / TABLE).glob("*.parquet")) if (out / TABLE).is_dir() else []
    if not parts:
        return pa.table({"id": pa.array([], pa.string()), "status": pa.array([], pa.string())})
    tables = [pq.read_table(part) for part in parts]
    return pa.concat_tables(tables, promote_options="permissive")


def finished_ids(out: Path, *, retry_errors: bool) -> set[str]:
    """Ids already in the table (with ``retry_errors``, only those that succeeded)."""
    table = read_table(out)
    ids, statuses = table.column("id").to_pylist(), table.column("status").to_pylist()
    return {i for i, status in zip(ids, statuses, strict=True) if status == "ok" or not retry_errors}


def column_array(table: pa.Table, name: str) -> np.ndarray:
    """A statistic's column as one array ``(examples, …)``; failed examples are NaN."""
    if name not in table.column_names:
        raise InputError(f"the sweep has no column {name!r}; it has {table.column_names}")
    values = table.column(name).to_pylist()
    template = next((np.asarray(v, dtype=float) for v in values if v is not None), None)
    if template is None:
        return np.full(len(values), np.nan)
    return np.stack([np.asarray(v, dtype=float) if v is not None else np.full(template.shape, np.nan) for v in values])


def write_settings(out: Path, settings: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS
    if path.exists():
        before = json.loads(path.read_text())
        changed = {key for key in settings if key != "started" and before.get(key) != settings[key]}
        if changed:
            raise InputError(
                f"{out} holds a sweep with other settings ({sorted(changed)} differ): resume it with the same "
                f"settings, or choose another out directory"
            )
        return
    path.write_text(json.dumps(settings, indent=1, default=str))


def trace_path(out: Path, example_id: str) -> Path:
    """Where the kept trace of ``example_id`` lives (the id made safe as a file name)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", example_id)[:100] or "example"
    return out / TRACES / f"{safe}.mmviz"


def is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
