"""Fixtures of the GPU suite; every test in this folder is marked ``gpu`` and skipped unless CUDA is available.

The models are the CPU suite's tiny random-weight LLaVA-1.5 (``llava_small``, ``llava_576`` from
``tests/conftest.py``), copied onto the accelerator in float32 and bfloat16. Each reference is the same weights on
the CPU in float32 (for bfloat16: the weights rounded to bfloat16 first, so the comparison measures arithmetic).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import mmviz
from tests.gpu.helpers import ANSWER, DEVICE_VARIABLE, DTYPES, PROMPT, accelerator, dtype_id, on, rounded_reference
from tests.gpu.helpers import tf32_off as _tf32_off

HERE = Path(__file__).resolve().parent


def _unavailable() -> str | None:
    """Why this folder's tests cannot run here, or None."""
    try:
        device = accelerator()
    except ValueError as error:
        return str(error)
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"needs a CUDA device (torch.cuda.is_available() is False); {DEVICE_VARIABLE}=cpu dry-runs the suite"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this folder's tests ``gpu``; skip them all without CUDA (before any fixture moves a model)."""
    reason = _unavailable()
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def device() -> torch.device:
    """``cuda:0`` (or the CPU in a dry run)."""
    return accelerator()


@pytest.fixture()
def exact_float32() -> Iterator[None]:
    """TF32 off for the test (restored after): float32 on the GPU compared with float32 on the CPU."""
    with _tf32_off():
        yield


@pytest.fixture(scope="module", params=DTYPES, ids=dtype_id)
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """float32, then bfloat16."""
    return request.param


@pytest.fixture(scope="module")
def pair(llava_small, device, dtype) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """(the small model on the accelerator in ``dtype``, the same weights on the CPU in float32, the processor)."""
    model, processor = llava_small
    return on(model, device, dtype), rounded_reference(model, dtype), processor


@pytest.fixture(scope="module")
def traces(pair, photo) -> tuple[mmviz.Trace, mmviz.Trace]:
    """(trace on the accelerator, trace of the CPU reference): the same prompt, image and given answer."""
    model, reference, processor = pair
    with _tf32_off():
        on_device = mmviz.trace(model, processor, photo, PROMPT, answer=ANSWER)
        on_cpu = mmviz.trace(reference, processor, photo, PROMPT, answer=ANSWER)
    return on_device, on_cpu
