#!/usr/bin/env bash
# The whole GPU run in one command, on a bare CUDA machine with no network: install mmviz from .gpu-wheels/ into a
# venv over the machine's own torch and transformers, run the GPU suite, run the GPU benchmark. About 8 minutes at
# most (each step has its own timeout); logs and results go to $OUT (default ./gpu-results).
#
#   here:  bash scripts/gpu-wheels.sh                 # once, with PyPI: the wheels the machine lacks (about 20 MB)
#   there: bash scripts/gpu-check.sh                  # e.g. the device tool's run(command="bash scripts/gpu-check.sh",
#                                                     #      carry=[".gpu-wheels"], timeout_s=540)
#
# Steps, each logged to $OUT and each with a timeout (seconds, overridable by the variables in brackets):
#   1. environment: nvidia-smi, python3, torch, transformers                                   -> env.txt
#   2. venv with --system-site-packages (+ the interpreter's own site dirs, for a python3 that is itself a venv)
#      and `pip install --no-index --find-links .gpu-wheels mmviz ...`; if resolution fails, every wheel with
#      --no-deps and `pip check` logged                                       [INSTALL_TIMEOUT=60] -> install.log
#   3. pytest tests/gpu -q                                          [TEST_TIMEOUT=170] -> tests.log, junit.xml
#   4. python benchmarks/gpu.py --out $OUT/gpu.json (it skips what is left past --budget)
#                                                                    [BENCH_TIMEOUT=210] -> bench.log, gpu.json
#   5. summary: every step's exit status (and whether CUDA was there), the tests' result line, the benchmark's
#      PASS/FAIL lines                                                                                -> summary.txt
# The benchmark runs even when the tests fail. The exit status is 0 only if every step succeeded: a failed install,
# no CUDA device, failed or timed-out tests, or a failed benchmark each make it non-zero; summary.txt names which.
#
# The tests and the benchmark import the checkout's mmviz (PYTHONPATH), the code of this commit; the installed
# wheel supplies its dependencies and, where the checkout has no built bundle, mmviz/static.
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-results}
WHEELS=${WHEELS:-$ROOT/.gpu-wheels}
VENV=${VENV:-/tmp/mmviz-gpu-venv}
PYTHON=${PYTHON:-python3}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-60}
TEST_TIMEOUT=${TEST_TIMEOUT:-170}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-210}
mkdir -p "$OUT"
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_REQUIRE_VIRTUALENV  # only .gpu-wheels, nothing else
export PIP_CONFIG_FILE=/dev/null PYTHONUNBUFFERED=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded: every model is built from a config
started=$(date +%s)
declare -A STATUS=()

say() { printf '== %s (%ss)\n' "$*" "$(($(date +%s) - started))"; }

