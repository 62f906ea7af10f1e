"""Measured layouts: which ORIGINAL-image pixels each image token is built from, asked of the model itself.

A hand-written adapter states where a token's pixels are; this module measures it, so the statement can be checked
(:func:`verify`) and families without an adapter still get boxes (:mod:`mmviz.adapters.generic`).

The probe, for one prompt:

1. **Which processed pixels feed which token.** The vision tower runs once with its attention replaced by a
   function that returns each position's own value (switched per sub-config through transformers'
   ``AttentionInterface``, like :func:`mmviz.capture.attention.recording`; the model's code is never patched).
   Every vision position then reads only its own patch, so an image feature row that replaces a placeholder
   depends exactly on the pixels its patches (after merging / pixel shuffle / pooling / un-padding) read: its
   gradient with respect to ``pixel_values`` is non-zero there and exactly zero elsewhere. The language model
   never runs (a pre-hook on it stops the forward once it receives the merged embeddings).
   One forward and ``3 + ⌈log₁₆ M⌉`` backward passes identify the token of every pixel: with random vectors
   ``r_i`` and per-token codes ``c_k(i)`` the pass ``k`` differentiates ``Σ_i c_k(i)·⟨r_i, f_i⟩``; a pixel read
   by one token ``i`` gets the gradient ``c_k(i)·g`` in every pass (the same ``g``), so the ratio to the all-ones
   pass spells ``i`` in base-16 digits, and two last passes with independent codes reject pixels shared by
   several tokens (their ratios are mixtures). Shared pixels (bilinear down-sampling) are resolved by further
   rounds over groups of tokens far enough apart not to share pixels.
2. **Where a processed pixel comes from.** Resizing, cropping, padding, tiling, normalising and patch
   flattening are affine per element, so the same processor is run on constant images and on x / y ramp images
   of the original size: ``(ramp − black) / (white − black)`` is each element's original coordinate, and
   elements that do not move with the image (``white − black ≈ 0``) are padding.

A token's box is the min / max of the coordinates of the pixels it reads, widened by half a processed pixel (a
processed pixel stands for a cell of the original, not a point), clipped to the image. Results are cached per
(model config, processor config, image sizes, prompt).

Example:
    >>> measured = measure_layout(adapter_for(model, processor), [image])          # doctest: +SKIP
    >>> measured.boxes[:2], measured.passes                                         # doctest: +SKIP
    (array([[ 0.,  0., 17.9, 17.9], ...]), {'forward': 1, 'backward': 5, 'processor': 4})
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mmviz.errors import UnsupportedModelError
from mmviz.model_state import preserved, uncompiled

SILENCED = "mmviz_silenced"
"""Name of the attention function that returns each position's own value (registered in transformers)."""

_BASE = 16  # code digits: a ratio must be read to ±_TOLERANCE
_CHECKS = (17, 13)  # check codes, coprime with the digit base, so a mixture of tokens rarely passes them all
_TOLERANCE = 0.05  # float32 gradients give ratios to ~1e-5; a mixture's ratios land anywhere between codes
NOT_PATCH_LOCAL = 0.5
"""Above this share of read pixel values left shared after the splitting rounds, the tokens are not patch-local and
:func:`measure_layout` refuses (rounding leaves a few; a convolutional tower leaves nearly all)."""


@dataclass(frozen=True)
class MeasuredLayout:
    """Per placeholder position of one prompt: the pixels the model builds that image feature from.

    Attributes:
        positions: ``(M,)`` sequence positions whose embedding the image features replace, in order; for a family
            whose text reads the image through cross-attention layers (``adapter.image_input`` names the vision
            states), every cross-attention key index ``0 … K−1``.
        boxes: ``(M, 4)`` ``x0, y0, x1, y1`` in ORIGINAL pixels, NaN where the feature reads no pixel (CLS,
            learned newline vectors).
        image_index: ``(M,)`` which image the token reads (``-1``: none).
        tile: ``(M,)`` index of the ``pixel_values`` tile the token reads, counted per image (``0`` for
            processors that do not tile; ``-1``: none).
        whole_tile: ``(M,)`` whether that tile shows the whole image (a base / global view) rather than part.
        pixels: ``(M,)`` how many ``pixel_values`` elements feed the token.
        shared: elements read by several tokens that could not be split between them (their boxes may be short).
        passes: vision-tower passes (``forward``, ``backward``) and processor calls (``processor``) it took.
        seconds: wall time of the measurement.
        resolution: the coordinate read-out's step in original pixels (the ramps' quantisation).
    """

    positions: np.ndarray
    boxes: np.ndarray
    image_index: np.ndarray
    tile: np.ndarray
    whole_tile: np.ndarray
    pixels: np.ndarray
    shared: int = 0
    passes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    resolution: float = 0.0

    def __len__(self) -> int:
        return len(self.positions)


