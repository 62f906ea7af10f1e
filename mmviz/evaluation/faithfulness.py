"""Faithfulness of a map (M20): does it point at the truth, and does removing what it ranks first hurt the answer?

* Pointing game (Zhang et al. 2016, arXiv 1608.00507): a hit when the box of the map's top image token touches
  the ground-truth mask (a box, not a tolerance in pixels: token boxes are the map's own resolution).
* Deletion / insertion (Petsiuk et al. 2018, arXiv 1806.07421) in token space: image tokens in map order are
  replaced by the blurred image's tokens (deletion) or revealed on top of them (insertion); the target's
  probability, relative to the clean one, is recorded at each step; AUC by the trapezoid rule over the fraction
  of tokens. A faithful map has a LOW deletion AUC and a HIGH insertion AUC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmviz.adapters.layout import TokenLayout
from mmviz.capture.run import replacing_columns
from mmviz.errors import InputError
from mmviz.methods import Baseline, Target
from mmviz.methods.common import baseline_embeddings, inference_context, model_run
from mmviz.records import Trace


def pointing_game(values: np.ndarray, layout: TokenLayout, mask: np.ndarray, image: int = 0) -> bool:
    """True when the box of the highest-valued image token of ``image`` contains a pixel of ``mask``.

    Args:
        values: ``(P,)`` one value per image column (``layout.image_positions``).
        mask: bool ``(height, width)`` of the ORIGINAL image: the object the answer is about.

    Example:
        >>> pointing_game(result.for_target(trace.answer_start), trace.layout, scene.objects[0].mask)  # doctest: +SKIP
        True
    """
    columns = layout.image_positions
    table = layout.column_table  # the layout, or a cross-attention family's keys
    mine = np.flatnonzero(table.image_index[columns] == image)
    if len(mine) == 0:
        raise InputError(f"the layout has no image tokens of image {image}")
    best = mine[int(np.argmax(np.asarray(values)[mine]))]
    x0, y0, x1, y1 = table.boxes[columns[best]]
    rows = slice(int(np.floor(y0)), int(np.ceil(y1)))
    cols = slice(int(np.floor(x0)), int(np.ceil(x1)))
    return bool(np.asarray(mask, dtype=bool)[rows, cols].any())


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of one map: probability of the target relative to the clean input.

    Attributes:
        fractions: ``(S + 1,)`` fraction of image tokens deleted / inserted, 0 … 1.
        deletion: ``(S + 1,)`` p(target) / p_clean(target) after deleting the top fraction.
        insertion: ``(S + 1,)`` the same after inserting the top fraction into the blurred image.
        deletion_auc: area under ``deletion`` (lower = more faithful).
        insertion_auc: area under ``insertion`` (higher = more faithful).
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: float
    insertion_auc: float


def deletion_insertion(
    trace: Trace, values: np.ndarray, target: Target, *, steps: int = 16, baseline: Baseline = "blur"
) -> Curves:
    """Deletion and insertion curves of ``values`` (one per image column) for ``target``, in token space.

    Cost: ``2 (steps + 1)`` forwards, run as two batches.

    Example:
        >>> curves = deletion_insertion(trace, result.for_target(t), Target.logprob(t))   # doctest: +SKIP
        >>> curves.deletion_auc < curves.insertion_auc                                    # doctest: +SKIP
        True
    """
    if steps < 1:
        raise InputError("steps must be at least 1")
    run = model_run(trace)
    columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
    clean = run.embeddings()[:, columns]
    replaced = baseline_embeddings(run, clean, columns, baseline)
    order = torch.as_tensor(np.argsort(-np.asarray(values, dtype=np.float64), kind="stable"))
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * len(columns)).astype(int)
    top = torch.zeros(len(counts), len(columns), dtype=torch.bool)
    for row, count in enumerate(counts):
        top[row, order[:count]] = True
    top = top.to(clean.device)  # beside the embeddings it selects between
    deleted = torch.where(top[:, :, None], replaced, clean)
    inserted = torch.where(top[:, :, None], clean, replaced)
    first = target.first_logit
    with inference_context(run):
        reference = target(run.forward(first_logit=first), run.input_ids, first)
        curves = []
        for variants in (deleted, inserted):
            logits = run.forward(batch=len(variants), edit=replacing_columns(columns, variants), first_logit=first)
            curves.append(torch.exp(target(logits, run.input_ids, first) - reference).cpu().numpy())
    return Curves(
        fractions=fractions,
        deletion=curves[0],
        insertion=curves[1],
        deletion_auc=float(np.trapezoid(curves[0], fractions)),
        insertion_auc=float(np.trapezoid(curves[1], fractions)),
    )
