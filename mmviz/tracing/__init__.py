"""``mmviz.trace``: the one orchestrator. It checks the arguments, picks the path by the adapter's type (a
generative model generates, then runs ONE teacher-forced analysis forward; a dual encoder runs one forward) and
computes the requested maps with :meth:`Trace.compute`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmviz.adapters import DualEncoderAdapter, adapter_for
from mmviz.adapters.generative import video_families
from mmviz.capture import CapturePlan
from mmviz.errors import InputError, UnsupportedModelError
from mmviz.inputs import ImageLike, VideoLike, check_prompt, load_images, load_video
from mmviz.methods import CATALOGUE  # importing the methods fills the catalogue Trace.compute looks names up in
from mmviz.model_state import uncompiled
from mmviz.records import Trace
from mmviz.tracing.attach import attach  # registers Trace.attach
from mmviz.tracing.dual_encoder import trace_dual_encoder
from mmviz.tracing.generative import trace_generative


def trace(
    model: torch.nn.Module,
    processor: Any,
    image: ImageLike | Sequence[ImageLike] | None = None,
    prompt: str | None = None,
    *,
    video: VideoLike | None = None,
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
        model: e.g. ``LlavaForConditionalGeneration.from_pretrained(...)``; a ``torch.compile(model)`` is traced
            through the module behind it, so its compiled graph is neither rebuilt nor changed.
        processor: the model's processor (``AutoProcessor.from_pretrained`` of the same checkpoint).
        image: PIL image, ``H×W×3`` uint8 array or path; or a list of them for a multi-image prompt (each image
            gets its own grid, in prompt order).
        prompt: a plain question (the chat template and one image placeholder per image are added) or a fully
            formatted prompt that already holds one placeholder per image.
        video: instead of ``image``, the frames of ONE video (a list of PIL images / arrays / paths, or a
            ``(T, H, W, 3)`` uint8 array), for families with a video path (Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
            LLaVA-OneVision, LLaVA-NeXT-Video, SmolVLM): every frame is used as given, each video token gets the span
            of original frames it covers (``trace.layout.frames``) and its box on them; ``trace.images`` holds the
            frames.
        answer: the answer to analyse (text, or token ids); None generates it.
        max_new_tokens: generation length limit when ``answer`` is None.
        capture: what to record (:class:`~mmviz.capture.CapturePlan`); the default records every text row of
            every layer and head. Its memory estimate is checked against its budget BEFORE the model runs
            (:class:`~mmviz.capture.CaptureBudgetError`).
        methods: names from :data:`mmviz.methods.CATALOGUE` to compute right away with :meth:`Trace.compute`
            (default settings, every answer token); their maps land in :attr:`Trace.maps`. The widget computes the
            others on request.

    Example:
        >>> trace = mmviz.trace(qwen, qwen_processor, video=frames, prompt="What happens?")   # doctest: +SKIP
        >>> trace.layout.row(trace.image_positions[0])["frames"]                              # doctest: +SKIP
        (0, 1)
        >>> model, processor = mmviz.zoo.tiny_llava()
        >>> t = mmviz.trace(model, processor, np.zeros((64, 96, 3), np.uint8), "What is shown?", max_new_tokens=4)
        >>> t.attention(layer=0, head="mean").shape[1]
        576
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    if capture is not None and not isinstance(capture, CapturePlan):
        raise InputError(f"capture must be a mmviz.CapturePlan(...) or None, not {type(capture).__name__}")
    plan = CapturePlan() if capture is None else capture
    if isinstance(methods, (str, bytes)) or not isinstance(methods, (list, tuple, set, frozenset)):
        raise InputError(f"methods must be a list of method names (e.g. ['relevancy']), not {methods!r}")
    unknown = [name for name in methods if not isinstance(name, str) or name not in CATALOGUE]
    if unknown:
        raise InputError(f"unknown methods {unknown!r}; choose from {list(CATALOGUE)}")
    if answer is not None and not isinstance(answer, (str, list, tuple)):
        raise InputError(f"answer must be text, a list of token ids or None (generate it), not {answer!r}")
    if (image is None) == (video is None):
        raise InputError(
            "pass exactly one of image= (an image or a list of images) and video= (the frames of one video)"
            + ("" if image is None else ", not both")
        )
    prompt = check_prompt(prompt)
    images = load_images(image) if video is None else load_video(video)
    model = uncompiled(model)
    adapter = adapter_for(model, processor)
    if video is not None and isinstance(adapter, DualEncoderAdapter):
        raise UnsupportedModelError(
            f"{adapter.family} is a dual encoder: it has no video path; families with one: "
            f"{', '.join(video_families())}"
        )
    if video is not None and not adapter.video_path:  # type: ignore[union-attr]
        raise adapter.no_video()  # type: ignore[union-attr]
    if isinstance(adapter, DualEncoderAdapter):  # CLIP-like: nothing to generate
        return trace_dual_encoder(model, images, prompt, adapter, plan, answer=answer, methods=methods)
    result = trace_generative(
        model, images, prompt, adapter, plan, answer=answer, max_new_tokens=max_new_tokens, video=video is not None
    )
    for name in methods:
        result.compute(name)
    return result


__all__ = ["Trace", "attach", "trace"]
