"""Gemma 3n (``model_type == "gemma3n"``): a MobileNetV5 vision tower whose fused feature map gives a square grid of
soft tokens, in Gemma's ``<start_of_image>`` … ``<end_of_image>`` blocks.

The vision tower is timm's MobileNetV5 encoder (transformers loads it through ``TimmWrapperModel``; install
``timm``, the ``gemma3n`` extra). The image processor stretches the image to a square ``S × S`` canvas (768 in the
checkpoints); the encoder's multi-scale fusion adapter pools its last stages to a ``G × G`` map
(``G = √vision_soft_tokens_per_image``, 16), and token ``j`` is cell ``divmod(j, G)`` of that map, so its box is the
``S/G``-px cell of the canvas scaled back per axis. The tower is convolutional with attention in its last stages:
a token is centred on its cell but its receptive field spans far beyond it, so the boxes say where a token sits,
not all it reads (the measured probe cannot isolate patches here: the tower's attention is timm's own).

The language model keeps ``altup_num_inputs`` residual streams (AltUp): a decoder layer returns them stacked,
``(streams, B, N, d)``. mmviz reads the residual state the way the model's last step does (the first stream plus
the others projected back and magnitude-matched, averaged), so the logit lens of the last layer is the model's own
logits; per-layer inputs (``per_layer_inputs``) are part of what the language model receives.

Example:
    >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
    >>> trace.layout.row(trace.image_positions[0])["grid_shape"]                       # doctest: +SKIP
    (16, 16)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mmviz.adapters.gemma3 import Gemma3Adapter
from mmviz.errors import ProcessorMismatchError


class Gemma3nAdapter(Gemma3Adapter):
    """Gemma 3n: ``<start_of_image>`` + ``vision_soft_tokens_per_image`` soft tokens + ``<end_of_image>`` per image,
    a stretched square canvas, boxes on the soft-token grid (see the module docstring)."""

    family = "Gemma 3n"
    model_types = ("gemma3n",)
    canvas_hint: ClassVar[str] = " (Gemma 3n checkpoints use 768)"

    @property
    def final_logit_softcap(self) -> float | None:
        # Gemma3nForConditionalGeneration applies the text config's cap (unlike Gemma 3's multimodal head).
        return getattr(self.text_config, "final_logit_softcapping", None)

    @property
    def tokens_per_image(self) -> int:
        return int(self.model.config.vision_soft_tokens_per_image)

    @property
    def canvas_size(self) -> int:
        """``S``: the image processor's square canvas (the convolutional tower itself takes any size)."""
        size = dict(getattr(self.processor.image_processor, "size", None) or {})
        height, width = size.get("height"), size.get("width")
        if height is None or height != width:
            raise ProcessorMismatchError(
                f"Gemma 3n's image processor must stretch images to a square canvas; its size is {size}. Load the "
                f"processor from the same checkpoint as the model"
            )
        return int(height)

    @property
    def cell_size(self) -> float:
        return self.canvas_size / self.grid_size

    @property
    def pool_size(self) -> int:
        raise AttributeError("Gemma 3n's vision tower is convolutional: its soft tokens pool no ViT patches")

    def vision_tokens_per_image(self) -> int:
        return 0  # a convolutional tower: no token sequence of its own

    def residual(self, stream: Any) -> torch.Tensor:
        """The ``(B, N, d)`` residual state of a decoder layer's input or output, stacked AltUp streams
        ``(streams, B, N, d)``: read as the model's last step reads them (``Gemma3nTextModel.forward``)."""
        streams = stream[0] if isinstance(stream, tuple) else stream
        if streams.ndim != 4:
            return streams
        language_model = self.language_model()
        first = streams[0]
        target = torch.mean(first**2, dim=-1, keepdim=True) ** 0.5
        merged = [first]
        for index in range(1, streams.shape[0]):
            projected = language_model.altup_unembed_projections[index - 1](streams[index]).to(first.dtype)
            magnitude = torch.sqrt(torch.mean(projected**2, dim=-1, keepdim=True).clamp(min=1e-5))
            merged.append(projected * target / magnitude)
        return torch.stack(merged).mean(dim=0)

    def active_stream(self, output: torch.Tensor) -> torch.Tensor:
        """The first AltUp stream (the one each layer's prediction corrects) of the stacked output."""
        return output[0] if output.ndim == 4 else output
