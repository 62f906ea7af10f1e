"""The fake-accelerator suite (``tests/fake_device/check_methods.py``), in a child interpreter.

Registering the fake device is permanent for a process and makes ``torch.accelerator`` report it, which would
change how accelerate and transformers place models in every later test; a child pytest keeps that away.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_method_on_a_fake_accelerator_and_a_split_model():
    suite = ROOT / "tests" / "fake_device" / "check_methods.py"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
