"""CLIP (``model_type == "clip"``) and SigLIP (``"siglip"``): dual encoders, a text tower and a vision tower that meet
only in a shared embedding space.

They generate nothing, so a dual-encoder trace (:mod:`mmviz.dual_encoder`) has no answer: its "sequence" is the
caption's tokens followed by the vision tower's own tokens (CLIP: ``[CLS]`` then the patches; SigLIP: the patches),
its attention rows are the vision tower's self-attention, and its map is the patch–text similarity
(:mod:`mmviz.methods.similarity`). Everything that depends on the family (geometry, pooling, the MaskCLIP path)
lives here.
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
from mmviz.adapters.tokens import _byte_level_decoder
from mmviz.errors import InputError, ProcessorMismatchError, UnsupportedModelError


class DualEncoderAdapter(Adapter):
    """Shared base of CLIP-like dual encoders (``model.text_model`` + ``model.vision_model``); not registered itself.

    The layout of a dual-encoder trace is the caption's tokens (kinds ``text`` / ``special``) followed by the
    vision tower's tokens: an optional ``[CLS]`` (kind ``special``, no box) and one ``image`` token per patch
    (view ``"base"``, boxes in ORIGINAL pixels). :meth:`layout` therefore takes the caption's ids and returns a
    longer table than ``input_ids``.

    Example:
        >>> adapter = mmviz.adapters.adapter_for(clip_model, clip_processor)      # doctest: +SKIP
        >>> adapter.dual_encoder, adapter.vision_tokens_per_image()              # doctest: +SKIP
        (True, 50)
    """

    dual_encoder: ClassVar[bool] = True
    """Marks the adapter for :func:`mmviz.trace`'s dual-encoder path (no generation, no language model)."""
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

    def _no_language_model(self) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.family} is a dual encoder: it has no language model and generates nothing, so methods that "
            f"explain generated tokens do not apply; use the trace's 'similarity' map and its vision-tower "
            f"attention, or mmviz.methods.similarity.similarity(...)"
        )

    def language_model(self) -> torch.nn.Module:
        raise self._no_language_model()

    def decoder_layers(self) -> Sequence[torch.nn.Module]:
        raise self._no_language_model()

    def final_norm(self) -> torch.nn.Module:
        raise self._no_language_model()

    def unembedding(self) -> torch.nn.Module:
        raise self._no_language_model()

    def lens_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise self._no_language_model()

    # -- prompt and inputs -----------------------------------------------------------------------------------
    @property
    def image_token(self) -> str:
        raise AttributeError(
            f"{self.family} is a dual encoder: its caption holds no image placeholder (the image goes through the "
            f"vision tower on its own)"
        )

    @property
    def image_token_id(self) -> int:
        raise AttributeError(f"{self.family} is a dual encoder: its caption holds no image placeholder")

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
        g, patch = self.grid_size, self.patch_size
        to_canvas = self.canvas_map(image.width, image.height)
        boxes = geometry.clip_boxes(
            to_canvas.to_original(geometry.grid_boxes(g, g, patch, patch)), image.width, image.height
        )
        covered = to_canvas.to_original(np.array([[0, 0, g * patch, g * patch]], dtype=np.float64))[0]
        covered = np.clip(covered, 0, [image.width, image.height, image.width, image.height])
        return boxes, ImageGeometry(image.width, image.height, tuple(float(v) for v in covered))

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


