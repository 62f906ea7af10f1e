/**
 * The comparison widget (`mmviz.ComparisonWidget`): two Inspector panes side by side and, between them, the signed
 * A − B map of the shown method on the shared image with the most divergent answer tokens.
 *
 * Each pane is the Inspector's own Shell (token strip, image, controls, method switcher, layer × head overview)
 * over its trace's state (`side_a`, `side_b`, Inspector traits), with its own state store. The panes are linked
 * here, in the browser: a hovered or pinned token follows through the position links, a hovered patch through
 * the original image's pixels (relative position for two images), the layer by relative depth (the same layer when
 * both models have the same number), the method by name. Pane A's layer, head, pinned token and the method are
 * synced to Python (`layer`, `head`, `pinned`, `method`).
 */

import { Channel } from "./channel";
import { base64ToBytes, putAtPath } from "./codec";
import { DIVERGING, scaleColor, type ColorScale, VIRIDIS } from "./colormap";
import { buildData, type WidgetData } from "./data";
import { button, h, Listeners, rebuildOnRevision } from "./dom";
import { Extras } from "./extras";
import type { Frame } from "./frame";
import { createStaticModel, type StaticModel, type StaticPayload } from "./host/static-host";
import type { Model } from "./host/model";
import { bindKeyboard } from "./keyboard";
import { MethodState } from "./method-state";
import {
  ATTENTION,
  MEAN,
  parseComparison,
  parseMethod,
  parsePrefetched,
  parseSelection,
  type ComparedMethod,
  type ComparisonData,
  type Layer,
} from "./protocol";
import { Shell } from "./shell";
import { focusToken, Store, type ViewState } from "./store";
import { ModelSync } from "./sync";
import { displaySize, pixelRect } from "./views/image-view";
import { Legend, formatValue } from "./views/legend";

/** Anything with the AnyModel surface the comparison needs (its traits are read as `unknown`). */
export interface ComparisonModel {
  get(key: string): unknown;
  set(key: string, value: unknown): void;
  save_changes(): void;
  on(event: string, fn: (...args: unknown[]) => void): void;
  off(event?: string | null, fn?: ((...args: unknown[]) => void) | null): void;
}

/** Is `model` a ComparisonWidget's (its `kind` trait)? */
export function isComparison(model: unknown): boolean {
  return typeof (model as { get?: unknown }).get === "function" && (model as ComparisonModel).get("kind") === "comparison";
}

/** Divergent pairs listed. */
export const LISTED = 5;
const DIFF_SIDE = 320;
const WASH = "rgba(128, 128, 128, 0.6)";

/** The layer of a model with `to` layers at the relative depth of `layer` in one with `from` layers. */
export function relativeLayer(layer: Layer, from: number, to: number): Layer {
  if (layer === MEAN) return MEAN;
  if (from <= 1 || to <= 1) return Math.max(0, Math.min(to - 1, layer));
  return Math.max(0, Math.min(to - 1, Math.round((layer * (to - 1)) / (from - 1))));
}

/** The pair whose map a pane shows for focused position `focus`: the row predicting the token (query maps) or
 * the token itself (target maps). −1 when none. */
export function pairAt(c: ComparisonData, focus: number | null, rows: "queries" | "targets"): number {
  if (focus === null) return -1;
  const shift = rows === "queries" ? 1 : 0;
  for (let k = 0; k < c.positionA.length; k++) if (c.positionA[k]! - shift === focus) return k;
  return -1;
}

/** The slice of `method` drawn for A's `layer`: the one of that layer, the mean slice (S) for `"mean"`, 0 for a
 * map without layers, else the nearest layer's. */
export function sliceAt(method: ComparedMethod, layer: Layer): number {
  const S = method.layersA.length;
  if (method.layersA[0] === -1) return 0;
  if (layer === MEAN) return S;
  let best = 0;
  for (let s = 0; s < S; s++) if (Math.abs(method.layersA[s]! - layer) < Math.abs(method.layersA[best]! - layer)) best = s;
  return best;
}

