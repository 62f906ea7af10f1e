// @vitest-environment happy-dom
/**
 * The sweep widget in happy-dom: the `table_data` parser, filtering and sorting (the rules Python's
 * `visible_rows` shares), sparklines, header clicks and filters synced to the model, and a row click opening the
 * Inspector from the kernel's one `opened` reply (a real recorded Inspector state) or saying why it cannot.
 */

import { afterEach, describe, expect, it } from "vitest";
import { createStaticModel } from "../src/host/static-host";
import { parseSweepControls, parseSweepTable, type SweepTable } from "../src/protocol/sweep";
import { buildSweep, embeddedOpener, isSweep, kernelOpener, type SweepModel } from "../src/sweep";
import { formatCell, nextSort, sparklinePoints, visibleRows } from "../src/sweep-table";
import { realState } from "./fixtures";
import { float32Bytes } from "./helpers";

function tableData(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    v: 1,
    n: 4,
    ids: ["a", "b", "c", "broken"],
    errors: ["", "", "", "InputError: image path does not exist"],
    thumbnails: [new Uint8Array([137, 80, 78, 71]), new Uint8Array(0), new Uint8Array(0), new Uint8Array(0)],
    kept: [true, true, false, false],
    columns: [
      { name: "id", kind: "text", label: "id", values: ["a", "b", "c", "broken"] },
      { name: "status", kind: "text", label: "status", values: ["ok", "ok", "ok", "error"] },
      { name: "asks_for", kind: "text", label: "asks_for", values: ["color", "shape", "color", ""] },
      { name: "answer_logprob", kind: "number", label: "answer_logprob", values: float32Bytes([-1, -3, -2, NaN]) },
      {
        name: "image_share",
        kind: "number",
        label: "image_share (mean over layers)",
        values: float32Bytes([0.2, 0.4, 0.3, NaN]),
        series: { length: 2, data: float32Bytes([0.1, 0.3, 0.4, 0.4, 0.2, 0.4, NaN, NaN]) },
      },
    ],
    ...overrides,
  };
}

const NO_CONTROLS = { sort: { column: "", descending: false }, textFilter: "", ranges: {} };
const ids = (t: SweepTable, rows: number[]): string[] => rows.map((r) => t.ids[r]!);

describe("table_data", () => {
  it("parses every column and names a broken field", () => {
    const t = parseSweepTable(tableData());
    expect(t.n).toBe(4);
    expect(t.columns.map((c) => c.kind)).toEqual(["text", "text", "text", "number", "number"]);
    const share = t.columns[4]!;
    expect(share.kind === "number" && share.series?.length).toBe(2);
    expect(t.thumbnails[0]!.length).toBe(4);
    expect(() => parseSweepTable(tableData({ v: 2 }))).toThrow(/table_data.v/);
    expect(() => parseSweepTable(tableData({ ids: ["a"] }))).toThrow(/table_data.ids has 1 entries, expected 4/);
    const bad = tableData();
    (bad.columns as Record<string, unknown>[])[3]!.values = float32Bytes([1]);
    expect(() => parseSweepTable(bad)).toThrow(/columns\[3\].values/);
  });

  it("reads the controls leniently", () => {
    const t = parseSweepTable(tableData());
    const state: Record<string, unknown> = {
      sort: { column: "nope", descending: true },
      text_filter: 3,
      ranges: { answer_logprob: [-2.5, null], asks_for: [0, 1], image_share: "x" },
    };
    const c = parseSweepControls((k) => state[k], t);
    expect(c).toEqual({ sort: { column: "", descending: true }, textFilter: "", ranges: { answer_logprob: [-2.5, null] } });
  });
});

describe("filter and sort", () => {
  const t = parseSweepTable(tableData());
  it("sorts numbers with missing values last in either direction", () => {
    expect(ids(t, visibleRows(t, { ...NO_CONTROLS, sort: { column: "answer_logprob", descending: false } }))).toEqual(["b", "c", "a", "broken"]);
    expect(ids(t, visibleRows(t, { ...NO_CONTROLS, sort: { column: "answer_logprob", descending: true } }))).toEqual(["a", "c", "b", "broken"]);
    expect(ids(t, visibleRows(t, { ...NO_CONTROLS, sort: { column: "id", descending: true } }))).toEqual(["c", "broken", "b", "a"]);
  });
  it("filters by text (cells and errors, case ignored) and by ranges (missing never inside)", () => {
    expect(ids(t, visibleRows(t, { ...NO_CONTROLS, textFilter: "COLOR" }))).toEqual(["a", "c"]);
    expect(ids(t, visibleRows(t, { ...NO_CONTROLS, textFilter: "does not exist" }))).toEqual(["broken"]);
    expect(ids(t, visibleRows(t, { ...NO_CONTROLS, ranges: { answer_logprob: [-2, null] } }))).toEqual(["a", "c"]);
    expect(ids(t, visibleRows(t, { ...NO_CONTROLS, ranges: { image_share: [null, 0.35] } }))).toEqual(["a", "c"]);
  });
  it("formats cells, toggles sorts and draws sparklines", () => {
    expect(formatCell(NaN)).toBe("—");
    expect(formatCell(-1.23456)).toBe("-1.23");
    expect(nextSort({ column: "x", descending: false }, "x")).toEqual({ column: "x", descending: true });
    expect(nextSort({ column: "x", descending: true }, "y")).toEqual({ column: "y", descending: false });
    expect(sparklinePoints([0, 1], 10, 4)).toBe("0.0,4.0 10.0,0.0");
    expect(sparklinePoints([NaN, NaN], 10, 4)).toBe("");
  });
});

