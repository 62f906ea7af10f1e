"""The sweep widget in real headless Chromium, exported with ``SweepWidget.to_html``: sort by a header click, filter
by text and by a numeric range, and a click on a row opens that example's inspector (its tokens) below the table;
a failed example is marked and says why it cannot be opened."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
import mmviz.plots
from tests.test_sweep import scene_rows


@pytest.fixture(scope="module")
def sweep_result(tmp_path_factory):
    model, processor = mmviz.zoo.load("shapes-vlm")
    rows = [*scene_rows(range(4)), {"id": "broken", "image": "/no/such/image.png", "prompt": "What is it?"}]
    out = tmp_path_factory.mktemp("sweep-page")
    return mmviz.sweep(model, processor, rows, stats=["image_share", "answer_logprob"], out=out, keep="all")


def shown(page) -> list[str]:
    return page.eval_on_selector_all(".mmviz-sweep-table tbody tr", "rows => rows.map(r => r.dataset.id)")


@pytest.mark.browser
def test_sort_filter_and_open(page_watch, sweep_result, tmp_path):
    page, watch = page_watch
    path = tmp_path / "sweep.html"
    mmviz.SweepWidget(sweep_result).to_html(path, plots=[mmviz.plots.sweep_histogram(sweep_result, "answer_logprob")])
    page.goto(path.as_uri())
    page.wait_for_selector('.mmviz-sweep[data-ready="1"]', timeout=15_000)
    ids = sweep_result.ids
    assert shown(page) == ids
    assert page.locator(".mmviz-sweep-row img").count() == 4  # thumbnails of the examples that ran
    assert "failed" in page.inner_text('tr[data-id="broken"] td[data-column="status"]')

    logprob = sweep_result.column("answer_logprob")
    page.click('th[data-column="answer_logprob"]')
    ascending = [*(ids[i] for i in np.argsort(logprob[:4])), "broken"]
    assert shown(page) == ascending
    page.click('th[data-column="answer_logprob"]')
    assert shown(page) == [*ascending[:4][::-1], "broken"]

    page.fill(".mmviz-sweep-filter", "SCENE-1")
    assert shown(page) == ["scene-1"]
    page.fill(".mmviz-sweep-filter", "")
    middle = float(np.median(logprob[:4]))
    page.fill('.mmviz-sweep-min[data-column="answer_logprob"]', repr(middle))
    page.press('.mmviz-sweep-min[data-column="answer_logprob"]', "Enter")
    page.locator(".mmviz-sweep-filter").focus()
    assert set(shown(page)) == {i for i, v in zip(ids, logprob, strict=True) if v >= middle}
    page.click(".mmviz-sweep-clear")
    assert len(shown(page)) == 5
    page.evaluate("window.mmvizView.setRange('answer_logprob', -1e9, 1e9)")  # what the histogram's box select calls
    assert "broken" not in shown(page)
    page.click(".mmviz-sweep-clear")

    page.click('tr[data-id="scene-2"]')
    page.wait_for_selector('.mmviz-sweep-pane[data-id="scene-2"] .mmviz-root', timeout=15_000)
    trace = sweep_result.trace("scene-2")
    strip = page.inner_text(".mmviz-sweep-pane")
    answer_token = trace.tokens[trace.answer_start].strip()
    assert answer_token and answer_token in strip
    assert page.get_attribute(".mmviz-sweep", "data-opened") == "scene-2"

    page.click('tr[data-id="broken"]')
    page.wait_for_selector('.mmviz-sweep-status[data-state="error"]', timeout=5_000)
    assert "no trace was kept" in page.inner_text(".mmviz-sweep-status")
    assert page.locator(".mmviz-sweep-pane").count() == 0
    watch.assert_clean()
