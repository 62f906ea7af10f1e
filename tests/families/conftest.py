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


def pytest_runtest_logreport(report) -> None:  # type: ignore[no-untyped-def]
    match = re.search(r"test_families\.py::test_(\w+)\[(.+)\]$", report.nodeid)
    if not match or (report.when != "call" and report.outcome == "passed"):
        return
    test, family = match.group(1), _family(match.group(2))
    if family is None:
        return
    outcome = "skipped" if report.skipped else report.outcome
    row = _OUTCOMES.setdefault(family, {})
    if row.get(test) != "failed":  # parametrised variants: any failure fails the cell
        row[test] = outcome


def pytest_sessionfinish(session, exitstatus) -> None:  # type: ignore[no-untyped-def]
    path = os.environ.get("MMVIZ_COMPAT_JSON")
    if path and _OUTCOMES:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_OUTCOMES, handle, indent=1, sort_keys=True)
