"""A linked bokeh plot in a real JupyterLab 4 page: a click on a layer in the plot selects it in the Inspector, and
setting the Inspector's layer from a cell moves the plot's marker. BokehJS is loaded inline: nothing leaves localhost.
"""

from __future__ import annotations

import bokeh
import pytest

from tests.browser.conftest import watch_server_page
from tests.browser.servers import KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook

SETUP = """\
import ipywidgets
import numpy as np
from bokeh.layouts import row

import mmviz
import mmviz.plots

model, processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=3, seed=1)
image = np.zeros((60, 90, 3), np.uint8)
image[10:40, 50:80] = (220, 30, 30)
inspector = mmviz.inspect(model, processor, image, "What is in the picture?", answer="A red square.")
plot = row(mmviz.plots.image_share(inspector), mmviz.plots.lens_ranks(inspector))
ipywidgets.VBox([inspector, mmviz.plots.widget(plot)])
"""

FIGURES_JS = """() => {
    if (window.Bokeh?.index === undefined) return null;
    const figures = [];
    const visit = (view) => {
        if (view.model.type === 'Figure') figures.push(view);
        for (const child of view.children()) visit(child);
    };
    for (const root of Bokeh.index.roots) visit(root);
    return figures;
}"""

MARKERS_JS = f"""() => {{
    const figures = ({FIGURES_JS})();
    if (figures === null || figures.length < 2) return null;
    return figures.map(f => f.model.center.filter(m => m.name === 'mmviz-layer-marker').map(m => m.location)).flat();
}}"""

# Where layer k is on the screen in the figure whose title starts with `title` (scrolled into view first).
LAYER_POINT_JS = f"""([title, layer]) => {{
    const figure = ({FIGURES_JS})().find(f => f.model.title.text.startsWith(title));
    figure.el.scrollIntoView({{block: 'center'}});
    const box = figure.el.getBoundingClientRect();
    const frame = figure.frame.bbox;
    return {{x: box.x + figure.frame.x_scale.compute(layer), y: box.y + frame.top + frame.height / 2}};
}}"""

LINE_WIDTHS_JS = f"""() => {{
    const lens = ({FIGURES_JS})().find(f => f.model.title.text.startsWith('Logit lens'));
    const lines = lens.model.renderers.filter(r => (r.name ?? '').startsWith('rank:'));
    return Object.fromEntries(lines.map(r => [r.name, r.glyph.line_width.value]));
}}"""

RUN_CELL_JS = """async (code) => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    const cells = notebook.model.sharedModel;
    cells.insertCell(cells.cells.length, {cell_type: 'code', source: code});
    notebook.activeCellIndex = cells.cells.length - 1;
    await window.jupyterapp.commands.execute('notebook:run-cell');
}"""


def markers_at(page, layer: int) -> None:
    page.wait_for_function(
        f"() => {{ const m = ({MARKERS_JS})(); return m !== null && m.length === 2 && m.every(x => x === {layer}); }}",
        timeout=30_000,
    )


@pytest.mark.jupyter
def test_a_linked_plot_drives_and_follows_the_inspector_in_jupyterlab(browser, tmp_path):
    (tmp_path / "plots.ipynb").write_text(notebook([SETUP]))
    with jupyter_server(tmp_path, app="lab") as base:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        watch = watch_server_page(page, base)
        page.goto(f"{base}/lab/tree/plots.ipynb?token={TOKEN}")
        try:
            page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
            page.evaluate(RUN_ALL_JS)
            page.wait_for_selector(".mmviz-root[data-ready='1'][data-layer='2']", timeout=180_000)
            markers_at(page, 2)  # both plots mark the inspector's layer (the last one)
            assert page.evaluate("() => Bokeh.version") == bokeh.__version__, "BokehJS came with the plot"

            point = page.evaluate(LAYER_POINT_JS, ["Logit lens", 1])
            page.mouse.click(point["x"], point["y"])
            page.wait_for_selector(".mmviz-root[data-layer='1']", timeout=30_000)
            markers_at(page, 1)  # the click went to Python and back to both plots

            point = page.evaluate(LAYER_POINT_JS, ["Where the answer", 0])
            page.mouse.click(point["x"], point["y"])
            page.wait_for_selector(".mmviz-root[data-layer='0']", timeout=30_000)
            markers_at(page, 0)

            page.evaluate(RUN_CELL_JS, "inspector.layer = 2")
            markers_at(page, 2)
            page.wait_for_selector(".mmviz-root[data-layer='2']", timeout=30_000)

            second_answer_token = int(page.get_attribute(".mmviz-token.mmviz-answer", "data-pos")) + 1
            page.evaluate(RUN_CELL_JS, "inspector.pinned = inspector.trace.answer_start + 1")
            page.wait_for_selector(f".mmviz-token.mmviz-pinned[data-pos='{second_answer_token}']", timeout=30_000)
            pinned_line = f"rank:{second_answer_token}"
            page.wait_for_function(f"() => ({LINE_WIDTHS_JS})()['{pinned_line}'] === 4", timeout=30_000)
            widths = page.evaluate(LINE_WIDTHS_JS)
            assert widths.pop(pinned_line) == 4 and set(widths.values()) == {2}, "only the pinned token's line is bold"

            assert not page.query_selector(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
            watch.assert_clean()
        finally:
            context.close()
