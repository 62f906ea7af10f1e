/**
 * The sweep widget (`mmviz.SweepWidget`): the examples of a sweep as a sortable, filterable table (thumbnail, id,
 * status, answer, fields, one column per statistic: a scalar's value, an array statistic's mean with a sparkline of
 * its per-layer profile), and below it an Inspector of the example whose row was clicked.
 *
 * Sort, text filter and numeric ranges are the browser-owned traits `sort`, `text_filter`, `ranges` (a linked
 * `mmviz.plots.sweep_histogram` sets `ranges` from the kernel). A click on a row asks the kernel for that example's
 * inspector through one `open` request answered by one `opened` reply (an exported page answers from the
 * inspectors it embeds); the inspector is the Inspector's own view over a static model of the reply's state.
 */

import { newRequestId } from "./channel";
import { base64ToBytes, putAtPath } from "./codec";
import { button, h, Listeners, rebuildOnRevision } from "./dom";
import { createStaticModel, type StaticModel, type StaticPayload } from "./host/static-host";
import type { Model } from "./host/model";
import type { ComparisonModel } from "./comparison";
import { openedState, parseSweepControls, parseSweepTable, type SweepControls, type SweepTable } from "./protocol/sweep";
import { formatCell, nextSort, sparklinePoints, visibleRows } from "./sweep-table";
import { initialize as initializeInspector, render as renderInspector } from "./widget";

/** The model surface the sweep widget needs (the same as the comparison's). */
export type SweepModel = ComparisonModel & { send?(content: unknown, callbacks?: unknown, buffers?: unknown): void };

/** How long a click waits for the kernel's inspector (a re-trace runs the model). */
export const OPEN_TIMEOUT_MS = 10 * 60 * 1000;

/** Is `model` a SweepWidget's (its `kind` trait)? */
export function isSweep(model: unknown): boolean {
  return typeof (model as { get?: unknown }).get === "function" && (model as SweepModel).get("kind") === "sweep";
}

/** Opens an example: resolves with its Inspector state, or rejects with why it cannot be opened. */
export type Opener = (id: string) => Promise<Record<string, unknown>>;

/** An opener asking the kernel through the model's custom messages: one `open` request, one `opened` reply each. */
export function kernelOpener(model: SweepModel, timeoutMs = OPEN_TIMEOUT_MS): { open: Opener; dispose(): void } {
  const waiting = new Map<string, { resolve(s: Record<string, unknown>): void; reject(e: Error): void; timer: ReturnType<typeof setTimeout> }>();
  const onMsg = (content: unknown, buffers: unknown): void => {
    const c = (content !== null && typeof content === "object" ? content : {}) as Record<string, unknown>;
    const w = typeof c.request === "string" ? waiting.get(c.request) : undefined;
    if (c.type !== "opened" || w === undefined) return; // not ours, or stale: dropped
    waiting.delete(c.request as string);
    clearTimeout(w.timer);
    const views = (Array.isArray(buffers) ? buffers : []).map((b: unknown) =>
      b instanceof DataView ? b : ArrayBuffer.isView(b) ? new DataView(b.buffer, b.byteOffset, b.byteLength) : new DataView(b as ArrayBuffer),
    );
    try {
      w.resolve(openedState(c, views, putAtPath));
    } catch (err) {
      w.reject(err instanceof Error ? err : new Error(String(err)));
    }
  };
  model.on("msg:custom", onMsg as (...args: unknown[]) => void);
  return {
    open(id) {
      return new Promise((resolve, reject) => {
        const request = newRequestId();
        const timer = setTimeout(() => {
          if (waiting.delete(request)) reject(new Error("the kernel did not answer (is it busy, or was it restarted?)"));
        }, timeoutMs);
        waiting.set(request, { resolve, reject, timer });
        try {
          if (typeof model.send !== "function") throw new Error("this page has no kernel");
          model.send({ type: "open", id, request });
        } catch (err) {
          waiting.delete(request);
          clearTimeout(timer);
          reject(new Error(`could not reach the kernel: ${err instanceof Error ? err.message : String(err)}`));
        }
      });
    },
    dispose() {
      model.off("msg:custom", onMsg as (...args: unknown[]) => void);
      for (const w of waiting.values()) {
        clearTimeout(w.timer);
        w.reject(new Error("the widget was closed"));
      }
      waiting.clear();
    },
  };
}

