"""The Ray engine for real: ``ray.init(num_cpus=2)``, an actor pool of 2, on this machine.

The same table as the local engine example by example; an actor killed mid-sweep is restarted and its examples
retried, none lost or duplicated; a sweep resumes after an interrupted run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import mmviz
from mmviz.sweeps import STATISTICS, statistic
from mmviz.sweeps.table import TABLE
from tests.test_sweep import scene_rows

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install 'mmviz[ray]'")
pytestmark = pytest.mark.slow
STATS = ["image_share", "answer_logprob", "lens_rank", "pointing_game"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shapes_vlm():
    return mmviz.zoo.load("shapes-vlm")


def raw_ids(out: Path) -> list[str]:
    """Every row Ray's writer wrote, before anything is read as a table (duplicates would show here)."""
    return [i for part in sorted((out / TABLE).glob("*.parquet")) for i in pq.read_table(part).column("id").to_pylist()]


def test_ray_gives_the_local_table_example_by_example(cluster, shapes_vlm, tmp_path):
    model, processor = shapes_vlm
    rows = scene_rows(range(6))
    on_ray = mmviz.sweep(model, processor, rows, stats=STATS, out=tmp_path / "ray", engine="ray", actors=2)
    local = mmviz.sweep(model, processor, rows, stats=STATS, out=tmp_path / "local")
    assert sorted(on_ray.ids) == sorted(local.ids) and not on_ray.failed
    order = [on_ray.ids.index(i) for i in local.ids]
    for name in ("image_share", "image_share_heads", "answer_logprob", "lens_rank", "pointing_game", "energy_in_box"):
        np.testing.assert_allclose(on_ray.column(name)[order], local.column(name), rtol=1e-6, err_msg=name)
    assert on_ray.table.column("answer").to_pylist() == [local.table.column("answer")[i].as_py() for i in order]


def test_a_killed_actor_is_restarted_and_no_example_is_lost_or_repeated(cluster, shapes_vlm, tmp_path):
    model, processor = shapes_vlm
    rows = scene_rows(range(8))
    marker = tmp_path / "killed-once"

    def die_once(trace, example):  # pickled by value into the actors
        if example.id == "scene-3" and not marker.exists():
            marker.write_text("the actor died here")
            os._exit(1)  # the actor process dies mid-sweep, as a lost machine would
        return {"answer_length": len(trace.tokens) - trace.answer_start}

    statistic("die_once", description="fault injection")(die_once)
    try:
        result = mmviz.sweep(model, processor, rows, stats=["answer_logprob", "die_once"], out=tmp_path / "out",
                             engine="ray", actors=2)  # fmt: skip
    finally:
        STATISTICS.pop("die_once", None)
    assert marker.exists(), "the fault was injected"
    assert sorted(raw_ids(tmp_path / "out")) == sorted(row["id"] for row in rows), "none lost, none twice"
    assert not result.failed and (result.column("answer_length") > 0).all()


def test_a_ray_sweep_resumes_after_an_interrupted_run(cluster, shapes_vlm, tmp_path):
    model, processor = shapes_vlm
    rows = scene_rows(range(7))
    first = mmviz.sweep(model, processor, rows[:3], stats=STATS, out=tmp_path, engine="ray")  # the run that stopped
    assert len(first) == 3
    resumed = mmviz.sweep(model, processor, rows, stats=STATS, out=tmp_path, engine="ray")
    assert sorted(raw_ids(tmp_path)) == sorted(row["id"] for row in rows), "the finished three did not run again"
    assert len(resumed) == 7
