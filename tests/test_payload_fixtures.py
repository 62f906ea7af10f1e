"""The payloads the JS tests run on (tests/fixtures/payloads_v1.json) are what the Inspector sends today."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _generator():
    spec = importlib.util.spec_from_file_location("make_payload_fixtures", FIXTURES / "make_payload_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fixture_is_what_the_inspector_sends_today():
    """A payload change that forgets `python tests/fixtures/make_payload_fixtures.py` fails here (and the JS tests
    would otherwise keep passing on stale payloads)."""
    committed = json.loads((FIXTURES / "payloads_v1.json").read_text())
    regenerated = json.loads(_generator().render())
    for section in ("widget", "fetched", "computed"):
        assert committed[section] == regenerated[section], f"{section} changed: regenerate payloads_v1.json"
    assert committed == regenerated


def test_fixture_holds_every_payload_the_browser_parses():
    fixture = json.loads((FIXTURES / "payloads_v1.json").read_text())
    state = fixture["widget"]["state"]
    assert {"token_layout", "attention_mean", "head_stats", "methods", "maps", "tokens", "images", "meta"} <= set(state)
    heads = {"heads:mean", *(f"heads:{layer}" for layer in range(state["meta"]["n_layers"]))}
    assert set(fixture["fetched"]) == {*heads, "lens", "projection"}
    replies = [*fixture["fetched"].values(), *fixture["computed"].values()]
    assert all(reply["content"]["ok"] is True for reply in replies)
    assert (FIXTURES / "payloads_v1.json").stat().st_size < 300_000, "keep the committed fixture small"
