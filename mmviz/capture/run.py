"""Re-running a traced model: the inputs of one analysis forward, and the hooks methods need to vary them.

Gradient and perturbation methods all act on the language model's input embeddings (text embeddings with the
image features scattered in): a forward pre-hook on the language model swaps ``inputs_embeds`` for a batch of
edited copies, or for a leaf tensor that gradients flow back to. That point exists in every family (the adapter
names the module, and the argument: ``adapter.image_input``, the cross-attention states of a family whose text
reads the image through cross-attention layers), so no method needs to know which model it runs.

Batched perturbation methods (Integrated Gradients, occlusion, RISE) overwrite every image column, so the vision
tower's output is thrown away in each of their forwards. :meth:`ModelRun.edited_forward` skips it: it calls the
language model directly with the arguments it received on one recorded clean forward, then the output head, after
the model has confirmed once (per run) that this gives the full forward's logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image, ImageFilter

from mmviz.adapters import GenerativeAdapter
from mmviz.model_state import preserved

EmbeddingEdit = Callable[[torch.Tensor], torch.Tensor]
"""``edit(inputs_embeds (1, N, d)) -> (B, N, d)``: the language model's input for a batch of B variants."""

EditedPath = Literal["fast", "full"]
"""How :meth:`ModelRun.edited_forward` runs: the language model + head alone, or the whole model."""

CONFIRM_RTOL = 1e-5
"""The fast path is used when its logits are within this fraction of the largest clean logit of the full forward's
(16-bit models: a few units of their precision, which batching alone moves logits by)."""


