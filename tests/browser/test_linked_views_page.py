"""The linked views in real headless Chromium: overview grid, layer scrubber, lens and projection panels, colour
scale and opacity, patch tooltip, word merging, keyboard, dark mode and resizing. Pixels are read back through
the page's own colour maps and compared with Python's numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mmviz
from mmviz.methods import image_share, logit_lens, projection
from tests.browser.conftest import heat_values, open_inspector

PROMPT = "What is in the picture?"
ANSWER = "A red square."


@pytest.fixture(scope="module")
def inspector(photo):
    model, processor = mmviz.zoo.tiny_llava(image_size=112, patch_size=14, num_layers=4, seed=3)
    return mmviz.inspect(model, processor, photo, PROMPT, answer=ANSWER)


def grid_values(page) -> np.ndarray:
    """The overview's cells read back through viridis: ``(L, H)`` values (NaN where a cell is not coloured)."""
    values = page.evaluate(
        """() => {
            const canvas = document.querySelector('.mmviz-overview-grid');
            const cell = +canvas.dataset.cell;
            const range = +document.querySelector('.mmviz-overview').dataset.range;
            const lut = window.mmvizView.colormaps.viridis;
            const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const out = [];
            for (let y = cell / 2; y < canvas.height; y += cell) {
                const row = [];
                for (let x = cell / 2; x < canvas.width; x += cell) {
                    const i = (Math.floor(y) * canvas.width + Math.floor(x)) * 4;
                    let best = -1, bestD = 30;
                    for (let k = 0; k < 256; k++) {
                        const d = Math.abs(lut[3 * k] - px[i]) + Math.abs(lut[3 * k + 1] - px[i + 1])
                            + Math.abs(lut[3 * k + 2] - px[i + 2]);
                        if (d < bestD) { bestD = d; best = k; }
                    }
                    row.push(best < 0 ? null : (best / 255) * range);
                }
                out.push(row);
            }
            return out;
        }"""
    )
    return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)


def pin(page, position: int) -> None:
    page.click(f'.mmviz-token[data-pos="{position}"]')
    page.wait_for_selector(f'.mmviz-root[data-focus="{position}"]')


def cell_centre(page, layer: int, head: int) -> tuple[float, float]:
    box = page.query_selector(".mmviz-overview-grid").bounding_box()
    cell = float(page.get_attribute(".mmviz-overview-grid", "data-cell"))
    return box["x"] + (head + 0.5) * cell, box["y"] + (layer + 0.5) * cell


def shown_map(page, trace) -> np.ndarray:
    return heat_values(page, trace.layout.boxes[trace.image_positions], trace.images[0].width)["values"]


def hover_patch(page, trace, column: int, stack: str = ".mmviz-heat") -> None:
    """Move the mouse to the centre of image column ``column``'s box and wait for the widget to see it."""
    box = trace.layout.boxes[trace.image_positions[column]]
    canvas = page.query_selector(stack).bounding_box()
    scale = canvas["width"] / trace.images[0].width
    x, y = float(box[0] + box[2]) / 2 * scale, float(box[1] + box[3]) / 2 * scale
    page.mouse.move(canvas["x"] + x, canvas["y"] + y)
    page.wait_for_selector(f'.mmviz-root[data-patch="{column}"]')


