"""The base of CLIP-like dual encoders: a text tower and a vision tower that meet only in a shared embedding space.

They generate nothing, so a dual-encoder trace (:mod:`mmviz.tracing.dual_encoder`) has no answer: its "sequence" is
the caption's tokens followed by the vision tower's own tokens (CLIP: ``[CLS]`` then the patches; SigLIP: the
patches), its attention rows are the vision tower's self-attention, and its map is the patch–text similarity
(:mod:`mmviz.methods.similarity`). The families themselves are in :mod:`mmviz.adapters.clip`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.base import Adapter, ModelShape
from mmviz.adapters.layout import SPECIAL, ImageGeometry, LayoutBuilder, TokenLayout
from mmviz.errors import InputError, ProcessorMismatchError, UnsupportedModelError


class DualEncoderAdapter(Adapter):
    """Shared base of CLIP-like dual encoders (``model.text_model`` + ``model.vision_model``); not registered itself.

    The layout of a dual-encoder trace is the caption's tokens (kinds ``text`` / ``special``) followed by the
    vision tower's tokens: an optional ``[CLS]`` (kind ``special``, no box) and one ``image`` token per patch
    (view ``"base"``, boxes in ORIGINAL pixels). :meth:`layout` therefore takes the caption's ids and returns a
    longer table than ``input_ids``.

    Example:
        >>> adapter = mmviz.adapters.adapter_for(clip_model, clip_processor)      # doctest: +SKIP
        >>> isinstance(adapter, DualEncoderAdapter), adapter.vision_tokens_per_image()   # doctest: +SKIP
        (True, 50)
    """

    has_cls: ClassVar[bool] = False
    """The vision tower puts a class token before its patches."""
    match_probability: ClassVar[str] = "softmax"
    """How the model turns image–text logits into probabilities: ``"softmax"`` over captions or ``"sigmoid"``."""
    pad_captions: ClassVar[bool] = False
    """Pad every caption to the text tower's full length (SigLIP was trained that way)."""
    patch_token: ClassVar[str] = "<patch>"
    """Display string of a patch position."""
    fallback_template = "{prompt}"

    # -- model structure -------------------------------------------------------------------------------------
    @property
    def vision_config(self) -> Any:
        return getattr(self.model.config, self.vision_config_key)

    @property
    def num_layers(self) -> int:
        """Layers of the vision tower (the attention a dual-encoder trace records)."""
        return int(self.vision_config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.vision_config.num_attention_heads)

    @property
    def patch_size(self) -> int:
        return int(self.vision_config.patch_size)

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def max_caption_tokens(self) -> int:
        """Longest caption (special tokens included) the text tower's position embeddings take."""
        return int(self.text_config.max_position_embeddings)

    def vision_tokens_per_image(self) -> int:
        return self.grid_size**2 + int(self.has_cls)

    def model_shape(self, num_images: int) -> ModelShape:
        return ModelShape(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_size=int(self.vision_config.hidden_size),
            vision_layers=self.num_layers,
            vision_heads=self.num_heads,
            vision_tokens=self.vision_tokens_per_image(),
            num_images=num_images,
        )

    def vision_model(self) -> torch.nn.Module:
        return self.model.vision_model

    def vision_layers(self) -> Sequence[torch.nn.Module]:
        """The vision tower's encoder layers, in order."""
        return self.vision_model().encoder.layers

    # -- prompt and inputs -----------------------------------------------------------------------------------
    def format_prompt(self, prompt: str, n_images: int) -> str:
        """The caption as is (dual encoders have no chat template); one image per caption."""
        if n_images != 1:
            raise InputError(
                f"{self.family} scores one image against a caption, got {n_images} images; trace each image on its "
                f"own, or compare captions with mmviz.methods.similarity.similarity(model, processor, image, texts)"
            )
        return prompt

    def caption_kwargs(self) -> dict[str, Any]:
        """Tokenizer options the model was trained with (SigLIP: every caption padded to the full length)."""
        if self.pad_captions:
            return {"padding": "max_length", "max_length": self.max_caption_tokens}
        return {}

    def _check_caption(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"a caption must be a non-empty string, not {text!r}")
        n_tokens = len(self.tokenizer(text)["input_ids"])
        if n_tokens > self.max_caption_tokens:
            raise InputError(
                f"the caption has {n_tokens} tokens but {self.family}'s text tower takes at most "
                f"{self.max_caption_tokens} (special tokens included); shorten it"
            )

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        """Run the processor on one image and one caption (the caption alone is the text tower's input)."""
        self.format_prompt(text, len(images))
        self._check_caption(text)
        inputs = dict(self.processor(images=list(images), text=text, return_tensors="pt", **self.caption_kwargs()))
        self._check_pixels(inputs, len(images))
        return inputs

    def encode_captions(self, image: Image.Image, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the processor on one image and several captions (a batch of captions, padded)."""
        for text in texts:
            self._check_caption(text)
        options = self.caption_kwargs() or {"padding": True}
        inputs = dict(self.processor(images=[image], text=list(texts), return_tensors="pt", **options))
        self._check_pixels(inputs, 1)
        return inputs

    def _check_pixels(self, inputs: dict[str, torch.Tensor], n_images: int) -> None:
        pixels = inputs.get("pixel_values")
        if pixels is None or pixels.ndim != 4 or pixels.shape[0] != n_images:
            shape = None if pixels is None else tuple(pixels.shape)
            raise ProcessorMismatchError(
                f"the processor returned pixel_values of shape {shape} for {n_images} image(s); pass the model's "
                f"own processor (AutoProcessor.from_pretrained(<the model's checkpoint>))"
            )
        canvas = tuple(int(v) for v in pixels.shape[-2:])
        if canvas != (self.image_size, self.image_size):
            raise ProcessorMismatchError(
                f"the processor makes {canvas[1]}×{canvas[0]} pixel inputs but the vision tower takes "
                f"{self.image_size}×{self.image_size}; load the processor from the same checkpoint as the model"
            )

    # -- family knowledge --------------------------------------------------------------------------------------
    def check(self) -> None:
        for part in ("text_model", "vision_model"):
            if not hasattr(self.model, part):
                raise UnsupportedModelError(
                    f"{type(self.model).__name__} has no {part}; mmviz supports the full {self.family} model "
                    f"(text and vision towers), e.g. AutoModel.from_pretrained(<checkpoint>)"
                )
        vocab = int(self.text_config.vocab_size)
        if len(self.tokenizer) > vocab:
            raise ProcessorMismatchError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the text tower's vocabulary has {vocab}; "
                f"load the processor from the same checkpoint as the model"
            )

    def pooled_position(self, caption_ids: np.ndarray) -> int:
        """Position of the caption token whose final state the text tower pools into the caption embedding."""
        raise NotImplementedError

    def patch_source(self) -> torch.nn.Module:
        """The module whose input :meth:`patch_embeddings` reads (captured by a forward pre-hook)."""
        raise NotImplementedError

    def patch_embeddings(self, source: torch.Tensor) -> torch.Tensor:
        """``(B, G², D)`` MaskCLIP-style embeddings of the patches in the shared space, from :meth:`patch_source`'s
        input ``source`` (not normalised)."""
        raise NotImplementedError

    def match_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's own reading of its image–text logits over captions (last axis)."""
        return torch.sigmoid(logits) if self.match_probability == "sigmoid" else torch.softmax(logits, dim=-1)

    def logit_scale_and_bias(self) -> tuple[float, float | None]:
        """``exp(logit_scale)`` and the logit bias (None without one): ``logit = scale · cosine + bias``."""
        bias = getattr(self.model, "logit_bias", None)
        scale = float(self.model.logit_scale.detach().exp())
        return scale, None if bias is None else float(bias.detach())

    def canvas_map(self, width: int, height: int) -> geometry.Affine:
        """Original pixels → the processor's square canvas, replaying its resize (and centre crop)."""
        ip = self.processor.image_processor
        transform = geometry.Affine()
        if getattr(ip, "do_resize", True):
            size = dict(ip.size)
            if "shortest_edge" in size:
                new_w, new_h = geometry.shortest_edge_size(width, height, int(size["shortest_edge"]))
            elif "height" in size and "width" in size:
                new_w, new_h = int(size["width"]), int(size["height"])
            else:
                raise ProcessorMismatchError(
                    f"mmviz cannot replay the image processor's size {size}; use the model's own processor"
                )
            transform, width, height = transform.then(geometry.resize(width, height, new_w, new_h)), new_w, new_h
        if getattr(ip, "do_center_crop", False):
            crop = dict(ip.crop_size)
            transform = transform.then(geometry.center_crop(width, height, int(crop["width"]), int(crop["height"])))
        return transform

    def patch_boxes(self, image: Image.Image) -> tuple[np.ndarray, ImageGeometry]:
        """``(G², 4)`` patch boxes in ORIGINAL pixels (raster order) and the image's covered region."""
        return self.square_grid(image, self.grid_size, self.patch_size)

    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        """Caption tokens (``input_ids``), then the vision tower's tokens for the one image."""
        if len(images) != 1:
            raise InputError(f"{self.family} takes one image per caption, got {len(images)}")
        caption = np.asarray(input_ids)
        g = self.grid_size
        pixels = inputs.get("pixel_values")
        if pixels is not None:
            made = (int(pixels.shape[-2]) // self.patch_size) * (int(pixels.shape[-1]) // self.patch_size)
            if made != g * g:
                raise ProcessorMismatchError(
                    f"the processor's pixel_values make {made} patches but the layout has {g * g} "
                    f"({g}×{g} of {self.patch_size} px); load the processor from the same checkpoint as the model"
                )
        n_vision = self.vision_tokens_per_image()
        tokens = self.display_tokens(caption) + (["[CLS]"] if self.has_cls else []) + [self.patch_token] * (g * g)
        special = np.concatenate([self.special_mask(caption), np.ones(n_vision, dtype=bool)])
        builder = LayoutBuilder(tokens, special)
        start = len(caption)
        if self.has_cls:
            builder.kinds[start] = SPECIAL
            builder.image_index[start] = 0
            start += 1
        boxes, covered = self.patch_boxes(images[0])
        builder.mark_grid(np.arange(start, start + g * g), image_index=0, view="base", grid_shape=(g, g), boxes=boxes)
        builder.images.append(covered)
        return builder.build()
