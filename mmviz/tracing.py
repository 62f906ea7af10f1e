"""``mmviz.trace``: generate an answer, then run ONE teacher-forced analysis forward that records the views' data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from mmviz.adapters import Adapter, TokenLayout, adapter_for
from mmviz.capture import AttentionRecorder, CapturePlan, preserved, recording, recording_hidden_states
from mmviz.capture.run import ModelRun
from mmviz.errors import InputError
from mmviz.inputs import ImageLike, check_prompt, load_images
from mmviz.methods import MAP_METHODS, Map
from mmviz.progress import progress

_T = TypeVar("_T")


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
        layers: the decoder layers whose rows were recorded.
        head_mean: whether only the mean over heads was kept.
        hidden_states: float32 ``(L + 1, N, d)`` residual stream (index 0 = embeddings, ℓ + 1 = after layer ℓ,
            before the final norm), when the plan asked for it.
        vision_attention: float32 ``(L_v, images, H_v, N_v, N_v)``: the vision tower's own attention, when asked.
        maps: method name → :class:`~mmviz.methods.Map` computed for this trace (``trace(..., methods=[...])`` or
            the widget's method switcher add to it).
        run: the model and inputs of the analysis forward, for methods that run the model again (gradients,
            perturbations); None for a trace rebuilt without its model.

    Example:
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")   # doctest: +SKIP
        >>> trace.attention(layer=-1, head="mean").shape     # (query rows, image tokens)   # doctest: +SKIP
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
    results: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Derived results that several consumers share (the widget's lens panel and ``mmviz.plots``), see
    :meth:`computed`."""

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

    def attention(self, layer: int | None = None, head: int | str | None = None) -> np.ndarray:
        """Raw attention from every recorded text/answer row to every image token.

        Args:
            layer: a layer index (negative counts from the end) or None for all layers.
            head: a head index, ``"mean"`` (average over heads) or None for all heads.

        Returns:
            float32 array ``(L, H, Q, P)``; an int ``layer`` or ``head`` (or ``"mean"``) drops that axis.
            Rows follow :attr:`query_positions`, columns :attr:`image_positions`.
        """
        values = self.attention_rows
        if layer is not None:
            number = _index(layer, self.num_layers, "layer")
            if number not in self.layers:
                raise ValueError(f"layer {number} was not captured (captured: {self.layers.tolist()})")
            values = values[int(np.flatnonzero(self.layers == number)[0])]
        values = values[..., self.image_positions]  # after picking the layer: one layer's copy, not all
        head_axis = 0 if layer is not None else 1
        if head == "mean":
            values = values.mean(axis=head_axis)
        elif head is not None:
            if isinstance(head, str):
                raise ValueError(f"head must be an int, 'mean' or None, not {head!r}")
            if self.head_mean:
                raise ValueError("only the mean over heads was captured (head_mean=True); use head='mean'")
            values = np.take(values, _index(head, self.num_heads, "head"), axis=head_axis)
        return values

    def row_of(self, position: int) -> int:
        """Row index (into :meth:`attention`) of sequence position ``position``; raises if it has no row."""
        found = np.flatnonzero(self.query_positions == position)
        if len(found) == 0:
            raise ValueError(f"position {position} has no attention row (image tokens are columns, not rows)")
        return int(found[0])

    def __repr__(self) -> str:
        n_image = len(self.image_positions)
        return (
            f"<mmviz.Trace {self.family} '{self.model_name}': {len(self.tokens)} positions "
            f"({n_image} image tokens), {self.num_layers} layers × {self.num_heads} heads, "
            f"answer {self.answer!r}>"
        )


