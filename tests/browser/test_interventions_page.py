"""The Interventions panel in JupyterLab 4 against a real kernel, on the shapes model, in ONE page load (JupyterLab is
slow to start): clicking the queried object's patches selects them, Run ablates them and the Δ bars equal
``mmviz.methods.ablate`` for the same selection; a layer window's knockout equals ``mmviz.methods.knockout``; the
history keeps both. Then the gestures: a rectangle dragged on the image selects every patch whose box it touches
(checked against an intersection computed in the kernel) and its Δ bars equal ``ablate``, Undo restores the
selection before it; a drag over rows 1…3 of
the layer × head overview knocks the image out of those layers and equals ``knockout(layers=[1, 2, 3])``; "New
greedy answer" shows the kernel's greedy decode under that knockout; and the image-reliance stripes of the answer
tokens equal a KL computed by hand in the notebook (plain ``model(...)`` forwards with the real and a grey image, no
mmviz code): the colour word depends on the image, the closing ``</s>`` does not. While the panel is open, the token
strip carries a Δ bar under every answer chip for the run the panel shows: its values equal the panel's, for every run
shown, and closing the panel clears them."""

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
        "from mmviz.interventions import default_fill\nfrom mmviz.zoo import scene\n"
        "model, processor = mmviz.zoo.load('shapes-vlm')\n"
        "s = scene(301)\nq = next(q for q in s.questions if q.text.startswith('What color'))\n"
        "trace = mmviz.trace(model, processor, s.image, q.text)\n"  # greedy: the colour word, then </s>
        "FILL = default_fill(trace)\n"  # paint: every patch has a box
        "x0, y0, x1, y1 = s.objects[q.object_index].box\n"
        "boxes = trace.layout.boxes[trace.image_positions]\n"
        "columns = [c for c, b in enumerate(boxes) if x0 <= (b[0] + b[2]) / 2 < x1 and y0 <= (b[1] + b[3]) / 2 < y1]\n"
        "positions = trace.image_positions[columns].tolist()\n"
        # A rectangle between patch centres (the object's, widened by a cell left, up and right: not the clicked set),
        # and every patch whose box (half-open) intersects it.
        "plain = boxes.tolist()\n"
        "cx = [(plain[c][0] + plain[c][2]) / 2 for c in columns]\n"
        "cy = [(plain[c][1] + plain[c][3]) / 2 for c in columns]\n"
        "bw, bh = plain[columns[0]][2] - plain[columns[0]][0], plain[columns[0]][3] - plain[columns[0]][1]\n"
        "rect = [min(cx) - bw, min(cy) - bh, max(cx) + bw, max(cy)]\n"
        "touches = lambda b: b[0] <= rect[2] and b[2] > rect[0] and b[1] <= rect[3] and b[3] > rect[1]\n"
        "rect_columns = [c for c, b in enumerate(plain) if touches(b)]\n"
        "rect_positions = trace.image_positions[rect_columns].tolist()\n"
        # Image reliance by hand: two plain forwards over prompt + answer, the real image and a grey one of its size.
        "import torch\nfrom PIL import Image\n"
        "ids = torch.as_tensor(trace.token_ids)[None]\n"
        "def log_probs(image):\n"
        "    pixels = processor.image_processor([image], return_tensors='pt')['pixel_values']\n"
        "    with torch.no_grad():\n"
        "        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels).logits[0]\n"
        "    return torch.log_softmax(logits[trace.answer_start - 1 : -1].double(), dim=-1)\n"
        "real, grey = log_probs(s.image), log_probs(Image.new('RGB', s.image.size, (128, 128, 128)))\n"
        "hand_kl = (real.exp() * (real - grey)).sum(-1).clamp_min(0).tolist()\n"
        "from mmviz.interventions import Knockout, generate\n"
        "greedy_ids = list(generate(trace, Knockout([1, 2, 3])).token_ids)\n"
        "Path('expected.json').write_text(json.dumps({\n"
        "    'columns': columns, 'boxes': boxes.tolist(), 'width': s.image.width, 'fill': FILL,\n"
        "    'ablate': ablate(trace, positions, baseline=FILL).delta.tolist(),\n"
        "    'knockout': knockout(trace, layers=[0, 1]).delta.tolist(),\n"
        "    'rect': rect, 'rect_columns': rect_columns,\n"
        "    'rect_ablate': ablate(trace, rect_positions, baseline=FILL).delta.tolist(),\n"
        "    'knockout_123': knockout(trace, layers=[1, 2, 3]).delta.tolist(),\n"
        "    'greedy': processor.tokenizer.decode(greedy_ids, skip_special_tokens=True), 'answer': trace.answer,\n"
        "    'hand_kl': hand_kl, 'layers': trace.num_layers,\n"
        "    'positions': [int(p) for p in range(trace.answer_start, len(trace.tokens))]}))\n"
        "inspector = mmviz.inspect(trace)\ninspector",
    ]


def bars(panel) -> dict[int, float]:
    rows = panel.query_selector_all(".mmviz-iv-result .mmviz-iv-bar-row")
    return {int(r.get_attribute("data-pos")): float(r.get_attribute("data-delta")) for r in rows}


def strip_bars(root) -> dict[int, float]:
    """The Δ bars under the token strip's answer chips (the run the panel shows)."""
    chips = root.query_selector_all(".mmviz-tokens .mmviz-has-delta")
    return {int(c.get_attribute("data-pos")): float(c.get_attribute("data-delta")) for c in chips}