# -- the silenced attention function ----------------------------------------------------------------------------
def silenced_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention as the identity over positions: every query gets its own value (``(B, n, heads, head_dim)``,
    the interface's output layout), so no position reads another."""
    group = query.shape[1] // value.shape[1]  # grouped-query attention: repeat the value heads
    own = value.repeat_interleave(group, dim=1) if group > 1 else value
    return own.transpose(1, 2).contiguous(), None


def _register() -> None:
    AttentionInterface.register(SILENCED, silenced_attention)
    AttentionMaskInterface.register(SILENCED, sdpa_mask)  # towers that build a mask look it up by name


@contextmanager
def silenced(model: torch.nn.Module, config_key: str) -> Iterator[None]:
    """The sub-model whose config is ``model.config.<config_key>`` attends to nothing but itself for the block;
    attention implementations, flags and ``requires_grad`` are restored afterwards (also on errors)."""
    _register()
    with preserved(model):
        model.set_attn_implementation({config_key: SILENCED})
        yield


# -- cache -------------------------------------------------------------------------------------------------------
_CACHE: dict[tuple[str, ...], MeasuredLayout] = {}
_CACHE_SIZE = 32


def _digest(obj: Any) -> str:
    text = obj.to_json_string() if hasattr(obj, "to_json_string") else repr(obj)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _cache_key(adapter: Any, images: Sequence[Image.Image], text: str) -> tuple[str, ...]:
    sizes = ",".join(f"{image.width}x{image.height}" for image in images)
    return (_digest(adapter.model.config), _digest(adapter.processor.image_processor), sizes, text)


def clear_cache() -> None:
    """Forget every measured layout (e.g. after changing a processor's settings in place)."""
    _CACHE.clear()


# -- the measurement ---------------------------------------------------------------------------------------------
def measure_layout(
    adapter: Any, images: Sequence[Image.Image], text: str | None = None, *, seed: int = 0, cache: bool = True
) -> MeasuredLayout:
    """Measure which original pixels every placeholder's image feature is built from (see the module docstring).

    Args:
        adapter: the model's adapter (``mmviz.adapters.adapter_for(model, processor)`` or a
            :class:`~mmviz.adapters.generic.GenericAdapter`); its ``encode`` runs the processor.
        images: the ORIGINAL images of the prompt (only their sizes matter).
        text: the prompt with its placeholders (default: ``adapter.format_prompt`` of a short question).
        seed: seed of the random projections.
        cache: reuse a measurement of the same model config, processor config, image sizes and prompt.

    Example:
        >>> measured = measure_layout(adapter_for(model, processor), [Image.new("RGB", (200, 120))])  # doctest: +SKIP
        >>> measured.passes                                                                           # doctest: +SKIP
        {'forward': 1, 'backward': 5, 'processor': 4}

    Raises:
        UnsupportedModelError: the tokens are not patch-local (most pixels feed several tokens that no grouping
            tells apart: Gemma 3n's convolutional MobileNetV5 tower, say).
    """
    images = [image.convert("RGB") for image in images]
    text = adapter.format_prompt("Describe the image.", len(images)) if text is None else text
    key = _cache_key(adapter, images, text)
    if cache and key in _CACHE:
        return _CACHE[key]
    start = time.perf_counter()
    inputs = adapter.encode(images, text)
    coords = _pixel_coordinates(adapter, images, text, inputs["pixel_values"])
    if _image_input(adapter) == "inputs_embeds":
        placeholders = np.flatnonzero(inputs["input_ids"][0].numpy() == adapter.image_token_id)
    else:  # cross-attention keys: every vision state the language model receives
        with torch.no_grad():
            placeholders = np.arange(len(_placeholder_features(adapter, inputs, None)))
    owner, extra, passes = _probe(adapter, inputs, placeholders, coords, seed)
    result = _aggregate(placeholders, owner, extra, coords, [(image.width, image.height) for image in images])
    read = int(((owner != -1) & (coords.image >= 0)).sum())
    if result.shared > NOT_PATCH_LOCAL * max(read, 1):
        raise UnsupportedModelError(
            f"{adapter.family or type(adapter).__name__}: {result.shared} of the {read} image pixel values the image "
            f"tokens read feed several tokens that cannot be told apart, with the vision tower's attention silenced "
            f"(a convolutional tower, or attention that does not run through transformers' attention functions); "
            f"its tokens are not patch-local, so their layout cannot be measured"
        )
    result = MeasuredLayout(
        **{**result.__dict__, "passes": passes, "seconds": time.perf_counter() - start, "resolution": coords.step}
    )
    if cache:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = result
    return result


@dataclass
class _Coordinates:
    """Per flattened ``pixel_values`` element: image (``-1`` padding), original x / y of its centre, tile."""

    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    tile: np.ndarray
    calls: int
    step: float


def _pixel_values(adapter: Any, images: Sequence[Image.Image], text: str) -> np.ndarray:
    return adapter.encode(images, text)["pixel_values"].detach().double().reshape(-1).numpy()


LOW, HIGH = 48, 207
"""Grey levels of the probe images. Resampling kernels with negative lobes (bicubic, Lanczos) over- and undershoot
next to padding and at edges; near 0 or 255 that is clipped to uint8 and the processed pixel stops being affine in
the image (LLaVA-OneVision's pad-to-square: the first row's coordinates came out 2.5 px short). The margins keep
every overshoot inside 0…255."""


def _ramp_pieces(length: int) -> tuple[list[np.ndarray], int]:
    """uint8 pieces in ``LOW…HIGH`` whose excess over ``LOW`` sums to ``slope · index`` along an axis of ``length``
    pixels, and ``slope``.

    Short axes get an integer slope above 1 (finer read-out); long ones several pieces of slope 1, each clipped to
    ``0…HIGH − LOW`` above ``LOW``, whose processed images add up (the processor is affine) to the processed ramp.
    """
    span = HIGH - LOW
    index = np.arange(length, dtype=np.int64)
    slope = max(1, span // max(1, length - 1))
    ramp = index * slope
    pieces = [
        (LOW + np.clip(ramp - span * k, 0, span)).astype(np.uint8) for k in range(max(1, math.ceil(ramp[-1] / span)))
    ]
    return pieces, slope


def _pixel_coordinates(
    adapter: Any, images: Sequence[Image.Image], text: str, pixel_values: torch.Tensor
) -> _Coordinates:
    """Original coordinates of every processed element, from constant and ramp images (module docstring, 2)."""

    def made(fill: list[np.ndarray | int]) -> list[Image.Image]:
        out = []
        for image, value in zip(images, fill, strict=True):
            pixels = np.broadcast_to(np.asarray(value, np.uint8), (image.height, image.width)).astype(np.uint8)
            out.append(Image.fromarray(np.repeat(pixels[..., None], 3, axis=2)))
        return out

    n = len(images)
    calls = 2
    black = _pixel_values(adapter, made([LOW] * n), text)
    white = _pixel_values(adapter, made([HIGH] * n), text)
    scale = white - black  # per element: how much it moves with the image (0 for padding)
    full = np.quantile(np.abs(scale), 0.99) if scale.size else 1.0
    image = np.where(np.abs(scale) > 0.3 * full, 0, -1)
    if n > 1:  # which image: each one alone in white
        presence = []
        for j in range(n):
            presence.append(_pixel_values(adapter, made([HIGH if i == j else LOW for i in range(n)]), text) - black)
            calls += 1
        image = np.where(image >= 0, np.argmax(np.stack(presence), axis=0), -1)
    safe = np.where(image >= 0, scale, 1.0)
    coords, steps = [], []
    for axis in ("x", "y"):
        lengths = [img.width if axis == "x" else img.height for img in images]
        per_image = [_ramp_pieces(length) for length in lengths]
        total = np.zeros_like(black)
        for k in range(max(len(pieces) for pieces, _ in per_image)):
            fills: list[np.ndarray | int] = []
            for (pieces, _), img in zip(per_image, images, strict=True):
                piece = pieces[k] if k < len(pieces) else np.full(len(pieces[0]), LOW, np.uint8)  # adds nothing
                fills.append(piece[None, :] if axis == "x" else np.broadcast_to(piece[:, None], (img.height, 1)))
            total += _pixel_values(adapter, made(fills), text) - black
            calls += 1
        slopes = np.array([slope for _, slope in per_image], np.float64)
        slope = slopes[np.clip(image, 0, None)]
        coords.append((HIGH - LOW) * total / safe / slope + 0.5)  # a ramp level names a pixel index; centre +0.5
        steps.append(float((1.0 / slopes).max()))
    shape = tuple(pixel_values.shape)
    per_tile = int(np.prod(shape[-3:])) if len(shape) >= 4 else black.size
    tile = np.arange(black.size) // per_tile
    return _Coordinates(image, coords[0], coords[1], tile, calls, max(steps))


class _Stop(Exception):
    """Raised by the language model's pre-hook: the merged embeddings are all the probe needs."""


def _language_model(adapter: Any) -> torch.nn.Module:
    try:
        return adapter.language_model()
    except AttributeError:
        return adapter.model.get_decoder()


def _image_input(adapter: Any) -> str:
    """The language model's argument that carries the image (``inputs_embeds``, or cross-attention states)."""
    return str(getattr(adapter, "image_input", "inputs_embeds"))


def _placeholder_features(
    adapter: Any, inputs: dict[str, torch.Tensor], placeholders: np.ndarray | None
) -> torch.Tensor:
    """The embeddings the language model receives at the placeholder positions, ``(M, D)`` float32; for a
    cross-attention family the vision states at key indices ``placeholders`` (None: all of them)."""
    captured: dict[str, torch.Tensor] = {}
    name = _image_input(adapter)

    def stop(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["embeds"] = kwargs[name] if kwargs.get(name) is not None else args[0]
        raise _Stop

    handle = _language_model(adapter).register_forward_pre_hook(stop, with_kwargs=True)
    try:
        adapter.model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "embeds" not in captured:
        raise RuntimeError(f"{type(adapter.model).__name__}'s forward never reached its language model")
    embeds = captured["embeds"]
    if name != "inputs_embeds":  # one prompt's vision states, images and tiles folded into the batch dimension
        embeds = embeds.reshape(1, -1, embeds.shape[-1])
    return embeds[0].float() if placeholders is None else embeds[0, torch.as_tensor(placeholders)].float()


def _codes(count: int) -> list[np.ndarray]:
    """All-ones, the base-16 digits (+1) of each token's index, and the independent check code."""
    index = np.arange(count)
    digits = max(1, math.ceil(math.log(max(count, 2), _BASE)))
    codes = [np.ones(count)]
    codes += [1.0 + (index // _BASE**d) % _BASE for d in range(digits)]
    codes += [1.0 + (index * 5 + 3) % modulus for modulus in _CHECKS]
    return codes


def _decode(gradients: list[np.ndarray], count: int) -> np.ndarray:
    """Per element: the token whose code its gradient ratios spell, ``-1`` unread, ``-2`` shared / unreadable."""
    reference = gradients[0]
    read = reference != 0
    owner = np.full(reference.shape, -1, np.int64)
    ratios = [g[read] / reference[read] for g in gradients[1:]]
    token = np.zeros(int(read.sum()), np.int64)
    ok = np.ones(len(token), bool)
    for d, ratio in enumerate(ratios[: -len(_CHECKS)]):
        digit = np.rint(ratio - 1.0)
        ok &= (np.abs(ratio - 1.0 - digit) < _TOLERANCE) & (digit >= 0) & (digit < _BASE)
        token += np.clip(digit, 0, _BASE - 1).astype(np.int64) * _BASE**d
    ok &= token < count
    for ratio, modulus in zip(ratios[-len(_CHECKS) :], _CHECKS, strict=True):
        ok &= np.abs(ratio - 1.0 - (token * 5 + 3) % modulus) < _TOLERANCE
    owner[read] = np.where(ok, token, -2)
    return owner


def _probe(
    adapter: Any, inputs: dict[str, torch.Tensor], placeholders: np.ndarray, coords: _Coordinates, seed: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict[str, int]]:
    """The token each ``pixel_values`` element feeds (``-1`` none, ``-2`` several, unresolved, ``-3`` several,
    listed in the second result as ``(elements, tokens)`` pairs), and the passes it took."""
    model = uncompiled(adapter.model)
    device = next(model.parameters()).device
    count = len(placeholders)
    pixels = inputs["pixel_values"].detach().to(device).clone().requires_grad_(True)
    probe_inputs = {name: value.to(device) if torch.is_tensor(value) else value for name, value in inputs.items()}
    probe_inputs["pixel_values"] = pixels
    generator = torch.Generator().manual_seed(seed)
    backward = 0
    with silenced(model, adapter.vision_config_key), torch.enable_grad():
        for parameter in model.parameters():  # only the input's gradient is needed
            parameter.requires_grad_(False)
        features = _placeholder_features(adapter, probe_inputs, placeholders)
        weights = torch.randn(features.shape, generator=generator).to(features.device)
        projected = (features * weights).sum(-1)  # ⟨r_i, f_i⟩ per token

        def run(codes: list[np.ndarray]) -> np.ndarray:
            nonlocal backward
            grads = []
            for code in codes:
                loss = (projected * torch.as_tensor(code, dtype=projected.dtype, device=device)).sum()
                (grad,) = torch.autograd.grad(loss, pixels, retain_graph=True)
                grads.append(grad.detach().double().reshape(-1).cpu().numpy())
                backward += 1
            return _decode(grads, count)

        owner = run(_codes(count))
        extra = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        # a few unreadable ratios are rounding (a gradient that nearly cancels); many mean shared pixels
        if (owner == -2).sum() > 1e-3 * max(1, int((owner != -1).sum())):
            owner, extra = _split_shared(owner, coords, count, run)
    passes = {"forward": 1, "backward": backward, "processor": coords.calls + 1}
    return owner, extra, passes


def _split_shared(
    owner: np.ndarray, coords: _Coordinates, count: int, run: Any, rounds: int = 3
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Further rounds for elements read by several tokens: tokens grouped so that no two in a group come near each
    other (by the boxes of the pixels known to be theirs, in a tile they share); within a group a pixel then has
    one reader, so decoding works.

    A token whose every pixel is shared has no known position in the first round, so it may land in a group with
    its neighbours; the pixels it shares with tokens of other groups place it, and the next round (at most
    ``rounds``, stopping when nothing is left or nothing changes) groups it correctly.

    Returns the owners with the split elements marked ``-3`` and the ``(elements, tokens)`` pairs that read them.
    """
    shared = owner == -2
    found: dict[tuple[int, int], None] = {}  # (element, token) pairs, in the order found
    tile_id = coords.tile * 1000 + coords.image
    known = np.flatnonzero(owner >= 0)
    for _ in range(rounds):
        pairs = np.array(list(found), np.int64).reshape(-1, 2)
        elements, tokens = np.concatenate([known, pairs[:, 0]]), np.concatenate([owner[known], pairs[:, 1]])
        colours, placed = _colour_tokens(elements, tokens, coords, tile_id, count)
        for colour in range(int(colours.max()) + 1):
            decoded = run([np.where(colours == colour, code, 0.0) for code in _codes(count)])
            for element in np.flatnonzero((decoded >= 0) & shared).tolist():
                found[(element, int(decoded[element]))] = None
        split = np.zeros(len(owner), bool)
        split[[e for e, _ in found]] = True
        # grouped with every token placed and nothing left: another round would find the same pairs
        if placed and not (shared & ~split & (coords.image >= 0)).any():
            break
    result = owner.copy()
    result[shared & split] = -3  # read by several tokens, listed in the pairs
    pairs = np.array(list(found), np.int64).reshape(-1, 2)
    return result, (pairs[:, 0], pairs[:, 1])


def _colour_tokens(
    elements: np.ndarray, tokens: np.ndarray, coords: _Coordinates, tile_id: np.ndarray, count: int
) -> tuple[np.ndarray, bool]:
    """Greedy colouring of the "may share pixels" graph: two tokens are near when they read a common tile and
    their known pixels' centres lie within three token extents. Tokens of different tiles never share a processed
    pixel, however close their boxes are in the original image; a down-sampled token near a tile edge reads two
    tiles. Tokens with no known pixel get colour 0; the second result says whether every token had one."""
    centre = np.full((count, 2), np.nan)
    extent = np.zeros(count)
    tiles = np.zeros((count, int(tile_id.max(initial=0)) + 1), bool)
    tiles[tokens, tile_id[elements]] = True
    for token in np.unique(tokens):
        xs, ys = coords.x[elements[tokens == token]], coords.y[elements[tokens == token]]
        centre[token] = (xs.mean(), ys.mean())
        extent[token] = max(xs.max() - xs.min(), ys.max() - ys.min())
    radius = 3.0 * np.nanmax(extent) if np.isfinite(extent).any() else np.inf
    colours = np.full(count, -1)
    for token in range(count):
        if not np.isfinite(centre[token, 0]):
            colours[token] = 0
            continue
        near = (tiles & tiles[token]).any(axis=1) & (np.abs(centre - centre[token]).max(axis=1) < radius)
        used = set(colours[near & (colours >= 0)].tolist())
        colours[token] = next(c for c in range(count + 1) if c not in used)
    return colours, bool(np.isfinite(centre[:, 0]).all())


def _aggregate(
    placeholders: np.ndarray,
    owner: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray],
    coords: _Coordinates,
    sizes: list[tuple[int, int]],
) -> MeasuredLayout:
    """Per token: box (min / max of its pixels' coordinates, widened by half a processed pixel), image and tile."""
    count = len(placeholders)
    elements = np.flatnonzero((owner >= 0) & (coords.image >= 0))
    tokens = owner[elements]
    keep = coords.image[extra[0]] >= 0
    elements, tokens = np.concatenate([elements, extra[0][keep]]), np.concatenate([tokens, extra[1][keep]])
    shared = int(((owner == -2) & (coords.image >= 0)).sum())
    boxes = np.full((count, 4), np.nan)
    image_index = np.full(count, -1, np.int64)
    tile = np.full(count, -1, np.int64)
    pixels = np.bincount(tokens, minlength=count)
    if len(elements):
        first = np.full(count, -1, np.int64)
        order = np.argsort(tokens, kind="stable")
        starts = np.searchsorted(tokens[order], np.arange(count))
        has = pixels > 0
        first[has] = elements[order[np.minimum(starts[has], len(order) - 1)]]
        image_index[has] = coords.image[first[has]]
        tile[has] = coords.tile[first[has]]
        for axis, (lo_col, hi_col) in ((coords.x, (0, 2)), (coords.y, (1, 3))):
            values = axis[elements]
            lo = np.full(count, np.inf)
            hi = np.full(count, -np.inf)
            np.minimum.at(lo, tokens, values)
            np.maximum.at(hi, tokens, values)
            pitch = _pitch(tokens, values, lo, hi, count, tile)
            boxes[:, lo_col], boxes[:, hi_col] = lo - pitch / 2, hi + pitch / 2
    boxes[pixels == 0] = np.nan
    whole = np.zeros(count, bool)
    for j, (width, height) in enumerate(sizes):
        mine = image_index == j
        boxes[mine] = np.clip(boxes[mine], 0, [width, height, width, height])
        tiles = tile[mine]
        local = np.searchsorted(np.unique(tiles), tiles)  # tiles counted per image
        tile[mine] = local
        for t in np.unique(local):
            group = np.flatnonzero(mine)[local == t]
            span = boxes[group]
            spans_all = (
                np.nanmin(span[:, 0]) < 0.02 * width + 1
                and np.nanmin(span[:, 1]) < 0.02 * height + 1
                and np.nanmax(span[:, 2]) > 0.98 * width - 1
                and np.nanmax(span[:, 3]) > 0.98 * height - 1
            )
            whole[group] = spans_all
    return MeasuredLayout(placeholders, boxes, image_index, tile, whole, pixels, shared=shared)


def _pitch(
    tokens: np.ndarray, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, count: int, tile: np.ndarray
) -> np.ndarray:
    """Per token: the spacing of processed pixels along one axis, the median over the tokens of its tile.

    A tile is resized as a whole, so the spacing is the tile's; a token's own spacing is wrong where its pixels sit
    next to padding (an edge pixel's coordinate is the mean over its part inside the image, closer than a pitch).
    Tokens with a single column and no tile take the median over every token.
    """
    quantised = np.round(values, 2)
    order = np.lexsort((quantised, tokens))
    t, q = tokens[order], quantised[order]
    new = np.ones(len(t), bool)
    new[1:] = (t[1:] != t[:-1]) | (q[1:] != q[:-1])
    distinct = np.bincount(t[new], minlength=count)
    own = np.full(count, np.nan)
    several = distinct > 1
    own[several] = (hi[several] - lo[several]) / (distinct[several] - 1)
    fallback = float(np.nanmedian(own)) if several.any() else 0.0
    pitch = np.full(count, fallback)
    for t_id in np.unique(tile[tile >= 0]):
        mine = tile == t_id
        if np.isfinite(own[mine]).any():
            pitch[mine] = np.nanmedian(own[mine])
    return pitch


# -- verification ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayoutReport:
    """The adapter's boxes against the measured ones, per placeholder position (see :func:`verify`).

    Attributes:
        family: the adapter's family.
        sizes: ``(width, height)`` of every image.
        positions: ``(M,)`` placeholder positions compared.
        offsets: ``(M,)`` largest coordinate difference in ORIGINAL pixels (``inf`` where one side has a box and
            the other none, ``0`` where neither has one).
        adapter_boxes, measured_boxes: ``(M, 4)`` the two sets of boxes.
        tolerance: offsets above it count as differing.
        measured: the full measurement.
    """

    family: str
    sizes: list[tuple[int, int]]
    positions: np.ndarray
    offsets: np.ndarray
    adapter_boxes: np.ndarray
    measured_boxes: np.ndarray
    tolerance: float
    measured: MeasuredLayout

    @property
    def worst(self) -> float:
        """The largest offset in original pixels (``0`` with no image token)."""
        return float(self.offsets.max()) if len(self.offsets) else 0.0

    @property
    def differing(self) -> np.ndarray:
        """Positions whose boxes differ by more than :attr:`tolerance`."""
        return self.positions[self.offsets > self.tolerance]

    @property
    def ok(self) -> bool:
        return len(self.differing) == 0

    def summary(self, limit: int = 8) -> str:
        """A printable report for a bug report: sizes, worst offset, passes and the first differing tokens."""
        m = self.measured
        lines = [
            f"mmviz layout check: {self.family}, image(s) {', '.join(f'{w}×{h}' for w, h in self.sizes)}",
            f"  {len(self.positions)} image tokens, worst box offset {self.worst:.2f} px (tolerance "
            f"{self.tolerance} px, read-out step {m.resolution:.3f} px), {len(self.differing)} differ",
            f"  probe: {m.passes} in {m.seconds:.2f} s; {m.shared} shared pixel elements left unsplit",
        ]
        for index in np.flatnonzero(self.offsets > self.tolerance)[:limit]:
            lines.append(
                f"  position {self.positions[index]}: adapter {_box_text(self.adapter_boxes[index])}, measured "
                f"{_box_text(self.measured_boxes[index])} (image {m.image_index[index]}, tile {m.tile[index]}), "
                f"off by {self.offsets[index]:.2f} px"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _box_text(box: np.ndarray) -> str:
    return "none" if not np.isfinite(box[0]) else "(" + ", ".join(f"{v:.1f}" for v in box) + ")"


def verify(
    model: torch.nn.Module,
    processor: Any,
    image: Image.Image | Sequence[Image.Image],
    text: str | None = None,
    *,
    tolerance: float = 1.5,
) -> LayoutReport:
    """Compare the adapter's token boxes with the boxes the model itself reads (:func:`measure_layout`).

    Example:
        >>> report = mmviz.adapters.verify(model, processor, Image.new("RGB", (200, 120)))   # doctest: +SKIP
        >>> report.worst, report.ok                                                          # doctest: +SKIP
        (0.33, True)
        >>> print(report.summary())                                                          # doctest: +SKIP
    """
    from mmviz.adapters import adapter_for  # the registry imports this module's users: resolve it at call time

    images = [image] if isinstance(image, Image.Image) else list(image)
    images = [img.convert("RGB") for img in images]
    adapter = adapter_for(model, processor)
    text = adapter.format_prompt("Describe the image.", len(images)) if text is None else text
    measured = measure_layout(adapter, images, text)
    inputs = adapter.encode(images, text)
    layout = adapter.layout(inputs["input_ids"][0].numpy(), images, inputs)
    mine = layout.column_table.boxes[measured.positions].astype(np.float64)  # positions, or cross-attention keys
    theirs = measured.boxes
    has_mine, has_theirs = np.isfinite(mine[:, 0]), np.isfinite(theirs[:, 0])
    offsets = np.where(has_mine & has_theirs, np.nan_to_num(np.abs(mine - theirs).max(axis=1)), 0.0)
    offsets[has_mine != has_theirs] = np.inf
    return LayoutReport(
        family=adapter.family,
        sizes=[(img.width, img.height) for img in images],
        positions=measured.positions,
        offsets=offsets,
        adapter_boxes=mine,
        measured_boxes=theirs,
        tolerance=tolerance,
        measured=measured,
    )
