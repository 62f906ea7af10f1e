"""Idle prefetch of the neighbouring layers' per-head maps, in JupyterLab 4 against a real kernel: after an idle
moment the next layer paints with no new kernel request, and a newer layer switch cancels a stale prefetch (its late
reply is dropped, so that layer is fetched again when it is shown). The kernel's requests are read off the page's
kernel WebSocket; the kernel answers slowly on purpose, so a prefetch is still in flight when the test moves on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.browser.conftest import watch_server_page
from tests.browser.servers import KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
LAYERS = 8
KERNEL_DELAY_S = 0.4

CELLS = [
    f"import sys, time; sys.path.insert(0, {str(BENCHMARKS)!r})\n"
    "from widget import synthetic_trace\nimport mmviz\n"
    f"inspector = mmviz.Inspector(synthetic_trace({LAYERS}, 4, 16, 8), layer=0, head=0)\n"
    "serve = inspector._commands['fetch']\n"
    "def slow_fetch(content):  # a slow kernel: a prefetch is still in flight when the test switches away\n"
    f"    time.sleep({KERNEL_DELAY_S})\n"
    "    return serve(content)\n"
    "inspector._commands['fetch'] = slow_fetch\n"
    "inspector",
]

# A fetch request as the widget sends it (no nested objects), wherever it sits in a WebSocket frame (the kernel
# protocol may frame it as text or in binary).
FETCH = re.compile(rb'\{"type":"fetch"[^{}]*\}')

# Move the layer scrubber and report, in the same task, what the view then shows.
SWITCH_JS = """([root, layer]) => {
    const slider = root.querySelector('.mmviz-layer');
    slider.value = String(layer);
    slider.dispatchEvent(new Event('input'));
    const heat = root.querySelector('.mmviz-heat');
    const { waiting } = root.dataset;
    return { layer: root.dataset.layer, waiting, heat: heat.dataset.layer, row: heat.dataset.row };
}"""


class KernelRequests:
    """The heads fetches the page sent to the kernel, in order: ``(layer, prefetch)``."""

    def __init__(self) -> None:
        self.sent: list[tuple[int | str, bool]] = []

    def frame(self, payload: str | bytes) -> None:
        raw = payload.encode() if isinstance(payload, str) else payload
        for match in FETCH.finditer(raw):
            request = json.loads(match.group())
            if request.get("what") == "heads":
                self.sent.append((request.get("layer"), request.get("prefetch") is True))

    def of(self, layer: int) -> list[bool]:
        """The prefetch flag of every request for ``layer``."""
        return [prefetch for asked, prefetch in self.sent if asked == layer]


def wait_prefetch(page, root, state: str, timeout: float = 60_000, **hooks: str) -> None:
    checks = [f"r.dataset.prefetch === {state!r}"]
    checks += [f"r.dataset.{name} === {value!r}" for name, value in hooks.items()]
    page.wait_for_function(f"(r) => {' && '.join(checks)}", arg=root, timeout=timeout)


def wait_painted(page, root, layer: int) -> None:
    page.wait_for_function(
        "([r, layer]) => r.dataset.waiting === '' && r.querySelector('.mmviz-heat').dataset.layer === layer "
        "&& r.querySelector('.mmviz-heat').dataset.row !== '-1'",
        arg=[root, str(layer)],
        timeout=60_000,
    )


@pytest.mark.jupyter
def test_idle_prefetch_paints_the_next_layer_without_a_request_and_a_newer_switch_cancels_a_stale_one(
    browser, tmp_path
):
    (tmp_path / "prefetch.ipynb").write_text(notebook(CELLS))
    with jupyter_server(tmp_path) as base:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        watch = watch_server_page(page, base)
        requests = KernelRequests()
        page.on("websocket", lambda ws: ws.on("framesent", requests.frame))
        try:
            page.goto(f"{base}/lab/tree/prefetch.ipynb?token={TOKEN}")
            page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
            page.evaluate(RUN_ALL_JS)
            root = page.wait_for_selector(".mmviz-root[data-ready='1']", timeout=180_000)
            root.wait_for_selector("canvas.mmviz-photo[data-loaded='1']", timeout=30_000)
            root.query_selector(".mmviz-token.mmviz-answer.mmviz-has-row").click()  # every switch paints its row
            wait_painted(page, root, 0)

            # Idle at layer 0 with head 0: layers 1 and 2 are prefetched, once each, one request at a time.
            wait_prefetch(page, root, "idle")
            assert sorted({layer for layer, _ in requests.sent}) == [0, 1, 2], requests.sent
            assert requests.of(1) == [True] and requests.of(2) == [True], requests.sent
            assert len(requests.of(0)) == 1, requests.sent

            # The next layer paints in the same task as the switch: it is in the browser, no request is sent.
            shown = page.evaluate(SWITCH_JS, [root, 1])
            assert shown["waiting"] == "" and shown["heat"] == "1" and shown["row"] != "-1", shown
            assert requests.of(1) == [True], "switching to a prefetched layer asked the kernel again"

            # At layer 1, layer 3 is prefetched next; jump far away while it is in flight: it is cancelled.
            wait_prefetch(page, root, "loading", prefetchLoading="3")
            shown = page.evaluate(SWITCH_JS, [root, 7])
            assert shown["waiting"].startswith("loading the heads of layer 7"), shown
            assert root.get_attribute("data-prefetch-cancelled") == "1"
            wait_painted(page, root, 7)
            wait_prefetch(page, root, "idle")  # 6 and 5 (the window of layer 7) arrived
            assert requests.of(6) == [True] and requests.of(5) == [True], requests.sent

            # The stale reply for layer 3 was dropped: showing layer 3 asks the kernel again, as the view's own fetch.
            shown = page.evaluate(SWITCH_JS, [root, 3])
            assert shown["waiting"].startswith("loading the heads of layer 3"), shown
            wait_painted(page, root, 3)
            assert requests.of(3) == [True, False], requests.sent
            assert root.get_attribute("data-prefetch-cancelled") == "1"
            assert max(len(requests.of(layer)) for layer in range(LAYERS) if layer != 3) == 1, requests.sent
            watch.assert_clean()
        finally:
            context.close()
