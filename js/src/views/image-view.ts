/**
 * One input image: the photo, the heatmap over its token boxes, and the hovered-patch outline, as three stacked
 * canvases whose intrinsic size equals their display size. An image with several views (e.g. a low-resolution
 * base and high-resolution crops of the same pixels) shows one view at a time, picked in its view selector:
 * views are layers, never averaged or drawn over each other.
 */

import { scaleColor, type ColorScale } from "../colormap";
import type { ViewInfo, WidgetData } from "../data";
import { h, Listeners, option } from "../dom";
import type { ImageMeta, Rect } from "../protocol";
import type { Store } from "../store";

export const DEFAULT_MAX_SIDE = 384;

/** Display size of a width × height image whose long side becomes `maxSide` px. */
export function displaySize(width: number, height: number, maxSide = DEFAULT_MAX_SIDE): [number, number] {
  const s = maxSide / Math.max(width, height);
  return [Math.max(1, Math.round(width * s)), Math.max(1, Math.round(height * s))];
}

/** Integer canvas-pixel rectangle [x0, y0, x1, y1) of a box given in original pixels. */
export function pixelRect(box: Rect, sx: number, sy: number, w: number, h: number): Rect {
  const clampX = (v: number): number => Math.max(0, Math.min(w, Math.round(v * sx)));
  const clampY = (v: number): number => Math.max(0, Math.min(h, Math.round(v * sy)));
  return [clampX(box[0]), clampY(box[1]), clampX(box[2]), clampY(box[3])];
}

const WASH = "rgba(128, 128, 128, 0.6)";