@dataclass(frozen=True, repr=False)
class ModelRun:
    """Everything needed to run the traced model again on the traced sequence (prompt + answer).

    Attributes:
        model: the user's model (never modified; hooks are removed and flags restored after every use).
        adapter: its family adapter.
        input_ids: ``(1, N)`` prompt + answer ids.
        inputs: the other processor outputs (pixel values, grid sizes, ...), on the model's device.
        images: the original images (a video's frames).
        video: ``images`` are the frames of one video (edited frames go through the video processor).
        reuse_image_features: let :meth:`edited_forward` run only the language model + head on the recorded
            clean forward's inputs (when the model confirms it gives the same logits); False: always the full
            forward (``dataclasses.replace(run, reuse_image_features=False)``).
    """

    model: torch.nn.Module
    adapter: GenerativeAdapter
    input_ids: torch.Tensor
    inputs: dict[str, torch.Tensor]
    images: tuple[Image.Image, ...]
    reuse_image_features: bool = True
    video: bool = False
    # Mutable cache in a frozen record: decided once per run (a replaced run starts undecided).
    _edited: _EditedState = field(default_factory=lambda: _EditedState(), init=False, repr=False, compare=False)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def edited_path(self) -> EditedPath | None:
        """Which path :meth:`edited_forward` takes: ``"fast"`` (language model + head), ``"full"`` (the whole
        model), or None before its first call."""
        return self._edited.path

    @property
    def edited_path_reason(self) -> str:
        """Why :attr:`edited_path` is what it is (the confirmation's error, or why it fell back)."""
        return self._edited.reason

    def forward(
        self,
        *,
        batch: int = 1,
        edit: EmbeddingEdit | None = None,
        first_logit: int = 0,
        inputs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits ``(batch, N - first_logit, V)`` in float32 for positions ``first_logit … N-1``.

        ``edit`` replaces the language model's input embeddings (it receives the ``(1, N, d)`` clean ones and
        returns ``(batch, N, d)``). Runs with gradients if the caller enabled them; never changes the model.
        """
        source = self.inputs if inputs is None else inputs
        repeated = {key: _repeat(value, batch) for key, value in source.items()}
        with self.editing_embeddings(edit):
            output = self.model(
                input_ids=self.input_ids.repeat(batch, 1),
                attention_mask=torch.ones_like(self.input_ids).repeat(batch, 1),
                use_cache=False,
                logits_to_keep=self.length - first_logit,
                **repeated,
            )
        return output.logits.float()

    @contextmanager
    def editing_embeddings(self, edit: EmbeddingEdit | None) -> Iterator[None]:
        """Apply ``edit`` to the language model's image input (``adapter.image_input``: ``inputs_embeds``, or the
        cross-attention states) for the block (pre-hook, always removed)."""
        if edit is None:
            yield
            return
        name = self.adapter.image_input

        def swap(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            given = kwargs.get(name)
            if given is None:
                raise RuntimeError(f"the language model was called without {name}; cannot edit image embeddings")
            embeds = _per_sequence(given, kwargs)
            edited = edit(embeds)
            # Batch-1 side inputs (masks, position ids) broadcast over the batch the edit produced.
            return args, {**kwargs, name: edited.to(embeds.dtype).reshape(-1, *given.shape[1:])}

        handle = self.adapter.language_model().register_forward_pre_hook(swap, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def edited_forward(self, *, batch: int, edit: EmbeddingEdit, first_logit: int = 0) -> torch.Tensor:
        """``forward(batch=batch, edit=edit, first_logit=first_logit)``, without running the vision tower per row.

        The edit replaces image columns, so the image features of the full forward would be overwritten anyway:
        when the model has confirmed it (:attr:`edited_path` ``== "fast"``), only the language model and the
        output head run, on ``edit(clean embeddings)`` with the side inputs (masks, position ids, ...) the
        language model received on the recorded clean forward. Otherwise it is the full :meth:`forward`.
        Autograd flows to the edited embeddings either way; the model's weights are assumed not to change during
        the run's life (as ``trace.compute``'s kept maps assume).

        Example:
            >>> values = torch.zeros(4, len(columns), d)                                      # doctest: +SKIP
            >>> run.edited_forward(batch=4, edit=replacing_columns(columns, values)).shape    # doctest: +SKIP
            torch.Size([4, N, V])
            >>> run.edited_path                                                               # doctest: +SKIP
            'fast'
        """
        call = self._confirmed_call(first_logit)
        if call is None:
            return self.forward(batch=batch, edit=edit, first_logit=first_logit)
        edited = edit(call.embeds)
        if edited.shape[0] != batch:
            raise ValueError(f"the edit made {edited.shape[0]} rows for a batch of {batch}")
        return call.logits(edited.to(call.embeds.dtype), first_logit)

    def _confirmed_call(self, first_logit: int) -> _LanguageModelCall | None:
        """The recorded language-model call if the fast path is confirmed for this run (decided on first use)."""
        state = self._edited
        if state.path is None:
            if not self.reuse_image_features:
                state.decide("full", "reuse_image_features=False")
            else:
                call, reason = self._record_and_confirm(first_logit)
                state.decide("fast" if call is not None else "full", reason, call)
        return state.call

    def _record_and_confirm(self, first_logit: int) -> tuple[_LanguageModelCall | None, str]:
        """One clean full forward recording the language model's arguments, then the fast path on the same
        embeddings (batch 2, so batch expansion is exercised) compared with it."""
        language_model = self.adapter.language_model()
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

        def record(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls.append((args, dict(kwargs)))

        # Not in inference mode even under the caller's: the recording is reused by later gradient methods.
        with torch.inference_mode(False), torch.no_grad(), preserved(self.model):
            self.model.eval()
            # prepend: what the caller passed, before other pre-hooks (they run again on the direct call).
            handle = language_model.register_forward_pre_hook(record, with_kwargs=True, prepend=True)
            try:
                full = self.forward(first_logit=first_logit)
            finally:
                handle.remove()
            try:
                call = _LanguageModelCall.recorded(language_model, self.adapter, calls)
                return call.confirm(full, first_logit)
            except _NotReusable as error:
                return None, str(error)
            except Exception as error:  # any failure of the direct call means: use the full forward
                return None, f"the language model could not run on its own: {type(error).__name__}: {error}"

    def embeddings(self, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The clean ``(1, N, d)`` language-model input embeddings (image features scattered in), float32; for a
        cross-attention family the ``(1, K, d)`` cross-attention states (``adapter.image_input``)."""
        seen: list[torch.Tensor] = []

        def keep(embeds: torch.Tensor) -> torch.Tensor:
            seen.append(embeds.detach().float())
            return embeds

        with torch.no_grad(), preserved(self.model):
            self.model.eval()
            self.forward(edit=keep, first_logit=self.length - 1, inputs=inputs)
        return seen[0]

    def blurred_inputs(self, radius: float | None = None) -> dict[str, torch.Tensor]:
        """Processor outputs for the same images blurred (the default baseline: in-distribution, no detail)."""
        blurred = [image.filter(ImageFilter.GaussianBlur(radius or max(image.size) / 8)) for image in self.images]
        return self.with_pixels(blurred)

    def pixel_inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """The processor's pixel inputs for ``images`` (edited copies of the traced images, or of a video's frames
        through the video processor), only the keys the traced inputs hold, not yet on the model's device."""
        if self.video:
            return self.adapter.video_pixel_inputs(images, self.inputs)
        return self.adapter.pixel_inputs(images, self.inputs)

    def with_pixels(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """The traced inputs with the pixel inputs of ``images`` (edited copies of the traced images or frames, same
        sizes → same token grids, so only the pixel inputs change), on the model's device."""
        return {**self.inputs, **to_device(self.pixel_inputs(images), self.model)}


def to_device(inputs: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Processor outputs on the device the model runs its inputs on; floating-point ones (pixels) in its dtype.

    Example:
        >>> to_device({"pixel_values": torch.zeros(1, 3, 4, 4)}, model)["pixel_values"].dtype   # doctest: +SKIP
        torch.bfloat16
    """
    device, dtype = execution_device(model), model.dtype
    return {
        key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        for key, value in inputs.items()
    }


def execution_device(model: torch.nn.Module) -> torch.device:
    """Where the model takes its inputs: the device its input embeddings run on.

    Not the first parameter's device: with accelerate's offloading (``device_map`` with ``"disk"`` or ``"cpu"``
    offload) a parameter may live on the ``meta`` device and be loaded only for its module's forward; the hook of
    the offloaded module names the device it runs on.
    """
    try:
        embeddings: torch.nn.Module | None = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):  # a dual encoder (CLIP) has two towers and no one input embedding
        embeddings = None
    return module_device(model) if embeddings is None else module_device(embeddings, model)


def module_device(module: torch.nn.Module, *fallbacks: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: the execution device of its accelerate hook when it is offloaded, else the device
    of the first parameter, of it or then of ``fallbacks``, that is not on ``meta`` (the CPU when there is none).

    Example:
        >>> module_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    hook = getattr(module, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)  # type: ignore[union-attr]
    parameters = (p for m in (module, *fallbacks) for p in m.parameters())
    return next((p.device for p in parameters if p.device.type != "meta"), torch.device("cpu"))


@dataclass
class _EditedState:
    """What :meth:`ModelRun.edited_forward` decided for its run (mutable, one per run)."""

    path: EditedPath | None = None
    reason: str = ""
    call: _LanguageModelCall | None = None

    def decide(self, path: EditedPath, reason: str, call: _LanguageModelCall | None = None) -> None:
        self.path, self.reason, self.call = path, reason, call


class _NotReusable(Exception):
    """The language model's call cannot be replayed for a batch (said in the message)."""


@dataclass(frozen=True)
class _LanguageModelCall:
    """The language model's arguments on one clean batch-1 forward, and the head that turns its output into logits.

    Attributes:
        module: the language model (``adapter.language_model()``).
        args: its positional arguments (usually none).
        kwargs: its keyword arguments except the image input (masks, position ids, cache position, flags).
        embeds: the ``(1, N, d)`` ``inputs_embeds`` it received (model dtype), or the image input it was given
            (``adapter.image_input``: a cross-attention family's ``(1, K, d)`` states).
        name: the keyword of :attr:`embeds`.
        head: the family's output head on final-normed states (``adapter.head_logits``: the unembedding and what
            the family applies after it, a soft cap or a logit scale).
    """

    module: torch.nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    embeds: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]
    name: str = "inputs_embeds"
    given: tuple[int, ...] = ()  # the shape of one sequence's image input as the model passes it, without batch

    @classmethod
    def recorded(
        cls, module: torch.nn.Module, adapter: GenerativeAdapter, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> _LanguageModelCall:
        if len(calls) != 1:
            raise _NotReusable(f"the language model ran {len(calls)} times in one forward (expected once)")
        args, kwargs = calls[0]
        name = adapter.image_input
        given = kwargs.pop(name, None)
        embeds = _per_sequence(given, kwargs) if isinstance(given, torch.Tensor) else None
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[0] != 1:
            raise _NotReusable(f"the language model was not called with a (1, N, d) {name} keyword")
        for key, value in [*enumerate(args), *kwargs.items()]:
            _check_replayable(value, str(key))
        return cls(module, _plain(args), _plain(kwargs), _plain(embeds), adapter.head_logits, name, given.shape[1:])

    def logits(self, embeds: torch.Tensor, first_logit: int) -> torch.Tensor:
        """Float32 logits ``(B, N - first_logit, V)`` for ``embeds`` ``(B, N, d)``: language model, then head."""
        # logits_to_keep semantics: the head runs on the kept rows only.
        return self.head(self._hidden(embeds)[:, first_logit:]).float()

    def confirm(self, full: torch.Tensor, first_logit: int) -> tuple[_LanguageModelCall | None, str]:
        """Self if the fast path (at batch 2, so batch expansion is exercised) reproduces the full forward's
        logits ``full``, else None; with the relative difference either way."""
        scale = float(full.abs().max().clamp_min(1e-12))
        tolerance = max(CONFIRM_RTOL, 4 * torch.finfo(self.embeds.dtype).eps)
        error = float((self.logits(self.embeds.expand(2, -1, -1), first_logit) - full).abs().max()) / scale
        if error <= tolerance:
            return self, f"confirmed: relative difference {error:.1e}"
        return None, f"the language model + head alone differ from the full forward by {error:.1e} relative"

    def _hidden(self, embeds: torch.Tensor) -> torch.Tensor:
        batch = embeds.shape[0]
        args = _batched(self.args, batch)
        given = embeds.reshape(-1, *self.given) if self.given else embeds
        output = self.module(*args, **_batched(self.kwargs, batch), **{self.name: given})
        return output if isinstance(output, torch.Tensor) else output[0]


def _per_sequence(image_input: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """The language model's image input as ``(B, K, d)``, one row per sequence of the batch.

    ``inputs_embeds`` already is; a cross-attention family may pass its vision states with images and tiles folded
    into the batch dimension (Llama 3.2 Vision: ``(B · images · tiles, tokens, d)``), unfolded here by the batch of
    the sequence input (``input_ids`` or ``inputs_embeds``) in the same call.
    """
    for key in ("input_ids", "inputs_embeds"):
        sequence = kwargs.get(key)
        if isinstance(sequence, torch.Tensor) and sequence is not image_input:
            return image_input.reshape(sequence.shape[0], -1, image_input.shape[-1])
    return image_input


def _check_replayable(value: Any, name: str) -> None:
    """Tensors, plain values and containers of them can be replayed; a cache or mask object may hold state."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_replayable(item, f"{name}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_replayable(item, f"{name}[{index}]")
    elif not (value is None or isinstance(value, (torch.Tensor, bool, int, float, str, torch.dtype, torch.device))):
        kind = type(value).__name__
        raise _NotReusable(f"the language model received {name} = a {kind}, which mmviz does not replay")


def _plain(value: Any) -> Any:
    """``value`` with inference-mode tensors (a trace made under ``torch.inference_mode()``) copied into ordinary
    ones, which a later gradient method may save for backward."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _batched(value: Any, batch: int) -> Any:
    """``value`` with every recorded batch-1 tensor expanded to ``batch`` rows along its batch dimension.

    The batch dimension is a tensor's first dimension of size 1 (``(1, N)`` masks, ``(1, 1, N, N)`` 4-D masks,
    Qwen2-VL's ``(3, 1, N)`` mrope ids); 1-D tensors (cache position) have none. Every row is the same clean
    side input, so any expansion that runs gives the right values; the confirmation catches one that does not.
    """
    if isinstance(value, torch.Tensor):
        dim = next((d for d, size in enumerate(value.shape) if size == 1), None) if value.ndim >= 2 else None
        if dim is None or batch == 1:
            return value
        return value.expand(*value.shape[:dim], batch, *value.shape[dim + 1 :])
    if isinstance(value, dict):
        return {key: _batched(item, batch) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_batched(item, batch) for item in value)
    return value


def replacing_columns(columns: torch.Tensor, values: torch.Tensor) -> EmbeddingEdit:
    """An edit that puts ``values`` ``(B, P, d)`` at the image ``columns`` of every batch row."""

    def edit(embeds: torch.Tensor) -> torch.Tensor:
        edited = embeds.expand(values.shape[0], -1, -1).clone().to(values.dtype)
        edited[:, columns] = values
        return edited

    return edit


def _repeat(value: Any, batch: int) -> Any:
    if batch == 1 or not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    return value.repeat(batch, *([1] * (value.ndim - 1)))
