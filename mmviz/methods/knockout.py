"""Attention knockout (Geva et al. 2023; Neo et al. 2024): cut attention edges in a window of layers and measure
the change of the target's score.

Edges are removed through the capture engine's extension point (the mmviz attention function folds them into
whatever mask form each layer gets: none/causal, boolean or additive float), so the model keeps its attention
implementation. A knockout shows that a ROUTE is necessary, not what flows along it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from mmviz import selection
from mmviz.capture.attention import recording
from mmviz.capture.run import ModelRun
from mmviz.methods.common import Effect, check_window, effect, model_run, scores, window_ids
from mmviz.methods.target import Target, TargetLike, resolve_targets
from mmviz.progress import progress
from mmviz.records import Map, Trace, method

LABEL = "Attention knockout"
MEANING = (
    "Knockout: how much the score drops when the answer can no longer attend to this block of image tokens "
    "(all heads, chosen layers). Positive = the route from these tokens was needed."
)


def knockout(
    trace: Trace,
    targets: TargetLike = None,
    *,
    sources: Literal["image"] | Sequence[int] = "image",
    to: Literal["targets", "all"] | Sequence[int] = "targets",
    layers: Sequence[int] | None = None,
) -> Effect:
    """Remove the attention edges ``sources → to`` in ``layers`` (default: all) and report the score change.

    Args:
        sources: key positions that may no longer be read: ``"image"`` (every image position) or positions.
        to: query positions that lose them: ``"targets"`` (the rows predicting the targets), ``"all"`` (every
            position that is not a source) or positions.
        layers: decoder layers ``0 … L−1`` where the edges are cut (a window such as ``range(8, 17)``; default all).

    Example:
        >>> knockout(trace, layers=range(0, 9)).delta                # early layers carry the image   # doctest: +SKIP
        array([-3.2])
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    n = run.length
    source_positions = (
        trace.layout.positions("image", "image_newline", "image_sep")
        if isinstance(sources, str) and sources == "image"
        else selection.indices(sources, n, "sources", unit="sequence position")
    )
    source_mask = torch.zeros(n, dtype=torch.bool)
    source_mask[torch.as_tensor(np.asarray(source_positions), dtype=torch.long)] = True
    if isinstance(to, str) and to == "targets":
        query_mask = torch.zeros(n, dtype=torch.bool)
        query_mask[[p - 1 for t in resolved for p in t.positions]] = True
    elif isinstance(to, str) and to == "all":
        query_mask = ~source_mask
    else:
        query_mask = torch.zeros(n, dtype=torch.bool)
        query_mask[list(selection.indices(to, n, "to", unit="sequence position"))] = True
    chosen = set(_layer_window(trace, layers))
    changed = cut(run, resolved, source_mask, query_mask, chosen)
    return effect(
        run,
        resolved,
        changed,
        f"knockout of {int(source_mask.sum())} source → {int(query_mask.sum())} query positions in layers "
        f"{sorted(chosen)}",
    )


def cut(
    run: ModelRun, targets: Sequence[Target], sources: torch.Tensor, queries: torch.Tensor, layers: set[int]
) -> np.ndarray:
    """Target scores with the edges (query in ``queries``, key in ``sources``) removed in ``layers``."""

    def block(layer: int, query_positions: torch.Tensor, n_keys: int) -> torch.Tensor | None:
        if layer not in layers:
            return None
        rows = queries[query_positions.cpu()]
        edges = rows[:, None] & sources[None, :n_keys]
        edges[torch.arange(len(rows)), query_positions.cpu().clamp(max=n_keys - 1)] = False  # never cut a row empty
        return edges

    with recording(run.model, {run.adapter.text_config_key: None}, block=block):
        return scores(run, targets)


@method("knockout", label=LABEL, meaning=MEANING, signed=True, cost="slow")
def knockout_map(
    trace: Trace, targets: TargetLike = None, *, window: int = 2, layers: Sequence[int] | None = None
) -> Map:
    """Knockout per block of image tokens: cut the edges from each ``window × window`` block to the target rows,
    in decoder ``layers`` (default: all).

    Example:
        >>> knockout_map(trace, window=2, layers=range(0, 4))          # doctest: +SKIP
    """
    window = check_window(window)
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = trace.image_positions
    blocks = window_ids(trace.layout, columns, window)
    chosen = set(_layer_window(trace, layers))
    clean = scores(run, resolved)
    values = np.zeros((len(resolved), len(columns)), np.float32)
    for row, target in enumerate(progress(resolved, desc="mmviz: knockout", disable=len(resolved) < 2)):
        queries = torch.zeros(run.length, dtype=torch.bool)
        queries[[p - 1 for p in target.positions]] = True
        for block in progress(range(blocks.max() + 1), desc="mmviz: knockout blocks"):
            sources = torch.zeros(run.length, dtype=torch.bool)
            sources[torch.as_tensor(columns[blocks == block])] = True
            values[row, blocks == block] = clean[row] - cut(run, [target], sources, queries, chosen)[0]
    return knockout_map.spec.map(  # type: ignore[attr-defined]
        values=values,
        positions=np.array([t.position for t in resolved]),
        columns=columns,
        info={"window": window, "layers": sorted(chosen)},
    )


def _layer_window(trace: Trace, layers: Sequence[int] | None) -> tuple[int, ...]:
    """The knockout's decoder layers: all by default; an empty window cuts nothing."""
    return tuple(range(trace.num_layers)) if layers is None else selection.layers(layers, trace.num_layers, empty=True)
