// @vitest-environment happy-dom
/**
 * The whole widget (render) in happy-dom against a fake kernel: the method switcher, compute-on-request (request
 * sent, pending state, stale reply dropped, error shown, map shown once `maps` changes), and per-image views.
 * Canvas pixels are checked in real Chromium (tests/browser/); here canvases have no 2D context.
 */

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createStaticModel, type StaticModel } from "../src/host/static-host";
import { SYNC_DELAY_MS } from "../src/sync";
import { makeMethodsState, mapEntry, P, SIGNED, LAYERED } from "./fixtures";
import { float32Bytes, int32Bytes } from "./helpers";
import { mountWidget } from "./mount";

let cleanups: (() => void)[] = [];

function mount(state: Record<string, unknown>, opts: { kernel?: boolean; timeout?: number } = {}) {
  const model = createStaticModel(state, { kernel: opts.kernel ?? true });
  const { unmount, el, q, root } = mountWidget(model, opts.timeout === undefined ? {} : { computeTimeoutMs: opts.timeout });
  cleanups.push(unmount);
  return {
    model,
    el,
    q,
    root,
    caption: () => q(".mmviz-caption").textContent ?? "",
    heat: () => q<HTMLCanvasElement>(".mmviz-heat"),
    pick: (name: string) => {
      const select = q<HTMLSelectElement>(".mmviz-method");
      select.value = name;
      select.dispatchEvent(new Event("change"));
    },
    hover: (pos: number) => q(`.mmviz-token[data-pos="${pos}"]`).dispatchEvent(new MouseEvent("mouseover", { bubbles: true })),
    options: () =>
      [...el.querySelectorAll<HTMLOptionElement>(".mmviz-method option")].map((o) => [o.value, o.textContent, o.disabled]),
    lastSent: (m: StaticModel) => m.sent.at(-1)?.content as { type: string; method: string; request: string } | undefined,
  };
}

beforeEach(() => {
  cleanups = [];
});
afterEach(() => {
  for (const c of cleanups) c();
  vi.useRealTimers();
});

