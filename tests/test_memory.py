"""The capture estimate bounds memory: what ``mmviz.trace`` adds to the peak resident memory of the process, above
the model's own work on the same sequence, is at most ``CapturePlan.estimate`` (+ a small slack).

Measured in a fresh process by ``benchmarks/memory.py --json`` (peak RSS sampled every millisecond and checked
against the kernel's high-water mark), so that nothing else in the test session shows up in the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "memory.py"
SLACK = 16 * 2**20  # benchmarks/memory.py: SLACK


@pytest.fixture(scope="module")
def measured_rows() -> list[dict]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--json"], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_peak_a_trace_adds_is_at_most_its_estimate(measured_rows):
    assert len(measured_rows) == 4
    for row in measured_rows:
        added = row["peak"] - row["own"]
        assert added <= row["estimate"] + SLACK, (
            f"{row['case']}: trace peaked {added / 1e6:.1f} MB above the model's own work, estimate "
            f"{row['estimate'] / 1e6:.1f} MB ({row['parts']})"
        )


@pytest.mark.slow
def test_the_measurement_sees_what_the_trace_keeps(measured_rows):
    """Not vacuous: every case keeps more than the slack, and the measured peak holds all of it (the trace is alive
    when the peak is read), so a second copy of the rows would break the bound above."""
    for row in measured_rows:
        assert row["kept"] > 2 * SLACK, row["case"]
        assert row["peak"] >= 0.95 * row["kept"], row["case"]
        assert row["estimate"] >= row["kept"]
