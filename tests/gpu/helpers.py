"""Shared pieces of the GPU suite: which device stands for the accelerator, the tolerances per dtype, "left as found".

Nothing here imports a package the bare GPU machine lacks (no hypothesis, playwright or jupyter): torch, numpy,
transformers and mmviz only.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmviz.capture import snapshot
from mmviz.model_state import ModelState

DEVICE_VARIABLE = "MMVIZ_GPU_DEVICE"
"""``cuda`` (the default: tests skip without CUDA) or ``cpu`` (a dry run: the CPU stands in for the accelerator)."""

PROMPT = "What is in the picture?"
ANSWER = "A red square above a circle."

DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class Tolerance:
    """How close a result on the accelerator must be to the same model's result on the CPU in float32.

    Attributes:
        rows_eager: max abs difference of recorded attention rows from eager ``output_attentions`` on the same
            device and dtype.
        rows_cpu: max abs difference of recorded rows from the CPU float32 rows of the same weights.
        map_relative: max abs difference of a map from the CPU float32 map, relative to the CPU map's largest
            magnitude (plus ``map_floor``, for maps that are almost zero everywhere, e.g. knockout on random weights).
        map_floor: see ``map_relative``.
        logprob: max abs difference of the answer's log-probabilities from the CPU float32 ones.
    """

    rows_eager: float
    rows_cpu: float
    map_relative: float
    map_floor: float
    logprob: float


TOLERANCES: dict[torch.dtype, Tolerance] = {
    # float32 with TF32 off (see conftest.exact_float32): what is left is summation order.
    torch.float32: Tolerance(rows_eager=1e-5, rows_cpu=1e-5, map_relative=2e-3, map_floor=1e-5, logprob=1e-4),
    # bfloat16: weights, pixels and activations rounded to 8 bits of mantissa. Measured on the CPU in bfloat16
    # (MMVIZ_GPU_DEVICE=cpu): rows vs eager 1.8e-3 (eager rounds its probabilities to bf16, half an ulp at 1 is
    # 2e-3), rows vs float32 1.3e-4, log-probabilities 2.7e-3, maps 0.12 at worst (occlusion: differences of nearly
    # equal scores) and below 0.04 for the rest; the bounds leave a margin for the GPU's kernels and summation order.
    torch.bfloat16: Tolerance(rows_eager=8e-3, rows_cpu=5e-3, map_relative=0.35, map_floor=1e-3, logprob=0.05),
}


def accelerator() -> torch.device:
    """The device standing for the accelerator: ``cuda:0``, or the CPU in a dry run (``MMVIZ_GPU_DEVICE=cpu``)."""
    wanted = os.environ.get(DEVICE_VARIABLE, "cuda").strip().lower()
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted not in ("cuda", "cuda:0"):
        raise ValueError(f"{DEVICE_VARIABLE} must be 'cuda' or 'cpu', not {wanted!r}")
    return torch.device("cuda", 0)


def dry_run() -> bool:
    """Whether the CPU stands in for the accelerator."""
    return accelerator().type == "cpu"


def dtype_id(dtype: torch.dtype) -> str:
    """``float32`` / ``bfloat16``: a readable test id."""
    return str(dtype).removeprefix("torch.")


def on(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A private copy of ``model`` on ``device`` in ``dtype`` (the original is never moved)."""
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def rounded_reference(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A CPU float32 copy of ``model`` whose weights went through ``dtype`` first: the same model as the one run in
    ``dtype``, so a comparison measures the arithmetic, not the rounding of the weights."""
    return copy.deepcopy(model).to(dtype=dtype).to(device="cpu", dtype=torch.float32).eval()


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off for CUDA matmuls and convolutions inside the block (restored after): a float32 comparison with the
    CPU is about mmviz's arithmetic, and TF32's 10-bit mantissa would blur it (the CLIP patch embedding is a conv)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- the model left as found -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    """Everything about a model that mmviz must leave as it found it.

    Attributes:
        flags: :func:`mmviz.capture.snapshot`: attention implementation of every config, train/eval flags,
            ``requires_grad`` and hook counts of every module.
        implementations: the attention implementation of the top config and its text / vision sub-configs.
        training: the model's own train/eval flag.
        placement: ``(name, device, dtype, requires_grad)`` of every parameter and buffer.
        accelerate_hooks: the id of accelerate's ``_hf_hook`` of every module (None where there is none).
        device_map: ``model.hf_device_map`` (accelerate's placement), if any.
    """

    flags: ModelState
    implementations: tuple[Any, ...]
    training: bool
    placement: tuple[tuple[str, str, str, bool], ...]
    accelerate_hooks: tuple[int | None, ...]
    device_map: Any


def implementations(model: torch.nn.Module) -> tuple[Any, ...]:
    """``_attn_implementation`` of the config and of its ``text_config`` / ``vision_config`` (where present)."""
    config = model.config
    subs = [getattr(config, key, None) for key in ("text_config", "vision_config")]
    return (config._attn_implementation, *(None if sub is None else sub._attn_implementation for sub in subs))


def found(model: torch.nn.Module) -> Found:
    """The state of ``model`` to compare with after a call."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return Found(
        flags=snapshot(model),
        implementations=implementations(model),
        training=model.training,
        placement=tuple((name, str(t.device), str(t.dtype), t.requires_grad) for name, t in tensors),
        accelerate_hooks=tuple(
            None if getattr(module, "_hf_hook", None) is None else id(module._hf_hook) for module in model.modules()
        ),
        device_map=copy.deepcopy(getattr(model, "hf_device_map", None)),
    )


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, where it lives (meta tensors, which hold no values, are skipped)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.detach().clone() for name, t in tensors if t.device.type != "meta"}


def assert_left_as_found(model: torch.nn.Module, before: Found, values: dict[str, torch.Tensor]) -> None:
    """``model`` is as :func:`found` and :func:`weights` saw it: flags, hooks, implementations, placement, and every
    parameter and buffer bit-identical."""
    after = found(model)
    assert after.flags == before.flags, "flags, requires_grad, hooks and attention implementations restored"
    assert after.implementations == before.implementations, f"{after.implementations} != {before.implementations}"
    assert after.training == before.training
    assert after.placement == before.placement, "every parameter and buffer on its device, in its dtype"
    assert after.accelerate_hooks == before.accelerate_hooks, "accelerate's hooks are the same objects"
    assert after.device_map == before.device_map
    now = weights(model)
    assert now.keys() == values.keys()
    changed = [name for name, value in values.items() if not torch.equal(now[name], value)]
    assert not changed, f"weights changed: {changed[:5]}"


# -- comparisons -------------------------------------------------------------------------------------------------------
def relative_error(got: np.ndarray, expected: np.ndarray, floor: float) -> float:
    """max |got − expected| / (max |expected| + floor)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    return float(np.abs(got - expected).max(initial=0.0) / (np.abs(expected).max(initial=0.0) + floor))


def assert_close_to_cpu(got: np.ndarray, expected: np.ndarray, dtype: torch.dtype, what: str) -> None:
    """``got`` (on the accelerator in ``dtype``) is finite, shaped like and close to the CPU float32 ``expected``."""
    got = np.asarray(got)
    assert got.shape == np.asarray(expected).shape, f"{what}: shape {got.shape} != {np.asarray(expected).shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    tolerance = TOLERANCES[dtype]
    error = relative_error(got, expected, tolerance.map_floor)
    assert error <= tolerance.map_relative, (
        f"{what} in {dtype_id(dtype)}: relative error {error:.3g} > {tolerance.map_relative:g}"
    )
