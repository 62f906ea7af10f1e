"""Llama 3.2 Vision (``model_type == "mllama"``): the text reads the image through cross-attention layers.

No image feature enters the sequence: the prompt holds one ``<|image|>`` token per image, and decoder layers of their
own (``text_config.cross_attention_layers``, ``MllamaTextCrossAttention``) attend from every text position to the
vision tower's output. That output is a tiled ViT's: the image is resized (aspect ratio kept) onto the best canvas of
``a × b`` tiles of ``S × S`` pixels (``a · b ≤ max_image_tiles``), padded at the right and bottom, and cut into tiles;
each tile is a ``G × G`` patch grid plus a CLS token, and the tiles are padded to ``max_image_tiles``. The
cross-attention keys are therefore ``images × max_image_tiles × (G² + 1)`` vision tokens, and they are the image
columns of an mllama trace (:class:`~mmviz.adapters.layout.CrossKeys`): a box per patch of a real tile, in ORIGINAL
pixels; CLS tokens, padding tiles and patches that see only the padding have none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from transformers.models.mllama.image_processing_mllama import (
    get_all_supported_aspect_ratios,
    get_image_size_fit_to_canvas,
    get_optimal_tiled_canvas,
)

from mmviz.adapters import geometry
from mmviz.adapters.base import ModelShape
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import IMAGE_SEP, VIEWS, CrossKeys, ImageGeometry, TokenLayout
from mmviz.errors import ProcessorMismatchError


class MllamaAdapter(GenerativeAdapter):
    """Llama 3.2 Vision: the image columns are the cross-attention keys, laid out per tile.

    Every ``<|image|>`` token is an image marker (kind ``image_sep``, no box); the cross-attention keys of image
    ``i``, tile ``t``, vision token ``j`` have index ``(i · T + t) · (G² + 1) + j`` (``T = max_image_tiles``,
    ``j = 0`` the tile's CLS), as the model's ``cross_attention_states`` order them. Tiles are laid out in raster order
    over the chosen ``a × b`` canvas; the patches' view is ``"tile"`` and their grid the image's whole tiled canvas
    (``a·G × b·G`` cells: patch ``(r, c)`` of tile ``(i, j)`` is cell ``(i·G + r, j·G + c)``), so that windows of
    cells run across tile borders as the pixels do.

    Gradient and perturbation methods edit the cross-attention states at those keys (:attr:`image_input`); the
    analysis forward records the cross-attention rows of the cross layers, and the self-attention layers' image
    maps are derived through them (see :func:`mmviz.tracing.generative.cross_key_rows`).

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> trace.layout.keys.boxes[trace.image_positions].shape      # (patches of real tiles, 4)   # doctest: +SKIP
        (4800, 4)
    """

    family = "Llama 3.2 Vision"
    model_types = ("mllama",)
    image_input = "cross_attention_states"

    # -- model structure ---------------------------------------------------------------------------------------
    @property
    def cross_attention_layers(self) -> tuple[int, ...]:
        return tuple(int(layer) for layer in self.text_config.cross_attention_layers)

    @property
    def tile_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def max_tiles(self) -> int:
        return int(self.model.config.vision_config.max_num_tiles)

    @property
    def tokens_per_tile(self) -> int:
        """Vision tokens per tile: the ``G × G`` patches and the CLS."""
        return (self.tile_size // self.patch_size) ** 2 + 1

    def vision_tokens_per_image(self) -> int:
        return self.max_tiles * self.tokens_per_tile

    def model_shape(self, num_images: int) -> ModelShape:
        """The generative sizes, and the cross-attention layers and keys the capture records rows over."""
        shape = super().model_shape(num_images)
        return replace(
            shape, cross_layers=len(self.cross_attention_layers), cross_keys=num_images * self.vision_tokens_per_image()
        )

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        ip = self.processor.image_processor
        size = dict(ip.size)
        tile = (int(size.get("height", 0)), int(size.get("width", 0)))
        if tile != (self.tile_size, self.tile_size) or int(ip.max_image_tiles) != self.max_tiles:
            raise ProcessorMismatchError(
                f"the processor cuts {tile[1]}×{tile[0]} tiles, at most {ip.max_image_tiles}, but the vision tower "
                f"takes {self.tile_size}×{self.tile_size} tiles, at most {self.max_tiles}; load the processor from the "
                f"same checkpoint as the model (Llama 3.2 Vision checkpoints use 560 px and 4 tiles)"
            )

    # -- inputs ------------------------------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        inputs = super().encode(images, text)
        self.check_canvas(inputs["pixel_values"], self.tile_size, " (Llama 3.2 Vision checkpoints use 560-px tiles)")
        return inputs

    def analysis_inputs(self, inputs: dict[str, torch.Tensor], n_answer: int) -> dict[str, torch.Tensor]:
        """The processor's ``cross_attention_mask`` extended over the answer: every answer token reads the images
        the last prompt token reads (as generation does)."""
        mask = inputs.get("cross_attention_mask")
        if mask is None or n_answer == 0:
            return inputs
        answer = mask[:, -1:].expand(-1, n_answer, *mask.shape[2:])
        return {**inputs, "cross_attention_mask": torch.cat([mask, answer], dim=1)}

    # -- layout ------------------------------------------------------------------------------------------------
    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        builder = self.layout_builder(input_ids, "<|image|>")
        anchors = np.flatnonzero(input_ids == self.image_token_id)
        if len(anchors) != len(images):
            raise ProcessorMismatchError(
                f"found {len(anchors)} {self.image_token!r} tokens for {len(images)} image(s); the processor must put "
                f"one per image"
            )
        builder.kinds[anchors] = IMAGE_SEP
        builder.image_index[anchors] = np.arange(len(images))
        ratio_ids = inputs["aspect_ratio_ids"].reshape(-1).tolist()
        tiles_mask = inputs["aspect_ratio_mask"].reshape(len(images), -1)
        n_tiles = int(tiles_mask.shape[1])
        if n_tiles != self.max_tiles or len(ratio_ids) != len(images):
            raise ProcessorMismatchError(
                f"the processor pads images to {n_tiles} tiles, the vision tower takes {self.max_tiles}; load the "
                f"processor from the same checkpoint as the model"
            )
        per_tile = self.tokens_per_tile
        n_keys = len(images) * n_tiles * per_tile
        boxes = np.full((n_keys, 4), np.nan, np.float32)
        grid = np.full((n_keys, 2), -1, np.int32)
        grid_shape = np.zeros((n_keys, 2), np.int32)
        image_index = np.full(n_keys, -1, np.int32)
        view = np.zeros(n_keys, np.uint8)
        key_anchors = np.full(n_keys, -1, np.int64)
        g = self.tile_size // self.patch_size
        cells = np.arange(g * g)
        for index, image in enumerate(images):
            rows, cols, to_canvas = self.tiling(image.width, image.height)
            expected = get_all_supported_aspect_ratios(self.max_tiles).index((rows, cols)) + 1
            real = int(tiles_mask[index].sum())
            if ratio_ids[index] != expected or real != rows * cols:
                raise ProcessorMismatchError(
                    f"image {index}: the processor chose aspect-ratio id {ratio_ids[index]} ({real} tiles), mmviz "
                    f"computes {expected} ({rows}×{cols} tiles) for {image.width}×{image.height} px; load the "
                    f"processor from the same checkpoint as the model"
                )
            builder.images.append(
                ImageGeometry(image.width, image.height, (0.0, 0.0, float(image.width), float(image.height)))
            )
            for tile in range(rows * cols):
                first = (index * n_tiles + tile) * per_tile + 1  # the tile's CLS is key first − 1
                keys = slice(first, first + g * g)
                origin = np.array([tile % cols, tile // cols, tile % cols, tile // cols], np.float64) * self.tile_size
                canvas = geometry.grid_boxes(g, g, self.patch_size, self.patch_size) + origin
                boxes[keys] = geometry.clip_boxes(to_canvas.to_original(canvas), image.width, image.height)
                # one grid per image over its whole tiled canvas: windows and masks run across tile borders
                grid[keys] = np.stack([(tile // cols) * g + cells // g, (tile % cols) * g + cells % g], axis=1)
                grid_shape[keys] = (rows * g, cols * g)
                image_index[keys] = index
                view[keys] = VIEWS.index("tile")
            image_keys = slice(index * n_tiles * per_tile, (index + 1) * n_tiles * per_tile)
            key_anchors[image_keys] = anchors[index]
        # keys without a box (CLS, padding) belong to no cell
        boxless = ~np.isfinite(boxes[:, 0])
        grid[boxless], grid_shape[boxless], image_index[boxless], view[boxless] = -1, 0, -1, 0
        builder.keys = CrossKeys(boxes, grid, grid_shape, image_index, view, key_anchors)
        return builder.build()

    def tiling(self, width: int, height: int) -> tuple[int, int, geometry.Affine]:
        """Tile rows, tile columns and the map original pixels → tiled canvas, by the processor's own functions
        (``get_optimal_tiled_canvas``, ``get_image_size_fit_to_canvas``): the image is resized to fit the canvas
        with its aspect ratio kept and placed at the top left.

        Example:
            >>> adapter.tiling(1200, 400)[:2]          # a wide image: one row of three tiles   # doctest: +SKIP
            (1, 3)
        """
        tile = self.tile_size
        canvas_height, canvas_width = get_optimal_tiled_canvas(height, width, self.max_tiles, tile)
        new_height, new_width = get_image_size_fit_to_canvas(height, width, canvas_height, canvas_width, tile)
        return (
            int(canvas_height) // tile,
            int(canvas_width) // tile,
            geometry.resize(width, height, int(new_width), int(new_height)),
        )
