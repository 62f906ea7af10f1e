"""InternVL (``internvl``, InternVL 2.5 / 3 / 3.5 in transformers' format): dynamic tiles plus a thumbnail.

The image processor (``GotOcr2ImageProcessor`` with ``crop_to_patches``, as ``InternVLProcessor`` calls it) picks
a grid of ``cols × rows`` tiles whose aspect ratio is closest to the image's among all grids of ``min_patches …
max_patches`` tiles (``get_optimal_tiled_canvas``: ties go to the grid with more tiles while the image's area is over
half of the tiles'), stretches the image to ``cols·T × rows·T`` (each axis on its own), cuts the ``T × T`` tiles
row-major, and appends a thumbnail (the whole image stretched to ``T × T``) when there is more than one tile. The
vision tower runs on every tile; the pixel shuffle (``downsample_ratio`` 0.5) turns its ``(T/P)²`` patches into
``G² = image_seq_length`` tokens in raster order, each a 2×2 block of patches (G = 16 for 448-px tiles).

The prompt holds ``<img>`` + ``<IMG_CONTEXT>``×(G²·frames) + ``</img>`` per image, with no per-tile markers: the
number of frames comes from the token run, and the grid is the processor's own choice for the image's size (checked
to give that many frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.base import ModelShape
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import IMAGE_SEP, ImageGeometry, LayoutBuilder, TokenLayout
from mmviz.errors import ProcessorMismatchError


def tile_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """``(cols, rows)`` of the tile grid the processor picks for a ``width × height`` image (its own function)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    cols, rows = get_optimal_tiled_canvas((height, width), (tile, tile), min_tiles, max_tiles)
    return int(cols), int(rows)


