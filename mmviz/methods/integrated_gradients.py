"""Integrated Gradients (Sundararajan et al. 2017) on the image embeddings, through captum.

attr = (x − x′) ⊙ ∫ ∂F/∂x along the straight path from the baseline x′ to x. The baseline decides the answer;
the default is the embeddings of the same image blurred (in distribution, detail removed). Completeness
(Σ attr = F(x) − F(x′)) is reported for every target as a relative error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients

from mmviz.capture.run import replacing_columns
from mmviz.errors import InputError
from mmviz.methods._backprop import frozen_with_grad, model_run
from mmviz.methods.map import Map
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.progress import progress

if TYPE_CHECKING:
    from mmviz.tracing import Trace

LABEL = "Integrated Gradients"
MEANING = (
    "Integrated Gradients on the image embeddings: each image token's share of the score change between a "
    "blurred image and this one (signed; the shares add up to that change)."
)


def integrated_gradients(
    trace: Trace,
    targets: TargetLike = None,
    *,
    steps: int = 32,
    baseline: Literal["blur", "zero"] = "blur",
    batch_size: int = 8,
) -> Map:
    """Signed IG attribution per image token, per target (default: each answer token).

    ``info["completeness_error"]`` holds, per target, |Σ attr − (F(x) − F(x′))| / |F(x) − F(x′)|.

    Example:
        >>> m = integrated_gradients(trace, steps=32)                  # doctest: +SKIP
        >>> max(m.info["completeness_error"]) < 0.05                   # doctest: +SKIP
        True
    """
    if steps < 2:
        raise InputError("steps must be at least 2")
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
    clean = run.embeddings()[:, columns]
    reference = run.embeddings(run.blurred_inputs())[:, columns] if baseline == "blur" else torch.zeros_like(clean)
    rows = np.zeros((len(resolved), len(columns)), np.float32)
    errors: list[float] = []
    with frozen_with_grad(run):
        for row, target in enumerate(progress(resolved, desc="mmviz: integrated gradients")):
            first = target.first_logit

            def score(values: torch.Tensor, target=target, first=first) -> torch.Tensor:
                logits = run.forward(batch=values.shape[0], edit=replacing_columns(columns, values), first_logit=first)
                return target(logits, run.input_ids, first)

            attribution, delta = IntegratedGradients(score).attribute(
                clean,
                baselines=reference,
                n_steps=steps,
                internal_batch_size=batch_size,
                return_convergence_delta=True,
            )
            rows[row] = attribution[0].sum(dim=-1).detach().numpy()
            with torch.no_grad():
                change = float(score(clean) - score(reference))
            errors.append(abs(float(delta)) / max(abs(change), 1e-8))
    return Map(
        method="integrated_gradients",
        label=LABEL,
        meaning=MEANING,
        values=rows,
        positions=np.array([t.position for t in resolved]),
        columns=trace.image_positions,
        signed=True,
        info={"baseline": baseline, "steps": steps, "completeness_error": errors, "target": resolved[0].score},
    )
