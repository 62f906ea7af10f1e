"""The one guard on what the browser may change: every widget's browser updates go through :class:`BrowserOwned`.

Only the traits a widget lists in ``BROWSER_OWNED`` may change from the browser, and each value is validated by the
widget's own ``_check_<name>`` validator (type included, also when it equals the current value, where traitlets would
not validate: ``False == 0``) before anything is applied. Anything else is logged, nothing of it is applied, and the
browser is sent the kernel's values back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import traitlets

from mmviz.errors import MmvizError

log = logging.getLogger("mmviz")


class BrowserOwned:
    """Mixin for an ``anywidget.AnyWidget`` (before it in the bases) that validates every update from the browser.

    Example:
        >>> class Viewer(BrowserOwned, anywidget.AnyWidget):             # doctest: +SKIP
        ...     BROWSER_OWNED = ("layer",)
        ...     layer = traitlets.Int(0).tag(sync=True)
        ...     @traitlets.validate("layer")
        ...     def _check_layer(self, proposal): ...
    """

    BROWSER_OWNED: ClassVar[tuple[str, ...]] = ()

    def set_state(self, sync_data: dict[str, Any]) -> None:
        """Apply a state update from the browser, or refuse all of it and send the kernel's values back."""
        names = [name for name in sync_data if name in self.keys] if isinstance(sync_data, dict) else []  # type: ignore[attr-defined]
        try:
            if not isinstance(sync_data, dict):
                raise TypeError(f"a widget update must map trait names to values, not {type(sync_data).__name__}")
            refused = [name for name in names if name not in self.BROWSER_OWNED]
            if refused:
                raise traitlets.TraitError(f"the browser may not change {refused}: they belong to the kernel")
            checked = {name: getattr(self, f"_check_{name}")({"value": sync_data[name]}) for name in names}
            # ipywidgets holds the notifications inside its property lock; holding them here as well would fire
            # them after the lock is released, sending every accepted value back as an extra update.
            super().set_state(checked)  # type: ignore[misc]
        except (traitlets.TraitError, TypeError, ValueError, RecursionError) as error:
            log.error("mmviz: rejected a widget update from the browser: %s", printable(str(error)))
            if names:
                self.send_state(names)  # type: ignore[attr-defined]


def whole(value: Any) -> Any:
    """A whole float from the browser (JSON numbers may arrive as floats) as an int; anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def checked(check: Callable[..., Any], value: Any, count: int, *args: Any, **options: Any) -> Any:
    """``check(value, count, ...)`` of :mod:`mmviz.selection`, its :class:`~mmviz.InputError` as a trait error."""
    try:
        return check(value, count, *args, **options)
    except MmvizError as error:
        raise traitlets.TraitError(str(error)) from None


def printable(text: str) -> str:
    """``text`` without what UTF-8 cannot carry (a browser string may hold lone surrogates), at most 2,000
    characters: an error message that can be logged and sent to the browser."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:2000]


def echo(value: Any) -> Any:
    """``value`` if it can be echoed back to the browser as is (a short encodable string, a finite number, a bool or
    None), else None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, str) and len(value) <= 200 and encodable(value):
        return value
    return None


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True
