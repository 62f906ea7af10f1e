"""``mmviz.sweep``: one trace per example, per-example statistics into a Parquet table, in process or on Ray."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from mmviz.errors import InputError
from mmviz.progress import progress, quiet
from mmviz.sweeps import table
from mmviz.sweeps.per_example import keep_trace, run_example
from mmviz.sweeps.statistics import Example, Statistic, resolve
from mmviz.tracing import trace as run_trace

if TYPE_CHECKING:
    from mmviz.sweeps.result import SweepResult

Keep = Literal["none", "outliers", "all"] | Callable[[dict[str, Any]], bool]
OUTLIER_Z = 3.5  # robust z (median / MAD) above which a scalar statistic makes an example an outlier
RESERVED = {"id", "image", "prompt", "answer", "box", "mask"}


def examples_from(rows: Iterable[Any]) -> Iterator[Example]:
    """Examples from dicts (a list, a generator, a Hugging Face ``datasets.Dataset``), a pandas or Arrow table.

    Each row needs ``image`` and ``prompt`` (``question`` is accepted for ``prompt``); ``id``, ``answer``, ``box``
    and ``mask`` are optional; other scalar fields are copied into the table. Without ``id`` the row number is it.
    """
    if hasattr(rows, "to_pylist"):  # pyarrow.Table
        rows = rows.to_pylist()
    elif hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas.DataFrame
        rows = rows.to_dict("records")
    for index, row in enumerate(rows):
        if isinstance(row, Example):
            yield row
            continue
        if not isinstance(row, Mapping):
            raise InputError(f"example {index} is a {type(row).__name__}; pass dicts with 'image' and 'prompt'")
        prompt = row.get("prompt", row.get("question"))
        if "image" not in row or not isinstance(prompt, str):
            raise InputError(f"example {index} needs an 'image' and a 'prompt' (text); it has {sorted(row)}")
        image = row["image"]
        if isinstance(image, Mapping) and "bytes" in image:  # a Hugging Face Image feature, undecoded
            image = Image.open(io.BytesIO(image["bytes"]))
        fields = {
            key: value
            for key, value in row.items()
            if key not in RESERVED | {"question"} and (isinstance(value, str | bool) or table.is_number(value))
        }
        box = row.get("box")
        yield Example(
            id=str(row.get("id", index)),
            image=image,
            prompt=prompt,
            answer=row.get("answer"),
            box=None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
            mask=row.get("mask"),
            fields=fields,
        )


def sweep(
    model: torch.nn.Module | Callable[[], tuple[torch.nn.Module, Any]],
    processor: Any,
    examples: Iterable[Any],
    *,
    stats: list[Any] | tuple[Any, ...] = ("image_share", "answer_logprob"),
    keep: Keep = "none",
    out: str | Path,
    engine: Literal["local", "ray"] = "local",
    max_new_tokens: int = 32,
    chunk: int = 32,
    retry_errors: bool = False,
    actors: int = 2,
    num_gpus: float = 0,
) -> SweepResult:
    """Trace every example, compute the named statistics, write one Parquet row per example to ``out``.

    Re-running with the same ``out`` skips the examples already there (a failed one too, unless ``retry_errors``);
    a failing example is recorded with its error and the sweep goes on.

    Args:
        model: the model, or (``engine="ray"`` on several machines) a function returning ``(model, processor)``.
        processor: its processor (None when ``model`` is such a function).
        examples: dicts with ``image`` and ``prompt`` (and optional ``id``, ``answer``, ``box``, ``mask``, other
            scalar fields), a Hugging Face dataset, a pandas or Arrow table (:func:`examples_from`).
        stats: names in :data:`mmviz.sweeps.STATISTICS`, or ``(name, {settings})``.
        keep: which traces to save under ``out/traces``: ``"none"``, ``"all"``, ``"outliers"`` (examples with a
            scalar statistic more than 3.5 robust standard deviations from the median, traced again at the end),
            or a function of the row.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data, an actor pool of ``actors`` models, ``num_gpus``
            each; ``pip install mmviz[ray]``, ``ray.init(...)`` first to use a cluster).
        chunk: rows per Parquet part (an interrupted sweep loses at most the part being written).

    Example:
        >>> result = mmviz.sweep(model, processor, [{"image": "a.png", "prompt": "What is it?"}],
        ...                      stats=["image_share", "lens_rank"], out="runs/first")   # doctest: +SKIP
        >>> result.per_layer("image_share")                                           # doctest: +SKIP
    """
    from mmviz.sweeps.result import SweepResult

    resolved = resolve(stats)
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', not {engine!r}")
    if not (keep in ("none", "outliers", "all") or callable(keep)):
        raise InputError(f"keep must be 'none', 'outliers', 'all' or a function of the row, not {keep!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk must be a positive number of rows, not {chunk!r}")
    directory = Path(out)
    table.write_settings(
        directory, {"stats": [[spec.name, settings] for spec, settings in resolved], "max_new_tokens": max_new_tokens}
    )
    done = table.finished_ids(directory, retry_errors=retry_errors)
    todo = [example for example in examples_from(examples) if example.id not in done]
    options = {"max_new_tokens": max_new_tokens}
    if engine == "ray":
        from mmviz.sweeps.ray_engine import run_on_ray

        run_on_ray(model, processor, todo, resolved, options, directory, keep, actors=actors, num_gpus=num_gpus)
    else:
        if not isinstance(model, torch.nn.Module):
            model, processor = model()
        _run_locally(model, processor, todo, resolved, options, directory, keep, chunk)
    result = SweepResult.load(directory)
    if keep == "outliers" and todo:
        _keep_outliers(model, processor, todo, result, resolved, options, directory)
    return result


def _run_locally(
    model: torch.nn.Module,
    processor: Any,
    todo: list[Example],
    stats: list[tuple[Statistic, dict[str, Any]]],
    options: dict[str, Any],
    out: Path,
    keep: Keep,
    chunk: int,
) -> None:
    pending: list[dict[str, Any]] = []
    failed = 0
    with progress(total=len(todo), desc="mmviz: sweep", unit="example", leave=True) as bar:  # rate and ETA
        for example in todo:
            row, traced = run_example(model, processor, example, stats, options)
            keep_trace(keep, row, traced, out)
            pending.append(row)
            failed += row["status"] == "error"
            bar.set_postfix(failed=failed, refresh=False)
            bar.update()
            if len(pending) >= chunk:
                table.write_part(out, pending)
                pending = []
    if pending:
        table.write_part(out, pending)


def outlier_ids(result: SweepResult) -> list[str]:
    """Examples with a scalar statistic whose robust z-score (median / MAD) exceeds :data:`OUTLIER_Z`."""
    ok = np.array([status == "ok" for status in result.table.column("status").to_pylist()])
    ids = np.array(result.table.column("id").to_pylist(), dtype=object)
    flagged = np.zeros(len(ids), bool)
    for name in result.scalar_columns():
        values = table.column_array(result.table, name)
        valid = ok & np.isfinite(values)
        if valid.sum() < 5:
            continue
        median = np.median(values[valid])
        mad = np.median(np.abs(values[valid] - median)) * 1.4826
        distance = np.abs(np.where(valid, values, median) - median)
        # with MAD 0 (most examples equal) every example that differs is an outlier
        flagged |= valid & (distance / mad > OUTLIER_Z if mad > 0 else distance > 0)
    return [str(i) for i in ids[flagged]]


def _keep_outliers(
    model: Any,
    processor: Any,
    examples: list[Example],
    result: SweepResult,
    stats: list[tuple[Statistic, dict[str, Any]]],
    options: dict[str, Any],
    out: Path,
) -> None:
    if not isinstance(model, torch.nn.Module):
        model, processor = model()
    wanted = set(outlier_ids(result))
    for example in progress([e for e in examples if e.id in wanted], desc="mmviz: keeping outliers"):
        with quiet():
            traced = run_trace(model, processor, example.image, example.prompt, answer=example.answer, **options)
        traced.save(table.trace_path(out, example.id))