describe("the view", () => {
  afterEach(() => document.body.replaceChildren());

  function mount(open = embeddedOpener({})): { model: ReturnType<typeof createStaticModel>; view: ReturnType<typeof buildSweep>; el: HTMLElement } {
    const model = createStaticModel({ kind: "sweep", table_data: tableData(), sort: { column: "", descending: false }, text_filter: "", ranges: {} });
    const el = document.createElement("div");
    document.body.append(el);
    return { model, view: buildSweep(model as unknown as SweepModel, el, open), el };
  }

  it("marks failed rows and syncs header clicks, filters and ranges to the model", () => {
    const { model, view, el } = mount();
    expect(isSweep(model)).toBe(true);
    expect(el.querySelector('tr[data-id="broken"]')!.className).toContain("mmviz-sweep-failed");
    expect(el.querySelector('tr[data-id="broken"] .mmviz-sweep-error')!.textContent).toContain("does not exist");
    expect(el.querySelectorAll(".mmviz-sweep-spark").length).toBe(3);
    (el.querySelector('th[data-column="answer_logprob"]') as HTMLElement).click();
    expect(view.visibleIds()).toEqual(["b", "c", "a", "broken"]);
    expect(model.get("sort")).toEqual({ column: "answer_logprob", descending: false });
    const filter = el.querySelector(".mmviz-sweep-filter") as HTMLInputElement;
    filter.value = "shape";
    filter.dispatchEvent(new Event("input"));
    expect(view.visibleIds()).toEqual(["b"]);
    expect(model.get("text_filter")).toBe("shape");
    view.setFilter("");
    view.setRange("answer_logprob", -1.5, -3); // reversed bounds are put in order
    expect(model.get("ranges")).toEqual({ answer_logprob: [-3, -1.5] });
    expect(view.visibleIds()).toEqual(["b", "c"]);
    model.set("ranges", {}); // the kernel (a linked histogram's reset) clears it
    expect(view.visibleIds().length).toBe(4);
    view.dispose();
  });

  it("opens a row through one request and one reply, and says why when it cannot", async () => {
    const model = createStaticModel({ kind: "sweep", table_data: tableData(), sort: {}, text_filter: "", ranges: {} });
    const opener = kernelOpener(model as unknown as SweepModel, 1000);
    const el = document.createElement("div");
    document.body.append(el);
    const view = buildSweep(model as unknown as SweepModel, el, opener.open);
    (el.querySelector('tr[data-id="a"]') as HTMLElement).click();
    expect(model.sent.length).toBe(1);
    const request = model.sent[0]!.content as { type: string; id: string; request: string };
    expect(request.type).toBe("open");
    expect(request.id).toBe("a");
    const state = realState();
    model.receive({ type: "opened", request: "someone-else", ok: true, payload: {} }); // not ours: dropped
    model.receive({ type: "opened", request: request.request, id: "a", ok: true, payload: state, buffer_paths: [] });
    await new Promise((r) => setTimeout(r, 0));
    expect(el.querySelector('.mmviz-sweep-pane[data-id="a"] .mmviz-root')).not.toBeNull();
    expect(view.inspectorModel!.get("tokens")).toEqual(state.tokens);
    expect(el.querySelector(".mmviz-sweep-status")!.getAttribute("data-state")).toBe("open");
    (el.querySelector('tr[data-id="c"]') as HTMLElement).click();
    const second = model.sent[1]!.content as { request: string };
    model.receive({ type: "opened", request: second.request, id: "c", ok: false, error: "no trace was kept for 'c'" });
    await new Promise((r) => setTimeout(r, 0));
    expect(el.querySelector(".mmviz-sweep-status")!.textContent).toContain("no trace was kept for 'c'");
    expect(el.querySelector(".mmviz-sweep-pane")).toBeNull();
    view.dispose();
    opener.dispose();
  });

  it("an exported page answers from its embedded inspectors", async () => {
    const { view, el } = mount(embeddedOpener({ inspectors: { a: { state: realState(), buffers: [] } }, unavailable: { c: "an exported page has no kernel" } }));
    await view.open("c");
    expect(el.querySelector(".mmviz-sweep-status")!.textContent).toContain("an exported page has no kernel");
    await view.open("a");
    expect(el.querySelector('.mmviz-sweep-pane[data-id="a"]')).not.toBeNull();
    view.dispose();
  });
});
