"""JupyterLab smoke test: the quickstart notebook runs in a real JupyterLab and its widget renders and reacts."""

from __future__ import annotations

import re
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

    root = page.wait_for_selector(".mmviz-root[data-ready='1'][data-method='relevancy']", timeout=180_000)
    assert root.query_selector(".mmviz-missing-bundle") is None
    page.wait_for_selector("canvas.mmviz-photo[data-loaded='1']", timeout=30_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea-output')].some(o => o.textContent.includes('queried'))",
        timeout=120_000,
    )
    printed = page.eval_on_selector_all(".jp-OutputArea-output", "os => os.map(o => o.textContent).join('\\n')")
    box = [float(v) for v in re.search(r"the queried object's box: \(([^)]*)\)", printed).group(1).split(",")]
    # The answer token is pinned and its relevancy map painted: its hottest cell lies on the queried shape.
    answer = page.query_selector(".mmviz-token.mmviz-answer.mmviz-pinned")
    assert answer is not None and root.get_attribute("data-focus") == answer.get_attribute("data-pos")
    hottest = page.eval_on_selector(
        "canvas.mmviz-heat",
        """c => {
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let best = -1, at = [0, 0];
            for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
                const i = (y * c.width + x) * 4;
                if (px[i + 3] === 0) continue;
                const luma = 0.2126 * px[i] + 0.7152 * px[i + 1] + 0.0722 * px[i + 2];  // monotone along viridis
                if (luma > best) { best = luma; at = [x, y]; }
            }
            return { at, width: c.width, height: c.height };
        }""",
    )
    scale = 256 / hottest["width"]  # the scene is rendered at 256 px
    x, y = (hottest["at"][0] + 0.5) * scale, (hottest["at"][1] + 0.5) * scale
    assert box[0] <= x <= box[2] and box[1] <= y <= box[3], (x, y, box)
    assert "'purple'" in printed
    assert not page.query_selector(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
    watch.assert_clean()
    context.close()
