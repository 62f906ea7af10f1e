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
* **Layer switch**, with a single head selected and an answer token pinned, from the input event until the new map
  is painted (and its frame rendered). Two Inspectors of the same trace are shown, each with its own caches in the
  browser and the kernel:

  * *cold*: the first Inspector has ``prefetch=False`` (the kernel declines idle prefetches, so the browser stops
    prefetching): every switch to a layer not visited yet fetches it from the kernel through the comm (request,
    slicing and quantising one layer, binary reply, decode, paint); then the same layers again (*revisited*, in the
    browser already);
  * *warm*: the second Inspector prefetches while idle (``js/src/prefetch.ts``: the current layer and ±2 around it,
    one request at a time): after each switch the benchmark waits until the prefetch is idle and the page with
    it (one ``requestIdleCallback``), then moves one layer on, to a layer never shown before. (A switch in the very
    task the last prefetched reply lands in also renders that reply's repaint: one frame more under load.)
  * *scrubbing*: the same view moves on one layer every 200 ms without waiting, as a hand on the slider does.

Targets (issues 7 and 17): first payload ≤ 2 MB; hover p95 ≤ 16 ms; layer switch p95 cold ≤ 100 ms, warm ≤ 50 ms.
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
TARGETS = {
    "first payload (MB)": 2.0,
    "hover p95 (ms)": 16.0,
    "layer switch, cold, p95 (ms)": 100.0,
    "layer switch, warm, p95 (ms)": 50.0,
}
SCRUB_PACE_MS = 200
"""One layer per this many milliseconds in the scrubbing run."""


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


def features_bytes(trace: Trace, mlp_width: int = 11008, sae_width: int = 16384) -> tuple[int, int]:
    """Bytes (JSON + buffers) of one Features payload at the trace's shape, with random codes: a layer of MLP
    neurons (LLaVA-1.5-7B's MLP is 11008 wide) and an SAE's latents, every latent that appears labelled (30 chars):
    what crosses per layer does not depend on the values, only on N positions × k kept units."""
    from mmviz.features import TopActivations
    from mmviz.widget.features import TOP_K, features_payload

    rng = np.random.default_rng(0)
    n = len(trace.tokens)
    sizes = []
    for kind, width in (("neurons", mlp_width), ("sae", sae_width)):
        indices = np.stack([rng.choice(width, TOP_K, replace=False) for _ in range(n)]).astype(np.int32)
        values = np.sort(rng.exponential(1.0, (n, TOP_K)), axis=1)[:, ::-1].astype(np.float16)
        top = TopActivations(
            kind=kind,
            layer=0,
            width=width,
            indices=indices,
            values=values,
            reconstruction_error=rng.uniform(0, 1, n).astype(np.float32) if kind == "sae" else None,
            labels={int(u): f"latent {int(u):>6} label, thirty" for u in np.unique(indices)} if kind == "sae" else {},
        )
        stripped, _, buffers = _remove_buffers(features_payload(top))
        sizes.append(len(json.dumps(stripped)) + sum(len(b) for b in buffers))
    return sizes[0], sizes[1]


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

SWITCH_JS = """async ([index, layers, mode, pace]) => {
    const root = document.querySelectorAll('.mmviz-root')[index];
    const slider = root.querySelector('.mmviz-layer');
    const heat = root.querySelector('.mmviz-heat');
    const until = (check, what) => new Promise((resolve, reject) => {
        if (check()) { resolve(); return; }
        const observer = new MutationObserver(() => {
            if (check()) { observer.disconnect(); clearTimeout(timer); resolve(); }
        });
        const timer = setTimeout(() => { observer.disconnect(); reject(new Error(`${what} not within 30 s`)); }, 30000);
        observer.observe(root, { attributes: true, subtree: true });
    });
    const shows = (layer) => () =>
        root.dataset.waiting === '' && heat.dataset.layer === String(layer) && heat.dataset.row !== '-1';
    const afterFrame = () => new Promise((resolve) => requestAnimationFrame(() => {
        const c = new MessageChannel(); c.port1.onmessage = () => resolve(); c.port2.postMessage(0);
    }));
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    const settled = () => new Promise((resolve) => requestIdleCallback(resolve, { timeout: 1000 }));
    const go = async (layer) => {
        const t0 = performance.now();
        slider.value = String(layer);
        slider.dispatchEvent(new Event('input'));
        const atOnce = shows(layer)();  // painted in the input event's own task: the heads were in the browser
        await until(shows(layer), `layer ${layer} painted`);
        await afterFrame();
        return [performance.now() - t0, atOnce];
    };
    const times = [], atOnce = [], revisited = [];
    const record = ([ms, now]) => { times.push(ms); atOnce.push(now); };
    for (const layer of layers) {
        const t0 = performance.now();
        if (mode === 'warm') {
            await until(() => root.dataset.prefetch === 'idle', 'the idle prefetch');
            await settled();  // after the idle prefetch, not in the very task its last reply arrived in
        }
        record(await go(layer));
        if (mode === 'scrub') await sleep(Math.max(0, pace - (performance.now() - t0)));
    }
    if (mode === 'cold') for (const layer of layers) revisited.push((await go(layer))[0]);
    return { times, atOnce, revisited };
}"""

PREPARE_JS = """([index, layer]) => {
    const root = document.querySelectorAll('.mmviz-root')[index];
    root.scrollIntoView();
    root.querySelector('.mmviz-token.mmviz-answer.mmviz-has-row').click();  // pinned: every switch paints its row
    const head = root.querySelector('.mmviz-head');
    head.value = '0';
    head.dispatchEvent(new Event('change'));
    return root.dataset.layer === String(layer);
}"""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_in_browser(shape: dict[str, int], chromium: str) -> dict[str, list[float]]:
    """Start JupyterLab, show two Inspectors of the synthetic trace (prefetch off / on), time hovers and layer
    switches."""
    from playwright.sync_api import sync_playwright

    from tests.browser.servers import CHROMIUM_ARGS, KERNEL_IDLE_JS, RUN_ALL_JS, TOKEN, jupyter_server, notebook

    cells = [
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "from widget import synthetic_trace\nimport mmviz\n"
        f"trace = synthetic_trace({shape['layers']}, {shape['heads']}, {shape['text']}, {shape['grid']})\n"
        "cold, warm = mmviz.Inspector(trace, prefetch=False), mmviz.Inspector(trace)\n"
        "display(cold); display(warm)",
    ]
    last, count = shape["layers"] - 1, shape["switches"]
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
            page.wait_for_function(
                "() => [...document.querySelectorAll('.mmviz-root')].filter((r) => r.dataset.ready === '1' "
                "&& r.querySelector(\"canvas.mmviz-photo[data-loaded='1']\")).length === 2",
                timeout=300_000,
            )
            hovers = page.evaluate(HOVER_JS, shape["hovers"])
            painted = (
                "([i, layer]) => { const r = document.querySelectorAll('.mmviz-root')[i]; return r.dataset.waiting "
                "=== '' && r.querySelector('.mmviz-heat').dataset.layer === layer; }"
            )

            # Cold: the kernel declines the one prefetch the view tries, then every new layer is a fetch.
            assert page.evaluate(PREPARE_JS, [0, last])
            page.wait_for_function(painted, arg=[0, str(last)], timeout=60_000)
            page.wait_for_function(
                "() => { const r = document.querySelectorAll('.mmviz-root')[0]; "
                "return r.dataset.prefetch === 'off' && r.dataset.prefetchIssued === '1'; }",
                timeout=60_000,
            )
            layers = sorted({int(v) for v in np.linspace(0, last - 1, min(count, last)).round()})
            cold = page.evaluate(SWITCH_JS, [0, layers, "cold", 0])

            # Warm, then scrubbing: downwards from the last layer, each layer shown for the first time.
            assert page.evaluate(PREPARE_JS, [1, last])
            page.wait_for_function(painted, arg=[1, str(last)], timeout=60_000)
            warm_layers = list(range(last - 1, max(-1, last - 1 - count), -1))
            scrub_layers = list(range(warm_layers[-1] - 1, max(-1, warm_layers[-1] - 1 - count), -1))
            warm = page.evaluate(SWITCH_JS, [1, warm_layers, "warm", 0])
            scrub = page.evaluate(SWITCH_JS, [1, scrub_layers, "scrub", SCRUB_PACE_MS]) if scrub_layers else None
            browser.close()
            if errors:
                raise RuntimeError(f"console errors in the page: {errors}")
    out = {**hovers, "cold": cold["times"], "revisited": cold["revisited"], "warm": warm["times"]}
    out["warm at once"] = [float(v) for v in warm["atOnce"]]
    if scrub is not None:
        out["scrub"], out["scrub at once"] = scrub["times"], [float(v) for v in scrub["atOnce"]]
    return out


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
    neurons_layer, sae_layer = features_bytes(trace)
    code = len(bundle.BUNDLE.read_bytes()) + len(bundle.BUNDLE.with_suffix(".css").read_bytes())
    timings = measure_in_browser(shape, chromium)

    L, H, Q, P = trace.attention().shape
    print(f"shape {L} layers × {H} heads × {Q} text rows × {P} image tokens; Inspector built in {build_seconds:.1f} s")
    rows = [
        ("first payload (state JSON + binary buffers)", f"{first / 1e6:.2f} MB ({json_part / 1e3:.0f} kB JSON)"),
        ("BertViz-style JSON of the same per-head attention", f"{bertviz / 1e6:.1f} MB ({bertviz / first:.0f}×)"),
        ("widget code (JS + CSS, once per page)", f"{code / 1e3:.0f} kB"),
        (
            f"Features payload of one layer, top-16 of {len(trace.tokens)} positions: neurons / SAE (labelled)",
            f"{neurons_layer / 1e3:.0f} kB / {sae_layer / 1e3:.0f} kB",
        ),
    ]
    for name, key in (("handler", "handler"), ("painted", "painted"), ("to vsync", "vsync")):
        v = timings[key]
        rows.append(
            (f"hover → {name}, p50 / p95 over {len(v)} (ms)", f"{percentile(v, 50):.2f} / {percentile(v, 95):.2f}")
        )
    switches = (
        ("cold: a fetch from the kernel (prefetch off)", "cold"),
        ("warm: after the idle prefetch", "warm"),
        (f"scrubbing: one layer per {SCRUB_PACE_MS} ms, no waiting", "scrub"),
        ("revisited: heads already in the browser", "revisited"),
    )
    for name, key in switches:
        if key not in timings:
            continue
        v = timings[key]
        spread = f"{statistics.median(v):.1f} / {percentile(v, 95):.1f} / {max(v):.1f}"
        if f"{key} at once" in timings:
            spread += f" ({sum(timings[f'{key} at once']):.0f} of {len(v)} in the browser already)"
        rows.append((f"layer switch, {name}, p50 / p95 / max over {len(v)} (ms)", spread))
    print()
    print("| measure | value |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    results = {
        "first payload (MB)": first / 1e6,
        "hover p95 (ms)": percentile(timings["painted"], 95),
        "layer switch, cold, p95 (ms)": percentile(timings["cold"], 95),
        "layer switch, warm, p95 (ms)": percentile(timings["warm"], 95),
    }
    for name, target in TARGETS.items():
        verdict = "PASS" if results[name] <= target else "FAIL"
        print(f"{verdict}: {name} = {results[name]:.2f} (target ≤ {target:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
