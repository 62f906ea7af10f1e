"""Re-running a traced model: the inputs of one analysis forward, and the hooks methods need to vary them.

Gradient and perturbation methods all act on the language model's input embeddings (text embeddings with the
image features scattered in): a forward pre-hook on the language model swaps ``inputs_embeds`` for a batch of
edited copies, or for a leaf tensor that gradients flow back to. That point exists in every family (the adapter
names the module), so no method needs to know which model it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageFilter

from mmviz.adapters import GenerativeAdapter
from mmviz.model_state import preserved

EmbeddingEdit = Callable[[torch.Tensor], torch.Tensor]
"""``edit(inputs_embeds (1, N, d)) -> (B, N, d)``: the language model's input for a batch of B variants."""


@dataclass(frozen=True, repr=False)
class ModelRun:
    """Everything needed to run the traced model again on the traced sequence (prompt + answer).

    Attributes:
        model: the user's model (never modified; hooks are removed and flags restored after every use).
        adapter: its family adapter.
        input_ids: ``(1, N)`` prompt + answer ids.
        inputs: the other processor outputs (pixel values, grid sizes, ...), on the model's device.
        images: the original images.
    """

    model: torch.nn.Module
    adapter: GenerativeAdapter
    input_ids: torch.Tensor
    inputs: dict[str, torch.Tensor]
    images: tuple[Image.Image, ...]

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

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
        """Apply ``edit`` to the language model's ``inputs_embeds`` for the block (pre-hook, always removed)."""
        if edit is None:
            yield
            return

        def swap(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:
                raise RuntimeError("the language model was called without inputs_embeds; cannot edit image embeddings")
            edited = edit(embeds)
            # Batch-1 side inputs (masks, position ids) broadcast over the batch the edit produced.
            return args, {**kwargs, "inputs_embeds": edited.to(embeds.dtype)}

        handle = self.adapter.language_model().register_forward_pre_hook(swap, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def embeddings(self, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The clean ``(1, N, d)`` language-model input embeddings (image features scattered in), float32."""
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
        # Same sizes → same token grids, so only the pixel inputs change.
        encoded = self.adapter.processor.image_processor(blurred, return_tensors="pt")
        pixels = to_device({key: value for key, value in dict(encoded).items() if key in self.inputs}, self.model)
        return {**self.inputs, **pixels}


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
    hook = getattr(embeddings, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)  # type: ignore[union-attr]
    candidates = [*(embeddings.parameters() if embeddings is not None else ()), *model.parameters()]
    return next((p.device for p in candidates if p.device.type != "meta"), torch.device("cpu"))


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
