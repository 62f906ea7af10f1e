"""JupyterLab smoke test: the quickstart notebook runs in a real JupyterLab and its widget renders and reacts."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser.conftest import PageWatch, watch_requests

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOKEN = "mmviz-test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def jupyterlab(tmp_path):
    """A JupyterLab server on localhost serving a copy of the examples; stopped (with its kernels) afterwards."""
    shutil.copy(EXAMPLES / "quickstart.ipynb", tmp_path)
    port = free_port()
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
        f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
        "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    ]  # fmt: skip
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start within 60 s")
    yield base
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


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
    page.wait_for_function(  # run only once the kernel is connected, or the cells are silently skipped
        """() => {
            const kernel = window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel;
            return kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
        }""",
        timeout=60_000,
    )
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
