#!/usr/bin/env bash
# Run ALL of mmviz's tests on a fresh machine: lint, JS type check and unit tests (Vitest), then every
# Python test, including the real-browser tests (headless Debian chromium), the JupyterLab smoke test and
# the quickstart notebook. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
source .venv/bin/activate

echo "== lint"
ruff check mmviz tests benchmarks examples scripts
echo "== JS: type check and unit tests"
npm --prefix js run typecheck --silent
npm --prefix js test --silent
echo "== the wheel ships the JS bundle"
wheel_dir=$(mktemp -d)
python -m pip wheel . --no-deps --no-build-isolation -q -w "$wheel_dir" >/dev/null
python - "$wheel_dir" <<'PY'
import sys, zipfile, pathlib
(wheel,) = pathlib.Path(sys.argv[1]).glob("mmviz-*.whl")
names = zipfile.ZipFile(wheel).namelist()
assert "mmviz/static/widget.js" in names and "mmviz/static/widget.css" in names, names
print(f"{wheel.name}: bundle included")
PY
rm -rf "$wheel_dir"
echo "== Python, browser and notebook tests"
MMVIZ_REQUIRE_BROWSER=1 python -m pytest "$@"
