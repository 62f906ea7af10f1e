"""A video trace (tiny Qwen2-VL, 5 frames → 3 temporal groups) in real headless Chromium: the frame strip.

Hover a token → every frame's heat bar shows the attention the token pays to the video tokens of that frame's
group (the sums computed here from the trace), and the image view's heatmap is that row over the shown frame's
tokens; hover another token → both change; click a frame → the image view shows THAT original frame (its pixels)
with its own group's heatmap. Pixels are decoded back through the page's own colour map.

Then, in JupyterLab against a live kernel (one page load: ablating needs the model), frame-group knockout from the
widget: pick frame 3 in the strip, "Select this frame's tokens" in the Interventions panel selects exactly the video
tokens of ``mmviz.interventions.frame_positions(trace, 3)`` (frames 2–3 share their tokens), Run ablation, and the
Δ bars under the answer chips of the token strip (and the panel's) equal
``Ablate(frame_positions(trace, 3), fill=DEFAULT_FILL).apply(trace).delta`` computed in the kernel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import mmviz
from tests.browser.conftest import heat_values, open_inspector, watch_server_page
from tests.browser.servers import KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook
from tests.families.build_qwen_idefics import build_qwen2_vl

ROOT = Path(__file__).resolve().parents[2]

HEIGHT, WIDTH = 84, 112  # 6×8 patches of 14 px → 3×4 video tokens per temporal group
COLOURS = [(220, 30, 30), (30, 160, 40), (30, 60, 220), (230, 200, 20), (150, 40, 170)]


def frames() -> np.ndarray:
    out = np.zeros((len(COLOURS), HEIGHT, WIDTH, 3), np.uint8)
    for index, colour in enumerate(COLOURS):
        out[index] = colour
        out[index, 10 + 12 * index : 30 + 12 * index, 20:60] = 255  # a white square that moves down
    return out


def hover_token(page, position: int) -> None:
    page.hover(f'.mmviz-token[data-pos="{position}"]')
    page.wait_for_selector(f'.mmviz-root[data-focus="{position}"]')


def bar_values(page) -> np.ndarray:
    return np.array(page.eval_on_selector_all(".mmviz-frame-bar", "bs => bs.map(b => +b.dataset.value)"))


def photo_pixel(page, x: float, y: float) -> list[int]:
    return page.evaluate(
        """([x, y, width]) => {
            const c = document.querySelector('.mmviz-photo');
            const s = c.width / width;
            return [...c.getContext('2d').getImageData(Math.floor(x * s), Math.floor(y * s), 1, 1).data];
        }""",
        [x, y, WIDTH],
    )


@pytest.fixture(scope="module")
def video_trace():
    model, processor = build_qwen2_vl()
    return mmviz.trace(model, processor, video=frames(), prompt="What moves?", answer="a square")


def test_frame_strip_follows_the_token_and_shows_the_clicked_frame(page_watch, video_trace, tmp_path):
    page, watch = page_watch
    trace = video_trace
    layout = trace.layout
    inspector = mmviz.Inspector(trace)
    maps = trace.attention(layer=inspector.layer, head="mean")  # (rows, columns): what the widget shows first
    spans = layout.frames[trace.image_positions]
    groups = sorted({tuple(span) for span in spans.tolist()})
    assert groups == [(0, 1), (2, 3), (4, 4)]
    columns = {first: np.flatnonzero(spans[:, 0] == first) for first, _ in groups}
    first_of = {frame: first for first, last in groups for frame in range(first, last + 1)}

    def per_frame(row: int) -> np.ndarray:
        return np.array([maps[row, columns[first_of[f]]].sum() for f in range(len(COLOURS))])

    # Two rows whose per-frame sums differ clearly, and whose maps differ between the first and last group.
    rows = range(len(trace.query_positions))
    a, b = sorted(rows, key=lambda r: -np.abs(maps[r, columns[4]] - maps[r, columns[0]]).max())[:2]
    open_inspector(page, inspector, tmp_path)
    page.wait_for_function("() => document.querySelector('.mmviz-photo').dataset.loaded === '1'")
    assert len(page.query_selector_all(".mmviz-image")) == 1, "a video has one image view, frame by frame"
    assert len(page.query_selector_all(".mmviz-frame")) == len(COLOURS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.mmviz-frame-thumb')].every(c => c.dataset.loaded === '1')"
    )
    assert photo_pixel(page, 100, 80)[:3] == pytest.approx(COLOURS[0], abs=12)

    boxes = layout.boxes[trace.image_positions[columns[0]]]
    seen = []
    for row in (a, b):
        hover_token(page, int(trace.query_positions[row]))
        step = float(maps[row].max() - maps[row].min()) / 255  # the uint8 wire format: one step per value
        bars = bar_values(page)
        np.testing.assert_allclose(bars, per_frame(row), atol=len(columns[0]) * step + 1e-6)
        assert bars[0] == bars[1] and bars[2] == bars[3], "the frames of one group share their tokens"
        shown = heat_values(page, boxes, WIDTH)
        assert (shown["rgba"][:, 3] == 255).all()
        assert np.abs(shown["values"] - maps[row, columns[0]]).max() <= 3 * float(maps[row].max()) / 255
        seen.append((bars, shown["rgba"]))
    assert not np.allclose(seen[0][0], seen[1][0]), "hovering another token changes the frame bars"
    assert not np.array_equal(seen[0][1], seen[1][1]), "and the frame's heatmap"

    # Pin token b, click the last frame: its original pixels, with its own group's heat.
    page.click(f'.mmviz-token[data-pos="{int(trace.query_positions[b])}"]')
    page.click('.mmviz-frame[data-frame="4"]')
    page.wait_for_selector('.mmviz-image[data-frame="4"]')
    page.wait_for_function("() => document.querySelector('.mmviz-photo').dataset.loaded === '1'")
    assert photo_pixel(page, 100, 80)[:3] == pytest.approx(COLOURS[4], abs=12)
    assert photo_pixel(page, 40, 10 + 12 * 4 + 5)[:3] == pytest.approx((255, 255, 255), abs=12)
    assert "frame 4 of 5" in page.text_content(".mmviz-image-label")
    last = layout.boxes[trace.image_positions[columns[4]]]
    shown = heat_values(page, last, WIDTH)
    scale = 3 * float(maps[b].max()) / 255
    assert np.abs(shown["values"] - maps[b, columns[4]]).max() <= scale
    assert np.abs(maps[b, columns[4]] - maps[b, columns[0]]).max() > 2 * scale, "the groups' maps differ"
    assert page.get_attribute(".mmviz-frames", "data-frame") == "4"

    # ▶ plays through the frames, and stops.
    page.click(".mmviz-frame-play")
    page.wait_for_selector('.mmviz-image[data-frame="0"]', timeout=5_000)
    page.wait_for_selector('.mmviz-image[data-frame="1"]', timeout=5_000)
    page.click(".mmviz-frame-play")
    assert page.get_attribute(".mmviz-frames", "data-playing") == "0"
    watch.assert_clean()


FRAME = 3  # the second frame of group (2, 3): selecting it must take the whole group


def kernel_cells() -> list[str]:
    """Trace the same video in the kernel and write what the page must show, computed by the library itself."""
    return [
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\nimport numpy as np\nimport mmviz\n"
        "from mmviz.interventions import DEFAULT_FILL, Ablate, frame_positions\n"
        "from tests.families.build_qwen_idefics import build_qwen2_vl\n"
        "from tests.browser.test_video_page import frames\n"
        "model, processor = build_qwen2_vl()\n"
        "trace = mmviz.trace(model, processor, video=frames(), prompt='What moves?', answer='a square')\n"
        f"positions = frame_positions(trace, {FRAME})\n"
        "Path('expected.json').write_text(json.dumps({\n"
        "    'columns': np.flatnonzero(np.isin(trace.image_positions, positions)).tolist(),\n"
        "    'group': sorted({tuple(s) for s in trace.layout.frames[positions].tolist()}),\n"
        "    'fill': DEFAULT_FILL, 'n_frames': len(trace.images),\n"
        "    'video_tokens': len(trace.layout.positions('image', 'image_newline', 'image_sep')),\n"
        "    'delta': Ablate(positions, fill=DEFAULT_FILL).apply(trace).delta.tolist(),\n"  # kept nowhere
        "    'positions': list(range(trace.answer_start, len(trace.tokens)))}))\n"
        "inspector = mmviz.inspect(trace)\ninspector",
    ]


@pytest.mark.jupyter
def test_ablating_a_frame_group_from_the_widget_matches_frame_positions(browser, tmp_path):
    (tmp_path / "video.ipynb").write_text(notebook(kernel_cells()))
    with jupyter_server(tmp_path) as base:
        context = browser.new_context(viewport={"width": 1400, "height": 1400})
        page = context.new_page()
        watch = watch_server_page(page, base)
        try:
            page.goto(f"{base}/lab/tree/video.ipynb?token={TOKEN}")
            page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
            page.evaluate(RUN_ALL_JS)
            root = page.wait_for_selector(".mmviz-root[data-ready='1']", timeout=180_000)
            expected = json.loads((tmp_path / "expected.json").read_text())
            assert expected["group"] == [[2, 3]]
            chip = root.query_selector(".mmviz-image-chip").text_content()
            assert chip == f"video · {expected['n_frames']} frames · {expected['video_tokens']} tokens"

            # Pick frame 3 in the strip, then take its group's tokens in one gesture.
            root.query_selector(f'.mmviz-frame[data-frame="{FRAME}"]').click()
            root.wait_for_selector(f'.mmviz-images .mmviz-image[data-frame="{FRAME}"]')
            root.query_selector(".mmviz-tab[data-panel='interventions']").click()
            panel = root.query_selector(".mmviz-interventions")
            assert panel.get_attribute("data-can-run") == "1"
            assert panel.get_attribute("data-frame") == str(FRAME)
            label = panel.query_selector(".mmviz-iv-frame-label").text_content()
            assert re.fullmatch(rf"Frame {FRAME} \(its group: frames 2–3\) · {len(expected['columns'])} tokens", label)
            assert panel.query_selector(".mmviz-iv-fill").input_value() == expected["fill"]
            panel.query_selector(".mmviz-iv-select-frame").click()
            assert panel.get_attribute("data-selected") == ",".join(map(str, expected["columns"]))
            assert panel.query_selector(f'.mmviz-iv-image[data-frame="{FRAME}"]') is not None

            panel.query_selector(".mmviz-iv-run-ablate").click()
            page.wait_for_function("(p) => p.dataset.runs === '1'", arg=panel, timeout=120_000)
            assert panel.query_selector(".mmviz-iv-status").get_attribute("data-state") == "done"
            strip = {
                int(c.get_attribute("data-pos")): float(c.get_attribute("data-delta"))
                for c in root.query_selector_all(".mmviz-tokens .mmviz-has-delta")
            }
            rows = panel.query_selector_all(".mmviz-iv-result .mmviz-iv-bar-row")
            shown = {int(r.get_attribute("data-pos")): float(r.get_attribute("data-delta")) for r in rows}
            assert sorted(strip) == sorted(shown) == expected["positions"]
            for pos, delta in zip(expected["positions"], expected["delta"], strict=True):
                assert strip[pos] == pytest.approx(delta, abs=1e-4)
                assert shown[pos] == pytest.approx(delta, abs=1e-4)
            # Each bar's width is |Δ| over the stated scale: the largest |Δ|, at least 1 nat.
            scale = max(1.0, max(abs(d) for d in expected["delta"]))
            stated = float(root.query_selector(".mmviz-tokens").get_attribute("data-delta-scale"))
            assert stated == pytest.approx(scale, rel=1e-5)
            for pos, delta in zip(expected["positions"], expected["delta"], strict=True):
                fill = root.query_selector(f'.mmviz-tokens .mmviz-token[data-pos="{pos}"] .mmviz-delta-fill')
                width = float(fill.evaluate("f => parseFloat(f.style.width)"))
                assert width == pytest.approx(50 * abs(delta) / scale, abs=0.01)
            watch.assert_clean()
        finally:
            context.close()
