"""Gemma 3 (``model_type == "gemma3"``): SigLIP stretched to a square, patches average-pooled to a small grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import IMAGE_SEP, TokenLayout
from mmviz.errors import ProcessorMismatchError


class Gemma3Adapter(GenerativeAdapter):
    """Gemma 3: each image is ``<start_of_image>`` + ``mm_tokens_per_image`` soft tokens + ``<end_of_image>``.

    The image processor stretches the image to ``S × S`` (the vision ``image_size``); SigLIP cuts it into
    ``S/P × S/P`` patches and the projector average-pools them ``k × k`` into a ``G × G`` grid,
    ``G = √mm_tokens_per_image`` and ``k = (S/P) // G``. Token ``j`` of an image covers the ``(k·P)``-px cell
    ``divmod(j, G)`` of the canvas, scaled back per axis. The markers get kind ``image_sep`` and no box; the
    ``\\n\\n`` around them are text. The prompt goes through the chat template (``<start_of_turn>user ...``), whose
    ``<start_of_image>`` placeholder the processor expands.

    Attention is bidirectional inside each image block (``token_type_ids == 1``); the answer is text (0), which
    :meth:`analysis_inputs` appends. ``Gemma3ForConditionalGeneration`` applies no final logit soft cap although
    its text config names one (only the text-only ``Gemma3ForCausalLM`` does), so the lens applies none either.

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> trace.layout.row(trace.image_positions[0])["grid_shape"]                       # doctest: +SKIP
        (16, 16)
    """

    family = "Gemma 3"
    model_types = ("gemma3",)
    fallback_template = "<start_of_turn>user\n{image}{prompt}<end_of_turn>\n<start_of_turn>model\n"

    # -- sizes, read from the loaded config ----------------------------------------------------------------------
    @property
    def final_logit_softcap(self) -> float | None:
        return None  # the multimodal head does not cap (measured by the family test with large logits)

    @property
    def marker_ids(self) -> tuple[int, int]:
        """``<start_of_image>`` and ``<end_of_image>`` ids."""
        config = self.model.config
        return int(config.boi_token_id), int(config.eoi_token_id)

    @property
    def tokens_per_image(self) -> int:
        """Soft tokens per image (``mm_tokens_per_image``)."""
        return int(self.model.config.mm_tokens_per_image)

    @property
    def grid_size(self) -> int:
        """``G``: tokens per side of the pooled grid."""
        tokens = self.tokens_per_image
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ProcessorMismatchError(f"{tokens} soft tokens per image are not a square grid of tokens")
        return side

    @property
    def canvas_size(self) -> int:
        """``S``: the side of the square canvas the vision tower takes (the vision ``image_size``)."""
        return int(self.model.config.vision_config.image_size)

    @property
    def cell_size(self) -> float:
        """Canvas pixels per token side: ``k·P``."""
        return float(self.pool_size * int(self.model.config.vision_config.patch_size))

    @property
    def pool_size(self) -> int:
        """``k``: patches per side averaged into one token."""
        vision = self.model.config.vision_config
        return (int(vision.image_size) // int(vision.patch_size)) // self.grid_size

    def vision_tokens_per_image(self) -> int:
        vision = self.model.config.vision_config
        return (int(vision.image_size) // int(vision.patch_size)) ** 2

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        soft = getattr(self.tokenizer, "image_token", None)
        soft_id = None if soft is None else self.tokenizer.convert_tokens_to_ids(soft)
        boi = getattr(self.tokenizer, "boi_token", None) or self.image_token
        boi_id = self.tokenizer.convert_tokens_to_ids(boi)
        if soft_id != self.image_token_id or boi_id != self.marker_ids[0]:
            raise ProcessorMismatchError(
                f"the processor's image tokens ({boi!r} id {boi_id}, {soft!r} id {soft_id}) are not the "
                f"model's (ids {self.marker_ids[0]} and {self.image_token_id}); load the processor from the same "
                f"checkpoint as the model"
            )
        self.check_vocabulary()
        seq_length = int(getattr(self.processor, "image_seq_length", self.tokens_per_image))
        if seq_length != self.tokens_per_image:
            raise ProcessorMismatchError(
                f"the processor expands each image into {seq_length} tokens but the model gives "
                f"{self.tokens_per_image} per image; load the processor from the same checkpoint as the model"
            )

    # -- prompt and inputs -------------------------------------------------------------------------------------
    def format_prompt(self, prompt: str, n_images: int) -> str:
        """The chat template (or Gemma's ``<start_of_turn>`` format) with one ``<start_of_image>`` per image."""
        if self.image_token in prompt or getattr(self.processor, "chat_template", None):
            return super().format_prompt(prompt, n_images)
        bos = self.tokenizer.bos_token or ""
        return bos + self.fallback_template.format(image=self.image_token * n_images, prompt=prompt)

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        """Run the processor; a prompt that already starts with ``<bos>`` (Gemma's chat template writes it) gets no
        second one, as in ``processor.apply_chat_template(..., tokenize=True)``."""
        self.check_placeholders(text, len(images))
        bos = self.tokenizer.bos_token
        options = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
        inputs = dict(self.processor(images=list(images), text=text, return_tensors="pt", **options))
        self.check_canvas(inputs["pixel_values"], self.canvas_size, self.canvas_hint)
        n_views = int(inputs["pixel_values"].shape[0])
        if n_views != len(images):
            raise ProcessorMismatchError(
                f"the processor made {n_views} image views for {len(images)} image(s) (Pan & Scan crops); mmviz lays "
                f"out one view per image for Gemma 3: pass a processor with do_pan_and_scan=False"
            )
        self.check_image_token_count(
            inputs["input_ids"],
            self.tokens_per_image * len(images),
            len(images),
            "the processor's image_seq_length does not match the model's soft tokens per image",
        )
        return inputs

    def analysis_inputs(self, inputs: dict[str, torch.Tensor], n_answer: int) -> dict[str, torch.Tensor]:
        """``token_type_ids`` extended with 0 (text) over the answer: answer tokens are causal text."""
        return self.extend_token_type_ids(inputs, n_answer, fill=0)

    # -- layout ------------------------------------------------------------------------------------------------
    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        is_image = input_ids == self.image_token_id
        builder = self.layout_builder(input_ids)
        g = self.grid_size
        starts = np.flatnonzero(input_ids == self.marker_ids[0])
        ends = np.flatnonzero(input_ids == self.marker_ids[1])
        if not (len(starts) == len(ends) == len(images)):
            raise ProcessorMismatchError(
                f"found {len(starts)} <start_of_image> and {len(ends)} <end_of_image> markers for {len(images)} "
                f"image(s); encode the prompt with this model's processor"
            )
        for index, (start, end, image) in enumerate(zip(starts, ends, images, strict=True)):
            span = np.arange(start + 1, end)
            if len(span) != g * g or not is_image[span].all():
                raise ProcessorMismatchError(
                    f"image {index}'s block holds {len(span)} tokens between its markers, expected {g * g} image "
                    f"tokens (soft tokens per image)"
                )
            boxes, covered = self.square_grid(image, g, self.cell_size)
            builder.mark_grid(span, image_index=index, view="base", grid_shape=(g, g), boxes=boxes)
            for marker in (start, end):
                builder.kinds[marker] = IMAGE_SEP
                builder.image_index[marker] = index
            builder.images.append(covered)
        if int(is_image.sum()) != g * g * len(images):
            raise ProcessorMismatchError("image tokens were found outside the <start_of_image> … <end_of_image> blocks")
        return builder.build()

    canvas_hint: ClassVar[str] = " (Gemma 3 checkpoints use 896)"

    def canvas_map(self, width: int, height: int) -> geometry.Affine:
        """Original pixels → the processor's ``S × S`` canvas: a stretch (each axis resized on its own)."""
        ip = self.processor.image_processor
        if not getattr(ip, "do_resize", True):
            return geometry.Affine()
        size = dict(ip.size)
        return geometry.resize(width, height, int(size["width"]), int(size["height"]))
