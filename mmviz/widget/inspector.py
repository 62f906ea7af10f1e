"""``mmviz.Inspector``: the linked image / token / attention widget over a :class:`~mmviz.Trace`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anywidget
import torch
import traitlets
from ipywidgets.widgets.widget import _remove_buffers

from mmviz import selection
from mmviz.errors import InputError
from mmviz.features import SparseAutoencoder
from mmviz.inputs import ImageLike, load_image
from mmviz.methods import CATALOGUE, Map
from mmviz.records import load
from mmviz.selection import HeadChoice, LayerChoice
from mmviz.tracing import Trace, trace
from mmviz.widget import bundle, export, payloads
from mmviz.widget.browser_state import BrowserOwned, checked, echo, printable, whole
from mmviz.widget.features import FETCHES as FEATURE_FETCHES
from mmviz.widget.features import Features
from mmviz.widget.interventions import Interventions
from mmviz.widget.payloads import MAP_DESCRIPTION, MAP_LABEL, indirect_note

log = logging.getLogger("mmviz")

BROWSER_OWNED = ("layer", "head", "pinned", "method")
"""The traits the browser may change. Every other synced trait is the kernel's: a browser update of one is refused
and the kernel's value sent back."""

EXPORT_HEADS_LIMIT = 64 * 2**20
"""A standalone page embeds every layer's per-head maps when they take at most this many bytes."""


