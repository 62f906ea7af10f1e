/**
 * The layer × head overview: one cell per (layer, head), coloured by a statistic of the focused token's attention
 * row (or, with nothing focused, the mean over the answer's rows): its image share, its entropy, or the attention
 * it pays to the last hovered image patch. Hovering a cell previews that head's map on the image; a click selects
 * it; a layer's row header selects the layer (mean of heads), a head's column header that head averaged over all
 * layers, the corner the mean of everything.
 *
 * Share and entropy come with the first payload (`head_stats`); the patch statistic needs every layer's per-head
 * maps, which are fetched in the background (cells fill in as layers arrive).
 *
 * Dragging over rows (of the cells or of the layer headers) picks a window of layers for the Interventions panel's
 * knockout (`onLayerWindow`, set when the panel can use it); the window stays outlined until the next one. The
 * knockout cuts every head of those layers (mmviz.interventions.Knockout has no per-head cut), so a drag spans whole
 * rows; a plain click still selects one cell.
 */

import { colorFor } from "../colormap";
import type { WidgetData } from "../data";
import { button, h, Listeners, option } from "../dom";
import type { FrameBuilder } from "../frame";
import { MEAN } from "../protocol";
import type { Statistic, Store, ViewState } from "../store";
import { formatValue } from "./legend";

const STAT_LABELS: Record<Statistic, string> = {
  share: "image share",
  entropy: "entropy (nats)",
  patch: "attention on the hovered patch",
};

/** The layer window `[first, last]` (ascending) of a drag between layers `a` and `b`, clamped to 0 … L−1. */
export function dragWindow(a: number, b: number, L: number): [number, number] {
  const clamp = (v: number): number => Math.max(0, Math.min(L - 1, Math.floor(v)));
  return [Math.min(clamp(a), clamp(b)), Math.max(clamp(a), clamp(b))];
}

/** Rows the statistics average over: the focused positions' rows, else the answer's rows, else every row. */
export function statRows(data: WidgetData, focusPositions: readonly number[]): { rows: number[]; which: string } {
  const focused = focusPositions.map((pos) => data.rowOf(pos)).filter((q) => q >= 0);
  if (focused.length > 0) return { rows: focused, which: "focus" };
  const answer: number[] = [];
  data.queryPositions.forEach((pos, q) => {
    if (pos >= data.answerStart - 1) answer.push(q);
  });
  if (answer.length > 0) return { rows: answer, which: "answer" };
  return { rows: Array.from({ length: data.Q }, (_, q) => q), which: "all" };
}

