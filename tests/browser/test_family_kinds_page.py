"""One browser test per family kind that the other page tests do not cover: query-based (BLIP-2), tiles + a
global image (Idefics3) and cross-attention (Llama 3.2 Vision, whose image columns are cross-attention keys).
Grid (LLaVA-1.5) is in ``test_inspector_page.py``; anyres tiles (LLaVA-NeXT) and multi-image prompts in
``test_views_page.py``.

Each test reads the heat canvas back at every cell's box (original pixels) and compares it with Python's map.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import mmviz
from mmviz.adapters.layout import VIEWS
from tests.browser.conftest import heat_values, open_inspector
from tests.browser.test_views_page import answer_row, canvas_colours

PROMPT = "What is in the picture?"
ANSWER = "A red square."
WIDE = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (40, 1, 3)))


def test_query_based_maps_are_drawn_through_the_qformer_cells_and_labelled_indirect(page_watch, tmp_path):
    builder = pytest.importorskip("tests.families.build_gemma_blip")
    page, watch = page_watch
    model, processor = builder.build_blip2()
    trace = mmviz.trace(model, processor, WIDE, PROMPT, answer=ANSWER)
    soft = trace.layout.soft
    assert soft is not None and np.array_equal(trace.image_positions, soft.positions)
    cells = trace.attention(layer=trace.num_layers - 1, head="mean") @ soft.weights  # (rows, cells)
    row = answer_row(trace, cells, np.arange(len(soft)))
    open_inspector(page, mmviz.Inspector(trace), tmp_path)

    # The query tokens are tokens of their own (no box each); the caption names the indirect route.
    assert len(page.query_selector_all(".mmviz-token.mmviz-query")) == len(soft.positions)
    page.click(f'.mmviz-token[data-pos="{int(trace.query_positions[row])}"]')
    assert "indirect" in page.text_content(".mmviz-caption").lower()
    expected = cells[row]
    shown = heat_values(page, soft.boxes, WIDE.width)
    assert (shown["rgba"][:, 3] == 255).all(), "every ViT cell of the stretched image is painted"
    assert shown["range"] == pytest.approx(float(expected.max()), rel=0.02)
    assert np.abs(shown["values"] - expected).max() <= 3 * float(expected.max()) / 255
    assert int(np.argmax(shown["values"])) == int(np.argmax(expected)) or (
        expected[int(np.argmax(shown["values"]))] >= expected.max() - 3 * expected.max() / 255
    )
    watch.assert_clean()


def test_tiles_and_global_image_are_separate_layers_on_the_original(page_watch, tmp_path):
    builder = pytest.importorskip("tests.families.build_qwen_idefics")
    page, watch = page_watch
    model, processor = builder.build_idefics3()
    trace = mmviz.trace(model, processor, WIDE, PROMPT, answer=ANSWER)
    views = trace.layout.view[trace.image_positions]
    codes = sorted(set(views.tolist()))
    assert [VIEWS[c] for c in codes] == ["tile", "global"]
    maps = trace.attention(layer=trace.num_layers - 1, head="mean")
    tiles = np.flatnonzero(views == VIEWS.index("tile"))
    row = answer_row(trace, maps, tiles)
    open_inspector(page, mmviz.Inspector(trace), tmp_path)

    select = '.mmviz-view-select[data-image="0"]'
    assert page.eval_on_selector(select, "s => s.value") == str(VIEWS.index("tile")), "default: the finest view"
    page.click(f'.mmviz-token[data-pos="{int(trace.query_positions[row])}"]')
    for code in (VIEWS.index("tile"), VIEWS.index("global")):
        page.select_option(select, str(code))
        page.wait_for_selector(f'.mmviz-image[data-view="{VIEWS[code]}"]')
        columns = np.flatnonzero(views == code)
        boxes = trace.layout.boxes[trace.image_positions[columns]]
        expected = maps[row, columns]
        shown = heat_values(page, boxes, WIDE.width)
        assert (shown["rgba"][:, 3] == 255).all()
        assert shown["range"] == pytest.approx(float(expected.max()), rel=0.02), "scaled over the drawn view"
        assert np.abs(shown["values"] - expected).max() <= 3 * float(expected.max()) / 255
        assert len(canvas_colours(page) - {(0, 0, 0, 0)}) <= len(columns), "one view at a time"
    watch.assert_clean()


def test_cross_attention_maps_are_the_cross_layers_rows_over_the_tiles(page_watch, tmp_path):
    builder = pytest.importorskip("tests.families.build_mllama")
    page, watch = page_watch
    model, processor = builder.build_mllama()
    trace = mmviz.trace(model, processor, WIDE, PROMPT, answer=ANSWER)
    keys = trace.layout.keys
    assert keys is not None and len(trace.image_positions) > 0
    layer = builder.MLLAMA_CROSS_LAYERS[0]
    maps = trace.attention(layer=layer, head="mean")  # (rows, image keys): the cross layer's own rows
    row = answer_row(trace, maps, np.arange(len(trace.image_positions)))
    open_inspector(page, mmviz.Inspector(trace, layer=layer), tmp_path)

    # the <|image|> marker is a token of its own; the image keys are drawn as the tiles' patches
    page.hover(f'.mmviz-token[data-pos="{int(trace.query_positions[row])}"]')
    page.wait_for_function("() => document.querySelector('.mmviz-heat').dataset.row !== '-1'")
    expected = maps[row]
    shown = heat_values(page, keys.boxes[trace.image_positions], WIDE.width)
    assert (shown["rgba"][:, 3] == 255).all(), "every patch of the three real tiles is painted"
    assert shown["range"] == pytest.approx(float(expected.max()), rel=0.02)
    assert np.abs(shown["values"] - expected).max() <= 3 * float(expected.max()) / 255
    # the methods this family refuses are listed, disabled, with the reason
    rollout = page.query_selector('.mmviz-method option[value="rollout"]')
    assert rollout.text_content() == "Attention rollout (needs the image at sequence positions)"
    assert rollout.is_disabled()
    assert page.text_content(".mmviz-error") == ""
    watch.assert_clean()
