"""Relative attention (Zhang et al., ICLR 2025, "MLLMs know where to look", arXiv 2502.17422): attention to the
image under the question divided by attention to the same image under a generic prompt.

For answer token t and layer ℓ, with Ā the head mean of the attention row that predicts t (query t − 1):

    rel_ℓ[t, p] = Ā_ℓ(question)[t − 1, p] / max(Ā_ℓ(generic)[t' − 1, p], ε)

where the generic trace is the SAME image(s) and the same answer, teacher-forced after ``generic`` (default
*"Describe the image."*), and t' is the same answer token there. Query-independent attention (sinks, tokens every
prompt reads) appears in both and cancels; what the question makes the model read stands out. Cost: one extra
traced forward (the question's attention rows are the trace's own).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmviz import selection
from mmviz.capture.attention import AttentionRecorder, recording
from mmviz.capture.run import ModelRun, to_device
from mmviz.errors import InputError
from mmviz.methods.common import inference_context, model_run, sequence_image_positions
from mmviz.records import Map, Trace, method

GENERIC_PROMPT = "Describe the image."
EPSILON = 1e-6
"""Floor of the generic prompt's attention (probabilities): keeps the ratio finite where it reads nothing."""

LABEL = "Relative attention (question ÷ generic prompt)"
MEANING = (
    "Attention from the token predicting this answer token to each image token, divided by the attention to it "
    "under a generic prompt ('Describe the image.'): above 1 where the question makes the model read more. "
    "Cancels sinks and habitual reading; still where the model reads, not what caused the answer."
)


@method("relative_attention", label=LABEL, meaning=MEANING, per_layer=True, targeted=False, sequence_positions=True)
def relative_attention(trace: Trace, *, generic: str = GENERIC_PROMPT, layers: Sequence[int] | None = None) -> Map:
    """Relative attention of every answer token over the image tokens, one slice per captured decoder layer.

    Args:
        generic: the question-free prompt whose attention divides the question's.
        layers: restrict to these captured decoder layers (default: all captured).

    Example:
        >>> m = mmviz.methods.relative_attention(trace)                    # doctest: +SKIP
        >>> m.row(trace.answer_start, layer="mean").argmax()               # doctest: +SKIP
    """
    run = model_run(trace)
    sequence_image_positions(trace, "relative_attention")  # the generic prompt's rows are recorded over positions
    if not isinstance(generic, str) or not generic.strip():
        raise InputError(f"generic must be a non-empty prompt, not {generic!r}")
    wanted = [int(layer) for layer in trace.layers]
    if layers is not None:
        wanted = selection.layers(layers, trace.num_layers)
        selection.captured(wanted, trace.layers.tolist())
    answer = np.arange(trace.answer_start, len(trace.tokens))
    rows = [trace.row_of(int(p) - 1) for p in answer]  # raises if the plan left a predicting row out
    baseline = _generic_rows(run, generic, trace.token_ids[answer], wanted, len(trace.image_positions))
    slots = [int(np.flatnonzero(trace.layers == layer)[0]) for layer in wanted]
    # one captured layer at a time (a loaded trace's rows are read a layer at a time)
    question = np.stack([np.asarray(trace.attention_rows[s])[:, rows][..., trace.image_positions] for s in slots])
    values = question.mean(axis=1) / np.maximum(baseline.mean(axis=1), EPSILON)  # (L, A, P), heads averaged first
    return relative_attention.spec.map(  # type: ignore[attr-defined]
        values=values,
        positions=answer,
        columns=trace.image_positions,
        layers=np.array(wanted),
        info={"generic_prompt": generic, "epsilon": EPSILON, "heads": "mean"},
    )


def _generic_rows(
    run: ModelRun, generic: str, answer_ids: np.ndarray, layers: Sequence[int], n_image: int
) -> np.ndarray:
    """Head-mean attention ``(L, 1, A, image tokens)`` of the rows predicting ``answer_ids`` after the ``generic``
    prompt with the same images (or the same video): one forward recording only those rows and layers."""
    adapter, images = run.adapter, list(run.images)
    if run.video:
        encoded = adapter.encode_video(images, adapter.format_video_prompt(generic, len(images)))
    else:
        encoded = adapter.encode(images, adapter.format_prompt(generic, len(images)))
    encoded = to_device(encoded, run.model)
    prompt = encoded["input_ids"]
    answer = torch.as_tensor(np.asarray(answer_ids), dtype=prompt.dtype, device=prompt.device)[None]
    input_ids = torch.cat([prompt, answer], dim=1)
    others = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
    forward_inputs = adapter.analysis_inputs(others, answer.shape[1])
    generic_run = ModelRun(run.model, adapter, input_ids, forward_inputs, run.images, video=run.video)
    lay_out = adapter.video_layout if run.video else adapter.layout
    layout = lay_out(input_ids[0].cpu().numpy(), images, encoded)
    if len(layout.image_positions) != n_image:
        raise InputError("the generic prompt has another number of image tokens; pass a plain prompt")
    predicting = np.arange(prompt.shape[1] - 1, input_ids.shape[1] - 1)
    recorder = AttentionRecorder(predicting, layers=layers, head_mean=True)
    with inference_context(generic_run), recording(run.model, {adapter.text_config_key: recorder}):
        generic_run.forward(first_logit=generic_run.length - 1)
    columns = torch.as_tensor(layout.image_positions)
    return np.stack([recorder.rows[layer][0][..., columns].cpu().numpy() for layer in layers])
