"""Qwen3-VL (``qwen3_vl``) and its mixture-of-experts variant (``qwen3_vl_moe``): Qwen2-VL's token layout.

What is the same as Qwen2-VL (and reused from :mod:`mmviz.adapters.qwen2_vl`): the processor (``smart_resize`` to
multiples of ``patch_size · merge_size``, here 16 · 2 = 32 px; ``image_grid_thw``; ``<|vision_start|>`` +
``<|image_pad|>``×n + ``<|vision_end|>``), the merger fusing each 2×2 block of consecutive patches into one token in
block-raster order, the vision tower attending per image (no windows), and M-RoPE positions derived from
``input_ids`` + ``mm_token_type_ids`` (the answer is appended as text for the teacher-forced forward).

What differs:

- **DeepStack**: the tower's intermediate layers listed in ``vision_config.deepstack_visual_indexes`` each give a
  second set of merged features, ADDED to the residual stream at the image positions right after decoder layers
  ``0 … k−1`` (outside the layers, in ``Qwen3VLTextModel.forward``). The image-token positions are the same ones
  the input embeddings fill, so the layout is unchanged; but the residual stream a layer hook sees at an image
  position after layer ``d < k`` is the layer's output before the DeepStack addition (text positions are exact).
- Interleaved M-RoPE (``mrope_interleaved``) and image positions that advance the text position by
  ``max(h, w) / m``: the model computes them itself from the inputs passed through unchanged.
- The vision tower's learned position embeddings are interpolated to the grid (no effect on the layout).
"""

from __future__ import annotations

from mmviz.adapters.qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL: Qwen2-VL's layout (one token per 2×2 block of 16-px patches) plus DeepStack feature injection.

    Example:
        >>> model = Qwen3VLForConditionalGeneration.from_pretrained("Qwen/Qwen3-VL-2B-Instruct")   # doctest: +SKIP
        >>> processor = AutoProcessor.from_pretrained("Qwen/Qwen3-VL-2B-Instruct")                 # doctest: +SKIP
        >>> trace = mmviz.trace(model, processor, "cat.png", "What is the cat doing?")             # doctest: +SKIP
        >>> trace.layout.row(trace.image_positions[0])["box"]                                       # doctest: +SKIP
        (0.0, 0.0, 32.0, 32.0)
    """

    family = "Qwen3-VL"
    model_types = ("qwen3_vl",)

    @property
    def deepstack_layers(self) -> tuple[int, ...]:
        """Decoder layers after which DeepStack features are added at the image positions (``0 … k−1``)."""
        indexes = getattr(self.model.config.vision_config, "deepstack_visual_indexes", None) or ()
        return tuple(range(min(len(indexes), self.num_layers)))


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL-MoE: Qwen3-VL's layout; the decoder's MLPs are mixtures of experts (the neuron view, which needs one
    dense MLP output projection per layer, does not apply).

    Example:
        >>> mmviz.trace(model, processor, "chart.png", "What is the trend?")   # doctest: +SKIP
    """

    family = "Qwen3-VL-MoE"
    model_types = ("qwen3_vl_moe",)
