#!/usr/bin/env bash
# Download into .gpu-wheels/ every wheel that mmviz, tests/gpu and benchmarks/gpu.py need on the bare GPU machine
# and that its image lacks, plus a wheel of mmviz itself (with the JS bundle); then check that the set is complete.
#
#   bash scripts/gpu-wheels.sh          # the default set (about 16 MB): what the GPU image lacks
#   bash scripts/gpu-wheels.sh --all    # also what the image already has (for another bare CUDA machine)
#
# Run it HERE (it needs PyPI and the .venv of `bash scripts/setup.sh`); the GPU machine reaches no registry. Then
# `bash scripts/gpu-check.sh` there installs from .gpu-wheels/ with `pip install --no-index --find-links`.
#
# The GPU machine (one H200; see .library's device notes) runs Python 3.12 (manylinux x86_64) with torch 2.11 and
# transformers 5.17 and therefore transformers' own dependencies; its image also holds pillow, pyarrow, matplotlib
# (with contourpy, cycler, fonttools, kiwisolver, pyparsing, python-dateutil), accelerate, psutil, pygments,
# typing-extensions, pytest, pluggy and iniconfig. What it lacks is the notebook-widget stack (anywidget, ipywidgets
# and IPython with their pure-Python dependencies), psygnal, captum and mmviz.
#
# Every wheel is downloaded with --no-deps, by name and pinned to the version this checkout's .venv runs (so the GPU
# run uses what the CPU tests use), for CPython 3.12 on manylinux x86_64: nothing can pull torch or nvidia-*.
#
# Size decisions (the whole set must stay within 60 MB, and the tree plus wheels within the 64 MiB a device call
# carries):
# - pyarrow (55 MB for cp312: 26.0.1's manylinux_2_28 wheel) is never downloaded: the image has it, and mmviz
#   imports it only in mmviz.sweeps and the SweepWidget (Parquet tables); trace, inspect, the methods, trace files,
#   tests/gpu and benchmarks/gpu.py run without it. `--all` leaves it out too; gpu-check.sh then falls back to
#   installing with --no-deps.
# - matplotlib (about 9 MB, with fonttools 5 MB) is a hard import of captum (captum.attr imports
#   matplotlib.colors), so it cannot be left out on a machine without it: the image has it, `--all` downloads it.
# - psutil, pygments and typing-extensions are in the image but their versions are not known here; they are small
#   and downloaded anyway so that IPython's floors (psutil >= 7, pygments >= 2.14) are met either way (pip keeps
#   the image's copy when it already satisfies them).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.gpu-wheels
LIMIT_MB=60
PYTHON=.venv/bin/python
ALL=0
[[ "${1:-}" == "--all" ]] && ALL=1

# What the GPU image lacks (the widget stack, captum) plus the small floors above.
NEEDED=(
  anywidget ipywidgets traitlets comm widgetsnbextension jupyterlab_widgets psygnal
  ipython ipython_pygments_lexers jedi parso matplotlib-inline pexpect ptyprocess prompt_toolkit wcwidth
  stack_data executing asttokens pure_eval
  captum
  psutil pygments typing_extensions
)
# In the image already; --all downloads them for a machine without them (pyarrow never: see above).
IMAGE_HAS=(
  pillow accelerate pytest pluggy iniconfig
  matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil tzdata
)

if [[ ! -x "$PYTHON" ]]; then
  echo "no $PYTHON: run \`bash scripts/setup.sh\` first (the JS bundle, and the venv the versions come from)" >&2
  exit 1
fi
if [[ ! -f mmviz/static/widget.js ]]; then
  echo "mmviz/static/widget.js is missing: run \`bash scripts/setup.sh\` (it builds the JS bundle) first" >&2
  exit 1
fi

