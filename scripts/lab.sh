#!/usr/bin/env bash
# The main job: set up (once) and open the quickstart notebook in JupyterLab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
exec jupyter lab examples/quickstart.ipynb "$@"
