"""Records: what mmviz keeps of a model run, as plain data — the :class:`Trace`, the :class:`Map` every map method
returns, and the :class:`MethodSpec` every method declares (the catalogue ``Trace.compute`` looks names up in)."""

from mmviz.records.map import Map
from mmviz.records.spec import CATALOGUE, MethodSpec, method, variant
from mmviz.records.trace import Trace, model_name

__all__ = ["CATALOGUE", "Map", "MethodSpec", "Trace", "method", "model_name", "variant"]
