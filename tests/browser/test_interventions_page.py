"""The Interventions panel in JupyterLab 4 against a real kernel, on the shapes model: clicking the queried object's
patches selects them, Run ablates them and the Δ bars equal ``mmviz.methods.ablate`` for the same selection; a layer
window's knockout equals ``mmviz.methods.knockout``; the history keeps both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser.conftest import watch_server_page
from tests.browser.servers import KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook

ROOT = Path(__file__).resolve().parents[2]


def cells() -> list[str]:
    """Trace a held-out colour question and write what the test expects, computed by the library itself: the
    object's patches (box centre inside the object's box) and the effects of ablating them / knocking out layers
    0–1."""
    return [
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\nimport mmviz\nfrom mmviz.methods import ablate, knockout\n"
        "from mmviz.interventions import DEFAULT_FILL\nfrom mmviz.zoo import scene\n"
        "model, processor = mmviz.zoo.load('shapes-vlm')\n"
        "s = scene(301)\nq = next(q for q in s.questions if q.text.startswith('What color'))\n"
        "trace = mmviz.trace(model, processor, s.image, q.text, answer=q.answer)\n"
        "x0, y0, x1, y1 = s.objects[q.object_index].box\n"
        "boxes = trace.layout.boxes[trace.image_positions]\n"
        "columns = [c for c, b in enumerate(boxes) if x0 <= (b[0] + b[2]) / 2 < x1 and y0 <= (b[1] + b[3]) / 2 < y1]\n"
        "positions = trace.image_positions[columns].tolist()\n"
        "Path('expected.json').write_text(json.dumps({\n"
        "    'columns': columns, 'boxes': boxes.tolist(), 'width': s.image.width, 'fill': DEFAULT_FILL,\n"
        "    'ablate': ablate(trace, positions, baseline=DEFAULT_FILL).delta.tolist(),\n"
        "    'knockout': knockout(trace, layers=[0, 1]).delta.tolist(),\n"
        "    'positions': [int(p) for p in range(trace.answer_start, len(trace.tokens))]}))\n"
        "inspector = mmviz.inspect(trace)\ninspector",
    ]


def bars(panel) -> dict[int, float]:
    rows = panel.query_selector_all(".mmviz-iv-result .mmviz-iv-bar-row")
    return {int(r.get_attribute("data-pos")): float(r.get_attribute("data-delta")) for r in rows}


@pytest.mark.jupyter
def test_ablating_the_clicked_object_and_a_knockout_match_the_api(browser, tmp_path):
    (tmp_path / "interventions.ipynb").write_text(notebook(cells()))
    with jupyter_server(tmp_path) as base:
        context = browser.new_context(viewport={"width": 1400, "height": 1400})
        page = context.new_page()
        watch = watch_server_page(page, base)
        try:
            page.goto(f"{base}/lab/tree/interventions.ipynb?token={TOKEN}")
            page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
            page.evaluate(RUN_ALL_JS)
            root = page.wait_for_selector(".mmviz-root[data-ready='1']", timeout=180_000)
            root.wait_for_selector("canvas.mmviz-photo[data-loaded='1']", timeout=30_000)
            expected = json.loads((tmp_path / "expected.json").read_text())
            root.query_selector(".mmviz-tab[data-panel='interventions']").click()
            panel = root.query_selector(".mmviz-interventions")
            assert panel.get_attribute("data-can-run") == "1"
            assert panel.query_selector(".mmviz-iv-fill").input_value() == expected["fill"]

            # Click each of the object's patches on the panel's own image: the selection is exactly them.
            stack = panel.query_selector(".mmviz-iv-image .mmviz-image-stack").bounding_box()
            scale = stack["width"] / expected["width"]
            for column in expected["columns"]:
                x0, y0, x1, y1 = expected["boxes"][column]
                page.mouse.click(stack["x"] + (x0 + x1) / 2 * scale, stack["y"] + (y0 + y1) / 2 * scale)
            assert panel.get_attribute("data-selected") == ",".join(map(str, sorted(expected["columns"])))

            panel.query_selector(".mmviz-iv-run-ablate").click()
            page.wait_for_function("(p) => p.dataset.runs === '1'", arg=panel, timeout=120_000)
            shown = bars(panel)
            assert sorted(shown) == expected["positions"]
            for pos, delta in zip(expected["positions"], expected["ablate"], strict=True):
                assert shown[pos] == pytest.approx(delta, abs=1e-4)

            # A layer window 0 … 1, image → answer: equals mmviz.methods.knockout(trace, layers=[0, 1]).
            panel.query_selector(".mmviz-iv-first").fill("0")
            panel.query_selector(".mmviz-iv-last").fill("1")
            panel.query_selector(".mmviz-iv-run-knockout").click()
            page.wait_for_function("(p) => p.dataset.runs === '2'", arg=panel, timeout=120_000)
            shown = bars(panel)
            for pos, delta in zip(expected["positions"], expected["knockout"], strict=True):
                assert shown[pos] == pytest.approx(delta, abs=1e-4)

            # The history shows the first run again.
            panel.query_selector(".mmviz-iv-history li[data-index='0']").click()
            assert bars(panel)[expected["positions"][0]] == pytest.approx(expected["ablate"][0], abs=1e-4)
            watch.assert_clean()
        finally:
            context.close()
