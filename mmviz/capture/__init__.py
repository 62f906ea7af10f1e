"""Capture: record what the views need during one analysis forward, and leave the model as it was found."""

from mmviz.capture.attention import ATTENTION_NAME, AttentionRecorder, recording, row_probabilities
from mmviz.capture.model_state import ModelState, preserved, restore, snapshot

__all__ = [
    "ATTENTION_NAME",
    "AttentionRecorder",
    "ModelState",
    "preserved",
    "recording",
    "restore",
    "row_probabilities",
    "snapshot",
]
