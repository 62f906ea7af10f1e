"""Patch ablation (Neo et al. 2024, arXiv 2410.07149): replace chosen image tokens and re-run.

Two kinds of fill:

* **token fills** replace the chosen image tokens' embeddings at the language model's input: the mean image token
  of this input (``"mean"``), zeros (``"zero"``), the blurred image's tokens (``"blur"``) or another image's tokens
  (``"other"``: the other image resized to the traced image's size, through the same processor). They test whether
  the language model relies on those positions; the vision tower may already have copied their content elsewhere.
* the **pixel fill** ``"paint"`` occludes before the vision tower: the chosen tokens' boxes (in the original image's
  pixels, widened by a margin) are painted with the image's mean colour, the painted image goes through the same
  processor (its token layout is checked to be the traced one) and the whole model runs on it. Nothing of the
  painted region reaches any token, so this removes what the vision tower would have spread into neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image, ImageFilter

from mmviz.capture.run import EmbeddingEdit, ModelRun, replacing_columns, to_device
from mmviz.errors import InputError
from mmviz.inputs import ImageLike, load_image
from mmviz.methods.common import (
    Effect,
    baseline_embeddings,
    first_logit_of,
    inference_context,
    model_run,
    scores,
)
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.records import Trace

AblationFill = Literal["mean", "zero", "blur", "other", "paint"]
ABLATION_FILLS: tuple[str, ...] = get_args(AblationFill)
"""Every fill :func:`ablate` takes: the token baselines (:data:`~mmviz.methods.BASELINES`), another image's tokens
and pixel painting."""

PaintColour = Literal["mean", "gray", "blur"]
PAINT_COLOURS: tuple[str, ...] = get_args(PaintColour)
"""What ``"paint"`` paints the boxes with: the image's mean colour, mid grey, or the blurred image's pixels."""

DEFAULT_PAINT_MARGIN = 0.0
"""``"paint"``'s margin around each chosen box, as a share of the box's side (0.5: half a box on every side). On
the shapes world (``benchmarks/interventions.py``) the selection's own 1-cell border already covers the spread of
the object's pixels; a margin adds background hits faster than object hits."""

GREY = (128, 128, 128)


def ablate(
    trace: Trace,
    positions: Sequence[int],
    targets: TargetLike = None,
    *,
    baseline: AblationFill = "mean",
    other_image: ImageLike | None = None,
    margin: float = DEFAULT_PAINT_MARGIN,
    colour: PaintColour = "mean",
) -> Effect:
    """Replace the image tokens at sequence ``positions`` by the ``baseline`` and report each target's score change.

    Args:
        baseline: ``"mean"``, ``"zero"``, ``"blur"`` (token fills), ``"other"`` (``other_image``'s tokens at the
            same positions) or ``"paint"`` (the tokens' boxes painted on the image before the vision tower).
        other_image: the image whose tokens ``"other"`` puts in (resized to each traced image's size).
        margin: ``"paint"`` only: widen every box by this share of its side on each side.
        colour: ``"paint"`` only: ``"mean"`` (the image's mean colour), ``"gray"`` or ``"blur"`` (blurred pixels).

    Two forwards: one clean (the clean scores, and the embeddings the token fills edit), one with the fill;
    ``"blur"`` and ``"other"`` one more for the replacement tokens. Several at once: :func:`ablate_many`.

    Example:
        >>> ablate(trace, trace.image_positions[:10]).delta            # doctest: +SKIP
        array([-0.41])
        >>> ablate(trace, trace.image_positions[:10], baseline="paint").delta   # doctest: +SKIP
    """
    request = {"positions": positions, "baseline": baseline, "other_image": other_image, "margin": margin}
    return ablate_many(trace, [{**request, "colour": colour}], targets)[0]


@dataclass(frozen=True)
class _Request:
    positions: np.ndarray
    baseline: str
    other_image: ImageLike | None
    margin: float
    colour: str

    @property
    def description(self) -> str:
        n = len(self.positions)
        if self.baseline == "paint":
            return f"{n} image tokens' boxes painted ({self.colour}, margin {self.margin:g}) before the vision tower"
        what = "another image's tokens" if self.baseline == "other" else f"the {self.baseline} baseline"
        return f"{n} image tokens replaced by {what}"


