"""Headless Debian Chromium through Playwright, with no network beyond this machine and console errors caught."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmviz.widget import bundle
from tests.browser.servers import CHROMIUM_ARGS

LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def _unavailable(reason: str) -> None:
    """Skip locally; fail in CI (MMVIZ_REQUIRE_BROWSER=1), where a skipped browser test would hide a gap."""
    if os.environ.get("MMVIZ_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("MMVIZ_CHROMIUM") or shutil.which("chromium")
    if not path:
        _unavailable("Debian's chromium is not installed (apt-get install -y chromium)")
    if not bundle.bundle_built():
        _unavailable("the JS bundle is not built (npm --prefix js ci && npm --prefix js run build)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class PageWatch:
    """What a page did that a test must see: console errors, uncaught exceptions, requests leaving the machine."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.external_requests: list[str] = []

    def assert_clean(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.external_requests, f"requests left the machine: {self.external_requests}"


def watch_requests(page, watch: PageWatch, allowed_hosts: tuple[str, ...] = ()) -> None:
    """Record every request that would leave this machine (passive: intercepting would slow JupyterLab down)."""

    def check(request) -> None:
        url = request.url
        if not (url.startswith(LOCAL_SCHEMES) or any(url.startswith(host) for host in allowed_hosts)):
            watch.external_requests.append(url)

    page.on("request", check)


def watch_server_page(page, base: str) -> PageWatch:
    """A :class:`PageWatch` of a page served by the Jupyter server at ``base``: console errors, uncaught
    exceptions, HTTP errors, and requests to anything but that server."""
    watch = PageWatch()
    page.on("console", lambda message: message.type == "error" and watch.errors.append(message.text))
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    page.on("response", lambda r: r.status >= 400 and watch.errors.append(f"HTTP {r.status} {r.url}"))
    watch_requests(page, watch, allowed_hosts=(base, base.replace("http", "ws")))
    return watch


@pytest.fixture()
def page_watch(browser) -> Iterator[tuple[object, PageWatch]]:
    context = browser.new_context(viewport={"width": 1200, "height": 800}, device_scale_factor=1)
    page = context.new_page()
    watch = PageWatch()
    page.on("console", lambda message: message.type == "error" and watch.errors.append(message.text))
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    watch_requests(page, watch)
    yield page, watch
    context.close()


def open_inspector(page, inspector, tmp_path: Path):
    """Export ``inspector`` to a standalone page, open it and wait for the first paint."""
    path = tmp_path / "inspector.html"
    inspector.to_html(path)
    page.goto(path.as_uri())
    page.wait_for_selector(".mmviz-root", timeout=15_000)
    page.wait_for_function("() => document.querySelector('.mmviz-heat') !== null", timeout=15_000)
    return page


_HEAT_VALUES_JS = """([centres, width, image]) => {
    const canvas = document.querySelectorAll('.mmviz-heat')[image];
    const scale = canvas.width / width;
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const signed = canvas.dataset.signed === '1';
    const range = canvas.dataset.range === '' ? 0 : +canvas.dataset.range;
    const lut = signed ? window.mmvizView.colormaps.diverging : window.mmvizView.colormaps.viridis;
    const n = lut.length / 3;
    const decode = (r, g, b) => {
        let best = 0, bestD = Infinity;
        for (let i = 0; i < n; i++) {
            const d = (lut[3 * i] - r) ** 2 + (lut[3 * i + 1] - g) ** 2 + (lut[3 * i + 2] - b) ** 2;
            if (d < bestD) { bestD = d; best = i; }
        }
        return signed ? (best / ((n - 1) / 2) - 1) * range : (best / (n - 1)) * range;
    };
    const rgba = centres.map(([x, y]) => {
        const i = (Math.floor(y * scale) * canvas.width + Math.floor(x * scale)) * 4;
        return [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
    });
    return { rgba, values: rgba.map(([r, g, b, a]) => (a === 255 ? decode(r, g, b) : NaN)), signed, range };
}"""


def heat_values(page, boxes, width: int, image: int = 0) -> dict:
    """The heat canvas of image ``image`` at the centre of every box (original pixels), read back through the page's
    own colour maps: ``{"rgba": (B, 4), "values": (B,) (NaN where transparent), "signed": bool, "range": float}``."""
    centres = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in np.asarray(boxes).tolist()]
    out = page.evaluate(_HEAT_VALUES_JS, [centres, width, image])
    return {
        "rgba": np.array(out["rgba"], dtype=np.int64).reshape(-1, 4),
        "values": np.array([np.nan if v is None else v for v in out["values"]], dtype=float),
        "signed": bool(out["signed"]),
        "range": float(out["range"]),
    }
