"""Standalone HTML: the bundle, the widget's state and its binary buffers in one file that needs no server or CDN."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import ipywidgets
from ipywidgets.widgets.widget import _remove_buffers

from mmviz.widget.bundle import read_bundle

_SKIP = {"_esm", "_css", "_anywidget_id", "_dom_classes", "layout", "tabbable", "tooltip"}
_SKIP_MODEL = {
    "_model_module",
    "_model_module_version",
    "_model_name",
    "_view_module",
    "_view_module_version",
    "_view_name",
    "_view_count",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>body {{ margin: 16px; font-family: system-ui, sans-serif; }}</style>
<style>{css}</style>
</head>
<body>
<div id="mmviz-root"></div>
<script type="application/json" id="mmviz-payload">{payload}</script>
<script type="application/json" id="mmviz-bundle">{bundle}</script>
<script type="module">
const read = (id) => JSON.parse(document.getElementById(id).textContent);
const url = URL.createObjectURL(new Blob([read("mmviz-bundle")], {{ type: "text/javascript" }}));
const mod = await import(url);
window.mmvizView = await mod.mountStatic(document.getElementById("mmviz-root"), read("mmviz-payload"));
</script>
</body>
</html>
"""


def widget_payload(widget: ipywidgets.Widget, prefetched: dict[str, Any] | None = None) -> dict[str, Any]:
    """The widget's synced state with binary buffers split out and base64-encoded (the static host's input).

    ``prefetched`` (the answers a kernel would give to the browser's fetch requests) goes in as ``state.prefetched``.
    """
    state = {key: value for key, value in widget.get_state().items() if key not in _SKIP and key not in _SKIP_MODEL}
    if prefetched:
        state["prefetched"] = prefetched
    stripped, paths, buffers = _remove_buffers(state)
    return {
        "state": stripped,
        "buffers": [
            {"path": list(path), "data": base64.b64encode(bytes(buffer)).decode("ascii")}
            for path, buffer in zip(paths, buffers, strict=True)
        ],
    }


def _script_json(value: Any) -> str:
    """JSON that cannot close the surrounding <script> element, whatever strings it holds."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_html(widget: ipywidgets.Widget, title: str = "mmviz", prefetched: dict[str, Any] | None = None) -> str:
    """A self-contained HTML page showing ``widget`` (works from ``file://``, offline)."""
    javascript, css = read_bundle()
    return _PAGE.format(
        title=html.escape(title),
        css=css.replace("</", "<\\/"),
        payload=_script_json(widget_payload(widget, prefetched)),
        bundle=_script_json(javascript),
    )
