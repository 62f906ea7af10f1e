"""The method switcher in real headless Chromium: every method's map is painted where Python puts it.

For each method of ``mmviz.methods.CATALOGUE`` a tiny-LLaVA trace is made with that map precomputed, exported with
``Inspector.to_html()`` and opened; the test switches to the method, hovers an answer token and reads the heat
canvas back into values through the page's own colour maps (viridis for non-negative maps over ``[0, max]``, the
diverging map for signed ones over ``[-r, r]`` with ``r = max |value|``), then compares them with
``trace.maps[name].row(position, layer)``. The compute-on-request path needs a kernel, which an exported page does
not have; it is unit-tested in ``js/test/compute.test.ts``.
"""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from mmviz.methods import CATALOGUE
from mmviz.widget.inspector import MAP_DESCRIPTION
from tests.browser.conftest import heat_values, open_inspector

PROMPT = "What is in the picture?"
ANSWER = "A red square."


@pytest.fixture(scope="module")
def traces(llava_small, photo):
    """One trace per method (built on first use), each with only that method's map precomputed."""
    model, processor = llava_small
    cache: dict[str, mmviz.Trace] = {}

    def get(name: str) -> mmviz.Trace:
        if name not in cache:
            cache[name] = mmviz.trace(model, processor, photo, PROMPT, answer=ANSWER, methods=[name])
        return cache[name]

    return get


def pick_row(result, candidates: np.ndarray) -> tuple[int | None, int]:
    """A (layer, position) whose row is not flat, preferring the last layer (per-layer maps; None for the others)
    and a row whose extreme is clear of the runner-up (block-wise maps such as occlusion have tied cells)."""
    layers = [None] if result.layers is None else [int(v) for v in result.layers[::-1] if v >= 0]
    best, best_gap = None, -1.0
    for layer in layers:
        for position in candidates:
            row = result.row(int(position), layer)
            magnitude = np.abs(row) if result.signed else row
            top = np.sort(magnitude)[::-1]
            if not top[0] > 0 or np.ptp(row) == 0:
                continue
            gap = (top[0] - top[1]) / np.ptp(row)
            if gap > 4 / 255:
                return layer, int(position)
            if gap > best_gap:
                best, best_gap = (layer, int(position)), gap
        if best is not None:
            return best
    raise AssertionError("every row is flat")


def hover_token(page, position: int) -> None:
    page.hover(f'.mmviz-token[data-pos="{position}"]')
    page.wait_for_selector(f'.mmviz-root[data-focus="{position}"]')


