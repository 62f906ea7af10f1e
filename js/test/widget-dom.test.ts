// @vitest-environment happy-dom
/**
 * The whole widget (render) in happy-dom on the payloads the Inspector sends (tests/fixtures/payloads_v1.json),
 * with a fake kernel replaying the recorded replies: the method switcher, compute-on-request (request sent,
 * pending state, stale reply dropped, error shown, map shown once `maps` changes), and per-image views.
 * Canvas pixels are checked in real Chromium (tests/browser/); here canvases have no 2D context.
 */

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { maxOf } from "../src/data";
import { createStaticModel, type StaticModel } from "../src/host/static-host";
import { costHint } from "../src/methods";
import type { MethodInfo } from "../src/protocol";
import { SYNC_DELAY_MS } from "../src/sync";
import { quoteToken } from "../src/views/caption";
import { formatValue } from "../src/views/legend";
import { makeMethodsState, mapEntry, realComputed, realData, realState, realTraits, type RealMethod } from "./fixtures";
import { float32Bytes, int32Bytes } from "./helpers";
import { mountWidget } from "./mount";

/** A non-negative, a signed and a per-layer method, as the recorded trace computed them. */
const RELEVANCY: RealMethod = "relevancy";
const SIGNED: RealMethod = "gradient_x_input";
const LAYERED: RealMethod = "grad_cam";

const real = realData(["relevancy", "gradient_x_input", "grad_cam"]);
const { data } = real;
/** The first answer token: every recorded method has a row for it. */
const ANSWER = data.answerStart;
/** A prompt token with an attention row but no method row. */
const PROMPT = data.tokens.indexOf("what");
const info = (name: string): MethodInfo => real.methods.find((m) => m.name === name)!;
const map = (name: RealMethod) => real.maps.get(name)!;
const quoted = (pos: number): string => quoteToken(data.tokens[pos]!);

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
    option: (name: string) => [...el.querySelectorAll<HTMLOptionElement>(".mmviz-method option")].find((o) => o.value === name)!,
    lastSent: (m: StaticModel) => m.sent.at(-1)?.content as { type: string; method: string; request: string } | undefined,
  };
}

