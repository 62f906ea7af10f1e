"""The base of generative vision-language models: a language model that reads image features at placeholder
positions and generates text, which mmviz's methods run again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from mmviz.adapters.base import Adapter, ModelShape
from mmviz.adapters.layout import TokenLayout
from mmviz.errors import InputError, ProcessorMismatchError, UnsupportedModelError


def video_families() -> list[str]:
    """The families whose adapter has a video path (``mmviz.trace(..., video=frames)``), sorted.

    Example:
        >>> "Qwen2-VL" in video_families()
        True
    """
    found: set[str] = set()
    pending: list[type] = [GenerativeAdapter]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if getattr(cls, "video_path", False) and cls.family:
            found.add(cls.family)
    return sorted(found)


class GenerativeAdapter(Adapter):
    """Family knowledge for one kind of generative vision-language model; subclass it and call
    ``register_adapter``.

    A subclass sets :attr:`family` and :attr:`model_types` and implements :meth:`layout`; everything else has a
    default that fits models built as ``model.model.language_model`` + ``lm_head`` with a ``ProcessorMixin``.

    Example:
        >>> class MyAdapter(GenerativeAdapter):               # doctest: +SKIP
        ...     family = "My-VLM"
        ...     model_types = ("my_vlm",)
        ...     def layout(self, input_ids, images, inputs): ...
        >>> mmviz.register_adapter(MyAdapter)                 # doctest: +SKIP
    """

    video_path: ClassVar[bool] = False
    """Whether the family reads videos (:meth:`format_video_prompt`, :meth:`encode_video`, and a :meth:`layout`
    that gives every video token its frame span)."""
    image_input: ClassVar[str] = "inputs_embeds"
    """The language model's keyword argument that carries the image, which gradient and perturbation methods edit:
    ``inputs_embeds`` (image features scattered into the sequence), or the cross-attention states of a family
    whose text reads the image through cross-attention layers (its layout then has
    :class:`~mmviz.adapters.layout.CrossKeys`)."""

    @property
    def cross_attention_layers(self) -> tuple[int, ...]:
        """Decoder layers whose attention reads the image through cross-attention (keys = vision states, not
        sequence positions); none for families that put the image into the sequence."""
        return ()

    # -- model structure -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    def language_model(self) -> torch.nn.Module:
        """The bare decoder (no head) that reads the merged text + image embeddings as ``inputs_embeds``."""
        return self.model.model.language_model

    def decoder_layers(self) -> Sequence[torch.nn.Module]:
        """The language model's decoder layers, in order (for residual-stream capture)."""
        return self.language_model().layers

    def mlp_output_projection(self, layer: int) -> torch.nn.Linear:
        """The linear map that turns decoder ``layer``'s MLP activations into its output (its input is what the
        neuron view shows): ``mlp.down_proj`` in Llama-style layers, ``fc2`` in OPT-style ones."""
        block = self.decoder_layers()[layer]
        for path in ("mlp.down_proj", "mlp.fc2", "fc2", "mlp.c_proj", "feed_forward.down_proj"):
            module: Any = block
            for name in path.split("."):
                module = getattr(module, name, None)
            if isinstance(module, torch.nn.Linear):
                return module
        raise UnsupportedModelError(
            f"{self.family}: no MLP output projection found in decoder layer {layer} ({type(block).__name__}); "
            f"the neuron view needs one named mlp.down_proj or fc2"
        )

    def residual(self, state: Any) -> torch.Tensor:
        """The ``(B, N, d)`` residual state in a decoder layer's input or output (the first item of a tuple); a
        family whose layers carry several stacked streams merges them as its model's last step does."""
        return state[0] if isinstance(state, tuple) else state

    def active_stream(self, output: torch.Tensor) -> torch.Tensor:
        """The ``(B, N, d)`` part of a decoder layer's output tensor (or of its gradient) that Grad-CAM weighs: the
        state itself; the first of stacked streams in a family that carries several."""
        return output

    def final_norm(self) -> torch.nn.Module:
        """The norm applied once after the last decoder layer (the logit lens applies it exactly once)."""
        return self.language_model().norm

    def unembedding(self) -> torch.nn.Module:
        """The head mapping final-normed states to vocabulary logits."""
        return self.model.get_output_embeddings()

    def lens_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits the model would give if ``hidden`` (residual stream, before the final norm) were its last state:
        the final norm applied exactly once, then :meth:`head_logits`."""
        return self.head_logits(self.final_norm()(hidden))

    def head_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """The model's logits for final-normed states: the unembedding and the final soft cap where the model has
        one (a family whose head does more after the unembedding overrides this)."""
        logits = self.unembedding()(normed)
        cap = self.final_logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    @property
    def final_logit_softcap(self) -> float | None:
        """The soft cap the model's head applies to its logits (None: none): the text config's
        ``final_logit_softcapping`` unless the family's model class ignores it."""
        return getattr(self.text_config, "final_logit_softcapping", None)

    def model_shape(self, num_images: int) -> ModelShape:
        vision = getattr(self.model.config, self.vision_config_key, None)
        return ModelShape(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_size=int(self.text_config.hidden_size),
            vision_layers=int(getattr(vision, "num_hidden_layers", 0)),
            vision_heads=int(getattr(vision, "num_attention_heads", 0)),
            vision_tokens=self.vision_tokens_per_image(),
            num_images=num_images,
            vocab_size=int(self.text_config.vocab_size),
        )

    # -- prompt and inputs -----------------------------------------------------------------------------------
    @property
    def image_token(self) -> str:
        return str(self.processor.image_token)

    @property
    def image_token_id(self) -> int:
        """Id of the image positions the model fills with image features (``config.image_token_id``; the
        tokenizer's id of the processor's placeholder for models whose config does not say)."""
        configured = getattr(self.model.config, "image_token_id", None)
        if configured is not None:
            return int(configured)
        return int(self.tokenizer.convert_tokens_to_ids(self.image_token))

    def format_prompt(self, prompt: str, n_images: int) -> str:
        """Use ``prompt`` as is when it already holds image placeholders, else wrap it in the chat template."""
        if self.image_token in prompt:
            return prompt
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        return self.fallback_template.format(image=self.image_token * n_images, prompt=prompt)

    def encode(self, images: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        """Run the processor; returns tensors for one sequence."""
        self.check_placeholders(text, len(images))
        return dict(self.processor(images=list(images), text=text, return_tensors="pt"))

    @property
    def video_token(self) -> str:
        """The processor's video placeholder (families with a video path)."""
        return str(getattr(self.processor, "video_token", None) or "<video>")

    @property
    def video_token_id(self) -> int:
        """Id of the positions the model fills with video features (the config's, else the tokenizer's)."""
        config = self.model.config
        configured = getattr(config, "video_token_id", None)
        if configured is None:
            configured = getattr(config, "video_token_index", None)
        if configured is not None:
            return int(configured)
        return int(self.tokenizer.convert_tokens_to_ids(self.video_token))

    def format_video_prompt(self, prompt: str, n_frames: int) -> str:
        """The text the processor gets for ``prompt`` about one video of ``n_frames`` frames: the chat template with
        one video item (:meth:`video_chat_prompt`)."""
        if not self.video_path:
            raise self.no_video()
        return self.video_chat_prompt(prompt, self.video_token)

    def video_chat_prompt(self, prompt: str, fallback_block: str) -> str:
        """``prompt`` as is when it holds :attr:`video_token`; else the chat template with one video item, or (no
        template, or one that does not write the token once) :attr:`fallback_template` around ``fallback_block``
        (the video placeholder as the family writes it). An image placeholder in a video prompt is refused."""
        video_token = self.video_token
        if video_token in prompt:
            return prompt
        if self.image_token in prompt:
            raise InputError(
                f"the prompt holds the image placeholder {self.image_token!r} but a video was passed; use "
                f"{video_token!r} (or no placeholder: mmviz adds it)"
            )
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "video"}, {"type": "text", "text": prompt}]
            text = self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
            if text.count(video_token) == 1:
                return str(text)
        return self.fallback_template.format(image=fallback_block, prompt=prompt)

    def encode_video(self, frames: Sequence[Image.Image], text: str) -> dict[str, torch.Tensor]:
        """Run the processor on one video, every frame used as given (``do_sample_frames=False``), then
        :meth:`check_video` its output; returns tensors for one sequence. ``text`` must hold exactly one video
        placeholder and no image placeholder."""
        if not self.video_path:
            raise self.no_video()
        found = text.count(self.video_token)
        if found != 1:
            raise ProcessorMismatchError(
                f"the prompt has {found} video placeholders ({self.video_token!r}) for one video; use one or none "
                f"(mmviz then adds it)"
            )
        if self.image_token in text:
            raise InputError("a video prompt cannot also hold image placeholders; trace images and videos apart")
        if getattr(self.processor, "video_processor", None) is None:
            raise ProcessorMismatchError(
                "the processor has no video_processor; pass the model's full processor "
                "(AutoProcessor.from_pretrained(<the model's checkpoint>))"
            )
        inputs = dict(self.processor(videos=[list(frames)], text=[text], return_tensors="pt", do_sample_frames=False))
        self.check_video(inputs, len(frames))
        return inputs

    def check_video(self, inputs: dict[str, torch.Tensor], n_frames: int) -> None:
        """Raise :class:`ProcessorMismatchError` when the processor's output for one video of ``n_frames`` frames
        is not what the model takes (frames sampled, another canvas, another token count); families with a video
        path override it."""

    def video_layout(
        self, input_ids: np.ndarray, frames: Sequence[Image.Image], inputs: dict[str, torch.Tensor]
    ) -> TokenLayout:
        """The layout of one video's tokens (:meth:`encode_video`'s inputs): view ``"frame"``, every image
        token's span of original frames, boxes on the original frames."""
        raise self.no_video()

    def video_pixel_inputs(
        self, frames: Sequence[Image.Image], like: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """:meth:`pixel_inputs` for edited frames of a video trace: the video processor's output, every frame kept,
        only the keys ``like`` (the traced inputs) holds."""
        if not self.video_path:
            raise self.no_video()
        encoded = self.processor.video_processor(videos=[list(frames)], do_sample_frames=False, return_tensors="pt")
        return {key: value for key, value in dict(encoded).items() if key in like}

    def pixel_inputs(self, images: Sequence[Image.Image], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The processor's pixel inputs for ``images`` (edited copies of the traced ones, same sizes, so the token
        grids are the same), only the keys that ``like`` (the traced inputs) holds: what a baseline (blurred or
        blank images) replaces in a forward.

        Example:
            >>> blurred = [image.filter(ImageFilter.GaussianBlur(8)) for image in trace.images]    # doctest: +SKIP
            >>> {**trace.run.inputs, **adapter.pixel_inputs(blurred, trace.run.inputs)}           # doctest: +SKIP
        """
        # Through the whole processor, not its image processor alone: processors pass their own image options
        # (InternVL's and Aya Vision's tiling), so the image processor by itself can lay the same image out otherwise.
        names = set(getattr(self.processor.image_processor, "model_input_names", None) or ("pixel_values",))
        encoded = self.encode(list(images), self.format_prompt("Describe the image.", len(images)))
        return {key: value for key, value in encoded.items() if key in like and key in names}

    def no_video(self) -> UnsupportedModelError:
        """The error for a video passed to a family without a video path."""
        return UnsupportedModelError(
            f"{self.family or type(self).__name__} has no video path in mmviz; families with one: "
            f"{', '.join(video_families())}. Pass frames as images instead (image=[...]) to trace them as a "
            f"multi-image prompt"
        )

    def check_placeholders(self, text: str, n_images: int) -> None:
        """The prompt must hold one image placeholder per image."""
        n_placeholders = text.count(self.image_token)
        if n_placeholders != n_images:
            raise ProcessorMismatchError(
                f"the prompt has {n_placeholders} image placeholders ({self.image_token!r}) for {n_images} "
                f"image(s); use one placeholder per image or none (mmviz then adds them)"
            )

    def vision_attention(self, calls: dict[int, list[torch.Tensor]], inputs: dict[str, torch.Tensor]) -> np.ndarray:
        """The vision tower's recorded attention as float32 ``(L_v, images, H_v, N_v, N_v)``, in the tower's token
        order per image (CLIP: ``[CLS]`` + patches in raster order).

        ``calls`` holds, per vision layer, every call of its attention function in order (each ``(B, H, n, n)``);
        it is consumed (each layer's recording is freed once copied, so only one layer ever exists twice). The
        default expects one call per layer over a batch of images; towers that attend in chunks override it.
        """
        layers = sorted(calls)
        if any(len(calls[layer]) != 1 for layer in layers):
            raise NotImplementedError(f"{type(self).__name__} does not know how to join a vision layer's chunks")
        joined = torch.empty(len(layers), *calls[layers[0]][0].shape)
        for slot, layer in enumerate(layers):
            joined[slot] = calls.pop(layer)[0]
        return joined.numpy()

    def vision_token_index(self, layout: TokenLayout) -> np.ndarray | None:
        """For each image column of ``layout``: ``(image, token index in the vision tower's sequence)``, when every
        language-model image token is exactly one vision-tower token (LLaVA-1.5); None otherwise. Relevancy uses it
        to continue through the vision tower."""
        return None

    def analysis_inputs(self, inputs: dict[str, torch.Tensor], n_answer: int) -> dict[str, torch.Tensor]:
        """Processor outputs (without ``input_ids`` / ``attention_mask``) for the prompt + ``n_answer`` answer tokens.

        The default passes them through; families whose processor returns per-token inputs (PaliGemma's
        ``token_type_ids``) extend those over the answer.
        """
        return inputs

    @staticmethod
    def extend_token_type_ids(inputs: dict[str, torch.Tensor], n_answer: int, fill: int) -> dict[str, torch.Tensor]:
        """``inputs`` with ``token_type_ids`` (when present) extended by ``n_answer`` entries of ``fill``."""
        token_type_ids = inputs.get("token_type_ids")
        if token_type_ids is None or n_answer == 0:
            return inputs
        answer = token_type_ids.new_full((token_type_ids.shape[0], n_answer), fill)
        return {**inputs, "token_type_ids": torch.cat([token_type_ids, answer], dim=1)}

    # -- family knowledge --------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`ProcessorMismatchError` when the processor cannot belong to the model (by default: its
        image token and its vocabulary; families add their own checks)."""
        self.check_image_token()
        self.check_vocabulary()

    def check_image_token(self) -> None:
        """The processor's image placeholder must be the token the model replaces with image features."""
        processor_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if processor_id != self.image_token_id:
            raise ProcessorMismatchError(
                f"the processor's image token {self.image_token!r} has id {processor_id} but the model expects "
                f"{self.image_token_id}; load the processor from the same checkpoint as the model"
            )
