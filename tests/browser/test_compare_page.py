"""The comparison widget in real headless Chromium: two linked Inspector panes and the A − B map, exported with
``ComparisonWidget.to_html``. Hover follows both ways, the layer scrubbers drive each other (by relative depth when
the depths differ), and the A − B pixels read back through the page's own diverging map are Python's numbers."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
import mmviz.plots
from mmviz.evaluation.comparison import position_links

PROMPT = "What is in the picture?"

_DIFF_VALUES_JS = """(cells) => {
    const canvas = document.querySelector('.mmviz-diff-heat');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const range = +canvas.dataset.range;
    const lut = window.mmvizView.colormaps.diverging;
    const n = lut.length / 3;
    return cells.map(([rx, ry]) => {
        const i = (Math.floor(ry * canvas.height) * canvas.width + Math.floor(rx * canvas.width)) * 4;
        const [r, g, b, a] = [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
        if (a !== 255) return null;
        let best = 0, bestD = Infinity;
        for (let k = 0; k < n; k++) {
            const d = (lut[3 * k] - r) ** 2 + (lut[3 * k + 1] - g) ** 2 + (lut[3 * k + 2] - b) ** 2;
            if (d < bestD) { bestD = d; best = k; }
        }
        return (best / ((n - 1) / 2) - 1) * range;
    });
}"""


@pytest.fixture(scope="module")
def comparison(llava_small, photo):
    model, processor = llava_small
    a = mmviz.trace(model, processor, photo, PROMPT, answer="A red square.")
    b = mmviz.trace(model, processor, photo, "What color is the triangle?", answer="A blue square.")
    return mmviz.compare(a, b)


def open_comparison(page, comparison, tmp_path, name="comparison.html"):
    path = tmp_path / name
    mmviz.ComparisonWidget(comparison).to_html(path, plots=[mmviz.plots.divergence(comparison)])
    page.goto(path.as_uri())
    page.wait_for_selector('.mmviz-comparison[data-ready="1"]', timeout=15_000)
    page.wait_for_selector('.mmviz-pane[data-side="b"][data-ready="1"]', timeout=15_000)
    return page


def pane(page, side: str, key: str) -> str:
    return page.get_attribute(f'.mmviz-pane[data-side="{side}"]', f"data-{key}")


def hover_patch(page, side: str, trace, column: int) -> None:
    box = trace.layout.boxes[trace.image_positions[column]]
    canvas = page.query_selector(f'.mmviz-pane[data-side="{side}"] .mmviz-heat').bounding_box()
    scale = canvas["width"] / trace.images[0].width
    page.mouse.move(canvas["x"] + float(box[0] + box[2]) / 2 * scale, canvas["y"] + float(box[1] + box[3]) / 2 * scale)
    page.wait_for_selector(f'.mmviz-pane[data-side="{side}"][data-patch="{column}"]')


def test_hovering_a_token_in_either_pane_focuses_its_partner_in_the_other(page_watch, comparison, tmp_path):
    page, watch = page_watch
    a, b = comparison.a, comparison.b
    open_comparison(page, comparison, tmp_path)
    links_a, links_b = position_links(a, b, comparison.pairs), position_links(b, a, [])
    for pair in comparison.pairs[:3]:
        query = pair.position_a - 1  # attention: the row that predicts the paired token
        page.hover(f'.mmviz-pane[data-side="a"] .mmviz-token[data-pos="{query}"]')
        page.wait_for_selector(f'.mmviz-pane[data-side="a"][data-focus="{query}"]')
        assert int(pane(page, "b", "focus")) == links_a[query] == pair.position_b - 1
        assert page.get_attribute(".mmviz-comparison", "data-pair") == str(pair.index)
    # From B to A: B's answer tokens lead A's.
    pair = comparison.pairs[-1]
    page.hover(f'.mmviz-pane[data-side="b"] .mmviz-token[data-pos="{pair.position_b}"]')
    page.wait_for_selector(f'.mmviz-pane[data-side="b"][data-focus="{pair.position_b}"]')
    assert int(pane(page, "a", "focus")) == pair.position_a
    what = b.tokens.index("What")
    page.hover(f'.mmviz-pane[data-side="b"] .mmviz-token[data-pos="{what}"]')
    page.wait_for_selector(f'.mmviz-pane[data-side="b"][data-focus="{what}"]')
    assert a.tokens[int(pane(page, "a", "focus"))] == "What"
    assert links_b[what] >= 0
    # Click pins in both; Esc unpins both.
    page.click(f'.mmviz-pane[data-side="a"] .mmviz-token[data-pos="{pair.position_a}"]')
    assert pane(page, "b", "pinned") == str(pair.position_b)
    page.keyboard.press("Escape")
    page.wait_for_selector('.mmviz-pane[data-side="b"][data-pinned="-1"]')
    watch.assert_clean()


def test_hovering_a_patch_in_either_pane_focuses_the_same_pixels_in_the_other(page_watch, comparison, tmp_path):
    page, watch = page_watch
    a, b = comparison.a, comparison.b
    open_comparison(page, comparison, tmp_path)
    for column in (0, 5, 15):  # one model, one image: the same pixels are the same column
        hover_patch(page, "a", a, column)
        assert pane(page, "b", "patch") == str(column)
        outlined = int(page.get_attribute(".mmviz-diff-outline", "data-cell"))
        x0, y0, x1, y1 = a.layout.boxes[a.image_positions[column]]
        rows, cols = comparison.grid_shape[0]
        centre = (int((y0 + y1) / 2 / a.images[0].height * rows), int((x0 + x1) / 2 / a.images[0].width * cols))
        assert divmod(outlined, cols) == centre, "the A − B map outlines the cell under the patch"
    hover_patch(page, "b", b, 9)
    assert pane(page, "a", "patch") == "9"
    # Hovering the A − B map focuses the patch under it in both panes.
    stack = page.query_selector(".mmviz-diff-heat").bounding_box()
    x0, y0, x1, y1 = (float(v) for v in a.layout.boxes[a.image_positions[6]])
    width, height = a.images[0].size
    page.mouse.move(
        stack["x"] + (x0 + x1) / 2 / width * stack["width"], stack["y"] + (y0 + y1) / 2 / height * stack["height"]
    )
    page.wait_for_selector('.mmviz-pane[data-side="a"][data-patch="6"]')
    assert pane(page, "b", "patch") == "6"
    watch.assert_clean()


def test_the_a_minus_b_map_paints_pythons_difference(page_watch, comparison, tmp_path):
    page, watch = page_watch
    a = comparison.a
    open_comparison(page, comparison, tmp_path)
    assert page.get_attribute(".mmviz-diff-heat", "data-pair") == "-1", "nothing focused: nothing drawn"
    # The most divergent pair at the last layer is listed first; clicking it pins it in both panes.
    last = a.num_layers - 1
    top = comparison.most_divergent("attention", n=1, layer=last)[0]
    page.click(".mmviz-divergent-pair >> nth=0")
    page.wait_for_selector(f'.mmviz-comparison[data-pair="{top["pair"]}"]')
    assert pane(page, "a", "pinned") == str(top["position_a"] - 1)
    assert pane(page, "b", "pinned") == str(top["position_b"] - 1)
    for layer in (last, 0, "mean"):
        if layer != last:
            value = "0" if layer == 0 else None
            if value is None:
                page.click('.mmviz-pane[data-side="a"] .mmviz-all-layers')
            else:
                page.eval_on_selector(
                    '.mmviz-pane[data-side="a"] .mmviz-layer',
                    "el => { el.value = '0'; el.dispatchEvent(new Event('input', {bubbles: true})); }",
                )
            page.wait_for_selector(f'.mmviz-comparison[data-layer-a="{layer}"]')
        (expected,) = comparison.difference("attention", layer=layer, pair=top["pair"])
        rows, cols = expected.shape
        cells = [[(j + 0.5) / cols, (i + 0.5) / rows] for i in range(rows) for j in range(cols)]
        shown = np.array([np.nan if v is None else v for v in page.evaluate(_DIFF_VALUES_JS, cells)]).reshape(
            rows, cols
        )
        shared = comparison.shared.reshape(rows, cols)
        assert np.isnan(shown[~shared]).all(), "cells not both traces read stay transparent"
        range_ = float(page.get_attribute(".mmviz-diff-heat", "data-range"))
        assert range_ == pytest.approx(np.nanmax(np.abs(expected)), rel=1e-2)
        step = range_ / 127
        np.testing.assert_allclose(shown[shared], expected[shared], atol=1.5 * step)
        assert (
            np.sign(shown[shared][np.abs(expected[shared]) > 3 * step]).tolist()
            == np.sign(expected[shared][np.abs(expected[shared]) > 3 * step]).tolist()
        ), "purple where A puts more, orange where B does"
    watch.assert_clean()


def test_the_layer_scrubber_drives_both_panes_by_relative_depth(page_watch, llava_small, photo, tmp_path):
    page, watch = page_watch
    model, processor = llava_small
    deeper, deeper_processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=5, seed=2)
    a = mmviz.trace(model, processor, photo, PROMPT, answer="A red square.")
    b = mmviz.trace(deeper, deeper_processor, photo, PROMPT, answer="A red square.")
    comparison = mmviz.compare(a, b)
    assert comparison.methods["attention"].layers_b.tolist() == [0, 2, 4]
    open_comparison(page, comparison, tmp_path, "depths.html")
    set_layer = "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true})); }"
    for layer_a, layer_b in ((0, 0), (1, 2), (2, 4)):
        page.eval_on_selector('.mmviz-pane[data-side="a"] .mmviz-layer', set_layer, layer_a)
        page.wait_for_selector(f'.mmviz-pane[data-side="a"][data-layer="{layer_a}"]')
        assert pane(page, "b", "layer") == str(layer_b)
    for layer_b, layer_a in ((1, 1), (3, 2)):  # B drives A: the nearest relative depth, halves up (½ → 1, 1½ → 2)
        page.eval_on_selector('.mmviz-pane[data-side="b"] .mmviz-layer', set_layer, layer_b)
        page.wait_for_selector(f'.mmviz-pane[data-side="b"][data-layer="{layer_b}"]')
        assert pane(page, "a", "layer") == str(layer_a)
    # A click on a layer in the exported divergence plot moves the panes (window.mmvizView.setLayer).
    page.evaluate("() => window.mmvizView.setLayer(1)")
    page.wait_for_selector('.mmviz-pane[data-side="a"][data-layer="1"]')
    assert pane(page, "b", "layer") == "2"
    assert page.query_selector(".mmviz-plots .bk-Figure, .mmviz-plots div") is not None
    watch.assert_clean()