/** The pairs of `method` at `slice` by decreasing Jensen–Shannon divergence (the mean slice: mean over layers). */
export function divergentPairs(c: ComparisonData, method: ComparedMethod, slice: number): { pair: number; js: number; spearman: number; iou: number }[] {
  const K = c.positionA.length;
  const S = method.layersA.length;
  const at = (values: Float32Array, k: number): number => {
    if (slice < S) return values[slice * K + k]!;
    let sum = 0;
    let n = 0;
    for (let s = 0; s < S; s++) {
      const v = values[s * K + k]!;
      if (Number.isFinite(v)) {
        sum += v;
        n++;
      }
    }
    return n === 0 ? Number.NaN : sum / n;
  };
  const out = [];
  for (let k = 0; k < K; k++) out.push({ pair: k, js: at(method.js, k), spearman: at(method.spearman, k), iou: at(method.iouTopk, k) });
  return out.filter((e) => Number.isFinite(e.js)).sort((x, y) => y.js - x.js || x.pair - y.pair);
}

/** One side: an Inspector shell over a static model holding that trace's state, with its own store. */
class Pane {
  readonly root: HTMLDivElement;
  readonly model: StaticModel;
  readonly data: WidgetData;
  readonly store: Store;
  readonly shell: Shell;
  frame: Frame | null = null;
  private readonly methods: MethodState;
  private readonly channel: Channel;
  private readonly extras: Extras;
  private readonly errorBox: HTMLDivElement;
  private readonly listeners = new Listeners();
  private painting = false;

  constructor(
    state: Record<string, unknown>,
    readonly side: "a" | "b",
    onPick: (pane: Pane, name: string) => void,
  ) {
    this.model = createStaticModel(state);
    this.data = buildData(this.model);
    this.errorBox = h("div", { className: "mmviz-error", attrs: { role: "alert" }, hidden: true });
    const content = h("div", { className: "mmviz-content" });
    this.root = h("div", { className: "mmviz-root mmviz-pane", data: { side } }, this.errorBox, content);
    this.root.tabIndex = 0;
    this.root.style.flex = "1 1 360px";
    this.root.style.minWidth = "300px";
    const model = this.model as unknown as Model;
    this.store = new Store({
      ...parseSelection((key) => this.model.get(key), this.data.L, this.data.H, this.data.n),
      method: parseMethod(this.model.get("method")),
      views: this.data.defaultViews(),
    });
    this.channel = new Channel(model);
    this.methods = new MethodState(model, this.store, this.channel);
    const { H, Q, P, n } = this.data;
    this.extras = new Extras({ H, Q, P, n }, null, parsePrefetched(this.model.get("prefetched")));
    this.shell = new Shell(this.data, this.extras, this.store, content, (name) => onPick(this, name));
    this.methods.read(this.data);
    this.listeners.add(this.extras.subscribe(() => queueMicrotask(() => this.paint())));
    this.listeners.add(
      this.store.subscribe(() => {
        this.paint();
        if (this.painting) queueMicrotask(() => this.paint());
      }),
    );
    bindKeyboard(this.root, this.store, () => (this.frame === null ? null : { rowPositions: this.shell.rowPositions(this.frame), layers: this.data.L }), this.listeners);
    this.paint();
  }

  /** Show `name` in this pane (no compute: the comparison ships every map it compared). */
  pick(name: string): void {
    this.methods.pick(name);
  }

  paint(): void {
    if (this.painting) return;
    this.painting = true;
    const s = this.store.get();
    let message = "";
    try {
      this.frame = this.shell.paint(s, this.methods.context());
    } catch (err) {
      message = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
    } finally {
      this.painting = false;
    }
    const msgs = [message, ...this.methods.errors()].filter((m) => m !== "");
    this.errorBox.textContent = msgs.join("\n");
    this.errorBox.hidden = msgs.length === 0;
    const d = this.root.dataset;
    d.layer = String(s.layer);
    d.head = String(s.head);
    d.focus = String(focusToken(s) ?? -1);
    d.pinned = String(s.pinnedToken ?? -1);
    d.patch = String(s.hoverPatch ?? -1);
    d.method = s.method;
    d.ready = "1";
  }

