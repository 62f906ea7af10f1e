"""PaliGemma / PaliGemma 2 (``model_type == "paligemma"``): SigLIP stretched to a square, one token per patch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import TokenLayout
from mmviz.errors import ProcessorMismatchError


class PaliGemmaAdapter(GenerativeAdapter):
    """PaliGemma: ``<image>``×G² per image, then ``<bos>`` + prompt + ``\\n`` (the processor adds both itself).

    ``SiglipImageProcessor`` stretches every image to ``S × S`` (no aspect kept, no crop); the SigLIP tower has no
    CLS, so token ``k`` of an image is the patch ``divmod(k, G)``, ``G = S / P``, and its box is that cell scaled
    back per axis. There is no chat template: the prompt is the image placeholders followed by the question.

    The prefix (image + prompt, ``token_type_ids == 0``) attends bidirectionally; generated tokens are the causal
    suffix (``token_type_ids == 1``, as ``generate`` gives them), which :meth:`analysis_inputs` replays for the
    analysis forward.

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "caption en")        # doctest: +SKIP
        >>> trace.layout.row(trace.image_positions[0])["grid_shape"]              # doctest: +SKIP
        (16, 16)
    """

    family = "PaliGemma"
    model_types = ("paligemma",)
    fallback_template = "{image}{prompt}"

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def grid_size(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def vision_tokens_per_image(self) -> int:
        return self.grid_size**2

    def format_prompt(self, prompt: str, n_images: int) -> str:
        """``<image>``×n + the prompt; the processor itself inserts ``<bos>`` after the images and appends ``\\n``."""
        if self.image_token in prompt or getattr(self.processor, "chat_template", None):
            return super().format_prompt(prompt, n_images)
        return self.fallback_template.format(image=self.image_token * n_images, prompt=prompt)

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        inputs = super().encode(images, text)
        inputs.pop("labels", None)  # training targets the processor derives from token_type_ids; not a model input
        size = int(self.model.config.vision_config.image_size)
        self.check_canvas(inputs["pixel_values"], size)
        self.check_image_token_count(
            inputs["input_ids"],
            self.grid_size**2 * len(images),
            len(images),
            f"{self.grid_size}×{self.grid_size} per image; the processor's image_seq_length does not match the tower",
        )
        return inputs

    def analysis_inputs(self, inputs: dict[str, torch.Tensor], n_answer: int) -> dict[str, torch.Tensor]:
        """``token_type_ids`` extended with 1 (causal suffix) over the answer, the value ``generate`` appends."""
        return self.extend_token_type_ids(inputs, n_answer, fill=1)

    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        is_image = input_ids == self.image_token_id
        builder = self.layout_builder(input_ids, self.image_token)
        g = self.grid_size
        positions = np.flatnonzero(is_image)
        if len(positions) != g * g * len(images):
            raise ProcessorMismatchError(
                f"found {len(positions)} image tokens for {len(images)} image(s) of {g}×{g} tokens each; "
                f"encode the prompt with this model's processor"
            )
        for index, image in enumerate(images):
            boxes, covered = self.square_grid(image, g, self.patch_size)
            span = positions[index * g * g : (index + 1) * g * g]
            builder.mark_grid(span, image_index=index, view="base", grid_shape=(g, g), boxes=boxes)
            builder.images.append(covered)
        return builder.build()

    def canvas_map(self, width: int, height: int) -> geometry.Affine:
        """Original pixels → the processor's ``S × S`` canvas: a stretch (SigLIP resizes each axis on its own)."""
        ip = self.processor.image_processor
        if not getattr(ip, "do_resize", True):
            return geometry.Affine()
        size = dict(ip.size)
        return geometry.resize(width, height, int(size["width"]), int(size["height"]))