class CLIPAdapter(DualEncoderAdapter):
    """CLIP: causal text tower pooled at its end-of-text token; ViT with ``[CLS]`` + G² patches (G = S/P).

    ``CLIPImageProcessor`` resizes the shortest edge to S and centre-crops S×S (layouts.md §3.1), so pixels outside
    the central square reach no token. The patch–text similarity follows MaskCLIP: the last block is run as if each
    patch attended only to itself (its own value vector → ``out_proj`` → residual → MLP, as MaskCLIP's reference
    code does), then ``post_layernorm`` and ``visual_projection``.

    Example:
        >>> trace = mmviz.trace(clip_model, clip_processor, "cat.png", "a photo of a cat")   # doctest: +SKIP
        >>> trace.maps["similarity"].info["logit_per_image"]                                # doctest: +SKIP
    """

    family = "CLIP"
    model_types = ("clip",)
    has_cls = True
    match_probability = "softmax"

    def check(self) -> None:
        super().check()
        eos = self.text_config.eos_token_id
        if eos != 2 and eos != self.tokenizer.eos_token_id:  # 2: legacy configs pool at the largest id instead
            raise ProcessorMismatchError(
                f"the text tower pools at token id {eos} but the tokenizer's end-of-text token "
                f"{self.tokenizer.eos_token!r} has id {self.tokenizer.eos_token_id}; load the processor from the "
                f"same checkpoint as the model"
            )

    def pooled_position(self, caption_ids: np.ndarray) -> int:
        """The first end-of-text token (``CLIPTextModel``'s rule; legacy configs with ``eos_token_id == 2``
        pool at the largest id, as transformers does)."""
        ids = np.asarray(caption_ids)
        eos = self.text_config.eos_token_id
        if eos == 2:
            return int(np.argmax(ids))
        hits = np.flatnonzero(ids == eos)
        if len(hits) == 0:
            raise ProcessorMismatchError(
                f"the caption holds no end-of-text token (id {eos}) for CLIP's text tower to pool; use the "
                f"model's own processor, which appends it"
            )
        return int(hits[0])

    def display_tokens(self, ids: Sequence[int]) -> list[str]:
        """CLIP's BPE marks a word's LAST piece with ``</w>``; shown as a space before the next word."""
        pieces = self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        special = set(getattr(self.tokenizer, "all_special_tokens", []))
        decoder = _byte_level_decoder()
        shown, space = [], False
        for piece in pieces:
            if piece is None or piece in special:
                shown.append("�" if piece is None else piece)
                space = False
                continue
            ends_word = piece.endswith("</w>")
            body = piece[: -len("</w>")] if ends_word else piece
            if all(ch in decoder for ch in body):
                body = bytes(decoder[ch] for ch in body).decode("utf-8", errors="replace")
            shown.append((" " if space else "") + body)
            space = ends_word
        return shown

    def patch_source(self) -> torch.nn.Module:
        return self.vision_layers()[-1]

    def patch_embeddings(self, source: torch.Tensor) -> torch.Tensor:
        layer = self.vision_layers()[-1]
        attention = layer.self_attn
        hidden = source + attention.out_proj(attention.v_proj(layer.layer_norm1(source)))  # attend to itself only
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        return self.model.visual_projection(self.vision_model().post_layernorm(hidden))[:, 1:]


class SiglipAdapter(DualEncoderAdapter):
    """SigLIP: bidirectional text tower pooled at its LAST token; ViT with G² patches, no CLS, pooled by a
    multi-head attention-pooling (MAP) head.

    ``SiglipImageProcessor`` stretches to S×S (layouts.md §3.2). Captions are padded to the text tower's full
    length (``padding="max_length"``), as SigLIP was trained and as its model card asks. The patch–text similarity
    pushes each patch (after ``post_layernorm``) through the MAP head as if the probe attended only to that patch:
    its value projection, ``out_proj``, then the head's own layernorm + MLP residual.

    Example:
        >>> trace = mmviz.trace(siglip_model, siglip_processor, "cat.png", "a photo of a cat")   # doctest: +SKIP
        >>> trace.maps["similarity"].info["probability"]                                        # doctest: +SKIP
    """

    family = "SigLIP"
    model_types = ("siglip",)
    has_cls = False
    match_probability = "sigmoid"
    pad_captions = True

    def check(self) -> None:
        super().check()
        if not getattr(self.vision_model(), "use_head", False):
            raise UnsupportedModelError(
                "this SigLIP vision tower has no pooling head (vision_use_head=False), so it makes no image "
                "embedding to compare with a caption"
            )

    def pooled_position(self, caption_ids: np.ndarray) -> int:
        """The last position (``SiglipTextModel`` pools there, padding included)."""
        return len(caption_ids) - 1

    def patch_source(self) -> torch.nn.Module:
        return self.vision_model().head

    def patch_embeddings(self, source: torch.Tensor) -> torch.Tensor:
        head = self.vision_model().head
        attention = head.attention  # torch.nn.MultiheadAttention
        d = attention.embed_dim
        same_dim = attention.in_proj_weight is not None  # else separate q/k/v weights (kdim/vdim ≠ embed_dim)
        weight = attention.in_proj_weight[2 * d :] if same_dim else attention.v_proj_weight
        bias = None if attention.in_proj_bias is None else attention.in_proj_bias[2 * d :]
        pooled = attention.out_proj(torch.nn.functional.linear(source, weight, bias))  # the probe reads one patch
        return pooled + head.mlp(head.layernorm(pooled))