def assert_strip_matches(root, panel) -> None:
    """The strip's Δ bars are the panel's, position by position (the panel shows one run, none compared)."""
    shown, strip = bars(panel), strip_bars(root)
    assert sorted(strip) == sorted(shown)
    for pos, delta in shown.items():
        assert strip[pos] == pytest.approx(delta, abs=1e-6)


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
            assert_strip_matches(root, panel)

            # A layer window 0 … 1, image → answer: equals mmviz.methods.knockout(trace, layers=[0, 1]).
            panel.query_selector(".mmviz-iv-first").fill("0")
            panel.query_selector(".mmviz-iv-last").fill("1")
            panel.query_selector(".mmviz-iv-run-knockout").click()
            page.wait_for_function("(p) => p.dataset.runs === '2'", arg=panel, timeout=120_000)
            shown = bars(panel)
            for pos, delta in zip(expected["positions"], expected["knockout"], strict=True):
                assert shown[pos] == pytest.approx(delta, abs=1e-4)
            assert_strip_matches(root, panel)

            # The history shows the first run again.
            panel.query_selector(".mmviz-iv-history li[data-index='0']").click()
            assert bars(panel)[expected["positions"][0]] == pytest.approx(expected["ablate"][0], abs=1e-4)
            assert_strip_matches(root, panel)
            assert strip_bars(root)[expected["positions"][0]] == pytest.approx(expected["ablate"][0], abs=1e-4)

            # Drag a rectangle (original pixels → screen) on the panel's image: the patches its box touches.
            (rx0, ry0, rx1, ry1) = expected["rect"]
            panel.query_selector(".mmviz-iv-image .mmviz-image-stack").scroll_into_view_if_needed()
            stack = panel.query_selector(".mmviz-iv-image .mmviz-image-stack").bounding_box()
            page.mouse.move(stack["x"] + rx0 * scale, stack["y"] + ry0 * scale)
            page.mouse.down()
            page.mouse.move(stack["x"] + rx1 * scale, stack["y"] + ry1 * scale, steps=6)
            page.mouse.up()
            assert panel.get_attribute("data-selected") == ",".join(map(str, expected["rect_columns"]))
            assert len(expected["rect_columns"]) > len(expected["columns"])
            panel.query_selector(".mmviz-iv-run-ablate").click()
            page.wait_for_function("(p) => p.dataset.runs === '3'", arg=panel, timeout=120_000)
            shown = bars(panel)
            for pos, delta in zip(expected["positions"], expected["rect_ablate"], strict=True):
                assert shown[pos] == pytest.approx(delta, abs=1e-4)
            # Undo: back to the selection before the rectangle (the first run's, which the history restored).
            panel.query_selector(".mmviz-iv-undo").click()
            assert panel.get_attribute("data-selected") == ",".join(map(str, sorted(expected["columns"])))

            # Drag over rows 1 … 3 of the layer × head overview: a knockout of that window runs at once.
            grid = root.query_selector(".mmviz-overview-grid")
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            row = box["height"] / expected["layers"]
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 1.5 * row)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 3.5 * row, steps=6)
            page.mouse.up()
            assert grid.get_attribute("data-window") == "1,3"
            page.wait_for_function("(p) => p.dataset.runs === '4'", arg=panel, timeout=120_000)
            shown = bars(panel)
            for pos, delta in zip(expected["positions"], expected["knockout_123"], strict=True):
                assert shown[pos] == pytest.approx(delta, abs=1e-4)
            assert_strip_matches(root, panel)

            # The new greedy answer under that knockout, on request.
            panel.query_selector(".mmviz-iv-run-answer").click()
            answer = panel.wait_for_selector(".mmviz-iv-answer[data-index='3']", timeout=120_000)
            assert answer.get_attribute("data-text") == expected["greedy"]
            assert (answer.get_attribute("data-changed") == "1") == (expected["greedy"].strip() != expected["answer"])

            # Image reliance against the blank image: the stripes equal the hand-computed KL.
            bar = root.query_selector(".mmviz-reliance")
            assert bar.query_selector(".mmviz-reliance-baseline").input_value() == "blank"
            bar.query_selector(".mmviz-reliance-measure").click()
            root.wait_for_selector(".mmviz-reliance[data-baseline='blank']", timeout=120_000)
            stripes = {
                int(s.get_attribute("data-pos")): float(s.get_attribute("data-reliance"))
                for s in root.query_selector_all(".mmviz-tokens .mmviz-shaded")
            }
            assert sorted(stripes) == expected["positions"]
            for pos, kl in zip(expected["positions"], expected["hand_kl"], strict=True):
                assert stripes[pos] == pytest.approx(kl, abs=1e-4)
            colour, end = expected["positions"]
            assert stripes[colour] > 1 and stripes[end] < 1e-3  # the colour word reads the image; </s> does not
            ranked = [int(li.get_attribute("data-pos")) for li in bar.query_selector_all(".mmviz-reliance-list li")]
            assert ranked == [colour, end]
            assert "nats vs a blank grey image" in bar.query_selector(".mmviz-reliance-legend").text_content()

            # Closing the panel clears the strip's Δ bars (the reliance stripes stay).
            root.query_selector(".mmviz-tab[data-panel='interventions']").click()
            page.wait_for_function("(r) => r.querySelectorAll('.mmviz-tokens .mmviz-has-delta').length === 0", arg=root)
            assert len(root.query_selector_all(".mmviz-tokens .mmviz-shaded")) == len(expected["positions"])
            watch.assert_clean()
        finally:
            context.close()
