"""A fake accelerator for CPU-only machines: tensors that say they live on ``fakegpu:0`` and compute on the CPU.

The device mix-ups that break a method on CUDA (a CPU tensor multiplied with a device tensor, ``.numpy()`` on a
device tensor, a CPU mask against device scores) need no GPU to be caught: a tensor only has to *claim* another
device and refuse to meet CPU tensors the way CUDA does. :class:`FakeAcceleratorTensor` is a wrapper subclass that
reports ``fakegpu:0`` (or ``fakegpu:1``) and holds its values in a CPU tensor. Importing this module registers the
device (PyTorch's Python backend for the ``privateuseone`` key, so autograd and ``torch.autocast`` accept it) and its
allocation kernels; :func:`fake_accelerator` routes, for the block, every op on plain tensors that involves the
device through :class:`FakeAcceleratorMode`.

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

    def device_count(self) -> int:
        return 2  # fakegpu:0 and fakegpu:1, for models split over two accelerators


if torch._C._get_privateuse1_backend_name() != DEVICE_TYPE:  # PyTorch allows one rename per process
    _setup_privateuseone_for_python_backend(DEVICE_TYPE, backend_module=_Backend())
DEVICE = torch.device(DEVICE_TYPE, 0)


class FakeAcceleratorTensor(torch.Tensor):
    """A tensor on ``fakegpu:<index>`` whose values live in the CPU tensor ``_on_cpu``."""

    _on_cpu: torch.Tensor

    @staticmethod
    def __new__(
        cls, real: torch.Tensor, requires_grad: bool | None = None, *, device: torch.device | None = None
    ) -> FakeAcceleratorTensor:
        # accelerate re-creates parameters as ``type(param)(value, requires_grad=...)``: take that form too.
        if isinstance(real, FakeAcceleratorTensor):
            device = device or real.device
            real = real._on_cpu
        if real.device.type == "meta":  # accelerate offloading a parameter re-creates it with its class on meta
            return torch.nn.Parameter(real, requires_grad=bool(requires_grad))  # type: ignore[return-value]
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls,
            real.size(),
            strides=real.stride(),
            storage_offset=real.storage_offset(),
            dtype=real.dtype,
            device=device or DEVICE,
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
    """Sends ops on plain tensors that involve ``fakegpu`` (a factory or ``.to`` onto it, a copy out of it) through
    the same device rules, in the thread that enters it."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


def _run(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """Check the devices of ``func``'s tensors as CUDA would, run it on the real CPU values, wrap the results."""
    devices: set[torch.device] = set()

    def unwrap(value: Any) -> Any:
        if isinstance(value, FakeAcceleratorTensor):
            devices.add(value.device)
            return value._on_cpu
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            devices.add(value.device)
        return value

    real_args = tree_map(unwrap, args)
    real_kwargs = tree_map(unwrap, kwargs)
    target = kwargs.get("device")
    fake = {device for device in devices if device.type == DEVICE_TYPE}
    if target is not None:  # a factory or a copy names where its result goes
        target = torch.device(target)
        result_device = torch.device(DEVICE_TYPE, target.index or 0) if target.type == DEVICE_TYPE else None
        if result_device is not None:
            real_kwargs["device"] = torch.device("cpu")
    else:
        mixed = len(devices) > 1 and func not in MIXED_DEVICES_ALLOWED
        if mixed and not (len(fake) == 1 and func in CPU_INDICES_ALLOWED and _only_indices_on_cpu(args)):
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{' and '.join(sorted(map(str, devices)))}! (when checking arguments for {func})"
            )
        if _writes_into_fake(func, args):
            result_device = args[0].device
        else:
            result_device = next(iter(fake)) if len(fake) == 1 else None
    result = func(*real_args, **real_kwargs)
    if result_device is None:
        return result
    return tree_map(lambda value: _wrap(value, result_device), result)


def _wrap(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor) and not isinstance(value, FakeAcceleratorTensor):
        return FakeAcceleratorTensor(value, device=device)
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


def _empty_strided(
    size: Any, stride: Any, dtype: Any = None, layout: Any = None, device: Any = None, pin_memory: Any = None
) -> torch.Tensor:
    return FakeAcceleratorTensor(torch.empty_strided(size, stride, dtype=dtype), device=torch.device(device))


def _empty(
    size: Any,
    dtype: Any = None,
    layout: Any = None,
    device: Any = None,
    pin_memory: Any = None,
    memory_format: Any = None,
) -> torch.Tensor:
    return FakeAcceleratorTensor(torch.empty(size, dtype=dtype), device=torch.device(device))


# The device's allocation and copy kernels: for threads the mode does not reach (autograd's backward runs tensor
# hooks in its own) and for copies PyTorch starts below Python. A factory allocates through them and then fills
# the wrapper through its __torch_dispatch__.
def _copy_from(source: torch.Tensor, destination: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """A copy between the device and the CPU that PyTorch starts below Python (``torch.tensor(data, device=...)``)."""
    values = source._on_cpu if isinstance(source, FakeAcceleratorTensor) else source
    target = destination._on_cpu if isinstance(destination, FakeAcceleratorTensor) else destination
    target.copy_(values)
    return destination


_KERNELS = torch.library.Library("aten", "IMPL")
_KERNELS.impl("_copy_from", _copy_from, "PrivateUse1")
_KERNELS.impl("empty_strided", _empty_strided, "PrivateUse1")
_KERNELS.impl("empty.memory_format", _empty, "PrivateUse1")


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