  /** The column of this pane's drawn view over the relative point (rx, ry) of image `image`, or null. */
  columnAtRelative(image: number, rx: number, ry: number): number | null {
    const view = this.shell.images[image];
    const meta = this.data.images[image];
    if (view === undefined || meta === undefined) return null;
    return view.columnAt(rx * meta.width, ry * meta.height);
  }

  /** The relative centre (rx, ry) and image of column `p`. */
  relativeCentre(p: number): { image: number; rx: number; ry: number } | null {
    const image = this.data.imageIndex[p];
    const meta = image === undefined ? undefined : this.data.images[image];
    if (image === undefined || meta === undefined) return null;
    const [x0, y0, x1, y1] = this.data.box(p);
    return { image, rx: (x0 + x1) / 2 / meta.width, ry: (y0 + y1) / 2 / meta.height };
  }

  dispose(): void {
    this.listeners.dispose();
    this.methods.dispose();
    this.channel.dispose();
    this.extras.dispose();
    this.store.clear();
    this.shell.dispose();
    this.root.remove();
  }
}

/** The A − B map on the shared image (A's image), one canvas stack per image. */
class DiffView {
  readonly el: HTMLDivElement;
  readonly legend: Legend;
  readonly title: HTMLDivElement;
  readonly note: HTMLDivElement;
  readonly list: HTMLOListElement;
  readonly heats: HTMLCanvasElement[] = [];
  private readonly outlines: HTMLCanvasElement[] = [];
  private readonly sizes: [number, number][] = [];
  private readonly offsets: number[] = [];
  private readonly listeners = new Listeners();
  private key = "";

  constructor(
    private readonly c: ComparisonData,
    private readonly data: WidgetData,
    onHover: (image: number, rx: number, ry: number) => void,
    onLeave: () => void,
  ) {
    this.title = h("div", { className: "mmviz-title mmviz-diff-title" });
    this.legend = new Legend("A − B");
    const stacks = h("div", { className: "mmviz-images" });
    let offset = 0;
    c.shapes.forEach(([rows, cols], i) => {
      const meta = data.images[i] ?? { width: cols, height: rows, covered: null };
      const [w, ht] = displaySize(meta.width, meta.height, DIFF_SIDE);
      this.sizes.push([w, ht]);
      this.offsets.push(offset);
      offset += rows * cols;
      const stack = h("div", { className: "mmviz-image-stack" });
      stack.style.width = `${w}px`;
      stack.style.aspectRatio = `${w} / ${ht}`;
      const canvas = (className: string): HTMLCanvasElement => {
        const el = h("canvas", { className, attrs: { "aria-hidden": "true" } });
        el.width = w;
        el.height = ht;
        stack.append(el);
        return el;
      };
      const photo = canvas("mmviz-photo mmviz-diff-photo");
      photo.setAttribute("role", "img");
      photo.setAttribute("aria-label", `A − B on image ${i + 1}`);
      this.heats.push(canvas("mmviz-diff-heat"));
      this.outlines.push(canvas("mmviz-outline mmviz-diff-outline"));
      this.drawWash(photo, i, null);
      void data.bitmap(i).then((bmp) => this.drawWash(photo, i, bmp));
      this.listeners.on(stack, "mousemove", (ev) => {
        const r = stack.getBoundingClientRect();
        if (r.width > 0 && r.height > 0) onHover(i, (ev.clientX - r.left) / r.width, (ev.clientY - r.top) / r.height);
      });
      this.listeners.on(stack, "mouseleave", onLeave);
      stacks.append(h("div", { className: "mmviz-image", data: { imageIndex: String(i) } }, stack));
    });
    this.note = h("div", { className: "mmviz-caption mmviz-diff-note" });
    this.list = h("ol", { className: "mmviz-divergent" });
    this.el = h(
      "div",
      { className: "mmviz-root mmviz-diff" },
      this.title,
      this.legend.el,
      stacks,
      this.note,
      h("div", { className: "mmviz-divergent-title", text: "Most divergent answer tokens (Jensen–Shannon)" }),
      this.list,
    );
    this.el.style.flex = "0 1 340px";
    this.el.style.minWidth = "260px";
  }