# -- step 2's work: a function, run under its timeout by a second invocation of this script --------------------------
install() {
  set -e
  if [[ ! -d "$WHEELS" ]] || ! compgen -G "$WHEELS/mmviz-*.whl" >/dev/null; then
    echo "no wheels in $WHEELS: run \`bash scripts/gpu-wheels.sh\` on a machine with PyPI and carry .gpu-wheels"
    return 1
  fi
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv --system-site-packages "$VENV"; then
    echo "venv with pip failed; trying --without-pip (the interpreter's pip installs into it)"
    rm -rf "$VENV"
    "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
  fi
  # A python3 that is itself a venv (/opt/torch/.venv on the GPU image) gives its BASE interpreter's site-packages to
  # --system-site-packages, not its own (where torch is): add its own site dirs behind the venv's, as site dirs (so
  # that their .pth files are read too).
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PYTHON" - > "$site/_mmviz_gpu_base.pth" <<'EOF'
import site
for path in [*site.getsitepackages(), site.getusersitepackages()]:
    print(f"import site; site.addsitedir({path!r})")
EOF
  echo "venv $VENV over the site dirs of $PYTHON:"
  cat "$site/_mmviz_gpu_base.pth"
  if "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    pip=("$VENV/bin/python" -m pip)
  else
    pip=("$PYTHON" -m pip --python "$VENV/bin/python")
  fi
  options=(install --no-index --no-cache-dir --disable-pip-version-check --find-links "$WHEELS")
  if ! "${pip[@]}" "${options[@]}" mmviz captum anywidget ipywidgets accelerate pytest; then
    echo "!! dependency resolution failed; installing every wheel with --no-deps (see pip check below)"
    "${pip[@]}" "${options[@]}" --no-deps "$WHEELS"/*.whl
  fi
  "${pip[@]}" check || echo "(pip check found the unmet requirements above: logged, not fatal)"
  # from /, so that mmviz is the installed wheel, not the checkout
  (cd / && "$VENV/bin/python" - <<'EOF'
import importlib
for name in ("torch", "transformers", "accelerate", "captum", "anywidget", "ipywidgets", "pytest", "mmviz"):
    module = importlib.import_module(name)
    print(f"{name:13s} {getattr(module, '__version__', '?'):24s} {module.__file__}")
EOF
  )
  installed=$(cd / && "$VENV/bin/python" -c 'import mmviz, pathlib; print(pathlib.Path(mmviz.__file__).parent)')
  if [[ ! -f "$ROOT/mmviz/static/widget.js" && -f "$installed/static/widget.js" ]]; then
    mkdir -p "$ROOT/mmviz/static"
    cp "$installed"/static/widget.* "$ROOT/mmviz/static/"
    echo "copied the JS bundle from the installed wheel into the checkout's mmviz/static"
  fi
}
if [[ "${1:-}" == "--install" ]]; then  # the install step, run under its timeout by the line below
  install
  exit
fi

# -- 1. environment ------------------------------------------------------------------------------------------------
say "environment" | tee "$OUT/env.txt"
{
  command -v nvidia-smi >/dev/null && timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout 30 "$PYTHON" - <<'EOF' 2>&1
import platform, sys
print("python", platform.python_version(), sys.executable)
try:
    import torch, transformers
    cuda = torch.cuda.is_available()
    print("torch", torch.__version__, "| transformers", transformers.__version__, "| cuda", cuda,
          torch.cuda.get_device_name(0) if cuda else "")
except Exception as error:  # reported, the install step says what is missing
    print("torch/transformers not importable:", error)
EOF
} 2>&1 | tee -a "$OUT/env.txt"

# -- 2. venv and install ------------------------------------------------------------------------------------------
say "venv and install" | tee "$OUT/install.log"
timeout "$INSTALL_TIMEOUT" bash "$SELF" --install >> "$OUT/install.log" 2>&1
STATUS[install]=$?
tail -n 12 "$OUT/install.log"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || PY=$PYTHON
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
STATUS[cuda]=$?

# -- 3. the GPU suite ----------------------------------------------------------------------------------------------
say "pytest tests/gpu" | tee "$OUT/tests.log"
per_test=()
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=150)
timeout "$TEST_TIMEOUT" "$PY" -m pytest tests/gpu -q -p no:cacheprovider --durations=10 \
  --junitxml="$OUT/junit.xml" "${per_test[@]}" 2>&1 | tee -a "$OUT/tests.log"
STATUS[tests]=${PIPESTATUS[0]}

# -- 4. the GPU benchmark ------------------------------------------------------------------------------------------
say "benchmarks/gpu.py" | tee "$OUT/bench.log"
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/gpu.py --out "$OUT/gpu.json" --budget $((BENCH_TIMEOUT - 40)) 2>&1 |
  tee -a "$OUT/bench.log"
STATUS[benchmark]=${PIPESTATUS[0]}

# -- 5. summary ----------------------------------------------------------------------------------------------------
{
  say "summary"
  failed=0
  for step in install cuda tests benchmark; do
    code=${STATUS[$step]}
    case $step:$code in
      *:0) verdict="ok" ;;
      cuda:*) verdict="NO CUDA DEVICE: the tests skipped, the benchmark measured nothing at 7B" ;;
      *:124 | *:137) verdict="TIMED OUT" ;;
      *) verdict="FAILED" ;;
    esac
    [[ $code -ne 0 ]] && failed=1
    printf '%-10s exit %3d  %s\n' "$step" "$code" "$verdict"
  done
  echo "tests:     $(grep -E '[0-9]+ (passed|failed|skipped|error)' "$OUT/tests.log" | tail -n 1)"
  grep -E '^(PASS|FAIL|INFO|SKIP):' "$OUT/bench.log" || echo "benchmark: no verdict lines (see bench.log)"
  echo "results in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f ')"
  exit "$failed"
} 2>&1 | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
