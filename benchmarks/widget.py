"""The widget in a real browser on a LLaVA-1.5-7B-shaped trace: first-payload bytes, hover and layer-switch latency.

Run: ``python benchmarks/widget.py`` (about two minutes) or ``--quick`` (a smoke run on a small shape, used by CI).
Prints one markdown table and a PASS/FAIL line per target; the exit status is 0 either way (a benchmark, not a
test). Needs Debian's chromium and JupyterLab (``bash scripts/setup.sh --browser``).

Shape: 32 layers × 32 heads × 64 text rows × 576 image tokens (24 × 24), synthetic attention (softmax of random
logits, causal), on a 336 × 336 picture; no model is needed. Everything runs in one process tree on this machine:
a JupyterLab 4 server with a real kernel holding the Inspector, and headless Chromium showing it.

* **First payload**: every byte the first render ships (the synced state's JSON + its binary buffers, without
  the widget's code), against BertViz-style JSON of the same per-head attention (nested lists of floats).
* **Hover → painted**: 500 hovers over tokens (synthetic ``mouseover`` events through the widget's own handlers).
  *handler* is the widget's synchronous work (state update, decoding one row, painting 576 boxes into the canvas);
  *painted* adds the browser's rendering of the frame that shows it (style, layout, paint, composite: from that
  frame's ``requestAnimationFrame`` to a task queued behind it), i.e. the hover's cost to reach the screen without
  the idle wait for the display's next refresh (≤ 16.7 ms at 60 Hz), which is reported separately as *to vsync*.
* **Layer switch**: with a single head selected, moving to a layer whose per-head maps are not in the browser yet
  (a fetch from the kernel through the comm: request, slicing and quantising one layer, binary reply, decode,
  paint), until the new map is painted; and moving to a layer already fetched.

Targets (issue 7): first payload ≤ 2 MB; hover p95 ≤ 16 ms; layer switch with fetch ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ipywidgets.widgets.widget import _remove_buffers  # noqa: E402

from mmviz.adapters.layout import SPECIAL, TEXT, ImageGeometry, LayoutBuilder  # noqa: E402
from mmviz.records import Trace  # noqa: E402

FULL = {"layers": 32, "heads": 32, "text": 64, "grid": 24, "hovers": 500, "switches": 12}
QUICK = {"layers": 6, "heads": 4, "text": 16, "grid": 8, "hovers": 60, "switches": 3}
TARGETS = {"first payload (MB)": 2.0, "hover p95 (ms)": 16.0, "layer switch with fetch p95 (ms)": 100.0}


def picture(side: int = 336) -> Image.Image:
    """A structured test picture (gradients and shapes), so its PNG is photo-like in size, not noise."""
    y, x = np.mgrid[0:side, 0:side]
    pixels = np.stack([x * 255 // side, y * 255 // side, (x + y) * 127 // side], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 50, 150, 160), fill=(220, 30, 30))
    draw.rectangle((190, 180, 300, 290), fill=(30, 80, 230))
    return image


def synthetic_trace(layers: int, heads: int, text: int, grid: int, seed: int = 0) -> Trace:
    """A trace shaped like LLaVA-1.5 on one image: 5 prompt tokens, ``grid²`` image tokens, then ``text − 5`` text
    tokens whose last 8 are the answer; every text position is a query row with causal softmax attention."""
    rng = np.random.default_rng(seed)
    n_image = grid * grid
    before, after = 5, text - 5
    n = before + n_image + after
    words = ["USER", ":", " describe", " the", " picture", " in", " detail", ".", " ASSISTANT", ":"]
    tokens = ["<s>", *words[: before - 1], *(["<image>"] * n_image)]
    tokens += [words[i % len(words)] if i < after - 8 else f" word{i}" for i in range(after)]
    special = np.zeros(n, bool)
    special[0] = True
    builder = LayoutBuilder(tokens, special)
    side = 336
    cell = side / grid
    r, c = np.divmod(np.arange(n_image), grid)
    boxes = np.stack([c * cell, r * cell, (c + 1) * cell, (r + 1) * cell], axis=1).astype(np.float32)
    builder.mark_grid(
        np.arange(before, before + n_image), image_index=0, view="base", grid_shape=(grid, grid), boxes=boxes
    )
    builder.images.append(ImageGeometry(side, side, (0.0, 0.0, float(side), float(side))))
    layout = builder.build()
    queries = np.flatnonzero(np.isin(layout.kinds, [TEXT, SPECIAL]))
    logits = rng.standard_normal((layers, heads, len(queries), n), dtype=np.float32) * 2.0
    logits[..., before : before + n_image] += rng.standard_normal((layers, heads, 1, n_image), dtype=np.float32) * 2
    causal = np.arange(n)[None, :] <= queries[:, None]
    logits = np.where(causal, logits, -np.inf)
    attention = np.exp(logits - logits.max(axis=-1, keepdims=True))
    attention /= attention.sum(axis=-1, keepdims=True)
    answer_start = n - 8
    return Trace(
        tokens=tokens,
        token_ids=np.arange(n),
        layout=layout,
        prompt="".join(tokens[:answer_start]),
        answer="".join(tokens[answer_start:]),
        answer_start=answer_start,
        answer_logprobs=np.log(rng.uniform(0.05, 0.95, 8)).astype(np.float32),
        images=[picture(side)],
        family="LLaVA-1.5 (synthetic)",
        model_name=f"llava-1.5-7b-shaped-{layers}x{heads}",
        num_layers=layers,
        num_heads=heads,
        query_positions=queries,
        attention_rows=attention.astype(np.float32),
        layers=np.arange(layers),
    )


def payload_bytes(inspector) -> tuple[int, int]:
    """Bytes of the first render's synced state (JSON part, binary buffers), without the widget's code."""
    state = {k: v for k, v in inspector.get_state().items() if k not in ("_esm", "_css")}
    stripped, _, buffers = _remove_buffers(state)
    return len(json.dumps(stripped)), sum(len(b) for b in buffers)


def bertviz_json_bytes(trace: Trace) -> int:
    """Size of the same per-head attention as nested JSON lists of floats (one layer measured, times L)."""
    one_layer = trace.attention(layer=0)
    return len(json.dumps(one_layer.tolist())) * trace.num_layers


HOVER_JS = """async (n) => {
    const root = document.querySelector('.mmviz-root');
    const tokens = [...root.querySelectorAll('.mmviz-token.mmviz-has-row')];
    const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
    const afterFrame = () => new Promise((resolve) => {
        requestAnimationFrame((ts) => {
            const raf = performance.now();
            const channel = new MessageChannel();
            channel.port1.onmessage = () => resolve([raf, performance.now()]);
            channel.port2.postMessage(0);
        });
    });
    const handler = [], painted = [], vsync = [];
    for (let i = 0; i < n; i++) {
        await frame();
        await new Promise((resolve) => setTimeout(resolve, (i * 7) % 12));  // a random phase within the frame
        const token = tokens[(i * 37) % tokens.length];
        const t0 = performance.now();
        token.dispatchEvent(new MouseEvent('mouseover', { bubbles: true }));
        const t1 = performance.now();
        const [raf, done] = await afterFrame();
        handler.push(t1 - t0);
        painted.push((t1 - t0) + (done - raf));
        vsync.push(done - t0);
        if (root.dataset.focus !== token.dataset.pos) throw new Error('the hover did not reach the widget');
    }
    return { handler, painted, vsync };
}"""

SWITCH_JS = """async ([layers]) => {
    const root = document.querySelector('.mmviz-root');
    const slider = root.querySelector('.mmviz-layer');
    const heat = root.querySelector('.mmviz-heat');
    const painted = (layer) => new Promise((resolve, reject) => {
        const check = () =>
            root.dataset.waiting === '' && heat.dataset.layer === String(layer) && heat.dataset.row !== '-1';
        const timer = setTimeout(() => reject(new Error(`layer ${layer} was not painted in 30 s`)), 30000);
        const observer = new MutationObserver(() => {
            if (check()) { observer.disconnect(); clearTimeout(timer); resolve(); }
        });
        observer.observe(root, { attributes: true, subtree: true });
        if (check()) { observer.disconnect(); clearTimeout(timer); resolve(); }
    });
    const afterFrame = () => new Promise((resolve) => requestAnimationFrame(() => {
        const c = new MessageChannel(); c.port1.onmessage = () => resolve(); c.port2.postMessage(0);
    }));
    const go = async (layer) => {
        const t0 = performance.now();
        slider.value = String(layer);
        slider.dispatchEvent(new Event('input'));
        await painted(layer);
        await afterFrame();
        return performance.now() - t0;
    };
    const fetched = [], cached = [];
    for (const layer of layers) fetched.push(await go(layer));
    for (const layer of layers) cached.push(await go(layer));
    return { fetched, cached };
}"""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_in_browser(shape: dict[str, int], chromium: str) -> dict[str, list[float]]:
    """Start JupyterLab, show the Inspector of the synthetic trace, and time hovers and layer switches."""
    from playwright.sync_api import sync_playwright

    from tests.browser.servers import CHROMIUM_ARGS, KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook

    cells = [
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "from widget import synthetic_trace\nimport mmviz\n"
        f"inspector = mmviz.Inspector(synthetic_trace({shape['layers']}, {shape['heads']}, {shape['text']}, "
        f"{shape['grid']}))\ninspector",
    ]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "bench.ipynb").write_text(notebook(cells))
        with jupyter_server(root) as base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            errors: list[str] = []
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("response", lambda r: r.status >= 400 and errors.append(f"{r.status} {r.url}"))
            page.goto(f"{base}/lab/tree/bench.ipynb?token={TOKEN}")
            page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
            page.evaluate(RUN_ALL_JS)
            page.wait_for_selector(".mmviz-root[data-ready='1'] canvas.mmviz-photo[data-loaded='1']", timeout=300_000)
            hovers = page.evaluate(HOVER_JS, shape["hovers"])
            last = shape["layers"] - 1
            answer = page.query_selector(".mmviz-token.mmviz-answer.mmviz-has-row")
            answer.click()  # pin an answer token: every layer switch paints its row
            page.select_option(".mmviz-head", "0")
            page.wait_for_function(
                f"() => {{ const r = document.querySelector('.mmviz-root'); return r.dataset.waiting === '' "
                f"&& document.querySelector('.mmviz-heat').dataset.layer === '{last}'; }}",
                timeout=60_000,
            )
            layers = [int(v) for v in np.linspace(0, last - 1, min(shape["switches"], last)).round()]
            switches = page.evaluate(SWITCH_JS, [sorted(set(layers))])
            browser.close()
            if errors:
                raise RuntimeError(f"console errors in the page: {errors}")
    return {**hovers, **switches}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small shape and few repetitions (smoke run)")
    args = parser.parse_args()
    shape = QUICK if args.quick else FULL
    import shutil

    import mmviz
    from mmviz.widget import bundle

    chromium = shutil.which("chromium")
    if chromium is None or not bundle.bundle_built():
        print("needs Debian's chromium and the built JS bundle: bash scripts/setup.sh --browser")
        return 0
    start = time.perf_counter()
    trace = synthetic_trace(shape["layers"], shape["heads"], shape["text"], shape["grid"])
    inspector = mmviz.Inspector(trace)
    build_seconds = time.perf_counter() - start
    json_part, binary_part = payload_bytes(inspector)
    first = json_part + binary_part
    bertviz = bertviz_json_bytes(trace)
    code = len(bundle.BUNDLE.read_bytes()) + len(bundle.BUNDLE.with_suffix(".css").read_bytes())
    timings = measure_in_browser(shape, chromium)

    L, H, Q, P = trace.attention().shape
    print(f"shape {L} layers × {H} heads × {Q} text rows × {P} image tokens; Inspector built in {build_seconds:.1f} s")
    rows = [
        ("first payload (state JSON + binary buffers)", f"{first / 1e6:.2f} MB ({json_part / 1e3:.0f} kB JSON)"),
        ("BertViz-style JSON of the same per-head attention", f"{bertviz / 1e6:.1f} MB ({bertviz / first:.0f}×)"),
        ("widget code (JS + CSS, once per page)", f"{code / 1e3:.0f} kB"),
    ]
    for name, key in (("handler", "handler"), ("painted", "painted"), ("to vsync", "vsync")):
        v = timings[key]
        rows.append(
            (f"hover → {name}, p50 / p95 over {len(v)} (ms)", f"{percentile(v, 50):.2f} / {percentile(v, 95):.2f}")
        )
    for name, key in (("with a fetch from the kernel", "fetched"), ("already fetched", "cached")):
        v = timings[key]
        spread = f"{statistics.median(v):.1f} / {percentile(v, 95):.1f} / {max(v):.1f}"
        rows.append((f"layer switch {name}, p50 / p95 / max over {len(v)} (ms)", spread))
    print()
    print("| measure | value |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    results = {
        "first payload (MB)": first / 1e6,
        "hover p95 (ms)": percentile(timings["painted"], 95),
        "layer switch with fetch p95 (ms)": percentile(timings["fetched"], 95),
    }
    for name, target in TARGETS.items():
        verdict = "PASS" if results[name] <= target else "FAIL"
        print(f"{verdict}: {name} = {results[name]:.2f} (target ≤ {target:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
