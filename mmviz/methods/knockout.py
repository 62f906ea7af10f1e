"""Attention knockout (Geva et al. 2023; Neo et al. 2024): cut attention edges in a window of layers and measure
the change of the target's score.

Edges are removed through the capture engine's extension point (the mmviz attention function folds them into
whatever mask form each layer gets: none/causal, boolean or additive float), so the model keeps its attention
implementation. A knockout shows that a ROUTE is necessary, not what flows along it.

For a family whose text reads the image through cross-attention layers (Llama 3.2 Vision: the image columns are
cross-attention keys, ``trace.layout.keys``), the image sources are those keys and the edges are cut in the
cross-attention layers of the window (self-attention layers hold no image key).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
        sources: key positions that may no longer be read: ``"image"`` (every image position) or positions (for a
            cross-attention family: cross-attention key indices, ``"image"`` = every image column).
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
    keys = trace.layout.keys
    source_mask = sources_mask(trace, sources, n)
    if isinstance(to, str) and to == "targets":
        query_mask = torch.zeros(n, dtype=torch.bool)
        query_mask[[p - 1 for t in resolved for p in t.positions]] = True
    elif isinstance(to, str) and to == "all":
        query_mask = ~source_mask if keys is None else torch.ones(n, dtype=torch.bool)
    else:
        query_mask = torch.zeros(n, dtype=torch.bool)
        query_mask[list(selection.indices(to, n, "to", unit="sequence position"))] = True
    chosen = set(_layer_window(trace, layers))
    changed = cut(run, resolved, source_mask, query_mask, chosen, keys=keys is not None)
    return effect(
        run,
        resolved,
        changed,
        f"knockout of {int(source_mask.sum())} source → {int(query_mask.sum())} query positions in layers "
        f"{sorted(chosen)}",
    )


def sources_mask(trace: Trace, sources: Literal["image"] | Sequence[int], length: int) -> torch.Tensor:
    """Boolean mask of the keys a knockout of ``sources`` cuts: over ``length`` sequence positions (``"image"``:
    the image, its newlines and separators), or over a cross-attention family's keys (``"image"``: every image
    column; ``length`` is then unused).

    Example:
        >>> sources_mask(trace, "image", len(trace.tokens)).sum() == len(trace.image_positions)   # doctest: +SKIP
        True
    """
    keys = trace.layout.keys
    image = isinstance(sources, str) and sources == "image"
    n_sources = length if keys is None else len(keys)
    if keys is not None:
        chosen = trace.image_positions if image else selection.indices(sources, n_sources, "sources", unit="key index")
    elif image:
        chosen = trace.layout.positions("image", "image_newline", "image_sep")
    else:
        chosen = selection.indices(sources, n_sources, "sources", unit="sequence position")
    mask = torch.zeros(n_sources, dtype=torch.bool)
    mask[torch.as_tensor(np.asarray(chosen), dtype=torch.long)] = True
    return mask


def cut(
    run: ModelRun,
    targets: Sequence[Target],
    sources: torch.Tensor,
    queries: torch.Tensor,
    layers: set[int],
    *,
    keys: bool = False,
) -> np.ndarray:
    """Target scores with the edges (query in ``queries``, key in ``sources``) removed in ``layers``
    (:func:`cutting`)."""
    with cutting(run, sources, queries, layers, keys=keys):
        return scores(run, targets)


@contextmanager
def cutting(
    run: ModelRun, sources: torch.Tensor, queries: torch.Tensor, layers: set[int], *, keys: bool = False
) -> Iterator[None]:
    """Inside: every forward of ``run.model`` has the edges (query in ``queries``, key in ``sources``) removed in
    ``layers``; the masks may be longer than the run (a greedy decode's later steps).

    ``keys``: ``sources`` is a mask over the cross-attention keys, cut in the cross-attention layers among
    ``layers`` only (a cross-attention row keeps its CLS keys, so it is never cut empty).

    Example:
        >>> with cutting(run, sources_mask(trace, "image", n), queries, {0, 1}):      # doctest: +SKIP
        ...     logits = run.forward()
    """
    cross = frozenset(run.adapter.cross_attention_layers)

    def block(layer: int, query_positions: torch.Tensor, n_keys: int) -> torch.Tensor | None:
        if layer not in layers or (layer in cross) != keys:
            return None
        rows = queries[query_positions.cpu()]
        edges = rows[:, None] & sources[None, :n_keys]
        if not keys:  # never cut a self-attention row empty
            edges[torch.arange(len(rows)), query_positions.cpu().clamp(max=n_keys - 1)] = False
        return edges

    with recording(run.model, {run.adapter.text_config_key: None}, block=block, cross_layers=cross):
        yield


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
    keys = trace.layout.keys
    n_sources = run.length if keys is None else len(keys)  # a cross-attention family's columns are its keys
    clean = scores(run, resolved)
    values = np.zeros((len(resolved), len(columns)), np.float32)
    for row, target in enumerate(progress(resolved, desc="mmviz: knockout", disable=len(resolved) < 2)):
        queries = torch.zeros(run.length, dtype=torch.bool)
        queries[[p - 1 for p in target.positions]] = True
        for block in progress(range(blocks.max() + 1), desc="mmviz: knockout blocks"):
            sources = torch.zeros(n_sources, dtype=torch.bool)
            sources[torch.as_tensor(columns[blocks == block])] = True
            cut_scores = cut(run, [target], sources, queries, chosen, keys=keys is not None)
            values[row, blocks == block] = clean[row] - cut_scores[0]
    return knockout_map.spec.map(  # type: ignore[attr-defined]
        values=values,
        positions=np.array([t.position for t in resolved]),
        columns=columns,
        info={"window": window, "layers": sorted(chosen)},
    )


def _layer_window(trace: Trace, layers: Sequence[int] | None) -> tuple[int, ...]:
    """The knockout's decoder layers: all by default; an empty window cuts nothing."""
    return tuple(range(trace.num_layers)) if layers is None else selection.layers(layers, trace.num_layers, empty=True)
