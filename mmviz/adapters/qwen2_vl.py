"""Qwen2-VL (``qwen2_vl``) and Qwen2.5-VL (``qwen2_5_vl``): dynamic resolution, one token per 2×2 patch block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import IMAGE_SEP, ImageGeometry, LayoutBuilder, TokenLayout
from mmviz.errors import InputError, ProcessorMismatchError

MAX_ASPECT_RATIO = 200
"""``smart_resize`` refuses images whose long side is more than this many times the short side."""


class Qwen2VLAdapter(GenerativeAdapter):
    """Qwen2-VL: ``<|vision_start|>`` + ``<|image_pad|>``×n + ``<|vision_end|>`` per image, n = h·w / m².

    The processor ``smart_resize``-s every image (each axis on its own, no crop, no pad) to ``W′ × H′``, multiples of
    ``patch_size · merge_size``, and reports ``image_grid_thw = (1, H′/P, W′/P)``. The merger fuses each ``m × m``
    block of patches into one LLM token, in raster order over blocks: token k covers the block
    ``divmod(k, W′/(P·m))``, i.e. the ``(P·m)``-px square at that cell of the resized image, mapped back per axis.
    The grid is read from the processor's OUTPUT (``inputs["image_grid_thw"]``), never recomputed.

    The vision markers get kind ``image_sep`` and no box. The LLM sees M-RoPE positions (t, row, col) for image
    tokens; the model derives them from ``input_ids`` and ``mm_token_type_ids``, so :meth:`analysis_inputs` extends
    the processor's ``mm_token_type_ids`` over the answer (text) for the teacher-forced forward.

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> trace.layout.row(trace.image_positions[0])["grid_shape"]                       # doctest: +SKIP
        (10, 14)
    """

    family = "Qwen2-VL"
    model_types = ("qwen2_vl",)
    video_path = True
    fallback_template = "<|im_start|>user\n{image}{prompt}<|im_end|>\n<|im_start|>assistant\n"

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        self._last_patches = 0  # vision-tower sequence length of the largest image of the last encode()

    # -- sizes, read from the loaded config (the processor's copies are checked against them) -------------------
    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def temporal_patch_size(self) -> int:
        """Frames fused into one temporal patch (2: every video token covers two consecutive frames)."""
        return int(self.model.config.vision_config.temporal_patch_size)

    @property
    def video_token(self) -> str:
        return str(getattr(self.processor, "video_token", None) or "<|video_pad|>")

    def _marker_ids(self) -> list[int]:
        config = self.model.config
        return [int(getattr(config, key)) for key in ("vision_start_token_id", "vision_end_token_id")]

    def vision_tokens_per_image(self) -> int:
        """Patches of the largest image of the last :meth:`encode` (else the processor's ``max_pixels`` bound)."""
        if self._last_patches:
            return self._last_patches
        size = dict(self.processor.image_processor.size)
        return int(size.get("longest_edge", 0)) // self.patch_size**2

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        ip = self.processor.image_processor
        vision = self.model.config.vision_config
        for name, model_value in (
            ("patch_size", vision.patch_size),
            ("merge_size", vision.spatial_merge_size),
            ("temporal_patch_size", vision.temporal_patch_size),
        ):
            value = getattr(ip, name, None)
            if value is not None and int(value) != int(model_value):
                raise ProcessorMismatchError(
                    f"the image processor's {name} is {value} but the vision tower's is {model_value}; "
                    f"load the processor from the same checkpoint as the model"
                )

    # -- prompt and inputs -------------------------------------------------------------------------------------
    def format_prompt(self, prompt: str, n_images: int) -> str:
        """The chat template (or Qwen's ``<|im_start|>`` format) with one vision block per image."""
        if self.image_token in prompt or getattr(self.processor, "chat_template", None):
            return super().format_prompt(prompt, n_images)
        block = f"<|vision_start|>{self.image_token}<|vision_end|>"
        return self.fallback_template.format(image=block * n_images, prompt=prompt)

    def format_video_prompt(self, prompt: str, n_frames: int) -> str:
        """The chat template (or Qwen's ``<|im_start|>`` format) with one vision block holding the video token."""
        return self.video_chat_prompt(prompt, f"<|vision_start|>{self.video_token}<|vision_end|>")

    def encode_video(self, frames: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        """The processor's output for one video: EVERY frame is used (``do_sample_frames=False``), grouped by
        ``temporal_patch_size`` (an odd last group repeats the last frame, as the processor pads)."""
        frame = frames[0]
        if max(frame.size) > MAX_ASPECT_RATIO * min(frame.size):
            raise InputError(
                f"the {frame.width}×{frame.height} frames are too elongated for the Qwen-VL processor (aspect ratio "
                f"must stay below {MAX_ASPECT_RATIO}); crop or pad them first"
            )
        return super().encode_video(frames, text)

    def check_video(self, inputs: dict[str, torch.Tensor], n_frames: int) -> None:
        t, h, w = self._video_grid(inputs, n_frames)
        patches = t * h * w
        if int(inputs["pixel_values_videos"].shape[0]) != patches:
            raise ProcessorMismatchError(
                f"the processor made {inputs['pixel_values_videos'].shape[0]} video patches but its video_grid_thw "
                f"says {patches}; use the model's own processor class"
            )
        found = int((inputs["input_ids"] == self.video_token_id).sum())
        if found != patches // self.merge_size**2:
            raise ProcessorMismatchError(
                f"the processor inserted {found} video tokens for video_grid_thw {[t, h, w]}, the model needs "
                f"{patches // self.merge_size**2}; the processor's merge_size does not match the model's"
            )
        self._last_patches = h * w  # the tower attends per temporal patch

    def _video_grid(self, inputs: dict[str, torch.Tensor], n_frames: int) -> tuple[int, int, int]:
        """``(t, h, w)`` of the one video, checked: ``t`` temporal patches of ``temporal_patch_size`` frames."""
        grids = inputs.get("video_grid_thw")
        if grids is None:
            raise ProcessorMismatchError("the processor output has no video_grid_thw; pass the model's processor")
        rows = np.asarray(torch.as_tensor(grids).cpu(), dtype=np.int64).reshape(-1, 3)
        if len(rows) != 1:
            raise ProcessorMismatchError(f"video_grid_thw has {len(rows)} rows for one video")
        t, h, w = (int(v) for v in rows[0])
        step = self.temporal_patch_size
        if t != -(-n_frames // step):
            raise ProcessorMismatchError(
                f"the processor made {t} temporal patches of {step} frames from {n_frames} frames (expected "
                f"{-(-n_frames // step)}): it sampled or dropped frames; mmviz passes do_sample_frames=False, so the "
                f"video processor of this checkpoint does not honour it"
            )
        if h % self.merge_size or w % self.merge_size:
            raise ProcessorMismatchError(f"video_grid_thw {[t, h, w]} is not divisible by spatial_merge_size")
        return t, h, w

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        for image in images:
            if max(image.size) > MAX_ASPECT_RATIO * min(image.size):
                raise InputError(
                    f"the {image.width}×{image.height} image is too elongated for the Qwen-VL processor (aspect "
                    f"ratio must stay below {MAX_ASPECT_RATIO}); crop or pad it first"
                )
        inputs = super().encode(images, text)
        grids = self._grids(inputs, len(images))
        patches = int(grids.prod(axis=1).sum())
        if int(inputs["pixel_values"].shape[0]) != patches:
            raise ProcessorMismatchError(
                f"the processor made {inputs['pixel_values'].shape[0]} patches but its image_grid_thw says "
                f"{patches}; use the model's own processor class"
            )
        found = int((inputs["input_ids"] == self.image_token_id).sum())
        expected = patches // self.merge_size**2
        if found != expected:
            raise ProcessorMismatchError(
                f"the processor inserted {found} image tokens for image_grid_thw {grids.tolist()}, the model merges "
                f"{self.merge_size}×{self.merge_size} patches into one token and needs {expected}; the processor's "
                f"merge_size does not match the model's spatial_merge_size"
            )
        self._last_patches = int(grids.prod(axis=1).max())
        return inputs

    def _grids(self, inputs: dict[str, torch.Tensor], n_images: int) -> np.ndarray:
        grids = inputs.get("image_grid_thw")
        if grids is None:
            raise ProcessorMismatchError(
                "the processor output has no image_grid_thw; pass the model's Qwen2-VL-style processor "
                "(AutoProcessor.from_pretrained(<the model's checkpoint>))"
            )
        grids = np.asarray(torch.as_tensor(grids).cpu(), dtype=np.int64).reshape(-1, 3)
        if len(grids) != n_images:
            raise ProcessorMismatchError(f"image_grid_thw has {len(grids)} rows for {n_images} image(s)")
        m = self.merge_size
        if (grids[:, 1:] % m).any():
            raise ProcessorMismatchError(
                f"image_grid_thw {grids.tolist()} is not divisible by the model's spatial_merge_size {m}"
            )
        return grids

    # -- layout ------------------------------------------------------------------------------------------------
    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        grids = self._grids(inputs, len(images))
        m, patch = self.merge_size, self.patch_size
        counts = grids.prod(axis=1) // m**2
        positions = np.flatnonzero(input_ids == self.image_token_id)
        if len(positions) != counts.sum():
            raise ProcessorMismatchError(
                f"the sequence holds {len(positions)} image tokens but image_grid_thw {grids.tolist()} needs "
                f"{int(counts.sum())}; pass the inputs the processor made for these images"
            )
        builder = LayoutBuilder(self.display_tokens(input_ids), self.special_mask(input_ids))
        markers = np.flatnonzero(np.isin(input_ids, self._marker_ids()))
        builder.kinds[markers] = IMAGE_SEP
        for index, (span, (t, h, w), image) in enumerate(
            zip(np.split(positions, np.cumsum(counts)[:-1]), grids, images, strict=True)
        ):
            if t != 1:
                raise ProcessorMismatchError(f"image {index} has {t} temporal patches; an image has 1")
            if len(span) and span[-1] - span[0] != len(span) - 1:
                raise ProcessorMismatchError(
                    f"the {len(span)} tokens of image {index} are not contiguous; pass one placeholder per image"
                )
            rows, cols = int(h) // m, int(w) // m
            to_resized = geometry.resize(image.width, image.height, int(w) * patch, int(h) * patch)
            cells = geometry.grid_boxes(rows, cols, patch * m, patch * m)
            boxes = geometry.clip_boxes(to_resized.to_original(cells), image.width, image.height)
            builder.mark_grid(span, image_index=index, view="base", grid_shape=(rows, cols), boxes=boxes)
            for neighbour in (span[0] - 1, span[-1] + 1):
                if 0 <= neighbour < len(input_ids) and builder.kinds[neighbour] == IMAGE_SEP:
                    builder.image_index[neighbour] = index
            builder.images.append(ImageGeometry(image.width, image.height, (0.0, 0.0, image.width, image.height)))
        return builder.build()

    def video_layout(
        self, input_ids: np.ndarray, frames: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        """The layout of one video of ``frames`` (the originals): ``t`` groups of ``(h/m) × (w/m)`` tokens.

        Temporal group ``g`` fuses frames ``g·s … g·s + s − 1`` (``s`` = ``temporal_patch_size``; the last group
        of an odd count holds the last frame twice, as the processor pads): each of its tokens gets that frame
        span, ``image_index`` = its first frame, view ``"frame"``, and the box of its merge block on the resized
        frame mapped back to the original frame (every frame has the same size, so the same boxes). Qwen3-VL puts
        a timestamp and its own vision markers around each group; the token order is the same.
        """
        t, h, w = self._video_grid(inputs, len(frames))
        m, patch, step = self.merge_size, self.patch_size, self.temporal_patch_size
        rows, cols = h // m, w // m
        positions = np.flatnonzero(input_ids == self.video_token_id)
        if len(positions) != t * rows * cols:
            raise ProcessorMismatchError(
                f"the sequence holds {len(positions)} video tokens but video_grid_thw {[t, h, w]} needs "
                f"{t * rows * cols}; pass the inputs the processor made for this video"
            )
        strings = self.display_tokens(input_ids)
        builder = LayoutBuilder(strings, self.special_mask(input_ids))
        builder.kinds[np.isin(input_ids, self._marker_ids())] = IMAGE_SEP
        frame = frames[0]
        to_resized = geometry.resize(frame.width, frame.height, w * patch, h * patch)
        cells = geometry.grid_boxes(rows, cols, patch * m, patch * m)
        boxes = geometry.clip_boxes(to_resized.to_original(cells), frame.width, frame.height)
        for group, span in enumerate(np.split(positions, t)):
            first, last = group * step, min((group + 1) * step, len(frames)) - 1
            builder.mark_grid(span, image_index=first, view="frame", grid_shape=(rows, cols), boxes=boxes)
            builder.mark_frames(span, first, last)
            for neighbour in (span[0] - 1, span[-1] + 1):
                if 0 <= neighbour < len(input_ids) and builder.kinds[neighbour] == IMAGE_SEP:
                    builder.image_index[neighbour] = first
        builder.images.extend(ImageGeometry(f.width, f.height, (0.0, 0.0, f.width, f.height)) for f in frames)
        return builder.build()

    # -- the vision tower's own attention ------------------------------------------------------------------------
    def vision_attention(self, calls: dict[int, list[torch.Tensor]], inputs: dict[str, torch.Tensor]) -> np.ndarray:
        """float32 ``(L_v, images, H_v, N_v, N_v)`` over each image's PATCHES in raster order of its
        ``(H′/P) × (W′/P)`` grid (``N_v = H′W′/P²``; patch ``i`` is at ``divmod(i, W′/P)``).

        The tower attends in chunks over its own token order: one call per image (Qwen2-VL, and Qwen2.5-VL's
        full-attention layers) or per window (Qwen2.5-VL's other layers, on window-permuted patches). The chunks are
        joined block-diagonally (exactly 0 between chunks), the window permutation is undone, and the processor's
        block-raster order (each merge block's patches consecutive) becomes raster order.
        """
        grids = inputs["image_grid_thw"].cpu()
        sizes = [int(t * h * w) for t, h, w in grids.tolist()]
        if len(set(sizes)) != 1:
            raise InputError(
                f"the images have {sizes} vision-tower patches: record the vision attention of one image at a time "
                f"(or of images of one size), so that the maps stack"
            )
        order = self._internal_to_raster(grids)  # tower token i → (image, raster patch)
        n_images, n = len(sizes), sizes[0]
        image, patch = order[:, 0], order[:, 1]
        # Chunks never span two images, so every nonzero entry lands in its own image's block.
        rows, cols = torch.nonzero(image[:, None] == image[None, :], as_tuple=True)
        layers = sorted(calls)
        heads = calls[layers[0]][0].shape[1]
        result = torch.zeros(len(layers), n_images, heads, n, n)
        for slot, layer in enumerate(layers):
            chunks = [call[0] for call in calls.pop(layer)]  # (H, n_i, n_i) each, in the tower's order; freed after
            total = sum(chunk.shape[-1] for chunk in chunks)
            if total != n_images * n:
                raise ProcessorMismatchError(f"vision layer {layer} attended over {total} patches, not {n_images * n}")
            joined = torch.zeros(heads, total, total)
            start = 0
            for chunk in chunks:
                end = start + chunk.shape[-1]
                joined[:, start:end, start:end] = chunk
                start = end
            result[slot][image[rows], :, patch[rows], patch[cols]] = joined[:, rows, cols].T
        return result.numpy()

    def _window_index(self, grids: torch.Tensor) -> torch.Tensor | None:
        """Merge blocks in the tower's internal order (None: the processor's order, no windows)."""
        return None

    def _internal_to_raster(self, grids: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` long: for each tower token, its image and its patch index in raster order within that image."""
        m = self.merge_size
        pieces = []
        for image, (t, h, w) in enumerate(grids.tolist()):
            ti, bh, bw, mh, mw = torch.meshgrid(
                *(torch.arange(k) for k in (t, h // m, w // m, m, m)), indexing="ij"
            )  # processor order: time, block row, block column, row in block, column in block
            raster = (ti * h + bh * m + mh) * w + bw * m + mw
            pieces.append(torch.stack([torch.full_like(raster, image), raster], dim=-1).reshape(-1, 2))
        processor_order = torch.cat(pieces)
        blocks = self._window_index(grids)
        if blocks is None:
            return processor_order
        internal = (blocks[:, None] * m * m + torch.arange(m * m)).reshape(-1)  # tower token → processor patch
        return processor_order[internal]

    def analysis_inputs(self, inputs: dict[str, torch.Tensor], n_answer: int) -> dict[str, torch.Tensor]:
        """The processor outputs with ``mm_token_type_ids`` (the prompt's) extended by ``n_answer`` text tokens.

        M-RoPE positions come from ``input_ids`` and ``mm_token_type_ids``; the analysis forward runs prompt +
        answer, so the answer's types (text: 0) are appended and the processor's own values are kept unchanged.
        """
        types = inputs.get("mm_token_type_ids")
        if types is None or n_answer <= 0:
            return inputs
        answer = torch.zeros((*types.shape[:-1], n_answer), dtype=types.dtype, device=types.device)
        return {**inputs, "mm_token_type_ids": torch.cat([types, answer], dim=-1)}


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: Qwen2-VL's layout. Its vision tower window-permutes patches internally but restores raster
    order after the merger, so LLM image positions follow the same block-raster order as Qwen2-VL.

    Example:
        >>> mmviz.trace(model, processor, "chart.png", "What is the trend?")   # doctest: +SKIP
    """

    family = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)

    def _window_index(self, grids: torch.Tensor) -> torch.Tensor | None:
        """The tower's window permutation of merge blocks (transformers' own ``get_vision_window_index``)."""
        from transformers.vision_utils import get_vision_window_index

        vision = self.model.config.vision_config
        index, _ = get_vision_window_index(
            grids,
            spatial_merge_size=self.merge_size,
            window_size=int(vision.window_size),
            patch_size=self.patch_size,
        )
        return index.cpu().long()
