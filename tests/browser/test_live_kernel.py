"""The Inspector against a real kernel, in JupyterLab 4 and in Notebook 7: displayed twice (independent views),
per-head maps fetched through the comm, a method computed on request, hostile messages sent from the page answered
once each while the views keep working; no console errors, no request leaving localhost."""

from __future__ import annotations

import pytest

from tests.browser.conftest import PageWatch, watch_requests
from tests.browser.servers import KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook

CELLS = [
    "import mmviz, numpy as np\n"
    "model, processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=3, seed=1)\n"
    "y, x = np.mgrid[0:90, 0:160]\n"
    "photo = np.stack([x * 255 // 160, y * 255 // 90, np.full_like(x, 80)], -1).astype(np.uint8)\n"
    "inspector = mmviz.inspect(model, processor, photo, 'What is in the picture?', answer='A red square.')",
    "display(inspector); display(inspector)",
]


# Notebook 7's own start-up race (jupyter/notebook#7862), seen on an empty notebook without mmviz too.
NOTEBOOK7_UPSTREAM = "Cannot read properties of undefined (reading 'schema')"


# Sent from the page on the widget's comm, as a hostile page could: JavaScript strings carry lone surrogates (sent as
# JSON "\ud800" escapes) and any depth of nesting. Each must get exactly one well-formed error reply.
HOSTILE_JS = """async () => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session.kernel;
    const output = panel.content.widgets  // the Inspector's view (progress bars are widgets too)
        .flatMap((cell) => (cell.model.outputs ? cell.model.outputs.toJSON() : []))
        .find((o) => o.data && String(o.data['text/plain']).startsWith('<mmviz.Inspector'));
    const commId = output.data['application/vnd.jupyter.widget-view+json'].model_id;
    const deep = (n) => { let v = []; for (let i = 0; i < n; i++) v = [v]; return v; };
    const lone = '\ud800';
    const messages = [
        { type: 'fetch', what: lone, request: lone },
        { type: 'compute', method: 'relevancy' + lone, request: 'hostile-1' },
        { type: 'fetch', what: deep(900), layer: deep(900), request: 'hostile-2' },
        deep(900),
    ];
    const replies = [];
    const listen = (_, msg) => {
        const data = msg.header.msg_type === 'comm_msg' && msg.content.comm_id === commId ? msg.content.data : null;
        const ours = data && data.method === 'custom' && !String(data.content.request).startsWith('mmviz-');
        if (ours) replies.push(data.content);  // not the replies to the views' own requests still in flight
    };
    kernel.iopubMessage.connect(listen);
    const send = (data) => kernel.sendShellMessage({
        header: { msg_id: crypto.randomUUID(), msg_type: 'comm_msg', username: '', session: kernel.clientId,
                  date: new Date().toISOString(), version: '5.3' },
        parent_header: {}, metadata: {}, channel: 'shell', buffers: [],
        content: { comm_id: commId, data },
    }, false, true);
    for (const content of messages) send({ method: 'custom', content });
    // Trait updates too: a lone surrogate and deep nesting in browser-owned traits are refused, not applied.
    send({ method: 'update', state: { method: lone }, buffer_paths: [] });
    send({ method: 'update', state: { layer: deep(900) }, buffer_paths: [] });
    const deadline = Date.now() + 60000;
    while (replies.length < messages.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 1000));  // a second reply to any of them would arrive by now
    kernel.iopubMessage.disconnect(listen);
    return replies;
}"""


def send_hostile_messages(page, view) -> None:
    replies = page.evaluate(HOSTILE_JS)
    assert len(replies) == 4, replies
    assert all(reply["ok"] is False and reply["type"] in {"error", "fetched", "computed"} for reply in replies)
    # the kernel may answer in another order than the page sent: match the well-formed ids, not positions
    answered = sorted(reply["request"] for reply in replies if reply["request"] is not None)
    assert answered == ["hostile-1", "hostile-2"], f"a well-formed request id is answered under that id: {replies}"
    # The refused method update left the view's method as it was, and the view still works: back to attention,
    # a layer switch paints.
    assert view.get_attribute("data-method") == "gradient_x_input"
    view.query_selector("select.mmviz-method").select_option("attention")
    page.wait_for_function("(r) => r.dataset.method === 'attention'", arg=view)
    view.eval_on_selector(
        ".mmviz-layer", "el => { el.value = '0'; el.dispatchEvent(new Event('input', {bubbles: true})); }"
    )
    view.query_selector(".mmviz-token.mmviz-answer").hover()
    page.wait_for_function(
        "(r) => r.dataset.layer === '0' && r.dataset.waiting === '' "
        "&& r.querySelector('.mmviz-heat').dataset.row !== '-1'",
        arg=view,
    )


