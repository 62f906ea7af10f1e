"""The trace path of dual encoders (CLIP, SigLIP): one forward, the vision tower's attention, patch–text similarity.

A dual encoder generates nothing, so its :class:`~mmviz.Trace` has no answer (``answer == ""``, ``answer_start``
= the sequence length). Its "sequence" is the caption's tokens followed by the vision tower's tokens (CLIP:
``[CLS]`` + patches; SigLIP: patches). The attention rows are those of the vision tokens (``query_positions``) over
the whole sequence: each row sums to one over the vision tokens and is exactly zero over the caption, which the
vision tower never sees. ``maps["similarity"]`` holds the patch–text similarity of :mod:`mmviz.methods.similarity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from mmviz.adapters import DualEncoderAdapter
from mmviz.capture import AttentionRecorder, CapturePlan, preserved, recording
from mmviz.capture.run import to_device
from mmviz.errors import InputError, UnsupportedModelError
from mmviz.methods.similarity import capturing_patch_source, similarity_map
from mmviz.records import Trace, model_name


def trace_dual_encoder(
    model: torch.nn.Module,
    images: Sequence[Image.Image],
    caption: str,
    adapter: DualEncoderAdapter,
    plan: CapturePlan,
    *,
    answer: str | Sequence[int] | None = None,
    methods: Sequence[str] = (),
) -> Trace:
    """Trace a CLIP-like model on one image and one caption (called by :func:`mmviz.trace`).

    The vision tower runs through mmviz's attention function (the text tower keeps its own), in one forward of
    the whole model with the processor's outputs; the model is left as found.

    Capture plan for dual encoders: ``queries`` ``"text"`` (default) and ``"all"`` both mean every vision token
    (caption tokens attend only inside the text tower and never reach the image); explicit positions must be
    vision positions. ``layers`` are vision-tower layers; ``head_mean`` and ``vision_attention`` work as usual;
    ``hidden_states`` is not supported.

    Example:
        >>> trace = mmviz.trace(clip_model, clip_processor, "cat.png", "a photo of a cat")   # doctest: +SKIP
        >>> trace.maps["similarity"].row(trace.maps["similarity"].positions[0]).shape      # doctest: +SKIP
        (49,)
    """
    family = adapter.family
    if answer is not None:
        raise InputError(
            f"{family} is a dual encoder: it scores the image against the caption (the prompt) and generates "
            f"nothing, so there is no answer to analyse; pass answer=None"
        )
    if methods:
        raise InputError(
            f"methods {list(methods)!r} explain generated answers and do not apply to {family}; its trace always "
            f"carries the patch–text 'similarity' map"
        )
    if plan.hidden_states:
        raise InputError(
            f"hidden_states capture is not supported for {family} (a dual encoder); "
            f"use CapturePlan(hidden_states=False)"
        )
    text = adapter.format_prompt(caption, n_images=len(images))
    inputs = to_device(adapter.encode(images, text), model)
    caption_ids = inputs["input_ids"][0].cpu().numpy()
    layout = adapter.layout(caption_ids, images, inputs)
    n_caption = len(caption_ids)
    vision = np.arange(n_caption, len(layout))
    query_positions = _query_positions(plan, vision)
    layers = np.asarray(plan.layer_indices(adapter.num_layers))
    plan.check(adapter.model_shape(1), len(layout), len(query_positions))

    keep_all = plan.vision_attention  # the full (L, H, N_v, N_v) tensor is wanted as well
    # The final arrays, written layer by layer during the forward (one copy of each, no stacking afterwards).
    heads = 1 if plan.head_mean else adapter.num_heads
    attention_rows = np.zeros((len(layers), heads, len(query_positions), len(layout)), np.float32)
    recorded_layers = list(range(adapter.num_layers)) if keep_all else layers.tolist()
    recorded = (
        torch.empty(adapter.num_layers, adapter.num_heads, len(vision), len(vision))
        if keep_all
        else torch.from_numpy(attention_rows)[..., n_caption:]
    )
    with (
        preserved(model),
        tqdm(total=len(recorded_layers), desc="mmviz: vision tower", unit="layer", leave=False) as bar,
    ):
        model.eval()
        recorder = AttentionRecorder(
            None if keep_all else query_positions - n_caption,
            layers=recorded_layers,
            head_mean=plan.head_mean and not keep_all,
            on_layer=lambda _: bar.update(),
            into=recorded,
        )
        with (
            torch.no_grad(),
            recording(model, {adapter.vision_config_key: recorder}),
            capturing_patch_source(adapter) as store,
        ):
            output = model(**inputs)
        similarity = similarity_map(adapter, layout, text, caption_ids, output, store["source"])

    missing = [layer for layer in recorded_layers if layer not in recorder.rows]
    if missing:
        raise UnsupportedModelError(
            f"the vision tower's attention of layers {missing} was not recorded: its attention modules did not go "
            f"through mmviz's attention function"
        )
    vision_attention = None
    if keep_all:
        vision_attention = recorded[:, None].numpy()  # (L, images = 1, H, N_v, N_v)
        for slot, layer in enumerate(layers.tolist()):  # one layer's selection at a time
            selected = recorded[layer][:, query_positions - n_caption]
            attention_rows[slot, ..., n_caption:] = selected.mean(0, keepdim=True) if plan.head_mean else selected
    return Trace(
        tokens=layout.tokens,
        token_ids=np.concatenate([caption_ids, np.full(len(vision), -1)]).astype(np.int64),
        layout=layout,
        prompt=text,
        answer="",
        answer_start=len(layout),
        answer_logprobs=np.zeros(0, np.float32),
        images=list(images),
        family=family,
        model_name=model_name(model),
        num_layers=adapter.num_layers,
        num_heads=adapter.num_heads,
        query_positions=query_positions,
        attention_rows=attention_rows,
        layers=layers,
        head_mean=plan.head_mean,
        hidden_states=None,
        vision_attention=vision_attention,
        maps={"similarity": similarity},
        run=None,
    )


def _query_positions(plan: CapturePlan, vision: np.ndarray) -> np.ndarray:
    if isinstance(plan.queries, str):  # "text" and "all": every vision token (caption tokens never see the image)
        return vision
    positions = np.unique(np.asarray(plan.queries, dtype=np.int64))
    if len(positions) == 0 or not np.isin(positions, vision).all():
        raise InputError(
            f"capture queries of a dual encoder must be vision-tower positions {int(vision[0])}…{int(vision[-1])} "
            f"(caption tokens attend only inside the text tower)"
        )
    return positions
