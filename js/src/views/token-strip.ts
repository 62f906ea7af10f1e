/**
 * The sequence as a strip of token chips. Image positions collapse into one chip per contiguous run. In word mode
 * the sub-word pieces of a word are one chip (its map is the mean of its pieces' maps). Token text is only ever
 * set with textContent. Answer tokens can carry a second, independent shade: a stripe along their bottom edge
 * coloured by their image reliance ({@link TokenStrip.shade}), which the hover tint (the background) never hides,
 * and a compact Δ log p bar under the chip for the run the Interventions panel shows ({@link TokenStrip.showDeltas}).
 * A video's chip reads "video · N frames · M tokens".
 */

import { colorFor, scaleColor, textColorOn, type ColorScale } from "../colormap";
import type { WidgetData } from "../data";
import { h, Listeners } from "../dom";
import { isImageKind, KIND_QUERY, KIND_SPECIAL, type VideoMeta } from "../protocol";
import type { Store } from "../store";

/** "p = 0.83" for a log-probability (answer tokens), "" for NaN. */
export function probabilityText(logprob: number): string {
  if (!Number.isFinite(logprob)) return "";
  const p = Math.exp(logprob);
  return `p = ${p >= 0.01 || p === 0 ? p.toFixed(2) : p.toExponential(1)}`;
}

/** Token text with whitespace made visible (the strip uses `white-space: pre`). */
export function displayToken(text: string): string {
  return text.replace(/\r\n|\n|\r/g, "↵").replace(/\t/g, "⇥");
}

export interface ImageRun {
  start: number;
  /** Number of positions in the run. */
  count: number;
  /** Images whose columns lie in the run (ascending). */
  images: number[];
}

/** Contiguous runs of image-kind positions (kinds 2, 3, 4). */
export function imageRuns(data: WidgetData): ImageRun[] {
  const runs: ImageRun[] = [];
  const { kinds } = data;
  let pos = 0;
  while (pos < kinds.length) {
    if (!isImageKind(kinds[pos]!)) {
      pos++;
      continue;
    }
    const start = pos;
    const images = new Set<number>();
    while (pos < kinds.length && isImageKind(kinds[pos]!)) {
      const p = data.columnOfPosition(pos);
      if (p >= 0) images.add(data.imageIndex[p]!);
      pos++;
    }
    runs.push({ start, count: pos - start, images: [...images].sort((a, b) => a - b) });
  }
  return runs;
}

/**
 * The label of an image run's chip. For a video (`video`: `meta.video`) "video · N frames · M tokens", N the
 * original frames of the temporal groups whose tokens lie in the run (a group's tokens are its first frame's).
 */
export function chipLabel(run: ImageRun, nImages: number, video: VideoMeta | null = null): string {
  const tokens = `${run.count} token${run.count === 1 ? "" : "s"}`;
  if (video !== null) {
    const firsts = new Set(run.images);
    const frames = video.groups.reduce((n, [first, last]) => n + (firsts.has(first) ? last - first + 1 : 0), 0);
    return `video · ${frames} frame${frames === 1 ? "" : "s"} · ${tokens}`;
  }
  if (run.images.length > 1) return `${run.images.length} images · ${tokens}`;
  if (nImages > 1 && run.images.length === 1) return `image ${run.images[0]! + 1} · ${tokens}`;
  return `image · ${tokens}`;
}

/** Δ log p bars are scaled to at least this many nats, so a run whose Δ are all ≈ 0 draws ≈ empty bars. */
export const DELTA_FLOOR_NATS = 1;

/** The half-width of a Δ bar track, in nats: the largest finite |Δ| of `values`, at least {@link DELTA_FLOOR_NATS}. */
export function deltaScale(values: Iterable<number>): number {
  let largest = 0;
  for (const v of values) if (Number.isFinite(v)) largest = Math.max(largest, Math.abs(v));
  return Math.max(DELTA_FLOOR_NATS, largest);
}

/** The width of a Δ bar, in % of its centred track (50 % = |Δ| equals `scale`; 0 for NaN). */
export function deltaWidth(delta: number, scale: number): number {
  if (!Number.isFinite(delta) || !(scale > 0)) return 0;
  return Math.min(50, (50 * Math.abs(delta)) / scale);
}

