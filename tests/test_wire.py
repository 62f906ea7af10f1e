"""The binary envelope: exact layout, quantisation error bound, and the fixture both test suites decode."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmviz import wire

FIXTURES = Path(__file__).parent / "fixtures"


def _from_fixture(envelope: dict) -> dict:
    return {k: base64.b64decode(v) if k in ("data", "scale", "offset") else v for k, v in envelope.items()}


def test_fixture_cases_decode_to_their_expected_values():
    cases = json.loads((FIXTURES / "envelope_v1.json").read_text())["cases"]
    assert len(cases) >= 5
    for case in cases:
        decoded = wire.decode(_from_fixture(case["envelope"]))
        assert decoded.shape == tuple(case["envelope"]["shape"]), case["name"]
        np.testing.assert_allclose(decoded.ravel(), case["expected"], atol=case["tolerance"], err_msg=case["name"])


def test_fixture_is_what_the_generator_writes_today():
    """If the encoder changes, the shared fixture (and so the JS test) must be regenerated with it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURES / "make_envelope_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (FIXTURES / "envelope_v1.json").read_text() == module.render()


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 40)),
        elements=st.floats(-1e3, 1e3, width=32),
    )
)
def test_uint8_error_is_at_most_half_a_step_of_each_rows_range(values):
    envelope = wire.encode(values)
    decoded = wire.decode(envelope)
    rows = values.reshape(-1, values.shape[-1]).astype(np.float64)
    step = (rows.max(axis=1) - rows.min(axis=1)) / 255
    error = np.abs(decoded.reshape(rows.shape) - rows).max(axis=1)
    assert np.all(error <= step / 2 + 1e-6 * (1 + np.abs(rows).max(axis=1)))
    assert len(envelope["data"]) == values.size  # one byte per value
    assert len(envelope["scale"]) == len(envelope["offset"]) == 4 * rows.shape[0]


def test_row_extremes_survive_exactly_and_constant_rows_decode_to_their_value():
    values = np.array([[0.1, 0.7, 0.3], [0.25, 0.25, 0.25]], np.float32)
    decoded = wire.decode(wire.encode(values))
    assert decoded[0].min() == pytest.approx(0.1, abs=1e-7) and decoded[0].max() == pytest.approx(0.7, abs=1e-6)
    np.testing.assert_array_equal(decoded[1], values[1])


@pytest.mark.parametrize("dtype, tolerance", [("float16", 1e-3), ("float32", 0.0)])
def test_float_envelopes_carry_plain_little_endian_values(dtype, tolerance):
    values = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    envelope = wire.encode(values, dtype=dtype)
    assert "scale" not in envelope
    np.testing.assert_allclose(wire.decode(envelope), values, atol=tolerance)
    assert np.frombuffer(envelope["data"], dtype="<f2" if dtype == "float16" else "<f4").size == 12


def test_bad_envelopes_are_rejected_with_a_reason():
    envelope = wire.encode(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="version"):
        wire.decode({**envelope, "v": 2})
    with pytest.raises(ValueError, match="holds 5 values"):
        wire.decode({**envelope, "data": envelope["data"][:5]})
    with pytest.raises(ValueError, match="dtype"):
        wire.encode(np.ones(3), dtype="int8")
    with pytest.raises(ValueError, match="non-finite"):
        wire.encode(np.array([1.0, np.nan]))
