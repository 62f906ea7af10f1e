"""Tiny random-weight models of every supported family, each with its REAL processor class built offline.

A builder module (``build_<group>.py`` in this folder) registers one :class:`FamilyCase` per model type with
:func:`family_case`; ``test_families.py`` runs the same end-to-end checks over all of them and the compatibility
matrix in the README is generated from those results (``scripts/compat_matrix.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

KINDS = ("grid", "tiled", "query", "dual", "cross")


@dataclass(frozen=True)
class FamilyCase:
    """One family: how to build its tiny model + processor, and what it can do."""

    model_type: str
    kind: str  # "grid" (one token grid per image), "tiled" (views), "query" (Q-Former), "dual" (CLIP), "cross" (keys)
    build: Callable[[], tuple[Any, Any]]
    multi_image: bool = True  # the family's processor takes several images in one prompt
    gradients: bool = True  # gradient methods apply (the image reaches the language model through embeddings)
    measured: bool = False  # no adapter: the generic adapter lays it out from what the model reads (measure_layout)
    resampled: bool = False  # bilinearly down-samples a view's grid, so that view's boxes overlap (see checks.py)
    not_patch_local: str = ""  # why no token reads only its own patch (then no layout can be measured)

    @property
    def id(self) -> str:
        return self.model_type


_CASES: dict[str, FamilyCase] = {}


def family_case(model_type: str, kind: str, **options: Any) -> Callable[[Callable[[], tuple[Any, Any]]], Any]:
    """Register ``build`` (no arguments → ``(model, processor)``) as the tiny model of ``model_type``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")

    def register(build: Callable[[], tuple[Any, Any]]) -> Callable[[], tuple[Any, Any]]:
        _CASES[model_type] = FamilyCase(model_type, kind, cache(build), **options)
        return build

    return register


def cases() -> list[FamilyCase]:
    """Every registered family (imports all ``build_*`` modules of this folder once)."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("build_"):
            importlib.import_module(f"{__package__}.{module.name}")
    return [_CASES[key] for key in sorted(_CASES)]