class Inspector(BrowserOwned, anywidget.AnyWidget):
    """Linked views of a trace: hover a token to see where it looked, hover a patch to see who looked at it.

    The first render ships what every hover and layer change needs (the head-mean attention of every layer and
    row, per-head statistics, the token layout) as quantised binary envelopes (``docs/widget-protocol.md``);
    per-head maps, the logit lens and the projection are fetched by the browser when a view first needs them, and
    cached there. The kernel is not involved while you explore what has arrived. While a view is idle with a single
    head selected, it prefetches the per-head maps of the layer shown and of its neighbours (±2, at most one request
    at a time); ``prefetch=False`` (or ``inspector.prefetch = False``) makes the kernel decline them.

    The Interventions panel ablates selected image patches or knocks the image out of a window of layers and shows
    Δ log p of every answer token (:mod:`mmviz.widget.interventions`); its runs are kept in the trace. On request it
    decodes the greedy answer with the intervention applied. ``other_image`` offers the "other" fill (another image's
    tokens); ``reliance`` measures each answer token's image reliance at once (the token strip shades and sorts by
    it; without it the strip measures on request).

    The Features panel lists the MLP neurons of any decoder layer (with the model attached) and, given ``sae``
    (:func:`mmviz.features.load_sae`), that SAE's latents at the focused patch or token; a unit's map, its card
    and clamping a latent are asked of the kernel on request (:mod:`mmviz.widget.features`).

    Example:
        >>> inspector = mmviz.inspect(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> inspector.layer = 3; inspector.head = "mean"  # select layer 3, mean over heads   # doctest: +SKIP
        >>> inspector.trace.answer                                                            # doctest: +SKIP
    """

    _esm = bundle.esm()
    _css = bundle.css()

    BROWSER_OWNED = BROWSER_OWNED
    revision = traitlets.Int(0).tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    token_layout = traitlets.Dict().tag(sync=True)
    images = traitlets.List(traitlets.Bytes()).tag(sync=True)
    attention_mean = traitlets.Dict().tag(sync=True)
    head_stats = traitlets.Dict().tag(sync=True)
    meta = traitlets.Dict().tag(sync=True)
    layer = traitlets.Union([traitlets.Int(), traitlets.Unicode()], default_value=0).tag(sync=True)
    """A decoder layer ``0 … L−1`` or ``"mean"`` (the mean over layers)."""
    head = traitlets.Union([traitlets.Int(), traitlets.Unicode()], default_value="mean").tag(sync=True)
    """A head ``0 … H−1`` or ``"mean"`` (the mean over heads)."""
    pinned = traitlets.Int(-1).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    method = traitlets.Unicode("attention").tag(sync=True)
    methods = traitlets.List(traitlets.Dict()).tag(sync=True)
    maps = traitlets.Dict().tag(sync=True)
    busy = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        trace: Trace,
        *,
        layer: LayerChoice | None = None,
        head: HeadChoice = "mean",
        prefetch: bool = True,
        sae: SparseAutoencoder | None = None,
        other_image: ImageLike | None = None,
        reliance: str | None = None,
    ) -> None:
        if not isinstance(trace, Trace):
            raise TypeError(f"Inspector takes an mmviz.Trace (from mmviz.trace(...)), not {type(trace).__name__}")
        if trace.head_mean or len(trace.layers) != trace.num_layers:
            raise ValueError(
                "the Inspector shows every layer and head; trace with the default capture plan "
                "(CapturePlan(layers=None, head_mean=False)) to inspect it"
            )
        bundle.warn_if_missing()
        self._trace = trace
        self._extras: dict[tuple[str, LayerChoice], dict[str, Any]] = {}
        self._features = Features(trace, sae)  # checks the SAE fits the trace before anything is shown
        self._interventions = Interventions(trace, None if other_image is None else load_image(other_image))
        if reliance is not None:  # measured now, so the token strip is shaded and sorted from the first render
            self._interventions.measure_reliance({"baseline": reliance})
        self.prefetch = prefetch
        super().__init__()
        with self.hold_sync():
            self._send_trace(trace)
            self.layer = trace.num_layers - 1 if layer is None else layer
            self.head = head
        self._commands: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], list[Any]]]] = {
            "compute": self._compute_command,
            "fetch": self._fetch_command,
            "clamp": self._clamp_command,
            "intervene": self._intervene_command,
            "curve": self._curve_command,
            "generate": self._generate_command,
            "reliance": self._reliance_command,
        }
        self.on_msg(self._on_message)

    @property
    def trace(self) -> Trace:
        """The :class:`~mmviz.Trace` this widget shows."""
        return self._trace

    @property
    def prefetch(self) -> bool:
        """Whether the kernel answers the browser's idle prefetches (fetches marked ``"prefetch": true``) of the
        layers next to the one shown. ``False``: they are declined, and the browser stops prefetching until the
        widget's data changes; a layer's per-head maps are then fetched when a view shows them."""
        return self._prefetch

    @prefetch.setter
    def prefetch(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InputError(f"prefetch must be True or False, not {value!r}")
        self._prefetch = value

    def compute(self, method: str) -> Map:
        """Compute ``method`` (a name in :data:`mmviz.methods.CATALOGUE`) for every answer token and show it.

        The widget's method switcher calls this for methods not computed yet; the result is cached in
        ``trace.maps`` and shipped once.

        Example:
            >>> inspector.compute("relevancy")                       # doctest: +SKIP
            <mmviz.Map relevancy: 3×576, non-negative>
        """
        if method not in CATALOGUE or method == "attention":
            names = [name for name in CATALOGUE if name != "attention"]
            raise InputError(f"unknown method {method!r}; choose from {names}")
        if method not in self._trace.maps:
            self.busy = method
            try:
                self._trace.compute(method)
            finally:
                self.busy = ""
        with self.hold_sync():
            self.maps = {**self.maps, method: payloads.map_payload(self._trace.maps[method], self._trace.layout)}
            self.methods = payloads.method_catalogue(self._trace)
        return self._trace.maps[method]

    def extra(self, what: str, layer: LayerChoice = 0) -> dict[str, Any]:
        """A lazily fetched payload (cached): ``"heads"`` of ``layer`` (``"mean"``: the mean over layers),
        ``"lens"`` or ``"projection"``; see ``docs/widget-protocol.md``.

        Example:
            >>> inspector.extra("heads", layer=3)["shape"]             # [H, Q, P]   # doctest: +SKIP
            [32, 64, 576]
        """
        chosen = selection.layer(layer, self._trace.num_layers) if what == "heads" else 0
        key = (what, chosen)
        if key not in self._extras:
            self._extras[key] = self._build_extra(what, chosen)
        return self._extras[key]

    def _build_extra(self, what: str, layer: LayerChoice) -> dict[str, Any]:
        if what == "heads":
            return payloads.heads_payload(self._trace, layer)
        builders: dict[str, Callable[[Trace], dict[str, Any]]] = {
            "lens": payloads.lens_payload,
            "projection": payloads.projection_payload,
        }
        if what not in builders:
            raise InputError(f"unknown extra {what!r}; the browser can fetch 'heads', 'lens' or 'projection'")
        if not self.meta.get("extras", {}).get(what, False):
            raise InputError(f"{what} needs the model's language model, which this trace does not have")
        return builders[what](self._trace)

    def _compute_command(self, content: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """``{"type": "compute", "method"}``: compute the map (it arrives through the ``maps`` trait)."""
        name = content.get("method")
        if not isinstance(name, str):
            raise InputError("a compute request needs a method name (a string)")
        self.compute(name)
        return {}, []

    def _fetch_command(self, content: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """``{"type": "fetch", "what", "layer"?}``: a lazily fetched payload, its bytes as binary buffers."""
        what = content.get("what")
        if not isinstance(what, str):
            raise InputError(f"a fetch request needs what to fetch ('heads', 'lens' or 'projection'), not {what!r}")
        if content.get("prefetch") is True and not self._prefetch:
            raise PrefetchDeclined("prefetching is off (Inspector.prefetch = False)")
        if what in FEATURE_FETCHES:
            payload = self._features.fetch(what, content)
        else:
            payload = self.extra(what, content.get("layer", 0))
        stripped, paths, data = _remove_buffers(payload)
        return {"payload": stripped, "buffer_paths": paths}, data

    def _clamp_command(self, content: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """``{"type": "clamp", "latent", "value"?}``: Δ log p of every answer token with the SAE latent clamped at
        every image position, its bytes as binary buffers (like a fetch)."""
        stripped, paths, data = _remove_buffers(self._features.clamp(content))
        return {"payload": stripped, "buffer_paths": paths}, data

    def _intervene_command(self, content: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """``{"type": "intervene", "intervention"}``: run an ablation or knockout (kept in the trace) and reply Δ log p
        of every answer token (:mod:`mmviz.widget.interventions`); ``meta`` then lists it, for exports."""
        payload = self._interventions.intervene(content)
        self._refresh_interventions()
        return {"payload": payload, "buffer_paths": []}, []

    def _curve_command(self, content: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """``{"type": "curve", "width", "to"?}``: the knockout-by-window curve (kept in the trace)."""
        payload = self._interventions.curve(content)
        self._refresh_interventions()
        return {"payload": payload, "buffer_paths": []}, []

    def _generate_command(self, content: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """``{"type": "generate", "intervention", "max_new_tokens"?}``: the greedy answer with the intervention
        applied (nothing kept)."""
        return {"payload": self._interventions.generate(content), "buffer_paths": []}, []

    def _reliance_command(self, content: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """``{"type": "reliance", "baseline"?}``: every answer token's image reliance (kept in the trace)."""
        payload = self._interventions.measure_reliance(content)
        self._refresh_interventions()
        return {"payload": payload, "buffer_paths": []}, []

    def _refresh_interventions(self) -> None:
        # meta carries the kept runs so that to_html (and a new view after a re-render) shows them; no revision bump:
        # the views that asked already have the reply.
        self.meta = {**self.meta, "interventions": self._interventions.meta()}

    def _on_message(self, widget: Any, content: Any, buffers: Any) -> None:
        """Browser requests ``{"type": <command>, ..., "request": id}``, dispatched by command name and answered
        ``{"type": <command>ed, "request", "ok", ...}``. Anything malformed or failing is logged and answered with
        an error; the widget and the kernel keep working."""
        fields = content if isinstance(content, dict) else {}
        kind = echo(fields.get("type"))
        # Only plain scalars are echoed back: a string the kernel cannot encode (a lone surrogate) or a deeply nested
        # value would make the reply itself fail, and the browser would wait for its timeout.
        reply: dict[str, Any] = {"type": _REPLIES.get(kind, "error"), "request": echo(fields.get("request"))}
        if kind == "compute":
            reply["method"] = echo(fields.get("method"))
        elif kind == "fetch":
            reply.update(what=echo(fields.get("what")), layer=echo(fields.get("layer", 0)))
        elif kind == "clamp":
            reply.update(latent=echo(fields.get("latent")), value=echo(fields.get("value", 0.0)))
        try:
            if kind not in self._commands:
                known = " or ".join(repr(name) for name in self._commands)
                raise InputError(f"unknown message of type {kind!r}; expected a {known} request")
            answer, data = self._commands[kind](fields)
            self.send({**reply, "ok": True, **answer}, buffers=data or None)
        except Exception as error:  # reported to the browser, never raised into the comm
            # A declined prefetch is the user's choice, not a failure worth an error in the log.
            (log.debug if isinstance(error, PrefetchDeclined) else log.error)("mmviz: %s", error)
            self.send({**reply, "ok": False, "error": printable(str(error))})
        except BaseException:  # the user stopped the kernel: the browser still gets its one reply, then it stops
            self.send({**reply, "ok": False, "error": "interrupted: the kernel was stopped"})
            raise

    @traitlets.validate("layer")
    def _check_layer(self, proposal: dict[str, Any]) -> LayerChoice:
        return checked(selection.layer, whole(proposal["value"]), self._trace.num_layers)

    @traitlets.validate("head")
    def _check_head(self, proposal: dict[str, Any]) -> int | str:
        return checked(selection.head, whole(proposal["value"]), self._trace.num_heads)

    @traitlets.validate("method")
    def _check_method(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        names = set(CATALOGUE) | set(self._trace.maps)
        if not isinstance(value, str) or value not in names:
            raise traitlets.TraitError(f"method must be one of {sorted(names)}, got {value!r}")
        return value

    @traitlets.validate("pinned")
    def _check_pinned(self, proposal: dict[str, Any]) -> int:
        value = whole(proposal["value"])
        if value == -1 and not isinstance(value, bool):  # nothing pinned
            return -1
        return checked(selection.index, value, len(self._trace.tokens), "pinned", unit="position (or -1: none)")

    def _send_trace(self, trace: Trace) -> None:
        self.tokens = list(trace.tokens)
        self.token_layout = payloads.layout_payload(trace)
        self.images = [payloads.png_bytes(image) for image in trace.images]
        self.attention_mean = payloads.attention_mean(trace)
        self.head_stats = payloads.head_stats(trace)
        self.meta = {
            "family": trace.family,
            "layout_source": trace.layout.source,
            "model_name": trace.model_name,
            "n_layers": trace.num_layers,
            "n_heads": trace.num_heads,
            "map_label": MAP_LABEL,
            "map_description": MAP_DESCRIPTION + indirect_note(trace.layout),
            "extras": payloads.available_extras(trace),
            "features": self._features.meta(),
            "interventions": self._interventions.meta(),
        }
        if trace.layout.is_video:
            self.meta = {**self.meta, "video": payloads.video_meta(trace)}
        self.methods = payloads.method_catalogue(trace)
        self.maps = {name: payloads.map_payload(result, trace.layout) for name, result in trace.maps.items()}
        self.revision += 1

    def to_html(self, path: str | Path | None = None, *, heads: str | Sequence[int] = "auto") -> str:
        """A standalone HTML page of this widget (no server, no CDN); written to ``path`` when given.

        The page has no kernel, so what the browser would fetch is embedded: per-head maps, the logit lens and the
        projection (computed now when the trace has its model). Methods not computed before the export are listed
        as not computed.

        Args:
            heads: the layers whose per-head maps the page carries: ``"auto"`` (every layer and their mean when
                that takes at most :data:`EXPORT_HEADS_LIMIT` bytes, else none), ``"all"``, ``"none"``, or a list
                of decoder layers (their mean over layers comes with them). In the page, a head chosen at a layer
                that was left out says so instead of a map.

        Example:
            >>> inspector.to_html("view.html", heads=[0, 15, 31])            # doctest: +SKIP
        """
        layers = self._exported_heads(heads)
        title = f"mmviz · {self._trace.model_name}"
        page = export.to_html(self, title=title, prefetched=self._prefetched(layers))
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def _exported_heads(self, heads: str | Sequence[int]) -> list[LayerChoice]:
        """The layers (and ``"mean"``) whose per-head maps ``to_html(heads=...)`` embeds."""
        trace = self._trace
        every: list[LayerChoice] = [selection.MEAN, *range(trace.num_layers)]
        if heads == "auto":
            per_layer = trace.num_heads * len(trace.query_positions) * len(trace.image_positions)
            return every if per_layer * (trace.num_layers + 1) <= EXPORT_HEADS_LIMIT else []
        if heads == "all":
            return every
        if heads == "none":
            return []
        if isinstance(heads, str):
            raise InputError(f"heads must be 'auto', 'all', 'none' or a list of decoder layers, not {heads!r}")
        return [selection.MEAN, *selection.layers(heads, trace.num_layers)]

    def _prefetched(self, layers: Sequence[LayerChoice]) -> dict[str, Any]:
        """What a kernel would answer to the browser's fetch requests, keyed ``"heads:<layer>"``, ``"lens"``, …"""
        out = {f"heads:{layer}": self.extra("heads", layer) for layer in layers}
        for what in ("lens", "projection"):
            if self.meta.get("extras", {}).get(what, False):
                out[what] = self.extra(what)
        return out

    def __repr__(self) -> str:
        return f"<mmviz.Inspector of {self._trace!r}>"


_REPLIES = {
    "compute": "computed",
    "fetch": "fetched",
    "clamp": "clamped",
    "intervene": "intervened",
    "curve": "curved",
    "generate": "generated",
    "reliance": "relied",
}
"""The reply type of each browser command."""


class PrefetchDeclined(InputError):
    """An idle prefetch the kernel declines (:attr:`Inspector.prefetch` is False): answered ``ok: false``, logged
    at debug level only."""


def inspect(
    model: torch.nn.Module | Trace | str | Path,
    processor: Any = None,
    image: ImageLike | Sequence[ImageLike] | None = None,
    prompt: str | None = None,
    **options: Any,
) -> Inspector:
    """Trace ``model`` on ``image`` and ``prompt`` and return an :class:`Inspector`; ``options`` are
    :func:`mmviz.trace`'s (``answer``, ``max_new_tokens``, ``capture``, ``methods``, ``video`` instead of the image:
    the widget then shows one frame at a time with a frame strip). Or show a trace that exists
    already: a :class:`~mmviz.Trace`, or the path of a trace file (:func:`mmviz.load`), with ``methods`` only.
    ``sae`` (:func:`mmviz.features.load_sae`) is the widget's, not the trace's: the Features panel shows its latents.
    ``other_image`` (an image) offers the Interventions panel's "other" fill: the selected patches' tokens replaced by
    that image's tokens at the same positions. ``reliance`` (``"blank"``, ``"blur"`` or ``"mean"``) measures every
    answer token's image reliance now (else the token strip measures it on request).

    ``methods`` are computed right away (e.g. ``("relevancy",)``); the widget's method switcher computes the others
    on request (those that run the model only while the trace has it).

    Example:
        >>> model, processor = mmviz.zoo.tiny_llava()
        >>> mmviz.inspect(model, processor, "cat.png", "Why?", capture=mmviz.CapturePlan(hidden_states=True))
        ... # doctest: +SKIP
        >>> mmviz.inspect("cat.mmviz")                     # a saved trace, no model needed   # doctest: +SKIP
    """
    sae = options.pop("sae", None)  # the Inspector's options, never forwarded to mmviz.trace
    widget = {key: options.pop(key) for key in ("other_image", "reliance") if key in options}
    if isinstance(model, Trace | str | Path):
        methods = options.pop("methods", ())
        if processor is not None or image is not None or prompt is not None or options:
            raise InputError("a trace (or trace file) is shown as it is: pass it alone, mmviz.inspect(trace)")
        shown = load(model) if isinstance(model, str | Path) else model
        for name in methods:
            shown.compute(name)
        return Inspector(shown, sae=sae, **widget)
    if processor is None or prompt is None or (image is None and options.get("video") is None):
        raise InputError(
            "mmviz.inspect(model, processor, image, prompt) needs all four (video=frames instead of the image for a "
            "video; or one trace: inspect(trace))"
        )
    return Inspector(trace(model, processor, image, prompt, **options), sae=sae, **widget)