version_of() { "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

rm -rf "$DEST"
mkdir -p "$DEST"
packages=("${NEEDED[@]}")
(( ALL )) && packages+=("${IMAGE_HAS[@]}")
pins=()
for name in "${packages[@]}"; do
  pins+=("$name==$(version_of "$name")")
done
echo "== downloading ${#pins[@]} wheels for CPython 3.12, manylinux x86_64 (--no-deps)"
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
quiet_pip() {  # pip, without the warnings about index locations this machine's pip configuration names
  "$PYTHON" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
quiet_pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$DEST" "${pins[@]}"

echo "== building the mmviz wheel (JS bundle included)"
quiet_pip wheel -q --no-deps --no-build-isolation -w "$DEST" .
mmviz_wheel=$(ls "$DEST"/mmviz-*.whl)
"$PYTHON" - "$mmviz_wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for wanted in ("mmviz/static/widget.js", "mmviz/static/widget.css", "mmviz/zoo/weights/shapes-vlm/model.safetensors"):
    if wanted not in names:
        sys.exit(f"{sys.argv[1]} lacks {wanted}")
print(f"{sys.argv[1]}: {len(names)} files, bundle and zoo weights included")
EOF

echo "== checking that the set is complete for the GPU image"
"$PYTHON" - "$DEST" <<'EOF'
"""Walk the requirements of mmviz, accelerate and pytest through the downloaded wheels; every requirement must be met
by a wheel here (at a version its specifier accepts) or by the GPU image (at the version it is known to have)."""
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

# The GPU image's packages (KINDS.md's list), with the versions known for some of them.
IMAGE = {canonicalize_name(n): None for n in """
accelerate filelock fsspec huggingface-hub jinja2 markupsafe matplotlib contourpy cycler fonttools kiwisolver
numpy packaging pillow pluggy iniconfig psutil pyarrow pygments pyparsing pytest python-dateutil pyyaml regex
requests safetensors six sympy tokenizers torch torchvision tqdm transformers triton typer typing-extensions
hypothesis setuptools networkx mpmath certifi idna urllib3 charset-normalizer rich shellingham click
""".split()}
IMAGE.update({"torch": "2.11.0", "transformers": "5.17.0", "numpy": "2.5.2", "safetensors": "0.8.0",
              "tokenizers": "0.23.2", "huggingface-hub": "1.33.0", "accelerate": "1.15.0"})
ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}

wheels = {}
for path in Path(sys.argv[1]).glob("*.whl"):
    name, version, _, _ = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(meta).decode())
    wheels[canonicalize_name(name)] = (str(version), message.get_all("Requires-Dist") or [])

problems, seen = [], set()
pending = [("(root)", "mmviz"), ("(root)", "accelerate"), ("(root)", "pytest")]
while pending:
    parent, text = pending.pop()
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate(ENVIRONMENT):
        continue
    name = canonicalize_name(requirement.name)
    if name in wheels:
        version, requires = wheels[name]
        if version not in requirement.specifier:
            problems.append(f"{parent} needs {requirement}, the wheel here is {version}")
        if name not in seen:
            seen.add(name)
            pending.extend((name, r) for r in requires)
    elif name in IMAGE:
        known = IMAGE[name]
        if known is not None and known not in requirement.specifier:
            problems.append(f"{parent} needs {requirement}, the GPU image has {known}")
    else:
        problems.append(f"{parent} needs {requirement}: neither a wheel here nor in the GPU image")
unused = sorted(set(wheels) - seen - {"mmviz"})
if unused:
    print(f"wheels no requirement reaches (kept, harmless): {', '.join(unused)}")
if problems:
    sys.exit("incomplete wheel set:\n  " + "\n  ".join(problems))
print(f"complete: {len(wheels)} wheels; everything else mmviz, accelerate and pytest need is in the GPU image")
EOF

total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
count=$(find "$DEST" -name '*.whl' | wc -l)
for wheel in "$DEST"/*.whl; do
  printf '  %8.2f MB  %s\n' "$(awk -v b="$(stat -c %s "$wheel")" 'BEGIN {print b / 1e6}')" "${wheel##*/}"
done
megabytes=$(awk -v b="$total" 'BEGIN {printf "%.1f", b / 1e6}')
printf '== %d wheels, %s MB in all (limit %d MB)\n' "$count" "$megabytes" "$LIMIT_MB"
if (( total > LIMIT_MB * 1000000 )); then
  echo "over the ${LIMIT_MB} MB limit" >&2
  exit 1
fi
