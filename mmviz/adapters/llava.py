"""LLaVA-1.5 (``model_type == "llava"``): CLIP tower, MLP projector, one token per patch of a square canvas."""

from __future__ import annotations

from collections.abc import Sequence

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
        ip = self.processor.image_processor
        transform = geometry.Affine()
        if getattr(ip, "do_pad", False) and hasattr(ip, "pad_to_square"):  # LlavaImageProcessor's square padding
            pad, side = geometry.pad_to_square(width, height)
            transform, width, height = transform.then(pad), side, side
        if getattr(ip, "do_resize", True):
            size = dict(ip.size)
            if "shortest_edge" in size:
                new_w, new_h = geometry.shortest_edge_size(width, height, int(size["shortest_edge"]))
            else:
                new_w, new_h = int(size["width"]), int(size["height"])
            transform, width, height = transform.then(geometry.resize(width, height, new_w, new_h)), new_w, new_h
        if getattr(ip, "do_center_crop", False):
            crop = dict(ip.crop_size)
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