def test_overview_cells_are_the_heads_image_share_and_link_to_the_image(page_watch, inspector, tmp_path):
    page, watch = page_watch
    trace = inspector.trace
    row = len(trace.query_positions) - 2
    position = int(trace.query_positions[row])
    open_inspector(page, inspector, tmp_path)
    pin(page, position)
    share = image_share(trace).row_share[:, :, row]  # (L, H)
    shown = grid_values(page)
    assert shown.shape == share.shape
    assert np.nanmax(np.abs(shown - share)) <= 2 * share.max() / 255 + 1e-6
    assert page.get_attribute(".mmviz-overview", "data-rows") == "focus"

    # Hovering a cell previews that head's map on the image; the selection stays.
    page.mouse.move(*cell_centre(page, 1, 2))
    page.wait_for_selector('.mmviz-overview-grid[data-preview="1,2"]')
    expected = trace.attention(layer=1, head=2)[row]
    np.testing.assert_allclose(shown_map(page, trace), expected, atol=3 * expected.max() / 255)
    assert "previewed from the overview" in page.text_content(".mmviz-caption")
    assert page.get_attribute(".mmviz-root", "data-layer") == str(trace.num_layers - 1)
    # A click selects it; a layer's header selects the layer (mean of heads), a head's header that head over layers.
    page.mouse.click(*cell_centre(page, 1, 2))
    page.wait_for_selector('.mmviz-root[data-layer="1"][data-head="2"]')
    page.mouse.move(0, 0)
    np.testing.assert_allclose(shown_map(page, trace), expected, atol=3 * expected.max() / 255)
    page.click('.mmviz-overview-layerbtn[data-layer="3"]')
    page.wait_for_selector('.mmviz-root[data-layer="3"][data-head="mean"]')
    expected = trace.attention(layer=3, head="mean")[row]
    np.testing.assert_allclose(shown_map(page, trace), expected, atol=3 * expected.max() / 255)
    page.click('.mmviz-overview-headbtn[data-head="1"]')
    page.wait_for_selector('.mmviz-root[data-layer="mean"][data-head="1"]')
    expected = trace.attention(head=1).mean(axis=0)[row]
    np.testing.assert_allclose(shown_map(page, trace), expected, atol=3 * expected.max() / 255)
    synced = "() => window.mmvizView.model.get('layer') === 'mean' && window.mmvizView.model.get('head') === 1"
    page.wait_for_function(synced)

    # Entropy, then the attention each head pays to the last hovered patch.
    page.select_option(".mmviz-stat", "entropy")
    entropy = image_share(trace).row_entropy[:, :, row]
    assert np.nanmax(np.abs(grid_values(page) - entropy)) <= 2 * entropy.max() / 255 + 1e-6
    column = 5
    hover_patch(page, trace, column)
    page.select_option(".mmviz-stat", "patch")
    page.wait_for_selector('.mmviz-overview[data-missing="0"]')
    paid = trace.attention()[:, :, row, column]
    assert np.nanmax(np.abs(grid_values(page) - paid)) <= 2 * paid.max() / 255 + 1e-6
    watch.assert_clean()


def test_layer_scrubber_plays_through_the_layers_and_the_map_follows(page_watch, inspector, tmp_path):
    page, watch = page_watch
    trace = inspector.trace
    row = len(trace.query_positions) - 1
    open_inspector(page, inspector, tmp_path)
    pin(page, int(trace.query_positions[row]))
    page.click(".mmviz-play")
    seen = []
    for layer in range(trace.num_layers):
        page.wait_for_selector(f'.mmviz-heat[data-layer="{layer}"]', timeout=5000)
        expected = trace.attention(layer=layer, head="mean")[row]
        np.testing.assert_allclose(shown_map(page, trace), expected, atol=3 * expected.max() / 255)
        seen.append(layer)
    page.wait_for_selector('.mmviz-play[aria-pressed="false"]', timeout=5000)
    assert seen == list(range(trace.num_layers))
    page.click(".mmviz-all-layers")
    page.wait_for_selector('.mmviz-root[data-layer="mean"]')
    expected = trace.attention(head="mean").mean(axis=0)[row]
    np.testing.assert_allclose(shown_map(page, trace), expected, atol=3 * expected.max() / 255)
    assert page.text_content(".mmviz-layer-value") == "all (mean)"
    watch.assert_clean()


