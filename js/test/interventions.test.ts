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
    expect(parseInterventionsMeta(undefined, 8)).toEqual({ canRun: false, defaultFill: "zero", history: [], curve: null });
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
