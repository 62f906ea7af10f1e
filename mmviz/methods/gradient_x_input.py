"""Gradient × input on the image embeddings the language model reads (M6, first order).

a_i = Σ_d (x_i − x′_i)·∂F/∂x_i at the image positions; x′ = 0 by default (plain gradient × input) or a baseline
such as the embeddings of the blurred image. Signed: positive tokens raise the score to first order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmviz.methods.common import (
    Baseline,
    EmbeddingLeaf,
    backward_per_target,
    baseline_embeddings,
    check_baseline,
    first_logit_of,
    gradient_context,
    model_run,
)
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.records import Map, Trace, method

LABEL = "Gradient × input"
MEANING = (
    "Gradient × input on the image embeddings the language model reads: a first-order estimate of how much "
    "each image token raises (positive) or lowers (negative) the score. About LLM inputs, not pixels."
)


@method("gradient_x_input", label=LABEL, meaning=MEANING, signed=True)
def gradient_x_input(trace: Trace, targets: TargetLike = None, *, baseline: Baseline = "zero") -> Map:
    """Signed gradient × (input − baseline) per image token, per target (default: each answer token).

    ``baseline``: ``"zero"`` (plain gradient × input), ``"blur"`` (the blurred image's embeddings) or ``"mean"``.

    Example:
        >>> m = gradient_x_input(trace)                                # doctest: +SKIP
        >>> m.signed
        True
    """
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
    check_baseline(baseline)
    leaf = EmbeddingLeaf()
    rows = np.zeros((len(resolved), len(columns)), np.float32)

    def collect(row: int, _: Any) -> None:
        assert leaf.tensor is not None and leaf.tensor.grad is not None
        rows[row] = ((x - reference) * leaf.tensor.grad[0, columns]).sum(dim=-1).cpu().numpy()

    first = first_logit_of(resolved)
    with gradient_context(run):
        logits = run.forward(edit=leaf, first_logit=first)
        assert leaf.tensor is not None
        x = leaf.tensor.detach()[0, columns]  # the clean embeddings, from the forward itself
        reference = baseline_embeddings(run, x[None], columns, baseline)[0]
        backward_per_target(resolved, logits, run.input_ids, first, [leaf.tensor], collect, desc="mmviz: grad×input")
    return gradient_x_input.spec.map(  # type: ignore[attr-defined]
        values=rows,
        positions=np.array([t.position for t in resolved]),
        columns=trace.image_positions,
        info={"target": resolved[0].score, "baseline": baseline},
    )