def select_method(page, name: str) -> None:
    page.select_option(".mmviz-method", name)
    page.wait_for_selector(f'.mmviz-root[data-method="{name}"]')


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_switching_to_a_method_paints_its_map_where_python_puts_it(page_watch, traces, tmp_path, name):
    page, watch = page_watch
    trace = traces(name)
    result = trace.maps[name]
    spec = CATALOGUE[name]
    answer_rows = result.positions[result.positions >= trace.answer_start]
    layer, position = pick_row(result, answer_rows)
    inspector = mmviz.Inspector(trace, layer=layer)
    expected = result.row(position, layer)
    boxes = trace.layout.boxes[trace.image_positions]
    width = trace.images[0].width

    open_inspector(page, inspector, tmp_path)
    options = page.eval_on_selector_all(
        ".mmviz-method option", "os => os.map(o => [o.value, o.dataset.computed, o.disabled, o.textContent])"
    )
    assert [value for value, *_ in options] == list(CATALOGUE), "the switcher lists the catalogue in order"
    state = {value: (computed, disabled, text) for value, computed, disabled, text in options}
    assert state[name][:2] == ("1", False) and state["attention"][:2] == ("1", False)
    for other, (computed, disabled, text) in state.items():
        if other not in (name, "attention"):
            # An exported page has no kernel: what was not computed before export cannot be picked.
            assert (computed, disabled) == ("0", True) and "(not computed)" in text, other

    hover_token(page, position)
    attention_pixels = heat_values(page, boxes, width)["rgba"]
    attention_scale = page.text_content(".mmviz-legend-max")
    select_method(page, name)
    page.wait_for_selector(f'.mmviz-heat[data-method="{name}"][data-row]:not([data-row="-1"])')
    shown = heat_values(page, boxes, width)
    assert (shown["rgba"][:, 3] == 255).all(), "every image token's box is painted, opaquely"
    assert shown["signed"] == result.signed
    if name != "attention":
        # Masking a text sink rescales every image cell of a row alike, so its picture may keep its colours
        # and only the scale moves.
        changed = not np.array_equal(shown["rgba"], attention_pixels)
        assert changed or page.text_content(".mmviz-legend-max") != attention_scale, "the map differs from attention"

    # The colours decode back to Python's values (two colour steps + one quantisation step of the row's range).
    span = float(np.abs(expected).max()) if result.signed else float(expected.max())
    tolerance = 3 * span / 254 + np.ptp(expected) / 255
    assert shown["range"] == pytest.approx(span, rel=0.02)
    assert np.abs(shown["values"] - expected).max() <= tolerance
    # The extreme cell on screen is where Python's extreme is (up to ties within the tolerance).
    assert expected[shown["values"].argmax()] >= expected.max() - tolerance, "brightest / most orange cell"
    if result.signed:
        assert expected[shown["values"].argmin()] <= expected.min() + tolerance, "most purple cell"
        assert page.text_content(".mmviz-legend-min").startswith("-")
        assert float(page.text_content(".mmviz-legend-min")) == pytest.approx(-span, rel=0.01)
    else:
        assert page.text_content(".mmviz-legend-min") == "0"
    assert float(page.text_content(".mmviz-legend-max")) == pytest.approx(span, rel=0.01)

    caption = page.text_content(".mmviz-caption")
    assert (MAP_DESCRIPTION if name == "attention" else spec.meaning) in caption
    if name != "attention":
        assert caption.startswith(f"{spec.label} of ")
        assert page.text_content(".mmviz-legend-label") == spec.label

    # Tokens without a row: no heatmap, and the caption says which tokens have one.
    has_row = page.eval_on_selector_all(".mmviz-token.mmviz-has-row", "ss => ss.map(s => +s.dataset.pos)")
    assert sorted(has_row) == sorted(int(p) for p in result.positions if p < len(trace.tokens))
    without = [int(p) for p in trace.query_positions if int(p) not in set(result.positions.tolist())]
    if result.rows == "queries":
        assert not without, "attention maps and rollout describe every token with a query row"
    else:
        hover_token(page, without[-1])
        page.wait_for_selector('.mmviz-heat[data-row="-1"]')
        assert (heat_values(page, boxes, width)["rgba"][:, 3] == 0).all(), "no heatmap for a token without a row"
        caption = page.text_content(".mmviz-caption")
        assert f"{spec.label} explains answer tokens; hover one of the highlighted tokens" in caption
    watch.assert_clean()


