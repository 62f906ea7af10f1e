"""M14 patch–text similarity for dual encoders (CLIP, SigLIP), MaskCLIP-style.

Each patch gets its own embedding in the shared image–text space by running the model's final pooling stage as if
it attended to that patch alone (MaskCLIP, Zhou et al. 2112.01071): CLIP's last block with self-only attention, then
``post_layernorm`` + ``visual_projection``; SigLIP's attention-pooling head with its probe reading that one patch.
The map is the cosine similarity between the caption embedding and every patch embedding. The family-specific
paths live in :mod:`mmviz.adapters.clip`; this module only hooks, runs and compares.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmviz.adapters import DualEncoderAdapter, adapter_for
from mmviz.adapters.layout import ImageGeometry, TokenLayout
from mmviz.capture.run import to_device
from mmviz.errors import InputError, UnsupportedModelError
from mmviz.inputs import ImageLike, load_images
from mmviz.model_state import preserved
from mmviz.records import Map, MethodSpec

LABEL = "Patch–text similarity"
MEANING = (
    "Cosine similarity between the caption's embedding and each patch's own embedding (MaskCLIP: the model's "
    "final pooling step run as if it read that patch alone). Positive: the patch on its own looks like the caption "
    "to the model; negative: unlike it. Raw patch similarity is noisy: background patches and a few high-norm "
    "artefact patches often light up, and it is neither the image–caption score nor where the model looked."
)


@contextmanager
def capturing_patch_source(adapter: DualEncoderAdapter) -> Iterator[dict[str, torch.Tensor]]:
    """Keep the input of ``adapter.patch_source()`` during the block (under ``"source"``); the hook is removed after."""
    store: dict[str, torch.Tensor] = {}

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        store["source"] = args[0] if args else next(iter(kwargs.values()))

    handle = adapter.patch_source().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield store
    finally:
        handle.remove()


def patch_cosines(adapter: DualEncoderAdapter, source: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Float32 ``(T, P)`` cosine between each caption embedding and each patch's MaskCLIP embedding (one image)."""
    with torch.no_grad():
        patches = adapter.patch_embeddings(source)[0].float()
        patches = patches / patches.norm(dim=-1, keepdim=True)
        text = text_embeds.float()
        text = text / text.norm(dim=-1, keepdim=True)
        return (text @ patches.T).cpu()


SIMILARITY = MethodSpec(
    "similarity",
    function=lambda trace: trace.maps["similarity"],
    label=LABEL,
    meaning=MEANING,
    signed=True,
    targeted=False,
    cost="instant",
)
"""The spec of a dual-encoder trace's own map. Not in the catalogue: it comes with the trace's one forward and is
not computed afterwards."""


def similarity_map(
    adapter: DualEncoderAdapter,
    layout: TokenLayout,
    caption: str,
    caption_ids: np.ndarray,
    output: Any,
    source: torch.Tensor,
) -> Map:
    """The ``"similarity"`` :class:`Map` of a dual-encoder trace: one row at the caption's pooled position.

    ``output`` is the model's output for this caption and image (``text_embeds``, ``image_embeds``,
    ``logits_per_image``); ``source`` the captured input of ``adapter.patch_source()`` of the same forward.
    """
    values = patch_cosines(adapter, source, output.text_embeds).numpy().astype(np.float32)
    pooled = adapter.pooled_position(caption_ids)
    logit = float(output.logits_per_image[0, 0])
    scale, bias = adapter.logit_scale_and_bias()
    info: dict[str, Any] = {
        "caption": caption,
        "logit_per_image": logit,
        "cosine": float((output.text_embeds[0].float() @ output.image_embeds[0].float()).cpu()),
        "logit_scale": scale,
        "logit_bias": bias,
        "pooled_position": pooled,
        "pooled_token": layout.tokens[pooled],
        "patch_embedding": _PATH[adapter.has_cls],
    }
    if adapter.match_probability == "sigmoid":  # a probability on its own; a softmax over one caption is always 1
        info["probability"] = float(torch.sigmoid(torch.tensor(logit)))
    return SIMILARITY.map(values=values, positions=np.array([pooled]), columns=layout.image_positions, info=info)


_PATH = {
    True: "MaskCLIP: last block with self-only attention (value → out_proj → residual → MLP), post_layernorm, "
    "visual_projection",
    False: "MaskCLIP-style: each patch through the pooling head's value and out projections (the probe reading that "
    "patch alone), then the head's layernorm + MLP residual",
}


