"""``engine="ray"``: the same per-example work in a Ray Data actor pool (one model per actor), written by Ray's own
Parquet writer into the sweep's table directory, so a sweep that outgrows one machine runs unchanged on a cluster.

Ray is an optional extra (``pip install mmviz[ray]``). Actors that die are restarted by Ray and their examples
retried; a sweep interrupted as a whole resumes from the table like a local one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from mmviz.errors import InputError
from mmviz.sweeps import table
from mmviz.sweeps.per_example import keep_trace, run_example
from mmviz.sweeps.statistics import Example, Statistic


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise InputError(
            f"engine='ray' needs Ray Data ({error.name} is not installed): pip install 'mmviz[ray]' "
            f"(or pip install 'ray[data]'), or use engine='local'"
        ) from None
    return ray


class _SweepActor:
    """One model per actor; each batch of examples becomes a batch of rows (the same code as the local engine)."""

    def __init__(
        self, load: Callable[[], tuple[torch.nn.Module, Any]], stats: list[Any], options: dict[str, Any], out: str,
        keep: Any,
    ) -> None:  # fmt: skip
        self.model, self.processor = load()
        self.stats, self.options, self.out, self.keep = stats, options, Path(out), keep

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        rows = []
        for example in batch["example"]:
            row, traced = run_example(self.model, self.processor, example, self.stats, self.options)
            keep_trace(self.keep, row, traced, self.out)
            rows.append(row)
        return table.rows_to_table(rows)  # plain Arrow columns: nothing Ray would have to pickle into the file


def _checkpoint_loader(model: torch.nn.Module, processor: Any, out: Path) -> Callable[[], tuple[torch.nn.Module, Any]]:
    """Actors load the model from a checkpoint written once with ``save_pretrained`` (safetensors: no pickled model
    crosses processes, and transformers sets the model up as it does for any load). On a cluster, pass a function
    that loads the model on each machine instead (or put ``out`` on shared storage)."""
    folder = out / "model"
    if not (folder / "config.json").exists():
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return functools.partial(
        _from_pretrained, str(folder), type(model), type(processor), model.config._attn_implementation, model.dtype
    )


def _from_pretrained(folder: str, model_class: Any, processor_class: Any, attention: str, dtype: Any) -> Any:
    model = model_class.from_pretrained(folder, attn_implementation=attention, dtype=dtype).eval()
    return model, processor_class.from_pretrained(folder)


def run_on_ray(
    model: torch.nn.Module | Callable[[], tuple[torch.nn.Module, Any]],
    processor: Any,
    todo: list[Example],
    stats: list[tuple[Statistic, dict[str, Any]]],
    options: dict[str, Any],
    out: Path,
    keep: Any,
    *,
    actors: int,
    num_gpus: float,
    batch_size: int = 4,
) -> None:
    """Run ``todo`` on the current Ray cluster (``ray.init()`` on this machine when none is connected)."""
    ray = _ray()
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise InputError(f"actors must be a positive number of model copies, not {actors!r}")
    if not todo:
        return
    if not ray.is_initialized():
        ray.init()
    load = _checkpoint_loader(model, processor, out) if isinstance(model, torch.nn.Module) else model
    blocks = max(1, -(-len(todo) // batch_size))
    dataset = ray.data.from_items([{"example": example} for example in todo], override_num_blocks=blocks)
    gpus = {"num_gpus": num_gpus} if num_gpus else {}
    rows = dataset.map_batches(
        _SweepActor,
        fn_constructor_kwargs={"load": load, "stats": stats, "options": options, "out": str(out), "keep": keep},
        batch_size=batch_size,
        concurrency=actors,
        batch_format="numpy",
        **gpus,  # Ray Data restarts an actor that dies and retries its batch
    )
    (out / table.TABLE).mkdir(parents=True, exist_ok=True)
    rows.write_parquet(str(out / table.TABLE))
