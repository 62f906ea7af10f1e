"""Scores of a traced model with edited image embeddings: the independent reference of the attribution tests."""

from __future__ import annotations

import torch

from mmviz.capture.run import replacing_columns
from mmviz.methods import Target
from mmviz.records import Trace


def score_with(trace: Trace, target: Target, values: torch.Tensor) -> float:
    """``target``'s score when the image tokens' embeddings are ``values`` ``(1, P, d)``."""
    run = trace.run
    columns = torch.as_tensor(trace.image_positions)
    with torch.no_grad():
        logits = run.forward(edit=replacing_columns(columns, values), first_logit=target.first_logit)
    return float(target(logits, run.input_ids, target.first_logit)[0])
