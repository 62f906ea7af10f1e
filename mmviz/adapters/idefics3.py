"""Idefics3 (``idefics3``) and SmolVLM (``smolvlm``): the image split into square tiles plus a global view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.base import ModelShape
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import IMAGE, IMAGE_NEWLINE, IMAGE_SEP, ImageGeometry, LayoutBuilder, TokenLayout
from mmviz.errors import ProcessorMismatchError

MAX_TILE_MARKERS = 6
"""The processors name tiles ``<row_i_col_j>`` with 1 ≤ i, j ≤ 6."""


@dataclass(frozen=True)
class _ImageBlock:
    """The token runs of one image: tiles (0-based row, col, positions) in prompt order, then the global view."""

    tiles: list[tuple[int, int, np.ndarray]]
    global_view: np.ndarray

    @property
    def start(self) -> int:
        return int((self.tiles[0][2] if self.tiles else self.global_view)[0])

    @property
    def end(self) -> int:
        return int(self.global_view[-1])


class Idefics3Adapter(GenerativeAdapter):
    """Idefics3: every image becomes ``n_h × n_w`` tiles of ``T × T`` px plus one global ``T × T`` image.

    The image processor resizes the longest edge to ``size["longest_edge"]``, then rounds BOTH sides up to multiples
    of the tile size ``T = max_image_size["longest_edge"]`` (stretching each axis on its own) and cuts ``T × T``
    tiles row-major; the global image is the whole image stretched to ``T × T``. An image that fits one tile is not
    split (global view only). The connector's pixel shuffle turns every tile and the global image into
    ``G × G = image_seq_len`` tokens in raster order, ``G = T / (patch_size · scale_factor)``.

    The prompt holds, per tile, ``<fake_token_around_image><row_i_col_j>`` + ``<image>``×G² (a newline after each
    tile row), then ``<fake_token_around_image><global-img>`` + ``<image>``×G² + ``<fake_token_around_image>``.
    The tile grid is read from those markers (the processor's OUTPUT): tile tokens get view ``"tile"`` (each tile
    its own G×G grid, boxes in original pixels; together the tiles tile the image), global tokens view
    ``"global"``; markers get kind ``image_sep``, the newlines between tile rows ``image_newline``.

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> sorted({row["view"] for row in trace.layout.rows() if row["kind"] == "image"})  # doctest: +SKIP
        ['global', 'tile']
    """

    family = "Idefics3"
    model_types = ("idefics3",)
    fallback_template = "User:{image}{prompt}<end_of_utterance>\nAssistant:"

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        self._last_frames = 0  # tiles + global images the vision tower saw in the last encode()

    # -- model structure: the decoder is ``model.model.text_model`` ----------------------------------------------
    def language_model(self) -> torch.nn.Module:
        return self.model.model.text_model

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def tile_size(self) -> int:
        """``T``: the side of a tile and of the global image, in processor pixels."""
        ip = self.processor.image_processor
        max_size = dict(getattr(ip, "max_image_size", None) or {})
        if "longest_edge" not in max_size:
            raise ProcessorMismatchError(
                f"the image processor {type(ip).__name__} has no max_image_size['longest_edge']; pass the model's "
                f"Idefics3/SmolVLM processor (AutoProcessor.from_pretrained(<the model's checkpoint>))"
            )
        return int(max_size["longest_edge"])

    @property
    def tokens_per_side(self) -> int:
        """``G``: tokens per side of one tile (or of the global image) after the pixel shuffle."""
        patch = int(self.model.config.vision_config.patch_size)
        return self.tile_size // (patch * int(self.model.config.scale_factor))

    def vision_tokens_per_image(self) -> int:
        """Patches of one tile (the vision tower runs on every tile and global image separately)."""
        return (self.tile_size // int(self.model.config.vision_config.patch_size)) ** 2

    def model_shape(self, num_images: int) -> ModelShape:
        """As the base, but the vision tower's sequences are the tiles + global images of the last encode."""
        return replace(super().model_shape(num_images), num_images=self._last_frames or num_images)

    def _marker_ids(self) -> tuple[int, int, dict[int, tuple[int, int]]]:
        """Ids of ``<fake_token_around_image>``, ``<global-img>`` and ``<row_i_col_j>`` → 0-based (i, j)."""
        convert = self.tokenizer.convert_tokens_to_ids
        unknown = self.tokenizer.unk_token_id
        fake = convert(str(getattr(self.processor, "fake_image_token", "<fake_token_around_image>")))
        tag = getattr(self.processor, "global_image_token", None) or getattr(self.processor, "global_image_tag", None)
        global_id = convert(str(tag or "<global-img>"))
        tiles = {}
        for i in range(MAX_TILE_MARKERS):
            for j in range(MAX_TILE_MARKERS):
                token_id = convert(f"<row_{i + 1}_col_{j + 1}>")
                if token_id is not None and token_id != unknown:
                    tiles[int(token_id)] = (i, j)
        return int(fake), int(global_id), tiles

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        patch, scale = int(self.model.config.vision_config.patch_size), int(self.model.config.scale_factor)
        tile, per_side = self.tile_size, self.tokens_per_side
        seq_len = int(getattr(self.processor, "image_seq_len", per_side**2))
        if tile % (patch * scale) or seq_len != per_side**2:
            raise ProcessorMismatchError(
                f"the processor puts {seq_len} <image> tokens per {tile}×{tile} tile but the model makes "
                f"({tile}/{patch})²/{scale}² = {(tile // patch) ** 2 // scale**2} (patch_size {patch}, scale_factor "
                f"{scale}); the processor's image_seq_len / max_image_size do not match the model's"
            )

    # -- inputs ------------------------------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        inputs = super().encode(images, text)
        self._last_frames = self._check_token_count(inputs)
        return inputs

    def _check_token_count(self, inputs: dict[str, torch.Tensor]) -> int:
        """The processor must put ``G²`` ``<image>`` tokens per tile / global image; returns how many it made."""
        pixel_values = inputs["pixel_values"]
        frames = int(pixel_values.shape[1]) if pixel_values.ndim == 5 else int(pixel_values.shape[0])
        found = int((inputs["input_ids"] == self.image_token_id).sum())
        expected = frames * self.tokens_per_side**2
        if found != expected:
            raise ProcessorMismatchError(
                f"the processor inserted {found} <image> tokens for {frames} tiles/global images; the model makes "
                f"{self.tokens_per_side**2} tokens each ({expected}); the processor's image_seq_len does not "
                f"match the model's"
            )
        return frames

    # -- layout ------------------------------------------------------------------------------------------------
    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        blocks = self._blocks(input_ids)
        if len(blocks) != len(images):
            raise ProcessorMismatchError(
                f"the sequence holds {len(blocks)} expanded images (<global-img> views) for {len(images)} image(s); "
                f"pass the inputs the processor made for these images"
            )
        builder, fake, cells = self._builder(input_ids)
        side, per_side = self.tile_size, self.tokens_per_side
        for index, (block, image) in enumerate(zip(blocks, images, strict=True)):
            width, height = image.width, image.height
            n_rows = max((i for i, _, _ in block.tiles), default=-1) + 1
            n_cols = max((j for _, j, _ in block.tiles), default=-1) + 1
            expected = [(i, j) for i in range(n_rows) for j in range(n_cols)]
            if [(i, j) for i, j, _ in block.tiles] != expected:
                raise ProcessorMismatchError(
                    f"image {index}'s tiles are not a full row-major {n_rows}×{n_cols} grid; pass the inputs "
                    f"the processor made"
                )
            # the tiles cut the image resized to (n_cols·T) × (n_rows·T): one per-axis scale back to the original
            to_canvas = geometry.resize(width, height, max(n_cols, 1) * side, max(n_rows, 1) * side)
            for i, j, positions in block.tiles:
                offset = cells + np.array([j * side, i * side, j * side, i * side], dtype=np.float64)
                boxes = geometry.clip_boxes(to_canvas.to_original(offset), width, height)
                builder.mark_grid(
                    positions, image_index=index, view="tile", grid_shape=(per_side, per_side), boxes=boxes
                )
            to_global = geometry.resize(width, height, side, side)
            boxes = geometry.clip_boxes(to_global.to_original(cells), width, height)
            builder.mark_grid(
                block.global_view, image_index=index, view="global", grid_shape=(per_side, per_side), boxes=boxes
            )
            _mark_block(builder, input_ids, block, index, fake)
            builder.images.append(ImageGeometry(width, height, (0.0, 0.0, float(width), float(height))))
        return builder.build()

    def _builder(self, input_ids: np.ndarray) -> tuple[LayoutBuilder, int, np.ndarray]:
        """A builder over ``input_ids`` with the image markers marked, the ``<fake_token_around_image>`` id, and
        the ``G × G`` token cells of one ``T × T`` tile (or global view) in canvas pixels."""
        fake, global_id, tile_ids = self._marker_ids()
        builder = LayoutBuilder(self.display_tokens(input_ids), self.special_mask(input_ids))
        builder.kinds[np.isin(input_ids, [fake, global_id, *tile_ids])] = IMAGE_SEP
        side, per_side = self.tile_size, self.tokens_per_side
        return builder, fake, geometry.grid_boxes(per_side, per_side, side / per_side, side / per_side)

    def _blocks(self, input_ids: np.ndarray) -> list[_ImageBlock]:
        """Group the ``<image>`` runs into images by the marker token in front of each run."""
        _, global_id, tile_ids = self._marker_ids()
        per_image = self.tokens_per_side**2
        positions = np.flatnonzero(input_ids == self.image_token_id)
        runs = np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1) if len(positions) else []
        blocks: list[_ImageBlock] = []
        tiles: list[tuple[int, int, np.ndarray]] = []
        for run in runs:
            if len(run) != per_image:
                raise ProcessorMismatchError(
                    f"an <image> run of {len(run)} tokens at position {run[0]}; the model makes {per_image} per tile "
                    f"or global image, so the processor's image_seq_len does not match the model's"
                )
            tag = int(input_ids[run[0] - 1]) if run[0] > 0 else -1
            if tag == global_id:
                blocks.append(_ImageBlock(tiles, run))
                tiles = []
            elif tag in tile_ids:
                tiles.append((*tile_ids[tag], run))
            else:
                raise ProcessorMismatchError(
                    f"the <image> run at position {run[0]} follows neither <global-img> nor a <row_i_col_j> marker; "
                    f"pass the prompt with one bare <image> placeholder per image and let the processor expand it"
                )
        if tiles:
            raise ProcessorMismatchError("the last image's tiles are not followed by its <global-img> view")
        return blocks


