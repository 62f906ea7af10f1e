"""Regenerate the README's compatibility matrix from the family test suite.

Run: ``python scripts/compat_matrix.py`` — runs ``tests/families/test_families.py`` (the same checks for every
family's tiny model with its real processor) and ``tests/families/test_measured_layout.py`` (the adapter's boxes
against the layout the model itself reads; ⚠️ = a known mismatch, marked xfail with its reason), then rewrites the
table between the ``compat`` markers in README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- compat:start -->", "<!-- compat:end -->"
COLUMNS = {
    "trace_end_to_end": "trace",
    "layout_matches_processor": "layout = processor (wide, tall, 10×10)",
    "multi_image": "multi-image",
    "widget_payload": "widget",
    "model_left_untouched": "model untouched",
    "gradient_methods": "gradient methods",
    "trace_file_round_trip": "trace file (save → load, no model)",
    "adapter_boxes_are_what_tokens_read": "layout verified by measurement (≤ 1.5 px)",
}
MARK = {"passed": "✅", "failed": "❌", "skipped": "—", "xfailed": "⚠️"}


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.families.registry import cases

    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "compat.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/families/test_families.py",
                "tests/families/test_measured_layout.py",
            ],
            cwd=ROOT,
            env={**os.environ, "MMVIZ_COMPAT_JSON": str(results)},
            check=False,
        )
        outcomes = json.loads(results.read_text())
    lines = [
        "| family (`model_type`) | kind | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    from mmviz.adapters import supported_families

    names = supported_families()
    for case in cases():
        row = outcomes.get(case.id, {})
        marks = [MARK.get(row.get(test, "failed"), "❌") for test in COLUMNS]
        name = names.get(case.id, case.id) + (" (measured)" if case.measured else "")  # no adapter: GenericAdapter
        lines.append(f"| {name} (`{case.id}`) | {case.kind} | " + " | ".join(marks) + " |")
    table = "\n".join(lines)
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text:
        raise SystemExit(f"README.md has no {START} … {END} markers")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    readme.write_text(f"{before}{START}\n{table}\n{END}{after}", encoding="utf-8")
    print(table)
    return 0 if all(v != "failed" for row in outcomes.values() for v in row.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