/** What an exported page embeds: inspectors of kept traces (`{state, buffers}`) and why the others are not there. */
export interface EmbeddedInspectors {
  inspectors?: Record<string, StaticPayload>;
  unavailable?: Record<string, string>;
}

/** An opener answering from an exported page's embedded inspectors. */
export function embeddedOpener(embedded: EmbeddedInspectors): Opener {
  return (id) => {
    const payload = embedded.inspectors?.[id];
    if (payload === undefined) {
      return Promise.reject(new Error(embedded.unavailable?.[id] ?? `no inspector was embedded for ${id}`));
    }
    const state = { ...(payload.state ?? {}) };
    for (const { path, data } of payload.buffers ?? []) {
      const bytes = base64ToBytes(data);
      putAtPath(state, path, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    }
    return Promise.resolve(state);
  };
}

export interface SweepView {
  readonly root: HTMLElement;
  /** The ids of the rows shown, in order. */
  visibleIds(): string[];
  setRange(column: string, low: number | null, high: number | null): void;
  sortBy(column: string): void;
  setFilter(text: string): void;
  open(id: string): Promise<void>;
  /** The opened example's inspector model (a static model of the kernel's reply), or null. */
  readonly inspectorModel: StaticModel | null;
  dispose(): void;
}

const SPARK_W = 48;
const SPARK_H = 14;

function thumbnailUrl(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]!);
  return `data:image/png;base64,${btoa(binary)}`;
}

