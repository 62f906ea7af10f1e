"""The benchmark scripts keep running (their figures go in the README; no timing is asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args",
    [
        ("wire.py", []),
        ("capture.py", ["--quick"]),
        ("methods.py", ["--quick"]),
        ("widget.py", ["--quick"]),
        ("trace_file.py", ["--quick"]),
        ("sweep.py", ["--quick"]),
        ("gpu.py", ["--quick"]),  # on the CPU here: tiny shapes, the CUDA-only measures reported as skipped
        ("memory.py", []),
        ("layout.py", ["--quick"]),
    ],
)
def test_benchmark_runs_and_prints_its_table(script, args):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "|" in result.stdout or "payload" in result.stdout, result.stdout[-2000:]
