"""JupyterLab smoke test: the quickstart notebook runs in a real JupyterLab and its widget renders and reacts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser.conftest import PageWatch, watch_requests
from tests.browser.servers import KERNEL_IDLE_JS, TOKEN, jupyter_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture()
def jupyterlab(tmp_path):
    """A JupyterLab server on localhost serving a copy of the quickstart; stopped (with its kernels) afterwards."""
    shutil.copy(EXAMPLES / "quickstart.ipynb", tmp_path)
    with jupyter_server(tmp_path) as base:
        yield base


@pytest.mark.jupyter
def test_quickstart_renders_the_inspector_in_jupyterlab(browser, jupyterlab):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    watch = PageWatch()
    page.on("console", lambda message: message.type == "error" and watch.errors.append(message.text))
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    watch_requests(page, watch, allowed_hosts=(jupyterlab, jupyterlab.replace("http", "ws")))
    page.goto(f"{jupyterlab}/lab/tree/quickstart.ipynb?token={TOKEN}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # Run only once the kernel is connected, or the cells are silently skipped.
    page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

    root = page.wait_for_selector(".mmviz-root[data-ready='1']", timeout=180_000)
    assert root.query_selector(".mmviz-missing-bundle") is None
    page.wait_for_selector("canvas.mmviz-photo[data-loaded='1']", timeout=30_000)
    answer = page.query_selector(".mmviz-token.mmviz-answer")
    position = answer.get_attribute("data-pos")
    answer.hover()
    page.wait_for_selector(f".mmviz-root[data-focus='{position}']")
    painted = page.eval_on_selector(
        "canvas.mmviz-heat",
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0)",
    )
    assert painted, "hovering an answer token paints the heatmap"
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea-output')].some(o => o.textContent.includes('576 image'))",
        timeout=120_000,
    )
    assert not page.query_selector(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
    watch.assert_clean()
    context.close()
