"""Image-attention share and head entropy (M2): how much attention reaches the image, per layer, head and token.

This is the data of the layer × head overview and of FastV-style "attention to image tokens collapses after
layer 2" plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from mmviz.adapters.layout import IMAGE, IMAGE_NEWLINE, IMAGE_SEP
from mmviz.records import Trace


@dataclass(frozen=True)
class ImageShare:
    """Attention allocation statistics over the recorded query rows.

    Attributes:
        layers: ``(L,)`` captured layer indices.
        share: ``(L, H)`` mean over rows of the attention mass on image tokens.
        token_share: ``(L, Q)`` head-mean image share of every recorded row (``positions``).
        entropy: ``(L, H)`` mean over rows of the attention entropy in nats (low = focused head).
        groups: group name → ``(L,)`` head- and row-mean mass on that group: ``first`` (position 0, the usual sink),
            ``image``, ``prompt`` (other prompt tokens), ``answer``. Sums to one per layer. For a cross-attention
            family (rows over the cross-attention keys) ``image`` is the image keys, ``prompt`` the other keys (CLS,
            padding), ``first`` and ``answer`` are 0.
        positions: ``(Q,)`` the rows used.
        row_share: ``(L, H, Q)`` image share of every head and row (the layer × head overview for one token).
        row_entropy: ``(L, H, Q)`` attention entropy of every head and row, in nats.
    """

    layers: np.ndarray
    share: np.ndarray
    token_share: np.ndarray
    entropy: np.ndarray
    groups: dict[str, np.ndarray]
    positions: np.ndarray
    row_share: np.ndarray
    row_entropy: np.ndarray


def image_share(trace: Trace, rows: Literal["all", "answer"] = "all") -> ImageShare:
    """Per-layer, per-head image share and entropy from the recorded rows (no model run).

    Example:
        >>> s = image_share(trace, rows="answer")                   # doctest: +SKIP
        >>> s.groups["image"].round(2)                              # one value per layer   # doctest: +SKIP
        array([0.61, 0.35, 0.12, 0.08])
    """
    selected = np.arange(len(trace.query_positions))
    if rows == "answer":
        selected = np.flatnonzero(trace.query_positions >= trace.answer_start - 1)
    attention = trace.attention_rows[:, :, selected]  # (L, H, Q, N)
    kinds = trace.layout.kinds
    is_image = np.isin(kinds, [IMAGE, IMAGE_NEWLINE, IMAGE_SEP])
    position = np.arange(len(kinds))
    if trace.layout.keys is not None:  # rows over the cross-attention keys, not over positions
        is_image = np.zeros(attention.shape[-1], bool)
        is_image[trace.image_positions] = True
        position = np.full(len(is_image), -1)
    on_image = attention[..., is_image].sum(axis=-1)  # (L, H, Q)
    entropy = -(attention * np.log(np.clip(attention, 1e-30, None))).sum(axis=-1)
    group_masks = {
        "first": position == 0,
        "image": is_image & (position != 0),
        "prompt": ~is_image & (position != 0) & (position < trace.answer_start),
        "answer": position >= trace.answer_start,
    }
    mean_rows = attention.mean(axis=(1, 2))  # (L, N)
    return ImageShare(
        layers=trace.layers,
        share=on_image.mean(axis=2),
        token_share=on_image.mean(axis=1),
        entropy=entropy.mean(axis=2),
        groups={name: mean_rows[:, mask].sum(axis=-1) for name, mask in group_masks.items()},
        positions=trace.query_positions[selected],
        row_share=on_image,
        row_entropy=entropy,
    )
