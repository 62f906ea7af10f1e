"""Adapters: the one place that knows model families. Nothing outside this package asks which model it is."""

from __future__ import annotations

from typing import Any

import torch

from mmviz.adapters.aya_vision import AyaVisionAdapter
from mmviz.adapters.base import Adapter, ModelShape
from mmviz.adapters.blip2 import Blip2Adapter
from mmviz.adapters.clip import CLIPAdapter, SiglipAdapter
from mmviz.adapters.dual_encoder import DualEncoderAdapter
from mmviz.adapters.gemma3 import Gemma3Adapter
from mmviz.adapters.gemma3n import Gemma3nAdapter
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.generic import GenericAdapter, generic_unsupported_reason
from mmviz.adapters.idefics3 import Idefics3Adapter, SmolVLMAdapter
from mmviz.adapters.internvl import InternVLAdapter
from mmviz.adapters.layout import KINDS, VIEWS, CrossKeys, ImageGeometry, SoftCells, TokenLayout
from mmviz.adapters.llava import LlavaAdapter
from mmviz.adapters.llava_next import LlavaNextAdapter, LlavaNextVideoAdapter, LlavaOnevisionAdapter
from mmviz.adapters.measured import LayoutReport, MeasuredLayout, measure_layout, verify
from mmviz.adapters.mistral3 import Mistral3Adapter
from mmviz.adapters.mllama import MllamaAdapter
from mmviz.adapters.paligemma import PaliGemmaAdapter
from mmviz.adapters.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from mmviz.adapters.qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter
from mmviz.errors import UnsupportedModelError

_REGISTRY: dict[str, type[Adapter]] = {}


def register_adapter(adapter: type[Adapter], *, replace: bool = False) -> type[Adapter]:
    """Make mmviz support the model types listed in ``adapter.model_types`` (usable as a class decorator).

    Example:
        >>> @mmviz.register_adapter                        # doctest: +SKIP
        ... class MyAdapter(mmviz.adapters.GenerativeAdapter):
        ...     family, model_types = "My-VLM", ("my_vlm",)
    """
    if not (isinstance(adapter, type) and issubclass(adapter, (GenerativeAdapter, DualEncoderAdapter))):
        raise TypeError(
            f"register_adapter takes a GenerativeAdapter or DualEncoderAdapter subclass (mmviz.adapters), not "
            f"{adapter!r}"
        )
    if not adapter.model_types or not adapter.family:
        raise ValueError(f"{adapter.__name__} must set `family` and a non-empty `model_types`")
    for model_type in adapter.model_types:
        if model_type in _REGISTRY and _REGISTRY[model_type] is not adapter and not replace:
            raise ValueError(
                f"model_type {model_type!r} already has the adapter {_REGISTRY[model_type].__name__}; "
                f"pass replace=True to override it"
            )
        _REGISTRY[model_type] = adapter
    return adapter


def supported_families() -> dict[str, str]:
    """``model_type → family name`` of every registered adapter."""
    return {model_type: adapter.family for model_type, adapter in sorted(_REGISTRY.items())}


def adapter_for(model: torch.nn.Module, processor: Any) -> Adapter:
    """The adapter for ``model`` (by ``model.config.model_type``), checked against ``processor``."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        # the fallback: image features that replace placeholders can be laid out from what the model reads
        reason = generic_unsupported_reason(model) if config is not None else "it has no config"
        if reason is None:
            generic = GenericAdapter(model, processor)
            generic.check()
            return generic
        listed = ", ".join(f"{family} ({model_type})" for model_type, family in supported_families().items())
        raise UnsupportedModelError(
            f"mmviz has no adapter for model_type {model_type!r} ({type(model).__name__}) and cannot measure its "
            f"layout: {reason}; supported: {listed}. Add one with mmviz.register_adapter(...)"
        )
    adapter = _REGISTRY[model_type](model, processor)
    adapter.check()
    return adapter


register_adapter(LlavaAdapter)
register_adapter(LlavaNextAdapter)
register_adapter(LlavaOnevisionAdapter)
register_adapter(LlavaNextVideoAdapter)
register_adapter(Qwen2VLAdapter)
register_adapter(Qwen2_5_VLAdapter)
register_adapter(Idefics3Adapter)
register_adapter(SmolVLMAdapter)
register_adapter(CLIPAdapter)
register_adapter(SiglipAdapter)
register_adapter(PaliGemmaAdapter)
register_adapter(Gemma3Adapter)
register_adapter(Gemma3nAdapter)
register_adapter(Blip2Adapter)
register_adapter(Qwen3VLAdapter)
register_adapter(Qwen3VLMoeAdapter)
register_adapter(InternVLAdapter)
register_adapter(Mistral3Adapter)
register_adapter(AyaVisionAdapter)
register_adapter(MllamaAdapter)

__all__ = [
    "KINDS",
    "VIEWS",
    "Adapter",
    "AyaVisionAdapter",
    "Blip2Adapter",
    "CLIPAdapter",
    "CrossKeys",
    "DualEncoderAdapter",
    "Gemma3Adapter",
    "Gemma3nAdapter",
    "GenerativeAdapter",
    "GenericAdapter",
    "Idefics3Adapter",
    "ImageGeometry",
    "InternVLAdapter",
    "LayoutReport",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaNextVideoAdapter",
    "LlavaOnevisionAdapter",
    "MeasuredLayout",
    "Mistral3Adapter",
    "MllamaAdapter",
    "ModelShape",
    "PaliGemmaAdapter",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "Qwen3VLMoeAdapter",
    "SiglipAdapter",
    "SmolVLMAdapter",
    "SoftCells",
    "TokenLayout",
    "adapter_for",
    "measure_layout",
    "register_adapter",
    "supported_families",
    "verify",
]
