"""The adapter contract: the only place that knows how a model family lays out its tokens and modules.

:class:`Adapter` is what every family shares (the processor, the token layout, the checks);
:class:`~mmviz.adapters.generative.GenerativeAdapter` adds the language model that generates and that the methods
run, :class:`~mmviz.adapters.dual_encoder.DualEncoderAdapter` the two towers of CLIP-like models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.layout import ImageGeometry, LayoutBuilder, TokenLayout
from mmviz.adapters.tokens import display_strings
from mmviz.errors import ProcessorMismatchError


@dataclass(frozen=True)
class ModelShape:
    """The sizes a capture estimate needs, read from the model's config by its adapter (``cross_layers`` and
    ``cross_keys``: the cross-attention layers and keys of a family whose text reads the image through them)."""

    num_layers: int
    num_heads: int
    hidden_size: int
    vision_layers: int = 0
    vision_heads: int = 0
    vision_tokens: int = 0
    num_images: int = 1
    vocab_size: int = 0
    cross_layers: int = 0
    cross_keys: int = 0


class Adapter:
    """Family knowledge shared by every kind of model: the processor, the token layout and the checks.

    Subclass :class:`~mmviz.adapters.GenerativeAdapter` (models that generate) or
    :class:`~mmviz.adapters.DualEncoderAdapter` (CLIP-like) rather than this class.
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    text_config_key: ClassVar[str] = "text_config"
    """Sub-config of the text model: the one whose attention implementation mmviz switches."""
    vision_config_key: ClassVar[str] = "vision_config"
    """Sub-config of the vision tower (for its own attention maps)."""
    fallback_template: ClassVar[str] = "{image}\n{prompt}"
    """Prompt format used when the processor has no chat template."""

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor
        for part in ("tokenizer", "image_processor"):
            if getattr(processor, part, None) is None:
                raise ProcessorMismatchError(
                    f"the processor has no {part}; pass the multimodal processor from "
                    f"AutoProcessor.from_pretrained(<the model's checkpoint>), not a tokenizer or image processor"
                )
        self.tokenizer = processor.tokenizer

    # -- model structure -------------------------------------------------------------------------------------
    @property
    def text_config(self) -> Any:
        return getattr(self.model.config, self.text_config_key)

    @property
    def num_layers(self) -> int:
        """Layers whose attention a trace records (the language model's; a dual encoder's vision tower's)."""
        raise NotImplementedError

    @property
    def num_heads(self) -> int:
        raise NotImplementedError

    def vision_tokens_per_image(self) -> int:
        """Sequence length inside the vision tower for one image (for capture estimates)."""
        return 0

    def model_shape(self, num_images: int) -> ModelShape:
        """The sizes a capture estimate needs."""
        raise NotImplementedError

    # -- inputs and layout -----------------------------------------------------------------------------------
    def format_prompt(self, prompt: str, n_images: int) -> str:
        """The text the processor gets for ``prompt`` and ``n_images`` images."""
        raise NotImplementedError

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        """Run the processor; returns tensors for one sequence."""
        raise NotImplementedError

    def layout_builder(self, input_ids: np.ndarray, placeholder: str = "<image>") -> LayoutBuilder:
        """A :class:`LayoutBuilder` over ``input_ids`` whose image-token positions read ``placeholder`` (the piece
        string of an image token is often empty or unreadable)."""
        strings = self.display_tokens(input_ids)
        is_image = input_ids == self.image_token_id
        tokens = [placeholder if image else text for image, text in zip(is_image, strings, strict=True)]
        return LayoutBuilder(tokens, self.special_mask(input_ids))

    def display_tokens(self, ids: Sequence[int]) -> list[str]:
        return display_strings(self.tokenizer, ids)

    def special_mask(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, list(getattr(self.tokenizer, "all_special_ids", [])))

    def square_grid(self, image: Image.Image, side: int, cell: float) -> tuple[np.ndarray, ImageGeometry]:
        """Boxes in ORIGINAL pixels of a ``side × side`` grid of ``cell``-pixel cells on the processor's canvas
        (raster order), and the image's covered region, through the family's ``canvas_map(width, height)``."""
        to_canvas = self.canvas_map(image.width, image.height)  # type: ignore[attr-defined]
        boxes = geometry.clip_boxes(
            to_canvas.to_original(geometry.grid_boxes(side, side, cell, cell)), image.width, image.height
        )
        covered = to_canvas.to_original(np.array([[0, 0, side * cell, side * cell]], dtype=np.float64))[0]
        covered = np.clip(covered, 0, [image.width, image.height, image.width, image.height])
        return boxes, ImageGeometry(image.width, image.height, tuple(float(v) for v in covered))

    # -- family knowledge --------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`ProcessorMismatchError` when the processor cannot belong to the model (by default: its
        vocabulary; families add their own checks)."""
        self.check_vocabulary()

    def check_vocabulary(self) -> None:
        """The tokenizer must not make ids the language model has no embedding for."""
        vocab = int(self.text_config.vocab_size)
        if len(self.tokenizer) > vocab:
            raise ProcessorMismatchError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary has {vocab}; "
                f"load the processor from the same checkpoint as the model"
            )

    def check_canvas(self, pixel_values: torch.Tensor, size: int, hint: str = "") -> None:
        """The processor must make the ``size × size`` inputs the vision tower was built for."""
        canvas = tuple(int(v) for v in pixel_values.shape[-2:])
        if canvas != (size, size):
            raise ProcessorMismatchError(
                f"the processor makes {canvas[1]}×{canvas[0]} pixel inputs but the vision tower takes {size}×{size}; "
                f"load the processor from the same checkpoint as the model{hint}"
            )

    def check_image_token_count(self, input_ids: torch.Tensor, expected: int, images: int, why: str) -> None:
        """The processor must insert as many image positions as the model has features; ``why`` says what in the
        processor does not match (the advice the error gives)."""
        found = int((input_ids == self.image_token_id).sum())
        if found != expected:
            raise ProcessorMismatchError(
                f"the processor inserted {found} image tokens for {images} image(s), the model needs {expected}; {why}"
            )

    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        """The :class:`TokenLayout` of ``input_ids`` (prompt and answer) for the ORIGINAL ``images``."""
        raise NotImplementedError
