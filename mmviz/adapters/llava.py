"""LLaVA-1.5 (``model_type == "llava"``): CLIP tower, MLP projector, one token per patch of a square canvas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import TokenLayout
from mmviz.errors import ProcessorMismatchError


class LlavaAdapter(GenerativeAdapter):
    """LLaVA-1.5: ``<image>`` expands to ``G²`` tokens (``G = image_size / patch_size``) in raster order.

    The processor pads to a square (``do_pad``), resizes (shortest edge or fixed size) and centre-crops; each
    token's box is its patch cell mapped back through that chain, so pixels cropped away reach no token.
    """

    family = "LLaVA-1.5"
    model_types = ("llava",)
    fallback_template = "USER: {image}\n{prompt} ASSISTANT:"

    @property
    def grid_size(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    @property
    def tokens_per_image(self) -> int:
        keeps_cls = self.model.config.vision_feature_select_strategy == "full"
        return self.grid_size**2 + int(keeps_cls)

    def vision_tokens_per_image(self) -> int:
        return self.grid_size**2 + 1  # patches and CLS

    def vision_token_index(self, layout: TokenLayout) -> np.ndarray | None:
        """Image column → (image, CLIP token): the tower puts CLS first, then the patches in raster order."""
        columns = layout.image_positions
        cells = layout.grid[columns]
        return np.stack([layout.image_index[columns], 1 + cells[:, 0] * self.grid_size + cells[:, 1]], axis=1)

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        inputs = super().encode(images, text)
        size = int(self.model.config.vision_config.image_size)
        self.check_canvas(inputs["pixel_values"], size)
        self.check_image_token_count(
            inputs["input_ids"],
            self.tokens_per_image * len(images),
            len(images),
            "the processor's patch_size / vision_feature_select_strategy do not match the model's",
        )
        return inputs

    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        is_image = input_ids == self.image_token_id
        builder = self.layout_builder(input_ids)
        spans = _contiguous_spans(np.flatnonzero(is_image), self.tokens_per_image)
        if len(spans) != len(images):
            raise ProcessorMismatchError(f"found {len(spans)} image-token spans for {len(images)} image(s)")
        g = self.grid_size
        patch = int(self.model.config.vision_config.patch_size)
        for index, (span, image) in enumerate(zip(spans, images, strict=True)):
            boxes, covered = self.square_grid(image, g, patch)
            if len(span) == g * g + 1:  # "full" strategy keeps CLS first: it has no box
                builder.kinds[span[0]] = 2
                builder.image_index[span[0]] = index
                span = span[1:]
            builder.mark_grid(span, image_index=index, view="base", grid_shape=(g, g), boxes=boxes)
            builder.images.append(covered)
        return builder.build()

    def canvas_map(self, width: int, height: int) -> geometry.Affine:
        """Original pixels → the processor's square canvas, replaying its pad / resize / centre-crop chain."""
        return pad_resize_crop_map(self.processor.image_processor, width, height)


def pad_resize_crop_map(processor: Any, width: int, height: int) -> geometry.Affine:
    """Original pixels → the canvas of an image or video ``processor`` that pads to a square (``do_pad`` with
    ``pad_to_square``), resizes (shortest edge, or a fixed size) and centre-crops, as far as it does each.

    Example:
        >>> to_canvas = pad_resize_crop_map(processor.image_processor, 640, 480)          # doctest: +SKIP
        >>> to_canvas.to_original(np.array([[0.0, 0.0, 336.0, 336.0]]))                   # doctest: +SKIP
        array([[ 80.,   0., 560., 480.]])
    """
    transform = geometry.Affine()
    if getattr(processor, "do_pad", False) and hasattr(processor, "pad_to_square"):  # LLaVA's square padding
        pad, side = geometry.pad_to_square(width, height)
        transform, width, height = transform.then(pad), side, side
    if getattr(processor, "do_resize", True):
        size = dict(processor.size)
        if "shortest_edge" in size:
            new_w, new_h = geometry.shortest_edge_size(width, height, int(size["shortest_edge"]))
        else:
            new_w, new_h = int(size["width"]), int(size["height"])
        transform, width, height = transform.then(geometry.resize(width, height, new_w, new_h)), new_w, new_h
    if getattr(processor, "do_center_crop", False):
        crop = dict(processor.crop_size)
        transform = transform.then(geometry.center_crop(width, height, int(crop["width"]), int(crop["height"])))
    return transform


def _contiguous_spans(positions: np.ndarray, span_length: int) -> list[np.ndarray]:
    """Split sorted image positions into one span per image (adjacent images are split by length)."""
    if len(positions) == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    spans = []
    for run in np.split(positions, breaks):
        if len(run) % span_length:
            raise ProcessorMismatchError(
                f"an image-token run of {len(run)} positions is not a multiple of {span_length} tokens per image"
            )
        spans.extend(np.split(run, len(run) // span_length))
    return spans