def _mark_block(builder: LayoutBuilder, input_ids: np.ndarray, block: _ImageBlock, index: int, fake: int) -> None:
    """The expansion's markers and the newlines between tile rows, from the first marker to the closing one."""
    first = block.start - 1 - int(block.start >= 2 and input_ids[block.start - 2] == fake)
    last = block.end + int(block.end + 1 < len(input_ids) and input_ids[block.end + 1] == fake)
    region = np.arange(first, last + 1)
    region = region[builder.kinds[region] != IMAGE]
    builder.kinds[region[builder.kinds[region] != IMAGE_SEP]] = IMAGE_NEWLINE
    builder.image_index[region] = index


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM: Idefics3's tiles + global image layout (its processor and connector follow the same design).

    Videos: the processor writes a short introduction, then per frame ``Frame from MM:SS:`` and one global-view
    block (the frame resized, then stretched to ``T × T``, never split), so every frame has its own ``G × G``
    tokens: view ``"frame"``, span ``(f, f)``, boxes on the original frame. Every frame passed is used
    (``do_sample_frames=False``); the timestamps are the processor's (it assumes 24 fps when it is not told).

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> trace = mmviz.trace(model, processor, video=frames, prompt="What happens?")   # doctest: +SKIP
    """

    family = "SmolVLM"
    model_types = ("smolvlm",)
    fallback_template = "<|im_start|>User:{image}{prompt}<end_of_utterance>\nAssistant:"
    video_path = True

    def check_video(self, inputs: dict[str, torch.Tensor], n_frames: int) -> None:
        pixels = inputs.get("pixel_values")
        if pixels is None or pixels.ndim != 5 or int(pixels.shape[1]) != n_frames:
            shape = None if pixels is None else tuple(pixels.shape)
            raise ProcessorMismatchError(
                f"the processor made pixel values of shape {shape} for {n_frames} frames (expected (1, {n_frames}, "
                f"C, T, T)): it sampled frames although mmviz passes do_sample_frames=False"
            )
        self.check_canvas(pixels, self.tile_size, " (its video processor's max_image_size)")
        self._last_frames = self._check_token_count(inputs)

    def video_layout(
        self, input_ids: np.ndarray, frames: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        self.check_video(inputs, len(frames))
        blocks = self._blocks(input_ids)
        if len(blocks) != len(frames) or any(block.tiles for block in blocks):
            raise ProcessorMismatchError(
                f"the sequence holds {len(blocks)} image blocks for {len(frames)} frames (one global view each "
                f"expected); pass the inputs the processor made for this video"
            )
        builder, fake, cells = self._builder(input_ids)
        side, per_side = self.tile_size, self.tokens_per_side
        for index, (block, frame) in enumerate(zip(blocks, frames, strict=True)):
            to_canvas = geometry.resize(frame.width, frame.height, side, side)
            boxes = geometry.clip_boxes(to_canvas.to_original(cells), frame.width, frame.height)
            span = block.global_view
            builder.mark_grid(span, image_index=index, view="frame", grid_shape=(per_side, per_side), boxes=boxes)
            builder.mark_frames(span, index, index)
            _mark_block(builder, input_ids, block, index, fake)
            builder.images.append(ImageGeometry(frame.width, frame.height, (0.0, 0.0, frame.width, frame.height)))
        return builder.build()
