/**
 * The sequence as a strip of token chips. Image positions collapse into one chip per contiguous run. In word mode
 * the sub-word pieces of a word are one chip (its map is the mean of its pieces' maps). Token text is only ever
 * set with textContent.
 */

import { scaleColor, textColorOn, type ColorScale } from "../colormap";
import type { WidgetData } from "../data";
import { h, Listeners } from "../dom";
import { isImageKind, KIND_QUERY, KIND_SPECIAL } from "../protocol";
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

export function chipLabel(run: ImageRun, nImages: number): string {
  const tokens = `${run.count} token${run.count === 1 ? "" : "s"}`;
  if (run.images.length > 1) return `${run.images.length} images · ${tokens}`;
  if (nImages > 1 && run.images.length === 1) return `image ${run.images[0]! + 1} · ${tokens}`;
  return `image · ${tokens}`;
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
          text: chipLabel(run, nImages),
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
