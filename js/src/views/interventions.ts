/**
 * The Interventions panel: ask the model, not the map. Select image patches (click toggles one, shift-click adds,
 * drag a rectangle to take every patch it touches, shift-drag to add them; "Top k %" takes the strongest of the map
 * shown), choose a fill and Run: the kernel ablates them (`intervene`, one forward) and replies Δ log p of every
 * answer token, drawn as one sign-coloured bar each. A knockout cuts the image out of a window of layers (first …
 * last, or dragged over the rows of the layer × head overview) for the answer rows or the last prompt token;
 * "Curve" slides a window of w layers over the depth and draws Δ of the first answer token as an SVG line. "New
 * greedy answer" asks the kernel to decode the answer again with the shown run's intervention applied.
 *
 * Δ bars (here, and under the answer chips of the token strip while the panel is open: {@link stripDeltas}) are
 * scaled to the largest |Δ| but at least {@link DELTA_FLOOR_NATS} nat, so a run that changes nothing draws ≈ empty
 * bars; the scale is stated under the title. On a video the panel's one image shows the frame the frame strip shows,
 * clicks and rectangles select among that frame's group of tokens, and "Select this frame's tokens" takes the whole
 * group in one gesture (Run ablation then ablates exactly `mmviz.interventions.frame_positions(trace, frame)`).
 *
 * Every run is kept (in the trace too, so exports and loaded traces show them): the history lists them, a click
 * shows one again, "compare" draws a second run's bars beside it. Without a kernel (a standalone page, a trace
 * loaded without its model) the kept runs show and Run is disabled. Labels are only ever set as text.
 */

import type { Channel, PendingRequest } from "../channel";
import { scaleOf } from "../colormap";
import type { WidgetData } from "../data";
import type { Rect } from "../protocol";
import { button, h, Listeners, option } from "../dom";
import {
  FILLS,
  fetchedPayload,
  parseCurve,
  parseGeneration,
  parseRun,
  PRESETS,
  type CurveData,
  type Fill,
  type GenerationData,
  type Intervention,
  type InterventionsMeta,
  type Preset,
  type Request,
  type RunData,
} from "../protocol";
import type { Store, ViewState } from "../store";
import { ImageView } from "./image-view";
import { groupOf } from "./frame-strip";
import { DELTA_FLOOR_NATS, deltaScale, deltaWidth, displayToken, signedText, type StripDeltas } from "./token-strip";

/** An intervention reruns the model once (a curve once per window): allow for a large model. */
export const INTERVENE_TIMEOUT_MS = 10 * 60 * 1000;
const MAP_SIDE = 192;
const SVG = "http://www.w3.org/2000/svg";

/** The columns (indices into image_positions) of the top `percent` % of `map` (finite values only, at least one). */
export function topColumns(map: ArrayLike<number>, percent: number): number[] {
  const finite: number[] = [];
  for (let i = 0; i < map.length; i++) if (Number.isFinite(map[i]!)) finite.push(i);
  if (finite.length === 0 || !(percent > 0)) return [];
  const k = Math.max(1, Math.min(finite.length, Math.round((finite.length * Math.min(percent, 100)) / 100)));
  return finite.sort((a, b) => map[b]! - map[a]! || a - b).slice(0, k).sort((a, b) => a - b);
}

/** A drag shorter than this (display pixels) is a click, not a rectangle. */
export const DRAG_THRESHOLD_PX = 4;
/** How many earlier selections Undo keeps. */
export const UNDO_DEPTH = 50;

/**
 * The columns among `columns` whose box (original pixels, half-open) intersects the rectangle spanned by the two
 * corners `a` and `b` (any order; a rectangle of zero width or height touches the boxes it lies in).
 */
export function columnsInRect(box: (p: number) => Rect, columns: readonly number[], a: readonly [number, number], b: readonly [number, number]): number[] {
  const x0 = Math.min(a[0], b[0]), x1 = Math.max(a[0], b[0]), y0 = Math.min(a[1], b[1]), y1 = Math.max(a[1], b[1]); // prettier-ignore
  const out: number[] = [];
  for (const p of columns) {
    const [bx0, by0, bx1, by1] = box(p);
    if (bx0 <= x1 && bx1 > x0 && by0 <= y1 && by1 > y0) out.push(p);
  }
  return out.sort((u, v) => u - v);
}

