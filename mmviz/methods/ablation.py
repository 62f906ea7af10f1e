"""Patch ablation (Neo et al. 2024, arXiv 2410.07149): replace chosen image tokens' embeddings and re-run.

The replacement is the mean image-token embedding of this input by default (or the blurred image's tokens). It
tests whether the language model relies on those positions; the vision tower may already have copied their
content elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mmviz.capture.run import replacing_columns
from mmviz.errors import InputError
from mmviz.methods._backprop import model_run
from mmviz.methods.knockout import Effect, scores
from mmviz.methods.occlusion import Fill, fill_values
from mmviz.methods.target import TargetLike, resolve_targets

if TYPE_CHECKING:
    from mmviz.tracing import Trace


def ablate(trace: Trace, positions: Sequence[int], targets: TargetLike = None, *, fill: Fill = "mean") -> Effect:
    """Replace the image tokens at sequence ``positions`` and report each target's score change.

    Example:
        >>> ablate(trace, trace.image_positions[:10]).delta            # doctest: +SKIP
        array([-0.41])
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = trace.image_positions
    wanted = np.asarray(positions, dtype=np.int64).reshape(-1)
    unknown = sorted(set(wanted.tolist()) - set(columns.tolist()))
    if unknown:
        raise InputError(f"positions {unknown[:5]} are not image positions with a box; use trace.image_positions")
    index = torch.as_tensor(columns, dtype=torch.long)
    clean_embeddings = run.embeddings()[:, index]
    replacement = fill_values(run, index, fill)
    chosen = torch.as_tensor(np.isin(columns, wanted))
    edited = torch.where(chosen[None, :, None], replacement, clean_embeddings)
    clean = scores(run, resolved)
    changed = scores(run, resolved, edit=replacing_columns(index, edited))
    return Effect(
        positions=np.array([t.position for t in resolved]),
        clean=clean,
        changed=changed,
        delta=changed - clean,
        description=f"{len(wanted)} image tokens replaced by the {fill} fill",
    )
