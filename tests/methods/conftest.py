"""A traced tiny LLaVA shared by the method tests (16 image tokens, 3 layers, GQA 4/2)."""

from __future__ import annotations

import pytest

import mmviz
from mmviz.capture import CapturePlan


@pytest.fixture(scope="module")
def trace(llava_small, photo) -> mmviz.Trace:
    model, processor = llava_small
    return mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")


@pytest.fixture(scope="module")
def trace_all_rows(llava_small, photo) -> mmviz.Trace:
    model, processor = llava_small
    plan = CapturePlan(queries="all", hidden_states=True)
    return mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.", capture=plan)
