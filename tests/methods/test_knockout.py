"""Attention knockout: cutting attention edges in chosen layers."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from mmviz.methods import (
    Target,
    knockout,
    knockout_map,
)
from mmviz.methods.common import scores


def test_knockout_of_every_image_edge_makes_the_answer_image_blind(llava_small, photo):
    model, processor = llava_small
    other = photo.transpose(0).rotate(180)
    question, answer = "What is in the picture?", "A red square."
    traces = [mmviz.trace(model, processor, image, question, answer=answer) for image in (photo, other)]
    clean = [scores(t.run, [Target.span(range(t.answer_start, len(t.tokens)))])[0] for t in traces]
    assert abs(clean[0] - clean[1]) > 1e-4  # the image matters before the knockout
    blind = [knockout(t, Target.span(range(t.answer_start, len(t.tokens))), to="all").changed[0] for t in traces]
    assert blind[0] == pytest.approx(blind[1], abs=1e-5)
    untouched = knockout(traces[0], layers=[])
    assert (untouched.delta == 0).all()


def test_knockout_map_blocks(trace):
    result = knockout_map(trace, Target.logprob(trace.answer_start), window=2)
    assert result.values.shape == (1, 16) and np.abs(result.values).max() > 0
    assert np.allclose(result.values[0].reshape(4, 4)[:2, :2], result.values[0, 0])
