// @vitest-environment happy-dom
/**
 * The Interventions panel: its parsers (mmviz/widget/interventions.py's payloads, strict on replies, lenient on the
 * kept history), its selection helpers, and the panel in the whole widget against a fake kernel: select patches,
 * Run sends one validated `intervene` request, the reply's Δ log p becomes one sign-coloured bar per answer token, the
 * history keeps every run and compares two; a knockout and a curve; a page without a kernel shows kept runs only.
 */

import { afterEach, describe, expect, it, vi } from "vitest";
import { createStaticModel } from "../src/host/static-host";
import { parseCurve, parseInterventionsMeta, parseRun } from "../src/protocol";
import { layerWindow, topColumns } from "../src/views/interventions";
import { realData, realState } from "./fixtures";
import { mountWidget } from "./mount";

const HOSTILE = "<img src=x onerror=window.__pwned=1>";

function run(index: number, positions: number[], delta: number[], intervention: unknown = { kind: "ablate", positions: [3], fill: "zero" }) {
  return { v: 1, index, intervention, label: HOSTILE, description: "d", positions, clean: positions.map(() => -0.5), delta };
}

describe("interventions parsers", () => {
  it("read a run strictly and refuse broken ones", () => {
    const r = parseRun(run(0, [5, 6], [-2, 0.5]), 8);
    expect(r.delta).toEqual([-2, 0.5]);
    expect(r.intervention).toEqual({ kind: "ablate", positions: [3], fill: "zero" });
    expect(() => parseRun(run(0, [9], [-2]), 8)).toThrow(/outside/);
    expect(() => parseRun(run(0, [5], [-2, 1]), 8)).toThrow(/length/);
    expect(() => parseRun(run(0, [5], ["x"] as unknown as number[]), 8)).toThrow();
    expect(() => parseRun(run(0, [5], [1], { kind: "steer" }), 8)).toThrow(/kind/);
    expect(() => parseRun(run(0, [5], [1], { kind: "ablate", positions: [1], fill: "noise" }), 8)).toThrow(/fill/);
    expect(() => parseCurve({ width: 1, to: "answer", starts: [0, 1], delta: [1] })).toThrow(/length/);
    expect(parseCurve({ width: 2, to: "last_prompt", starts: [0, 1], delta: [-1, 0], clean: -0.1 }).to).toBe("last_prompt");
  });

  it("keep what is readable of a kept history", () => {
    const meta = parseInterventionsMeta({ can_run: true, default_fill: "blur", history: [run(0, [5], [-1]), { junk: 1 }], curve: { bad: 1 } }, 8);
    expect([meta.canRun, meta.defaultFill, meta.history.length, meta.curve]).toEqual([true, "blur", 1, null]);
    expect(parseInterventionsMeta(undefined, 8)).toEqual({
      canRun: false,
      fills: ["mean", "zero", "blur"],
      defaultFill: "zero",
      history: [],
      curve: null,
      maxNewTokens: 0,
      reliance: { canMeasure: false, baselines: [], defaultBaseline: "blank", kept: [] },
    });
  });

  it("select the top k % of a map and check a layer window", () => {
    expect(topColumns([0.1, 0.9, Number.NaN, 0.5, 0.2], 50)).toEqual([1, 3]);
    expect(topColumns([0.1, 0.9], 1)).toEqual([1]);
    expect(topColumns([], 50)).toEqual([]);
    expect(layerWindow(1, 2, 4)).toEqual([1, 2]);
    expect(typeof layerWindow(2, 1, 4)).toBe("string");
    expect(typeof layerWindow(0, 4, 4)).toBe("string");
    expect(typeof layerWindow(0.5, 1, 4)).toBe("string");
  });
});

