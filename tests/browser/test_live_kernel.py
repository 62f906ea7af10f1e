"""The Inspector against a real kernel, in JupyterLab 4 and in Notebook 7: displayed twice (independent views),
per-head maps fetched through the comm, a method computed on request; no console errors, no request leaving
localhost."""

from __future__ import annotations

import pytest

from tests.browser.conftest import PageWatch, watch_requests
from tests.browser.servers import KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook

CELLS = [
    "import mmviz, numpy as np\n"
    "model, processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=3, seed=1)\n"
    "y, x = np.mgrid[0:90, 0:160]\n"
    "photo = np.stack([x * 255 // 160, y * 255 // 90, np.full_like(x, 80)], -1).astype(np.uint8)\n"
    "inspector = mmviz.inspect(model, processor, photo, 'What is in the picture?', answer='A red square.')",
    "display(inspector); display(inspector)",
]


# Notebook 7's own start-up race (jupyter/notebook#7862), seen on an empty notebook without mmviz too.
NOTEBOOK7_UPSTREAM = "Cannot read properties of undefined (reading 'schema')"


def drive(page, watch: PageWatch) -> None:
    """The checks both front ends must pass."""
    page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
    page.evaluate(RUN_ALL_JS)
    page.wait_for_function(
        "() => document.querySelectorAll('.mmviz-root[data-ready=\"1\"]').length === 2", timeout=180_000
    )
    first, second = page.query_selector_all(".mmviz-root")
    first.wait_for_selector("canvas.mmviz-photo[data-loaded='1']", timeout=30_000)
    assert first.query_selector(".mmviz-missing-bundle") is None

    # Two displays are two independent views of one model.
    answer = first.query_selector(".mmviz-token.mmviz-answer")
    position = answer.get_attribute("data-pos")
    answer.click()
    page.wait_for_function(f"(r) => r.dataset.focus === '{position}'", arg=first)
    assert second.get_attribute("data-focus") == "-1"

    # A single head needs its layer's per-head maps: fetched from the kernel through the comm, then painted.
    first.query_selector(".mmviz-head").select_option("1")
    page.wait_for_function(
        "(r) => r.dataset.waiting === '' && r.querySelector('.mmviz-heat').dataset.row !== '-1'",
        arg=first,
        timeout=60_000,
    )
    painted = first.eval_on_selector(
        "canvas.mmviz-heat",
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0)",
    )
    assert painted
    # The overview switches to "attention on the hovered patch": every layer's heads arrive.
    first.query_selector(".mmviz-image-stack").hover()
    first.query_selector(".mmviz-stat").select_option("patch")
    page.wait_for_function(
        "(r) => r.querySelector('.mmviz-overview').dataset.missing === '0'", arg=first, timeout=60_000
    )

    # A method computed on request by the kernel shows in the view that asked.
    first.query_selector(".mmviz-method").select_option("gradient_x_input")
    page.wait_for_function(
        "(r) => r.dataset.busy === '' && r.dataset.method === 'gradient_x_input' "
        "&& r.querySelector('.mmviz-heat').dataset.method === 'gradient_x_input'",
        arg=first,
        timeout=120_000,
    )
    # The logit lens opens in the second view, fetched from the kernel.
    second.query_selector(".mmviz-tab[data-panel='lens']").click()
    second.query_selector(".mmviz-token.mmviz-answer").hover()
    page.wait_for_function("(r) => r.querySelectorAll('tr.mmviz-lens-row').length === 4", arg=second, timeout=60_000)
    watch.assert_clean()


@pytest.mark.jupyter
@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_the_inspector_works_against_a_live_kernel(browser, tmp_path, app):
    (tmp_path / "live.ipynb").write_text(notebook(CELLS))
    with jupyter_server(tmp_path, app=app) as base:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        watch = PageWatch()
        page.on("console", lambda m: m.type == "error" and m.text != NOTEBOOK7_UPSTREAM and watch.errors.append(m.text))
        known = NOTEBOOK7_UPSTREAM if app == "notebook" else None
        page.on("pageerror", lambda error: str(error) != known and watch.errors.append(str(error)))
        page.on("response", lambda r: r.status >= 400 and watch.errors.append(f"HTTP {r.status} {r.url}"))
        watch_requests(page, watch, allowed_hosts=(base, base.replace("http", "ws")))
        path = "lab/tree" if app == "lab" else "notebooks"
        page.goto(f"{base}/{path}/live.ipynb?token={TOKEN}")
        try:
            drive(page, watch)
        finally:
            context.close()
