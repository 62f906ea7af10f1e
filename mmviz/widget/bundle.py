"""Locate the built front end; fall back to a module that says how to build it, so ``import mmviz`` never fails."""

from __future__ import annotations

import warnings
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"
BUNDLE = STATIC / "widget.js"
STYLES = STATIC / "widget.css"

BUILD_HINT = "run `npm --prefix js ci && npm --prefix js run build` in the mmviz checkout (or `pip install -e .`)"

FALLBACK_ESM = f"""
export default {{
  render({{ el }}) {{
    const box = document.createElement("div");
    box.className = "mmviz-missing-bundle";
    box.style.cssText = "padding:8px;border:1px solid #c33;color:#c33;font-family:sans-serif";
    box.textContent = "mmviz: the widget's JavaScript bundle was not built; {BUILD_HINT}, then restart the kernel.";
    el.appendChild(box);
  }}
}};
"""


def bundle_built() -> bool:
    """Whether ``mmviz/static/widget.js`` exists."""
    return BUNDLE.is_file()


def esm() -> Path | str:
    """The module anywidget loads: the bundle's path, or the explanatory fallback."""
    return BUNDLE if bundle_built() else FALLBACK_ESM


def css() -> Path | str:
    return STYLES if STYLES.is_file() else ""


def warn_if_missing() -> None:
    if not bundle_built():
        warnings.warn(
            f"mmviz's JavaScript bundle is missing, so the widget shows only a notice; {BUILD_HINT}", stacklevel=3
        )


def read_bundle() -> tuple[str, str]:
    """The bundle's JavaScript and CSS text (for standalone HTML export)."""
    if not bundle_built():
        raise FileNotFoundError(f"mmviz's JavaScript bundle {BUNDLE} is missing; {BUILD_HINT}")
    return BUNDLE.read_text(encoding="utf-8"), STYLES.read_text(encoding="utf-8") if STYLES.is_file() else ""