describe("the Interventions panel", () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    while (cleanups.length > 0) cleanups.pop()!();
    vi.useRealTimers();
  });

  it("ablates the selected patches, draws Δ bars, keeps a history and compares two runs", () => {
    const { data } = realData([]);
    const state = realState([]);
    const meta = { ...(state.meta as Record<string, unknown>), interventions: { can_run: true, default_fill: "zero", history: [], curve: null } };
    const model = createStaticModel({ ...state, meta }, { kernel: true });
    const { q, el, unmount } = mountWidget(model);
    cleanups.push(unmount);
    const last = () => model.sent.at(-1)!.content as Record<string, unknown>;
    q('.mmviz-tab[data-panel="interventions"]').click();
    const panel = q(".mmviz-interventions");
    expect(panel.hidden).toBe(false);
    expect(el.querySelector(".mmviz-iv-select-frame")).toBeNull(); // images: no frame to select
    // Click patch 0 and 1 of the panel's image (hover sets the patch, a click toggles it), then toggle 1 off again.
    const stack = q(".mmviz-iv-image .mmviz-image-stack");
    // happy-dom lays nothing out: the stack's rect is the image's own pixels, so client coordinates are pixels.
    const image = data.images[0]!;
    stack.getBoundingClientRect = () => ({ left: 0, top: 0, width: image.width, height: image.height }) as DOMRect;
    const click = (p: number, shiftKey = false): void => {
      const [x0, y0, x1, y1] = data.box(p);
      stack.dispatchEvent(new MouseEvent("mousemove", { bubbles: true, clientX: (x0 + x1) / 2, clientY: (y0 + y1) / 2 }));
      stack.dispatchEvent(new MouseEvent("click", { bubbles: true, shiftKey }));
    };
    for (const p of [0, 1, 1]) click(p);
    expect(panel.dataset.selected).toBe("0");
    click(2, true);
    expect(panel.dataset.selected).toBe("0,2");

    q(".mmviz-iv-run-ablate").click();
    const positions = [data.imagePositions[0], data.imagePositions[2]];
    expect(last()).toMatchObject({ type: "intervene", intervention: { kind: "ablate", positions, fill: "zero" } });
    const answer = [data.answerStart];
    model.receive({ type: "intervened", request: last().request, ok: true, payload: run(0, answer, [-2.5], { kind: "ablate", positions, fill: "zero" }), buffer_paths: [] });
    const rows = [...el.querySelectorAll<HTMLElement>(".mmviz-iv-result .mmviz-iv-bar-row")];
    expect(rows.map((r) => Number(r.dataset.delta))).toEqual([-2.5]);
    expect(rows[0]!.querySelector(".mmviz-clamp-bar")!.classList.contains("mmviz-neg")).toBe(true);
    expect(el.querySelector("img")).toBeNull(); // the hostile label is text

    // A knockout with a window; a refused one is shown, not thrown; then compare the two kept runs.
    q<HTMLInputElement>(".mmviz-iv-first").value = "0";
    q<HTMLInputElement>(".mmviz-iv-last").value = "0";
    q(".mmviz-iv-run-knockout").click();
    expect(last()).toMatchObject({ type: "intervene", intervention: { kind: "knockout", layers: [0], sources: "image", to: "answer" } });
    model.receive({ type: "intervened", request: last().request, ok: true, payload: run(1, answer, [0.75], { kind: "knockout", layers: [0], sources: "image", to: "answer" }), buffer_paths: [] });
    expect(panel.dataset.runs).toBe("2");
    q<HTMLInputElement>(".mmviz-iv-last").value = "99";
    const sent = model.sent.length;
    q(".mmviz-iv-run-knockout").click();
    expect(model.sent.length).toBe(sent); // refused in the browser
    expect(q(".mmviz-iv-status").dataset.state).toBe("error");
    const compare = q<HTMLSelectElement>(".mmviz-iv-compare");
    compare.value = "0";
    compare.dispatchEvent(new Event("change"));
    const row = q(".mmviz-iv-result .mmviz-iv-bar-row");
    expect([Number(row.dataset.delta), Number(row.dataset.compare)]).toEqual([0.75, -2.5]);
    q('.mmviz-iv-history li[data-index="0"]').click();
    expect(q(".mmviz-iv-result").dataset.index).toBe("0");
    expect(panel.dataset.selected).toBe("0,2"); // the run's selection shown again

    // The curve: one request, an SVG polyline.
    q<HTMLInputElement>(".mmviz-iv-width").value = "2";
    q(".mmviz-iv-run-curve").click();
    expect(last()).toMatchObject({ type: "curve", width: 2, to: "answer" });
    model.receive({ type: "curved", request: last().request, ok: true, payload: { v: 1, width: 2, sources: "image", to: "answer", starts: [0, 1], delta: [-3, -0.5], clean: -0.1 }, buffer_paths: [] });
    expect(q(".mmviz-iv-curve").dataset.delta).toBe("-3.000000,-0.500000");
    expect(el.querySelector(".mmviz-iv-curve polyline")).not.toBeNull();
    model.receive({ type: "curved", request: "stale", ok: false, error: "x" }); // nobody waits: dropped
    q(".mmviz-iv-run-curve").click();
    model.receive({ type: "curved", request: last().request, ok: false, error: "width must be <b>x</b>" });
    expect(q(".mmviz-iv-status").textContent).toContain("<b>x</b>");
  });

  it("draws the shown run's Δ under every answer chip of the token strip, equal to the panel's, while the panel is open", () => {
    const { data } = realData([]);
    const state = realState([]);
    const answer = Array.from({ length: data.n - data.answerStart }, (_, i) => data.answerStart + i);
    expect(answer.length).toBe(2);
    const kept = [run(0, answer, [-2.5, 0.75]), run(1, answer, [0.0004, -0.0001])];
    const meta = { ...(state.meta as Record<string, unknown>), interventions: { can_run: true, default_fill: "zero", history: kept, curve: null } };
    const model = createStaticModel({ ...state, meta }, { kernel: true });
    const { q, el, unmount } = mountWidget(model);
    cleanups.push(unmount);
    const chips = () => [...el.querySelectorAll<HTMLElement>(".mmviz-tokens .mmviz-has-delta")];
    const strip = () => chips().map((c) => [Number(c.dataset.pos), Number(c.dataset.delta)]);
    const widths = (sel: string) => [...el.querySelectorAll<HTMLElement>(sel)].map((b) => Number.parseFloat(b.style.width));
    const titleBefore = q(`.mmviz-token[data-pos="${answer[0]}"]`).title;
    const text = q(`.mmviz-token[data-pos="${answer[0]}"]`).textContent;
    expect(chips()).toEqual([]); // the panel is closed: no bars
    q('.mmviz-tab[data-panel="interventions"]').click();
    // The last kept run is shown: Δ ≈ 0 everywhere, so the bars are ≈ empty (the scale's floor is 1 nat).
    expect(strip()).toEqual([[answer[0], 0.0004], [answer[1], -0.0001]]);
    expect(q(".mmviz-tokens").dataset.deltaScale).toBe("1");
    expect(widths(".mmviz-tokens .mmviz-delta-fill")).toEqual([0.02, 0.01]);
    expect(widths(".mmviz-iv-result .mmviz-iv-bar")).toEqual([0.02, 0.01]);
    expect(q(".mmviz-iv-result").dataset.scale).toBe("1");
    expect(q(".mmviz-iv-scale").textContent).toContain("±1.00 nats");

    // Show run #1: the strip follows, scaled to its largest |Δ|; each chip's tooltip states its value and the run.
    q('.mmviz-iv-history li[data-index="0"]').click();
    const panelRows = [...el.querySelectorAll<HTMLElement>(".mmviz-iv-result .mmviz-iv-bar-row")].map((r) => [Number(r.dataset.pos), Number(r.dataset.delta)]);
    expect(strip()).toEqual(panelRows);
    expect(strip()).toEqual([[answer[0], -2.5], [answer[1], 0.75]]);
    expect(widths(".mmviz-tokens .mmviz-delta-fill")).toEqual([50, 15]);
    expect(widths(".mmviz-iv-result .mmviz-iv-bar")).toEqual([50, 15]);
    const fills = [...el.querySelectorAll<HTMLElement>(".mmviz-tokens .mmviz-delta-fill")];
    expect(fills.map((f) => f.classList.contains("mmviz-neg"))).toEqual([true, false]);
    const first = q(`.mmviz-token[data-pos="${answer[0]}"]`);
    expect(first.title).toContain("Δ log p -2.500 under #1");
    expect(first.title).toContain("±2.50 nats");
    expect(first.textContent).toBe(text); // the bar adds no text to the chip
    expect(el.querySelector("img")).toBeNull(); // the hostile label stays text in the tooltip

    // The words toggle rebuilds the strip: the bars come back on the new chips.
    q<HTMLInputElement>(".mmviz-words-toggle").checked = true;
    q(".mmviz-words-toggle").dispatchEvent(new Event("change"));
    expect(strip()).toEqual([[answer[0], -2.5], [answer[1], 0.75]]);

    // Closing the panel clears them and restores the tooltips.
    q('.mmviz-tab[data-panel="interventions"]').click();
    expect(chips()).toEqual([]);
    expect(el.querySelectorAll(".mmviz-tokens .mmviz-delta").length).toBe(0);
    q<HTMLInputElement>(".mmviz-words-toggle").checked = false;
    q(".mmviz-words-toggle").dispatchEvent(new Event("change"));
    expect(q(`.mmviz-token[data-pos="${answer[0]}"]`).title).toBe(titleBefore);

    // A new run's reply moves the bars to it at once.
    q('.mmviz-tab[data-panel="interventions"]').click();
    q<HTMLInputElement>(".mmviz-iv-first").value = "0";
    q<HTMLInputElement>(".mmviz-iv-last").value = "0";
    q(".mmviz-iv-run-knockout").click();
    const request = (model.sent.at(-1)!.content as { request: string }).request;
    model.receive({ type: "intervened", request, ok: true, payload: run(2, answer, [-0.5, -4]), buffer_paths: [] });
    expect(strip()).toEqual([[answer[0], -0.5], [answer[1], -4]]);
    expect(q(".mmviz-tokens").dataset.deltaScale).toBe("4");
    expect(q(`.mmviz-token[data-pos="${answer[0]}"]`).title).toContain("under #3");
  });

  it("shows kept runs without a kernel, with Run disabled; no panel without kept runs", () => {
    const state = realState([]);
    const { data } = realData([]);
    const kept = { can_run: false, default_fill: "zero", history: [run(0, [data.answerStart], [-4])], curve: null };
    const page = mountWidget(createStaticModel({ ...state, meta: { ...(state.meta as Record<string, unknown>), interventions: kept } }, { kernel: false }));
    cleanups.push(page.unmount);
    page.q('.mmviz-tab[data-panel="interventions"]').click();
    expect(page.q<HTMLButtonElement>(".mmviz-iv-run-ablate").disabled).toBe(true);
    expect(Number(page.q(".mmviz-iv-result .mmviz-iv-bar-row").dataset.delta)).toBe(-4);
    const empty = { ...kept, history: [] };
    const bare = mountWidget(createStaticModel({ ...state, meta: { ...(state.meta as Record<string, unknown>), interventions: empty } }, { kernel: false }));
    cleanups.push(bare.unmount);
    expect(bare.el.querySelector('.mmviz-tab[data-panel="interventions"]')).toBeNull();
  });
});
