"""Shared fixtures: tiny random-weight LLaVA models with real processors, built offline."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from PIL import Image

import mmviz
from mmviz.zoo import tiny_llava

warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture(scope="session")
def llava_small():
    """LLaVA-1.5 architecture with a 4×4 token grid (56 px canvas): fast, for logic tests."""
    return tiny_llava(image_size=56, patch_size=14, num_layers=3, seed=1)


@pytest.fixture(scope="session")
def llava_576():
    """LLaVA-1.5 shape: 336 px canvas, 14 px patches, 24×24 = 576 image tokens."""
    return tiny_llava(image_size=336, patch_size=14, num_layers=4, seed=2)


@pytest.fixture()
def fresh_llava(llava_small):
    """A private copy of the small model, for tests that check what happens to the model."""
    model, processor = llava_small
    return copy.deepcopy(model), processor


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A non-square test image with structure (gradients and a bright square)."""
    height, width = 90, 160
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 80)], axis=-1).astype(np.uint8)
    array[20:50, 100:130] = 255
    return Image.fromarray(array)


@pytest.fixture(scope="session")
def small_trace(llava_small, photo) -> mmviz.Trace:
    model, processor = llava_small
    return mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.")