  private drawWash(photo: HTMLCanvasElement, image: number, bmp: ImageBitmap | null): void {
    const ctx = photo.getContext("2d");
    if (!ctx) return;
    const [w, ht] = this.sizes[image]!;
    ctx.fillStyle = "#9a9a9a";
    ctx.fillRect(0, 0, w, ht);
    if (bmp) ctx.drawImage(bmp, 0, 0, w, ht);
    ctx.fillStyle = WASH;
    this.eachCell(image, (g, rect) => {
      if (!this.c.shared[g]) ctx.fillRect(rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]);
    });
    photo.dataset.loaded = bmp ? "1" : "0";
  }

  private eachCell(image: number, fn: (g: number, rect: [number, number, number, number]) => void): void {
    const [rows, cols] = this.c.shapes[image]!;
    const [w, ht] = this.sizes[image]!;
    const offset = this.offsets[image]!;
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const rect = pixelRect([j, i, j + 1, i + 1], w / cols, ht / rows, w, ht);
        fn(offset + i * cols + j, rect);
      }
    }
  }

  /** Paint the A − B map of (method, slice, pair); clears it when there is nothing to show. */
  paint(method: ComparedMethod | null, slice: number, pair: number, opacity: number): number {
    const key = `${method?.name ?? ""}|${slice}|${pair}`;
    let range = 0;
    const G = this.c.cells;
    const values = method !== null && pair >= 0 ? method.diff.read((slice * this.c.positionA.length + pair) * G, G, 1) : null;
    if (values !== null) for (let g = 0; g < G; g++) if (this.c.shared[g]) range = Math.max(range, Math.abs(values[g]!));
    const scale: ColorScale = { signed: true, range };
    if (key !== this.key) {
      this.key = key;
      this.heats.forEach((canvas, image) => {
        const ctx = canvas.getContext("2d");
        if (!ctx) return;
        const [w, ht] = this.sizes[image]!;
        ctx.clearRect(0, 0, w, ht);
        if (values === null || range <= 0) {
          if (values !== null) this.fillShared(ctx, image, [...scaleColor({ signed: true, range: 1 }, 0)] as [number, number, number]);
          return;
        }
        const img = ctx.createImageData(w, ht);
        const px = img.data;
        this.eachCell(image, (g, [x0, y0, x1, y1]) => {
          if (!this.c.shared[g]) return;
          const [r, gg, b] = scaleColor(scale, values[g]!);
          for (let y = y0; y < y1; y++) {
            for (let x = x0, i = (y * w + x0) * 4; x < x1; x++, i += 4) {
              px[i] = r;
              px[i + 1] = gg;
              px[i + 2] = b;
              px[i + 3] = 255;
            }
          }
        });
        ctx.putImageData(img, 0, 0);
      });
    }
    for (const canvas of this.heats) {
      canvas.dataset.range = values === null ? "" : String(range);
      canvas.dataset.signed = "1";
      canvas.dataset.pair = String(pair);
      canvas.dataset.slice = String(slice);
      canvas.dataset.method = method?.name ?? "";
      const v = String(Math.max(0, Math.min(1, opacity)));
      if (canvas.style.opacity !== v) canvas.style.opacity = v;
    }
    this.legend.update({ vmax: values === null ? null : range, tokenMax: null, signed: true, label: "A − B (× uniform share)" });
    return range;
  }

  private fillShared(ctx: CanvasRenderingContext2D, image: number, rgb: [number, number, number]): void {
    ctx.fillStyle = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
    this.eachCell(image, (g, r) => {
      if (this.c.shared[g]) ctx.fillRect(r[0], r[1], r[2] - r[0], r[3] - r[1]);
    });
  }

  /** Outline the cell under the relative point of `image` (null: none). */
  outline(at: { image: number; rx: number; ry: number } | null): void {
    this.outlines.forEach((canvas, image) => {
      const ctx = canvas.getContext("2d");
      if (!ctx) return;
      const [w, ht] = this.sizes[image]!;
      ctx.clearRect(0, 0, w, ht);
      if (at === null || at.image !== image) return;
      const [rows, cols] = this.c.shapes[image]!;
      const i = Math.min(rows - 1, Math.floor(at.ry * rows));
      const j = Math.min(cols - 1, Math.floor(at.rx * cols));
      const [x0, y0, x1, y1] = pixelRect([j, i, j + 1, i + 1], w / cols, ht / rows, w, ht);
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#000";
      ctx.strokeRect(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0));
      canvas.dataset.cell = String(this.offsets[image]! + i * cols + j);
    });
  }

  dispose(): void {
    this.listeners.dispose();
  }
}