/** What the kernel syncs when it has computed `method` (maps, methods, busy), applied like the host does. */
function kernelComputed(model: StaticModel, method: RealMethod): void {
  for (const [key, value] of Object.entries(realTraits(method))) model.set(key, value);
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
    const state = realState([RELEVANCY]);
    // Every method of the recorded trace can be computed (its model is attached); one is made unavailable here,
    // as for a trace without its model.
    const catalogue = state.methods as Record<string, unknown>[];
    catalogue.find((m) => m.name === "knockout")!.available = false;
    const w = mount(state);
    expect(w.q(".mmviz-method-control").hidden).toBe(false);
    expect(w.options()).toEqual(
      catalogue.map((m) => {
        const label = String(m.label);
        if (m.computed === true) return [m.name, label, false];
        if (m.available !== true) return [m.name, `${label} (needs the model)`, true];
        return [m.name, `${label} (compute · ${costHint(m.cost as MethodInfo["cost"])})`, false];
      }),
    );
    expect(w.options().map(([name]) => name)).toEqual(["attention", ...catalogue.slice(1).map((m) => m.name)]);
    expect(w.option(RELEVANCY).textContent).toBe(info(RELEVANCY).label);
    expect(w.option("integrated_gradients").textContent).toMatch(/ \(compute · many passes, may take minutes\)$/);
    expect(w.option(SIGNED).textContent).toMatch(/ \(compute · a few passes\)$/);
    expect(w.option("attention_max").textContent).toMatch(/ \(compute · instant\)$/);
    expect(w.root.dataset.method).toBe("attention");
    expect(w.root.dataset.busy).toBe("");
  });

  it("is hidden without a catalogue (attention only)", () => {
    const s = realState();
    delete s.methods;
    const w = mount(s);
    expect(w.q(".mmviz-method-control").hidden).toBe(true);
  });

  it("shows a computed method's row for the focused token, and no map for a token without a row", () => {
    vi.useFakeTimers();
    const w = mount(realState([RELEVANCY]));
    const relevancy = map(RELEVANCY);
    const { label, meaning } = info(RELEVANCY);
    w.pick(RELEVANCY);
    expect(w.root.dataset.method).toBe(RELEVANCY);
    expect(w.model.sent).toEqual([]); // computed: nothing to ask
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    expect(w.model.get("method")).toBe(RELEVANCY); // synced like layer and head
    w.hover(ANSWER);
    expect(w.root.dataset.focus).toBe(String(ANSWER));
    expect(w.heat().dataset.row).toBe(String(relevancy.rowOf(ANSWER)));
    expect(w.heat().dataset.method).toBe(RELEVANCY);
    expect(w.heat().dataset.signed).toBe("0");
    const range = maxOf(relevancy.row(0, relevancy.rowOf(ANSWER)));
    expect(range).toBeGreaterThan(0);
    expect(Number(w.heat().dataset.range)).toBeCloseTo(range, 12);
    expect(w.caption()).toBe(`${label} of ${quoted(ANSWER)} (position ${ANSWER}) over image tokens. ${meaning}`);
    expect(w.q(".mmviz-legend-label").textContent).toBe(label);
    expect(w.q(".mmviz-legend-min").textContent).toBe("0");
    expect(w.q(".mmviz-legend-max").textContent).toBe(formatValue(range));
    // Only the answer tokens have a row: they are highlighted, the others are not.
    const rows = [...w.el.querySelectorAll<HTMLElement>(".mmviz-token.mmviz-has-row")].map((s) => Number(s.dataset.pos));
    expect(rows).toEqual([...relevancy.positions]);
    expect(rows.every((pos) => pos >= data.answerStart)).toBe(true);
    expect(w.q(".mmviz-tokens").classList.contains("mmviz-rows-sparse")).toBe(true);
    w.hover(PROMPT);
    expect(w.heat().dataset.row).toBe("-1");
    expect(w.caption().startsWith(`${label} explains answer tokens; hover one of the highlighted tokens (${quoted(PROMPT)} at position ${PROMPT}`)).toBe(true);
    // Heads apply to attention only; this map has no layers either.
    expect(w.q<HTMLSelectElement>(".mmviz-head").disabled).toBe(true);
    expect(w.q<HTMLInputElement>(".mmviz-layer").disabled).toBe(true);
    w.pick("attention");
    expect(w.q<HTMLSelectElement>(".mmviz-head").disabled).toBe(false);
    expect(w.caption().startsWith(`Attention of ${quoted(PROMPT)}`)).toBe(true);
    expect(w.caption().endsWith(data.meta.map_description)).toBe(true);
    expect([...w.el.querySelectorAll(".mmviz-token.mmviz-has-row")]).toHaveLength(data.Q);
  });

  it("follows `method` set from Python", () => {
    const w = mount(realState([RELEVANCY]));
    w.model.set("method", RELEVANCY);
    expect(w.root.dataset.method).toBe(RELEVANCY);
    expect(w.q<HTMLSelectElement>(".mmviz-method").value).toBe(RELEVANCY);
    w.model.set("method", "rise"); // not computed: say how to get it, ask nothing
    expect(w.caption().startsWith(`${info("rise").label} is not computed yet: run inspector.compute("rise") in Python.`)).toBe(true);
    expect(w.model.sent).toEqual([]);
  });

  it("draws signed maps on a symmetric range, and says so in the legend", () => {
    const w = mount(realState([RELEVANCY, SIGNED]));
    const signed = map(SIGNED);
    const absMax = (pos: number): number => maxOf(signed.row(0, signed.rowOf(pos)).map(Math.abs));
    w.pick(SIGNED);
    w.hover(ANSWER);
    expect(w.heat().dataset.signed).toBe("1");
    expect(Number(w.heat().dataset.range)).toBeCloseTo(absMax(ANSWER), 12);
    expect(w.q(".mmviz-legend-min").textContent).toBe(formatValue(-absMax(ANSWER)));
    expect(w.q(".mmviz-legend-max").textContent).toBe(formatValue(absMax(ANSWER)));
    expect(w.q(".mmviz-legend-bar").style.backgroundImage).toContain("#f7f7f7 50%");
    expect(w.caption().endsWith(`Orange is positive, purple negative, white 0. ${info(SIGNED).meaning}`)).toBe(true);
    const other = signed.positions.find((pos) => pos !== ANSWER)!;
    w.hover(other);
    expect(Number(w.heat().dataset.range)).toBeCloseTo(absMax(other), 12);
    expect(w.caption().startsWith(`${info(SIGNED).label} of ${quoted(other)} (position ${other})`)).toBe(true);
  });

  it("uses the current layer's slice of a per-layer map, else the nearest one, and says so", () => {
    const state = realState([RELEVANCY, SIGNED, LAYERED]);
    const layered = map(LAYERED);
    const { label } = info(LAYERED);
    // Layer 2: where the recorded map of the first answer token is not flat.
    state.layer = 2;
    const w = mount(state);
    w.pick(LAYERED);
    w.hover(ANSWER);
    expect(w.heat().dataset.layer).toBe("2");
    expect(w.caption().startsWith(`${label} of ${quoted(ANSWER)} (position ${ANSWER}) over image tokens, layer 2.`)).toBe(true);
    expect(w.q<HTMLInputElement>(".mmviz-layer").disabled).toBe(false);
    // The real map has a slice for every layer; keep only the slice after layer 2 to see the nearest one used.
    const slice = layered.sliceFor(2).slice;
    const values = Array.from({ length: layered.R }, (_, r) => [...layered.row(slice, r)]).flat();
    w.model.set("maps", { [LAYERED]: mapEntry(values, [1, layered.R, data.P], [...layered.positions], { layers: [2], label }) });
    w.model.set("layer", 0);
    expect(w.root.dataset.layer).toBe("0");
    expect(w.heat().dataset.layer).toBe("2");
    expect(w.caption()).toContain(`layer 2 (layer 0 has no ${label} map; showing the nearest layer)`);
  });

  it("reports a malformed map without breaking the others", () => {
    const s = realState([RELEVANCY]);
    // Hand-made: two rows of values for one position (Python never sends that).
    (s.maps as Record<string, unknown>).broken = mapEntry(new Array(2 * data.P).fill(0.5), [2, data.P], [ANSWER]);
    const w = mount(s);
    expect(w.q(".mmviz-error").hidden).toBe(false);
    expect(w.q(".mmviz-error").textContent).toContain(`maps.broken.values has shape [2, ${data.P}], expected [1, ${data.P}]`);
    w.pick(RELEVANCY);
    w.hover(ANSWER);
    expect(w.heat().dataset.row).toBe("0");
  });
});

