#!/usr/bin/env bash
# Prepare a machine to run mmviz from this checkout: Debian's chromium (with --browser), a virtual
# environment in .venv with the CPU build of torch, mmviz installed editable with its test extras,
# and the widget's JS bundle built. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--browser" ]] && ! command -v chromium >/dev/null; then
  echo "== installing Debian's chromium (for the browser tests)"
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first and pinned: an unpinned torch would pull whatever build the index has. torchvision is
# needed by the processors that have a video slot (Qwen2-VL, LLaVA-OneVision, SmolVLM); the registry's
# torchvision only imports beside torch 2.14.1, so both are pinned together.
python -m pip install -q torch==2.14.1 torchvision==0.29.1

echo "== building the JS bundle"
npm --prefix js ci --no-audit --no-fund --loglevel=error
npm --prefix js run build --silent

echo "== installing mmviz (editable, with test extras)"
python -m pip install -q -e ".[test,plots,ray]"
python -c "import mmviz.widget.bundle as b; assert b.bundle_built(), 'JS bundle missing after the build'"
