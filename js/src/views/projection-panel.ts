/**
 * The projection panel: every position's hidden state at the current layer as a point in ONE 2-D PCA frame fitted
 * on all layers together (so points move, rather than jump, when the layer changes), coloured by modality or by
 * image grid row. Hover links both ways: a point under the mouse focuses its token or patch, and the focused
 * token and hovered patch are ringed. The modality gap of the depth is printed below.
 *
 * The projection is fetched from the kernel the first time the panel is opened (extras.ts).
 */

import { colorFor } from "../colormap";
import type { WidgetData } from "../data";
import { h, Listeners, option } from "../dom";
import { isImageKind, KIND_QUERY, KIND_SPECIAL, MEAN, type ProjectionData } from "../protocol";
import type { ColorBy, Store, ViewState } from "../store";
import { depthLabel } from "./lens-panel";

export const PROJECTION_SIZE: [number, number] = [360, 300];
export const PROJECTION_PAD = 12;
const RADIUS = 3;
const HIT = 7;

const COLOURS = {
  image: "#e08214",
  prompt: "#2c7fb8",
  answer: "#542788",
  special: "#8c959f",
};

export class ProjectionPanel {
  readonly el: HTMLDivElement;
  readonly canvas: HTMLCanvasElement;
  readonly colorSelect: HTMLSelectElement;
  private readonly note: HTMLDivElement;
  private readonly status: HTMLDivElement;
  private data: ProjectionData | null = null;
  private depth = -1;
  private key = "";
  /** Screen position of every point at the drawn depth (for hit testing). */
  private xs = new Float32Array(0);
  private ys = new Float32Array(0);
  /** What this panel's hover set (so leaving clears only that). */
  private hovered: "token" | "patch" | null = null;
  private readonly listeners = new Listeners();

  constructor(
    private readonly widgetData: WidgetData,
    private readonly store: Store,
  ) {
    const [w, ht] = PROJECTION_SIZE;
    this.colorSelect = h(
      "select",
      { className: "mmviz-color-by", attrs: { "aria-label": "colour points by" } },
      option("modality", "colour by modality"),
      option("row", "colour by image grid row"),
    );
    this.canvas = h("canvas", {
      className: "mmviz-projection-canvas",
      data: { pad: String(PROJECTION_PAD) },
      attrs: { role: "img", "aria-label": "projection of the hidden states" },
    });
    this.canvas.width = w;
    this.canvas.height = ht;
    this.status = h("div", { className: "mmviz-projection-status" });
    this.note = h("div", { className: "mmviz-projection-note" });
    this.el = h(
      "div",
      { className: "mmviz-projection" },
      h("div", { className: "mmviz-projection-head" }, this.colorSelect, this.legend()),
      this.status,
      this.canvas,
      this.note,
    );

    const { canvas, colorSelect } = this;
    this.listeners.on(canvas, "mousemove", (ev) => {
      const r = canvas.getBoundingClientRect();
      if (r.width === 0 || this.data === null) return;
      const x = ((ev.clientX - r.left) * w) / r.width;
      const y = ((ev.clientY - r.top) * ht) / r.height;
      this.hover(this.pointAt(x, y));
    });
    this.listeners.on(canvas, "mouseleave", () => this.hover(null));
    this.listeners.on(colorSelect, "change", () => this.store.set({ colorBy: colorSelect.value as ColorBy }));
  }

  private legend(): HTMLSpanElement {
    const items = Object.entries(COLOURS).map(([name, colour]) => {
      const dot = h("span", { className: "mmviz-dot" });
      dot.style.background = colour;
      return h("span", {}, dot, name);
    });
    return h("span", { className: "mmviz-projection-legend" }, ...items);
  }

  /** The position whose point is nearest to canvas pixel (x, y), within a few pixels; null if none. */
  pointAt(x: number, y: number): number | null {
    let best: number | null = null;
    let bestD = HIT * HIT;
    for (let i = 0; i < this.xs.length; i++) {
      const d = (this.xs[i]! - x) ** 2 + (this.ys[i]! - y) ** 2;
      if (d <= bestD) {
        bestD = d;
        best = i;
      }
    }
    return best;
  }

  private hover(pos: number | null): void {
    const column = pos === null ? -1 : this.widgetData.columnOfPosition(pos);
    if (pos !== null && column >= 0) {
      this.hovered = "patch";
      this.store.set({ hoverPatch: column, hoverToken: null });
    } else if (pos !== null) {
      this.hovered = "token";
      this.store.set({ hoverToken: pos, hoverPatch: null });
    } else if (this.hovered !== null) {
      this.store.set(this.hovered === "patch" ? { hoverPatch: null } : { hoverToken: null });
      this.hovered = null;
    }
  }

