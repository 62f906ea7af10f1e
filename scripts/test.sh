#!/usr/bin/env bash
# Run ALL of mmviz's tests on a fresh machine: lint, JS type check and unit tests (Vitest), then every
# Python test, including the real-browser tests (headless Debian chromium), the JupyterLab smoke test and
# the quickstart notebook. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
source .venv/bin/activate

echo "== lint and the architecture contract"
ruff check mmviz tests benchmarks examples scripts
lint-imports --no-cache
echo "== JS: type check and unit tests"
npm --prefix js run typecheck --silent
npm --prefix js test --silent
echo "== the wheel ships the JS bundle and the zoo's trained models"
wheel_dir=$(mktemp -d)
python -m pip wheel . --no-deps --no-build-isolation -q -w "$wheel_dir" >/dev/null
python - "$wheel_dir" <<'PY'
import sys, zipfile, pathlib
(wheel,) = pathlib.Path(sys.argv[1]).glob("mmviz-*.whl")
names = zipfile.ZipFile(wheel).namelist()
shipped = ["mmviz/static/widget.js", "mmviz/static/widget.css"] + [
    f"mmviz/zoo/weights/{name}/{file}"
    for name in ("shapes-vlm", "shapes-clip")
    for file in ("config.json", "model.safetensors", "processor_config.json", "training.json")
]
missing = [name for name in shipped if name not in names]
assert not missing, f"the wheel lacks {missing}"
print(f"{wheel.name}: bundle and trained models included")
PY
rm -rf "$wheel_dir"
echo "== Python, browser and notebook tests"
MMVIZ_REQUIRE_BROWSER=1 python -m pytest "$@"
