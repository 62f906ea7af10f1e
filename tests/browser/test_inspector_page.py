"""The Inspector in real headless Chromium: pixels and DOM follow the attention Python computed."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from tests.browser.conftest import open_inspector

# Rec. 709 luminance: monotone along viridis, so brighter heatmap pixels mean larger values.
LUMA = np.array([0.2126, 0.7152, 0.0722])


@pytest.fixture(scope="module")
def inspector_576(llava_576, photo):
    model, processor = llava_576
    return mmviz.inspect(model, processor, photo, "What is in the picture?", answer="A red square above a circle.")


def clear_argmax_row(maps: np.ndarray, rows: np.ndarray) -> int:
    """A row (among ``rows``) whose largest value beats the runner-up by more than two quantisation steps."""
    for row in rows:
        top = np.sort(maps[row])[::-1]
        if top[0] - top[1] > 2 * (top[0] - top[-1]) / 255:
            return int(row)
    raise AssertionError("no row with a clear maximum")


def heat_pixels(page, boxes: np.ndarray, width: int) -> np.ndarray:
    """RGBA of the heat canvas at the centre of every box (boxes in original pixels)."""
    centres = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in boxes.tolist()]
    return np.array(
        page.evaluate(
            """([centres, width]) => {
                const canvas = document.querySelector('.mmviz-heat');
                const scale = canvas.width / width;
                const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                return centres.map(([x, y]) => {
                    const i = (Math.floor(y * scale) * canvas.width + Math.floor(x * scale)) * 4;
                    return [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
                });
            }""",
            [centres, width],
        )
    )


def hover_token(page, position: int) -> None:
    page.hover(f'.mmviz-token[data-pos="{position}"]')
    page.wait_for_selector(f'.mmviz-root[data-focus="{position}"]')


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float)  # noqa: E731
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def test_hovering_a_token_paints_its_attention_where_python_puts_it(page_watch, inspector_576, tmp_path):
    page, watch = page_watch
    trace = inspector_576.trace
    layer = trace.num_layers - 1
    maps = trace.attention(layer=layer, head="mean")
    answer_rows = np.flatnonzero(trace.query_positions >= trace.answer_start)
    row = clear_argmax_row(maps, answer_rows)
    position = int(trace.query_positions[row])
    open_inspector(page, inspector_576, tmp_path)
    hover_token(page, position)

    boxes = trace.layout.boxes[trace.image_positions]
    pixels = heat_pixels(page, boxes, trace.images[0].width)
    assert (pixels[:, 3] == 255).all(), "every image token's box is painted, opaquely"
    luminance = pixels[:, :3] @ LUMA
    assert luminance.argmax() == maps[row].argmax(), "brightest patch is where Python's argmax is"
    assert spearman(luminance, maps[row]) > 0.97
    legend_max = float(page.text_content(".mmviz-legend-max"))
    assert legend_max == pytest.approx(maps[row].max(), rel=0.01)
    # Outside the centre crop nothing is painted (those pixels reach no token).
    x0 = trace.layout.images[0].covered[0]
    outside = heat_pixels(page, np.array([[0, 40, x0 - 2, 50]]), trace.images[0].width)
    assert outside[0, 3] == 0
    watch.assert_clean()


def test_hovering_a_patch_tints_tokens_by_the_attention_they_pay_it(page_watch, inspector_576, tmp_path):
    page, watch = page_watch
    trace = inspector_576.trace
    maps = trace.attention(layer=trace.num_layers - 1, head="mean")  # (rows, patches)
    column = int(np.argmax(maps.max(axis=0) - np.median(maps, axis=0)))
    open_inspector(page, inspector_576, tmp_path)
    box = trace.layout.boxes[trace.image_positions[column]]
    canvas = page.query_selector(".mmviz-heat").bounding_box()
    scale = canvas["width"] / trace.images[0].width
    centre_x, centre_y = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    page.mouse.move(canvas["x"] + centre_x * scale, canvas["y"] + centre_y * scale)
    page.wait_for_selector(f'.mmviz-root[data-patch="{column}"]')

    tinted = page.eval_on_selector_all(
        ".mmviz-token.mmviz-tinted",
        "spans => spans.map(s => [+s.dataset.pos, +s.dataset.value, getComputedStyle(s).backgroundColor])",
    )
    values = {position: value for position, value, _ in tinted}
    expected = {int(p): float(maps[r, column]) for r, p in enumerate(trace.query_positions)}
    assert set(values) == set(expected), "every token with an attention row is tinted"
    step = float(maps[:, column].max()) / 255
    for position, value in values.items():
        assert value == pytest.approx(expected[position], abs=step)
    colours = {p: np.array([float(v) for v in c[c.index("(") + 1 : -1].split(",")[:3]]) for p, _, c in tinted}
    strongest = max(expected, key=expected.get)
    assert max(colours, key=lambda p: colours[p] @ LUMA) == strongest
    watch.assert_clean()


def test_click_pins_and_click_again_or_escape_unpins(page_watch, small_trace, tmp_path):
    page, watch = page_watch
    open_inspector(page, mmviz.Inspector(small_trace), tmp_path)
    first, second = (int(p) for p in small_trace.query_positions[-2:])
    page.click(f'.mmviz-token[data-pos="{first}"]')
    page.hover(f'.mmviz-token[data-pos="{second}"]')
    page.wait_for_timeout(50)
    assert page.get_attribute(".mmviz-root", "data-focus") == str(first), "a pin outlives hovering elsewhere"
    assert "mmviz-pinned" in page.get_attribute(f'.mmviz-token[data-pos="{first}"]', "class")
    page.click(f'.mmviz-token[data-pos="{first}"]')
    page.mouse.move(0, 0)
    page.wait_for_selector('.mmviz-root[data-focus="-1"]')
    page.click(f'.mmviz-token[data-pos="{second}"]')
    page.mouse.move(0, 0)
    page.wait_for_selector(f'.mmviz-root[data-focus="{second}"]')
    page.keyboard.press("Escape")
    page.wait_for_selector('.mmviz-root[data-focus="-1"]')
    page.wait_for_function("() => window.mmvizView.model.get('pinned') === -1")  # debounced sync to the model
    watch.assert_clean()


def test_layer_and_head_selectors_change_the_map(page_watch, inspector_576, tmp_path):
    page, watch = page_watch
    trace = inspector_576.trace
    everything = trace.attention()  # (L, H, Q, P)
    answer_rows = np.flatnonzero(trace.query_positions >= trace.answer_start)
    row = clear_argmax_row(everything[0, 1], answer_rows)
    position = int(trace.query_positions[row])
    open_inspector(page, inspector_576, tmp_path)
    page.click(f'.mmviz-token[data-pos="{position}"]')  # pin, so the mouse can go to the controls
    page.eval_on_selector(
        ".mmviz-layer", "el => { el.value = '0'; el.dispatchEvent(new Event('input', {bubbles: true})); }"
    )
    page.select_option(".mmviz-head", "1")
    page.wait_for_selector('.mmviz-root[data-layer="0"][data-head="1"]')
    boxes = trace.layout.boxes[trace.image_positions]
    luminance = heat_pixels(page, boxes, trace.images[0].width)[:, :3] @ LUMA
    assert luminance.argmax() == everything[0, 1, row].argmax()
    assert spearman(luminance, everything[0, 1, row]) > 0.97
    synced = "() => window.mmvizView.model.get('layer') === 0 && window.mmvizView.model.get('head') === 1"
    page.wait_for_function(synced)  # the choice reaches the model (debounced)
    watch.assert_clean()


def test_a_page_exported_without_a_layers_heads_says_so(page_watch, small_trace, tmp_path):
    page, watch = page_watch
    path = tmp_path / "inspector.html"
    mmviz.Inspector(small_trace).to_html(path, heads=[0])
    page.goto(path.as_uri())
    page.wait_for_selector(".mmviz-root[data-ready='1']", timeout=15_000)
    answer = int(small_trace.answer_start)
    page.click(f'.mmviz-token[data-pos="{answer}"]')
    page.select_option(".mmviz-head", "1")  # at the last layer, which the page does not carry
    page.wait_for_function(
        "() => document.querySelector('.mmviz-caption').textContent.includes('are not available')", timeout=15_000
    )
    caption = page.text_content(".mmviz-caption")
    assert (
        f"the heads of layer {small_trace.num_layers - 1} are not available" in caption and "to_html(heads=" in caption
    )
    page.eval_on_selector(
        ".mmviz-layer", "el => { el.value = '0'; el.dispatchEvent(new Event('input', {bubbles: true})); }"
    )
    page.wait_for_function("() => !document.querySelector('.mmviz-caption').textContent.includes('not available')")
    watch.assert_clean()


def hostile_strings(count: int) -> list[str]:
    """``count`` token strings that would run script, inject markup or confuse layout if rendered as HTML."""
    templates = [
        "<img src=x onerror=window.__pwned={i}>",
        "</script><script>window.__pwned={i}</script>",
        '"><svg onload=window.__pwned={i}>',
        "<iframe src=javascript:window.__pwned={i}></iframe>",
        "<a href=javascript:window.__pwned={i}>x</a>",
        "<body onload=window.__pwned={i}>",
        "<style>*{{display:none}}</style>{i}",
        "<details open ontoggle=window.__pwned={i}>",
        "\u202eevil{i}\u202c",
        "\u200f\u200ertl {i}",
        "{{{{constructor.constructor('window.__pwned={i}')()}}}}",
        "&lt;b&gt;{i}&amp;",
        "x" * 400 + "{i}",
        "\n\t{i}\r",
    ]
    return [templates[i % len(templates)].format(i=i) for i in range(count)]


def test_hundreds_of_hostile_token_strings_render_as_inert_text(page_watch, llava_small, photo, tmp_path):
    page, watch = page_watch
    model, processor = llava_small
    trace = mmviz.trace(model, processor, photo, "word " * 150, answer="A red square " * 20)
    inspector = mmviz.Inspector(trace)
    text = [p for p in range(len(trace.tokens)) if trace.layout.kinds[p] != 2]
    hostile = hostile_strings(len(text))
    assert len(hostile) >= 300
    tokens = list(inspector.tokens)
    for position, string in zip(text, hostile, strict=True):
        tokens[position] = string
    inspector.tokens = tokens
    lens = inspector.extra("lens")
    lens["vocab"] = hostile_strings(len(lens["vocab"]))  # what the lens panel shows, too
    open_inspector(page, inspector, tmp_path)
    shown = page.eval_on_selector_all(".mmviz-token", "ts => ts.map(t => [+t.dataset.pos, t.textContent])")
    by_position = dict(shown)
    for position, string in zip(text, hostile, strict=True):
        assert by_position[position] == string.replace("\n", "↵").replace("\r", "↵").replace("\t", "⇥")
    # Hover, pin, open the lens on many of them: nothing they say ever becomes markup or runs.
    for position in text[::25]:
        page.hover(f'.mmviz-token[data-pos="{position}"]')
    page.click('.mmviz-tab[data-panel="lens"]')
    page.click(f'.mmviz-token[data-pos="{text[-2]}"]')
    page.wait_for_selector("tr.mmviz-lens-row")
    cells = page.eval_on_selector_all(".mmviz-lens-token", "cs => cs.map(c => c.textContent)")
    assert set(cells) <= set(lens["vocab"]) and cells
    assert page.evaluate("() => window.__pwned === undefined")
    injected = ", ".join(f".mmviz-root {tag}" for tag in ("img", "svg", "script", "iframe", "a", "style", "details"))
    assert page.query_selector(injected) is None
    watch.assert_clean()


def test_a_trace_loaded_from_a_file_renders_and_hovers_without_its_model(page_watch, photo, tmp_path):
    """The model is deleted before the file is read: the page comes from the file alone, and the brightest patch
    under a hovered token is where the saved trace's own attention is largest."""
    import gc
    import weakref

    model, processor = mmviz.zoo.tiny_llava(image_size=112, patch_size=14, num_layers=2, seed=7)
    saved = mmviz.trace(model, processor, photo, "What is it?", answer="A red square.", methods=["relevancy"])
    path = saved.save(tmp_path / "saved.mmviz")
    gone = weakref.ref(model)
    del model, processor, saved
    gc.collect()
    assert gone() is None, "the model is really gone"

    loaded = mmviz.load(path)
    page, watch = page_watch
    inspector = mmviz.inspect(loaded)
    maps = loaded.attention(layer=loaded.num_layers - 1, head="mean")
    row = clear_argmax_row(maps, np.flatnonzero(loaded.query_positions >= loaded.answer_start))
    open_inspector(page, inspector, tmp_path)
    hover_token(page, int(loaded.query_positions[row]))
    pixels = heat_pixels(page, loaded.layout.boxes[loaded.image_positions], loaded.images[0].width)
    assert (pixels[:, 3] == 255).all()
    assert (pixels[:, :3] @ LUMA).argmax() == maps[row].argmax()
    page.select_option(".mmviz-method", "relevancy")  # the saved map, shown without recomputing
    page.wait_for_selector(".mmviz-root[data-method='relevancy']")
    options = dict(page.eval_on_selector_all(".mmviz-method option", "os => os.map(o => [o.value, o.textContent])"))
    assert options["integrated_gradients"].endswith("(needs the model)"), "what needs the model says so"
    assert options["attention_max"].endswith("(not computed)") and options["relevancy"] == "Relevancy (Chefer)"
    watch.assert_clean()
