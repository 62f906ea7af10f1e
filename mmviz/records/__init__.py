"""Records: what mmviz keeps of a model run, as plain data — the :class:`Trace`, the :class:`Map` every map method
returns, and the :class:`MethodSpec` every method declares (the catalogue ``Trace.compute`` looks names up in)."""

from mmviz.records.map import Map
from mmviz.records.spec import CATALOGUE, MethodSpec, method, variant
from mmviz.records.trace import Trace, load, model_name, register_attach
from mmviz.records.trace_file import StoredArray, kept_result, model_fingerprint

__all__ = [
    "CATALOGUE",
    "Map",
    "MethodSpec",
    "StoredArray",
    "Trace",
    "kept_result",
    "load",
    "method",
    "model_fingerprint",
    "model_name",
    "register_attach",
    "variant",
]
