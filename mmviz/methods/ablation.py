"""Patch ablation (Neo et al. 2024, arXiv 2410.07149): replace chosen image tokens' embeddings and re-run.

The replacement is the mean image-token embedding of this input by default (or the blurred image's tokens). It
tests whether the language model relies on those positions; the vision tower may already have copied their
content elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmviz.capture.run import replacing_columns
from mmviz.errors import InputError
from mmviz.methods.common import Baseline, Effect, baseline_embeddings, effect, model_run, scores
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.records import Trace


def ablate(
    trace: Trace, positions: Sequence[int], targets: TargetLike = None, *, baseline: Baseline = "mean"
) -> Effect:
    """Replace the image tokens at sequence ``positions`` by the ``baseline`` and report each target's score change.

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
        raise InputError(
            f"positions {unknown[:5]} are not image positions with a box; choose from trace.image_positions"
        )
    index = torch.as_tensor(columns, dtype=torch.long)
    clean_embeddings = run.embeddings()[:, index]
    replacement = baseline_embeddings(run, clean_embeddings, index, baseline)
    chosen = torch.as_tensor(np.isin(columns, wanted), device=clean_embeddings.device)
    edited = torch.where(chosen[None, :, None], replacement, clean_embeddings)
    changed = scores(run, resolved, edit=replacing_columns(index, edited))
    return effect(run, resolved, changed, f"{len(wanted)} image tokens replaced by the {baseline} baseline")