def _request(trace: Trace, raw: object) -> _Request:
    """One :func:`ablate_many` request checked against ``trace`` (no model run)."""
    if not isinstance(raw, dict):
        raise InputError(f"an ablation request is a dict of ablate's arguments, not {type(raw).__name__}")
    extra = sorted(str(key) for key in set(raw) - {"positions", "baseline", "other_image", "margin", "colour"})
    if extra or "positions" not in raw:
        raise InputError(f"an ablation request has positions, baseline, other_image, margin, colour; got {extra}")
    baseline, other_image = raw.get("baseline", "mean"), raw.get("other_image")
    margin, colour = raw.get("margin", DEFAULT_PAINT_MARGIN), raw.get("colour", "mean")
    if baseline not in ABLATION_FILLS:
        raise InputError(f"baseline must be one of {list(ABLATION_FILLS)}, not {baseline!r}"[:300])
    if baseline == "other" and other_image is None:
        raise InputError("baseline='other' needs other_image: the image whose tokens replace the chosen ones")
    if baseline != "other" and other_image is not None:
        raise InputError(f"other_image is only used by baseline='other', not {baseline!r}")
    if baseline == "paint":
        margin = check_margin(margin)
        if colour not in PAINT_COLOURS:
            raise InputError(f"colour must be one of {list(PAINT_COLOURS)}, not {colour!r}"[:300])
    wanted = np.asarray(raw["positions"], dtype=np.int64).reshape(-1)
    unknown = sorted(set(wanted.tolist()) - set(trace.image_positions.tolist()))
    if unknown:
        raise InputError(
            f"positions {unknown[:5]} are not image positions with a box; choose from trace.image_positions"
        )
    return _Request(wanted, baseline, other_image, float(margin), colour)  # type: ignore[arg-type]


