"""mmviz: look inside vision-language transformers from a Jupyter notebook.

Example:
    >>> import mmviz
    >>> model, processor = mmviz.zoo.tiny_llava()
    >>> inspector = mmviz.inspect(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
    >>> inspector            # in a notebook: hover tokens and patches               # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmviz._version import __version__
from mmviz.errors import InputError, MmvizError, ProcessorMismatchError, TraceFormatError, UnsupportedModelError

if TYPE_CHECKING:
    from mmviz import adapters, evaluation, features, methods, selection, sweeps, zoo
    from mmviz.adapters import register_adapter, supported_families
    from mmviz.capture import CaptureBudgetError, CapturePlan
    from mmviz.evaluation.comparison import Comparison, compare
    from mmviz.records import load
    from mmviz.sweeps import sweep
    from mmviz.tracing import Trace, trace
    from mmviz.widget.comparison import ComparisonWidget
    from mmviz.widget.inspector import Inspector, inspect
    from mmviz.widget.sweep import SweepWidget

# torch and transformers load on first use, so `import mmviz` stays fast.
_LAZY = {
    "trace": "mmviz.tracing",
    "Trace": "mmviz.tracing",
    "load": "mmviz.records",
    "sweep": "mmviz.sweeps",
    "sweeps": "mmviz.sweeps",
    "inspect": "mmviz.widget.inspector",
    "compare": "mmviz.evaluation.comparison",
    "Comparison": "mmviz.evaluation.comparison",
    "ComparisonWidget": "mmviz.widget.comparison",
    "SweepWidget": "mmviz.widget.sweep",
    "Inspector": "mmviz.widget.inspector",
    "register_adapter": "mmviz.adapters",
    "supported_families": "mmviz.adapters",
    "adapters": "mmviz.adapters",
    "CapturePlan": "mmviz.capture",
    "CaptureBudgetError": "mmviz.capture",
    "zoo": "mmviz.zoo",
    "methods": "mmviz.methods",
    "features": "mmviz.features",
    "evaluation": "mmviz.evaluation",
    "selection": "mmviz.selection",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mmviz' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = (
        module
        if module.__name__ == f"mmviz.{name}"
        and name in ("adapters", "evaluation", "features", "methods", "selection", "sweeps", "zoo")
        else getattr(module, name)
    )
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "CaptureBudgetError",
    "CapturePlan",
    "Comparison",
    "ComparisonWidget",
    "InputError",
    "Inspector",
    "MmvizError",
    "ProcessorMismatchError",
    "SweepWidget",
    "Trace",
    "TraceFormatError",
    "UnsupportedModelError",
    "__version__",
    "adapters",
    "compare",
    "evaluation",
    "features",
    "inspect",
    "load",
    "methods",
    "register_adapter",
    "selection",
    "supported_families",
    "sweep",
    "sweeps",
    "trace",
    "zoo",
]
