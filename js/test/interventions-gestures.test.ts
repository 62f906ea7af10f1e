// @vitest-environment happy-dom
/**
 * The gestures and requests of issue 15 that go beyond click-to-select: a rectangle dragged on the image selects every
 * patch whose box it touches (in original pixels; shift adds), a drag over the layer × head overview's rows knocks
 * out that layer window, "New greedy answer" asks the kernel for the answer with the shown run applied, the fills
 * follow `meta.interventions.fills`, and the image-reliance bar shades and sorts the answer tokens and picks the
 * token a method map shows while nothing is focused. The kernel is faked; every reply is validated.
 */

import { afterEach, describe, expect, it, vi } from "vitest";
import { createStaticModel } from "../src/host/static-host";
import { parseGeneration, parseInterventionsMeta, parseReliance } from "../src/protocol";
import { columnsInRect } from "../src/views/interventions";
import { dragWindow } from "../src/views/overview";
import { baselineText, mostReliant, rankByValue } from "../src/views/reliance";
import { realData, realState } from "./fixtures";
import { mountWidget } from "./mount";

const HOSTILE = "<img src=x onerror=window.__pwned=1>";

function meta(state: Record<string, unknown>, interventions: Record<string, unknown>): Record<string, unknown> {
  return { ...state, meta: { ...(state.meta as Record<string, unknown>), interventions } };
}

const LIVE = { can_run: true, fills: ["mean", "zero", "blur", "paint"], default_fill: "zero", history: [], curve: null, max_new_tokens: 64 };

function pointer(type: string, x: number, y: number, shiftKey = false): MouseEvent {
  // happy-dom's PointerEvent is a MouseEvent with a pointerId; the listeners read only coordinates and keys.
  return new MouseEvent(type, { bubbles: true, clientX: x, clientY: y, shiftKey, button: 0 });
}

describe("pure helpers", () => {
  const boxes: [number, number, number, number][] = [
    [0, 0, 10, 10],
    [10, 0, 20, 10],
    [0, 10, 10, 20],
    [10, 10, 20, 20],
  ];
  const box = (p: number) => boxes[p]!;

  it("columnsInRect takes every box the rectangle touches, in any corner order, boxes half-open", () => {
    expect(columnsInRect(box, [0, 1, 2, 3], [2, 2], [12, 5])).toEqual([0, 1]);
    expect(columnsInRect(box, [0, 1, 2, 3], [12, 5], [2, 2])).toEqual([0, 1]);
    expect(columnsInRect(box, [0, 1, 2, 3], [5, 5], [5, 5])).toEqual([0]); // a point: the box it lies in
    expect(columnsInRect(box, [0, 1, 2, 3], [10, 10], [19, 19])).toEqual([3]); // x1 = 10 is outside box 0
    expect(columnsInRect(box, [3, 1], [0, 0], [20, 20])).toEqual([1, 3]); // only the drawn columns, sorted
    expect(columnsInRect(box, [0, 1, 2, 3], [30, 30], [40, 40])).toEqual([]);
  });

  it("dragWindow orders and clamps a row drag", () => {
    expect(dragWindow(2.7, 0.2, 4)).toEqual([0, 2]);
    expect(dragWindow(-3, 9, 4)).toEqual([0, 3]);
  });

  it("rank and the most reliant token a map has a row for", () => {
    expect(rankByValue([0.1, 3, 3, 0])).toEqual([1, 2, 0, 3]);
    const r = { baseline: "blank", positions: [7, 8, 9], kl: [0.001, 4.2, 0], pcxmi: [0, 4, 0] };
    expect(mostReliant(r, () => true)).toBe(8);
    expect(mostReliant(r, (p) => p !== 8)).toBe(7);
    expect(mostReliant({ ...r, kl: [0, 0, 0] }, () => true)).toBeNull();
    expect(baselineText("blur")).toBe("the blurred image");
  });

  it("parsers: reliance and generation strictly, the meta leniently", () => {
    expect(parseReliance({ baseline: "blank", positions: [8, 9], kl: [4, 0], pcxmi: [4, 0] }, 10).kl).toEqual([4, 0]);
    expect(() => parseReliance({ positions: [10], kl: [1], pcxmi: [1] }, 10)).toThrow(/outside/);
    expect(() => parseReliance({ positions: [1], kl: [-1], pcxmi: [1] }, 10)).toThrow(/≥ 0/);
    expect(() => parseReliance({ positions: [1], kl: [1, 2], pcxmi: [1] }, 10)).toThrow(/length/);
    expect(parseGeneration({ label: HOSTILE, text: "blue", tokens: ["blue", "</s>"], original: "red", stopped: "eos" }).text).toBe("blue");
    expect(() => parseGeneration({ text: "x" })).toThrow(/tokens/);
    const m = parseInterventionsMeta({ ...LIVE, fills: ["zero", "other", "noise"], reliance: { can_measure: true, baselines: ["blank", "blur"], default_baseline: "nope", kept: [{ junk: 1 }] } }, 10);
    expect([m.fills, m.defaultFill, m.maxNewTokens]).toEqual([["zero", "other"], "zero", 64]);
    expect(m.reliance).toEqual({ canMeasure: true, baselines: ["blank", "blur"], defaultBaseline: "blank", kept: [] });
  });
});