def ablate_many(
    trace: Trace, requests: Sequence[dict[str, Any]], targets: TargetLike = None, *, batch_size: int = 16
) -> list[Effect]:
    """:func:`ablate` for several ``requests`` (dicts of its keyword arguments, ``positions`` required), sharing
    the work: one clean forward for all, the blurred image's tokens once, and the token fills batched
    (``batch_size`` rows per forward of the language model and head alone, when the model confirms that path;
    ``"paint"`` needs a full forward each). Every request is checked before the first forward.

    Scores agree with one :func:`ablate` each up to batching's rounding (float32: ~1e-6).

    Example:
        >>> ablate_many(trace, [{"positions": [5, 6]}, {"positions": [5, 6], "baseline": "paint"}])  # doctest: +SKIP
        [Effect(...), Effect(...)]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a whole number ≥ 1, not {batch_size!r}")
    checked = [_request(trace, raw) for raw in requests]
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    if not checked:
        return []
    first = first_logit_of(resolved)
    index = torch.as_tensor(trace.image_positions, dtype=torch.long)
    seen: list[torch.Tensor] = []

    def keep(embeds: torch.Tensor) -> torch.Tensor:
        seen.append(embeds.detach().float())
        return embeds

    with inference_context(run):
        logits = run.forward(edit=keep, first_logit=first)
    clean = _read(resolved, logits, run.input_ids, first)[0]
    clean_embeddings = seen[0][:, index]
    changed: dict[int, np.ndarray] = {}
    rows: list[tuple[int, torch.Tensor]] = []
    replacements: dict[Any, torch.Tensor] = {}
    for number, request in enumerate(checked):
        if request.baseline == "paint":
            changed[number] = scores(run, resolved, inputs=_painted_inputs(trace, run, request))
            continue
        rows.append((number, _edited_columns(trace, run, request, clean_embeddings, replacements)))
    if len(rows) == 1:  # one: the full forward, as a single ablation has always run
        number, edited = rows[0]
        changed[number] = scores(run, resolved, edit=replacing_columns(index, edited))
    else:
        with inference_context(run):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                values = torch.cat([edited for _, edited in chunk], dim=0)
                edit = replacing_columns(index, values)
                logits = run.edited_forward(batch=len(chunk), edit=edit, first_logit=first)
                for (number, _), row in zip(chunk, _read(resolved, logits, run.input_ids, first), strict=True):
                    changed[number] = row
    positions = np.array([t.position for t in resolved])
    return [
        Effect(
            positions=positions,
            clean=clean,
            changed=changed[number],
            delta=changed[number] - clean,
            description=request.description,
        )
        for number, request in enumerate(checked)
    ]


def _painted_inputs(trace: Trace, run: ModelRun, request: _Request) -> dict[str, torch.Tensor]:
    images = painted_images(trace, request.positions, margin=request.margin, colour=request.colour)  # type: ignore[arg-type]
    return image_inputs(run, images)


def _edited_columns(
    trace: Trace, run: ModelRun, request: _Request, clean: torch.Tensor, replacements: dict[Any, torch.Tensor]
) -> torch.Tensor:
    """The image columns' language-model inputs ``(1, C, D)`` with the request's token fill at its positions (the
    fill's tokens computed once per fill into ``replacements``), the others ``clean``."""
    index = torch.as_tensor(trace.image_positions, dtype=torch.long)
    key: Any = request.baseline if request.baseline != "other" else ("other", id(request.other_image))
    if key not in replacements:
        if request.baseline == "other":
            other = load_image(request.other_image)  # type: ignore[arg-type]
            resized = [other.resize(image.size, Image.Resampling.BICUBIC) for image in run.images]
            replacements[key] = run.embeddings(image_inputs(run, resized))[:, index]
        else:
            replacements[key] = baseline_embeddings(run, clean, index, request.baseline)  # type: ignore[arg-type]
    chosen = torch.as_tensor(np.isin(trace.image_positions, request.positions), device=clean.device)
    return torch.where(chosen[None, :, None], replacements[key], clean)


def ablation_change(
    trace: Trace, run: ModelRun, request: dict[str, Any]
) -> tuple[EmbeddingEdit | None, dict[str, torch.Tensor] | None]:
    """What :func:`ablate` changes in the forward for one ``request`` (its keyword arguments): an embedding edit
    (token fills replace the image columns' language-model inputs) or new inputs (``"paint"``: the painted pixels,
    the whole model runs on them). The image columns lie in the prompt, so the edit fits any longer sequence, e.g.
    each step of a greedy decode (:func:`mmviz.interventions.generate`).

    Example:
        >>> change = ablation_change(trace, trace.run, {"positions": [5, 6], "baseline": "zero"})  # doctest: +SKIP
        >>> trace.run.forward(edit=change[0])                                                  # doctest: +SKIP
    """
    checked = _request(trace, request)
    if checked.baseline == "paint":
        return None, _painted_inputs(trace, run, checked)
    index = torch.as_tensor(trace.image_positions, dtype=torch.long)
    clean = run.embeddings()[:, index]
    return replacing_columns(index, _edited_columns(trace, run, checked, clean, {})), None


def _read(targets: Sequence[Any], logits: torch.Tensor, input_ids: torch.Tensor, first: int) -> np.ndarray:
    """``(B, T)`` float64 scores of every target in every row of ``logits``."""
    columns = [target(logits, input_ids, first).detach().double().cpu().numpy().reshape(-1) for target in targets]
    return np.stack(columns, axis=1)


def check_margin(margin: object) -> float:
    """A paint margin (a share of a box's side, 0 … 8), else :class:`InputError`."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.integer, np.floating)):
        raise InputError(f"margin must be a number (a share of a token box's side), not {margin!r}"[:300])
    if not 0 <= float(margin) <= 8:
        raise InputError(f"margin must be in 0 … 8 box sides, not {margin!r}")
    return float(margin)


def painted_images(
    trace: Trace, positions: Sequence[int], *, margin: float = DEFAULT_PAINT_MARGIN, colour: PaintColour = "mean"
) -> list[Image.Image]:
    """The traced images with the boxes of the image tokens at ``positions`` painted over (original pixels).

    Each box ``(x0, y0, x1, y1)`` is widened by ``margin`` × its width / height on every side, rounded outwards to
    whole pixels and clipped to its image; images with no chosen token come back unchanged (as copies). A video
    token's box is painted on every frame of its span (the frames the token fuses).

    Example:
        >>> painted_images(trace, trace.image_positions[:4])[0].size == trace.images[0].size   # doctest: +SKIP
        True
    """
    table = trace.layout.column_table  # the layout, or a cross-attention family's keys
    wanted = np.asarray(positions, dtype=np.int64).reshape(-1)
    boxes = np.asarray(table.boxes, dtype=np.float64)[wanted]
    which = np.asarray(table.image_index)[wanted]
    spans = np.stack([which, which], axis=1) if trace.layout.frames is None else trace.layout.frames[wanted]
    if not np.isfinite(boxes).all():
        raise InputError(
            "some chosen image tokens have no box in the image (query tokens, such as a Q-Former's, summarise the "
            "whole image), so there is nothing to paint: use a token fill (zero, mean, blur, other) instead"
        )
    out = []
    for number, image in enumerate(trace.images):
        pixels = np.array(image.convert("RGB"), dtype=np.uint8)
        mine = boxes[(spans[:, 0] <= number) & (number <= spans[:, 1])]
        if len(mine):
            if colour == "mean":
                mean = np.rint(pixels.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
                fill: np.ndarray = np.broadcast_to(mean, pixels.shape)
            elif colour == "gray":
                fill = np.broadcast_to(np.array(GREY, np.uint8), pixels.shape)
            else:
                radius = max(image.size) / 8
                fill = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)), np.uint8)
            mask = box_mask(mine, (pixels.shape[0], pixels.shape[1]), margin)
            pixels = np.where(mask[:, :, None], fill, pixels)
        out.append(Image.fromarray(pixels, mode="RGB"))
    return out


def box_mask(boxes: np.ndarray, shape: tuple[int, int], margin: float = 0.0) -> np.ndarray:
    """Boolean ``shape`` mask of the pixels inside any of ``boxes`` ``(K, 4)`` (x0, y0, x1, y1), each widened by
    ``margin`` × its side on every side and rounded outwards to whole pixels.

    Example:
        >>> box_mask(np.array([[1.0, 0.0, 2.5, 1.0]]), (2, 4)).astype(int).tolist()
        [[0, 1, 1, 0], [0, 0, 0, 0]]
    """
    height, width = shape
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        dx, dy = margin * (x1 - x0), margin * (y1 - y0)
        left, top = int(np.clip(np.floor(x0 - dx), 0, width)), int(np.clip(np.floor(y0 - dy), 0, height))
        right, bottom = int(np.clip(np.ceil(x1 + dx), 0, width)), int(np.clip(np.ceil(y1 + dy), 0, height))
        mask[top:bottom, left:right] = True
    return mask


def image_inputs(run: ModelRun, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The run's inputs with the pixels of ``images`` (one per traced image, same sizes) through the same image
    processor; :class:`InputError` if the processor would lay them out differently (other grids, other shapes).

    Example:
        >>> image_inputs(trace.run, painted_images(trace, [5]))["pixel_values"].shape   # doctest: +SKIP
    """
    if len(images) != len(run.images):
        raise InputError(f"{len(images)} replacement images for a trace of {len(run.images)}")
    for new, old in zip(images, run.images, strict=True):
        if new.size != old.size:
            raise InputError(
                f"a replacement image is {new.size[0]}×{new.size[1]}, the traced one {old.size[0]}×{old.size[1]}"
            )
    pixels = run.pixel_inputs(list(images))  # a video's frames through its video processor
    if not pixels:
        raise InputError("the image processor's outputs name none of the model's image inputs; cannot replace pixels")
    for key, value in pixels.items():
        old = run.inputs[key]
        if isinstance(value, torch.Tensor) and isinstance(old, torch.Tensor):
            same = tuple(value.shape) == tuple(old.shape) and (
                old.is_floating_point() or torch.equal(value.cpu(), old.detach().cpu())
            )
        else:
            same = bool(np.array_equal(np.asarray(value), np.asarray(old)))
        if not same:
            raise InputError(
                f"the processor laid the replacement image out differently ({key!r} differs from the traced input), "
                f"so its tokens would not line up with the trace's"
            )
    return {**run.inputs, **to_device(pixels, run.model)}
