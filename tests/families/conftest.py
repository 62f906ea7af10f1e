"""Records each family test's outcome when ``MMVIZ_COMPAT_JSON`` names a file (``scripts/compat_matrix.py``)."""

from __future__ import annotations

import json
import os
import re

from tests.families.registry import cases

_OUTCOMES: dict[str, dict[str, str]] = {}


def _family(params: str) -> str | None:
    for case in cases():
        if params == case.id or params.startswith(case.id + "-") or params.endswith("-" + case.id):
            return case.id
    return None


MEASURED = "adapter_boxes_are_what_tokens_read"
"""The matrix's "layout verified by measurement" cell: the measured-layout test over the image shapes and, where
the family takes several images, the multi-image one (``tests/families/test_measured_layout.py``)."""


def pytest_runtest_logreport(report) -> None:  # type: ignore[no-untyped-def]
    match = re.search(r"(test_families|test_measured_layout)\.py::test_(\w+)\[(.+)\]$", report.nodeid)
    if not match or (report.when != "call" and report.outcome == "passed"):
        return
    test, family = match.group(2), _family(match.group(3))
    if family is None:
        return
    if match.group(1) == "test_measured_layout":
        test = MEASURED
    # xfailed: a known mismatch, named in the test's xfail reason
    outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped" if report.skipped else report.outcome
    row = _OUTCOMES.setdefault(family, {})
    rank = ["passed", "skipped", "xfailed", "failed"]  # parametrised variants: the worst outcome fills the cell
    if test not in row or rank.index(outcome) > rank.index(row[test]):
        row[test] = outcome


def pytest_sessionfinish(session, exitstatus) -> None:  # type: ignore[no-untyped-def]
    path = os.environ.get("MMVIZ_COMPAT_JSON")
    if path and _OUTCOMES:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_OUTCOMES, handle, indent=1, sort_keys=True)
