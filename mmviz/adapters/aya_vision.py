"""Aya Vision (``aya_vision``): SigLIP tiles + a global thumbnail, pixel-shuffled, on a Cohere 2 decoder.

The image processor is InternVL's (``GotOcr2ImageProcessor`` with ``crop_to_patches``: the ``cols × rows`` grid
closest to the image's aspect ratio among ``min_patches … max_patches`` tiles, tiles cut row-major from the image
stretched to ``cols·T × rows·T``, then a thumbnail when there is more than one tile), so the tile geometry is
reused from :mod:`mmviz.adapters.internvl`. The vision tower (SigLIP, no class token: ``vision_feature_select_strategy
= "full"``) runs on every tile; the projector's pixel shuffle (``downsample_factor`` 2) makes ``G² = (T / (P·2))²``
tokens per tile in raster order over 2×2 patch blocks (G = 13 for 364-px tiles of 14-px patches).

The prompt holds, per image, ``<|START_OF_IMG|>``, then per tile ``TILE_k`` + ``<|IMG_PATCH|>``×G² (k = 1 … n),
then ``TILE_GLOBAL`` + ``<|IMG_PATCH|>``×G² (the thumbnail, or the whole image when it fits one tile), then
``<|END_OF_IMG|>``. ``TILE_k`` is plain text in the tokenizer (several tokens); everything between the start and end
markers that is not an image token gets kind ``image_sep``.

The head multiplies the logits by ``text_config.logit_scale`` (Cohere), which :meth:`AyaVisionAdapter.head_logits`
applies too.
"""

from __future__ import annotations

import numpy as np
import torch

from mmviz.adapters.internvl import InternVLAdapter
from mmviz.errors import ProcessorMismatchError


class AyaVisionAdapter(InternVLAdapter):
    """Aya Vision: InternVL's tiles (view ``"tile"``, each its own G×G grid) + thumbnail (``"global"``), or a single
    ``"base"`` view for an image that fits one tile; ``TILE_k`` / ``TILE_GLOBAL`` tags and the image markers are
    ``image_sep``.

    Example:
        >>> model = AyaVisionForConditionalGeneration.from_pretrained("CohereLabs/aya-vision-8b")  # doctest: +SKIP
        >>> processor = AutoProcessor.from_pretrained("CohereLabs/aya-vision-8b")                # doctest: +SKIP
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")            # doctest: +SKIP
        >>> trace.layout.row(trace.image_positions[0])["grid_shape"]                               # doctest: +SKIP
        (13, 13)
    """

    family = "Aya Vision"
    model_types = ("aya_vision",)
    fallback_template = (
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{image}{prompt}<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    )

    @property
    def tokens_per_side(self) -> int:
        """``G``: tokens per side of one tile after the projector's pixel shuffle."""
        return self.tile_size // self.patch_size // int(self.model.config.downsample_factor)

    def vision_tokens_per_image(self) -> int:
        """Patches of one tile (SigLIP has no class token)."""
        return (self.tile_size // self.patch_size) ** 2

    def _marker_ids(self) -> list[int]:
        convert = self.tokenizer.convert_tokens_to_ids
        return [int(convert(self.processor.start_of_img_token)), int(convert(self.processor.end_of_img_token))]

    # -- tokens: the prompt's placeholder is ``<image>``, the positions the model fills are ``<|IMG_PATCH|>`` -------
    @property
    def placeholder(self) -> str:
        """What the prompt holds once per image (``<image>``); the processor expands it."""
        return str(self.processor.image_token)

    @property
    def image_token(self) -> str:
        """The token at the positions the model fills with image features (``<|IMG_PATCH|>``), not the placeholder."""
        return str(self.processor.img_patch_token)

    def format_prompt(self, prompt: str, n_images: int) -> str:
        """``prompt`` as is when it holds ``<image>`` placeholders, else the chat template (or Aya's turn format)."""
        if self.placeholder in prompt:
            return prompt
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        return self.fallback_template.format(image=self.placeholder * n_images, prompt=prompt)

    def check_placeholders(self, text: str, n_images: int) -> None:
        """The prompt must hold one ``<image>`` per image (and no pre-expanded ``<|IMG_PATCH|>``)."""
        found = text.count(self.placeholder)
        if found != n_images or self.image_token in text:
            raise ProcessorMismatchError(
                f"the prompt has {found} image placeholders ({self.placeholder!r}) for {n_images} image(s)"
                f"{' and pre-expanded ' + repr(self.image_token) + ' tokens' if self.image_token in text else ''}; "
                f"use one placeholder per image or none (mmviz then adds them)"
            )

    def head_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """The unembedding times Cohere's ``logit_scale`` (as ``AyaVisionForConditionalGeneration``)."""
        return self.unembedding()(normed) * float(self.text_config.logit_scale)

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        processor = self.processor
        img_size = int(getattr(processor, "img_size", self.tile_size))
        patch = int(getattr(processor, "patch_size", self.patch_size * int(self.model.config.downsample_factor)))
        if img_size != self.tile_size or img_size // patch != self.tokens_per_side:
            raise ProcessorMismatchError(
                f"the processor counts {(img_size // patch) ** 2} <|IMG_PATCH|> tokens per {img_size}-px tile but the "
                f"model makes {self.tokens_per_side**2} per {self.tile_size}-px tile; load the processor from the same "
                f"checkpoint as the model"
            )

    # -- layout ------------------------------------------------------------------------------------------------
    def image_spans(self, input_ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: ``<|START_OF_IMG|> … <|END_OF_IMG|>`` and the ``<|IMG_PATCH|>`` tokens inside (all tiles)."""
        start, end = self._marker_ids()
        starts, ends = np.flatnonzero(input_ids == start), np.flatnonzero(input_ids == end)
        if len(starts) != len(ends) or np.any(ends <= starts) or np.any(starts[1:] <= ends[:-1]):
            raise ProcessorMismatchError(
                f"the image markers are unbalanced ({len(starts)} <|START_OF_IMG|>, {len(ends)} <|END_OF_IMG|>); "
                f"pass the prompt with one placeholder per image and let the processor expand it"
            )
        is_image = input_ids == self.image_token_id
        spans = []
        for first, last in zip(starts, ends, strict=True):
            region = np.arange(first, last + 1)
            spans.append((region, region[is_image[region]]))
        if sum(len(run) for _, run in spans) != int(is_image.sum()):
            raise ProcessorMismatchError(
                "some <|IMG_PATCH|> tokens lie outside the <|START_OF_IMG|> … <|END_OF_IMG|> spans"
            )
        return spans
