"""Attention knockout (Geva et al. 2023; Neo et al. 2024): cut attention edges in a window of layers and measure
the change of the target's score.

Edges are removed through the capture engine's extension point (the mmviz attention function folds them into
whatever mask form each layer gets: none/causal, boolean or additive float), so the model keeps its attention
implementation. A knockout shows that a ROUTE is necessary, not what flows along it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from mmviz.capture.attention import recording
from mmviz.capture.model_state import preserved
from mmviz.errors import InputError
from mmviz.methods._backprop import model_run
from mmviz.methods._windows import window_ids
from mmviz.methods.map import Map
from mmviz.methods.target import Target, TargetLike, resolve_targets
from mmviz.progress import progress

if TYPE_CHECKING:
    from mmviz.capture.run import ModelRun
    from mmviz.tracing import Trace

LABEL = "Attention knockout"
MEANING = (
    "Knockout: how much the score drops when the answer can no longer attend to this block of image tokens "
    "(all heads, chosen layers). Positive = the route from these tokens was needed."
)


@dataclass(frozen=True)
class Effect:
    """The effect of an intervention on each target's score.

    Attributes:
        positions: ``(T,)`` target positions.
        clean: ``(T,)`` scores without the intervention.
        changed: ``(T,)`` scores with it.
        delta: ``changed − clean`` (negative = the intervention hurt the target).
        description: what was done.
    """

    positions: np.ndarray
    clean: np.ndarray
    changed: np.ndarray
    delta: np.ndarray
    description: str


def scores(run: ModelRun, targets: Sequence[Target], **forward: object) -> np.ndarray:
    """Every target's score from one forward (no gradients)."""
    first = min(t.first_logit for t in targets)
    with torch.no_grad(), preserved(run.model):
        run.model.eval()
        logits = run.forward(first_logit=first, **forward)  # type: ignore[arg-type]
    return np.array([float(t(logits, run.input_ids, first)[0]) for t in targets], dtype=np.float64)


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
        layers: decoder layers where the edges are cut (a window such as ``range(8, 17)``).

    Example:
        >>> knockout(trace, layers=range(0, 9)).delta                # early layers carry the image   # doctest: +SKIP
        array([-3.2])
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    n = run.length
    source_positions = trace.layout.positions("image", "image_newline", "image_sep") if sources == "image" else sources
    source_mask = torch.zeros(n, dtype=torch.bool)
    source_mask[torch.as_tensor(np.asarray(source_positions), dtype=torch.long)] = True
    if isinstance(to, str) and to == "targets":
        query_mask = torch.zeros(n, dtype=torch.bool)
        query_mask[[p - 1 for t in resolved for p in t.positions]] = True
    elif isinstance(to, str) and to == "all":
        query_mask = ~source_mask
    else:
        query_mask = torch.zeros(n, dtype=torch.bool)
        query_mask[torch.as_tensor(np.asarray(to), dtype=torch.long)] = True
    window = set(range(trace.num_layers)) if layers is None else {int(layer) % trace.num_layers for layer in layers}
    changed = cut(run, resolved, source_mask, query_mask, window)
    clean = scores(run, resolved)
    return Effect(
        positions=np.array([t.position for t in resolved]),
        clean=clean,
        changed=changed,
        delta=changed - clean,
        description=f"knockout of {int(source_mask.sum())} source → {int(query_mask.sum())} query positions in "
        f"layers {sorted(window)}",
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


def knockout_map(
    trace: Trace, targets: TargetLike = None, *, window: int = 2, layers: Sequence[int] | None = None
) -> Map:
    """Knockout per block of image tokens: cut the edges from each ``window × window`` block to the target rows.

    Example:
        >>> knockout_map(trace, window=2, layers=range(0, 4))          # doctest: +SKIP
    """
    if window < 1:
        raise InputError("window must be at least 1 grid cell")
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = trace.image_positions
    blocks = window_ids(trace.layout, columns, window)
    chosen = set(range(trace.num_layers)) if layers is None else {int(layer) % trace.num_layers for layer in layers}
    clean = scores(run, resolved)
    values = np.zeros((len(resolved), len(columns)), np.float32)
    for row, target in enumerate(progress(resolved, desc="mmviz: knockout", disable=len(resolved) < 2)):
        queries = torch.zeros(run.length, dtype=torch.bool)
        queries[[p - 1 for p in target.positions]] = True
        for block in progress(range(blocks.max() + 1), desc="mmviz: knockout blocks"):
            sources = torch.zeros(run.length, dtype=torch.bool)
            sources[torch.as_tensor(columns[blocks == block])] = True
            values[row, blocks == block] = clean[row] - cut(run, [target], sources, queries, chosen)[0]
    return Map(
        method="knockout",
        label=LABEL,
        meaning=MEANING,
        values=values,
        positions=np.array([t.position for t in resolved]),
        columns=columns,
        signed=True,
        info={"window": window, "layers": sorted(chosen)},
    )
