"""LLaVA-1.5: one square grid per image (CLIP centre crop)."""

from __future__ import annotations

from mmviz.zoo import tiny_llava
from tests.families.registry import family_case


@family_case("llava", kind="grid")
def build_llava():
    return tiny_llava(image_size=56, patch_size=14, num_layers=2, seed=3)
