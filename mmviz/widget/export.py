"""Standalone HTML: the bundle, the widget's state and its binary buffers in one file that needs no server or CDN."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from typing import Any

import ipywidgets
from ipywidgets.widgets.widget import _remove_buffers

from mmviz.errors import InputError
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
{plot_head}
</head>
<body>
<div id="mmviz-root"></div>
{plot_body}
<script type="application/json" id="mmviz-payload">{payload}</script>
<script type="application/json" id="mmviz-extra">{extra}</script>
<script type="application/json" id="mmviz-bundle">{bundle}</script>
<script type="module">
const read = (id) => JSON.parse(document.getElementById(id).textContent);
const url = URL.createObjectURL(new Blob([read("mmviz-bundle")], {{ type: "text/javascript" }}));
const mod = await import(url);
const root = document.getElementById("mmviz-root");
window.mmvizView = await mod.{mount}(root, read("mmviz-payload"), read("mmviz-extra"));
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


def to_html(
    widget: ipywidgets.Widget,
    title: str = "mmviz",
    prefetched: dict[str, Any] | None = None,
    *,
    mount: str = "mountStatic",
    plots: Sequence[Any] = (),
    extra: Any = None,
) -> str:
    """A self-contained HTML page showing ``widget`` (works from ``file://``, offline).

    Args:
        mount: the bundle's function that mounts this kind of widget on the page (``mountStatic`` for the
            Inspector, ``mountComparisonStatic``, ``mountSweepStatic``); it gets the payload and ``extra``.
        plots: bokeh plots shown under the widget, BokehJS inline.
        extra: JSON the mount function gets as its third argument (the sweep page's embedded inspectors).
    """
    javascript, css = read_bundle()
    plot_head, plot_body = bokeh_parts(plots)
    return _PAGE.format(
        title=html.escape(title),
        css=css.replace("</", "<\\/"),
        plot_head=plot_head,
        plot_body=plot_body,
        payload=_script_json(widget_payload(widget, prefetched)),
        extra=_script_json(extra),
        mount=mount,
        bundle=_script_json(javascript),
    )


def bokeh_parts(plots: Sequence[Any]) -> tuple[str, str]:
    """The ``<head>`` scripts (BokehJS, inline) and the ``<body>`` markup of ``plots``; empty without plots."""
    if not plots:
        return "", ""
    from bokeh.embed import components  # bokeh is the optional `plots` extra
    from bokeh.models import LayoutDOM
    from bokeh.resources import INLINE

    for plot in plots:
        if not isinstance(plot, LayoutDOM):
            raise InputError(f"plots takes bokeh plots (e.g. from mmviz.plots), not {type(plot).__name__}")
    script, divs = components(list(plots))
    return INLINE.render_js(), '<div class="mmviz-plots">' + "".join(divs) + "</div>\n" + script
