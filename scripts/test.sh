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
echo "== Python, browser and notebook tests"
MMVIZ_REQUIRE_BROWSER=1 python -m pytest "$@"