/** "+0.123" / "−1.500" (three decimals, the sign always shown). */
export function signedText(v: number): string {
  return `${v >= 0 ? "+" : ""}${v.toFixed(3)}`;
}

/** Δ log p of one run per answer position, for {@link TokenStrip.showDeltas}. */
export interface StripDeltas {
  /** Δ log p by sequence position. */
  values: ReadonlyMap<number, number>;
  /** What the run is ("#2 ablate 12 image tokens (zero fill)"), for the tooltip. Text only. */
  label: string;
  /** Identifies the run: the bars are rewritten only when it changes. */
  key: string;
}

export interface TokenPaint {
  hoverToken: number | null;
  pinnedToken: number | null;
  /** The shown map's value of every row at the hovered patch (attention: every query row), or null. */
  column: Float32Array | null;
  /** The sequence position of each entry of `column` (default: the attention query positions). */
  positions?: Int32Array;
  /** How `column` is coloured. */
  scale: ColorScale;
  /** Identifies `column` and `scale`: the tint is rewritten only when it changes. */
  key: string;
}

export class TokenStrip {
  readonly el: HTMLDivElement;
  /** Span of each displayed position (undefined for image positions); in word mode every piece maps to its word. */
  private readonly spans: (HTMLSpanElement | undefined)[];
  private readonly tinted = new Set<HTMLSpanElement>();
  private hoverEl: HTMLSpanElement | undefined;
  private pinnedEl: HTMLSpanElement | undefined;
  private lastKey = "";
  private rowsKey = "attention";
  private readonly listeners = new Listeners();
  private readonly shaded = new Set<HTMLSpanElement>();
  private shadeKey = "";
  private defaultEl: HTMLSpanElement | undefined;
  /** Chips carrying a Δ bar, with the title they had before it. */
  private readonly deltaTitles = new Map<HTMLSpanElement, string>();
  private deltaKey = "";

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
    /** Merge sub-word pieces into one chip per word. */
    readonly words = false,
  ) {
    const el = h("div", {
      className: words ? "mmviz-tokens mmviz-words" : "mmviz-tokens",
      attrs: { role: "list", "aria-label": "tokens" },
    });
    this.el = el;
    this.spans = new Array<HTMLSpanElement | undefined>(data.n);

    const runs = imageRuns(data);
    const runAt = new Map(runs.map((r) => [r.start, r]));
    const frag = document.createDocumentFragment();
    const nImages = data.nImages;
    let pos = 0;
    while (pos < data.n) {
      const run = runAt.get(pos);
      if (run) {
        const chip = h("span", {
          className: "mmviz-image-chip",
          text: chipLabel(run, nImages, data.meta.video),
          data: { start: String(run.start), count: String(run.count) },
          title: `positions ${run.start}–${run.start + run.count - 1}`,
        });
        if (run.images.length === 1) chip.dataset.imageIndex = String(run.images[0]);
        frag.append(chip);
        pos += run.count;
        continue;
      }
      const members = words ? data.wordOf(pos).filter((i) => i >= pos && !runAt.has(i)) : [pos];
      const last = members.findIndex((i, k) => k > 0 && i !== members[k - 1]! + 1);
      const word = last === -1 ? members : members.slice(0, last);
      frag.append(this.makeSpan(word.length > 0 ? word : [pos]));
      pos += Math.max(1, word.length);
    }
    el.append(frag);

    this.listeners.on(el, "mouseover", (ev) => {
      const target = ev.target as Element | null;
      const tok = target?.closest?.(".mmviz-token");
      if (tok instanceof HTMLElement && el.contains(tok)) {
        this.store.set({ hoverToken: Number(tok.dataset.pos) });
      } else if (target?.closest?.(".mmviz-image-chip")) {
        this.store.set({ hoverToken: null });
      }
    });
    this.listeners.on(el, "mouseleave", () => this.store.set({ hoverToken: null }));
    this.listeners.on(el, "click", (ev) => {
      const tok = (ev.target as Element | null)?.closest?.(".mmviz-token");
      if (!(tok instanceof HTMLElement) || !el.contains(tok)) return;
      const pos = Number(tok.dataset.pos);
      const pinned = this.store.get().pinnedToken;
      this.store.set({ pinnedToken: pinned === pos ? null : pos });
    });
  }

  /** One chip for `positions` (a token, or the pieces of a word), keyed by its first position. */
  private makeSpan(positions: readonly number[]): HTMLSpanElement {
    const { data } = this;
    const pos = positions[0]!;
    const span = h("span");
    const kind = data.kinds[pos] ?? 0;
    const classes = ["mmviz-token"];
    if (pos >= data.answerStart) classes.push("mmviz-answer");
    if (kind === KIND_SPECIAL) classes.push("mmviz-special");
    if (kind === KIND_QUERY) classes.push("mmviz-query");
    const q = data.rowOf(pos);
    if (positions.some((i) => data.rowOf(i) >= 0)) classes.push("mmviz-has-row");
    span.className = classes.join(" ");
    const text = positions.map((i) => data.tokens[i] ?? "").join("");
    span.textContent = displayToken(text);
    if (text === "") span.classList.add("mmviz-empty");
    span.dataset.pos = String(pos);
    if (positions.length > 1) span.dataset.positions = positions.join(",");
    span.setAttribute("role", "listitem");
    let title = positions.length > 1 ? `positions ${pos}–${positions[positions.length - 1]} (${positions.length} pieces)` : `position ${pos}`;
    if (q >= 0 && positions.length === 1) title += ` · attention row ${q}`;
    if (kind === KIND_SPECIAL) title += " · special token";
    if (pos >= data.answerStart) title += " · answer";
    const logprob = positions.reduce((sum, i) => sum + (data.logprobs[i] ?? Number.NaN), 0);
    const prob = probabilityText(logprob);
    if (prob !== "") {
      title += ` · ${prob}`;
      span.dataset.prob = Math.exp(logprob).toFixed(6);
    }
    span.title = title;
    for (const i of positions) this.spans[i] = span;
    return span;
  }

  /**
   * Mark the tokens the shown map has a row for (`mmviz-has-row`); `key` identifies the map, so the classes are
   * only rewritten when it changes.
   */
  setRows(key: string, hasRow: (pos: number) => boolean, sparse: boolean): void {
    if (key === this.rowsKey) return;
    this.rowsKey = key;
    this.el.classList.toggle("mmviz-rows-sparse", sparse);
    const marked = new Set<HTMLSpanElement>();
    this.spans.forEach((span, pos) => {
      if (span !== undefined && hasRow(pos)) marked.add(span);
    });
    for (const span of new Set(this.spans)) span?.classList.toggle("mmviz-has-row", marked.has(span));
  }

  /**
   * Shade chips by a per-position value (image reliance of answer tokens): a 4 px stripe along the bottom edge,
   * viridis from 0 to `max`, with the value in `data-reliance`; a word's stripe is the largest of its pieces'.
   * `key` identifies the values; null clears every stripe.
   */
  shade(values: ReadonlyMap<number, number> | null, max: number, key: string): void {
    if (key === this.shadeKey) return;
    this.shadeKey = key;
    for (const span of this.shaded) {
      span.style.removeProperty("box-shadow");
      span.classList.remove("mmviz-shaded");
      delete span.dataset.reliance;
    }
    this.shaded.clear();
    if (values === null) return;
    const bySpan = new Map<HTMLSpanElement, number>();
    for (const [pos, v] of values) {
      const span = this.spans[pos];
      if (span === undefined || !Number.isFinite(v)) continue;
      bySpan.set(span, Math.max(bySpan.get(span) ?? -Infinity, v));
    }
    for (const [span, v] of bySpan) {
      const [r, g, b] = colorFor(max > 0 ? v / max : 0);
      span.style.boxShadow = `inset 0 -4px 0 rgb(${r}, ${g}, ${b})`;
      span.classList.add("mmviz-shaded");
      span.dataset.reliance = v.toFixed(6);
      this.shaded.add(span);
    }
  }

  /**
   * Draw a compact Δ log p bar under every chip of `deltas` (the run the Interventions panel shows): a centred
   * track, decreases red to the left, increases blue to the right, scaled to {@link deltaScale} of the run; the
   * value (a word's: the sum of its pieces', as log p of a word is) in `data-delta` and in the chip's tooltip.
   * null removes every bar and restores the tooltips. Rewritten only when `deltas.key` changes.
   */
  showDeltas(deltas: StripDeltas | null): void {
    const key = deltas === null ? "" : deltas.key;
    if (key === this.deltaKey) return;
    this.deltaKey = key;
    for (const [span, title] of this.deltaTitles) {
      span.querySelector(":scope > .mmviz-delta")?.remove();
      span.classList.remove("mmviz-has-delta");
      span.title = title;
      delete span.dataset.delta;
    }
    this.deltaTitles.clear();
    this.el.dataset.deltaScale = "";
    if (deltas === null) return;
    const bySpan = new Map<HTMLSpanElement, number>();
    for (const [pos, v] of deltas.values) {
      const span = this.spans[pos];
      if (span === undefined || !Number.isFinite(v)) continue;
      bySpan.set(span, (bySpan.get(span) ?? 0) + v);
    }
    const scale = deltaScale(bySpan.values());
    this.el.dataset.deltaScale = String(scale);
    for (const [span, v] of bySpan) {
      const fill = h("span", { className: `mmviz-delta-fill ${v < 0 ? "mmviz-neg" : "mmviz-pos"}` });
      fill.style.width = `${deltaWidth(v, scale).toFixed(2)}%`;
      const bar = h("span", { className: "mmviz-delta", attrs: { "aria-hidden": "true" } }, fill);
      this.deltaTitles.set(span, span.title);
      span.append(bar);
      span.classList.add("mmviz-has-delta");
      span.dataset.delta = v.toFixed(6);
      span.title = `${span.title} · Δ log p ${signedText(v)} under ${deltas.label} (bar: ±${scale.toFixed(2)} nats full width, at least ±${DELTA_FLOOR_NATS})`;
    }
  }

  /** Mark the chip of `pos` as the one a method map shows while nothing is hovered or pinned (null: none). */
  markDefault(pos: number | null): void {
    const el = pos === null ? undefined : this.spans[pos];
    this.el.dataset.defaultFocus = pos === null || el === undefined ? "" : String(pos);
    if (el === this.defaultEl) return;
    this.defaultEl?.classList.remove("mmviz-default-focus");
    if (this.defaultEl) this.defaultEl.style.removeProperty("outline");
    el?.classList.add("mmviz-default-focus");
    if (el) el.style.outline = "2px dotted currentColor";
    this.defaultEl = el;
  }

  spanAt(pos: number): HTMLSpanElement | undefined {
    return this.spans[pos];
  }

  paint(p: TokenPaint): void {
    const hoverEl = p.hoverToken === null ? undefined : this.spans[p.hoverToken];
    if (hoverEl !== this.hoverEl) {
      this.hoverEl?.classList.remove("mmviz-hover");
      hoverEl?.classList.add("mmviz-hover");
      this.hoverEl = hoverEl;
    }
    const pinnedEl = p.pinnedToken === null ? undefined : this.spans[p.pinnedToken];
    if (pinnedEl !== this.pinnedEl) {
      this.pinnedEl?.classList.remove("mmviz-pinned");
      pinnedEl?.classList.add("mmviz-pinned");
      this.pinnedEl = pinnedEl;
    }
    if (p.key === this.lastKey) return; // same column and scale: tint unchanged
    this.lastKey = p.key;
    for (const span of this.tinted) {
      span.style.removeProperty("background-color");
      span.style.removeProperty("color");
      span.classList.remove("mmviz-tinted");
      delete span.dataset.value;
    }
    this.tinted.clear();
    if (p.column === null) return;
    const positions = p.positions ?? this.data.queryPositions;
    // A word's tint is the mean of its pieces' values.
    const sums = new Map<HTMLSpanElement, [number, number]>();
    for (let q = 0; q < positions.length; q++) {
      const span = this.spans[positions[q]!];
      const v = p.column[q]!;
      if (span === undefined || !Number.isFinite(v)) continue;
      const acc = sums.get(span) ?? [0, 0];
      sums.set(span, [acc[0] + v, acc[1] + 1]);
    }
    for (const [span, [sum, count]] of sums) {
      const v = sum / count;
      const rgb = scaleColor(p.scale, v);
      span.style.backgroundColor = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
      span.style.color = textColorOn(rgb);
      span.classList.add("mmviz-tinted");
      span.dataset.value = v.toFixed(6);
      this.tinted.add(span);
    }
  }

  dispose(): void {
    this.listeners.dispose();
  }
}