export interface ComparisonView {
  /** Pane A and pane B. */
  panes: [Pane, Pane];
  /** Move pane A to `layer` (B follows); what a click in the divergence plot of an exported page does. */
  setLayer(layer: Layer): void;
  dispose(): void;
}

/** Build the comparison into `el` from the model's traits; returns the view (for cleanup and test hooks). */
export function buildComparison(model: ComparisonModel, el: HTMLElement): ComparisonView {
  const sideA = model.get("side_a") as Record<string, unknown>;
  const sideB = model.get("side_b") as Record<string, unknown>;
  const listeners = new Listeners();
  let linking = false;
  let applyingModel = false;
  const onPick = (pane: Pane, name: string): void => {
    pane.pick(name);
  };
  const a = new Pane({ ...sideA, method: model.get("method"), layer: model.get("layer"), head: model.get("head"), pinned: model.get("pinned") }, "a", onPick);
  const b = new Pane({ ...sideB, method: model.get("method"), layer: 0, head: MEAN, pinned: -1 }, "b", onPick);
  const c = parseComparison(model.get("comparison_data"), a.data.n, b.data.n);
  const [La, Lb] = c.nLayers;
  b.store.set({ layer: relativeLayer(a.store.get().layer, La, Lb) });

  const summary = h("div", { className: "mmviz-comparison-summary" });
  const [answerA, answerB] = c.answers;
  summary.append(
    h("span", { text: `A: ${a.data.meta.model_name} answers “${answerA}”` }),
    h("span", { text: " · " }),
    h("span", { text: `B: ${b.data.meta.model_name} answers “${answerB}”` }),
    h("span", {
      className: "mmviz-comparison-change",
      text: ` · ${c.answerChanged ? "the answer changed" : "same answer"}, Δ log p (A − B) = ${formatValue(c.deltaLogprob)}`,
    }),
  );
  const layers = h("div", { className: "mmviz-comparison-layers" });

  let diff: DiffView;
  const hoverFromDiff = (image: number, rx: number, ry: number): void => {
    set(a, { hoverPatch: a.columnAtRelative(image, rx, ry) });
    set(b, { hoverPatch: b.columnAtRelative(image, rx, ry) });
    diff.outline({ image, rx, ry });
  };
  diff = new DiffView(c, a.data, hoverFromDiff, () => {
    set(a, { hoverPatch: null });
    set(b, { hoverPatch: null });
    diff.outline(null);
  });

  const row = h("div", { className: "mmviz-comparison-row" }, a.root, diff.el, b.root);
  row.style.display = "flex";
  row.style.gap = "12px";
  row.style.alignItems = "flex-start";
  row.style.flexWrap = "wrap";
  const root = h("div", { className: "mmviz-comparison" }, summary, layers, row);
  el.append(root);

  /** Set `patch` on `pane` without linking it back. */
  function set(pane: Pane, patch: Partial<ViewState>): void {
    const was = linking;
    linking = true;
    try {
      pane.store.set(patch);
    } finally {
      linking = was;
    }
  }

  const tokenLink = (links: Int32Array, pos: number | null): number | null => {
    if (pos === null) return null;
    const to = links[pos];
    return to === undefined || to < 0 ? null : to;
  };

  const follow = (from: Pane, to: Pane, links: Int32Array, Lfrom: number, Lto: number) => (s: Readonly<ViewState>, prev: Readonly<ViewState>) => {
    if (linking) return;
    const patch: Partial<ViewState> = {};
    if (s.hoverToken !== prev.hoverToken) patch.hoverToken = tokenLink(links, s.hoverToken);
    if (s.pinnedToken !== prev.pinnedToken) patch.pinnedToken = tokenLink(links, s.pinnedToken);
    if (s.hoverPatch !== prev.hoverPatch) {
      const at = s.hoverPatch === null ? null : from.relativeCentre(s.hoverPatch);
      patch.hoverPatch = at === null ? null : to.columnAtRelative(at.image, at.rx, at.ry);
      diff.outline(at);
    }
    if (s.layer !== prev.layer) patch.layer = relativeLayer(s.layer, Lfrom, Lto);
    if (s.playing !== prev.playing) patch.playing = false;
    set(to, patch);
    if (s.method !== prev.method && s.method !== to.store.get().method) {
      linking = true;
      try {
        to.pick(s.method);
      } finally {
        linking = false;
      }
    }
  };
  listeners.add(a.store.subscribe(follow(a, b, c.linksA, La, Lb)));
  listeners.add(b.store.subscribe(follow(b, a, c.linksB, Lb, La)));

  const sync = new ModelSync(model as unknown as Model);
  listeners.add(
    a.store.subscribe((s, prev) => {
      const synced = s.layer !== prev.layer || s.head !== prev.head || s.pinnedToken !== prev.pinnedToken || s.method !== prev.method;
      if (!applyingModel && synced) sync.schedule(s);
    }),
  );
  const fromModel = (): void => {
    applyingModel = true;
    try {
      const sel = parseSelection((key) => model.get(key), La, a.data.H, a.data.n);
      a.store.set(sel);
      const method = parseMethod(model.get("method"));
      if (method !== a.store.get().method) a.pick(method);
    } finally {
      applyingModel = false;
    }
  };
  for (const name of ["change:layer", "change:head", "change:pinned", "change:method"]) {
    model.on(name, fromModel);
    listeners.add(() => model.off(name, fromModel));
  }

  const paintDiff = (): void => {
    const s = a.store.get();
    const method = c.methods.get(s.method) ?? null;
    const rows = method?.rows ?? (s.method === ATTENTION ? "queries" : "targets");
    const pair = pairAt(c, focusToken(s), rows);
    const slice = method === null ? 0 : sliceAt(method, s.layer);
    const range = diff.paint(method, slice, pair, s.opacity);
    const layerText = (pane: Pane): string => {
      const l = pane.store.get().layer;
      return l === MEAN ? "mean of layers" : `layer ${l} of ${pane.data.L}`;
    };
    layers.textContent = `Layer scrubbers linked by ${La === Lb ? "layer" : "relative depth"}: A at ${layerText(a)} ↔ B at ${layerText(b)}`;
    const label = method?.label ?? s.method;
    const sliceText =
      method === null || method.layersA[0] === -1
        ? ""
        : slice === method.layersA.length
          ? " · mean over layers"
          : ` · A layer ${method.layersA[slice]} ↔ B layer ${method.layersB[slice]}`;
    diff.title.textContent = `A − B: ${label}${sliceText}`;
    if (method === null) {
      diff.note.textContent = `${label} was not compared (mmviz.compare(a, b, methods=[…]) chooses the methods).`;
    } else if (pair < 0) {
      diff.note.textContent = "Hover or pin a paired answer token (or pick one below) to see where A and B differ.";
    } else {
      const K = c.positionA.length;
      const S = method.layersA.length;
      const at = (v: Float32Array): number => (slice < S ? v[slice * K + pair]! : Number.NaN);
      const pairText = `“${a.data.tokens[c.positionA[pair]!] ?? ""}” ↔ “${b.data.tokens[c.positionB[pair]!] ?? ""}”`;
      const tokens = method.rows === "queries" ? `the rows predicting ${pairText}` : pairText;
      const metrics = slice < S ? ` · JS ${formatValue(at(method.js))} · Spearman ${formatValue(at(method.spearman))} · IoU top ${Math.round(100 * c.topK)}% ${formatValue(at(method.iouTopk))}` : "";
      diff.note.textContent = `${tokens}${metrics} · Δ log p ${formatValue(c.logprobA[pair]! - c.logprobB[pair]!)}; purple: A puts more there, orange: B does; grey: not read by both.`;
    }
    root.dataset.pair = String(pair);
    root.dataset.slice = String(slice);
    root.dataset.method = s.method;
    root.dataset.range = String(range);
    root.dataset.layerA = String(s.layer);
    root.dataset.layerB = String(b.store.get().layer);
    // The most divergent pairs of this method and slice.
    const listKey = `${s.method}|${slice}`;
    if (diff.list.dataset.key !== listKey) {
      diff.list.dataset.key = listKey;
      diff.list.replaceChildren();
      if (method !== null) {
        for (const entry of divergentPairs(c, method, slice).slice(0, LISTED)) {
          const k = entry.pair;
          const text = `“${a.data.tokens[c.positionA[k]!] ?? ""}” ↔ “${b.data.tokens[c.positionB[k]!] ?? ""}”: JS ${formatValue(entry.js)}, ρ ${formatValue(entry.spearman)}, IoU ${formatValue(entry.iou)}, Δ log p ${formatValue(c.logprobA[k]! - c.logprobB[k]!)}`;
          const item = button({ className: "mmviz-divergent-pair", text, data: { pair: String(k) } });
          item.addEventListener("click", () => {
            const shift = method.rows === "queries" ? 1 : 0;
            a.store.set({ pinnedToken: c.positionA[k]! - shift });
          });
          diff.list.append(h("li", {}, item));
        }
      }
    }
    for (const item of diff.list.querySelectorAll<HTMLElement>(".mmviz-divergent-pair")) {
      item.classList.toggle("mmviz-on", item.dataset.pair === String(pair));
    }
    root.dataset.ready = "1";
  };
  listeners.add(a.store.subscribe(paintDiff));
  listeners.add(b.store.subscribe(paintDiff));
  paintDiff();

  return {
    panes: [a, b],
    setLayer(layer: Layer): void {
      a.store.set({ layer: relativeLayer(layer, La, La) });
    },
    dispose(): void {
      listeners.dispose();
      try {
        sync.flush();
      } catch {
        sync.cancel();
      }
      diff.dispose();
      a.dispose();
      b.dispose();
      root.remove();
    },
  };
}

