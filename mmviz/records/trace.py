"""``Trace``: what one analysis forward recorded, as plain data, and the one verb that adds maps to it.

A trace is made by :func:`mmviz.trace` (generative models) or its dual-encoder path; the methods read it, the
widget and the plots show it. It imports no method: :meth:`Trace.compute` finds them by name in the catalogue
(:mod:`mmviz.records.spec`), which importing :mod:`mmviz.methods` fills.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from mmviz import selection
from mmviz.adapters import TokenLayout
from mmviz.capture.run import ModelRun
from mmviz.errors import InputError
from mmviz.records import trace_file
from mmviz.records.map import Map
from mmviz.records.spec import lookup
from mmviz.selection import HeadChoice, LayerChoice

_T = TypeVar("_T")

_ATTACH: Callable[[Trace, torch.nn.Module, Any], Trace] | None = None


def register_attach(attach: Callable[[Trace, torch.nn.Module, Any], Trace]) -> None:
    """Called by :mod:`mmviz.tracing`, which knows how to rebuild a model run (this layer does not)."""
    global _ATTACH
    _ATTACH = attach


def load(path: str | Path) -> Trace:
    """Read a trace file written by :meth:`Trace.save`; the big arrays are read lazily, a layer at a time.

    Raises :class:`~mmviz.records.trace_file.TraceFormatError` for a damaged or hostile file (nothing in a file is
    unpickled or run).

    Example:
        >>> trace = mmviz.load("cat.mmviz")                           # doctest: +SKIP
        >>> mmviz.inspect(trace)                                      # the widget, without the model   # doctest: +SKIP
    """
    return trace_file.load(path, Trace)


@dataclass(frozen=True, repr=False)
class Trace:
    """What one analysis forward recorded, linked to the ORIGINAL image(s).

    Attributes:
        tokens: display string of every sequence position (prompt and answer).
        token_ids: the token ids, shape ``(N,)``.
        layout: the :class:`~mmviz.adapters.TokenLayout` (kind, grid cell and original-pixel box per position).
        prompt: the prompt as the model saw it (chat template applied).
        answer: the answer text (generated, or the one passed in).
        answer_start: position of the first answer token.
        answer_logprobs: ``log p(answer token | everything before it)`` per answer token.
        images: the original images, RGB.
        query_positions: positions whose attention rows were recorded (every text position by default).
        attention_rows: float32 ``(L, H, Q, N)``: attention of each recorded query row over every position
            (``L`` = :attr:`layers`; ``H`` = 1 when the plan asked for the head mean only).
        layers: the decoder layers whose rows were recorded (``0 … num_layers − 1``).
        head_mean: whether only the mean over heads was kept.
        hidden_states: float32 ``(L + 1, N, d)`` residual stream by DEPTH (depth 0 = the embeddings, d = after
            decoder layer d − 1, before the final norm), when the plan asked for it.
        vision_attention: float32 ``(L_v, images, H_v, N_v, N_v)``: the vision tower's own attention, when asked.
        maps: method name → :class:`~mmviz.records.map.Map` computed for this trace (:meth:`compute` adds to it;
            ``trace(..., methods=[...])``, the widget's method switcher and the plots call it).
        run: the model and inputs of the analysis forward, for methods that run the model again (gradients,
            perturbations); None for a trace rebuilt without its model.

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> trace.attention(layer=3, head="mean").shape      # (query rows, image tokens)   # doctest: +SKIP
        (14, 576)
    """

    tokens: list[str]
    token_ids: np.ndarray
    layout: TokenLayout
    prompt: str
    answer: str
    answer_start: int
    answer_logprobs: np.ndarray
    images: list[Image.Image]
    family: str
    model_name: str
    num_layers: int
    num_heads: int
    query_positions: np.ndarray
    attention_rows: np.ndarray
    layers: np.ndarray
    head_mean: bool = False
    hidden_states: np.ndarray | None = None
    vision_attention: np.ndarray | None = None
    maps: dict[str, Map] = field(default_factory=dict)
    run: ModelRun | None = field(default=None, compare=False)
    word_starts: np.ndarray | None = field(default=None, compare=False)
    """Whether each position starts a word (for merging sub-word pieces); None: asked of the tokenizer."""
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)
    """For a trace loaded from a file: the model that made it (name, revision, dtype, fingerprint) and the versions
    that wrote the file."""
    results: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Derived results that several consumers share (the widget's lens panel and ``mmviz.plots``), see
    :meth:`computed`."""

    def save(self, path: str | Path) -> Path:
        """Write this trace to ``path`` (a directory, or one zip when the name ends in ``.mmviz``): safetensors
        arrays, a JSON sidecar and the original images as PNG. :func:`mmviz.load` reads it back without the model.

        Example:
            >>> trace.save("cat.mmviz")                                   # doctest: +SKIP
            PosixPath('cat.mmviz')
        """
        return trace_file.save(self, path)

    def attach(self, model: torch.nn.Module, processor: Any) -> Trace:
        """This trace re-linked to ``model`` (which must be the model that made it, checked by its fingerprint and
        by encoding the prompt again), so that methods which run the model work on a loaded trace.

        Example:
            >>> linked = mmviz.load("cat.mmviz").attach(model, processor)     # doctest: +SKIP
            >>> linked.compute("relevancy")                                   # doctest: +SKIP
        """
        if _ATTACH is None:  # pragma: no cover - mmviz.tracing registers it on import
            raise RuntimeError("import mmviz.tracing first")
        return _ATTACH(self, model, processor)

    def computed(self, key: str, compute: Callable[[], _T]) -> _T:
        """``compute()`` the first time ``key`` is asked for, the cached result afterwards.

        Example:
            >>> lens = trace.computed("logit_lens", lambda: mmviz.methods.logit_lens(trace))   # doctest: +SKIP
        """
        if key not in self.results:
            self.results[key] = compute()
        return self.results[key]

    @property
    def image_positions(self) -> np.ndarray:
        """Sequence positions of the image tokens that have a box: the columns of :meth:`attention`."""
        return self.layout.image_positions

    def attention(self, layer: LayerChoice | None = None, head: HeadChoice | None = None) -> np.ndarray:
        """Raw attention from every recorded text/answer row to every image token.

        Args:
            layer: a decoder layer ``0 … L−1``, ``"mean"`` (average over the captured layers) or None for all
                captured layers.
            head: a head ``0 … H−1``, ``"mean"`` (average over heads) or None for all heads.

        Returns:
            float32 array ``(L, H, Q, P)``; a ``layer`` or ``head`` choice drops that axis. Rows follow
            :attr:`query_positions`, columns :attr:`image_positions`.
        """
        values = self.attention_rows
        if layer is not None:
            chosen = selection.layer(layer, self.num_layers)
            if chosen == selection.MEAN:
                values = values[..., self.image_positions].mean(axis=0)
            else:
                selection.captured([chosen], self.layers.tolist())  # type: ignore[list-item]
                values = values[int(np.flatnonzero(self.layers == chosen)[0])][..., self.image_positions]
        else:
            values = values[..., self.image_positions]
        head_axis = 0 if layer is not None else 1
        if head is not None:
            chosen_head = selection.head(head, self.num_heads)
            if chosen_head == selection.MEAN:
                return values.mean(axis=head_axis)
            if self.head_mean:
                raise InputError("only the mean over heads was captured (CapturePlan(head_mean=True)); use head='mean'")
            values = np.take(values, chosen_head, axis=head_axis)
        return values

    def compute(self, name: str, **settings: Any) -> Map:
        """Compute the map of method ``name`` (a key of :data:`mmviz.methods.CATALOGUE`) and keep it in
        :attr:`maps`; with the same settings again, the kept map is returned without running anything.

        Example:
            >>> trace.compute("relevancy").row(trace.answer_start).shape           # doctest: +SKIP
            (576,)
            >>> trace.compute("occlusion", window=4, baseline="mean")              # doctest: +SKIP
        """
        spec = lookup(name)
        kept = self.maps.get(name)
        if kept is not None and _same(kept.info.get("settings"), {**spec.settings, **settings}):
            return kept
        self.maps[name] = spec.compute(self, **settings)
        return self.maps[name]

    def row_of(self, position: int) -> int:
        """Row index (into :meth:`attention`) of sequence position ``position``; raises if it has no row."""
        found = np.flatnonzero(self.query_positions == position)
        if len(found) == 0:
            raise InputError(f"position {position} has no attention row (image tokens are columns, not rows)")
        return int(found[0])

    def __repr__(self) -> str:
        n_image = len(self.image_positions)
        return (
            f"<mmviz.Trace {self.family} '{self.model_name}': {len(self.tokens)} positions "
            f"({n_image} image tokens), {self.num_layers} layers × {self.num_heads} heads, "
            f"answer {self.answer!r}>"
        )


def _same(kept: object, wanted: dict[str, Any]) -> bool:
    """Whether a kept map's settings are ``wanted`` (settings holding arrays compare element-wise, else unequal)."""
    if not isinstance(kept, dict) or kept.keys() != wanted.keys():
        return False
    try:
        return all(bool(np.all(kept[key] == wanted[key])) for key in wanted)
    except (TypeError, ValueError):  # shapes that do not broadcast, values without an equality
        return False


def model_name(model: torch.nn.Module) -> str:
    """The checkpoint name of ``model`` (``config._name_or_path``), or its model type when it has none."""
    return str(getattr(model.config, "_name_or_path", "") or model.config.model_type)
