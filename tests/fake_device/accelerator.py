"""A fake accelerator for CPU-only machines: tensors that say they live on ``fakegpu:0`` and compute on the CPU.

The device mix-ups that break a method on CUDA (a CPU tensor multiplied with a device tensor, ``.numpy()`` on a
device tensor, a CPU mask against device scores) need no GPU to be caught: a tensor only has to *claim* another
device and refuse to meet CPU tensors the way CUDA does. :class:`FakeAcceleratorTensor` is a wrapper subclass that
reports ``fakegpu:0`` and holds its values in a CPU tensor; :func:`fake_accelerator` registers the device
(PyTorch's Python backend for the ``privateuseone`` key, so autograd and ``torch.autocast`` accept it) and, for the
block, routes every factory or copy that targets it through :class:`FakeAcceleratorMode`.

Importing this module makes ``fakegpu`` the process's accelerator for good (``torch.accelerator`` reports it, and
PyTorch allows one such registration per process), so only a separate interpreter imports it: ``tests/test_devices.py``
runs ``tests/fake_device/check_methods.py`` in a child pytest.

The rules are CUDA's: every tensor argument of an op must be on one device, except 0-dim CPU tensors (Python
scalars in disguise), the source of ``copy_`` and CPU index tensors of advanced indexing; ``.numpy()`` refuses
(subclasses have no NumPy view), ``.cpu()`` and ``.item()`` work. Values are exactly the CPU computation's, so
results can be compared with a CPU run to the last bit.

Example:
    >>> with fake_accelerator() as device:              # doctest: +SKIP
    ...     model.to(device)
    ...     mmviz.methods.relevancy(mmviz.trace(model, processor, image, "What?"))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.backend_registration import _DummyBackendModule, _setup_privateuseone_for_python_backend

DEVICE_TYPE = "fakegpu"

_aten = torch.ops.aten
MIXED_DEVICES_ALLOWED = {_aten.copy_.default, _aten._to_copy.default, _aten._copy_from.default}
"""Ops that move data between devices by design."""
CPU_INDICES_ALLOWED = {
    _aten.index.Tensor,
    _aten.index_put.default,
    _aten.index_put_.default,
    _aten._index_put_impl_.default,
}
"""Advanced indexing takes CPU index tensors on any device (PyTorch moves them)."""


class _Backend(_DummyBackendModule):
    """What ``torch.autocast`` and friends ask of a device module."""

    def get_amp_supported_dtype(self) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16]


if torch._C._get_privateuse1_backend_name() != DEVICE_TYPE:  # PyTorch allows one rename per process
    _setup_privateuseone_for_python_backend(DEVICE_TYPE, backend_module=_Backend())
DEVICE = torch.device(DEVICE_TYPE, 0)


class FakeAcceleratorTensor(torch.Tensor):
    """A tensor on ``fakegpu:0`` whose values live in the CPU tensor ``_on_cpu``."""

    _on_cpu: torch.Tensor

    @staticmethod
    def __new__(cls, real: torch.Tensor, requires_grad: bool | None = None) -> FakeAcceleratorTensor:
        # accelerate re-creates parameters as ``type(param)(value, requires_grad=...)``: take that form too.
        if isinstance(real, FakeAcceleratorTensor):
            real = real._on_cpu
        if real.device.type == "meta":  # accelerate offloading a parameter re-creates it with its class on meta
            return torch.nn.Parameter(real, requires_grad=bool(requires_grad))  # type: ignore[return-value]
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls,
            real.size(),
            strides=real.stride(),
            storage_offset=real.storage_offset(),
            dtype=real.dtype,
            device=DEVICE,
            requires_grad=real.requires_grad if requires_grad is None else requires_grad,
        )
        wrapper._on_cpu = real.detach()
        return wrapper

    def tolist(self) -> Any:  # CUDA tensors copy to a list (not a NumPy view): allow what CUDA allows
        return self._on_cpu.tolist()

    def __repr__(self) -> str:  # type: ignore[override]
        return f"FakeAcceleratorTensor({self._on_cpu!r})"

    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


class FakeAcceleratorMode(TorchDispatchMode):
    """Sends ops on plain tensors that target ``fakegpu`` (factories, ``.to``) to the fake device."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


def _run(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """Check the devices of ``func``'s tensors as CUDA would, run it on the real CPU values, wrap the results."""
    devices: set[str] = set()

    def unwrap(value: Any) -> Any:
        if isinstance(value, FakeAcceleratorTensor):
            devices.add(DEVICE_TYPE)
            return value._on_cpu
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            devices.add(value.device.type)
        return value

    real_args = tree_map(unwrap, args)
    real_kwargs = tree_map(unwrap, kwargs)
    target = kwargs.get("device")
    if target is not None:  # a factory or a copy names where its result goes
        on_fake = torch.device(target).type == DEVICE_TYPE
        if on_fake:
            real_kwargs["device"] = torch.device("cpu")
    else:
        mixed = len(devices) > 1 and func not in MIXED_DEVICES_ALLOWED
        if mixed and not (func in CPU_INDICES_ALLOWED and _only_indices_on_cpu(args)):
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{' and '.join(sorted(devices))}! (when checking arguments for {func})"
            )
        on_fake = DEVICE_TYPE in devices or _writes_into_fake(func, args)
    result = func(*real_args, **real_kwargs)
    if not on_fake:
        return result
    return tree_map(lambda value: _wrap(value), result)


def _wrap(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and not isinstance(value, FakeAcceleratorTensor):
        return FakeAcceleratorTensor(value)
    return value


def _only_indices_on_cpu(args: Any) -> bool:
    """In ``index(self, indices, ...)`` / ``index_put(self, indices, values)``: only index tensors are on the CPU."""
    source, indices, *rest = args
    others_on_device = all(
        isinstance(value, FakeAcceleratorTensor) or not isinstance(value, torch.Tensor) or value.dim() == 0
        for value in rest
    )
    integer_indices = all(index is None or not index.is_floating_point() for index in indices)
    return isinstance(source, FakeAcceleratorTensor) and others_on_device and integer_indices


def _writes_into_fake(func: Any, args: Any) -> bool:
    """``copy_`` into a fake-device tensor keeps its destination's device."""
    return func in MIXED_DEVICES_ALLOWED and bool(args) and isinstance(args[0], FakeAcceleratorTensor)


@contextmanager
def fake_accelerator() -> Iterator[torch.device]:
    """Register ``fakegpu`` and route tensors created for it to :class:`FakeAcceleratorTensor` for the block.

    Example:
        >>> with fake_accelerator() as device:          # doctest: +SKIP
        ...     torch.ones(2, device=device) * torch.ones(2)
        Traceback (most recent call last):
        RuntimeError: Expected all tensors to be on the same device, ...
    """
    empty_cache = torch.accelerator.empty_cache
    torch.accelerator.empty_cache = lambda: None  # accelerate clears "the" accelerator's cache; ours has none
    try:
        with FakeAcceleratorMode():
            yield DEVICE
    finally:
        torch.accelerator.empty_cache = empty_cache
