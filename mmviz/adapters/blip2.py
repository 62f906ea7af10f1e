"""BLIP-2 (``model_type == "blip-2"``): Q-Former query embeddings, not patches, carry the image into the LLM."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmviz.adapters import geometry
from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import QUERY, VIEWS, SoftCells, TokenLayout
from mmviz.errors import InputError, ProcessorMismatchError, UnsupportedModelError
from mmviz.model_state import preserved


class Blip2Adapter(GenerativeAdapter):
    """BLIP-2: ``num_query_tokens`` query positions (kind ``query``, no box) in front of ``<bos>`` + the prompt.

    The query positions form the view ``"query"``, a ``1 × Qn`` strip in query order (their grid cell says which
    query, not where in the image), so methods that perturb windows of image tokens group neighbouring queries.

    The ViT sees the image stretched to ``S × S`` (``BlipImageProcessor``) as a ``G × G`` patch grid (+ CLS). The
    Q-Former's learned queries read that grid through cross-attention and their outputs, projected, are what the
    language model reads at the query positions; no query corresponds to a patch. :meth:`layout` therefore adds
    :class:`~mmviz.adapters.layout.SoftCells`: the ViT patch cells (boxes in original pixels) and each query's soft
    map over them, the Q-Former's cross-attention averaged over heads and cross-attention layers, CLS dropped and
    renormalised. Maps over the query positions reach the image as ``values @ weights`` and are labelled indirect.

    The language model is a full causal LM at ``model.language_model`` (OPT in the released checkpoints); the
    decoder, its layers and its final norm are found through ``get_decoder()``. Encoder–decoder language models
    (the Flan-T5 checkpoints) are not supported.

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> trace.layout.soft.weights.shape                  # (queries, ViT patch cells)  # doctest: +SKIP
        (32, 256)
    """

    family = "BLIP-2"
    model_types = ("blip-2",)
    fallback_template = "Question: {prompt} Answer:"

    def __init__(self, model: torch.nn.Module, processor: object) -> None:
        super().__init__(model, processor)
        self._soft_cache: tuple[torch.Tensor, np.ndarray] | None = None

    # -- model structure ---------------------------------------------------------------------------------------
    @property
    def qformer_config_key(self) -> str:
        return "qformer_config"

    def language_model(self) -> torch.nn.Module:
        """The LM's bare decoder (``OPTDecoder``, ``LlamaModel``, ...), which reads the merged ``inputs_embeds``."""
        return self.model.language_model.get_decoder()

    def final_norm(self) -> torch.nn.Module:
        """What the decoder applies after its last layer: ``norm``, or OPT's ``final_layer_norm`` + ``project_out``."""
        decoder = self.language_model()
        norm = getattr(decoder, "norm", None)
        if norm is not None:
            return norm
        parts = [getattr(decoder, name, None) for name in ("final_layer_norm", "project_out")]
        parts = [part for part in parts if part is not None]
        return parts[0] if len(parts) == 1 else torch.nn.Sequential(*parts)

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    @property
    def grid_size(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def vision_tokens_per_image(self) -> int:
        return self.grid_size**2 + 1  # patches and CLS

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        if not getattr(self.model.config, "use_decoder_only_language_model", True):
            raise UnsupportedModelError(
                "mmviz supports BLIP-2 with a decoder-only language model (OPT, Llama, ...); this checkpoint uses an "
                "encoder-decoder language model (Flan-T5), which mmviz does not trace yet"
            )
        super().check()
        queries = getattr(self.processor, "num_query_tokens", None)
        if queries is None or int(queries) != self.num_query_tokens:
            raise ProcessorMismatchError(
                f"the processor inserts {queries} query tokens but the model's Q-Former gives "
                f"{self.num_query_tokens}; load the processor from the same checkpoint as the model (older BLIP-2 "
                f"processors have no num_query_tokens: set processor.num_query_tokens = model.config.num_query_tokens)"
            )

    # -- prompt and inputs -------------------------------------------------------------------------------------
    def format_prompt(self, prompt: str, n_images: int) -> str:
        """BLIP-2's ``Question: … Answer:`` format (kept as is when the prompt already ends with ``Answer:``).

        There is no image placeholder: the processor puts the query tokens in front of the text itself.
        """
        if self.image_token in prompt:
            raise InputError(
                f"BLIP-2's processor puts the {self.num_query_tokens} query tokens in front of the prompt itself; "
                f"pass the prompt without {self.image_token!r}"
            )
        if prompt.rstrip().endswith("Answer:"):
            return prompt
        return self.fallback_template.format(prompt=prompt)

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        if len(images) != 1:
            raise InputError(f"BLIP-2 reads one image per prompt; got {len(images)} images")
        if self.image_token in text:
            raise InputError(f"pass the prompt without {self.image_token!r}: BLIP-2's processor adds the query tokens")
        inputs = dict(self.processor(images=list(images), text=text, return_tensors="pt"))
        size = int(self.model.config.vision_config.image_size)
        self.check_canvas(inputs["pixel_values"], size, " (BLIP-2 checkpoints use 224)")
        found = int((inputs["input_ids"] == self.image_token_id).sum())
        if found != self.num_query_tokens:
            raise ProcessorMismatchError(
                f"the processor inserted {found} image tokens, the model's Q-Former gives {self.num_query_tokens} "
                f"query embeddings; set processor.num_query_tokens = model.config.num_query_tokens"
            )
        return inputs

    # -- layout ------------------------------------------------------------------------------------------------
    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        is_query = input_ids == self.image_token_id
        builder = self.layout_builder(input_ids, "<query>")
        positions = np.flatnonzero(is_query)
        if len(images) != 1 or len(positions) != self.num_query_tokens:
            raise ProcessorMismatchError(
                f"found {len(positions)} query positions for {len(images)} image(s); BLIP-2 needs "
                f"{self.num_query_tokens} (num_query_tokens) for its one image"
            )
        (image,) = images
        builder.kinds[positions] = QUERY
        builder.image_index[positions] = 0
        builder.view[positions] = VIEWS.index("query")
        # A 1 × Qn strip in query order (not a place in the image): window-based perturbations group neighbours.
        builder.grid[positions] = np.stack([np.zeros(len(positions)), np.arange(len(positions))], axis=1)
        builder.grid_shape[positions] = (1, len(positions))
        g = self.grid_size
        boxes, covered = self.square_grid(image, g, int(self.model.config.vision_config.patch_size))
        builder.images.append(covered)
        cells = np.arange(g * g)
        builder.soft = SoftCells(
            positions=positions,
            weights=self.query_weights(inputs["pixel_values"]),
            boxes=boxes.astype(np.float32),
            grid=np.stack([cells // g, cells % g], axis=1).astype(np.int32),
            grid_shape=(g, g),
            image_index=np.zeros(g * g, np.int32),
        )
        return builder.build()

    def query_weights(self, pixel_values: torch.Tensor) -> np.ndarray:
        """float32 ``(num_query_tokens, G²)``: each query's Q-Former cross-attention over the ViT patches.

        Mean over heads and cross-attention layers, CLS dropped, rows renormalised to 1. One no-grad pass through
        the vision tower and the Q-Former with its eager attention (which returns the probabilities); the model's
        attention implementations and flags are restored afterwards.
        """
        if self._soft_cache is not None and self._soft_cache[0] is pixel_values:
            return self._soft_cache[1]
        model = self.model
        with torch.no_grad(), preserved(model):
            model.eval()
            model.set_attn_implementation({self.qformer_config_key: "eager"})
            vision = model.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
            mask = torch.ones(vision.shape[:-1], dtype=torch.long, device=vision.device)
            output = model.qformer(
                query_embeds=model.query_tokens.expand(vision.shape[0], -1, -1),
                encoder_hidden_states=vision,
                encoder_attention_mask=mask,
                output_attentions=True,
                return_dict=True,
            )
        cross = [layer for layer in (output.cross_attentions or ()) if layer is not None]
        if not cross:
            raise ProcessorMismatchError("the Q-Former returned no cross-attention probabilities")
        weights = torch.stack([layer.float() for layer in cross]).mean(dim=(0, 2))[0, :, 1:]  # (queries, patches)
        n_cells = self.grid_size**2
        if weights.shape != (self.num_query_tokens, n_cells):
            raise ProcessorMismatchError(
                f"the Q-Former's cross-attention has shape {tuple(weights.shape)}, expected "
                f"({self.num_query_tokens}, {n_cells}) (queries × ViT patches without CLS)"
            )
        weights = weights / weights.sum(dim=-1, keepdim=True)
        result = weights.cpu().numpy().astype(np.float32)
        self._soft_cache = (pixel_values, result)
        return result

    def canvas_map(self, width: int, height: int) -> geometry.Affine:
        """Original pixels → the processor's ``S × S`` canvas: a stretch (each axis resized on its own)."""
        ip = self.processor.image_processor
        if not getattr(ip, "do_resize", True):
            return geometry.Affine()
        size = dict(ip.size)
        return geometry.resize(width, height, int(size["width"]), int(size["height"]))
