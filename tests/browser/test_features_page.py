"""The Features panel in JupyterLab 4 against a real kernel, on the shapes model with the planted SAE
(tests/features/planted.py, latent 0 = "red object"): the red object's patch lists latent 0 first, its label as
text; its map lights the object; clamping it lowers the colour token exactly as ``mmviz.features.clamp`` says; a
hostile label shows literally."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import watch_server_page
from tests.browser.servers import KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook

ROOT = Path(__file__).resolve().parents[2]

# The panel's heat canvas at the centre of every box (original pixels): its green channel, and the painted range.
GREEN_AT_JS = """([boxes, width]) => {
    const canvas = document.querySelector('.mmviz-features canvas.mmviz-features-heat');
    const scale = canvas.width / width;
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const green = boxes.map(([x0, y0, x1, y1]) => {
        const i = (Math.floor((y0 + y1) / 2 * scale) * canvas.width + Math.floor((x0 + x1) / 2 * scale)) * 4;
        return pixels[i + 3] === 255 ? pixels[i + 1] : -1;
    });
    return { green, range: canvas.dataset.range };
}"""


def cells(folder: Path) -> list[str]:
    """Trace the first held-out red question, plant the SAE (latent 1 gets a hostile label) and write what the test
    expects, computed by the library itself, next to the notebook."""
    return [
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\nimport numpy as np\nimport mmviz\n"
        "from mmviz.features import clamp, encode, load_sae\nfrom mmviz.zoo import scene\n"
        "from tests.features.planted import planted_sae\n"
        "model, processor = mmviz.zoo.load('shapes-vlm')\n"
        f"folder = planted_sae(model, processor, Path({str(folder)!r}))\n"
        "hostile = '<img src=x onerror=window.__pwned=1>'\n"
        "(folder / 'labels.json').write_text(json.dumps({'0': 'red object', '1': hostile}))\n"
        "sae = load_sae(folder)\n"
        "s, q = next((s, q) for s in map(scene, range(300, 330)) for q in s.questions if q.answer == 'red')\n"
        "trace = mmviz.trace(model, processor, s.image, q.text, answer=q.answer)\n"
        "codes = encode(trace, sae, k=16)\n"
        "activation = codes.activation(0)[trace.image_positions]\n"
        "effect = clamp(trace, sae, 0, 0.0, positions=trace.image_positions.tolist())\n"
        "Path('expected.json').write_text(json.dumps({\n"
        "    'column': int(np.argmax(activation)), 'activation': activation.tolist(),\n"
        "    'boxes': trace.layout.boxes[trace.image_positions].tolist(), 'width': s.image.width,\n"
        "    'object': list(s.objects[q.object_index].box), 'answer_start': int(trace.answer_start),\n"
        "    'delta': effect.delta.tolist(), 'positions': effect.positions.tolist()}))\n"
        "inspector = mmviz.inspect(trace, sae=sae)\ninspector",
    ]


@pytest.mark.jupyter
def test_the_planted_red_latent_is_listed_mapped_and_clamped(browser, tmp_path):
    (tmp_path / "features.ipynb").write_text(notebook(cells(tmp_path / "sae")))
    with jupyter_server(tmp_path) as base:
        context = browser.new_context(viewport={"width": 1400, "height": 1400})
        page = context.new_page()
        watch = watch_server_page(page, base)
        try:
            page.goto(f"{base}/lab/tree/features.ipynb?token={TOKEN}")
            page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
            page.evaluate(RUN_ALL_JS)
            root = page.wait_for_selector(".mmviz-root[data-ready='1']", timeout=180_000)
            root.wait_for_selector("canvas.mmviz-photo[data-loaded='1']", timeout=30_000)
            expected = json.loads((tmp_path / "expected.json").read_text())
            root.query_selector(".mmviz-tab[data-panel='features']").click()
            panel = root.query_selector(".mmviz-features")
            assert panel.get_attribute("data-kind") == "sae", "the SAE is shown by default when given"

            # Click the red object's strongest patch: it is held for the panel, which lists latent 0 first.
            column = expected["column"]
            x0, y0, x1, y1 = expected["boxes"][column]
            stack = root.query_selector(".mmviz-image-stack").bounding_box()
            scale = stack["width"] / expected["width"]
            page.mouse.click(stack["x"] + (x0 + x1) / 2 * scale, stack["y"] + (y0 + y1) / 2 * scale)
            page.wait_for_function(
                "(p) => p.dataset.units !== undefined && p.dataset.units !== '' && p.dataset.held !== '-1'",
                arg=panel,
                timeout=120_000,
            )
            assert panel.get_attribute("data-units").split(",")[0] == "0"
            first = panel.query_selector(".mmviz-feature")
            assert first.get_attribute("data-unit") == "0"
            assert first.query_selector(".mmviz-feature-label").text_content() == "red object"

            # Click it: its exact activation is painted over the patches and lights the object.
            page.mouse.move(0, 0)  # off the image: the held patch stays
            first.click()
            page.wait_for_function("(p) => p.dataset.unitReady === '1'", arg=panel, timeout=60_000)
            heat = page.evaluate(GREEN_AT_JS, [expected["boxes"], expected["width"]])
            activation = np.asarray(expected["activation"])
            assert float(heat["range"]) == pytest.approx(activation.max(), rel=1e-4)
            green = np.asarray(heat["green"], dtype=float)  # viridis' green channel grows with the value
            assert int(np.argmax(green)) in np.flatnonzero(activation >= activation.max() * 0.95)
            ox0, oy0, ox1, oy1 = expected["object"]
            centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in expected["boxes"]]
            inside = np.array([ox0 <= cx < ox1 and oy0 <= cy < oy1 for cx, cy in centres])
            lit = green > 150  # viridis above ≈ 0.55 of the range
            assert lit.any() and inside[lit].all(), "the latent's map lights the object's patches only"
            assert panel.query_selector(".mmviz-features-label").text_content().endswith("red object")

            # Clamp it to 0: the colour token's Δ log p is negative and equals mmviz.features.clamp's.
            panel.query_selector(".mmviz-features-clamp").click()
            page.wait_for_function(
                "(p) => p.querySelector('.mmviz-features-clamp-result').dataset.state === 'done'",
                arg=panel,
                timeout=60_000,
            )
            rows = panel.query_selector_all(".mmviz-clamp-row")
            shown = {int(r.get_attribute("data-pos")): float(r.get_attribute("data-delta")) for r in rows}
            assert sorted(shown) == expected["positions"]
            colour = expected["answer_start"]
            assert shown[colour] < 0
            assert shown[colour] == pytest.approx(expected["delta"][0], abs=1e-4)
            bar = panel.query_selector(f".mmviz-clamp-row[data-pos='{colour}'] .mmviz-clamp-bar")
            assert "mmviz-neg" in bar.get_attribute("class")

            # A hostile label (latent 1, looked up by number) shows literally, as text.
            panel.query_selector(".mmviz-features-lookup").fill("1")
            panel.query_selector(".mmviz-features-show").click()
            page.wait_for_function(
                "(p) => p.dataset.unit === '1' && p.dataset.unitReady === '1'", arg=panel, timeout=60_000
            )
            label = panel.query_selector(".mmviz-features-label").text_content()
            assert label.endswith("<img src=x onerror=window.__pwned=1>")
            assert panel.query_selector("img") is None and page.evaluate("() => window.__pwned") is None
            watch.assert_clean()
        finally:
            context.close()