class InternVLAdapter(GenerativeAdapter):
    """InternVL: ``cols × rows`` tiles of ``T × T`` px (view ``"tile"``, each its own G×G grid) then a thumbnail
    (view ``"global"``); an image that fits one tile gets only that view (``"base"``). ``<img>`` / ``</img>`` get kind
    ``image_sep``. Boxes are in original pixels: together the tiles tile the whole image, and so does the thumbnail.

    Example:
        >>> model = InternVLForConditionalGeneration.from_pretrained("OpenGVLab/InternVL3-1B-hf")  # doctest: +SKIP
        >>> processor = AutoProcessor.from_pretrained("OpenGVLab/InternVL3-1B-hf")                # doctest: +SKIP
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")            # doctest: +SKIP
        >>> sorted({row["view"] for row in trace.layout.rows() if row["kind"] == "image"})          # doctest: +SKIP
        ['global', 'tile']
    """

    family = "InternVL"
    model_types = ("internvl",)
    fallback_template = "<|im_start|>user\n{image}\n{prompt}<|im_end|>\n<|im_start|>assistant\n"

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        self._last_frames = 0  # tiles + thumbnails the vision tower saw in the last encode()

    # -- sizes, from the model's config (the processor's are checked against them) ------------------------------
    @property
    def tile_size(self) -> int:
        """``T``: the side of a tile (the vision tower's input size)."""
        size = self.model.config.vision_config.image_size
        return int(size[0] if isinstance(size, list | tuple) else size)

    @property
    def patch_size(self) -> int:
        size = self.model.config.vision_config.patch_size
        return int(size[0] if isinstance(size, list | tuple) else size)

    @property
    def tokens_per_side(self) -> int:
        """``G``: tokens per side of one tile after the pixel shuffle."""
        return int(self.tile_size // self.patch_size * float(self.model.config.downsample_ratio))

    def vision_tokens_per_image(self) -> int:
        """Patches of one tile plus the class token (the tower runs on every tile separately)."""
        return (self.tile_size // self.patch_size) ** 2 + 1

    def model_shape(self, num_images: int) -> ModelShape:
        """As the base, but the vision tower's sequences are the tiles + thumbnails of the last encode."""
        return replace(super().model_shape(num_images), num_images=self._last_frames or num_images)

    def _marker_ids(self) -> list[int]:
        return [int(self.processor.start_image_token_id), int(self.processor.end_image_token_id)]

    def _tile_range(self) -> tuple[int, int]:
        ip = self.processor.image_processor
        return int(getattr(ip, "min_patches", 1) or 1), int(getattr(ip, "max_patches", 12) or 12)

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        size = dict(getattr(self.processor.image_processor, "size", None) or {})
        canvas = (int(size.get("height", 0)), int(size.get("width", 0)))
        if canvas != (self.tile_size, self.tile_size):
            raise ProcessorMismatchError(
                f"the image processor makes {canvas[1]}×{canvas[0]} tiles but the vision tower takes "
                f"{self.tile_size}×{self.tile_size}; load the processor from the same checkpoint as the model"
            )
        seq = int(getattr(self.processor, "image_seq_length", self.tokens_per_side**2))
        if seq != self.tokens_per_side**2:
            raise ProcessorMismatchError(
                f"the processor puts {seq} <IMG_CONTEXT> tokens per tile but the model's pixel shuffle makes "
                f"{self.tokens_per_side**2} ((image_size / patch_size · downsample_ratio)²); load the processor from "
                f"the same checkpoint as the model"
            )

    # -- inputs ------------------------------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        inputs = super().encode(images, text)
        frames = int(inputs["pixel_values"].shape[0])
        self.check_canvas(inputs["pixel_values"], self.tile_size)
        self.check_image_token_count(
            inputs["input_ids"],
            frames * self.tokens_per_side**2,
            len(images),
            f"the model makes {self.tokens_per_side**2} per tile for {frames} tiles; the processor's "
            f"image_seq_length does not match the model's",
        )
        self._last_frames = frames
        return inputs

    # -- layout ------------------------------------------------------------------------------------------------
    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        per_tile = self.tokens_per_side**2
        spans = self.image_spans(input_ids)
        if len(spans) != len(images):
            raise ProcessorMismatchError(
                f"the sequence holds {len(spans)} expanded images for {len(images)} image(s); pass the prompt with "
                f"one placeholder per image and let the processor expand it"
            )
        builder = LayoutBuilder(self.display_tokens(input_ids), self.special_mask(input_ids))
        grid = (self.tokens_per_side, self.tokens_per_side)
        for index, ((region, run), image) in enumerate(zip(spans, images, strict=True)):
            if len(run) % per_tile:
                raise ProcessorMismatchError(
                    f"image {index} has {len(run)} image tokens, not a multiple of the model's {per_tile} per tile"
                )
            views = self.views(image.width, image.height, len(run) // per_tile, index)
            for (view, boxes), start in zip(views, range(0, len(run), per_tile), strict=True):
                builder.mark_grid(
                    run[start : start + per_tile], image_index=index, view=view, grid_shape=grid, boxes=boxes
                )
            markers = np.setdiff1d(region, run)  # <img> / </img>, and the tile tags where the family has them
            builder.kinds[markers] = IMAGE_SEP
            builder.image_index[markers] = index
            builder.images.append(ImageGeometry(image.width, image.height, (0.0, 0.0, image.width, image.height)))
        return builder.build()

    def image_spans(self, input_ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: the positions of its whole expansion (markers included) and of its image tokens.

        InternVL: ``<img>`` + one contiguous run of ``<IMG_CONTEXT>`` + ``</img>``.
        """
        start, end = self._marker_ids()
        positions = np.flatnonzero(input_ids == self.image_token_id)
        runs = np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1) if len(positions) else []
        spans = []
        for run in runs:
            first = run[0] - int(run[0] > 0 and input_ids[run[0] - 1] == start)
            last = run[-1] + int(run[-1] + 1 < len(input_ids) and input_ids[run[-1] + 1] == end)
            spans.append((np.arange(first, last + 1), run))
        return spans

    def views(self, width: int, height: int, frames: int, index: int = 0) -> list[tuple[str, np.ndarray]]:
        """``(view, boxes)`` of each of the ``frames`` tiles of one image, in the order the processor cuts them."""
        T, G = self.tile_size, self.tokens_per_side
        cells = geometry.grid_boxes(G, G, T / G, T / G)
        whole = geometry.clip_boxes(geometry.resize(width, height, T, T).to_original(cells), width, height)
        if frames == 1:
            return [("base", whole)]
        cols, rows = tile_grid(width, height, T, *self._tile_range())
        if cols * rows + 1 != frames:
            raise ProcessorMismatchError(
                f"image {index} ({width}×{height}) came as {frames} tiles, but the image processor's grid for it is "
                f"{cols}×{rows} tiles + a thumbnail ({cols * rows + 1}); the processor ran with other "
                f"min_patches / max_patches than its own ({self._tile_range()})"
            )
        to_canvas = geometry.resize(width, height, cols * T, rows * T)
        views = []
        for k in range(cols * rows):
            r, c = divmod(k, cols)
            shifted = cells + np.array([c * T, r * T, c * T, r * T], dtype=np.float64)
            views.append(("tile", geometry.clip_boxes(to_canvas.to_original(shifted), width, height)))
        return [*views, ("global", whole)]