/** Build the table and the inspector slot of `model` into `el`; `open` fetches an example's inspector state. */
export function buildSweep(model: SweepModel, el: HTMLElement, open: Opener): SweepView {
  const table: SweepTable = parseSweepTable(model.get("table_data"));
  const listeners = new Listeners();
  let controls: SweepControls = parseSweepControls((k) => model.get(k), table);
  const failed = table.errors.filter((e) => e !== "").length;
  const summary = h("div", { className: "mmviz-sweep-summary" });
  const filter = h("input", { className: "mmviz-sweep-filter", attrs: { type: "search", placeholder: "filter rows (id, answer, fields, errors)", "aria-label": "filter rows" } });
  filter.value = controls.textFilter;
  const clear = button({ className: "mmviz-sweep-clear", text: "clear filters" });
  const head = h("tr");
  const rangeRow = h("tr", { className: "mmviz-sweep-ranges" });
  const body = h("tbody");
  const grid = h("table", { className: "mmviz-sweep-table" }, h("thead", {}, head, rangeRow), body);
  grid.style.borderCollapse = "collapse";
  grid.style.fontSize = "12px";
  const scroller = h("div", { className: "mmviz-sweep-scroll" }, grid);
  scroller.style.maxHeight = "420px";
  scroller.style.overflow = "auto";
  const status = h("div", { className: "mmviz-sweep-status", attrs: { role: "status" } });
  const slot = h("div", { className: "mmviz-sweep-inspector" });
  const root = h("div", { className: "mmviz-root mmviz-sweep" }, h("div", { className: "mmviz-sweep-bar" }, filter, clear, summary), scroller, status, slot);
  el.append(root);

  const rangeInputs = new Map<string, [HTMLInputElement, HTMLInputElement]>();
  head.append(h("th", { text: "" }));
  rangeRow.append(h("th"));
  for (const column of table.columns) {
    const th = h("th", { className: "mmviz-sweep-header", text: column.label, title: `sort by ${column.label}`, data: { column: column.name } });
    th.style.cursor = "pointer";
    th.style.textAlign = "left";
    th.style.padding = "2px 6px";
    listeners.on(th, "click", () => sortBy(column.name));
    head.append(th);
    const cell = h("th");
    if (column.kind === "number") {
      const low = h("input", { className: "mmviz-sweep-min", attrs: { type: "number", step: "any", placeholder: "min", "aria-label": `${column.name} min` }, data: { column: column.name } });
      const high = h("input", { className: "mmviz-sweep-max", attrs: { type: "number", step: "any", placeholder: "max", "aria-label": `${column.name} max` }, data: { column: column.name } });
      for (const input of [low, high]) {
        input.style.width = "5em";
        listeners.on(input, "change", () => setRange(column.name, parseBound(low.value), parseBound(high.value)));
      }
      rangeInputs.set(column.name, [low, high]);
      cell.append(low, high);
    }
    rangeRow.append(cell);
  }

  const rows: HTMLTableRowElement[] = [];
  for (let r = 0; r < table.n; r++) {
    const id = table.ids[r]!;
    const error = table.errors[r]!;
    const tr = h("tr", { className: error ? "mmviz-sweep-row mmviz-sweep-failed" : "mmviz-sweep-row", data: { id, row: String(r) } });
    tr.style.cursor = "pointer";
    tr.style.borderTop = "1px solid rgba(128,128,128,0.3)";
    if (error) tr.style.background = "rgba(220, 50, 50, 0.08)";
    const thumb = h("td");
    const bytes = table.thumbnails[r]!;
    if (bytes.length > 0) {
      const img = h("img", { attrs: { alt: `thumbnail of ${id}`, width: "32", height: "32" } });
      img.src = thumbnailUrl(bytes);
      img.style.objectFit = "contain";
      thumb.append(img);
    }
    tr.append(thumb);
    for (const column of table.columns) {
      const td = h("td", { data: { column: column.name } });
      td.style.padding = "2px 6px";
      if (column.kind === "text") {
        const text = column.values[r]!;
        if (column.name === "status" && error) {
          td.append(h("span", { className: "mmviz-sweep-error", text: `failed: ${error}`, title: error }));
          td.style.color = "#c33";
        } else td.textContent = text;
      } else {
        const value = column.values[r]!;
        td.append(h("span", { className: "mmviz-sweep-value", text: formatCell(value) }));
        if (column.series !== null) {
          const points = sparklinePoints(column.series.data.subarray(r * column.series.length, (r + 1) * column.series.length), SPARK_W, SPARK_H);
          if (points !== "") {
            const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
            svg.setAttribute("width", String(SPARK_W));
            svg.setAttribute("height", String(SPARK_H));
            svg.setAttribute("class", "mmviz-sweep-spark");
            svg.setAttribute("aria-label", `${column.name} per layer`);
            const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
            line.setAttribute("points", points);
            line.setAttribute("fill", "none");
            line.setAttribute("stroke", "currentColor");
            svg.append(line);
            svg.style.marginLeft = "4px";
            svg.style.verticalAlign = "middle";
            td.append(svg);
          }
        }
        td.style.textAlign = "right";
        td.style.whiteSpace = "nowrap";
      }
      tr.append(td);
    }
    listeners.on(tr, "click", () => void view.open(id));
    rows.push(tr);
  }

  let shown: number[] = [];
  const redraw = (): void => {
    shown = visibleRows(table, controls);
    body.replaceChildren(...shown.map((r) => rows[r]!));
    const ranged = Object.keys(controls.ranges);
    summary.textContent =
      `${shown.length} of ${table.n} examples shown` + (failed ? ` · ${failed} failed` : "") + (ranged.length ? ` · ranges on ${ranged.join(", ")}` : "");
    for (const th of head.querySelectorAll<HTMLElement>("th[data-column]")) {
      const mine = th.dataset.column === controls.sort.column;
      th.dataset.sort = mine ? (controls.sort.descending ? "descending" : "ascending") : "";
      th.setAttribute("aria-sort", mine ? (controls.sort.descending ? "descending" : "ascending") : "none");
      const base = table.columns.find((c) => c.name === th.dataset.column)!.label;
      th.textContent = mine ? `${base} ${controls.sort.descending ? "▼" : "▲"}` : base;
    }
    for (const [name, [low, high]] of rangeInputs) {
      const bounds = controls.ranges[name];
      const lowText = bounds?.[0] == null ? "" : String(bounds[0]);
      const highText = bounds?.[1] == null ? "" : String(bounds[1]);
      if (low.value !== lowText && document.activeElement !== low) low.value = lowText;
      if (high.value !== highText && document.activeElement !== high) high.value = highText;
    }
    if (filter.value !== controls.textFilter && document.activeElement !== filter) filter.value = controls.textFilter;
    root.dataset.visible = String(shown.length);
  };

  const save = (changes: Record<string, unknown>): void => {
    for (const [key, value] of Object.entries(changes)) model.set(key, value);
    model.save_changes();
  };
  const rangesTrait = (): Record<string, [number | null, number | null]> =>
    Object.fromEntries(Object.entries(controls.ranges).map(([k, [a, b]]) => [k, [a, b]]));

  function sortBy(column: string): void {
    controls = { ...controls, sort: nextSort(controls.sort, column) };
    redraw();
    save({ sort: { ...controls.sort } });
  }
  function setRange(column: string, low: number | null, high: number | null): void {
    const ranges = { ...controls.ranges };
    if (low === null && high === null) delete ranges[column];
    else ranges[column] = low !== null && high !== null && low > high ? [high, low] : [low, high];
    controls = { ...controls, ranges };
    redraw();
    save({ ranges: rangesTrait() });
  }
  const setFilter = (text: string): void => {
    controls = { ...controls, textFilter: text };
    redraw();
    save({ text_filter: text });
  };
  listeners.on(filter, "input", () => setFilter(filter.value));
  listeners.on(clear, "click", () => {
    controls = { ...controls, textFilter: "", ranges: {} };
    filter.value = "";
    redraw();
    save({ text_filter: "", ranges: {} });
  });
  // The kernel (a linked histogram, Python code, a rejected update sent back) changes the controls.
  const fromKernel = (): void => {
    controls = parseSweepControls((k) => model.get(k), table);
    redraw();
  };
  for (const name of ["change:sort", "change:text_filter", "change:ranges"]) {
    model.on(name, fromKernel);
    listeners.add(() => model.off(name, fromKernel));
  }

  let pane: { model: StaticModel; destroy(): void } | null = null;
  let asked = 0;
  const closePane = (): void => {
    pane?.destroy();
    pane = null;
    slot.replaceChildren();
  };
  const view: SweepView = {
    root,
    visibleIds: () => shown.map((r) => table.ids[r]!),
    setRange,
    sortBy,
    setFilter,
    get inspectorModel() {
      return pane?.model ?? null;
    },
    async open(id: string): Promise<void> {
      const ticket = ++asked;
      for (const tr of rows) tr.classList.toggle("mmviz-sweep-selected", tr.dataset.id === id);
      for (const tr of rows) tr.style.outline = tr.dataset.id === id ? "2px solid #1f77b4" : "";
      root.dataset.opening = id;
      status.dataset.state = "loading";
      status.textContent = `opening ${id}…`;
      try {
        const state = await open(id);
        if (ticket !== asked) return; // a later click won
        closePane();
        const inspectorModel = createStaticModel(state);
        const endInit = initializeInspector({ model: inspectorModel as unknown as Model });
        const host = h("div", { className: "mmviz-sweep-pane", data: { id } });
        slot.append(h("div", { className: "mmviz-sweep-pane-title", text: `example ${id}` }), host);
        const cleanup = renderInspector({ model: inspectorModel as unknown as Model, el: host });
        pane = { model: inspectorModel, destroy: () => (cleanup(), endInit()) };
        status.dataset.state = "open";
        status.textContent = `example ${id}: its inspector is below`;
        root.dataset.opened = id;
      } catch (err) {
        if (ticket !== asked) return;
        closePane();
        status.dataset.state = "error";
        status.textContent = `cannot open ${id}: ${err instanceof Error ? err.message : String(err)}`;
        root.dataset.opened = "";
      }
    },
    dispose() {
      asked += 1;
      closePane();
      listeners.dispose();
      root.remove();
    },
  };
  redraw();
  root.dataset.ready = "1";
  return view;
}

