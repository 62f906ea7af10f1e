"""Several images and several views of one image in real headless Chromium.

Images are shown side by side, each with its own heatmap. Views of ONE image (LLaVA-NeXT's base and high-res crop,
Idefics3's tiles and global image) cover the same pixels: they are layers picked in a per-image view selector,
never averaged and never drawn over each other.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import mmviz
from mmviz import wire
from mmviz.adapters.layout import VIEWS
from tests.browser.conftest import heat_values, open_inspector

PROMPT = "What is in the picture?"
ANSWER = "A red square."


def two_images() -> list[Image.Image]:
    left_red = np.zeros((90, 160, 3), np.uint8)
    left_red[:, :80] = (220, 30, 30)
    left_red[:, 80:] = (240, 240, 240)
    return [Image.fromarray(left_red), Image.new("RGB", (90, 120), (30, 60, 220))]


def spread(values: np.ndarray) -> float:
    return float(np.ptp(values)) / max(float(values.max()), 1e-12)


def answer_row(trace, maps: np.ndarray, columns: np.ndarray) -> int:
    """The answer row whose values over ``columns`` vary most (relative to its max), so the cells differ on screen."""
    rows = np.flatnonzero(trace.query_positions >= trace.answer_start)
    spreads = [spread(maps[row, columns]) for row in rows]
    assert max(spreads) > 0.05, "every answer row is flat"
    return int(rows[int(np.argmax(spreads))])


def hover_token(page, position: int) -> None:
    page.hover(f'.mmviz-token[data-pos="{position}"]')
    page.wait_for_selector(f'.mmviz-root[data-focus="{position}"]')


def hover_image_point(page, image: int, x: float, y: float, width: int) -> int:
    """Move the mouse over original pixel (x, y) of image ``image``; returns the hovered column."""
    canvas = page.query_selector_all(".mmviz-heat")[image].bounding_box()
    scale = canvas["width"] / width
    page.mouse.move(canvas["x"] + x * scale, canvas["y"] + y * scale)
    page.wait_for_function("() => document.querySelector('.mmviz-root').dataset.patch !== '-1'")
    return int(page.get_attribute(".mmviz-root", "data-patch"))


def photo_pixel(page, image: int, x: float, y: float, width: int) -> list[int]:
    return page.evaluate(
        """([image, x, y, width]) => {
            const c = document.querySelectorAll('.mmviz-photo')[image];
            const s = c.width / width;
            return [...c.getContext('2d').getImageData(Math.floor(x * s), Math.floor(y * s), 1, 1).data];
        }""",
        [image, x, y, width],
    )


def canvas_colours(page, image: int = 0) -> set[tuple[int, int, int, int]]:
    """Every distinct RGBA value on the heat canvas of ``image``."""
    flat = page.evaluate(
        """(image) => {
            const c = document.querySelectorAll('.mmviz-heat')[image];
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4) seen.add(`${d[i]},${d[i + 1]},${d[i + 2]},${d[i + 3]}`);
            return [...seen];
        }""",
        image,
    )
    return {tuple(int(v) for v in s.split(",")) for s in flat}


def test_two_images_side_by_side_each_with_its_own_heatmap(page_watch, llava_small, tmp_path):
    page, watch = page_watch
    model, processor = llava_small
    images = two_images()
    trace = mmviz.trace(model, processor, images, "Compare the pictures.", answer=ANSWER)
    layout = trace.layout
    columns_of = [np.flatnonzero(layout.image_index[trace.image_positions] == i) for i in (0, 1)]
    assert all(len(c) > 0 for c in columns_of)
    maps = trace.attention(layer=trace.num_layers - 1, head="mean")  # (rows, columns)
    row = answer_row(trace, maps, np.arange(maps.shape[1]))
    position = int(trace.query_positions[row])
    open_inspector(page, mmviz.Inspector(trace), tmp_path)

    page.wait_for_function("() => [...document.querySelectorAll('.mmviz-photo')].every(c => c.dataset.loaded === '1')")
    first, second = (el.bounding_box() for el in page.query_selector_all(".mmviz-image-stack"))
    assert abs(first["y"] - second["y"]) < 2 and second["x"] >= first["x"] + first["width"], "side by side"
    labels = page.eval_on_selector_all(".mmviz-image-label", "ls => ls.map(l => l.textContent)")
    assert labels[0].startswith("image 1 · 160×90 px") and labels[1].startswith("image 2 · 90×120 px")
    # Each canvas shows its own photo.
    assert photo_pixel(page, 0, 40, 45, 160)[:3] == pytest.approx([220, 30, 30], abs=12)
    assert photo_pixel(page, 1, 45, 60, 90)[:3] == pytest.approx([30, 60, 220], abs=12)
    chips = page.eval_on_selector_all(".mmviz-image-chip", "cs => cs.map(c => [c.dataset.imageIndex, c.textContent])")
    assert [index for index, _ in chips] == ["0", "1"]
    assert chips[0][1].startswith("image 1 · ") and chips[1][1].startswith("image 2 · ")

    hover_token(page, position)
    shared = float(maps[row].max())
    for index, width in ((0, 160), (1, 90)):
        boxes = layout.boxes[trace.image_positions[columns_of[index]]]
        shown = heat_values(page, boxes, width, image=index)
        expected = maps[row, columns_of[index]]
        assert (shown["rgba"][:, 3] == 255).all()
        assert shown["range"] == pytest.approx(shared, rel=0.02), "both images share one colour scale"
        assert np.abs(shown["values"] - expected).max() <= 3 * shared / 255
        assert expected[shown["values"].argmax()] >= expected.max() - 3 * shared / 255

    # Hovering a patch of the second image tints the tokens by the attention they pay to it.
    box = layout.boxes[trace.image_positions[columns_of[1][5]]]
    column = hover_image_point(page, 1, float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2, 90)
    assert column == columns_of[1][5]
    assert "of image 2" in page.text_content(".mmviz-caption")
    tinted = dict(
        page.eval_on_selector_all(".mmviz-token.mmviz-tinted", "ss => ss.map(s => [+s.dataset.pos, +s.dataset.value])")
    )
    for r, p in enumerate(trace.query_positions):
        assert tinted[int(p)] == pytest.approx(float(maps[r, column]), abs=float(maps[:, column].max()) / 255 + 1e-6)
    watch.assert_clean()


def grid_boxes(covered, rows: int, cols: int) -> np.ndarray:
    x0, y0, x1, y1 = covered
    xs, ys = np.linspace(x0, x1, cols + 1), np.linspace(y0, y1, rows + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(rows) for c in range(cols)], np.float32)


@pytest.fixture(scope="module")
def two_view_inspector(llava_small, photo):
    """A tiny-LLaVA inspector whose 16 columns are re-labelled as two views of the same pixels: a coarse 2×2 "base"
    view (columns 0–3) and a finer 3×4 "crop" view (columns 4–15); both cover the whole covered region. The tiny
    random model attends almost uniformly, so its attention is replaced by well-spread synthetic values
    (returned as the head mean ``(L, Q, P)``)."""
    model, processor = llava_small
    trace = mmviz.trace(model, processor, photo, PROMPT, answer=ANSWER)
    inspector = mmviz.Inspector(trace)
    shape = trace.attention().shape
    attention = np.random.default_rng(0).random(shape).astype(np.float32)
    inspector.attention = wire.encode(attention, scale_dims=3)
    mean = attention.mean(axis=1)
    inspector.attention_mean = wire.encode(mean, scale_dims=2)
    covered = trace.layout.images[0].covered
    base, crop = grid_boxes(covered, 2, 2), grid_boxes(covered, 3, 4)
    grid = [(r, c) for r in range(2) for c in range(2)] + [(r, c) for r in range(3) for c in range(4)]
    layout = dict(inspector.token_layout)
    layout["boxes"] = np.concatenate([base, crop]).astype("<f4").tobytes()
    layout["grid"] = np.array(grid, "<i4").tobytes()
    layout["view"] = np.array([VIEWS.index("base")] * 4 + [VIEWS.index("crop")] * 12, np.uint8).tobytes()
    inspector.token_layout = layout
    return inspector, base, crop, mean


def test_views_of_one_image_are_layers_picked_in_a_selector_never_drawn_together(
    page_watch, two_view_inspector, tmp_path
):
    page, watch = page_watch
    inspector, base, crop, mean = two_view_inspector
    trace = inspector.trace
    width = trace.images[0].width
    maps = mean[inspector.layer]
    row = answer_row(trace, maps, np.arange(4, 16))
    position = int(trace.query_positions[row])
    open_inspector(page, inspector, tmp_path)

    select = '.mmviz-view-select[data-image="0"]'
    options = page.eval_on_selector_all(f"{select} option", "os => os.map(o => [o.value, o.textContent])")
    assert options == [[str(VIEWS.index("base")), "base (4 tokens)"], [str(VIEWS.index("crop")), "crop (12 tokens)"]]
    assert page.eval_on_selector(select, "s => s.value") == str(VIEWS.index("crop")), "default: the finest view"
    assert page.get_attribute(".mmviz-image", "data-view") == "crop"
    assert "crop view: 12 of 16 image tokens" in page.text_content(".mmviz-image-label")

    hover_token(page, position)
    page.click(f'.mmviz-token[data-pos="{position}"]')  # pin, so the mouse can go to the selector
    expected = maps[row, 4:16]
    shown = heat_values(page, crop, width)
    assert shown["range"] == pytest.approx(float(expected.max()), rel=0.02), "scaled over the drawn view only"
    assert np.abs(shown["values"] - expected).max() <= 3 * float(expected.max()) / 255
    assert len(canvas_colours(page) - {(0, 0, 0, 0)}) <= 12, "only the crop view's 12 cells are painted"
    crop_pixels = shown["rgba"]

    page.select_option(select, str(VIEWS.index("base")))
    page.wait_for_selector('.mmviz-image[data-view="base"]')
    expected = maps[row, 0:4]
    shown = heat_values(page, base, width)
    assert shown["range"] == pytest.approx(float(expected.max()), rel=0.02)
    assert np.abs(shown["values"] - expected).max() <= 3 * float(expected.max()) / 255
    assert len(canvas_colours(page) - {(0, 0, 0, 0)}) <= 4, "only the base view's 4 cells are painted"
    # Every crop cell now shows the colour of the base cell around it: no crop cell is drawn on top.
    at_crop = heat_values(page, crop, width)["rgba"]
    centres = (crop[:, :2] + crop[:, 2:]) / 2
    around = [
        int(np.flatnonzero((base[:, 0] <= x) & (x < base[:, 2]) & (base[:, 1] <= y) & (y < base[:, 3]))[0])
        for x, y in centres
    ]
    assert (at_crop == shown["rgba"][around]).all()
    assert not (at_crop == crop_pixels).all(), "switching the view changed the painted cells"

    # Hovering the image finds patches of the drawn view only.
    page.keyboard.press("Escape")
    x, y = float(centres[10][0]), float(centres[10][1])  # a crop cell inside the lower right base cell
    assert hover_image_point(page, 0, x, y, width) == around[10] == 3
    page.mouse.move(0, 0)
    page.select_option(select, str(VIEWS.index("crop")))
    page.wait_for_selector('.mmviz-image[data-view="crop"]')
    assert hover_image_point(page, 0, x, y, width) == 4 + 10
    assert "in the crop view" in page.text_content(".mmviz-caption")
    watch.assert_clean()


def test_llava_next_base_and_crop_views(page_watch, tmp_path):
    """The real LLaVA-NeXT layout (tiny model of tests/families): a 4×4 base view and a finer high-res crop view."""
    builder = pytest.importorskip("tests.families.build_llava_next")
    page, watch = page_watch
    model, processor = builder.build_llava_next()
    image = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (40, 1, 3)))
    trace = mmviz.trace(model, processor, image, PROMPT, answer=ANSWER)
    views = trace.layout.view[trace.image_positions]
    codes = sorted(set(views.tolist()))
    assert [VIEWS[c] for c in codes] == ["base", "crop"]
    counts = {c: int((views == c).sum()) for c in codes}
    finest = max(codes, key=counts.get)
    maps = trace.attention(layer=trace.num_layers - 1, head="mean")
    row = answer_row(trace, maps, np.flatnonzero(views == finest))
    open_inspector(page, mmviz.Inspector(trace), tmp_path)
    select = '.mmviz-view-select[data-image="0"]'
    assert page.eval_on_selector(select, "s => s.value") == str(finest)
    page.click(f'.mmviz-token[data-pos="{int(trace.query_positions[row])}"]')
    for code in (finest, *[c for c in codes if c != finest]):
        page.select_option(select, str(code))
        page.wait_for_selector(f'.mmviz-image[data-view="{VIEWS[code]}"]')
        columns = np.flatnonzero(views == code)
        expected = maps[row, columns]
        shown = heat_values(page, trace.layout.boxes[trace.image_positions[columns]], 120)
        assert (shown["rgba"][:, 3] == 255).all()
        assert shown["range"] == pytest.approx(float(expected.max()), rel=0.02)
        assert np.abs(shown["values"] - expected).max() <= 3 * float(expected.max()) / 255
        assert len(canvas_colours(page) - {(0, 0, 0, 0)}) <= counts[code]
    watch.assert_clean()
