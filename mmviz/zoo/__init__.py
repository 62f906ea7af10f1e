"""Built-in models that need no download.

- ``tiny_llava()`` builds a random-weight LLaVA-1.5 in code (structure, no meaning).
- ``load(name)`` loads a tiny model trained on the synthetic shapes world (:mod:`mmviz.zoo.shapes`) and shipped
  in the package: ``"shapes-vlm"`` (LLaVA architecture: answers "What color is the triangle?") and
  ``"shapes-clip"`` (a CLIP dual encoder: matches images to captions like "a red circle and a green triangle").
- ``scene(seed)`` makes a scene of that world: image, objects with boxes and masks, and questions.

Example:
    >>> model, processor = mmviz.zoo.load("shapes-vlm")
    >>> s = mmviz.zoo.scene(7)
    >>> mmviz.inspect(model, processor, s.image, s.questions[0].text)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmviz.zoo.shapes import Scene, scene
from mmviz.zoo.tiny import tiny_llava, tiny_tokenizer

WEIGHTS = Path(__file__).parent / "weights"

# name → (model class name in transformers, the command that builds the weights)
MODELS: dict[str, tuple[str, str]] = {
    "shapes-vlm": ("LlavaForConditionalGeneration", "python -m mmviz.zoo.train vlm"),
    "shapes-clip": ("CLIPModel", "python -m mmviz.zoo.train clip"),
}


def available() -> list[str]:
    """Names :func:`load` accepts."""
    return list(MODELS)


def load(name: str) -> tuple[Any, Any]:
    """``(model, processor)`` of a shipped model, loaded with ``from_pretrained`` from the package folder.

    The model is in eval mode and float32. Raises ``ValueError`` for an unknown name and ``FileNotFoundError``
    when the weights have not been built (the message names the command that builds them).
    """
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(MODELS)}")
    class_name, command = MODELS[name]
    path = WEIGHTS / name
    missing = [f for f in ("config.json", "model.safetensors", "processor_config.json") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the weights of {name!r} are missing from {path} (no {', '.join(missing)}); build them with "
            f"`{command}` from the repository root"
        )
    import torch
    import transformers

    model = getattr(transformers, class_name).from_pretrained(path, local_files_only=True, dtype=torch.float32)
    processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    model.config._name_or_path = f"mmviz.zoo/{name}"  # what the widget's title shows, not a local path
    return model.eval(), processor


__all__ = ["MODELS", "Scene", "available", "load", "scene", "tiny_llava", "tiny_tokenizer"]
