"""Every supported family's tiny model (tests/families, real processors) traced and shown in real Chromium: the
widget renders, hovering a token with a map paints the heatmap on the original image, and nothing errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import mmviz
from tests.browser.conftest import open_inspector
from tests.families.registry import cases

CASES = cases()
IMAGE = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (40, 1, 3)))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_every_family_renders_and_paints(page_watch, tmp_path, case):
    page, watch = page_watch
    model, processor = case.build()
    dual = case.kind == "dual"
    prompt, answer = ("a picture", None) if dual else ("What is in the picture?", "red")
    trace = mmviz.trace(model, processor, IMAGE, prompt, answer=answer)
    # the widget shows one view per image, the finest (most tokens): hover the row that attends to it most, at the
    # layer where it does (a row before a later view, or a sliding-window layer, cannot see that view at all)
    views = trace.layout.column_table.view[trace.image_positions]  # positions, or a cross family's keys
    codes, counts = np.unique(views, return_counts=True)
    shown = views == codes[np.argmax(counts)]
    attention = trace.attention(head="mean")[:, :, shown].max(axis=2)  # (layers, rows)
    layer, row = np.unravel_index(int(np.argmax(attention)), attention.shape)
    position = int(trace.query_positions[row])
    open_inspector(page, mmviz.Inspector(trace, layer=None if dual else int(trace.layers[layer])), tmp_path)
    page.wait_for_selector("canvas.mmviz-photo[data-loaded='1']")
    width = page.eval_on_selector("canvas.mmviz-photo", "c => c.width")
    height = page.eval_on_selector("canvas.mmviz-photo", "c => c.height")
    assert abs(width / height - IMAGE.width / IMAGE.height) < 0.05, "drawn at the ORIGINAL image's aspect ratio"
    if dual:  # the rows are the vision tower's own tokens (collapsed in the image chip): pin the first by keyboard
        page.focus(".mmviz-root")
        page.keyboard.press("ArrowRight")
    else:
        page.hover(f'.mmviz-token[data-pos="{position}"]')
    page.wait_for_function("() => document.querySelector('.mmviz-heat').dataset.row !== '-1'")
    painted = page.eval_on_selector(
        "canvas.mmviz-heat",
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0)",
    )
    assert painted
    badge = page.query_selector(".mmviz-title .mmviz-badge")  # a family without an adapter says its layout is measured
    assert (badge is not None and badge.text_content() == "layout measured") == case.measured
    assert page.text_content(".mmviz-error") == ""
    watch.assert_clean()
