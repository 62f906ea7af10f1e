"""Capture: record what the views need during one analysis forward, and leave the model as it was found."""

from mmviz.capture.attention import (
    ATTENTION_NAME,
    AttentionRecorder,
    EdgeBlock,
    attention_modules,
    block_edges,
    recording,
    row_probabilities,
)
from mmviz.capture.hidden import recording_hidden_states
from mmviz.capture.plan import CaptureBudgetError, CapturePlan, default_budget
from mmviz.model_state import ModelState, preserved, restore, snapshot

__all__ = [
    "ATTENTION_NAME",
    "AttentionRecorder",
    "CaptureBudgetError",
    "CapturePlan",
    "EdgeBlock",
    "ModelState",
    "attention_modules",
    "block_edges",
    "default_budget",
    "preserved",
    "recording",
    "recording_hidden_states",
    "restore",
    "row_probabilities",
    "snapshot",
]
