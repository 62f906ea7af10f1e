"""One vocabulary for choosing layers, heads and depths, and the one validator every entry point uses.

* ``layer`` / ``head``: one choice, an index or ``"mean"`` (the mean over layers or heads); ``layers`` /
  ``heads``: a set of indices. Layers are always DECODER layers ``0 … L−1``: mmviz never counts from the end
  and never wraps, so ``-1`` or ``L`` is an error, not the last or the first layer.
* ``depth``: the residual-stream axis of the logit lens and the projection, ``0 … L`` (0 = the embeddings,
  ``d`` = the state after decoder layer ``d − 1``), so that the embeddings never hide behind a layer number.

Every bad selection raises :class:`~mmviz.errors.InputError` naming the valid range.

Example:
    >>> layer(2, 4), layer("mean", 4), layers([3, 1], 4)
    (2, 'mean', (1, 3))
    >>> layer(4, 4)
    Traceback (most recent call last):
    ...
    mmviz.errors.InputError: layer 4 is out of range: choose a decoder layer in 0…3 or 'mean'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

from mmviz.errors import InputError

MEAN = "mean"
Mean = Literal["mean"]
LayerChoice = int | Mean
HeadChoice = int | Mean


def index(value: object, count: int, name: str, *, named: Iterable[str] = (), unit: str = "") -> int | str:
    """``value`` as an index in ``0 … count−1``, or one of the ``named`` values; else :class:`InputError`.

    Example:
        >>> index(1, 3, "head", named=("mean",))
        1
    """
    names = tuple(named)
    if isinstance(value, str) and value in names:
        return value
    unit = unit or name
    choices = f"{unit} in 0…{count - 1}" if count > 0 else f"no {unit} (there are none)"
    alternatives = "".join(f" or {name_!r}" for name_ in names)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer{alternatives}, not {value!r}: choose a {choices}{alternatives}")
    if not 0 <= int(value) < count:
        raise InputError(f"{name} {int(value)} is out of range: choose a {choices}{alternatives}")
    return int(value)


def layer(value: object, count: int, *, mean: bool = True, name: str = "layer") -> LayerChoice:
    """One decoder layer ``0 … count−1`` (or ``"mean"`` when ``mean``)."""
    return index(value, count, name, named=(MEAN,) if mean else (), unit="decoder layer")  # type: ignore[return-value]


def head(value: object, count: int, *, named: Iterable[str] = (MEAN,), name: str = "head") -> int | str:
    """One attention head ``0 … count−1`` or one of ``named`` (``"mean"``; methods may also allow ``"max"``)."""
    return index(value, count, name, named=named)


def depth(value: object, count: int, *, name: str = "depth") -> int:
    """One residual-stream depth ``0 … count−1`` (0 = the embeddings, ``d`` = after decoder layer ``d − 1``)."""
    return index(value, count, name, unit="depth (0 = the embeddings, d = after decoder layer d − 1)")  # type: ignore[return-value]


def indices(values: object, count: int, name: str, *, unit: str = "", empty: bool = False) -> tuple[int, ...]:
    """A set of indices in ``0 … count−1``, sorted and without repeats (non-empty unless ``empty``).

    Example:
        >>> indices(range(2, 4), 4, "layers")
        (2, 3)
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, (Iterable, np.ndarray)):
        raise InputError(f"{name} must be a list of indices, not {values!r}")
    singular = name.removesuffix("s")
    chosen = sorted({index(value, count, singular, unit=unit) for value in np.asarray(list(values)).tolist()})
    if not chosen and not empty:
        raise InputError(f"{name} is empty: choose at least one {unit or singular} in 0…{count - 1}")
    return tuple(chosen)  # type: ignore[arg-type]


def layers(values: object, count: int, *, name: str = "layers", empty: bool = False) -> tuple[int, ...]:
    """A set of decoder layers ``0 … count−1`` (e.g. a knockout window ``range(8, 17)``)."""
    return indices(values, count, name, unit="decoder layer", empty=empty)


def heads(values: object, count: int, *, name: str = "heads") -> tuple[int, ...]:
    """A set of attention heads ``0 … count−1``."""
    return indices(values, count, name, unit="head")


def captured(chosen: Iterable[int], available: Iterable[int], what: str = "layers") -> None:
    """Raise :class:`InputError` unless every chosen layer was recorded (a capture plan may record fewer)."""
    have = sorted(int(v) for v in available)
    missing = sorted(set(int(v) for v in chosen) - set(have))
    if missing:
        raise InputError(
            f"{what} {missing} were not captured (captured: {have}); trace again with a CapturePlan that records them"
        )
