"""LLaVA-NeXT (``"llava_next"``) and LLaVA-OneVision (``"llava_onevision"``): anyres base view + high-res grid.

One image span holds, in this order (``LlavaNextModel.pack_image_features``):

1. the **base view**: the whole image stretched to one ``S × S`` tile, ``g × g`` tokens in raster order
   (``g = S // P``; a OneVision image in a multi-image prompt is padded to a square first);
2. the **high-res grid** ("crop" view): the image resized to fit the best pinpoint ``h_b × w_b`` (aspect kept),
   pasted centred on that canvas, cut into ``S × S`` tiles and encoded tile by tile; the ``(n_h·g) × (n_w·g)``
   feature grid is un-padded in feature cells (whole rows or columns of padding dropped) and emitted row by row,
   each row followed by one ``image_newline`` token. OneVision bilinearly down-samples that grid when it holds
   more than ``N·g²`` cells (``vision_aspect_ratio = "anyres_max_N"``; each token then reads its neighbours' cells
   too, so those boxes overlap); a OneVision image in a multi-image prompt
   has no high-res grid, only one ``image_newline`` after its base view.

A box is what its token reads (checked against the model by ``mmviz.adapters.verify``): the strips of real image
that feature-level un-padding drops at the two padded edges (up to a cell each) reach no high-res token, so the
high-res view covers less of the image than the base view; the image's ``covered`` region is what any view reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution

from mmviz.adapters import geometry
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import IMAGE_NEWLINE, VIEWS, ImageGeometry, LayoutBuilder, TokenLayout
from mmviz.adapters.llava import pad_resize_crop_map
from mmviz.errors import ProcessorMismatchError


@dataclass(frozen=True)
class ImagePlan:
    """The image tokens of one image, in sequence order: base grid, high-res grid (+ newlines), trailing newlines.

    Boxes are in original pixels, clipped (NaN for cells that see only padding), raster order.
    """

    base_boxes: np.ndarray
    base_shape: tuple[int, int]
    crop_boxes: np.ndarray | None = None
    crop_shape: tuple[int, int] = (0, 0)
    row_newlines: bool = False
    tail_newlines: int = 0

    def __len__(self) -> int:
        rows, cols = self.crop_shape
        return len(self.base_boxes) + rows * (cols + int(self.row_newlines)) + self.tail_newlines


class LlavaNextAdapter(GenerativeAdapter):
    """LLaVA-NeXT (LLaVA-1.6): ``<image>`` expands to a base view plus an un-padded anyres high-res grid.

    Every size (pinpoints, tile and patch size, feature-select strategy, whether the model has an
    ``image_newline``) is read from the loaded model and processor. The base view gets view ``"base"``, the
    high-res grid view ``"crop"`` (one grid over the whole image); newline tokens get kind ``image_newline``.

    Example:
        >>> checkpoint = "llava-hf/llava-v1.6-mistral-7b-hf"
        >>> model = LlavaNextForConditionalGeneration.from_pretrained(checkpoint)        # doctest: +SKIP
        >>> processor = LlavaNextProcessor.from_pretrained(checkpoint)                   # doctest: +SKIP
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> trace.layout.row(int(trace.image_positions[-1]))["view"]                      # doctest: +SKIP
        'crop'
    """

    family = "LLaVA-NeXT"
    model_types = ("llava_next",)
    fallback_template = "[INST] {image}\n{prompt} [/INST]"

    # -- sizes read from the model ---------------------------------------------------------------------------
    @property
    def tile_size(self) -> int:
        """``S``: side of one tile (and of the base view) fed to the vision tower."""
        return int(self.model.config.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def grid_size(self) -> int:
        """``g``: feature cells per tile side (the model's own ``image_size // patch_size``)."""
        return self.tile_size // self.patch_size

    @property
    def pinpoints(self) -> list[list[int]]:
        """The model's ``image_grid_pinpoints`` as ``[height, width]`` pairs."""
        return [[int(h), int(w)] for h, w in self.model.config.image_grid_pinpoints]

    @property
    def has_newline(self) -> bool:
        """Whether the model appends its learned ``image_newline`` vector after each high-res row."""
        return getattr(self.model.model, "image_newline", None) is not None

    def vision_tokens_per_image(self) -> int:
        has_cls = "clip" in str(getattr(self.model.config.vision_config, "model_type", ""))
        return self.grid_size**2 + int(has_cls)

    # -- checks ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        ip = self.processor.image_processor
        processor_pinpoints = [[int(h), int(w)] for h, w in getattr(ip, "image_grid_pinpoints", None) or []]
        if processor_pinpoints != self.pinpoints:
            raise ProcessorMismatchError(
                f"the image processor's image_grid_pinpoints {processor_pinpoints} differ from the model's "
                f"{self.pinpoints}; load the processor from the same checkpoint as the model"
            )
        tile, sizes = _tile_and_base_size(ip)
        if tile != self.tile_size or sizes != {(self.tile_size, self.tile_size)}:
            raise ProcessorMismatchError(
                f"the image processor cuts {tile}-px tiles and resizes them to (height, width) {sorted(sizes)}, "
                f"but the vision tower takes {self.tile_size}×{self.tile_size} images; mmviz supports processors "
                f"whose size, crop_size and the tower's image_size agree (as in the released checkpoints)"
            )
        strategy = getattr(self.processor, "vision_feature_select_strategy", None)
        model_strategy = self.model.config.vision_feature_select_strategy
        if strategy is not None and strategy != model_strategy:
            raise ProcessorMismatchError(
                f"the processor's vision_feature_select_strategy is {strategy!r} but the model's is "
                f"{model_strategy!r}; load the processor from the same checkpoint as the model"
            )
        self._check_processor_sizes()

    def _check_processor_sizes(self) -> None:
        patch = getattr(self.processor, "patch_size", None)
        if patch is not None and int(patch) != self.patch_size:
            raise ProcessorMismatchError(
                f"the processor's patch_size is {patch} but the vision tower's is {self.patch_size}; load the "
                f"processor from the same checkpoint as the model"
            )

    # -- inputs ----------------------------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        inputs = self._run_processor(images, text)
        canvas = tuple(inputs["pixel_values"].shape[-2:])
        if canvas != (self.tile_size, self.tile_size):
            raise ProcessorMismatchError(
                f"the processor makes {canvas[1]}×{canvas[0]} tiles but the vision tower takes "
                f"{self.tile_size}×{self.tile_size}; load the processor from the same checkpoint as the model"
            )
        found = int((inputs["input_ids"] == self.image_token_id).sum())
        expected = sum(len(plan) for plan in self.image_plans(images, inputs))
        if found != expected:
            raise ProcessorMismatchError(
                f"the processor inserted {found} image tokens for {len(images)} image(s), the model packs {expected} "
                f"features; the processor's patch_size / vision_feature_select_strategy / num_additional_image_tokens "
                f"do not match the model's config"
            )
        return inputs

    def _run_processor(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        return super().encode(images, text)

    # -- layout ----------------------------------------------------------------------------------------------
    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        is_image = input_ids == self.image_token_id
        builder = self.layout_builder(input_ids)
        plans = self.image_plans(images, inputs)
        positions = np.flatnonzero(is_image)
        if len(positions) != sum(len(plan) for plan in plans):
            raise ProcessorMismatchError(
                f"the sequence holds {len(positions)} image tokens but {len(images)} image(s) of these sizes need "
                f"{[len(plan) for plan in plans]}; the prompt was not expanded by this model's processor"
            )
        start = 0
        for index, (plan, image) in enumerate(zip(plans, images, strict=True)):
            span, start = positions[start : start + len(plan)], start + len(plan)
            if np.any(np.diff(span) != 1):
                raise ProcessorMismatchError(f"the image tokens of image {index} are not one contiguous span")
            _mark(builder, span, plan, index)
            bounds = np.vstack([plan.base_boxes] + ([plan.crop_boxes] if plan.crop_boxes is not None else []))
            bounds = bounds[np.isfinite(bounds[:, 0])]
            covered = (bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max())
            builder.images.append(ImageGeometry(image.width, image.height, tuple(float(v) for v in covered)))
        return builder.build()

    def image_plans(self, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]) -> list[ImagePlan]:
        """One :class:`ImagePlan` per image, checked against the processor's ``image_sizes``."""
        sizes = inputs.get("image_sizes")
        if sizes is not None:
            sizes = [tuple(int(v) for v in size) for size in torch.as_tensor(sizes).reshape(-1, 2).tolist()]
            if sizes != [(image.height, image.width) for image in images]:
                raise ProcessorMismatchError(
                    f"the processor saw images of (height, width) {sizes} but mmviz was given "
                    f"{[(image.height, image.width) for image in images]}"
                )
        patched = self.patched_images(len(images), inputs)
        return [
            self.anyres_plan(image.width, image.height) if anyres else self.single_view_plan(image.width, image.height)
            for image, anyres in zip(images, patched, strict=True)
        ]

    def patched_images(self, n_images: int, inputs: dict[str, torch.Tensor]) -> list[bool]:
        """Whether each image gets the anyres high-res grid (always for LLaVA-NeXT)."""
        return [True] * n_images

    def anyres_plan(self, width: int, height: int) -> ImagePlan:
        """Base view (stretched) + the un-padded high-res grid with one newline after each row."""
        g, S = self.grid_size, self.tile_size
        base = self._grid_to_original(_cell_edges(1, g, self.patch_size, S), geometry.resize(width, height, S, S))
        base = geometry.clip_boxes(base, width, height)
        h_b, w_b = (int(v) for v in select_best_resolution((height, width), self.pinpoints))
        new_h, new_w = get_patch_output_size(
            np.broadcast_to(np.zeros((), np.uint8), (3, height, width)), (h_b, w_b), "channels_first"
        )
        to_canvas = geometry.resize(width, height, new_w, new_h).then(
            geometry.Affine(tx=(w_b - new_w) // 2, ty=(h_b - new_h) // 2)
        )
        n_h, n_w = h_b // S, w_b // S
        rows_f, cols_f = n_h * g, n_w * g
        r0, r1, c0, c1 = _unpadded_cells(height, width, rows_f, cols_f)
        rows, cols = self.packed_shape(r1 - r0, c1 - c0)
        row_edges, col_edges = _cell_edges(n_h, g, self.patch_size, S), _cell_edges(n_w, g, self.patch_size, S)
        row_first, row_end = _bilinear_reads(r1 - r0, rows)
        col_first, col_end = _bilinear_reads(c1 - c0, cols)
        row_spans = row_edges[r0 + row_first], row_edges[r0 + row_end]
        col_spans = col_edges[c0 + col_first], col_edges[c0 + col_end]
        crop = geometry.clip_boxes(self._spans_to_original(row_spans, col_spans, to_canvas), width, height)
        return ImagePlan(base, (g, g), crop, (rows, cols), row_newlines=self.has_newline)

    def single_view_plan(self, width: int, height: int) -> ImagePlan:
        """An image without a high-res grid (not used by LLaVA-NeXT, whose images are always tiled)."""
        raise NotImplementedError

    def packed_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """The high-res grid's shape after the model's packing (LLaVA-NeXT keeps the un-padded grid as is)."""
        return rows, cols

    def _grid_to_original(
        self, edges: np.ndarray | tuple[np.ndarray, np.ndarray], to_canvas: geometry.Affine
    ) -> np.ndarray:
        """Boxes of the grid with these canvas edges, in original pixels (not clipped).

        The outer edges stay where the outer patches end: pixels beyond them (un-padded strips) reach no token of
        this view, and a box must not claim them (the model reads them through the base view only).
        """
        row_edges, col_edges = edges if isinstance(edges, tuple) else (edges, edges)
        return self._spans_to_original((row_edges[:-1], row_edges[1:]), (col_edges[:-1], col_edges[1:]), to_canvas)

    @staticmethod
    def _spans_to_original(
        rows: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray], to_canvas: geometry.Affine
    ) -> np.ndarray:
        """Boxes of the grid whose row ``i`` spans canvas ``rows[0][i]…rows[1][i]`` (columns likewise), raster order,
        in original pixels (not clipped). Spans tile the canvas, or overlap where a down-sampled token reads its
        neighbours' cells too."""
        top, bottom = (np.asarray(edge, np.float64) for edge in rows)
        left, right = (np.asarray(edge, np.float64) for edge in cols)
        r, c = np.divmod(np.arange(len(top) * len(left)), len(left))
        boxes = np.stack([left[c], top[r], right[c], bottom[r]], axis=1)
        # rounded to a millionth of a pixel: 199.99999999999997 is the image's edge (its covered region is exact)
        return np.round(to_canvas.to_original(boxes), 6)


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: LLaVA-NeXT's anyres layout with ``anyres_max_N`` down-sampling and multi-image mode.

    A prompt with one image: base view + un-padded high-res grid (bilinearly down-sampled when it holds more
    than ``N·g²`` cells) with a newline after each row. A prompt with several images (the processor's
    ``batch_num_images > 1``, as ``apply_chat_template`` sends them): each image is padded to a square (floor
    offsets), resized to one tile and gives only its ``g²`` base tokens plus one ``image_newline``.

    Example:
        >>> model = LlavaOnevisionForConditionalGeneration.from_pretrained(                  # doctest: +SKIP
        ...     "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
        >>> processor = AutoProcessor.from_pretrained("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")  # doctest: +SKIP
        >>> trace = mmviz.trace(model, processor, ["a.png", "b.png"], "What changed?")      # doctest: +SKIP
        >>> {trace.layout.row(int(p))["view"] for p in trace.image_positions}              # doctest: +SKIP
        {'base'}
    """

    family = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    video_path = True
    fallback_template = "<|im_start|>user {image}\n{prompt}<|im_end|>\n<|im_start|>assistant\n"

    # -- video: every frame one tile, its g × g features pooled to ⌈g/2⌉², one image_newline after the last frame
    @property
    def pooled_size(self) -> int:
        """``⌈g/2⌉``: pooled feature cells per frame side (``LlavaOnevisionModel.apply_pooling``, bilinear)."""
        return math.ceil(self.grid_size / 2)

    def check_video(self, inputs: dict[str, torch.Tensor], n_frames: int) -> None:
        pixels = inputs.get("pixel_values_videos")
        if pixels is None or pixels.ndim != 5:
            raise ProcessorMismatchError("the processor output has no (1, T, C, S, S) pixel_values_videos")
        if int(pixels.shape[1]) != n_frames:
            raise ProcessorMismatchError(
                f"the processor kept {pixels.shape[1]} of the {n_frames} frames: it sampled frames although mmviz "
                f"passes do_sample_frames=False"
            )
        self.check_canvas(pixels, self.tile_size, " (its video processor's size)")
        found = int((inputs["input_ids"] == self.video_token_id).sum())
        expected = n_frames * self.pooled_size**2 + 1
        if found != expected:
            raise ProcessorMismatchError(
                f"the processor inserted {found} video tokens for {n_frames} frames, the model needs {expected} "
                f"({self.pooled_size}² pooled cells per frame + one newline); load the processor of this checkpoint"
            )

    def video_layout(
        self, input_ids: np.ndarray, frames: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        """One frame per token group: frame ``f`` (resized per axis to the ``S × S`` tile, no crop) gives its
        ``g × g`` patch features pooled bilinearly to ``n × n`` (``n = ⌈g/2⌉``), in raster order, span ``(f, f)``;
        the model's ``image_newline`` follows the last frame (kind ``image_newline``, no box). Pooled cell ``i``
        covers patches ``i·g/n … (i+1)·g/n`` (exactly the 2 × 2 block for an even ``g``; for an odd ``g`` the
        bilinear kernel centred there, which also reads a little of its neighbours); the tile's remainder past
        ``g·patch`` goes to the last cell, as for images.
        """
        self.check_video(inputs, len(frames))
        n, g, S = self.pooled_size, self.grid_size, self.tile_size
        positions = np.flatnonzero(input_ids == self.video_token_id)
        per_frame = n * n
        builder = LayoutBuilder(self.display_tokens(input_ids), self.special_mask(input_ids))
        edges = np.arange(n + 1) * (g / n) * self.patch_size
        edges[-1] = S
        r, c = np.divmod(np.arange(per_frame), n)
        cells = np.stack([edges[c], edges[r], edges[c + 1], edges[r + 1]], axis=1)
        for index, frame in enumerate(frames):
            to_canvas = geometry.resize(frame.width, frame.height, S, S)
            boxes = geometry.clip_boxes(to_canvas.to_original(cells), frame.width, frame.height)
            span = positions[index * per_frame : (index + 1) * per_frame]
            builder.mark_grid(span, image_index=index, view="frame", grid_shape=(n, n), boxes=boxes)
            builder.mark_frames(span, index, index)
            builder.images.append(ImageGeometry(frame.width, frame.height, (0.0, 0.0, frame.width, frame.height)))
        newline = positions[len(frames) * per_frame :]
        builder.kinds[newline] = IMAGE_NEWLINE
        builder.image_index[newline] = len(frames) - 1
        builder.view[newline] = VIEWS.index("frame")
        return builder.build()

    @property
    def max_cells(self) -> int:
        """``N·g²`` for the model's ``vision_aspect_ratio = "anyres_max_N"``."""
        return _anyres_max(self.model.config.vision_aspect_ratio) * self.grid_size**2

    def _check_processor_sizes(self) -> None:
        model_ratio = self.model.config.vision_aspect_ratio
        _anyres_max(model_ratio)
        ratio = getattr(self.processor, "vision_aspect_ratio", model_ratio)
        if ratio != model_ratio:
            raise ProcessorMismatchError(
                f"the processor's vision_aspect_ratio is {ratio!r} but the model's is {model_ratio!r}; load the "
                f"processor from the same checkpoint as the model"
            )
        n_tokens = getattr(self.processor, "num_image_tokens", None)
        keeps_first = self.model.config.vision_feature_select_strategy != "default"
        if n_tokens is not None and int(n_tokens) - int(not keeps_first) != self.grid_size**2:
            raise ProcessorMismatchError(
                f"the processor's num_image_tokens is {n_tokens} but the vision tower gives {self.grid_size}² "
                f"features per tile; load the processor from the same checkpoint as the model"
            )

    def _run_processor(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        self.check_placeholders(text, len(images))
        # One nested list = the images of ONE prompt, as apply_chat_template passes them: with several images the
        # processor switches to OneVision's multi-image mode (base view only).
        return dict(self.processor(images=[list(images)], text=[text], return_tensors="pt"))

    def patched_images(self, n_images: int, inputs: dict[str, torch.Tensor]) -> list[bool]:
        counts = inputs.get("batch_num_images")
        if counts is None:  # the model then treats every image as a single-image prompt
            return [True] * n_images
        patched = [int(n) == 1 for n in torch.as_tensor(counts).reshape(-1).tolist() for _ in range(int(n))]
        if len(patched) != n_images:
            raise ProcessorMismatchError(f"batch_num_images {counts.tolist()} does not add up to {n_images} image(s)")
        return patched

    def packed_shape(self, rows: int, cols: int) -> tuple[int, int]:
        ratio = math.sqrt(rows * cols / self.max_cells)
        if ratio > 1.1:  # LlavaOnevisionModel.pack_image_features: bilinear down-sampling
            return int(rows // ratio), int(cols // ratio)
        return rows, cols

    def single_view_plan(self, width: int, height: int) -> ImagePlan:
        """Multi-image mode: pad to a square (image_mean fill, floor offsets), resize to one tile, one newline."""
        S, g = self.tile_size, self.grid_size
        pad, side = geometry.pad_to_square(width, height)
        to_canvas = pad.then(geometry.resize(side, side, S, S))
        base = self._grid_to_original(_cell_edges(1, g, self.patch_size, S), to_canvas)
        base = geometry.clip_boxes(base, width, height)
        return ImagePlan(base, (g, g), tail_newlines=int(self.has_newline))


class LlavaNextVideoAdapter(LlavaNextAdapter):
    """LLaVA-NeXT-Video: LLaVA-NeXT's anyres layout for images; videos frame by frame.

    Each frame goes through the video processor (shortest edge resized to the tile, centre-cropped to ``S × S``),
    the vision tower, and the vision resampler's ``s × s`` pooling (``spatial_pool_stride``: average, max or a
    stride-``s`` convolution, all reading the same block), so a frame gives ``⌊g/s⌋²`` tokens in raster order:
    view ``"frame"``, span ``(f, f)``, each the box of its ``s × s`` block of patches on the original frame (the
    pixels cropped away reach no token). No newline tokens.

    Example:
        >>> trace = mmviz.trace(model, processor, video=frames, prompt="What happens?")   # doctest: +SKIP
        >>> trace.layout.row(int(trace.image_positions[0]))["frames"]                      # doctest: +SKIP
        (0, 0)
    """

    family = "LLaVA-NeXT-Video"
    model_types = ("llava_next_video",)
    video_path = True

    @property
    def pool_stride(self) -> int:
        """``s``: patches per side the vision resampler pools into one video token."""
        return int(self.model.config.spatial_pool_stride)

    @property
    def pooled_size(self) -> int:
        """``⌊g/s⌋``: video tokens per frame side."""
        return self.grid_size // self.pool_stride

    def check_video(self, inputs: dict[str, torch.Tensor], n_frames: int) -> None:
        pixels = inputs.get("pixel_values_videos")
        if pixels is None or pixels.ndim != 5 or int(pixels.shape[1]) != n_frames:
            shape = None if pixels is None else tuple(pixels.shape)
            raise ProcessorMismatchError(
                f"the processor made pixel_values_videos of shape {shape} for {n_frames} frames: it sampled frames "
                f"although mmviz passes do_sample_frames=False, or it is not this model's processor"
            )
        self.check_canvas(pixels, self.tile_size, " (its video processor's crop_size)")
        found = int((inputs["input_ids"] == self.video_token_id).sum())
        expected = n_frames * self.pooled_size**2
        if found != expected:
            raise ProcessorMismatchError(
                f"the processor inserted {found} video tokens for {n_frames} frames, the model makes {expected} "
                f"({self.pooled_size}² pooled cells per frame); load the processor of this checkpoint"
            )

    def video_layout(
        self, input_ids: np.ndarray, frames: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        self.check_video(inputs, len(frames))
        n, block = self.pooled_size, self.pool_stride * self.patch_size
        positions = np.flatnonzero(input_ids == self.video_token_id)
        per_frame = n * n
        builder = LayoutBuilder(self.display_tokens(input_ids), self.special_mask(input_ids))
        cells = geometry.grid_boxes(n, n, block, block)
        for index, frame in enumerate(frames):
            to_canvas = pad_resize_crop_map(self.processor.video_processor, frame.width, frame.height)
            boxes = geometry.clip_boxes(to_canvas.to_original(cells), frame.width, frame.height)
            span = positions[index * per_frame : (index + 1) * per_frame]
            builder.mark_grid(span, image_index=index, view="frame", grid_shape=(n, n), boxes=boxes)
            builder.mark_frames(span, index, index)
            covered = geometry.clip_boxes(
                to_canvas.to_original(np.array([[0.0, 0.0, n * block, n * block]])), frame.width, frame.height
            )[0]
            builder.images.append(ImageGeometry(frame.width, frame.height, tuple(float(v) for v in covered)))
        return builder.build()


# -- helpers ---------------------------------------------------------------------------------------------------
def _mark(builder: LayoutBuilder, span: np.ndarray, plan: ImagePlan, index: int) -> None:
    n_base = len(plan.base_boxes)
    builder.mark_grid(span[:n_base], image_index=index, view="base", grid_shape=plan.base_shape, boxes=plan.base_boxes)
    rest = span[n_base:]
    newlines = rest
    if plan.crop_boxes is not None:
        rows, cols = plan.crop_shape
        table = rest[: rows * (cols + int(plan.row_newlines))].reshape(rows, cols + int(plan.row_newlines))
        builder.mark_grid(
            table[:, :cols].ravel(), image_index=index, view="crop", grid_shape=(rows, cols), boxes=plan.crop_boxes
        )
        newlines = np.concatenate([table[:, cols:].ravel(), rest[rows * (cols + int(plan.row_newlines)) :]])
    builder.kinds[newlines] = IMAGE_NEWLINE
    builder.image_index[newlines] = index
    builder.view[newlines] = VIEWS.index("crop" if plan.crop_boxes is not None else "base")


def _tile_and_base_size(image_processor: object) -> tuple[int, set[tuple[int, int]]]:
    """The tile side the processor cuts its canvas into, and every ``(height, width)`` it resizes / crops tiles and
    the base view to (``size``, and ``crop_size`` when it centre-crops)."""
    size = dict(getattr(image_processor, "size", None) or {})
    crop = dict(getattr(image_processor, "crop_size", None) or {})
    if size.get("height") and size.get("width"):
        sizes = {(int(size["height"]), int(size["width"]))}
    else:
        sizes = {(int(size.get("shortest_edge") or 0),) * 2}
    if getattr(image_processor, "do_center_crop", False) and crop.get("height"):
        sizes.add((int(crop["height"]), int(crop["width"])))
    tile = int(crop.get("height") or size.get("height") or size.get("shortest_edge") or 0)
    return tile, sizes


def _cell_edges(n_tiles: int, g: int, patch: int, tile: int) -> np.ndarray:
    """Canvas positions of the ``n_tiles·g + 1`` feature-cell edges along one axis.

    Cell ``k`` lies in tile ``k // g`` at offset ``(k % g)·patch``; a tile's last cell also takes the tile's
    remainder ``tile − g·patch`` (pixels the patch embedding never reads).
    """
    k = np.arange(n_tiles * g + 1)
    return (k // g) * tile + (k % g) * patch


def _bilinear_reads(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``n_out`` cells of a bilinear resize of ``n_in`` cells (``torch.nn.functional.interpolate``,
    ``align_corners=False``, as OneVision's down-sampling): the first input cell it reads and one past the last.

    Output cell ``i`` samples input coordinate ``(i + ½)·n_in/n_out − ½`` (clamped at 0) and mixes the two cells
    around it, so a down-sampled token reads its neighbour's cell too and the boxes overlap; at ``n_out = n_in``
    every cell reads itself.

    Example:
        >>> _bilinear_reads(3, 2)
        (array([0, 1]), array([2, 3]))
    """
    if n_out in (0, n_in):  # no cells (an image thinner than one cell), or no resize
        return np.arange(n_out), np.arange(n_out) + 1
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    first = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    mixes = (source - first > 1e-9) & (first < n_in - 1)  # weight 0 on the next cell: it is not read
    return first, first + 1 + mixes


def _unpadded_cells(height: int, width: int, rows: int, cols: int) -> tuple[int, int, int, int]:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of the feature grid that ``unpad_image`` keeps.

    Same float order of operations as transformers (``int(round(x, 7))`` truncates, floor padding), so an odd
    leftover keeps one padding row / column more.
    """
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        pad = (rows - new_rows) // 2
        return pad, rows - pad, 0, cols
    new_cols = int(round(width * (rows / height), 7))
    pad = (cols - new_cols) // 2
    return 0, rows, pad, cols - pad


def _anyres_max(vision_aspect_ratio: str) -> int:
    """``N`` of ``"anyres_max_N"`` (parsed like transformers: ``str.strip("anyres_max_")``)."""
    try:
        return int(str(vision_aspect_ratio).strip("anyres_max_"))  # noqa: B005 - the same parse as the model
    except ValueError as error:
        raise ProcessorMismatchError(
            f"vision_aspect_ratio {vision_aspect_ratio!r} is not of the form 'anyres_max_N', the only form "
            f"LlavaOnevisionModel.pack_image_features handles"
        ) from error
