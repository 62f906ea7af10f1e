"""Snapshot and restore everything mmviz may touch on a user's model, so it is left exactly as found."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelState:
    """Attention implementation of every (sub-)config, train/eval flags, ``requires_grad`` and hook counts."""

    attn_implementations: tuple[tuple[int, str | None], ...]
    training: tuple[bool, ...]
    requires_grad: tuple[bool, ...]
    hooks: tuple[tuple[int, ...], ...]


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """The module behind a ``torch.compile`` wrapper (or ``model`` itself).

    mmviz traces the original module: its hooks and attention switch then never reach the compiled graph, which
    would otherwise be traced again (seconds to minutes) and kept in a slower variant. The wrapper shares the
    module's parameters, so the trace describes the same model; the compiled model keeps its graph.

    Example:
        >>> uncompiled(torch.compile(model)) is model             # doctest: +SKIP
        True
    """
    original = getattr(model, "_orig_mod", None)
    compiled = type(model).__name__ == "OptimizedModule"  # torch._dynamo's wrapper, without importing dynamo
    return original if compiled and isinstance(original, torch.nn.Module) else model


def _configs(model: torch.nn.Module) -> list[object]:
    """Every config object reachable from the model's modules and its config's sub-configs (deduplicated)."""
    found: dict[int, object] = {}
    pending = [getattr(module, "config", None) for module in model.modules()]
    while pending:
        config = pending.pop()
        if config is None or id(config) in found or not hasattr(config, "_attn_implementation_internal"):
            continue
        found[id(config)] = config
        pending.extend(getattr(config, key, None) for key in getattr(config, "sub_configs", {}))
    return list(found.values())


def snapshot(model: torch.nn.Module) -> ModelState:
    """Record the model's mutable state."""
    return ModelState(
        attn_implementations=tuple((id(c), c._attn_implementation_internal) for c in _configs(model)),  # type: ignore[attr-defined]
        training=tuple(module.training for module in model.modules()),
        requires_grad=tuple(parameter.requires_grad for parameter in model.parameters()),
        hooks=tuple(tuple(len(getattr(m, name, {})) for name in _HOOK_DICTS) for m in model.modules()),
    )


def restore(model: torch.nn.Module, state: ModelState) -> None:
    """Put back attention implementations and train/grad flags recorded by :func:`snapshot`."""
    implementations = dict(state.attn_implementations)
    for config in _configs(model):
        if id(config) in implementations:
            config._attn_implementation_internal = implementations[id(config)]  # type: ignore[attr-defined]
    for module, training in zip(model.modules(), state.training, strict=True):
        module.training = training
    for parameter, flag in zip(model.parameters(), state.requires_grad, strict=True):
        parameter.requires_grad_(flag)


@contextmanager
def preserved(model: torch.nn.Module) -> Iterator[ModelState]:
    """Run a block that may change the model's flags; restore them afterwards, also when the block raises."""
    state = snapshot(model)
    try:
        yield state
    finally:
        restore(model, state)