describe("compute on request (fake kernel replaying the recorded replies)", () => {
  it("sends the request, shows the pending state, drops stale replies and shows the map once `maps` has it", () => {
    const w = mount(realState([RELEVANCY]));
    const { label } = info(SIGNED);
    w.hover(ANSWER);
    w.pick(SIGNED);
    const sent = w.lastSent(w.model)!;
    expect(w.model.sent).toHaveLength(1);
    expect(sent).toMatchObject({ type: "compute", method: SIGNED });
    expect(w.root.dataset.busy).toBe(SIGNED);
    expect(w.root.dataset.method).toBe(SIGNED);
    expect(w.caption().startsWith(`Computing ${label} in the kernel (a few passes)… the map appears here`)).toBe(true);
    expect(w.option(SIGNED).textContent).toBe(`${label} (computing…)`);
    expect(w.option(SIGNED).disabled).toBe(false);
    expect(w.heat().dataset.row).toBe("-1");

    // A stale reply (another request id) changes nothing.
    w.model.receive({ ...realComputed(SIGNED, "mmviz-old-request"), ok: false, error: "stale" });
    expect(w.root.dataset.busy).toBe(SIGNED);
    expect(w.q(".mmviz-error").hidden).toBe(true);

    // The kernel syncs the map (traits), then replies.
    kernelComputed(w.model, SIGNED);
    expect(w.heat().dataset.row).toBe(String(map(SIGNED).rowOf(ANSWER)));
    expect(w.heat().dataset.signed).toBe("1");
    w.model.receive(realComputed(SIGNED, sent.request));
    expect(w.root.dataset.busy).toBe("");
    expect(w.option(SIGNED).textContent).toBe(label);
    expect(w.caption().startsWith(`${label} of ${quoted(ANSWER)} (position ${ANSWER})`)).toBe(true);
    // Asking again is not needed: picking it again sends nothing.
    w.pick("attention");
    w.pick(SIGNED);
    expect(w.model.sent).toHaveLength(1);
  });

  it("shows the kernel's error and goes back to the previous map", () => {
    const w = mount(realState([RELEVANCY]));
    w.pick(RELEVANCY);
    w.pick(LAYERED);
    const { request } = w.lastSent(w.model)!;
    w.model.receive({ ...realComputed(LAYERED, request), ok: false, error: "the trace has no model <b>x</b>" });
    const box = w.q(".mmviz-error");
    expect(box.hidden).toBe(false);
    expect(box.textContent).toBe(`mmviz: could not compute ${info(LAYERED).label}: the trace has no model <b>x</b>`);
    expect(box.querySelector("b")).toBe(null); // text, not markup
    expect(w.root.dataset.busy).toBe("");
    expect(w.root.dataset.method).toBe(RELEVANCY);
    expect(w.q<HTMLSelectElement>(".mmviz-method").value).toBe(RELEVANCY);
    // Picking it again retries (and clears the error).
    w.pick(LAYERED);
    expect(w.model.sent).toHaveLength(2);
    expect(box.hidden).toBe(true);
  });

  it("gives up after the timeout, saying the kernel did not answer; the map still shows if it arrives", () => {
    vi.useFakeTimers();
    const w = mount(realState([RELEVANCY]), { timeout: 60_000 });
    const { label } = info(SIGNED);
    w.pick(SIGNED);
    vi.advanceTimersByTime(59_999);
    expect(w.root.dataset.busy).toBe(SIGNED);
    vi.advanceTimersByTime(1);
    expect(w.root.dataset.busy).toBe("");
    expect(w.q(".mmviz-error").textContent).toContain(`could not compute ${label}: the kernel did not answer within 1 minute`);
    expect(w.root.dataset.method).toBe("attention");
    kernelComputed(w.model, SIGNED);
    expect(w.option(SIGNED).textContent).toBe(label);
  });

  it("shows the kernel's busy trait (a computation started from Python)", () => {
    const w = mount(realState([RELEVANCY]));
    w.model.set("method", SIGNED);
    w.model.set("busy", SIGNED);
    expect(w.root.dataset.busy).toBe(SIGNED);
    expect(w.caption().startsWith(`Computing ${info(SIGNED).label} in the kernel`)).toBe(true);
    w.model.set("busy", "");
    expect(w.root.dataset.busy).toBe("");
  });

  it("offers no computation on a page without a kernel (static export)", () => {
    const w = mount(realState([RELEVANCY]), { kernel: false });
    const uncomputed = real.methods.filter((m) => m.name !== "attention" && m.name !== RELEVANCY).map((m) => m.name);
    expect(w.options().filter(([, , disabled]) => disabled).map(([name]) => name)).toEqual(uncomputed);
    w.model.set("method", SIGNED);
    expect(w.caption()).toMatch(new RegExp(`not computed before this page was exported.*methods=\\["${SIGNED}"\\]`));
    expect(w.model.sent).toEqual([]);
  });
});

describe("per-image views", () => {
  /**
   * Hand-made: the shapes model sees one view per image, so an image with a coarse "base" view (column 0, the
   * whole image) and a fine "crop" view (columns 1–3), as LLaVA-NeXT sends, is built on the small state.
   */
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
    const w = mount(realState([RELEVANCY]));
    expect(w.el.querySelector(".mmviz-view-select")).toBe(null);
    expect(w.q(".mmviz-image").dataset.view).toBe("");
  });
});

describe("layout source", () => {
  it("labels a measured layout in the title and says how it was measured; an adapter's layout has no badge", () => {
    const plain = mount(realState([]));
    expect(plain.el.querySelector(".mmviz-badge")).toBeNull();
    const state = realState([]);
    state.meta = { ...(state.meta as Record<string, unknown>), layout_source: "measured" };
    const w = mount(state);
    const badge = w.q(".mmviz-title .mmviz-badge");
    expect(badge.textContent).toBe("layout measured");
    expect(badge.title).toContain("mmviz.adapters.verify(model, processor, image)");
  });
});