  update(s: Readonly<ViewState>, focusPositions: readonly number[], data: ProjectionData | null, message: string): void {
    this.status.textContent = data === null ? message : "";
    this.status.hidden = data !== null || message === "";
    if (this.colorSelect.value !== s.colorBy) this.colorSelect.value = s.colorBy;
    this.data = data;
    if (data === null) return;
    // "All layers" has no single state: show the last one.
    const depth = s.layer === MEAN ? data.depths - 1 : Math.min(data.depths - 1, s.layer + 1);
    const patchPos = s.hoverPatch === null ? -1 : (this.widgetData.imagePositions[s.hoverPatch] ?? -1);
    const key = `${depth}|${s.colorBy}|${focusPositions.join(",")}|${patchPos}`;
    if (key === this.key) return;
    this.key = key;
    if (depth !== this.depth) this.place(data, depth);
    this.paint(data, s.colorBy, new Set(focusPositions), patchPos);
    const all = s.layer === MEAN ? " (all layers selected: the last state is shown)" : "";
    const explained = Number.isFinite(data.explained) ? `; the two components explain ${(100 * data.explained).toFixed(0)}% of the variance` : "";
    this.note.textContent =
      `${depthLabel(depth)}${all}: modality gap (1 − cosine of the mean image and mean text state) ` +
      `${data.gap[depth]!.toFixed(3)}${explained}. One PCA frame for every layer.`;
  }

  private place(data: ProjectionData, depth: number): void {
    const [w, h] = PROJECTION_SIZE;
    const [x0, x1, y0, y1] = data.bounds;
    const sx = (w - 2 * PROJECTION_PAD) / Math.max(1e-12, x1 - x0);
    const sy = (h - 2 * PROJECTION_PAD) / Math.max(1e-12, y1 - y0);
    this.xs = new Float32Array(data.n);
    this.ys = new Float32Array(data.n);
    for (let i = 0; i < data.n; i++) {
      const x = data.coords[(depth * data.n + i) * 2]!;
      const y = data.coords[(depth * data.n + i) * 2 + 1]!;
      this.xs[i] = PROJECTION_PAD + (x - x0) * sx;
      this.ys[i] = h - PROJECTION_PAD - (y - y0) * sy;
    }
    this.depth = depth;
    this.canvas.dataset.depth = String(depth);
    this.canvas.dataset.bounds = JSON.stringify(data.bounds);
  }

  private colourOf(pos: number, colorBy: ColorBy, rows: number): string {
    const d = this.widgetData;
    const kind = d.kinds[pos] ?? 0;
    const image = isImageKind(kind) || kind === KIND_QUERY;
    if (image && colorBy === "row") {
      const column = d.columnOfPosition(pos);
      const row = column >= 0 ? (d.grid[2 * column] ?? 0) : 0;
      const [r, g, b] = colorFor(rows > 1 ? row / (rows - 1) : 0);
      return `rgb(${r}, ${g}, ${b})`;
    }
    if (image) return COLOURS.image;
    if (kind === KIND_SPECIAL) return COLOURS.special;
    return pos >= d.answerStart ? COLOURS.answer : COLOURS.prompt;
  }

  private paint(data: ProjectionData, colorBy: ColorBy, focus: ReadonlySet<number>, patchPos: number): void {
    const ctx = this.canvas.getContext("2d");
    if (!ctx) return;
    const [w, h] = PROJECTION_SIZE;
    ctx.clearRect(0, 0, w, h);
    let rows = 1;
    for (let p = 0; p < this.widgetData.P; p++) rows = Math.max(rows, (this.widgetData.grid[2 * p] ?? 0) + 1);
    for (let i = 0; i < data.n; i++) {
      ctx.fillStyle = this.colourOf(i, colorBy, rows);
      ctx.beginPath();
      ctx.arc(this.xs[i]!, this.ys[i]!, RADIUS, 0, 2 * Math.PI);
      ctx.fill();
    }
    const ring = (i: number, colour: string): void => {
      ctx.lineWidth = 2;
      ctx.strokeStyle = colour;
      ctx.beginPath();
      ctx.arc(this.xs[i]!, this.ys[i]!, RADIUS + 3, 0, 2 * Math.PI);
      ctx.stroke();
    };
    for (const i of focus) if (i < data.n) ring(i, "#d1242f");
    if (patchPos >= 0 && patchPos < data.n) ring(patchPos, "#000");
    this.canvas.dataset.focus = [...focus].join(",");
    this.canvas.dataset.patch = String(patchPos);
  }

  dispose(): void {
    this.listeners.dispose();
  }
}
