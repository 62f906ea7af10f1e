"""CLIP (``model_type == "clip"``) and SigLIP (``"siglip"``): dual encoders, a text tower and a vision tower that meet
only in a shared embedding space.

Their shared base is :class:`~mmviz.adapters.dual_encoder.DualEncoderAdapter`; what depends on the family (pooling,
the MaskCLIP path) lives here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmviz.adapters.dual_encoder import DualEncoderAdapter
from mmviz.adapters.tokens import _byte_level_decoder
from mmviz.errors import ProcessorMismatchError, UnsupportedModelError


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