export class ImageView {
  readonly el: HTMLDivElement;
  readonly photo: HTMLCanvasElement;
  readonly heat: HTMLCanvasElement;
  readonly outline: HTMLCanvasElement;
  /** The value of the hovered patch, next to it. */
  readonly tooltip: HTMLDivElement;
  readonly width: number;
  readonly height: number;
  private readonly meta: ImageMeta;
  private readonly sx: number;
  private readonly sy: number;
  /** The drawn view's columns, largest box first (finer boxes on top if boxes of one view overlap). */
  private paintOrder: number[] = [];
  /** Columns of the drawn view (hover finds patches among these only). */
  private visible: readonly number[] = [];
  private visibleSet = new Set<number>();
  private readonly views: readonly ViewInfo[];
  /** View code drawn (−1 before the first setView, or when the image has no columns). */
  private viewCode = -1;
  readonly viewSelect: HTMLSelectElement | null = null;
  private readonly label: HTMLDivElement;
  /** Integer pixel rectangle of each of this image's columns. */
  private readonly rects = new Map<number, Rect>();
  private heatImage: ImageData | null = null;
  private heatKey: unknown = undefined;
  private outlinePatch: number | null = null;
  /** The last {@link paintHeat} arguments (a video frame switch repaints them on the new frame). */
  private lastHeat: [Float32Array | null, ColorScale, number] | null = null;
  /** Video: the original frame drawn (−1: the image `index` itself). */
  private frameShown = -1;
  private disposed = false;
  private readonly listeners = new Listeners();

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
    readonly index: number,
    maxSide = DEFAULT_MAX_SIDE,
    /** Called when the user picks another view of this image (a view code). */
    onView: (image: number, code: number) => void = () => {},
  ) {
    this.meta = data.images[index] ?? { width: maxSide, height: maxSide, covered: null };
    const [w, ht] = displaySize(this.meta.width, this.meta.height, maxSide);
    this.width = w;
    this.height = ht;
    this.sx = w / this.meta.width;
    this.sy = ht / this.meta.height;

    const cols = data.columnsOf(index);
    this.views = data.viewsOf(index);
    for (const p of cols) this.rects.set(p, pixelRect(data.box(p), this.sx, this.sy, w, ht));

    // The stack shrinks with the notebook (CSS scales the canvases; pointer maths uses the rendered size).
    const stack = h("div", { className: "mmviz-image-stack" });
    stack.style.width = `${w}px`;
    stack.style.aspectRatio = `${w} / ${ht}`;
    const canvas = (className: string, attrs: Record<string, string>): HTMLCanvasElement => {
      const c = h("canvas", { className, attrs });
      c.width = w;
      c.height = ht;
      stack.append(c);
      return c;
    };
    this.photo = canvas("mmviz-photo", { "data-loaded": "0", role: "img", "aria-label": `input image ${index + 1}` });
    this.heat = canvas("mmviz-heat", { "data-row": "-1", "aria-hidden": "true" });
    this.outline = canvas("mmviz-outline", { "aria-hidden": "true" });
    this.tooltip = h("div", { className: "mmviz-tooltip", hidden: true });
    stack.append(this.tooltip);
    this.label = h("div", { className: "mmviz-image-label" });
    const footer = h("div", { className: "mmviz-image-footer" }, this.label);
    footer.style.maxWidth = `${Math.max(w, 240)}px`; // wrap under the image rather than widen its column
    if (this.views.length > 1) {
      const select = h("select", {
        className: "mmviz-view-select",
        data: { image: String(index) },
        title: "Views of one image cover the same pixels; they are shown one at a time, never averaged.",
      });
      for (const v of this.views) select.append(option(String(v.code), `${v.name} (${v.columns.length} tokens)`));
      footer.append(h("label", { className: "mmviz-control mmviz-view-control" }, h("span", { text: "View" }), select));
      this.viewSelect = select;
      this.listeners.on(select, "change", () => onView(index, Number(select.value)));
    }
    this.el = h("div", { className: "mmviz-image", data: { imageIndex: String(index) } }, stack, footer);
    this.setView(data.defaultView(index));

    this.listeners.on(stack, "mousemove", (ev) => {
      const r = stack.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) return;
      const x = ((ev.clientX - r.left) * w) / r.width;
      const y = ((ev.clientY - r.top) * ht) / r.height;
      this.store.set({ hoverPatch: this.columnAt(x / this.sx, y / this.sy) });
    });
    this.listeners.on(stack, "mouseleave", () => this.store.set({ hoverPatch: null }));

    this.drawPlaceholder();
    void data.bitmap(index).then((bmp) => {
      if (this.frameShown < 0 || this.frameShown === index) this.drawPhoto(bmp); // not over a video frame shown since
    });
  }

  /** Draw view `code` of this image (a no-op when it is already drawn; an unknown code draws every column). */
  setView(code: number): void {
    if (code === this.viewCode && this.label.textContent !== "") return;
    this.viewCode = code;
    const { data } = this;
    const view = this.views.find((v) => v.code === code);
    const cols = this.views.length > 1 && view ? view.columns : data.columnsOf(this.index);
    const area = (p: number): number => {
      const [x0, y0, x1, y1] = data.box(p);
      return (x1 - x0) * (y1 - y0);
    };
    this.visible = cols;
    this.visibleSet = new Set(cols);
    this.paintOrder = [...cols].sort((a, b) => area(b) - area(a) || a - b);
    const total = data.columnsOf(this.index).length;
    const size = `${data.nImages > 1 ? `image ${this.index + 1} · ` : ""}${this.meta.width}×${this.meta.height} px`;
    this.label.textContent =
      this.views.length > 1 && view
        ? `${size} · ${view.name} view: ${cols.length} of ${total} image tokens`
        : `${size} · ${total} image tokens`;
    this.el.dataset.view = view && this.views.length > 1 ? view.name : "";
    if (this.viewSelect && view && this.viewSelect.value !== String(code)) this.viewSelect.value = String(code);
    this.heatKey = undefined; // repaint
    this.outlinePatch = null;
    const ctx = this.ctx(this.outline);
    ctx?.clearRect(0, 0, this.width, this.height);
  }

  /** The view drawn (its code; −1 when the image has no columns). */
  get view(): number {
    return this.viewCode;
  }

  /** The columns drawn (and hovered, clicked, dragged over): the drawn view's, or on a video the shown frame's group. */
  get columns(): readonly number[] {
    return this.visible;
  }

  /**
   * Column of the drawn view whose box contains (x, y) in original pixels (half-open boxes); the smallest
   * box wins when boxes overlap. Null if none.
   */
  columnAt(x: number, y: number): number | null {
    let best: number | null = null;
    let bestArea = Infinity;
    for (const p of this.visible) {
      const [x0, y0, x1, y1] = this.data.box(p);
      if (x >= x0 && x < x1 && y >= y0 && y < y1) {
        const a = (x1 - x0) * (y1 - y0);
        if (a < bestArea) {
          bestArea = a;
          best = p;
        }
      }
    }
    return best;
  }

  private ctx(c: HTMLCanvasElement): CanvasRenderingContext2D | null {
    return c.getContext("2d");
  }

  private drawPlaceholder(): void {
    const ctx = this.ctx(this.photo);
    if (!ctx) return;
    ctx.fillStyle = "#9a9a9a";
    ctx.fillRect(0, 0, this.width, this.height);
  }

  private drawPhoto(bmp: ImageBitmap | null): void {
    if (this.disposed) return;
    const ctx = this.ctx(this.photo);
    if (!ctx) return;
    const { width: w, height: h } = this;
    if (bmp) {
      ctx.clearRect(0, 0, w, h);
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(bmp, 0, 0, w, h);
    }
    const cov = this.meta.covered;
    if (cov) {
      // Grey wash over pixels that reach no token.
      const [x0, y0, x1, y1] = pixelRect(cov, this.sx, this.sy, w, h);
      ctx.fillStyle = WASH;
      if (y0 > 0) ctx.fillRect(0, 0, w, y0);
      if (y1 < h) ctx.fillRect(0, y1, w, h - y1);
      if (x0 > 0) ctx.fillRect(0, y0, x0, y1 - y0);
      if (x1 < w) ctx.fillRect(x1, y0, w - x1, y1 - y0);
    }
    this.photo.dataset.loaded = bmp ? "1" : "error";
  }

  /**
   * Fill every box of the drawn view with the opaque colour of its value on `scale`; transparent elsewhere.
   * `map` holds all P columns (null = nothing focused). Painting is skipped when `key` is unchanged.
   */
  paintHeat(map: Float32Array | null, scale: ColorScale, row: number, key: unknown): void {
    if (key === this.heatKey) return;
    this.heatKey = key;
    this.lastHeat = [map, scale, row];
    const ctx = this.ctx(this.heat);
    const { width: w, height: h } = this;
    const drawn = map !== null && scale.range > 0;
    if (ctx) {
      if (!drawn) {
        ctx.clearRect(0, 0, w, h);
      } else {
        if (this.heatImage === null) this.heatImage = ctx.createImageData(w, h);
        const px = this.heatImage.data;
        px.fill(0);
        for (const p of this.paintOrder) {
          const v = map[p]!;
          if (!Number.isFinite(v)) continue; // NaN stays transparent
          const [r, g, b] = scaleColor(scale, v);
          const [x0, y0, x1, y1] = this.rects.get(p)!;
          for (let y = y0; y < y1; y++) {
            let i = (y * w + x0) * 4;
            for (let x = x0; x < x1; x++, i += 4) {
              px[i] = r;
              px[i + 1] = g;
              px[i + 2] = b;
              px[i + 3] = 255;
            }
          }
        }
        ctx.putImageData(this.heatImage, 0, 0);
      }
    }
    this.heat.dataset.row = String(row);
    this.heat.dataset.signed = scale.signed ? "1" : "0";
    this.heat.dataset.range = drawn ? String(scale.range) : "";
  }

  /**
   * Video: draw original frame `frame` (an image index) with the heat of `columns` (the tokens of its temporal
   * group, which share the frame's size and boxes) instead of this view's own image and columns.
   */
  showFrame(frame: number, columns: readonly number[]): void {
    if (this.disposed || frame === this.frameShown) return;
    this.frameShown = frame;
    for (const p of columns) if (!this.rects.has(p)) this.rects.set(p, pixelRect(this.data.box(p), this.sx, this.sy, this.width, this.height));
    this.visible = columns;
    this.visibleSet = new Set(columns);
    this.paintOrder = [...columns];
    this.el.dataset.frame = String(frame);
    this.photo.dataset.loaded = "0";
    this.label.textContent = `frame ${frame} of ${this.data.nImages} · ${this.meta.width}×${this.meta.height} px · ${columns.length} video tokens`;
    this.outlinePatch = null;
    this.ctx(this.outline)?.clearRect(0, 0, this.width, this.height);
    this.heatKey = undefined;
    if (this.lastHeat !== null) this.paintHeat(...this.lastHeat, Symbol("frame")); // the shown map, on this frame
    void this.data.bitmap(frame).then((bmp) => {
      if (this.frameShown === frame) this.drawPhoto(bmp);
    });
  }

  /** Video: the original frame drawn (−1 when this view shows its own image). */
  get frame(): number {
    return this.frameShown;
  }

  /** Heatmap opacity over the photo (0 … 1). */
  setOpacity(opacity: number): void {
    const v = String(Math.max(0, Math.min(1, opacity)));
    if (this.heat.style.opacity !== v) this.heat.style.opacity = v;
  }

  /** Show `text` next to the hovered column when it belongs to this image; hide it otherwise. */
  paintTooltip(patch: number | null, text: string): void {
    const mine = patch !== null && this.visibleSet.has(patch);
    this.tooltip.hidden = !mine || text === "";
    if (!mine || text === "") return;
    if (this.tooltip.textContent !== text) this.tooltip.textContent = text;
    const [x0, y0, x1, y1] = this.rects.get(patch)!;
    // Percentages, so the tooltip follows the box when the stack is scaled.
    this.tooltip.style.left = `${(100 * (x0 + x1)) / 2 / this.width}%`;
    this.tooltip.style.top = `${(100 * y1) / this.height}%`;
    this.tooltip.dataset.patch = String(patch);
  }

  /** Outline the hovered column when it belongs to this image. */
  paintOutline(patch: number | null): void {
    const mine = patch !== null && this.visibleSet.has(patch) ? patch : null;
    if (mine === this.outlinePatch) return;
    this.outlinePatch = mine;
    const ctx = this.ctx(this.outline);
    if (!ctx) return;
    ctx.clearRect(0, 0, this.width, this.height);
    if (mine === null) return;
    const [x0, y0, x1, y1] = this.rects.get(mine)!;
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#000";
    ctx.strokeRect(x0 + 1, y0 + 1, Math.max(0, x1 - x0 - 2), Math.max(0, y1 - y0 - 2));
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(x0 + 0.5, y0 + 0.5, Math.max(0, x1 - x0 - 1), Math.max(0, y1 - y0 - 1));
    if (x1 - x0 > 6 && y1 - y0 > 6) ctx.strokeRect(x0 + 2.5, y0 + 2.5, x1 - x0 - 5, y1 - y0 - 5);
  }

  dispose(): void {
    this.disposed = true;
    this.listeners.dispose();
  }
}