def test_lens_panel_shows_the_top_tokens_and_the_answer_rank_per_layer(page_watch, inspector, tmp_path):
    page, watch = page_watch
    trace = inspector.trace
    lens = logit_lens(trace, k=5)
    position = trace.answer_start - 1  # predicts the first answer token
    open_inspector(page, inspector, tmp_path)
    page.click('.mmviz-tab[data-panel="lens"]')
    pin(page, position)
    page.wait_for_selector(f'.mmviz-lens[data-pos="{position}"] tr.mmviz-lens-row')
    rows = page.eval_on_selector_all(
        "tr.mmviz-lens-row",
        """rs => rs.map(r => ({
            depth: +r.dataset.depth,
            tokens: [...r.querySelectorAll('.mmviz-lens-token')].map(c => c.textContent),
            probs: [...r.querySelectorAll('.mmviz-lens-token')].map(c => +c.dataset.prob),
            rank: +r.querySelector('.mmviz-lens-rank').dataset.rank,
            current: r.classList.contains('mmviz-current'),
        }))""",
    )
    assert [r["depth"] for r in rows] == list(range(trace.num_layers + 1))
    for r in rows:
        d = r["depth"]
        assert r["tokens"] == lens.top_tokens[d][position]
        np.testing.assert_allclose(r["probs"], lens.top_probs[d, position], atol=2e-3)
        assert r["rank"] == lens.target_ranks[d, position] == lens.answer_ranks[d, 0]
    assert [r["current"] for r in rows] == [d == trace.num_layers for d in range(trace.num_layers + 1)]
    # Hovering a patch reads that image position, against the first answer token.
    column = 3
    image_position = int(trace.image_positions[column])
    hover_patch(page, trace, column)
    page.wait_for_selector(f'.mmviz-lens[data-pos="{image_position}"]')
    first = page.eval_on_selector('tr.mmviz-lens-row[data-depth="2"] .mmviz-lens-rank', "c => +c.dataset.rank")
    assert first == lens.target_ranks[2, image_position]
    page.mouse.move(0, 0)
    page.click('tr.mmviz-lens-row[data-depth="2"] th')
    page.wait_for_selector('.mmviz-root[data-layer="1"]')
    watch.assert_clean()


def test_projection_points_link_both_ways_and_move_with_the_layer(page_watch, inspector, tmp_path):
    page, watch = page_watch
    trace = inspector.trace
    result = projection(trace)
    open_inspector(page, inspector, tmp_path)
    page.click('.mmviz-tab[data-panel="projection"]')
    page.wait_for_selector(".mmviz-projection-canvas[data-depth]")
    depth = int(page.get_attribute(".mmviz-projection-canvas", "data-depth"))
    assert depth == trace.num_layers  # the last layer is selected

    def screen(position: int, depth: int) -> tuple[float, float]:
        canvas = page.query_selector(".mmviz-projection-canvas")
        box = canvas.bounding_box()
        x0, x1 = result.coords[..., 0].min(), result.coords[..., 0].max()
        y0, y1 = result.coords[..., 1].min(), result.coords[..., 1].max()
        pad = float(canvas.get_attribute("data-pad"))
        width, height = 360, 300
        x, y = result.coords[depth, position]
        px = pad + (x - x0) * (width - 2 * pad) / (x1 - x0)
        py = height - pad - (y - y0) * (height - 2 * pad) / (y1 - y0)
        return float(box["x"] + px * box["width"] / width), float(box["y"] + py * box["height"] / height)

    # A text point focuses its token; an image point hovers its patch (and the lens / tokens follow).
    points = result.coords[depth]
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(points)) * 1e9
    isolated = [int(i) for i in np.argsort(-distance.min(axis=1))]
    text = next(i for i in isolated if not result.is_image[i])
    image = next(i for i in isolated if result.is_image[i])
    page.mouse.move(*screen(text, depth))
    page.wait_for_selector(f'.mmviz-root[data-focus="{text}"]')
    page.mouse.move(*screen(image, depth))
    column = int(np.flatnonzero(trace.image_positions == image)[0])
    page.wait_for_selector(f'.mmviz-root[data-patch="{column}"]')
    assert page.get_attribute(".mmviz-projection-canvas", "data-patch") == str(image)
    # Focusing a token from the strip rings its point.
    page.mouse.move(0, 0)
    pin(page, text)
    assert page.get_attribute(".mmviz-projection-canvas", "data-focus") == str(text)
    # Layer 0 shows depth 1, in the same frame: the points move.
    page.click('.mmviz-overview-layerbtn[data-layer="0"]')
    page.wait_for_selector('.mmviz-projection-canvas[data-depth="1"]')
    gap = page.text_content(".mmviz-projection-note")
    assert f"{result.modality_gap[1]:.3f}" in gap and "layer 0" in gap
    watch.assert_clean()