def drive(page, watch: PageWatch) -> None:
    """The checks both front ends must pass."""
    page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
    page.evaluate(RUN_ALL_JS)
    page.wait_for_function(
        "() => document.querySelectorAll('.mmviz-root[data-ready=\"1\"]').length === 2", timeout=180_000
    )
    first, second = page.query_selector_all(".mmviz-root")
    first.wait_for_selector("canvas.mmviz-photo[data-loaded='1']", timeout=30_000)
    assert first.query_selector(".mmviz-missing-bundle") is None

    # Two displays are two independent views of one model.
    answer = first.query_selector(".mmviz-token.mmviz-answer")
    position = answer.get_attribute("data-pos")
    answer.click()
    page.wait_for_function(f"(r) => r.dataset.focus === '{position}'", arg=first)
    assert second.get_attribute("data-focus") == "-1"

    # A single head needs its layer's per-head maps: fetched from the kernel through the comm, then painted.
    first.query_selector(".mmviz-head").select_option("1")
    page.wait_for_function(
        "(r) => r.dataset.waiting === '' && r.querySelector('.mmviz-heat').dataset.row !== '-1'",
        arg=first,
        timeout=60_000,
    )
    painted = first.eval_on_selector(
        "canvas.mmviz-heat",
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0)",
    )
    assert painted
    # The overview switches to "attention on the hovered patch": every layer's heads arrive.
    first.query_selector(".mmviz-image-stack").hover()
    first.query_selector(".mmviz-stat").select_option("patch")
    page.wait_for_function(
        "(r) => r.querySelector('.mmviz-overview').dataset.missing === '0'", arg=first, timeout=60_000
    )

    # A method computed on request by the kernel shows in the view that asked.
    first.query_selector(".mmviz-method").select_option("gradient_x_input")
    page.wait_for_function(
        "(r) => r.dataset.busy === '' && r.dataset.method === 'gradient_x_input' "
        "&& r.querySelector('.mmviz-heat').dataset.method === 'gradient_x_input'",
        arg=first,
        timeout=120_000,
    )
    # The logit lens opens in the second view, fetched from the kernel.
    second.query_selector(".mmviz-tab[data-panel='lens']").click()
    second.query_selector(".mmviz-token.mmviz-answer").hover()
    page.wait_for_function("(r) => r.querySelectorAll('tr.mmviz-lens-row').length === 4", arg=second, timeout=60_000)
    send_hostile_messages(page, first)
    watch.assert_clean()


@pytest.mark.jupyter
@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_the_inspector_works_against_a_live_kernel(browser, tmp_path, app):
    (tmp_path / "live.ipynb").write_text(notebook(CELLS))
    with jupyter_server(tmp_path, app=app) as base:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        watch = PageWatch()
        page.on("console", lambda m: m.type == "error" and m.text != NOTEBOOK7_UPSTREAM and watch.errors.append(m.text))
        known = NOTEBOOK7_UPSTREAM if app == "notebook" else None
        page.on("pageerror", lambda error: str(error) != known and watch.errors.append(str(error)))
        page.on("response", lambda r: r.status >= 400 and watch.errors.append(f"HTTP {r.status} {r.url}"))
        watch_requests(page, watch, allowed_hosts=(base, base.replace("http", "ws")))
        path = "lab/tree" if app == "lab" else "notebooks"
        page.goto(f"{base}/{path}/live.ipynb?token={TOKEN}")
        try:
            drive(page, watch)
        finally:
            context.close()