describe("in the widget", () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    while (cleanups.length > 0) cleanups.pop()!();
  });

  function mount(interventions: Record<string, unknown>, computed: readonly ("relevancy")[] = []) {
    const { data } = realData([...computed]);
    const model = createStaticModel(meta(realState([...computed]), interventions), { kernel: true });
    const mounted = mountWidget(model);
    cleanups.push(mounted.unmount);
    const last = () => model.sent.at(-1)!.content as Record<string, unknown>;
    return { ...mounted, data, model, last };
  }

  it("a dragged rectangle selects the patches it touches on the original image; shift-drag adds; the click after it does nothing", () => {
    const { q, data } = mount(LIVE);
    q('.mmviz-tab[data-panel="interventions"]').click();
    const panel = q(".mmviz-interventions");
    expect([...q<HTMLSelectElement>(".mmviz-iv-fill").options].map((o) => o.value)).toEqual(["mean", "zero", "blur", "paint"]);
    const stack = q(".mmviz-iv-image .mmviz-image-stack");
    const image = data.images[0]!;
    // Displayed at half the original size: client coordinates are original pixels / 2.
    stack.getBoundingClientRect = () => ({ left: 0, top: 0, width: image.width / 2, height: image.height / 2 }) as DOMRect;
    const columns = data.columnsOf(0);
    const [x0, y0, x1, y1] = data.box(columns[0]!);
    const [u0, v0, u1, v1] = data.box(columns.at(-1)!);
    // From the middle of the first patch to the middle of the last: every patch of the image.
    stack.dispatchEvent(pointer("pointerdown", (x0 + x1) / 4, (y0 + y1) / 4));
    window.dispatchEvent(pointer("pointermove", (u0 + u1) / 4, (v0 + v1) / 4));
    expect(q(".mmviz-iv-image .mmviz-iv-rect").hidden).toBe(false);
    window.dispatchEvent(pointer("pointerup", (u0 + u1) / 4, (v0 + v1) / 4));
    stack.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    const expected = columnsInRect((p) => data.box(p), columns, [(x0 + x1) / 2, (y0 + y1) / 2], [(u0 + u1) / 2, (v0 + v1) / 2]);
    expect(expected.length).toBe(columns.length);
    expect(panel.dataset.selected).toBe(expected.join(","));
    expect(q(".mmviz-iv-image .mmviz-iv-rect").hidden).toBe(true);

    // A small rectangle inside the first patch replaces the selection; a shift-drag in the last adds it.
    const drag = (a: [number, number], b: [number, number], shift = false): void => {
      stack.dispatchEvent(pointer("pointerdown", a[0] / 2, a[1] / 2, shift));
      window.dispatchEvent(pointer("pointermove", b[0] / 2, b[1] / 2, shift));
      window.dispatchEvent(pointer("pointerup", b[0] / 2, b[1] / 2, shift));
    };
    drag([x0 + 1, y0 + 1], [x1 - 1, y1 - 1]);
    expect(panel.dataset.selected).toBe(String(columns[0]));
    drag([u0 + 1, v0 + 1], [u1 - 1, v1 - 1], true);
    expect(panel.dataset.selected).toBe(`${columns[0]},${columns.at(-1)}`);
    // A press that barely moves is a click, not a rectangle: the selection is unchanged by the drag.
    stack.dispatchEvent(pointer("pointerdown", 1, 1));
    window.dispatchEvent(pointer("pointermove", 2, 1));
    window.dispatchEvent(pointer("pointerup", 2, 1));
    expect(panel.dataset.selected).toBe(`${columns[0]},${columns.at(-1)}`);
  });

  it("Undo steps back through the selections, whatever gesture made them, and is disabled when there is none", () => {
    const { q, data } = mount(LIVE);
    q('.mmviz-tab[data-panel="interventions"]').click();
    const panel = q(".mmviz-interventions");
    const undo = q<HTMLButtonElement>(".mmviz-iv-undo");
    expect(undo.disabled).toBe(true);
    const columns = data.columnsOf(0);
    const stack = q(".mmviz-iv-image .mmviz-image-stack");
    const image = data.images[0]!;
    stack.getBoundingClientRect = () => ({ left: 0, top: 0, width: image.width, height: image.height }) as DOMRect;
    const [x0, y0, x1, y1] = data.box(columns[0]!);
    const [u0, v0, u1, v1] = data.box(columns[1]!);
    const drag = (box: readonly number[], shift = false): void => {
      stack.dispatchEvent(pointer("pointerdown", box[0]! + 1, box[1]! + 1, shift));
      window.dispatchEvent(pointer("pointermove", box[2]! - 1, box[3]! - 1, shift));
      window.dispatchEvent(pointer("pointerup", box[2]! - 1, box[3]! - 1, shift));
    };
    drag([x0, y0, x1, y1]);
    drag([u0, v0, u1, v1], true);
    expect(panel.dataset.selected).toBe(`${columns[0]},${columns[1]}`);
    drag([0, 0, image.width, image.height]); // the whole image: every patch of it
    expect(panel.dataset.selected).toBe(columns.join(","));
    q(".mmviz-iv-clear").click();
    expect(panel.dataset.selected).toBe("");
    expect(undo.disabled).toBe(false);
    undo.click();
    expect(panel.dataset.selected).toBe(columns.join(","));
    undo.click();
    expect(panel.dataset.selected).toBe(`${columns[0]},${columns[1]}`);
    undo.click();
    expect(panel.dataset.selected).toBe(String(columns[0]));
    undo.click();
    expect(panel.dataset.selected).toBe("");
    expect(undo.disabled).toBe(true);
    undo.click(); // nothing left: a no-op
    expect(panel.dataset.selected).toBe("");
    q(".mmviz-iv-clear").click(); // clearing an empty selection changes nothing, so there is nothing to undo
    expect(undo.disabled).toBe(true);
  });

  it("on the main image a rectangle selects only while the Interventions tab is open", () => {
    const { q, data } = mount(LIVE);
    const main = q(".mmviz-images .mmviz-image-stack");
    const image = data.images[0]!;
    main.getBoundingClientRect = () => ({ left: 0, top: 0, width: image.width, height: image.height }) as DOMRect;
    const drag = (): void => {
      main.dispatchEvent(pointer("pointerdown", 1, 1));
      window.dispatchEvent(pointer("pointermove", image.width - 1, image.height - 1));
      window.dispatchEvent(pointer("pointerup", image.width - 1, image.height - 1));
    };
    drag(); // the tab is closed: nothing is selected
    q('.mmviz-tab[data-panel="interventions"]').click();
    expect(q(".mmviz-interventions").dataset.selected).toBe("");
    drag();
    expect(q(".mmviz-interventions").dataset.selected).toBe([...data.columnsOf(0)].sort((a, b) => a - b).join(","));
  });

  it("dragging over the overview's rows knocks out that layer window; a plain click still selects a cell", () => {
    const { q, data, last, model } = mount(LIVE);
    const grid = q<HTMLCanvasElement>(".mmviz-overview-grid");
    const cell = Number(grid.dataset.cell);
    grid.getBoundingClientRect = () => ({ left: 0, top: 0, width: data.H * cell, height: data.L * cell }) as DOMRect;
    grid.dispatchEvent(pointer("pointerdown", 2, cell * (data.L - 0.5)));
    window.dispatchEvent(pointer("pointermove", 2, cell * 0.5));
    window.dispatchEvent(pointer("pointerup", 2, cell * 0.5));
    grid.dispatchEvent(new MouseEvent("click", { bubbles: true, clientX: 2, clientY: cell * 0.5 }));
    const layers = Array.from({ length: data.L }, (_, i) => i);
    expect(last()).toMatchObject({ type: "intervene", intervention: { kind: "knockout", layers, sources: "image", to: "answer" } });
    expect(grid.dataset.window).toBe(`0,${data.L - 1}`);
    expect(q(".mmviz-interventions").hidden).toBe(false); // the panel opened to show the result
    expect(q<HTMLInputElement>(".mmviz-iv-last").value).toBe(String(data.L - 1));
    const sent = model.sent.length;
    grid.dispatchEvent(pointer("pointerdown", 2, cell * 0.5));
    window.dispatchEvent(pointer("pointerup", 2, cell * 0.5));
    grid.dispatchEvent(new MouseEvent("click", { bubbles: true, clientX: cell + 2, clientY: cell * 0.5 }));
    expect(model.sent.length).toBe(sent); // no knockout for a click
    expect(grid.dataset.selected).toBe("0,1");
  });

  it("asks for the greedy answer of the shown run once, and shows it as text", () => {
    const start = realData([]).data.answerStart;
    const { q, last, model } = mount({ ...LIVE, history: [{ v: 1, index: 0, intervention: { kind: "knockout", layers: [0], sources: "image", to: "answer" }, label: "k", description: "d", positions: [start], clean: [-0.1], delta: [-2] }] });
    q('.mmviz-tab[data-panel="interventions"]').click();
    q(".mmviz-iv-run-answer").click();
    expect(last()).toMatchObject({ type: "generate", intervention: { kind: "knockout", layers: [0] }, max_new_tokens: 32 });
    model.receive({ type: "generated", request: last().request, ok: true, payload: { v: 1, label: HOSTILE, text: HOSTILE, tokens: ["a"], original: "green", stopped: "eos" }, buffer_paths: [] });
    const box = q(".mmviz-iv-answer");
    expect([box.dataset.index, box.dataset.changed, box.dataset.text]).toEqual(["0", "1", HOSTILE]);
    expect(box.querySelector("img")).toBeNull();
    const sent = model.sent.length;
    q(".mmviz-iv-run-answer").click();
    expect(model.sent.length).toBe(sent); // kept: not asked again
    const hostile = mount({ ...LIVE, history: [] });
    hostile.q('.mmviz-tab[data-panel="interventions"]').click();
    hostile.q(".mmviz-iv-run-answer").click();
    expect(hostile.q(".mmviz-iv-status").dataset.state).toBe("error"); // nothing to apply yet
  });

  it("the reliance bar measures on request, shades the answer chips, sorts them, and a method map shows the most reliant token", () => {
    const { q, data, last, model, el } = mount({ ...LIVE, reliance: { can_measure: true, baselines: ["blur", "blank", "mean"], default_baseline: "blank", kept: [] } }, ["relevancy"]);
    const answer = Array.from({ length: data.n - data.answerStart }, (_, i) => data.answerStart + i);
    expect(answer.length).toBeGreaterThan(1);
    expect(q<HTMLSelectElement>(".mmviz-reliance-baseline").value).toBe("blank");
    q(".mmviz-reliance-measure").click();
    expect(last()).toMatchObject({ type: "reliance", baseline: "blank" });
    // The last answer token depends on the image most.
    const kl = answer.map((_, i) => (i === answer.length - 1 ? 3 : 0.01 * i));
    model.receive({ type: "relied", request: last().request, ok: true, payload: { v: 1, baseline: "blank", positions: answer, kl, pcxmi: kl }, buffer_paths: [] });
    const shaded = [...el.querySelectorAll<HTMLElement>(".mmviz-tokens .mmviz-shaded")];
    expect(shaded.map((s) => Number(s.dataset.reliance))).toEqual(kl);
    expect(shaded.map((s) => Number(s.dataset.pos))).toEqual(answer);
    const order = () => [...el.querySelectorAll<HTMLElement>(".mmviz-reliance-list li")].map((li) => Number(li.dataset.pos));
    expect(order()).toEqual([answer.at(-1)!, ...answer.slice(0, -1).reverse()]);
    const sort = q<HTMLInputElement>(".mmviz-reliance-sort");
    sort.checked = false;
    sort.dispatchEvent(new Event("change"));
    expect(order()).toEqual(answer);
    expect(q(".mmviz-reliance-legend").textContent).toMatch(/nats vs a blank grey image/);

    // Relevancy shown, nothing hovered or pinned: its map is the most reliant token's.
    const strip = q(".mmviz-tokens");
    expect(strip.dataset.defaultFocus).toBe("");
    q<HTMLSelectElement>(".mmviz-method").value = "relevancy";
    q(".mmviz-method").dispatchEvent(new Event("change"));
    expect(strip.dataset.defaultFocus).toBe(String(answer.at(-1)));
    expect(Number(q(".mmviz-heat").dataset.row)).toBeGreaterThanOrEqual(0);
    // Hovering another token shows that one instead.
    q(`.mmviz-token[data-pos="${answer[0]}"]`).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(strip.dataset.defaultFocus).toBe("");
  });

  it("shows a kept measurement without a kernel and never offers to measure", () => {
    const { data } = realData([]);
    const answer = [data.answerStart];
    const kept = { ...LIVE, can_run: false, reliance: { can_measure: false, baselines: ["blank"], default_baseline: "blank", kept: [{ v: 1, baseline: "blank", positions: answer, kl: [2], pcxmi: [1] }] } };
    const page = mountWidget(createStaticModel(meta(realState([]), kept), { kernel: false }));
    cleanups.push(page.unmount);
    expect(page.q(".mmviz-reliance-measure").hidden).toBe(true);
    expect(Number(page.q(`.mmviz-token[data-pos="${answer[0]}"]`).dataset.reliance)).toBe(2);
    vi.restoreAllMocks();
  });
});
