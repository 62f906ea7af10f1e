"""Sweeps: from one example to a data set. ``mmviz.sweep`` traces every example and writes per-example statistics to
a Parquet table (in process, or on a Ray cluster); :func:`load` reopens it for reductions, plots and the sweep widget.

Example:
    >>> result = mmviz.sweep(model, processor, rows, stats=["image_share", "lens_rank"], out="runs/a")  # doctest: +SKIP
    >>> mmviz.sweeps.load("runs/a").per_layer("image_share").mean                                     # doctest: +SKIP
"""

from mmviz.sweeps.result import LayerCurve, SweepResult, bootstrap_mean
from mmviz.sweeps.result import load_sweep as load
from mmviz.sweeps.runner import examples_from, outlier_ids, sweep
from mmviz.sweeps.statistics import STATISTICS, Example, Statistic, statistic

__all__ = [
    "STATISTICS",
    "Example",
    "LayerCurve",
    "Statistic",
    "SweepResult",
    "bootstrap_mean",
    "examples_from",
    "load",
    "outlier_ids",
    "statistic",
    "sweep",
]