function parseBound(text: string): number | null {
  if (text.trim() === "") return null;
  const v = Number(text);
  return Number.isFinite(v) ? v : null;
}

/** anywidget `render` of a SweepWidget: rebuilt when the kernel bumps `revision`. */
export function renderSweep({ model, el }: { model: SweepModel; el: HTMLElement }): () => void {
  const opener = kernelOpener(model);
  const cleanup = rebuildOnRevision(model, el, () => buildSweep(model, el, opener.open));
  return () => {
    cleanup();
    opener.dispose();
  };
}

/** Mount an exported SweepWidget page (`SweepWidget.to_html`): its payload and its embedded inspectors. */
export function mountSweepStatic(el: HTMLElement, payload: StaticPayload, embedded: EmbeddedInspectors = {}): SweepView | null {
  const state = { ...(payload.state ?? {}) };
  for (const { path, data } of payload.buffers ?? []) {
    const bytes = base64ToBytes(data);
    putAtPath(state, path, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  }
  const model = createStaticModel(state);
  try {
    return buildSweep(model as unknown as SweepModel, el, embeddedOpener(embedded));
  } catch (err) {
    el.append(h("div", { className: "mmviz-error", text: `mmviz: ${err instanceof Error ? err.message : String(err)}` }));
    return null;
  }
}
