"""The generative path of :func:`mmviz.trace`: generate the answer, then ONE teacher-forced analysis forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from mmviz.adapters import GenerativeAdapter, TokenLayout
from mmviz.capture import AttentionRecorder, CapturePlan, preserved, recording, recording_hidden_states
from mmviz.capture.run import ModelRun, to_device
from mmviz.errors import InputError, UnsupportedModelError
from mmviz.progress import progress
from mmviz.records import Trace, model_name


def trace_generative(
    model: torch.nn.Module,
    images: Sequence[Image.Image],
    prompt: str,
    adapter: GenerativeAdapter,
    plan: CapturePlan,
    *,
    answer: str | Sequence[int] | None,
    max_new_tokens: int,
    video: bool = False,
) -> Trace:
    """Trace a generative model (called by :func:`mmviz.trace`, which checked the arguments).

    The budget of ``plan`` is checked with the longest answer generation may give before anything runs; the
    model is left as found (attention implementation, flags, hooks), also when this raises. With ``video``,
    ``images`` are the frames of one video.
    """
    layers = np.asarray(plan.layer_indices(adapter.num_layers))
    if video and plan.vision_attention:
        raise InputError("the vision tower's attention is recorded for images only; trace the video without it")
    if video:
        text = adapter.format_video_prompt(prompt, n_frames=len(images))
        inputs = to_device(adapter.encode_video(images, text), model)
    else:
        text = adapter.format_prompt(prompt, n_images=len(images))
        inputs = to_device(adapter.encode(images, text), model)
    prompt_ids = inputs["input_ids"]
    answer_ids = None if answer is None else _answer_ids(adapter, answer)
    # Check the budget before anything runs, with the longest answer generation may give.
    planned_length = prompt_ids.shape[1] + (max_new_tokens if answer_ids is None else len(answer_ids))
    lay_out = adapter.video_layout if video else adapter.layout
    prompt_layout = lay_out(prompt_ids[0].cpu().numpy(), images, inputs)
    placeholders = _placeholder_ids(adapter, prompt_ids[0].cpu().numpy(), prompt_layout)
    if answer_ids is not None:
        _check_answer(adapter, answer_ids, placeholders)
    n_image = len(prompt_layout.positions("image", "image_newline", "image_sep"))
    planned_queries = _n_queries(plan, planned_length, planned_length - n_image)
    longest = f"max_new_tokens={max_new_tokens} (lower it)" if answer_ids is None else ""
    planned_logits = planned_length - prompt_ids.shape[1] + 1
    cross_layers = adapter.cross_attention_layers
    plan.check(
        adapter.model_shape(len(images)), planned_length, planned_queries, n_logits=planned_logits, longest=longest
    )

    with preserved(model):
        model.eval()
        if answer_ids is None:
            answer_ids = _generate(model, inputs, max_new_tokens, never=placeholders)
        input_ids = torch.cat([prompt_ids, answer_ids[None].to(prompt_ids.device)], dim=1)
        ids = input_ids[0].cpu().numpy()
        layout = lay_out(ids, images, inputs)
        query_positions = _query_positions(plan, layout)
        # The final arrays, written layer by layer during the forward: the recording is the only copy.
        heads = 1 if plan.head_mean else adapter.num_heads
        rows = torch.empty(len(layers), heads, len(query_positions), len(ids))
        states = None
        if plan.hidden_states:
            states = torch.empty(adapter.num_layers + 1, len(ids), adapter.model_shape(len(images)).hidden_size)
        with progress(total=len(layers), desc="mmviz: analysis forward", unit="layer") as bar:
            recorder = AttentionRecorder(
                query_positions,
                layers=layers.tolist(),
                head_mean=plan.head_mean,
                on_layer=lambda _: bar.update(),
                into=rows,
            )
            recorders: dict[str, AttentionRecorder | None] = {adapter.text_config_key: recorder}
            vision = AttentionRecorder(keep_calls=True) if plan.vision_attention else None
            if vision is not None:
                recorders[adapter.vision_config_key] = vision
            cross = None
            if cross_layers:  # every position's rows over the cross-attention keys (every head, or their mean)
                keys = layout.keys
                if keys is None:
                    raise UnsupportedModelError(f"{adapter.family}: cross-attention layers but no cross-attention keys")
                cross_rows = torch.empty(len(cross_layers), heads, len(ids), len(keys))
                cross = AttentionRecorder(
                    layers=cross_layers,
                    head_mean=plan.head_mean,
                    on_layer=lambda layer: bar.update() if layer in set(layers.tolist()) else None,
                    into=cross_rows,
                    keys_are_positions=False,
                )
            answer_start = prompt_ids.shape[1]
            forward_inputs = adapter.analysis_inputs(
                {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}, len(answer_ids)
            )
            with (
                torch.no_grad(),
                recording(model, recorders, cross_layers=cross_layers, cross_recorder=cross),
                recording_hidden_states(
                    adapter.decoder_layers(), None if plan.hidden_states else [], into=states, readout=adapter.residual
                ) as hidden,
            ):
                output = model(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    use_cache=False,
                    logits_to_keep=len(ids) - answer_start + 1,
                    **forward_inputs,
                )
    missing = sorted(set(layers.tolist()) - set(recorder.rows) - set(cross_layers))
    if cross is not None:
        missing += sorted(set(cross_layers) - set(cross.rows))
    if missing or (states is not None and len(hidden) != len(states)):
        raise UnsupportedModelError(
            f"decoder layers {missing or 'hidden states'} were not recorded: the language model did not run "
            f"through mmviz's attention function or its decoder layers"
        )
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
        model_name=model_name(model),
        num_layers=adapter.num_layers,
        num_heads=adapter.num_heads,
        query_positions=np.asarray(query_positions),
        attention_rows=(
            rows.numpy() if cross is None else cross_key_rows(rows, cross_rows, layers, cross_layers, query_positions)
        ),
        layers=layers,
        head_mean=plan.head_mean,
        hidden_states=None if states is None else states.numpy(),
        vision_attention=None if vision is None else adapter.vision_attention(vision.calls, inputs),
        run=ModelRun(model, adapter, input_ids, forward_inputs, tuple(images), video=video),
    )
    return result


def cross_key_rows(
    rows: torch.Tensor,
    cross_rows: torch.Tensor,
    layers: np.ndarray,
    cross_layers: Sequence[int],
    query_positions: np.ndarray,
) -> np.ndarray:
    """Attention rows over the cross-attention keys ``(L, H, Q, K)`` for a family whose text reads the image only
    through cross-attention layers (the image columns are those keys).

    A cross layer's rows are its own cross-attention probabilities (query → vision key). A self-attention layer
    ``ℓ`` reaches the image INDIRECTLY, as BLIP-2's queries do: its row ``A_ℓ[q, ·]`` over positions is composed with
    what each position read in the cross layers before ``ℓ``, ``W_ℓ[t, k]`` = their cross-attention of ``t``
    averaged over heads and those layers: ``A_ℓ @ W_ℓ``. Before the first cross layer nothing has read the image:
    those rows are 0.

    Args:
        rows: ``(L, H or 1, Q, N)`` the recorded rows over positions (cross layers' slots are ignored).
        cross_rows: ``(Lc, H or 1, N, K)`` every position's cross-attention rows, per cross layer and head (or
            their mean, as ``rows``).
        layers: the ``L`` recorded decoder layers.
        cross_layers: the ``Lc`` cross layers, in order.
        query_positions: the ``Q`` recorded query positions.

    Example:
        >>> cross_key_rows(rows, cross_rows, np.arange(3), [1], np.arange(5)).shape      # doctest: +SKIP
        (3, 4, 5, 68)
    """
    heads = rows.shape[1]
    queries = torch.as_tensor(np.asarray(query_positions), dtype=torch.long)
    order = {int(layer): slot for slot, layer in enumerate(cross_layers)}
    out = torch.zeros(len(layers), heads, len(queries), cross_rows.shape[-1])
    for slot, layer in enumerate(np.asarray(layers).tolist()):
        if layer in order:
            own = cross_rows[order[layer]][:, queries]  # (H, Q, K)
            out[slot] = own.mean(dim=0, keepdim=True) if heads == 1 else own
            continue
        before = [order[c] for c in order if c < layer]
        if before:
            weights = cross_rows[before].mean(dim=(0, 1))  # (N, K)
            out[slot] = rows[slot] @ weights
    return out.numpy()


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


def _answer_ids(adapter: GenerativeAdapter, answer: str | Sequence[int]) -> torch.Tensor:
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


def _placeholder_ids(adapter: GenerativeAdapter, prompt_ids: np.ndarray, layout: TokenLayout) -> list[int]:
    """The token ids the processor put in for the images, as the prompt's layout shows them: every image position's
    id, and the special tokens that mark images (a plain newline between tiles stays an ordinary token)."""
    image = prompt_ids[layout.positions("image", "query")]
    markers = prompt_ids[layout.positions("image_newline", "image_sep")]
    return sorted({int(i) for i in image} | {int(i) for i in markers[adapter.special_mask(markers)]})


def _check_answer(adapter: GenerativeAdapter, answer_ids: torch.Tensor, placeholders: list[int]) -> None:
    found = [index for index, token in enumerate(answer_ids.tolist()) if token in placeholders]
    if found:
        shown = adapter.display_tokens([int(answer_ids[i]) for i in found[:3]])
        raise InputError(
            f"the answer holds the image placeholder token(s) {shown} at answer token(s) {found[:3]}: only the "
            f"processor puts them in, for the images; remove them from the answer"
        )


def _generate(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int, never: list[int]
) -> torch.Tensor:
    """The greedy answer; ``never`` (the image placeholders) is suppressed: fed back as text it would ask the model
    for image features it does not have (a random or confused model does generate them)."""
    with progress(total=max_new_tokens, desc="mmviz: generating", unit="tok") as bar, torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            suppress_tokens=never or None,
            logits_processor=LogitsProcessorList([_ProgressTicker(bar)]),
        )
    return output[0, inputs["input_ids"].shape[1] :].cpu()


def _answer_logprobs(logits: torch.Tensor, answer_ids: torch.Tensor) -> np.ndarray:
    """``log p(y_t | x_<t)``: the logits at position t−1 predict answer token t (the last row predicts nothing)."""
    log_probs = torch.log_softmax(logits[:-1].float(), dim=-1)
    picked = log_probs.gather(1, answer_ids.to(log_probs.device)[:, None])[:, 0]
    return picked.cpu().numpy()