export class Overview {
  readonly el: HTMLDivElement;
  readonly grid: HTMLCanvasElement;
  readonly statSelect: HTMLSelectElement;
  private readonly note: HTMLDivElement;
  private readonly cell: number;
  private readonly listeners = new Listeners();
  private values: Float32Array;
  /** Max of the cells' values: the top of their colour scale. */
  private range = 0;
  private key = "";
  private paintKey = "";
  /** The patch the patch statistic is about: the last one hovered (the mouse leaves the image to reach here). */
  private patch: number | null = null;
  /** Called with the layer window a drag over rows picked (null: dragging picks nothing). */
  onLayerWindow: ((first: number, last: number) => void) | null = null;
  /** The last dragged window, outlined on the grid. */
  private window: [number, number] | null = null;
  /** A drag just ended: the click that follows it selects nothing. */
  private dragged = false;
  private stopDrag: (() => void) | null = null;

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
    private readonly frames: FrameBuilder,
  ) {
    const { L, H } = data;
    this.cell = Math.max(8, Math.min(18, Math.floor(360 / Math.max(1, H))));
    this.values = new Float32Array(L * H).fill(Number.NaN);
    const select = h("select", { className: "mmviz-stat", attrs: { "aria-label": "overview statistic" } });
    for (const stat of ["share", "entropy", "patch"] as Statistic[]) {
      const o = option(stat, STAT_LABELS[stat]);
      o.disabled = stat !== "patch" && data.headStats === null;
      select.append(o);
    }
    const head = h("div", { className: "mmviz-overview-head" }, h("span", { className: "mmviz-panel-title", text: "Layer × head" }), select);

    // Corner, head headers (top), layer headers (left), cells.
    const corner = this.button("all", "mmviz-overview-corner", "mean over every layer and head", {}, () =>
      store.set({ layer: MEAN, head: MEAN, preview: null }),
    );
    const heads = h("div", { className: "mmviz-overview-heads" });
    heads.style.gridTemplateColumns = `repeat(${H}, ${this.cell}px)`;
    for (let hd = 0; hd < H; hd++) {
      heads.append(
        this.button(String(hd), "mmviz-overview-headbtn", `head ${hd}, mean over all layers`, { head: String(hd) }, () =>
          store.set({ layer: MEAN, head: hd, preview: null }),
        ),
      );
    }
    const layers = h("div", { className: "mmviz-overview-layers" });
    layers.style.gridTemplateRows = `repeat(${L}, ${this.cell}px)`;
    for (let l = 0; l < L; l++) {
      layers.append(
        this.button(String(l), "mmviz-overview-layerbtn", `layer ${l}, mean of heads`, { layer: String(l) }, () =>
          store.set({ layer: l, head: MEAN, preview: null }),
        ),
      );
    }
    const grid = h("canvas", {
      className: "mmviz-overview-grid",
      data: { cell: String(this.cell) },
      attrs: { role: "img", "aria-label": "layer by head overview" },
    });
    grid.width = H * this.cell;
    grid.height = L * this.cell;
    const table = h("div", { className: "mmviz-overview-table" }, corner, heads, layers, grid);
    table.style.gridTemplateColumns = `auto ${H * this.cell}px`;

    this.note = h("div", { className: "mmviz-overview-note" });
    this.el = h("div", { className: "mmviz-overview" }, head, table, this.note);
    this.grid = grid;
    this.statSelect = select;

    const cellAt = (ev: MouseEvent): { layer: number; head: number } | null => {
      const r = grid.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) return null;
      const head = Math.floor(((ev.clientX - r.left) / r.width) * H);
      const layer = Math.floor(((ev.clientY - r.top) / r.height) * L);
      return head >= 0 && head < H && layer >= 0 && layer < L ? { layer, head } : null;
    };
    const on = this.listeners.on.bind(this.listeners);
    on(grid, "mousemove", (ev) => {
      const c = cellAt(ev);
      const prev = store.get().preview;
      if (c === null ? prev !== null : prev?.layer !== c.layer || prev.head !== c.head) store.set({ preview: c });
      grid.title = c === null ? "" : this.cellText(c.layer, c.head);
    });
    on(grid, "mouseleave", () => store.set({ preview: null }));
    on(grid, "click", (ev) => {
      if (this.dragged) {
        this.dragged = false;
        return;
      }
      const c = cellAt(ev);
      if (c !== null) store.set({ layer: c.layer, head: c.head, preview: null });
    });
    on(select, "change", () => store.set({ stat: select.value as Statistic }));
    // Drag over rows → a knockout layer window. The layer under the pointer is read off the grid's rows (the layer
    // headers line up with them), so a drag may start on either.
    const layerAt = (ev: MouseEvent): number => {
      const r = grid.getBoundingClientRect();
      return r.height === 0 ? 0 : ((ev.clientY - r.top) / r.height) * L;
    };
    const start = (ev: PointerEvent): void => {
      if (ev.button !== 0 || this.onLayerWindow === null || this.stopDrag !== null) return;
      const from = layerAt(ev);
      if (!(from >= 0 && from < L)) return;
      this.dragged = false;
      let moved = false;
      const move = (e: PointerEvent): void => {
        const [first, last] = dragWindow(from, layerAt(e), L);
        if (!moved && first === last) return;
        moved = true;
        this.window = [first, last];
        this.paintKey = "";
        this.paint(store.get());
      };
      const up = (e: PointerEvent): void => {
        this.stopDrag?.();
        if (!moved) return;
        this.dragged = true;
        const [first, last] = dragWindow(from, layerAt(e), L);
        this.window = [first, last];
        this.paintKey = "";
        this.paint(store.get());
        this.onLayerWindow?.(first, last);
      };
      const cancel = (): void => this.stopDrag?.();
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
      window.addEventListener("pointercancel", cancel);
      this.stopDrag = () => {
        window.removeEventListener("pointermove", move);
        window.removeEventListener("pointerup", up);
        window.removeEventListener("pointercancel", cancel);
        this.stopDrag = null;
      };
    };
    on(grid, "pointerdown", start);
    on(layers, "pointerdown", start);
    // A drag that ends on a layer header must not also select that layer.
    const swallow = (ev: Event): void => {
      if (!this.dragged) return;
      this.dragged = false;
      ev.stopPropagation(); // capture phase: the header button never sees it
    };
    layers.addEventListener("click", swallow, true);
    this.listeners.add(() => layers.removeEventListener("click", swallow, true));
    this.listeners.add(() => this.stopDrag?.());
  }

  private button(text: string, className: string, title: string, data: Record<string, string>, onClick: () => void): HTMLButtonElement {
    const b = button({ className, text, title, data });
    this.listeners.on(b, "click", onClick);
    return b;
  }

  private cellText(layer: number, head: number): string {
    const v = this.values[layer * this.data.H + head]!;
    return `layer ${layer}, head ${head}: ${STAT_LABELS[this.store.get().stat]} ${Number.isFinite(v) ? formatValue(v) : "–"}`;
  }

  /** Recompute and repaint when what the cells show changed. */
  update(s: Readonly<ViewState>, focusPositions: readonly number[], arrivals: number): void {
    const { data } = this;
    if (s.hoverPatch !== null) this.patch = s.hoverPatch;
    if (this.statSelect.value !== s.stat) this.statSelect.value = s.stat;
    const { rows, which } = statRows(data, focusPositions);
    // Fetched heads matter only to the patch statistic: another arrival (an idle prefetch) recomputes nothing.
    const patch = s.stat === "patch";
    const key = [s.stat, rows.join(","), patch ? this.patch : "", patch ? arrivals : ""].join("|");
    if (key !== this.key) {
      this.key = key;
      this.compute(s.stat, rows);
      this.note.textContent = this.noteText(s.stat, which);
    }
    const paintKey = `${key}|${s.layer},${s.head}|${s.preview?.layer},${s.preview?.head}`;
    if (paintKey !== this.paintKey) {
      this.paintKey = paintKey;
      this.paint(s);
    }
    this.el.dataset.stat = s.stat;
    this.el.dataset.rows = which;
    this.el.dataset.patch = String(s.stat === "patch" ? (this.patch ?? -1) : -1);
  }

  private compute(stat: Statistic, rows: readonly number[]): void {
    const { data } = this;
    const { L, H } = data;
    this.values.fill(Number.NaN);
    let missing = 0;
    for (let l = 0; l < L; l++) {
      const heads = stat === "patch" && this.patch !== null ? this.frames.headsOf(l) : null;
      if (stat === "patch" && this.patch !== null && heads === null) missing++;
      for (let h = 0; h < H; h++) {
        let sum = 0;
        for (const q of rows) {
          if (stat === "patch") sum += heads === null ? Number.NaN : heads.value(h, q, this.patch!);
          else sum += data.headStat(stat === "share" ? 0 : 1, l, h, q);
        }
        this.values[l * H + h] = rows.length > 0 ? sum / rows.length : Number.NaN;
      }
    }
    this.el.dataset.missing = String(missing);
    let max = 0;
    for (const v of this.values) if (v > max) max = v;
    this.range = max;
    this.el.dataset.range = String(max);
  }

  private noteText(stat: Statistic, which: string): string {
    const over =
      which === "focus" ? "the focused token" : which === "answer" ? "the answer tokens (mean)" : "every recorded row";
    if (stat === "patch" && this.patch === null) return "Hover a patch of the image: cells show the attention paid to it.";
    const missing = Number(this.el.dataset.missing ?? 0);
    const loading = missing > 0 ? ` Loading ${missing} layer${missing === 1 ? "" : "s"}…` : "";
    return `${STAT_LABELS[stat]} of ${over}, per layer (rows) and head (columns); 0 … ${formatValue(this.range)}.${loading} Hover a cell to preview its map, click to select it.${this.onLayerWindow === null ? "" : " Drag over rows to knock the image out of those layers."}`;
  }

  private paint(s: Readonly<ViewState>): void {
    this.grid.dataset.selected = `${s.layer},${s.head}`;
    this.grid.dataset.preview = s.preview === null ? "" : `${s.preview.layer},${s.preview.head}`;
    this.grid.dataset.window = this.window === null ? "" : this.window.join(",");
    const ctx = this.grid.getContext("2d");
    if (!ctx) return;
    const { L, H } = this.data;
    const c = this.cell;
    ctx.clearRect(0, 0, H * c, L * c);
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        const v = this.values[l * H + h]!;
        if (!Number.isFinite(v)) {
          ctx.fillStyle = "rgba(128, 128, 128, 0.25)";
        } else {
          const [r, g, b] = colorFor(this.range > 0 ? v / this.range : 0);
          ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
        }
        ctx.fillRect(h * c, l * c, c, c);
      }
    }
    // Selection: a cell, a layer's row (mean of heads), a head's column (mean over layers), or everything.
    const outline = (x: number, y: number, w: number, hgt: number, dashed: boolean): void => {
      ctx.setLineDash(dashed ? [3, 2] : []);
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#000";
      ctx.strokeRect(x + 1, y + 1, w - 2, hgt - 2);
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(x + 2.5, y + 2.5, w - 5, hgt - 5);
    };
    // Columns span every layer for the mean over layers, rows every head for the mean of heads.
    const [x, w] = s.head === MEAN ? [0, H * c] : [s.head * c, c];
    const [y, hgt] = s.layer === MEAN ? [0, L * c] : [s.layer * c, c];
    outline(x, y, w, hgt, false);
    if (s.preview !== null) outline(s.preview.head * c, s.preview.layer * c, c, c, true);
    if (this.window !== null) {
      const [first, last] = this.window;
      ctx.setLineDash([5, 3]);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#e67e22";
      ctx.strokeRect(1.5, first * c + 1.5, H * c - 3, (last - first + 1) * c - 3);
    }
    ctx.setLineDash([]);
  }

  dispose(): void {
    this.listeners.dispose();
  }
}