@dataclass(frozen=True, repr=False)
class Similarity:
    """How one image matches several captions, overall and patch by patch.

    Attributes:
        texts: the captions, in order.
        patches: float32 ``(T, P)`` cosine between caption t and patch p's MaskCLIP embedding (raster order).
        pooled: float32 ``(T,)`` cosine between caption t and the image embedding (what the model scores).
        logits: float32 ``(T,)`` the model's own ``logits_per_image`` (``scale · pooled + bias``).
        probabilities: float32 ``(T,)`` the model's reading of them: softmax over captions (CLIP) or sigmoid per
            caption (SigLIP).
        boxes: float32 ``(P, 4)`` each patch's box in ORIGINAL pixels (NaN: none).
        grid_shape: rows and columns of the patch grid.
        image: the original image's size and the region that reaches any patch.
        family: the model family.
        logit_scale: ``exp(logit_scale)`` of the model.

    Example:
        >>> result = similarity(model, processor, "cat.png", ["a cat", "a dog"])     # doctest: +SKIP
        >>> result.heatmap("a cat").shape                                           # doctest: +SKIP
        (7, 7)
    """

    texts: list[str]
    patches: np.ndarray
    pooled: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    boxes: np.ndarray
    grid_shape: tuple[int, int]
    image: ImageGeometry
    family: str
    logit_scale: float

    def heatmap(self, text: int | str = 0) -> np.ndarray:
        """Patch similarities of one caption (by index or text) as a ``rows × cols`` grid."""
        index = self.texts.index(text) if isinstance(text, str) else int(text)
        return self.patches[index].reshape(self.grid_shape)

    def patch_softmax(self) -> np.ndarray:
        """``(T, P)`` softmax over the captions at every patch of ``logit_scale · cosine``: which caption each patch
        matches best (a segmentation-like view; only meaningful with several captions)."""
        scores = self.logit_scale * self.patches.astype(np.float64)
        scores -= scores.max(axis=0, keepdims=True)
        weights = np.exp(scores)
        return (weights / weights.sum(axis=0, keepdims=True)).astype(np.float32)

    def __repr__(self) -> str:
        rows, cols = self.grid_shape
        return f"<mmviz.Similarity {self.family}: {len(self.texts)} captions × {rows}×{cols} patches>"


def similarity(model: torch.nn.Module, processor: Any, image: ImageLike, texts: str | Sequence[str]) -> Similarity:
    """Patch–text and image–text similarity of a CLIP or SigLIP model for one image and one or more captions.

    One forward over the image and every caption (a padded batch; SigLIP pads each to its full length, as
    trained). The model is left as found.

    Args:
        model: ``CLIPModel`` / ``SiglipModel``.
        processor: its processor.
        image: PIL image, ``H×W×3`` uint8 array or path.
        texts: one caption or several (prompt templates matter: "a photo of a {}").

    Example:
        >>> from mmviz.methods.similarity import similarity
        >>> result = similarity(model, processor, "cat.png", ["a cat", "a dog"])    # doctest: +SKIP
        >>> result.probabilities                                                   # doctest: +SKIP
        array([0.93, 0.07], dtype=float32)
    """
    adapter = adapter_for(model, processor)
    if not isinstance(adapter, DualEncoderAdapter):
        raise UnsupportedModelError(
            f"similarity needs a dual encoder (CLIP, SigLIP), not {adapter.family}; for a generative model use "
            f"mmviz.trace(...) and its attention or relevancy maps"
        )
    captions = [texts] if isinstance(texts, str) else list(texts)
    if not captions:
        raise InputError("texts is empty; pass one caption or a list of captions")
    images = load_images(image)
    if len(images) != 1:
        raise InputError(f"similarity takes one image, got {len(images)}; call it once per image")
    inputs = to_device(adapter.encode_captions(images[0], captions), model)
    with preserved(model), torch.no_grad(), capturing_patch_source(adapter) as store:
        model.eval()
        output = model(**inputs)
    boxes, geometry = adapter.patch_boxes(images[0])
    logits = output.logits_per_image[0].float()
    return Similarity(
        texts=captions,
        patches=patch_cosines(adapter, store["source"], output.text_embeds).numpy().astype(np.float32),
        pooled=(output.text_embeds.float() @ output.image_embeds[0].float()).cpu().numpy().astype(np.float32),
        logits=logits.cpu().numpy().astype(np.float32),
        probabilities=adapter.match_probabilities(logits).cpu().numpy().astype(np.float32),
        boxes=boxes.astype(np.float32),
        grid_shape=(adapter.grid_size, adapter.grid_size),
        image=geometry,
        family=adapter.family,
        logit_scale=adapter.logit_scale_and_bias()[0],
    )