def test_colour_scale_opacity_and_patch_tooltip(page_watch, inspector, tmp_path):
    page, watch = page_watch
    trace = inspector.trace
    row = len(trace.query_positions) - 1
    open_inspector(page, inspector, tmp_path)
    pin(page, int(trace.query_positions[row]))
    expected = trace.attention(layer=trace.num_layers - 1, head="mean")[row]
    linear = shown_map(page, trace)
    page.select_option(".mmviz-scale", "log")
    page.wait_for_selector('.mmviz-heat[data-scale="log"]')
    log_shaped = shown_map(page, trace)  # read back as if linear: t' · range
    top = expected.max()
    t = np.clip(expected / top, 0, 1)
    np.testing.assert_allclose(log_shaped, np.log1p(1000 * t) / math.log1p(1000) * top, atol=3 * top / 255)
    assert not np.allclose(log_shaped, linear, atol=3 * top / 255), "the scale changes the picture"
    page.select_option(".mmviz-scale", "gamma")
    page.fill(".mmviz-gamma", "2")
    page.dispatch_event(".mmviz-gamma", "change")
    page.wait_for_selector('.mmviz-heat[data-gamma="2"]')
    np.testing.assert_allclose(shown_map(page, trace), t**2 * top, atol=3 * top / 255)
    page.fill(".mmviz-opacity", "20")
    page.dispatch_event(".mmviz-opacity", "input")
    assert page.eval_on_selector(".mmviz-heat", "c => getComputedStyle(c).opacity") == "0.2"
    # The hovered patch's value, next to it.
    column = 7
    hover_patch(page, trace, column)
    page.wait_for_selector(f'.mmviz-tooltip[data-patch="{column}"]:not([hidden])')
    r, c = trace.layout.grid[trace.image_positions[column]]
    assert page.text_content(".mmviz-tooltip") == f"patch ({r}, {c}): {float(expected[column]):.3g}"
    watch.assert_clean()


def test_words_keyboard_dark_mode_and_resizing(page_watch, inspector, tmp_path):
    page, watch = page_watch
    trace = inspector.trace
    open_inspector(page, inspector, tmp_path)
    # Sub-word pieces merge into one chip whose map is the mean of the pieces' maps.
    page.check(".mmviz-words-toggle")
    page.wait_for_selector(".mmviz-words .mmviz-token[data-positions]")
    after_image = int(trace.image_positions.max())
    chips = page.query_selector_all(".mmviz-words .mmviz-token[data-positions]")
    chip = next(c for c in chips if int(c.get_attribute("data-pos")) > after_image)  # a word that sees the image
    positions = [int(p) for p in chip.get_attribute("data-positions").split(",")]
    assert chip.text_content() == "".join(trace.tokens[p] for p in positions)
    chip.click()
    rows = [trace.row_of(p) for p in positions]
    expected = trace.attention(layer=trace.num_layers - 1, head="mean")[rows].mean(axis=0)
    np.testing.assert_allclose(shown_map(page, trace), expected, atol=3 * expected.max() / 255)
    page.uncheck(".mmviz-words-toggle")
    page.keyboard.press("Escape")

    # Arrow keys: → pins the next token with a map, ↑/↓ change the layer.
    page.focus(".mmviz-root")
    page.keyboard.press("ArrowRight")
    first = int(trace.query_positions[0])
    page.wait_for_selector(f'.mmviz-root[data-focus="{first}"]')
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f'.mmviz-root[data-focus="{int(trace.query_positions[1])}"]')
    page.keyboard.press("ArrowDown")
    page.wait_for_selector(f'.mmviz-root[data-layer="{trace.num_layers - 2}"]')

    # Dark mode follows the host (the OS preference here; JupyterLab's theme attribute wins there).
    light = page.eval_on_selector(".mmviz-root", "r => getComputedStyle(r).backgroundColor")
    page.emulate_media(color_scheme="dark")
    dark = page.eval_on_selector(".mmviz-root", "r => getComputedStyle(r).backgroundColor")
    assert light == "rgb(255, 255, 255)" and dark == "rgb(13, 17, 23)"

    # A narrow notebook: the image shrinks with it, and a hover still finds the right patch.
    natural = page.query_selector(".mmviz-image-stack").bounding_box()["width"]
    page.set_viewport_size({"width": 300, "height": 800})
    shrunk = f"() => document.querySelector('.mmviz-image-stack').getBoundingClientRect().width < {natural} - 20"
    page.wait_for_function(shrunk)
    hover_patch(page, trace, 10, stack=".mmviz-image-stack")
    watch.assert_clean()