def test_signed_maps_use_the_diverging_map_centred_at_zero(page_watch, traces, tmp_path):
    page, watch = page_watch
    trace = traces("gradient_x_input")
    result = trace.maps["gradient_x_input"]
    open_inspector(page, mmviz.Inspector(trace), tmp_path)
    select_method(page, "gradient_x_input")
    position = int(result.positions[-1])
    hover_token(page, position)
    boxes = trace.layout.boxes[trace.image_positions]
    shown = heat_values(page, boxes, trace.images[0].width)
    expected = result.row(position)
    lut = np.array(page.evaluate("() => window.mmvizView.colormaps.diverging")).reshape(-1, 3)
    centre = lut[len(lut) // 2]
    assert centre.min() > 240, "0 is (near) white"
    positive, negative = expected > 0, expected < 0
    assert positive.any() and negative.any()
    rgb = shown["rgba"][:, :3].astype(float)
    # Orange (red > blue) for positive values, purple (blue > green) for negative ones, for clear values.
    clear = np.abs(expected) > 0.25 * np.abs(expected).max()
    assert (rgb[positive & clear, 0] > rgb[positive & clear, 2]).all()
    assert (rgb[negative & clear, 2] > rgb[negative & clear, 1]).all()
    bar = page.eval_on_selector(".mmviz-legend-bar", "b => b.style.backgroundImage")
    assert bar.startswith("linear-gradient") and "rgb(247, 247, 247) 50%" in bar, "the legend shows the diverging map"
    watch.assert_clean()


def test_layered_maps_follow_the_layer_slider(page_watch, traces, tmp_path):
    page, watch = page_watch
    trace = traces("grad_cam")
    result = trace.maps["grad_cam"]
    inspector = mmviz.Inspector(trace)
    open_inspector(page, inspector, tmp_path)
    select_method(page, "grad_cam")
    boxes = trace.layout.boxes[trace.image_positions]
    position = int(result.positions[-1])
    page.click(f'.mmviz-token[data-pos="{position}"]')  # pin, so the mouse can go to the controls
    assert page.is_disabled(".mmviz-head"), "heads apply to attention only"
    assert not page.is_disabled(".mmviz-layer")
    for layer in result.layers.tolist():
        page.eval_on_selector(
            ".mmviz-layer",
            "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true})); }",
            layer,
        )
        page.wait_for_selector(f'.mmviz-heat[data-layer="{layer}"]')
        expected = result.row(position, layer)
        if not expected.max() > 0:
            continue
        shown = heat_values(page, boxes, trace.images[0].width)
        assert np.abs(shown["values"] - expected).max() <= 3 * expected.max() / 254 + np.ptp(expected) / 255
        assert f"layer {layer}" in page.text_content(".mmviz-caption")
    watch.assert_clean()


def test_a_non_layered_method_disables_the_layer_and_head_controls(page_watch, traces, tmp_path):
    page, watch = page_watch
    trace = traces("relevancy")
    open_inspector(page, mmviz.Inspector(trace), tmp_path)
    select_method(page, "relevancy")
    assert page.is_disabled(".mmviz-layer") and page.is_disabled(".mmviz-head")
    select_method(page, "attention")
    assert not page.is_disabled(".mmviz-layer") and not page.is_disabled(".mmviz-head")
    # The choice is synced to the model (debounced), like layer and head.
    page.wait_for_function("() => window.mmvizView.model.get('method') === 'attention'")
    select_method(page, "relevancy")
    page.wait_for_function("() => window.mmvizView.model.get('method') === 'relevancy'")
    watch.assert_clean()


def test_hovering_a_patch_tints_the_tokens_with_the_methods_values(page_watch, traces, tmp_path):
    page, watch = page_watch
    trace = traces("occlusion")
    result = trace.maps["occlusion"]
    open_inspector(page, mmviz.Inspector(trace), tmp_path)
    select_method(page, "occlusion")
    column = int(np.argmax(np.abs(result.values).max(axis=0)))
    box = trace.layout.boxes[trace.image_positions[column]]
    canvas = page.query_selector(".mmviz-heat").bounding_box()
    scale = canvas["width"] / trace.images[0].width
    page.mouse.move(canvas["x"] + float(box[0] + box[2]) / 2 * scale, canvas["y"] + float(box[1] + box[3]) / 2 * scale)
    page.wait_for_selector(f'.mmviz-root[data-patch="{column}"]')
    tinted = page.eval_on_selector_all(
        ".mmviz-token.mmviz-tinted", "spans => spans.map(s => [+s.dataset.pos, +s.dataset.value])"
    )
    values = dict(tinted)
    assert set(values) == {int(p) for p in result.positions}, "exactly the tokens with an occlusion row are tinted"
    step = float(np.ptp(result.values)) / 255
    for r, position in enumerate(result.positions):
        assert values[int(position)] == pytest.approx(float(result.values[r, column]), abs=step)
    watch.assert_clean()
