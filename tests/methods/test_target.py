"""The scalar F a map explains: which logits row it reads, and which score."""

from __future__ import annotations

import pytest
import torch

from mmviz.errors import InputError
from mmviz.methods import (
    Target,
    gradient_x_input,
)
from mmviz.methods.common import scores


def test_targets_read_the_predicting_row(trace):
    run = trace.run
    span = Target.span(range(trace.answer_start, len(trace.tokens)))
    assert scores(run, [span])[0] == pytest.approx(trace.answer_logprobs.sum(), abs=1e-4)
    first = trace.answer_start
    other = int(trace.token_ids[first + 1])
    logit, contrast = scores(run, [Target.logit(first), Target.contrast(first, other)])
    with torch.no_grad():
        row = run.model(input_ids=run.input_ids, use_cache=False, **run.inputs).logits[0, first - 1]
    assert logit == pytest.approx(float(row[trace.token_ids[first]]), abs=1e-4)
    assert contrast == pytest.approx(float(row[trace.token_ids[first]] - row[other]), abs=1e-4)
    with pytest.raises(InputError, match="1…"):
        gradient_x_input(trace, [0])