/** anywidget `render` of a ComparisonWidget: rebuilt when the kernel bumps `revision`. */
export function renderComparison({ model, el }: { model: ComparisonModel; el: HTMLElement }): () => void {
  return rebuildOnRevision(model, el, () => buildComparison(model, el));
}

export interface MountedComparison {
  model: StaticModel;
  view: ComparisonView | null;
  /** Test hook: the colour maps as flat r,g,b lists (see static-host.ts). */
  colormaps: { viridis: number[]; diverging: number[] };
  setLayer(layer: Layer): void;
  destroy(): void;
}

/** Mount an exported ComparisonWidget payload (`{state, buffers}`) into `el` (`ComparisonWidget.to_html`). */
export function mountComparisonStatic(el: HTMLElement, payload: StaticPayload): MountedComparison {
  const state = { ...(payload.state ?? {}) };
  for (const { path, data } of payload.buffers ?? []) {
    const bytes = base64ToBytes(data);
    putAtPath(state, path, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  }
  const model = createStaticModel(state);
  let view: ComparisonView | null = null;
  try {
    view = buildComparison(model as unknown as ComparisonModel, el);
  } catch (err) {
    el.append(h("div", { className: "mmviz-error", text: `mmviz: ${err instanceof Error ? err.message : String(err)}` }));
  }
  return {
    model,
    view,
    colormaps: { viridis: [...VIRIDIS], diverging: [...DIVERGING] },
    setLayer(layer: Layer): void {
      view?.setLayer(layer);
    },
    destroy(): void {
      view?.dispose();
    },
  };
}
