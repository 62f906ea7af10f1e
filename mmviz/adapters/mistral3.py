"""Mistral 3 (``mistral3``, Mistral-Small-3.x with the Pixtral vision tower): a variable-resolution token grid.

``PixtralImageProcessor`` keeps the aspect ratio: an image larger than ``size["longest_edge"]`` is first scaled down
(both sides floored), then EACH side is rounded up to a multiple of ``P′ = patch_size · spatial_merge_size`` (the
processor passes the merged patch size to the image processor) and the image is stretched to that ``W′ × H′``; no
crop, no padding within an image (batches are zero-padded bottom / right, and the tower cuts each image back to its
``image_sizes``). The tower runs all images as one sequence with a block-diagonal mask; the patch merger unfolds
each ``m × m`` block of patches into one token, in raster order over blocks.

The prompt holds, per image, ``H′/P′`` rows of ``[IMG]``×``W′/P′`` each followed by ``[IMG_BREAK]``, the last row's
break replaced by ``[IMG_END]``. The grid is read from the processor's ``image_sizes`` (its OUTPUT).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import IMAGE_NEWLINE, IMAGE_SEP, ImageGeometry, LayoutBuilder, TokenLayout
from mmviz.errors import InputError, ProcessorMismatchError


class Mistral3Adapter(GenerativeAdapter):
    """Mistral 3: one ``H′/P′ × W′/P′`` grid per image (view ``"base"``), ``[IMG_BREAK]`` after each row (kind
    ``image_newline``) and ``[IMG_END]`` closing it (kind ``image_sep``). Boxes are the ``P′``-px cells of the
    stretched image mapped back per axis; together they tile the whole original image.

    Example:
        >>> model = Mistral3ForConditionalGeneration.from_pretrained(                            # doctest: +SKIP
        ...     "mistralai/Mistral-Small-3.1-24B-Instruct-2503")
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")           # doctest: +SKIP
        >>> trace.layout.row(trace.image_positions[0])["grid_shape"]                              # doctest: +SKIP
        (20, 31)
    """

    family = "Mistral 3"
    model_types = ("mistral3",)
    fallback_template = "<s>[INST]{image}{prompt}[/INST]"

    def __init__(self, model: torch.nn.Module, processor: object) -> None:
        super().__init__(model, processor)
        self._last_patches = 0  # vision-tower patches of the largest image of the last encode()

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def merge_size(self) -> int:
        return int(self.model.config.spatial_merge_size)

    @property
    def cell(self) -> int:
        """``P′``: the side of one LLM token's block of patches, in processor pixels."""
        return self.patch_size * self.merge_size

    def _marker_ids(self) -> tuple[int, int]:
        return int(self.processor.image_break_token_id), int(self.processor.image_end_token_id)

    def vision_tokens_per_image(self) -> int:
        """Patches of the largest image of the last :meth:`encode` (else the processor's ``longest_edge`` square)."""
        if self._last_patches:
            return self._last_patches
        longest = int(dict(self.processor.image_processor.size).get("longest_edge", 0))
        return (longest // self.patch_size) ** 2

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        for name, value, model_value in (
            ("patch_size", getattr(self.processor, "patch_size", None), self.patch_size),
            ("spatial_merge_size", getattr(self.processor, "spatial_merge_size", None), self.merge_size),
        ):
            if value is not None and int(value) != model_value:
                raise ProcessorMismatchError(
                    f"the processor's {name} is {value} but the model's is {model_value}; load the processor from "
                    f"the same checkpoint as the model"
                )

    # -- inputs ------------------------------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        longest = int(dict(self.processor.image_processor.size).get("longest_edge", 0) or 0)
        for image in images:
            if longest and max(image.size) > longest and min(image.size) * longest < max(image.size):
                raise InputError(
                    f"the {image.width}×{image.height} image is too elongated for the Pixtral processor: scaled to a "
                    f"longest edge of {longest} px its short side would be 0 px; crop or pad it first"
                )
        inputs = super().encode(images, text)
        grids = self._grids(inputs, len(images))
        self.check_image_token_count(
            inputs["input_ids"],
            int(grids.prod(axis=1).sum()),
            len(images),
            f"image_sizes {inputs['image_sizes'].tolist()} in {self.cell}-px blocks; the processor's patch_size / "
            f"spatial_merge_size do not match the model's",
        )
        self._last_patches = int(grids.prod(axis=1).max()) * self.merge_size**2
        return inputs

    def _grids(self, inputs: dict[str, torch.Tensor], n_images: int) -> np.ndarray:
        """``(rows, cols)`` of LLM tokens per image, from the processor's ``image_sizes`` (``H′, W′``)."""
        sizes = inputs.get("image_sizes")
        if sizes is None:
            raise ProcessorMismatchError(
                "the processor output has no image_sizes; pass the model's PixtralProcessor "
                "(AutoProcessor.from_pretrained(<the model's checkpoint>))"
            )
        sizes = np.asarray(torch.as_tensor(sizes).cpu(), dtype=np.int64).reshape(-1, 2)
        if len(sizes) != n_images:
            raise ProcessorMismatchError(f"image_sizes has {len(sizes)} rows for {n_images} image(s)")
        if (sizes % self.cell).any():
            raise ProcessorMismatchError(
                f"image_sizes {sizes.tolist()} are not multiples of patch_size · spatial_merge_size = {self.cell}; "
                f"the processor's patch size does not match the model's"
            )
        return sizes // self.cell

    # -- layout ------------------------------------------------------------------------------------------------
    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        grids = self._grids(inputs, len(images))
        positions = np.flatnonzero(input_ids == self.image_token_id)
        counts = grids.prod(axis=1)
        if len(positions) != counts.sum():
            raise ProcessorMismatchError(
                f"the sequence holds {len(positions)} image tokens but image_sizes {inputs['image_sizes'].tolist()} "
                f"need {int(counts.sum())}; pass the inputs the processor made for these images"
            )
        builder = LayoutBuilder(self.display_tokens(input_ids), self.special_mask(input_ids))
        brk, end = self._marker_ids()
        for index, (span, (rows, cols), image) in enumerate(
            zip(np.split(positions, np.cumsum(counts)[:-1]), grids, images, strict=True)
        ):
            rows, cols = int(rows), int(cols)
            # the image's region: rows of cols [IMG] + one break / end token each
            region = np.arange(span[0], span[0] + rows * (cols + 1))
            table = input_ids[region].reshape(rows, cols + 1) if region[-1] < len(input_ids) else None
            if table is None or (table[:, :cols] != self.image_token_id).any() or table[-1, -1] != end:
                raise ProcessorMismatchError(
                    f"image {index}'s tokens are not {rows} rows of {cols} [IMG] closed by [IMG_BREAK] / [IMG_END]; "
                    f"pass the prompt with one placeholder per image and let the processor expand it"
                )
            if rows > 1 and (table[:-1, -1] != brk).any():
                raise ProcessorMismatchError(f"image {index}'s rows do not end with [IMG_BREAK]")
            cells = region.reshape(rows, cols + 1)
            to_resized = geometry.resize(image.width, image.height, cols * self.cell, rows * self.cell)
            boxes = geometry.grid_boxes(rows, cols, self.cell, self.cell)
            boxes = geometry.clip_boxes(to_resized.to_original(boxes), image.width, image.height)
            builder.mark_grid(
                cells[:, :cols].ravel(), image_index=index, view="base", grid_shape=(rows, cols), boxes=boxes
            )
            markers = cells[:, cols]
            builder.kinds[markers[:-1]] = IMAGE_NEWLINE
            builder.kinds[markers[-1]] = IMAGE_SEP
            builder.image_index[markers] = index
            builder.view[markers[:-1]] = builder.view[cells[0, 0]]
            builder.images.append(ImageGeometry(image.width, image.height, (0.0, 0.0, image.width, image.height)))
        return builder.build()

    # -- the vision tower's own attention ------------------------------------------------------------------------
    def vision_attention(self, calls: dict[int, list[torch.Tensor]], inputs: dict[str, torch.Tensor]) -> np.ndarray:
        """float32 ``(L_v, images, H_v, N_v, N_v)`` over each image's patches in raster order of its
        ``(H′/P) × (W′/P)`` grid: the tower attends over all images as one sequence with a block-diagonal mask, so
        each image's block is cut out (the entries between images are exactly 0)."""
        sizes = [int(h // self.patch_size) * int(w // self.patch_size) for h, w in inputs["image_sizes"].tolist()]
        if len(set(sizes)) != 1:
            raise InputError(
                f"the images have {sizes} vision-tower patches: record the vision attention of one image at a time "
                f"(or of images of one size), so that the maps stack"
            )
        layers, n = sorted(calls), sizes[0]
        starts = np.cumsum([0, *sizes[:-1]])
        result = None
        for slot, layer in enumerate(layers):
            (call,) = calls.pop(layer)  # (1, H, N, N): every image in one sequence
            if result is None:
                result = torch.zeros(len(layers), len(sizes), call.shape[1], n, n)
            for image, start in enumerate(starts):
                result[slot, image] = call[0, :, start : start + n, start : start + n]
        return np.zeros((0, len(sizes), 0, n, n), np.float32) if result is None else result.numpy()
