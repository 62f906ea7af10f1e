"""The payloads the JS tests run on (tests/fixtures/payloads_v1.json) are what the Inspector sends today."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _generator():
    spec = importlib.util.spec_from_file_location("make_payload_fixtures", FIXTURES / "make_payload_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _envelope(state: Any, path: list) -> dict:
    for key in path[:-1]:
        state = state[key]
    return state


def _split(payload: Any) -> tuple[Any, list[tuple[str, str, np.ndarray]]]:
    """A payload with every buffer's bytes taken out, and the buffers as ``(section path, kind, values)``."""
    payload = copy.deepcopy(payload)
    found = []

    def take(where: str, state: Any, paths: list, buffers: list) -> None:
        for index, path in enumerate(paths):
            raw = base64.b64decode(buffers[index] if isinstance(buffers[index], str) else buffers[index]["data"])
            envelope = _envelope(state, path)
            dtype = envelope.get("dtype") if isinstance(envelope, dict) else None
            kind = "float32" if path[-1] in ("scale", "offset") or dtype == "float32" else str(dtype)
            values = np.frombuffer(raw, np.float32 if kind == "float32" else np.uint8)
            found.append((f"{where} {path}", kind, values))
            if isinstance(buffers[index], str):
                buffers[index] = ""
            else:
                buffers[index]["data"] = ""

    def take_state(where: str, entry: dict) -> None:
        take(where, entry["state"], [b["path"] for b in entry["buffers"]], entry["buffers"])

    take_state("widget", payload["widget"])
    for key, reply in payload["fetched"].items():
        take(f"fetched {key}", reply["content"]["payload"], reply["content"]["buffer_paths"], reply["buffers"])
    for key, reply in payload["computed"].items():
        take_state(f"computed {key}", reply["traits"])
    return payload, found


def _differences(old: Any, new: Any, path: str = "") -> Any:
    """Paths where two JSON values differ (numbers within float32 rounding count as equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old.keys() | new.keys():
            yield from _differences(old.get(key), new.get(key), f"{path}/{key}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _differences(a, b, f"{path}[{index}]")
    elif isinstance(old, float) and isinstance(new, float):
        if not np.isclose(old, new, rtol=1e-5, atol=1e-9):
            yield path
    elif old != new or type(old) is not type(new):
        yield path


@pytest.mark.slow
def test_fixture_is_what_the_inspector_sends_today():
    """A payload change that forgets `python tests/fixtures/make_payload_fixtures.py` fails here (and the JS tests
    would otherwise keep passing on stale payloads). Everything but the arrays' bytes must be identical; the arrays
    may differ by what another CPU's float32 kernels round differently (a few ULPs; one quantisation step)."""
    committed, committed_arrays = _split(json.loads((FIXTURES / "payloads_v1.json").read_text()))
    regenerated, regenerated_arrays = _split(json.loads(_generator().render()))
    changed = list(_differences(committed, regenerated))
    assert not changed, f"{changed[:5]} changed: regenerate payloads_v1.json"
    assert [(where, kind, len(v)) for where, kind, v in committed_arrays] == [
        (where, kind, len(v)) for where, kind, v in regenerated_arrays
    ], "buffers changed: regenerate payloads_v1.json"
    for (where, kind, old), (_, _, new) in zip(committed_arrays, regenerated_arrays, strict=True):
        if kind == "float32":
            scale = float(np.abs(old).max(initial=0.0))
            np.testing.assert_allclose(new, old, rtol=1e-4, atol=1e-5 * scale + 1e-12, err_msg=where)
        else:
            step = np.abs(new.astype(np.int16) - old.astype(np.int16))
            assert step.max(initial=0) <= 1 and (step > 0).mean() < 0.02, f"{where}: regenerate payloads_v1.json"


def test_fixture_holds_every_payload_the_browser_parses():
    fixture = json.loads((FIXTURES / "payloads_v1.json").read_text())
    state = fixture["widget"]["state"]
    assert {"token_layout", "attention_mean", "head_stats", "methods", "maps", "tokens", "images", "meta"} <= set(state)
    heads = {"heads:mean", *(f"heads:{layer}" for layer in range(state["meta"]["n_layers"]))}
    assert set(fixture["fetched"]) == {*heads, "lens", "projection"}
    replies = [*fixture["fetched"].values(), *fixture["computed"].values()]
    assert all(reply["content"]["ok"] is True for reply in replies)
    assert (FIXTURES / "payloads_v1.json").stat().st_size < 300_000, "keep the committed fixture small"