def trace(
    model: torch.nn.Module,
    processor: Any,
    image: ImageLike | Sequence[ImageLike],
    prompt: str,
    *,
    answer: str | Sequence[int] | None = None,
    max_new_tokens: int = 32,
    capture: CapturePlan | None = None,
    methods: Sequence[str] = (),
) -> Trace:
    """Run an unmodified Hugging Face vision-language model and record what mmviz's views need.

    If ``answer`` is None the model generates it first (its normal fast path, greedy); then ONE teacher-forced
    forward over prompt + answer records attention rows through mmviz's attention function. The model is left
    exactly as found: attention implementation, train/eval and ``requires_grad`` flags, hooks.

    Args:
        model: e.g. ``LlavaForConditionalGeneration.from_pretrained(...)``.
        processor: the model's processor (``AutoProcessor.from_pretrained`` of the same checkpoint).
        image: PIL image, ``H×W×3`` uint8 array or path; or a list of them for a multi-image prompt (each image
            gets its own grid, in prompt order).
        prompt: a plain question (the chat template and one image placeholder per image are added) or a fully
            formatted prompt that already holds one placeholder per image.
        answer: the answer to analyse (text, or token ids); None generates it.
        max_new_tokens: generation length limit when ``answer`` is None.
        capture: what to record (:class:`~mmviz.capture.CapturePlan`); the default records every text row of
            every layer and head. Its memory estimate is checked against its budget BEFORE the model runs
            (:class:`~mmviz.capture.CaptureBudgetError`).
        methods: names from :data:`mmviz.methods.MAP_METHODS` to compute right away (default settings, every
            answer token); their maps land in :attr:`Trace.maps`. The widget can compute the others on request.

    Example:
        >>> model, processor = mmviz.zoo.tiny_llava()
        >>> t = mmviz.trace(model, processor, np.zeros((64, 96, 3), np.uint8), "What is shown?", max_new_tokens=4)
        >>> t.attention(layer=0, head="mean").shape[1]
        576
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    plan = CapturePlan() if capture is None else capture
    unknown = sorted(set(methods) - set(MAP_METHODS))
    if isinstance(methods, str) or unknown:
        raise InputError(f"unknown methods {unknown or methods!r}; choose from {sorted(MAP_METHODS)}")
    check_prompt(prompt)
    images = load_images(image)
    adapter = adapter_for(model, processor)
    if getattr(adapter, "dual_encoder", False):  # CLIP-like: nothing to generate, a separate trace path
        from mmviz.dual_encoder import trace_dual_encoder

        return trace_dual_encoder(model, processor, images, prompt, adapter, plan, answer=answer, methods=methods)
    text = adapter.format_prompt(prompt, n_images=len(images))
    inputs = _to_model(adapter.encode(images, text), model)
    prompt_ids = inputs["input_ids"]
    answer_ids = None if answer is None else _answer_ids(adapter, answer)
    # Check the budget before anything runs, with the longest answer generation may give.
    planned_length = prompt_ids.shape[1] + (max_new_tokens if answer_ids is None else len(answer_ids))
    prompt_layout = adapter.layout(prompt_ids[0].cpu().numpy(), images, inputs)
    n_image = len(prompt_layout.positions("image", "image_newline", "image_sep"))
    planned_queries = _n_queries(plan, planned_length, planned_length - n_image)
    plan.check(adapter.model_shape(len(images)), planned_length, planned_queries)

    with preserved(model):
        model.eval()
        if answer_ids is None:
            answer_ids = _generate(model, inputs, max_new_tokens)
        input_ids = torch.cat([prompt_ids, answer_ids[None].to(prompt_ids.device)], dim=1)
        ids = input_ids[0].cpu().numpy()
        layout = adapter.layout(ids, images, inputs)
        query_positions = _query_positions(plan, layout)
        layers = (
            np.arange(adapter.num_layers)
            if plan.layers is None
            else np.unique([_index(layer, adapter.num_layers, "layer") for layer in plan.layers])
        )
        with progress(total=len(layers), desc="mmviz: analysis forward", unit="layer") as bar:
            recorder = AttentionRecorder(
                query_positions, layers=layers.tolist(), head_mean=plan.head_mean, on_layer=lambda _: bar.update()
            )
            recorders: dict[str, AttentionRecorder | None] = {adapter.text_config_key: recorder}
            vision = AttentionRecorder(keep_calls=True) if plan.vision_attention else None
            if vision is not None:
                recorders[adapter.vision_config_key] = vision
            answer_start = prompt_ids.shape[1]
            forward_inputs = adapter.analysis_inputs(
                {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}, len(answer_ids)
            )
            with (
                torch.no_grad(),
                recording(model, recorders),
                recording_hidden_states(adapter.decoder_layers(), None if plan.hidden_states else []) as hidden,
            ):
                output = model(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    use_cache=False,
                    logits_to_keep=len(ids) - answer_start + 1,
                    **forward_inputs,
                )
    rows = torch.stack([recorder.rows[int(layer)][0] for layer in layers])
    result = Trace(
        tokens=layout.tokens,
        token_ids=ids,
        layout=layout,
        prompt=text,
        answer=adapter.tokenizer.decode(answer_ids.tolist(), skip_special_tokens=True),
        answer_start=answer_start,
        answer_logprobs=_answer_logprobs(output.logits[0], answer_ids),
        images=images,
        family=adapter.family,
        model_name=str(getattr(model.config, "_name_or_path", "") or model.config.model_type),
        num_layers=adapter.num_layers,
        num_heads=adapter.num_heads,
        query_positions=np.asarray(query_positions),
        attention_rows=rows.numpy().astype(np.float32),
        layers=layers,
        head_mean=plan.head_mean,
        hidden_states=torch.stack([hidden[i][0] for i in sorted(hidden)]).numpy() if plan.hidden_states else None,
        vision_attention=None if vision is None else adapter.vision_attention(vision.calls, inputs),
        run=ModelRun(model, adapter, input_ids, forward_inputs, tuple(images)),
    )
    for name in methods:
        result.maps[name] = MAP_METHODS[name](result)
    return result


def _query_positions(plan: CapturePlan, layout: TokenLayout) -> np.ndarray:
    if plan.queries == "text":
        return layout.text_positions
    if plan.queries == "all":
        return np.arange(len(layout))
    positions = np.unique(np.asarray(plan.queries, dtype=np.int64))
    if len(positions) == 0 or positions.min() < 0 or positions.max() >= len(layout):
        raise InputError(f"capture queries must be positions in 0…{len(layout) - 1}")
    return positions


def _n_queries(plan: CapturePlan, n_positions: int, n_text: int) -> int:
    if plan.queries == "text":
        return n_text
    if plan.queries == "all":
        return n_positions
    return len(plan.queries)


def _to_model(inputs: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    device, dtype = model.device, model.dtype
    return {
        key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        for key, value in inputs.items()
    }


def _answer_ids(adapter: Adapter, answer: str | Sequence[int]) -> torch.Tensor:
    if isinstance(answer, str):
        if not answer.strip():
            raise InputError("answer is empty; pass the answer text to analyse, or None to generate it")
        text = answer if answer[0].isspace() else " " + answer  # a reply follows the prompt after a space
        ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = [int(i) for i in answer]
        if not ids:
            raise InputError("answer holds no token ids; pass the answer text, its ids, or None to generate it")
    vocab = int(adapter.text_config.vocab_size)
    if min(ids) < 0 or max(ids) >= vocab:
        raise InputError(f"answer token ids must lie in [0, {vocab}); got {min(ids)}…{max(ids)}")
    return torch.tensor(ids, dtype=torch.long)


class _ProgressTicker(LogitsProcessor):
    """Advances a progress bar once per generated token (scores pass through untouched)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.bar.update(1)
        return scores


def _generate(model: torch.nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
    with progress(total=max_new_tokens, desc="mmviz: generating", unit="tok") as bar, torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([_ProgressTicker(bar)]),
        )
    return output[0, inputs["input_ids"].shape[1] :].cpu()


def _answer_logprobs(logits: torch.Tensor, answer_ids: torch.Tensor) -> np.ndarray:
    """``log p(y_t | x_<t)``: the logits at position t−1 predict answer token t (the last row predicts nothing)."""
    log_probs = torch.log_softmax(logits[:-1].float(), dim=-1)
    picked = log_probs.gather(1, answer_ids.to(log_probs.device)[:, None])[:, 0]
    return picked.cpu().numpy()


def _index(value: int, size: int, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or not -size <= value < size:
        raise IndexError(f"{name} {value!r} is out of range for {size} {name}s")
    return int(value) % size
