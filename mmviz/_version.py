"""The package version: from the installed metadata, or from ``js/package.json`` in a source checkout."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _read() -> str:
    package_json = Path(__file__).resolve().parent.parent / "js" / "package.json"
    if package_json.is_file():  # a source checkout: the single source of the version
        return str(json.loads(package_json.read_text())["version"])
    try:
        return version("mmviz")
    except PackageNotFoundError:  # pragma: no cover - neither installed nor a checkout
        return "0+unknown"


__version__ = _read()
