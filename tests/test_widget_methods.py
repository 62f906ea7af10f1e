"""The Inspector's method switcher, kernel side: catalogue, shipped maps, compute requests, malformed messages."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import traitlets

import mmviz
from mmviz import wire
from mmviz.methods import CATALOGUE


class Recorder:
    """Collects what the widget sends to the browser."""

    def __init__(self, widget: mmviz.Inspector) -> None:
        self.sent: list[dict] = []
        widget.send = lambda content, buffers=None: self.sent.append(content)


@pytest.fixture()
def inspector(llava_small, photo) -> mmviz.Inspector:
    model, processor = llava_small
    trace = mmviz.trace(model, processor, photo, "What is in the picture?", answer="A red square.", methods=["rollout"])
    return mmviz.Inspector(trace)


def test_catalogue_lists_every_method_and_what_is_computed(inspector):
    entries = {entry["name"]: entry for entry in inspector.methods}
    assert list(entries) == list(CATALOGUE)
    assert entries["attention"]["computed"] and entries["rollout"]["computed"]
    assert not entries["relevancy"]["computed"] and entries["relevancy"]["available"]
    assert entries["gradient_x_input"]["signed"] and entries["grad_cam"]["layered"]
    assert all(entry["meaning"] for entry in entries.values())


def test_shipped_map_decodes_to_the_traces_map(inspector):
    payload = inspector.maps["rollout"]
    values = wire.decode(payload["values"])
    expected = inspector.trace.maps["rollout"]
    step = (expected.values.max(axis=1) - expected.values.min(axis=1)) / 255
    assert np.all(np.abs(values - expected.values) <= step[:, None] / 2 + 1e-7)
    assert np.frombuffer(payload["positions"], "<i4").tolist() == expected.positions.tolist()
    assert payload["layers"] is None


def test_compute_request_adds_the_map_and_replies(inspector):
    sent = Recorder(inspector).sent
    inspector._on_message(inspector, {"type": "compute", "method": "grad_cam", "request": 7}, [])
    assert sent == [{"type": "computed", "method": "grad_cam", "request": 7, "ok": True}]
    payload = inspector.maps["grad_cam"]
    assert payload["layers"] == list(range(inspector.trace.num_layers))
    assert wire.decode(payload["values"]).shape[0] == inspector.trace.num_layers
    assert {e["name"]: e["computed"] for e in inspector.methods}["grad_cam"]
    inspector.method = "grad_cam"


def test_logit_lens_ships_one_slice_per_decoder_layer(inspector):
    inspector.compute("logit_lens")
    assert inspector.maps["logit_lens"]["layers"] == list(range(inspector.trace.num_layers))


@pytest.mark.parametrize(
    "message",
    [
        {"type": "compute", "method": "no_such_method", "request": 1},
        {"type": "compute", "method": 3, "request": 2},
        {"type": "compute", "request": 3},
        {"type": "launch_missiles"},
        ["not", "a", "dict"],
        None,
    ],
)
def test_malformed_messages_are_logged_and_answered(inspector, message, caplog):
    sent = Recorder(inspector).sent
    before = dict(inspector.maps)
    with caplog.at_level(logging.ERROR):
        inspector._on_message(inspector, message, [])
    assert len(sent) == 1 and sent[0]["ok"] is False and sent[0]["error"]
    assert inspector.maps == before and inspector.busy == ""
    inspector.compute("gradient_x_input")  # the widget keeps working
    assert "gradient_x_input" in inspector.maps


def test_method_trait_is_validated(inspector):
    with pytest.raises(traitlets.TraitError, match="method must be one of"):
        inspector.method = "nonsense"


def test_a_trace_without_its_model_cannot_compute(inspector):
    orphan = dataclasses.replace(inspector.trace, run=None, maps={})
    widget = mmviz.Inspector(orphan)
    available = {entry["name"] for entry in widget.methods if entry["available"]}
    assert available == {name for name, spec in CATALOGUE.items() if spec.cost == "instant"}, "only the rows' own"
    sent = Recorder(widget).sent
    widget._on_message(widget, {"type": "compute", "method": "relevancy", "request": 1}, [])
    assert sent[0]["ok"] is False and "no model attached" in sent[0]["error"] and "attach(model" in sent[0]["error"]
    widget._on_message(widget, {"type": "compute", "method": "attention_max", "request": 2}, [])
    assert sent[1]["ok"] is True and "attention_max" in widget.maps, "computed from the recorded rows alone"
