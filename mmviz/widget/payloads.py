"""What crosses to the browser: the Inspector's traits and the lazily fetched extras, built from a Trace.

Every tensor travels as a binary envelope (:mod:`mmviz.wire`) or as raw little-endian bytes; the contract
is ``docs/widget-protocol.md``. The first render needs :func:`layout_payload`, the head-mean attention and
:func:`head_stats`; per-head maps (:func:`heads_payload`), the logit lens (:func:`lens_payload`) and the
projection (:func:`projection_payload`) are fetched when a view needs them.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from mmviz import wire
from mmviz.adapters.layout import TEXT, VIEWS, TokenLayout
from mmviz.adapters.tokens import word_starts
from mmviz.methods import CATALOGUE, Map, image_share, logit_lens, projection
from mmviz.methods.logit_lens import lens_key
from mmviz.methods.projection import projection_key
from mmviz.records import Trace
from mmviz.selection import LayerChoice

MAX_DISPLAY_SIDE = 1024
"""Images are shipped downscaled to this long side; boxes stay in original pixels (the browser rescales)."""

MAP_LABEL = "raw attention"
MAP_DESCRIPTION = (
    "Softmax attention probability from the token's query row to each image token. It shows where a head "
    "reads, not what caused the answer."
)
LENS_TOP_K = 5  # the default of mmviz.methods.logit_lens, so the lens kept on the trace serves the plots too


def layout_payload(trace: Trace) -> dict[str, Any]:
    """The ``token_layout`` trait: the columns the browser needs, as little-endian binary.

    With soft cells (BLIP-2) the browser's columns are the cells: their boxes, grid, image and view ("query"); each
    cell's ``image_positions`` entry is the query it weighs most, and ``soft`` carries the query positions and the
    ``(Qn, C)`` weights that composed every shipped map. With cross-attention keys (Llama 3.2 Vision) the columns
    are the keys that have a box, and each one's ``image_positions`` entry is its image's placeholder token.
    """
    layout = trace.layout
    columns = trace.image_positions
    table = layout.column_table  # the layout, or the cross-attention keys that are the image columns
    tokenizer = trace.run.adapter.tokenizer if trace.run is not None else None
    logprobs = np.full(len(layout), np.nan, np.float32)
    logprobs[trace.answer_start : trace.answer_start + len(trace.answer_logprobs)] = trace.answer_logprobs
    payload: dict[str, Any] = {
        "v": 1,
        "n_positions": len(layout),
        "kinds": layout.kinds.astype(np.uint8).tobytes(),
        "answer_start": int(trace.answer_start),
        "query_positions": trace.query_positions.astype("<i4").tobytes(),
        "image_positions": (columns if layout.keys is None else layout.keys.anchors[columns]).astype("<i4").tobytes(),
        "boxes": table.boxes[columns].astype("<f4").tobytes(),
        "grid": table.grid[columns].astype("<i4").tobytes(),
        "image_index": table.image_index[columns].astype("<i4").tobytes(),
        "view": table.view[columns].astype(np.uint8).tobytes(),
        "view_names": list(VIEWS),
        "images": [geometry.to_dict() for geometry in layout.images],
        "word_start": np.asarray(_word_starts(trace, tokenizer), np.uint8).tobytes(),
        "logprobs": logprobs.astype("<f4").tobytes(),
    }
    soft = layout.soft
    if soft is not None:
        payload.update(
            image_positions=soft.positions[np.argmax(soft.weights, axis=0)].astype("<i4").tobytes(),
            boxes=soft.boxes.astype("<f4").tobytes(),
            grid=soft.grid.astype("<i4").tobytes(),
            image_index=soft.image_index.astype("<i4").tobytes(),
            view=np.full(len(soft), VIEWS.index("query"), np.uint8).tobytes(),
            soft={
                "positions": soft.positions.astype("<i4").tobytes(),
                "weights": soft.weights.astype("<f4").tobytes(),
                "label": soft.label,
            },
        )
    return payload


def video_meta(trace: Trace) -> dict[str, Any]:
    """``meta.video`` of a video trace: the number of original frames (the trace's images) and each temporal
    group's ``[first, last]`` frame; a group's tokens are the columns whose image index is its first frame.

    Example:
        >>> video_meta(trace)                                  # doctest: +SKIP
        {'n_frames': 5, 'groups': [[0, 1], [2, 3], [4, 4]]}
    """
    frames = trace.layout.frames
    if frames is None:
        raise ValueError("the trace was made from images, not a video")
    spans = frames[trace.image_positions]
    groups = sorted({(int(first), int(last)) for first, last in spans if first >= 0})
    return {"n_frames": len(trace.images), "groups": [list(group) for group in groups]}


def display_cells(values: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Values over the image columns ``(…, P)`` → values over the cells the widget draws.

    The identity for direct layouts (one box per image token); ``values @ soft.weights`` ``(…, C)`` when the image
    reaches the language model only through query tokens (:class:`~mmviz.adapters.layout.SoftCells`): each cell
    gets the queries' values weighted by how much each query reads it.
    """
    if layout.soft is None:
        return values
    return (np.asarray(values, dtype=np.float32) @ layout.soft.weights).astype(np.float32)


def indirect_note(layout: TokenLayout) -> str:
    """The sentence appended to a map's description when it is drawn through soft cells."""
    if layout.soft is None:
        return ""
    label = layout.soft.label
    return (
        f" {label[:1].upper()}{label[1:]}: each cell shows the query tokens' values weighted by how much each query "
        f"reads that cell."
    )


def attention_mean(trace: Trace) -> dict[str, Any]:
    """The ``attention_mean`` trait: uint8 ``[L, Q, P]``, the head mean (in float, before quantising)."""
    mean = trace.attention(head="mean")  # (L, Q, P)
    return wire.encode(display_cells(mean, trace.layout), scale_dims=2)


def head_stats(trace: Trace) -> dict[str, Any]:
    """The ``head_stats`` trait: uint8 ``[2, L, H, Q]``: image share (0) and attention entropy in nats (1) of every
    head and query row, for the layer × head overview. One range per (statistic, layer, head)."""
    share = trace.computed("image_share:all", lambda: image_share(trace))
    return wire.encode(np.stack([share.row_share, share.row_entropy]), scale_dims=3)


def heads_payload(trace: Trace, layer: LayerChoice) -> dict[str, Any]:
    """Per-head attention of one layer, uint8 ``[H, Q, P]`` (one range per head and row); ``layer = "mean"``: the
    mean over layers of every head."""
    values = trace.attention(layer=layer)
    return wire.encode(display_cells(values, trace.layout), scale_dims=2)


def lens_payload(trace: Trace) -> dict[str, Any]:
    """The logit lens of every position at every depth (:func:`mmviz.methods.logit_lens`), for the lens panel.

    ``top`` int32 ``[D, N, k]`` indexes ``vocab`` (display strings of the tokens that occur), ``top_probs``
    float16 ``[D, N, k]``; ``target`` int32 ``[N]`` (into ``vocab``) and ``target_ranks`` int32 ``[D, N]``: the
    rank (0 = top) of the token each position is read against at every depth; ``entropy`` float16 ``[D, N]``.
    Depth 0 is the embeddings, depth d the state after decoder layer d − 1.
    """
    lens = logit_lens(trace, k=LENS_TOP_K)
    used, inverse = np.unique(np.concatenate([lens.top_ids.ravel(), lens.target_ids]), return_inverse=True)
    top = inverse[: lens.top_ids.size].reshape(lens.top_ids.shape)
    target = inverse[lens.top_ids.size :]
    vocab = _display_strings(trace, lens, used.tolist())
    depths, n, k = lens.top_ids.shape
    return {
        "depths": depths,
        "n_positions": n,
        "k": k,
        "vocab": vocab,
        "top": top.astype("<i4").tobytes(),
        "top_probs": wire.encode(lens.top_probs, dtype="float16"),
        "target": target.astype("<i4").tobytes(),
        "target_ranks": lens.target_ranks.astype("<i4").tobytes(),
        "entropy": wire.encode(lens.entropy, dtype="float16"),
    }


def _display_strings(trace: Trace, lens: Any, ids: list[int]) -> list[str]:
    """Display strings of token ``ids``: the tokenizer's, or without the model (a loaded trace) the strings the lens
    and the trace kept (every target is a token of the sequence)."""
    if trace.run is not None:
        return trace.run.adapter.display_tokens(ids)
    known = dict(zip(np.asarray(trace.token_ids).tolist(), trace.tokens, strict=True))
    flat = (token for layer in lens.top_tokens for row in layer for token in row)
    known.update(zip(lens.top_ids.ravel().tolist(), flat, strict=True))
    return [known.get(token_id, f"<{token_id}>") for token_id in ids]


def projection_payload(trace: Trace) -> dict[str, Any]:
    """The aligned PCA projection (:func:`mmviz.methods.projection`): ``coords`` float32 ``[D, N, 2]`` in one frame
    for all depths, ``is_image`` uint8 ``[N]``, ``grid`` int32 ``[N, 2]`` (−1 for text), ``modality_gap`` float32
    ``[D]`` and the variance the two components explain."""
    result = projection(trace)
    return {
        "depths": int(result.coords.shape[0]),
        "n_positions": int(result.coords.shape[1]),
        "coords": wire.encode(result.coords, dtype="float32"),
        "is_image": result.is_image.astype(np.uint8).tobytes(),
        "grid": result.grid.astype("<i4").tobytes(),
        "modality_gap": wire.encode(result.modality_gap, dtype="float32"),
        "explained": float(result.explained),
    }


def _word_starts(trace: Trace, tokenizer: object) -> Any:
    """The trace's own word starts (a loaded trace keeps them), else the tokenizer's."""
    if trace.word_starts is not None:
        return trace.word_starts
    return word_starts(tokenizer, trace.layout.tokens, trace.layout.kinds == TEXT)


def available_extras(trace: Trace) -> dict[str, bool]:
    """What the browser may fetch: per-head maps always; the logit lens and the projection with the model, or when
    they were kept (a trace loaded from a file); the projection also from captured hidden states, and only when the
    image is at sequence positions (not for a family that reads it through cross-attention layers)."""
    model = trace.run is not None
    in_sequence = trace.layout.keys is None
    return {
        "heads": True,
        "lens": model or lens_key(LENS_TOP_K) in trace.results,
        "projection": in_sequence and (model or trace.hidden_states is not None or projection_key() in trace.results),
    }


def method_catalogue(trace: Trace) -> list[dict[str, Any]]:
    """The ``methods`` trait: every catalogue method (computed? computable: needs the model? refused by the family,
    and why), then any other map the trace carries (e.g. a dual encoder's patch–text similarity), each described by
    its map's own spec."""
    cross = trace.layout.keys is not None  # the image is at cross-attention keys, at no sequence position
    entries = []
    for name, spec in CATALOGUE.items():
        refused = cross and spec.sequence_positions
        entries.append(
            {
                **spec.describe(),
                "computed": name == "attention" or name in trace.maps,
                # instant: from the recorded rows alone
                "available": not refused and (trace.run is not None or spec.cost == "instant"),
                **({"unavailable": "needs the image at sequence positions"} if refused else {}),
            }
        )
    for name, result in trace.maps.items():
        if name not in CATALOGUE:
            entries.append(
                {
                    "name": name,
                    "label": result.label,
                    "meaning": result.meaning,
                    "signed": result.signed,
                    "layered": result.layers is not None,
                    "cost": "instant",
                    "computed": True,
                    "available": True,
                }
            )
    return entries


def map_payload(result: Map, layout: TokenLayout | None = None) -> dict[str, Any]:
    """One entry of the ``maps`` trait: values ``[L?, R, P]`` (uint8, one range per row), rows' positions, layers.

    Per-layer maps have one slice per decoder layer in ``layers`` (slice ℓ = at or after layer ℓ); others have one.
    Given the trace's ``layout``, maps over its soft-cell query columns are composed onto the cells
    (:func:`display_cells`, ``P`` becomes ``C``) and their meaning says so.
    """
    values = result.values
    meaning = result.meaning
    layers = None if result.layers is None else [int(layer) for layer in result.layers]
    if layout is not None and layout.soft is not None and np.array_equal(result.columns, layout.soft.positions):
        values = display_cells(np.nan_to_num(values), layout)
        meaning += indirect_note(layout)
    return {
        "label": result.label,
        "meaning": meaning,
        "signed": bool(result.signed),
        "rows": result.rows,
        "values": wire.encode(np.nan_to_num(values), scale_dims=values.ndim - 1),
        "positions": np.asarray(result.positions).astype("<i4").tobytes(),
        "layers": layers,
    }


def png_bytes(image: Image.Image) -> bytes:
    """PNG of ``image``, downscaled to :data:`MAX_DISPLAY_SIDE` on its long side if larger."""
    if max(image.size) > MAX_DISPLAY_SIDE:
        image = image.copy()
        image.thumbnail((MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
