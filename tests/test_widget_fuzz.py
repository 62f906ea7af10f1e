"""The browser cannot put the kernel into an invalid state: fuzzed messages and trait updates, through the entry
point ipywidgets uses (``Widget._handle_msg``), with every reply serialised the way a kernel serialises it.

Campaign: 10,000 generated requests and 2,000 generated trait updates (lone surrogates, deep nesting, wrong types,
out-of-range values, kernel-owned traits). Each must be answered or refused without an uncaught exception, each
request with exactly one well-formed reply, and the Inspector's state must stay valid after every message.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

import mmviz
from mmviz.widget.inspector import BROWSER_OWNED

REQUESTS, UPDATES = 10_000, 2_000
LONE_SURROGATE = "\ud800"


def _deep(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def _value(rng: random.Random, depth: int = 0) -> object:
    """Any JSON-like value a hostile page could send (JavaScript strings may hold lone surrogates)."""
    choices = [
        None,
        True,
        False,
        0,
        -1,
        1,
        2,
        3,
        99,
        -(10**12),
        10**30,
        0.5,
        1.0,
        float("nan"),
        "",
        "mean",
        "max",
        "heads",
        "lens",
        "projection",
        "relevancy",
        "attention",
        "compute",
        "fetch",
        LONE_SURROGATE,
        f"x{LONE_SURROGATE}y",
        "\udfff\ud800",
        "</script>",
        "a" * 5000,
    ]
    kind = rng.random()
    if kind < 0.7 or depth > 3:
        return rng.choice(choices)
    if kind < 0.8:
        return _deep(rng.choice([50, 500, 900, 2000]))
    if kind < 0.9:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["type", "what", LONE_SURROGATE, "layer"]): _value(rng, depth + 1) for _ in range(2)}


def _request(rng: random.Random) -> object:
    if rng.random() < 0.05:
        return _value(rng)  # not even a dict
    message: dict[object, object] = {"type": rng.choice(["fetch", "compute", "fetched", "other", LONE_SURROGATE, 7])}
    for key in ("request", "what", "layer", "method"):
        if rng.random() < 0.8:
            message[key] = _value(rng)
    return message


def _wire(message: dict) -> bytes:
    """What a kernel does to a reply (jupyter_client's json packer): strict JSON, UTF-8."""
    return json.dumps(message, ensure_ascii=False, allow_nan=False).encode("utf-8")


@pytest.fixture()
def hostile(small_trace, monkeypatch):
    """An Inspector without its model (compute and lens fail fast, every path still runs), replies recorded."""
    inspector = mmviz.Inspector(dataclasses.replace(small_trace, maps={}, run=None))
    sent: list[bytes] = []
    monkeypatch.setattr(inspector, "send", lambda content, buffers=None: sent.append(_wire(content)))
    monkeypatch.setattr(inspector, "_send", lambda message, buffers=None: _wire(message))  # echo updates, state
    return inspector, sent


def _assert_valid(inspector) -> None:
    trace = inspector.trace
    assert (type(inspector.layer) is str and inspector.layer == "mean") or (
        type(inspector.layer) is int and 0 <= inspector.layer < trace.num_layers
    )
    assert (type(inspector.head) is str and inspector.head == "mean") or (
        type(inspector.head) is int and 0 <= inspector.head < trace.num_heads
    )
    assert type(inspector.pinned) is int and -1 <= inspector.pinned < len(trace.tokens)
    assert inspector.method in inspector.trace.maps or inspector.method in {m["name"] for m in inspector.methods}


def _handle(inspector, data: dict) -> None:
    inspector._handle_msg({"content": {"data": data}, "buffers": []})


def _assert_nothing_uncaught(caplog) -> None:
    """ipywidgets' ``_handle_msg`` logs (and swallows) any exception that escapes the widget's handlers."""
    assert "Exception in widget method" not in caplog.text


@pytest.mark.slow
def test_every_fuzzed_request_gets_exactly_one_well_formed_reply(hostile, caplog):
    inspector, sent = hostile
    rng = random.Random(0)
    kinds = {}
    for index in range(REQUESTS):
        before = len(sent)
        message = _request(rng)
        _handle(inspector, {"method": "custom", "content": message})
        assert len(sent) == before + 1, f"request {index} ({str(message)[:120]!r}) got {len(sent) - before} replies"
        reply = json.loads(sent[-1])
        assert reply["ok"] is False or reply["type"] == "fetched"
        assert reply["type"] in {"fetched", "computed", "error"}
        kinds[reply["type"]] = kinds.get(reply["type"], 0) + 1
        _assert_valid(inspector)
    assert kinds.get("fetched", 0) > 100 and kinds.get("computed", 0) > 100, kinds  # every path was reached
    _assert_nothing_uncaught(caplog)


@pytest.mark.slow
def test_fuzzed_trait_updates_change_only_browser_owned_traits_and_only_to_valid_values(hostile, caplog):
    inspector, _ = hostile
    kernel_owned = [name for name in inspector.keys if name not in BROWSER_OWNED and not name.startswith("_")]
    before = {name: inspector.get_state(name)[name] for name in kernel_owned}
    rng = random.Random(1)
    accepted = 0
    for _ in range(UPDATES):
        names = rng.sample([*BROWSER_OWNED, *kernel_owned, "bogus"], rng.randint(1, 3))
        state = {name: _value(rng) for name in names} if rng.random() > 0.03 else _value(rng)
        if rng.random() < 0.15:  # valid updates too, also equal to the current values
            state = {"layer": rng.choice([0, 1, "mean", inspector.layer]), "head": rng.choice([0, 3, "mean"])}
        previous = (inspector.layer, inspector.head)
        _handle(inspector, {"method": "update", "state": state, "buffer_paths": []})
        accepted += (inspector.layer, inspector.head) != previous
        _assert_valid(inspector)
    assert accepted > 50, "valid updates are applied"
    _assert_nothing_uncaught(caplog)
    assert {name: inspector.get_state(name)[name] for name in kernel_owned} == before, "kernel-owned traits untouched"
    if mmviz.widget.bundle.bundle_built():
        assert "mmviz-payload" in inspector.to_html(), "the page still exports"


def test_the_reported_cases_get_one_reply_each(hostile, caplog):
    """A lone surrogate echoed back, ~900-deep nesting, a bool equal to the current layer, kernel-owned writes."""
    inspector, sent = hostile
    for message in (
        {"type": "fetch", "what": LONE_SURROGATE, "request": LONE_SURROGATE},
        {"type": "compute", "method": f"relevancy{LONE_SURROGATE}", "request": "r1"},
        {"type": "fetch", "what": _deep(900), "layer": _deep(900), "request": "r2"},
        _deep(900),
    ):
        before = len(sent)
        _handle(inspector, {"method": "custom", "content": message})
        assert len(sent) == before + 1 and json.loads(sent[-1])["ok"] is False
    assert json.loads(sent[1])["request"] == "r1", "a well-formed request id is echoed"
    inspector.layer = 0
    _handle(inspector, {"method": "update", "state": {"layer": False}, "buffer_paths": []})
    assert type(inspector.layer) is int, "False == 0 is still refused"
    maps, meta = dict(inspector.maps), dict(inspector.meta)
    for state in ({"maps": {}}, {"meta": {"extras": "x"}}, {"busy": "x", "layer": 1}, ["layer", 1], {"method": 3}):
        _handle(inspector, {"method": "update", "state": state, "buffer_paths": []})
    assert inspector.maps == maps and inspector.meta == meta and inspector.busy == "" and inspector.layer == 0
    _assert_nothing_uncaught(caplog)


def test_an_accepted_update_is_echoed_once_and_a_refused_one_is_answered_with_the_kernels_values(small_trace):
    """ipywidgets answers an accepted update with one ``echo_update`` and nothing else (the value is not sent back a
    second time as an ``update``); a refused one gets one ``update`` holding the kernel's values."""
    inspector = mmviz.Inspector(dataclasses.replace(small_trace, maps={}, run=None))
    sent: list[dict] = []
    inspector._send = lambda message, buffers=None: sent.append(json.loads(_wire(message)))
    for state in ({"layer": 1}, {"layer": "mean", "head": 2}, {"pinned": 3}, {"method": "attention"}):
        sent.clear()
        _handle(inspector, {"method": "update", "state": state, "buffer_paths": []})
        assert [message["method"] for message in sent] == ["echo_update"], (state, sent)
        assert sent[0]["state"] == state
    sent.clear()
    _handle(inspector, {"method": "update", "state": {"layer": 99}, "buffer_paths": []})
    assert [message["method"] for message in sent] == ["update"]
    assert sent[-1]["state"] == {"layer": "mean"} and inspector.layer == "mean"
