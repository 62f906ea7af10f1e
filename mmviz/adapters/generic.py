"""The fallback adapter: a generative family mmviz has no adapter for, laid out from the measured layout.

A model whose image features replace placeholder tokens (``config.image_token_id`` / ``image_token_index``) and
that computes them through a ``get_image_features``-style path gets its kinds, views, grid cells and boxes from
:func:`mmviz.adapters.measured.measure_layout`: what the model itself reads, not what an adapter states. Such a
layout is labelled ``"measured"`` (``TokenLayout.source``, ``GenericAdapter.layout_source``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from mmviz.adapters.generative import GenerativeAdapter
from mmviz.adapters.layout import IMAGE, IMAGE_SEP, VIEWS, ImageGeometry, TokenLayout
from mmviz.adapters.measured import MeasuredLayout, measure_layout
from mmviz.errors import ProcessorMismatchError, UnsupportedModelError


def placeholder_token_id(model: torch.nn.Module) -> int | None:
    """The id of the tokens the model's image features replace, from its config (None: it has none)."""
    config = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def generic_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the generic adapter cannot lay out ``model`` (None: it can)."""
    if placeholder_token_id(model) is None:
        return (
            "its config has no image_token_id / image_token_index, so image features do not replace placeholder "
            "tokens (a dual encoder or a query-based model needs its own adapter)"
        )
    inner = getattr(model, "model", None)
    if not any(hasattr(part, "get_image_features") for part in (model, inner)):
        return "it has no get_image_features, so mmviz cannot tell how it turns pixels into image features"
    if "vision_config" not in getattr(model.config, "sub_configs", {}):
        return "its config has no vision_config, whose attention the layout probe silences"
    return None


class GenericAdapter(GenerativeAdapter):
    """Any generative VLM whose image features replace placeholders: layout measured from the model.

    Example:
        >>> adapter = GenericAdapter(model, processor)                 # doctest: +SKIP
        >>> inputs = adapter.encode([image], adapter.format_prompt("What is it?", 1))   # doctest: +SKIP
        >>> layout = adapter.layout(inputs["input_ids"][0].numpy(), [image], inputs)  # doctest: +SKIP
        >>> layout.source                                               # doctest: +SKIP
        'measured'
    """

    layout_source: ClassVar[str] = "measured"

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        reason = generic_unsupported_reason(model)
        if reason is not None:
            raise UnsupportedModelError(f"{type(model).__name__}: {reason}")
        self.family = f"{type(model).__name__} (measured)"  # type: ignore[misc]

    @property
    def image_token_id(self) -> int:
        token = placeholder_token_id(self.model)
        assert token is not None  # checked in __init__
        return token

    @property
    def image_token(self) -> str:
        token = getattr(self.processor, "image_token", None)
        return str(token) if token is not None else str(self.tokenizer.convert_ids_to_tokens(self.image_token_id))

    def check_image_token(self) -> None:
        """The processor's prompt placeholder must be the model's image token, or expand into it (Llama 4's
        ``<|image|>`` becomes ``<|patch|>`` tokens, the ones its config names)."""
        if self.tokenizer.convert_tokens_to_ids(self.image_token) != self.image_token_id:
            try:
                ids = self.encode([Image.new("RGB", (16, 16))], self.format_prompt("Hi", 1))["input_ids"]
            except Exception:  # any failure: report the mismatch below
                ids = None
            if ids is None or not bool((ids == self.image_token_id).any()):
                super().check_image_token()

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        """Run the processor; a legacy ``pixel_values_images`` output (Video-LLaVA's image processor) is renamed
        ``pixel_values``, the name the model's forward and the layout probe take, in the model's float dtype."""
        inputs = super().encode(images, text)
        if "pixel_values" not in inputs and "pixel_values_images" in inputs:
            inputs["pixel_values"] = inputs.pop("pixel_values_images")
        pixels = inputs.get("pixel_values")
        dtype = next(self.model.parameters()).dtype
        if torch.is_tensor(pixels) and pixels.is_floating_point() and pixels.dtype != dtype:
            inputs["pixel_values"] = pixels.to(dtype)  # Llama 4's processor normalises in bfloat16
        return inputs

    def analysis_inputs(self, inputs: dict[str, torch.Tensor], n_answer: int) -> dict[str, torch.Tensor]:
        """The processor outputs with ``mm_token_type_ids`` extended by ``n_answer`` text tokens (type 0): models
        with 3-D rope (GLM-4.1V) read the types of the whole prompt + answer."""
        types = inputs.get("mm_token_type_ids")
        if types is None or n_answer <= 0:
            return inputs
        answer = torch.zeros((*types.shape[:-1], n_answer), dtype=types.dtype, device=types.device)
        return {**inputs, "mm_token_type_ids": torch.cat([types, answer], dim=-1)}

    def language_model(self) -> torch.nn.Module:
        inner = getattr(self.model, "model", None)
        found = getattr(inner, "language_model", None)
        decoder = found if isinstance(found, torch.nn.Module) else self.model.get_decoder()
        # a causal-LM wrapper (Llama 4's language_model): the bare decoder is its .model
        while not hasattr(decoder, "layers") and isinstance(getattr(decoder, "model", None), torch.nn.Module):
            decoder = decoder.model
        return decoder

    def vision_tokens_per_image(self) -> int:
        vision = self.model.config.vision_config
        size, patch = getattr(vision, "image_size", 0), getattr(vision, "patch_size", 0)
        return int(size) // int(patch) if size and patch else 0

    def layout(
        self, input_ids: np.ndarray, images: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        # measured on a prompt of the same images: its k-th placeholder is this sequence's k-th (the prompt text
        # does not change what an image feature reads)
        measured = measure_layout(self, images, self.format_prompt("Describe the image.", len(images)))
        positions = np.flatnonzero(input_ids == self.image_token_id)
        if len(positions) != len(measured.positions):
            raise ProcessorMismatchError(
                f"the sequence holds {len(positions)} image tokens but the processor makes {len(measured.positions)} "
                f"for {len(images)} image(s) of these sizes"
            )
        builder = self.layout_builder(input_ids)
        for index, image in enumerate(images):
            _mark_image(builder, measured, positions, index, image)
        layout = builder.build()
        return TokenLayout(**{**layout.__dict__, "source": self.layout_source})


def _mark_image(builder: Any, measured: MeasuredLayout, positions: np.ndarray, index: int, image: Image.Image) -> None:
    """Kinds, views, grid cells and boxes of one image's tokens, read from the measured layout."""
    mine = measured.image_index == index
    groups = []
    # a view: the tokens of the tiles that show the whole image ("base", or "global" after partial tiles), or all
    # the tokens of the partial tiles together ("tile": one grid over the image)
    single = len(set(measured.tile[mine].tolist())) == 1  # one tile (centre-cropped or not): the base view
    whole = measured.whole_tile | single
    whole_tiles = sorted(set(measured.tile[mine & whole].tolist()))
    partial = mine & ~whole
    for order, tile in enumerate(whole_tiles):
        after = partial.any() and tile > measured.tile[partial].min()
        # a second whole view (LLaVA-NeXT's one-crop grid beside its base view) is a layer of its own
        view = "global" if after else "base" if order == 0 else "crop"
        groups.append((view, mine & whole & (measured.tile == tile)))
    if partial.any():
        groups.append(("tile", partial))
    boxes_seen = []
    for view, group in groups:
        rows = positions[group]
        boxes = measured.boxes[group].copy()
        row_of = _bands(boxes[:, 1] + boxes[:, 3])
        col_of = _bands(boxes[:, 0] + boxes[:, 2])
        _snap(boxes, col_of, 0, image.width)
        _snap(boxes, row_of, 1, image.height)
        builder.kinds[rows] = IMAGE
        builder.image_index[rows] = index
        builder.view[rows] = VIEWS.index(view)
        builder.grid[rows] = np.stack([row_of, col_of], axis=1)
        builder.grid_shape[rows] = (int(row_of.max()) + 1, int(col_of.max()) + 1)
        builder.boxes[rows] = boxes
        boxes_seen.append(boxes)
    # placeholders that read no pixel (learned newline / separator vectors, CLS) just after this image's tokens:
    # part of the image's span, without a box
    if mine.any():
        after = np.arange(len(positions)) > np.flatnonzero(mine).min()
        later = measured.image_index[after]
        stop = np.flatnonzero((later >= 0) & (later != index))
        blank = np.flatnonzero(after)[: stop[0] if len(stop) else None]
        before = np.arange(len(positions)) < np.flatnonzero(mine).min()
        if not (measured.image_index[before] >= 0).any():  # padding rows ahead of the first image (DeepSeek-VL)
            blank = np.concatenate([np.flatnonzero(before), blank])
        blank = blank[measured.image_index[blank] < 0]
        builder.kinds[positions[blank]] = IMAGE_SEP
        builder.image_index[positions[blank]] = index
    seen = np.vstack(boxes_seen) if boxes_seen else np.zeros((0, 4))
    covered = (
        (float(seen[:, 0].min()), float(seen[:, 1].min()), float(seen[:, 2].max()), float(seen[:, 3].max()))
        if len(seen)
        else (0.0, 0.0, 0.0, 0.0)
    )
    builder.images.append(ImageGeometry(image.width, image.height, covered))


def _snap(boxes: np.ndarray, band: np.ndarray, axis: int, limit: float) -> None:
    """Close resampling slivers in place along one axis (0: x, 1: y): the boxes of a grid column (row) share its
    median edges, neighbouring columns meet halfway, and an edge goes to the image's border, wherever the
    difference is under a quarter of a cell (a resized image's pixel centres never fall exactly on a cell's edge,
    and resampling clamps at the border; strips that only padding covered, LLaVA-NeXT's, are wider and stay)."""
    lo_col, hi_col = axis, axis + 2
    count = int(band.max()) + 1 if len(band) else 0
    lo, hi = np.full(count, np.nan), np.full(count, np.nan)
    for k in range(count):
        mine = band == k
        if mine.any():
            lo[k], hi[k] = np.median(boxes[mine, lo_col]), np.median(boxes[mine, hi_col])
    sizes = hi - lo
    if not np.isfinite(sizes).any():
        return
    tolerance = 0.25 * float(np.nanmedian(sizes))
    for k in range(count - 1):
        if abs(lo[k + 1] - hi[k]) < tolerance:
            lo[k + 1] = hi[k] = (lo[k + 1] + hi[k]) / 2
    if count and lo[0] < tolerance:
        lo[0] = 0.0
    if count and limit - hi[-1] < tolerance:
        hi[-1] = float(limit)
    for column, edges in ((lo_col, lo), (hi_col, hi)):
        target = edges[band]
        close = np.abs(boxes[:, column] - target) < tolerance
        boxes[close, column] = target[close]


def _bands(centres: np.ndarray) -> np.ndarray:
    """Rank of each centre among the distinct centres (gaps under a quarter of the typical one merge): a grid row
    or column index."""
    values = np.sort(np.unique(np.round(centres, 1)))
    if len(values) > 1:
        gaps = np.diff(values)
        tolerance = 0.25 * np.median(gaps[gaps > 0.5]) if (gaps > 0.5).any() else 0.5
        values = values[np.concatenate([[True], gaps > tolerance])]
    return np.searchsorted(values, np.round(centres, 1) + 1e-6, side="right") - 1