describe("method switcher", () => {
  it("lists the catalogue in order, says what selecting an uncomputed method does, disables the impossible", () => {
    const w = mount(makeMethodsState(["relevancy"]));
    expect(w.q(".mmviz-method-control").hidden).toBe(false);
    expect(w.options()).toEqual([
      ["attention", "Attention", false],
      ["relevancy", "Relevancy", false],
      ["signed", "Signed (compute · many passes, may take minutes)", false],
      ["layered", "Layered (compute · a few passes)", false],
      ["missing", "Missing (not computed)", true],
    ]);
    expect(w.root.dataset.method).toBe("attention");
    expect(w.root.dataset.busy).toBe("");
  });

  it("is hidden without a catalogue (attention only)", () => {
    const s = makeMethodsState([]);
    delete s.methods;
    const w = mount(s);
    expect(w.q(".mmviz-method-control").hidden).toBe(true);
  });

  it("shows a computed method's row for the focused token, and no map for a token without a row", () => {
    vi.useFakeTimers();
    const w = mount(makeMethodsState(["relevancy"]));
    w.pick("relevancy");
    expect(w.root.dataset.method).toBe("relevancy");
    expect(w.model.sent).toEqual([]); // computed: nothing to ask
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    expect(w.model.get("method")).toBe("relevancy"); // synced like layer and head
    w.hover(9);
    expect(w.root.dataset.focus).toBe("9");
    expect(w.heat().dataset.row).toBe("0");
    expect(w.heat().dataset.method).toBe("relevancy");
    expect(w.heat().dataset.signed).toBe("0");
    expect(Number(w.heat().dataset.range)).toBeCloseTo(0.9, 2);
    expect(w.caption()).toMatch(/^Relevancy of ‹A› \(position 9\) over image tokens\. relevancy meaning\.$/);
    expect(w.q(".mmviz-legend-label").textContent).toBe("Relevancy");
    expect(w.q(".mmviz-legend-min").textContent).toBe("0");
    expect(w.q(".mmviz-legend-max").textContent).toBe("0.900");
    // Only the answer token has a row: it is highlighted, the others are not.
    const rows = [...w.el.querySelectorAll<HTMLElement>(".mmviz-token.mmviz-has-row")].map((s) => s.dataset.pos);
    expect(rows).toEqual(["9"]);
    expect(w.q(".mmviz-tokens").classList.contains("mmviz-rows-sparse")).toBe(true);
    w.hover(7);
    expect(w.heat().dataset.row).toBe("-1");
    expect(w.caption()).toMatch(/^Relevancy explains answer tokens; hover one of the highlighted tokens \(‹ what› at position 7/);
    // Heads apply to attention only; this map has no layers either.
    expect(w.q<HTMLSelectElement>(".mmviz-head").disabled).toBe(true);
    expect(w.q<HTMLInputElement>(".mmviz-layer").disabled).toBe(true);
    w.pick("attention");
    expect(w.q<HTMLSelectElement>(".mmviz-head").disabled).toBe(false);
    expect(w.caption()).toMatch(/^Attention of ‹ what›.*Softmax attention\.$/);
    expect([...w.el.querySelectorAll(".mmviz-token.mmviz-has-row")]).toHaveLength(4);
  });

  it("follows `method` set from Python", () => {
    const w = mount(makeMethodsState(["relevancy"]));
    w.model.set("method", "relevancy");
    expect(w.root.dataset.method).toBe("relevancy");
    expect(w.q<HTMLSelectElement>(".mmviz-method").value).toBe("relevancy");
    w.model.set("method", "layered"); // not computed: say how to get it, ask nothing
    expect(w.caption()).toMatch(/^Layered is not computed yet: run inspector\.compute\("layered"\) in Python\./);
    expect(w.model.sent).toEqual([]);
  });

  it("draws signed maps on a symmetric range, and says so in the legend", () => {
    const w = mount(makeMethodsState(["signed"]));
    w.pick("signed");
    w.hover(9);
    expect(w.heat().dataset.signed).toBe("1");
    expect(Number(w.heat().dataset.range)).toBeCloseTo(1.2, 2);
    expect(w.q(".mmviz-legend-min").textContent).toBe("-1.20");
    expect(w.q(".mmviz-legend-max").textContent).toBe("1.20");
    expect(w.q(".mmviz-legend-bar").style.backgroundImage).toContain("#f7f7f7 50%");
    expect(w.caption()).toMatch(/Orange is positive, purple negative, white 0\. signed meaning\.$/);
    w.hover(8);
    expect(Number(w.heat().dataset.range)).toBeCloseTo(0.5, 2);
    expect(w.caption()).toMatch(/^Signed of ‹\?› \(position 8\)/);
  });

  it("uses the current layer's slice of a per-layer map, else the nearest one, and says so", () => {
    const s = makeMethodsState(["layered"]);
    const w = mount(s);
    w.pick("layered");
    w.hover(9);
    expect(w.heat().dataset.layer).toBe("1");
    expect(w.caption()).toMatch(/^Layered of ‹A› \(position 9\) over image tokens, layer 1\./);
    expect(w.q<HTMLInputElement>(".mmviz-layer").disabled).toBe(false);
    // Only the slice after layer 1: at layer 0 the nearest (1) is shown.
    w.model.set("maps", { layered: mapEntry(LAYERED.slice(P), [1, 1, P], [9], { layers: [1], label: "Layered" }) });
    w.model.set("layer", 0);
    expect(w.root.dataset.layer).toBe("0");
    expect(w.heat().dataset.layer).toBe("1");
    expect(w.caption()).toMatch(/layer 1 \(layer 0 has no Layered map; showing the nearest layer\)/);
  });

  it("reports a malformed map without breaking the others", () => {
    const s = makeMethodsState(["relevancy"]);
    (s.maps as Record<string, unknown>).broken = mapEntry(SIGNED, [2, P], [8]);
    const w = mount(s);
    expect(w.q(".mmviz-error").hidden).toBe(false);
    expect(w.q(".mmviz-error").textContent).toMatch(/maps\.broken\.values has shape \[2, 4\], expected \[1, 4\]/);
    w.pick("relevancy");
    w.hover(9);
    expect(w.heat().dataset.row).toBe("0");
  });
});

describe("compute on request (fake kernel)", () => {
  it("sends the request, shows the pending state, drops stale replies and shows the map once `maps` has it", () => {
    const w = mount(makeMethodsState(["relevancy"]));
    w.hover(9);
    w.pick("signed");
    const sent = w.lastSent(w.model)!;
    expect(w.model.sent).toHaveLength(1);
    expect(sent).toMatchObject({ type: "compute", method: "signed" });
    expect(w.root.dataset.busy).toBe("signed");
    expect(w.root.dataset.method).toBe("signed");
    expect(w.caption()).toMatch(/^Computing Signed in the kernel \(many passes, may take minutes\)… the map appears here/);
    expect(w.options()[2]).toEqual(["signed", "Signed (computing…)", false]);
    expect(w.heat().dataset.row).toBe("-1");

    // A stale reply (another request id) changes nothing.
    w.model.receive({ type: "computed", method: "signed", request: "mmviz-old-request", ok: false, error: "stale" });
    expect(w.root.dataset.busy).toBe("signed");
    expect(w.q(".mmviz-error").hidden).toBe(true);

    // The kernel adds the map (trait change), then replies.
    w.model.set("maps", { ...(w.model.get("maps") as object), signed: mapEntry(SIGNED, [2, P], [8, 9], { signed: true, label: "Signed" }) });
    expect(w.heat().dataset.row).toBe("1");
    expect(w.heat().dataset.signed).toBe("1");
    w.model.receive({ type: "computed", method: "signed", request: sent.request, ok: true });
    expect(w.root.dataset.busy).toBe("");
    expect(w.options()[2]).toEqual(["signed", "Signed", false]);
    expect(w.caption()).toMatch(/^Signed of ‹A› \(position 9\)/);
    // Asking again is not needed: picking it again sends nothing.
    w.pick("attention");
    w.pick("signed");
    expect(w.model.sent).toHaveLength(1);
  });

  it("shows the kernel's error and goes back to the previous map", () => {
    const w = mount(makeMethodsState(["relevancy"]));
    w.pick("relevancy");
    w.pick("layered");
    const { request } = w.lastSent(w.model)!;
    w.model.receive({ type: "computed", method: "layered", request, ok: false, error: "the trace has no model <b>x</b>" });
    const box = w.q(".mmviz-error");
    expect(box.hidden).toBe(false);
    expect(box.textContent).toBe("mmviz: could not compute Layered: the trace has no model <b>x</b>");
    expect(box.querySelector("b")).toBe(null); // text, not markup
    expect(w.root.dataset.busy).toBe("");
    expect(w.root.dataset.method).toBe("relevancy");
    expect(w.q<HTMLSelectElement>(".mmviz-method").value).toBe("relevancy");
    // Picking it again retries (and clears the error).
    w.pick("layered");
    expect(w.model.sent).toHaveLength(2);
    expect(box.hidden).toBe(true);
  });

  it("gives up after the timeout, saying the kernel did not answer; the map still shows if it arrives", () => {
    vi.useFakeTimers();
    const w = mount(makeMethodsState(["relevancy"]), { timeout: 60_000 });
    w.pick("signed");
    vi.advanceTimersByTime(59_999);
    expect(w.root.dataset.busy).toBe("signed");
    vi.advanceTimersByTime(1);
    expect(w.root.dataset.busy).toBe("");
    expect(w.q(".mmviz-error").textContent).toMatch(/could not compute Signed: the kernel did not answer within 1 minute/);
    expect(w.root.dataset.method).toBe("attention");
    w.model.set("maps", { ...(w.model.get("maps") as object), signed: mapEntry(SIGNED, [2, P], [8, 9], { signed: true }) });
    expect(w.options()[2]![1]).toBe("Signed");
  });

  it("shows the kernel's busy trait (a computation started from Python)", () => {
    const w = mount(makeMethodsState(["relevancy"]));
    w.model.set("method", "signed");
    w.model.set("busy", "signed");
    expect(w.root.dataset.busy).toBe("signed");
    expect(w.caption()).toMatch(/^Computing Signed in the kernel/);
    w.model.set("busy", "");
    expect(w.root.dataset.busy).toBe("");
  });

  it("offers no computation on a page without a kernel (static export)", () => {
    const w = mount(makeMethodsState(["relevancy"]), { kernel: false });
    expect(w.options().filter(([, , disabled]) => disabled).map(([name]) => name)).toEqual(["signed", "layered", "missing"]);
    w.model.set("method", "signed");
    expect(w.caption()).toMatch(/not computed before this page was exported.*methods=\["signed"\]/);
    expect(w.model.sent).toEqual([]);
  });
});

describe("per-image views", () => {
  /** Image 0: a coarse "base" view (column 0, the whole image) and a fine "crop" view (columns 1–3). */
  function viewsState(): Record<string, unknown> {
    const s = makeMethodsState(["relevancy"]);
    const layout = s.token_layout as Record<string, unknown>;
    layout.boxes = float32Bytes([0, 0, 200, 120, 0, 0, 100, 120, 100, 0, 200, 60, 100, 60, 200, 120]);
    layout.grid = int32Bytes([0, 0, 0, 0, 0, 1, 1, 1]);
    layout.view = Uint8Array.from([1, 2, 2, 2]);
    layout.view_names = ["", "base", "crop"];
    return s;
  }

  it("offers a view selector, defaults to the finest view and switches the drawn columns", () => {
    const w = mount(viewsState());
    const select = w.q<HTMLSelectElement>('.mmviz-view-select[data-image="0"]');
    expect([...select.options].map((o) => [o.value, o.textContent])).toEqual([
      ["1", "base (1 tokens)"],
      ["2", "crop (3 tokens)"],
    ]);
    expect(select.value).toBe("2");
    const image = w.q(".mmviz-image");
    expect(image.dataset.view).toBe("crop");
    expect(w.q(".mmviz-image-label").textContent).toBe("200×120 px · crop view: 3 of 4 image tokens");
    w.pick("relevancy");
    w.hover(9);
    // Relevancy is largest (0.9) in column 2, a crop column: the range is that of the crop view.
    expect(Number(w.heat().dataset.range)).toBeCloseTo(0.9, 2);
    select.value = "1";
    select.dispatchEvent(new Event("change"));
    expect(image.dataset.view).toBe("base");
    expect(w.q(".mmviz-image-label").textContent).toBe("200×120 px · base view: 1 of 4 image tokens");
    // Only column 0 (0.1) is drawn now, so it sets the range.
    expect(Number(w.heat().dataset.range)).toBeCloseTo(0.1, 2);
  });

  it("has no view selector for an image with one view", () => {
    const w = mount(makeMethodsState(["relevancy"]));
    expect(w.el.querySelector(".mmviz-view-select")).toBe(null);
    expect(w.q(".mmviz-image").dataset.view).toBe("");
  });
});