/** The layers of a window `first … last` (validated: whole numbers in 0 … L−1, first ≤ last), or an error. */
export function layerWindow(first: number, last: number, L: number): number[] | string {
  if (!Number.isInteger(first) || !Number.isInteger(last) || first < 0 || last >= L || first > last) {
    return `the layer window must be whole numbers 0 ≤ first ≤ last ≤ ${L - 1}`;
  }
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

export class InterventionsPanel {
  readonly el: HTMLDivElement;
  /** Selected image columns (indices into image_positions). */
  readonly selected = new Set<number>();
  private readonly runs: RunData[];
  private curve: CurveData | null;
  private shown: number | null = null;
  private compared: number | null = null;
  private pending: PendingRequest | null = null;
  private images: ImageView[] = [];
  private paintedKey = "";
  private lastMap: Float32Array | null = null;
  private readonly fill: HTMLSelectElement;
  private readonly percent: HTMLInputElement;
  private readonly first: HTMLInputElement;
  private readonly last: HTMLInputElement;
  private readonly preset: HTMLSelectElement;
  private readonly width: HTMLInputElement;
  private readonly runButtons: HTMLButtonElement[];
  private readonly status: HTMLDivElement;
  private readonly count: HTMLSpanElement;
  private readonly mapBox: HTMLDivElement;
  private readonly result: HTMLDivElement;
  private readonly compare: HTMLSelectElement;
  private readonly history: HTMLOListElement;
  private readonly curveBox: HTMLDivElement;
  private readonly answerButton: HTMLButtonElement;
  private readonly answerBox: HTMLDivElement;
  /** Greedy answers already decoded, by run index (asked once each). */
  private readonly answers = new Map<number, GenerationData>();
  /** A drag just ended: the click that follows it is not a patch click. */
  private dragged = false;
  /** Earlier selections, newest last (Undo restores them); at most {@link UNDO_DEPTH}. */
  private readonly undoStack: number[][] = [];
  private readonly undoButton: HTMLButtonElement;
  /** Video: the frame the frame strip shows, and the columns of its temporal group (the panel's one image). */
  private frame = 0;
  private frameCols: readonly number[] = [];
  private readonly frameRow: HTMLDivElement;
  private readonly frameLabel: HTMLSpanElement;
  /** Called when the shown run changes (the token strip draws its Δ bars). */
  onShow: () => void = () => {};
  private readonly listeners = new Listeners();

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
    private readonly channel: Channel | null,
    readonly meta: InterventionsMeta,
  ) {
    this.runs = [...meta.history];
    this.curve = meta.curve;
    this.canRun = channel !== null && meta.canRun;
    this.fill = h("select", { className: "mmviz-iv-fill", attrs: { "aria-label": "fill" } });
    const fillNames: Record<Fill, string> = { mean: "mean fill", zero: "zero fill", blur: "blur fill", paint: "paint the boxes (pixels)", other: "another image's tokens" };
    for (const f of meta.fills.length > 0 ? meta.fills : FILLS) this.fill.append(option(f, fillNames[f]));
    this.fill.value = meta.defaultFill;
    this.percent = h("input", { className: "mmviz-iv-percent", attrs: { type: "number", min: "1", max: "100", step: "1", "aria-label": "top percent" } });
    this.percent.value = "10";
    const top = button({ className: "mmviz-iv-top", text: "Top k % of the map", title: "Select the strongest k % of the patches of the map shown" });
    const clear = button({ className: "mmviz-iv-clear", text: "Clear" });
    this.undoButton = button({ className: "mmviz-iv-undo", text: "Undo", title: "Restore the selection before the last change" });
    const ablate = button({ className: "mmviz-iv-run-ablate", text: "Run ablation", title: "Replace the selected patches' tokens by the fill and rerun once" });
    this.count = h("span", { className: "mmviz-iv-count" });
    this.mapBox = h("div", { className: "mmviz-iv-maps" });
    const selectRow = h("div", { className: "mmviz-iv-row" }, this.percent, top, clear, this.undoButton, this.count);
    const ablateRow = h("div", { className: "mmviz-iv-row" }, this.fill, ablate);

    this.first = h("input", { className: "mmviz-iv-first", attrs: { type: "number", min: "0", max: String(data.L - 1), step: "1", "aria-label": "first layer" } });
    this.last = h("input", { className: "mmviz-iv-last", attrs: { type: "number", min: "0", max: String(data.L - 1), step: "1", "aria-label": "last layer" } });
    this.first.value = "0";
    this.last.value = String(Math.max(0, Math.floor(data.L / 2) - 1));
    this.preset = h("select", { className: "mmviz-iv-preset", attrs: { "aria-label": "knockout targets" } });
    for (const p of PRESETS) this.preset.append(option(p, p === "answer" ? "image → answer" : "image → last prompt token"));
    const knock = button({ className: "mmviz-iv-run-knockout", text: "Run knockout", title: "Cut attention from the image in these layers and rerun once" });
    this.width = h("input", { className: "mmviz-iv-width", attrs: { type: "number", min: "1", max: String(data.L), step: "1", "aria-label": "window width" } });
    this.width.value = "1";
    const curve = button({ className: "mmviz-iv-run-curve", text: "Curve", title: "Knock out a sliding window of w layers: one forward per window" });
    const knockRow = h("div", { className: "mmviz-iv-row" }, h("span", { text: "Knockout layers" }), this.first, h("span", { text: "…" }), this.last, this.preset, knock);
    const curveRow = h("div", { className: "mmviz-iv-row" }, h("span", { text: "window w" }), this.width, curve);
    this.runButtons = [ablate, knock, curve];
    const selectFrame = button({ className: "mmviz-iv-select-frame", text: "Select this frame's tokens", title: "Select every video token of the shown frame's temporal group (shift-click adds them); Run ablation then ablates exactly mmviz.interventions.frame_positions(trace, frame)" });
    this.frameLabel = h("span", { className: "mmviz-iv-frame-label" });
    this.frameRow = h("div", { className: "mmviz-iv-row mmviz-iv-frame-row", hidden: data.meta.video === null }, this.frameLabel, selectFrame);
    const selectHint = h("div", { className: "mmviz-iv-hint", text: "Click a patch to toggle it, shift-click to add; drag a rectangle to select the patches it touches (shift-drag adds). Drag over the rows of the layer × head overview to knock out that layer window." });

    this.status = h("div", { className: "mmviz-iv-status", data: { state: "idle" } });
    this.answerButton = button({ className: "mmviz-iv-run-answer", text: "New greedy answer", title: "Decode the answer again, greedily, with the shown run's intervention applied" });
    this.answerBox = h("div", { className: "mmviz-iv-answer", data: { index: "-1" } });
    this.compare = h("select", { className: "mmviz-iv-compare", attrs: { "aria-label": "compare with" } });
    this.result = h("div", { className: "mmviz-iv-result", data: { index: "-1" } });
    this.history = h("ol", { className: "mmviz-iv-history" });
    this.curveBox = h("div", { className: "mmviz-iv-curve", data: { width: "0" } });
    this.el = h(
      "div",
      { className: "mmviz-interventions", data: { selected: "", canRun: this.canRun ? "1" : "0" } },
      this.mapBox, selectHint, ...(data.meta.video === null ? [] : [this.frameRow]), selectRow, ablateRow, knockRow, curveRow, this.status,
      h("label", { className: "mmviz-control" }, h("span", { text: "compare with" }), this.compare),
      this.result, h("div", { className: "mmviz-iv-row" }, this.answerButton, this.answerBox), this.history, this.curveBox,
    ); // prettier-ignore
    this.answerButton.hidden = meta.maxNewTokens === 0;
    for (const b of [...this.runButtons, this.answerButton]) b.disabled = !this.canRun;
    if (!this.canRun) this.showStatus(channel === null ? "Kept runs only: this page has no kernel to run new ones." : "Kept runs only: the trace has no model attached to run new ones.", "idle");

    this.listeners.on(top, "click", () => this.selectTop());
    this.listeners.on(selectFrame, "click", (ev) => this.selectFrame((ev as MouseEvent).shiftKey));
    this.listeners.on(clear, "click", () => this.setSelection([]));
    this.listeners.on(this.undoButton, "click", () => this.undo());
    this.listeners.on(ablate, "click", () => this.runAblate());
    this.listeners.on(knock, "click", () => this.runKnockout());
    this.listeners.on(curve, "click", () => this.runCurve());
    this.listeners.on(this.answerButton, "click", () => this.runAnswer());
    this.listeners.on(this.compare, "change", () => {
      this.compared = this.compare.value === "" ? null : Number(this.compare.value);
      this.paintResult();
    });
    this.listeners.on(this.history, "click", (ev) => {
      const row = (ev.target as Element | null)?.closest?.("li[data-index]");
      if (row instanceof HTMLElement) this.show(Number(row.dataset.index));
    });
    this.paintHistory();
    if (this.runs.length > 0) this.show(this.runs.length - 1);
    this.undoStack.length = 0; // the selection a page opens with is not a change to undo
    this.undoButton.disabled = true;
    this.paintCurve();
  }

  private readonly canRun: boolean;

  /** A click on an image patch (main image or the panel's own): toggle it, or with shift add it. */
  clickPatch(shift: boolean): void {
    if (this.dragged) {
      this.dragged = false; // the click that ends a rectangle drag
      return;
    }
    const p = this.store.get().hoverPatch;
    if (p === null || p < 0 || p >= this.data.P) return;
    const next = new Set(this.selected);
    if (shift || !next.has(p)) next.add(p);
    else next.delete(p);
    this.setSelection(next);
  }

  /**
   * Let `view` (the panel's image or the main one) select by dragging a rectangle: every patch of its drawn view
   * whose box the rectangle touches, in the ORIGINAL image's pixels; shift adds them to the selection. A press that
   * moves less than {@link DRAG_THRESHOLD_PX} stays a click. The window listeners of a drag are removed when it ends
   * (and on dispose). `active` says whether a press may start one (the main image: while the panel is open).
   */
  attachRectangle(view: ImageView, active: () => boolean = () => true): void {
    const stack = view.heat.parentElement;
    if (stack === null) return;
    const rect = h("div", { className: "mmviz-iv-rect", hidden: true, attrs: { "aria-hidden": "true" } });
    Object.assign(rect.style, { position: "absolute", border: "2px dashed #000", outline: "1px solid #fff", pointerEvents: "none", boxSizing: "border-box" });
    stack.append(rect);
    const meta = this.data.images[view.index];
    const original = (ev: MouseEvent): [number, number] | null => {
      const r = stack.getBoundingClientRect();
      if (meta === undefined || r.width === 0 || r.height === 0) return null;
      const fx = Math.max(0, Math.min(1, (ev.clientX - r.left) / r.width));
      const fy = Math.max(0, Math.min(1, (ev.clientY - r.top) / r.height));
      return [fx * meta.width, fy * meta.height];
    };
    let stop: (() => void) | null = null;
    this.listeners.add(() => stop?.());
    this.listeners.on(stack, "pointerdown", (ev) => {
      if (ev.button !== 0 || stop !== null || !active()) return;
      const start = original(ev);
      if (start === null || meta === undefined) return;
      this.dragged = false;
      const [sx, sy] = [ev.clientX, ev.clientY];
      let moved = false;
      let end = start;
      const move = (e: PointerEvent): void => {
        if (!moved && Math.hypot(e.clientX - sx, e.clientY - sy) < DRAG_THRESHOLD_PX) return;
        moved = true;
        end = original(e) ?? end;
        const [x0, x1] = [Math.min(start[0], end[0]), Math.max(start[0], end[0])];
        const [y0, y1] = [Math.min(start[1], end[1]), Math.max(start[1], end[1])];
        Object.assign(rect.style, { left: `${(100 * x0) / meta.width}%`, top: `${(100 * y0) / meta.height}%`, width: `${(100 * (x1 - x0)) / meta.width}%`, height: `${(100 * (y1 - y0)) / meta.height}%` });
        rect.hidden = false;
      };
      const up = (e: PointerEvent): void => {
        stop?.();
        if (!moved) return;
        this.dragged = true;
        const columns = columnsInRect((p) => this.data.box(p), view.columns, start, original(e) ?? end);
        this.setSelection(e.shiftKey ? [...this.selected, ...columns] : columns);
        this.el.dataset.rect = [start, original(e) ?? end].flat().map((v) => v.toFixed(1)).join(",");
      };
      const cancel = (): void => stop?.();
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
      window.addEventListener("pointercancel", cancel);
      stop = () => {
        window.removeEventListener("pointermove", move);
        window.removeEventListener("pointerup", up);
        window.removeEventListener("pointercancel", cancel);
        rect.hidden = true;
        stop = null;
      };
    });
  }

  /**
   * Video: the frame strip shows `frame`, whose temporal group's tokens are `columns`: the panel's image shows it
   * too, and "Select this frame's tokens" takes them.
   */
  showFrame(frame: number, columns: readonly number[]): void {
    this.frame = frame;
    this.frameCols = [...columns];
    this.el.dataset.frame = String(frame);
    const video = this.data.meta.video;
    const g = video === null ? -1 : groupOf(video.groups, frame);
    const span = video !== null && g >= 0 ? video.groups[g]! : null;
    this.frameLabel.textContent = `Frame ${frame}${span === null ? "" : span[0] === span[1] ? ` (its group: frame ${span[0]})` : ` (its group: frames ${span[0]}–${span[1]})`} · ${columns.length} tokens`;
    this.images[0]?.showFrame(frame, this.frameCols);
  }

  /** Select the shown frame's group of video tokens (`add`: added to the selection). */
  selectFrame(add = false): void {
    if (this.data.meta.video === null) return;
    if (this.frameCols.length === 0) return this.showStatus(`Frame ${this.frame} has no video tokens to select.`, "error");
    this.setSelection(add ? [...this.selected, ...this.frameCols] : this.frameCols);
  }

  /** Δ log p of the shown run for the token strip's bars (null when no run is shown). */
  stripDeltas(): StripDeltas | null {
    const index = this.shown;
    const run = index === null ? undefined : this.runs[index];
    if (index === null || run === undefined) return null;
    return { values: new Map(run.positions.map((p, i) => [p, run.delta[i]!])), label: `#${index + 1} ${run.label}`, key: `run ${index}` };
  }

  /** A layer window picked elsewhere (dragged over the overview's rows): show it and, with a kernel, knock it out. */
  knockoutWindow(first: number, last: number): void {
    this.first.value = String(Math.min(first, last));
    this.last.value = String(Math.max(first, last));
    if (this.canRun) this.runKnockout();
  }

  /** Select exactly `columns` (invalid ones dropped); a change can be undone. */
  setSelection(columns: Iterable<number>): void {
    const before = [...this.selected].sort((a, b) => a - b);
    this.selected.clear();
    for (const c of columns) if (Number.isInteger(c) && c >= 0 && c < this.data.P) this.selected.add(c);
    const after = [...this.selected].sort((a, b) => a - b);
    if (after.length !== before.length || after.some((c, i) => c !== before[i])) {
      this.undoStack.push(before);
      if (this.undoStack.length > UNDO_DEPTH) this.undoStack.shift();
    }
    this.paintSelection();
  }

  /** Restore the selection before the last change (nothing when there is none). */
  undo(): void {
    const previous = this.undoStack.pop();
    if (previous === undefined) return;
    this.selected.clear();
    for (const c of previous) this.selected.add(c);
    this.paintSelection();
  }

  private selectTop(): void {
    const percent = Number(this.percent.value);
    if (this.lastMap === null) return this.showStatus("No map is shown to take the top patches of.", "error");
    if (!(percent > 0 && percent <= 100)) return this.showStatus("k must be a percentage in 1 … 100.", "error");
    this.setSelection(topColumns(this.lastMap, percent));
  }

  private showStatus(text: string, state: "idle" | "pending" | "error" | "done"): void {
    this.status.textContent = text;
    this.status.dataset.state = state;
  }

  private ask(request: Request, what: string, done: (payload: unknown) => void): void {
    if (this.channel === null || !this.canRun) return;
    this.pending?.cancel();
    const buttons = [...this.runButtons, this.answerButton];
    for (const b of buttons) b.disabled = true;
    this.showStatus(`Running the model (${what})…`, "pending");
    const finish = (): void => {
      this.pending = null;
      for (const b of buttons) b.disabled = false;
    };
    const pending = this.channel.ask(request, INTERVENE_TIMEOUT_MS, {
      reply: (reply) => {
        if (this.pending !== pending) return;
        finish();
        try {
          done(fetchedPayload(reply));
          this.showStatus("", "done");
        } catch (err) {
          this.showStatus(`${what} failed: ${err instanceof Error ? err.message : String(err)}`, "error");
        }
      },
      fail: (err) => {
        if (this.pending !== pending) return;
        finish();
        this.showStatus(`${what} failed: ${err.message}`, "error");
      },
    });
    this.pending = pending;
  }

  private send(intervention: Intervention, what: string): void {
    this.ask({ type: "intervene", intervention }, what, (payload) => {
      const run = parseRun(payload, this.data.n);
      this.runs.push(run);
      this.paintHistory();
      this.show(this.runs.length - 1);
    });
  }

  private runAblate(): void {
    if (this.selected.size === 0) return this.showStatus("Select at least one image patch first.", "error");
    const positions = [...this.selected].sort((a, b) => a - b).map((c) => this.data.imagePositions[c]!);
    this.send({ kind: "ablate", positions, fill: this.fill.value as Fill }, "ablation");
  }

  private runKnockout(): void {
    const layers = layerWindow(Number(this.first.value), Number(this.last.value), this.data.L);
    if (typeof layers === "string") return this.showStatus(`Knockout: ${layers}.`, "error");
    this.send({ kind: "knockout", layers, sources: "image", to: this.preset.value as Preset }, "knockout");
  }

  /** Ask for the greedy answer with the shown run's intervention applied (once per run; kept here). */
  private runAnswer(): void {
    const index = this.shown;
    const run = index === null ? undefined : this.runs[index];
    if (index === null || run === undefined) return this.showStatus("Run an ablation or a knockout first: the new answer applies the shown run.", "error");
    if (this.answers.has(index)) return this.paintAnswer();
    const max_new_tokens = Math.max(1, Math.min(32, this.meta.maxNewTokens));
    this.ask({ type: "generate", intervention: run.intervention, max_new_tokens }, "greedy answer", (payload) => {
      this.answers.set(index, parseGeneration(payload));
      this.paintAnswer();
    });
  }

  /** The shown run's greedy answer, if it was asked for: "new answer (was: …)". Text only. */
  private paintAnswer(): void {
    const index = this.shown ?? -1;
    const answer = this.answers.get(index);
    this.answerBox.dataset.index = answer === undefined ? "-1" : String(index);
    if (answer === undefined) return void this.answerBox.replaceChildren();
    const changed = answer.text.trim() !== answer.original.trim();
    this.answerBox.dataset.changed = changed ? "1" : "0";
    this.answerBox.dataset.text = answer.text;
    const tail = answer.stopped === "length" ? " …" : "";
    this.answerBox.replaceChildren(
      h("span", { className: "mmviz-iv-answer-text", text: `“${answer.text}${tail}”` }),
      h("span", { className: "mmviz-iv-answer-was", text: changed ? ` (was “${answer.original}”)` : " (unchanged)" }),
    );
    this.answerBox.title = `${answer.label}: ${answer.tokens.join(" · ")}`;
  }

  private runCurve(): void {
    const width = Number(this.width.value);
    if (!Number.isInteger(width) || width < 1 || width > this.data.L) return this.showStatus(`Curve: w must be a whole number in 1 … ${this.data.L}.`, "error");
    this.ask({ type: "curve", width, to: this.preset.value as Preset }, "knockout curve", (payload) => {
      this.curve = parseCurve(payload);
      this.paintCurve();
    });
  }

  /** Show kept run `index` (its bars; its selection on the image when it is an ablation). */
  show(index: number): void {
    if (!(index >= 0 && index < this.runs.length)) return;
    this.shown = index;
    const run = this.runs[index]!;
    if (run.intervention.kind === "ablate") {
      const columns = run.intervention.positions.map((p) => this.data.columnOfPosition(p)).filter((c) => c >= 0);
      this.setSelection(columns);
    }
    for (const li of this.history.children) if (li instanceof HTMLElement) li.classList.toggle("mmviz-on", Number(li.dataset.index) === index);
    this.paintResult();
    this.paintAnswer();
    this.onShow();
  }

  private paintHistory(): void {
    this.history.replaceChildren(
      ...this.runs.map((run, i) => {
        const first = run.delta[0];
        return h(
          "li",
          { className: "mmviz-iv-entry", data: { index: String(i) }, title: run.description },
          h("span", { text: `#${i + 1} ${run.label}` }),
          h("span", { className: "mmviz-iv-entry-delta", text: first === undefined ? "" : ` Δ ${first >= 0 ? "+" : ""}${first.toFixed(2)}` }),
        );
      }),
    );
    const value = this.compare.value;
    this.compare.replaceChildren(option("", "(none)"), ...this.runs.map((run, i) => option(String(i), `#${i + 1} ${run.label}`)));
    this.compare.value = value;
    this.el.dataset.runs = String(this.runs.length);
  }

  /** One row per answer token: the shown run's bar, and the compared run's beside it. */
  private paintResult(): void {
    const run = this.shown === null ? undefined : this.runs[this.shown];
    this.result.dataset.index = String(this.shown ?? -1);
    if (run === undefined) return void this.result.replaceChildren();
    const other = this.compared === null || this.compared === this.shown ? undefined : this.runs[this.compared];
    this.result.dataset.compared = String(other === undefined ? -1 : this.compared);
    // Scaled to the largest |Δ| but never below the floor: a run whose Δ are all ≈ 0 draws ≈ empty bars.
    const scale = deltaScale([...run.delta, ...(other?.delta ?? [])]);
    this.result.dataset.scale = String(scale);
    const bar = (delta: number | undefined, cls: string): HTMLElement => {
      const el = h("span", { className: `mmviz-clamp-bar ${cls} ${delta !== undefined && delta < 0 ? "mmviz-neg" : "mmviz-pos"}` });
      el.style.width = `${delta === undefined ? 0 : deltaWidth(delta, scale).toFixed(2)}%`;
      return el;
    };
    const rows: HTMLElement[] = [
      h("div", { className: "mmviz-iv-title", text: `Δ log p of each answer token: #${this.shown! + 1} ${run.label}${other ? ` vs #${this.compared! + 1} ${other.label}` : ""}` }),
      h("div", { className: "mmviz-iv-scale", text: `bars: ±${scale.toFixed(2)} nats at the track's ends (the largest |Δ|, at least ±${DELTA_FLOOR_NATS})` }),
    ];
    run.positions.forEach((pos, i) => {
      const delta = run.delta[i]!;
      const j = other?.positions.indexOf(pos) ?? -1;
      const second = other !== undefined && j >= 0 ? other.delta[j] : undefined;
      const tracks = [h("span", { className: "mmviz-clamp-track" }, bar(delta, "mmviz-iv-bar"))];
      if (other !== undefined) tracks.push(h("span", { className: "mmviz-clamp-track mmviz-iv-second" }, bar(second, "mmviz-iv-bar-compare")));
      rows.push(
        h(
          "div",
          { className: "mmviz-clamp-row mmviz-iv-bar-row", data: { pos: String(pos), delta: delta.toFixed(6), compare: second === undefined ? "" : second.toFixed(6) }, title: `log p ${run.clean[i]!.toFixed(3)} → ${(run.clean[i]! + delta).toFixed(3)}` },
          h("span", { className: "mmviz-clamp-token", text: displayToken(this.data.tokens[pos] ?? "") }),
          ...tracks,
          h("span", { className: "mmviz-clamp-value", text: `${signedText(delta)}${second === undefined ? "" : ` | ${signedText(second)}`}` }),
        ),
      );
    });
    this.result.replaceChildren(...rows);
  }

  /** Δ of the first answer token per window start, as an SVG polyline with a zero line. */
  private paintCurve(): void {
    const c = this.curve;
    this.curveBox.dataset.width = String(c?.width ?? 0);
    if (c === null || c.starts.length === 0) return void this.curveBox.replaceChildren();
    this.curveBox.dataset.delta = c.delta.map((d) => d.toFixed(6)).join(",");
    const W = 240, H = 90, pad = 8; // prettier-ignore
    const low = Math.min(0, ...c.delta), high = Math.max(0, ...c.delta); // prettier-ignore
    const span = high - low || 1;
    const x = (i: number): number => pad + (c.starts.length === 1 ? (W - 2 * pad) / 2 : (i * (W - 2 * pad)) / (c.starts.length - 1));
    const y = (v: number): number => pad + ((high - v) * (H - 2 * pad)) / span;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", String(W));
    svg.setAttribute("height", String(H));
    svg.setAttribute("class", "mmviz-iv-curve-svg");
    const zero = document.createElementNS(SVG, "line");
    for (const [k, v] of [["x1", pad], ["x2", W - pad], ["y1", y(0)], ["y2", y(0)]] as const) zero.setAttribute(k, String(v));
    zero.setAttribute("stroke", "#999");
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", c.delta.map((d, i) => `${x(i).toFixed(1)},${y(d).toFixed(1)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#c0392b");
    line.setAttribute("stroke-width", "2");
    svg.append(zero, line);
    const caption = `Δ log p of the first answer token, image → ${c.to === "answer" ? "answer" : "last prompt token"} knocked out in layers s … s+${c.width - 1} (s = ${c.starts[0]} … ${c.starts.at(-1)}); min ${Math.min(...c.delta).toFixed(2)}`;
    this.curveBox.replaceChildren(h("div", { className: "mmviz-iv-title", text: caption }), svg);
  }

  private paintSelection(): void {
    const cols = [...this.selected].sort((a, b) => a - b);
    this.el.dataset.selected = cols.join(",");
    this.count.textContent = `${cols.length} patch${cols.length === 1 ? "" : "es"} selected`;
    this.undoButton.disabled = this.undoStack.length === 0;
    this.paintedKey = "";
    this.paintImages(this.store.get());
  }

  private paintImages(s: Readonly<ViewState>): void {
    if (this.images.length === 0) {
      // A video: one image, the frame the frame strip shows (its group's tokens), as in the main view.
      const nViews = this.data.meta.video === null ? this.data.nImages : Math.min(1, this.data.nImages);
      for (let i = 0; i < nViews; i++) {
        const v = new ImageView(this.data, this.store, i, MAP_SIDE);
        v.el.classList.add("mmviz-iv-image");
        v.heat.classList.add("mmviz-iv-heat");
        this.listeners.on(v.heat.parentElement ?? v.el, "click", (ev) => this.clickPatch((ev as MouseEvent).shiftKey));
        this.attachRectangle(v);
        this.images.push(v);
        this.mapBox.append(v.el);
      }
      if (this.data.meta.video !== null && this.frameCols.length > 0) this.images[0]?.showFrame(this.frame, this.frameCols);
    }
    const key = `${this.el.dataset.selected}|${s.views.join(",")}`;
    if (key !== this.paintedKey) {
      this.paintedKey = key;
      const map = new Float32Array(this.data.P);
      for (const c of this.selected) map[c] = 1;
      const scale = { ...scaleOf(Float32Array.of(0, 1), false), mode: "linear" as const, gamma: 1 };
      this.images.forEach((v, i) => {
        v.setView(this.data.selectedView(i, s.views));
        v.paintHeat(map, scale, 0, key);
      });
    }
    for (const v of this.images) {
      v.setOpacity(0.6);
      v.paintOutline(s.hoverPatch);
    }
  }

  /** Repaint for state `s`; `map` is the map drawn on the main image (for "Top k %"). */
  update(s: Readonly<ViewState>, map: Float32Array | null): void {
    this.lastMap = map;
    this.paintImages(s);
  }

  dispose(): void {
    this.pending?.cancel();
    this.pending = null;
    this.listeners.dispose();
    for (const v of this.images) v.dispose();
  }
}
