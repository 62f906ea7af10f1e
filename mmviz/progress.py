"""Progress bars (tqdm.auto) for anything a user waits on, silenced inside :func:`quiet` (nested runs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm.auto import tqdm

_QUIET: ContextVar[bool] = ContextVar("mmviz_quiet", default=False)


def progress(iterable: Any = None, **options: Any) -> tqdm:
    """A transient tqdm bar (``leave=False``), disabled inside :func:`quiet`.

    Example:
        >>> for step in progress(range(3), desc="mmviz: demo"):
        ...     pass
    """
    options.setdefault("leave", False)
    options["disable"] = bool(options.get("disable", False)) or _QUIET.get()
    return tqdm(iterable, **options)


def is_quiet() -> bool:
    return _QUIET.get()


@contextmanager
def quiet() -> Iterator[None]:
    """Silence mmviz's progress bars in the block (e.g. an evaluation loop with its own bar)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)
