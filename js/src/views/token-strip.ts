/**
 * The sequence as a strip of token chips. Image positions collapse into one chip per contiguous run.
 * Token text is only ever set with textContent.
 */

import { scaleColor, textColorOn, type ColorScale } from "../colormap";
import { isImageKind, KIND_QUERY, KIND_SPECIAL, type WidgetData } from "../data";
import type { Store } from "../store";

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
}

export class TokenStrip {
  readonly el: HTMLDivElement;
  /** Span of each displayed position (undefined for image positions). */
  private readonly spans: (HTMLSpanElement | undefined)[];
  private readonly tinted = new Set<HTMLSpanElement>();
  private hoverEl: HTMLSpanElement | undefined;
  private pinnedEl: HTMLSpanElement | undefined;
  private lastColumn: Float32Array | null = null;
  private rowsKey = "attention";
  private readonly disposers: (() => void)[] = [];

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
  ) {
    const el = document.createElement("div");
    el.className = "mmviz-tokens";
    el.setAttribute("role", "list");
    el.setAttribute("aria-label", "tokens");
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
        const chip = document.createElement("span");
        chip.className = "mmviz-image-chip";
        chip.textContent = chipLabel(run, nImages);
        chip.dataset.start = String(run.start);
        chip.dataset.count = String(run.count);
        if (run.images.length === 1) chip.dataset.imageIndex = String(run.images[0]);
        chip.title = `positions ${run.start}–${run.start + run.count - 1}`;
        frag.append(chip);
        pos += run.count;
        continue;
      }
      frag.append(this.makeSpan(pos));
      pos++;
    }
    el.append(frag);

    const onOver = (ev: MouseEvent): void => {
      const target = ev.target as Element | null;
      const tok = target?.closest?.(".mmviz-token");
      if (tok instanceof HTMLElement && el.contains(tok)) {
        this.store.set({ hoverToken: Number(tok.dataset.pos) });
      } else if (target?.closest?.(".mmviz-image-chip")) {
        this.store.set({ hoverToken: null });
      }
    };
    const onLeave = (): void => this.store.set({ hoverToken: null });
    const onClick = (ev: MouseEvent): void => {
      const tok = (ev.target as Element | null)?.closest?.(".mmviz-token");
      if (!(tok instanceof HTMLElement) || !el.contains(tok)) return;
      const pos = Number(tok.dataset.pos);
      const pinned = this.store.get().pinnedToken;
      this.store.set({ pinnedToken: pinned === pos ? null : pos });
    };
    el.addEventListener("mouseover", onOver);
    el.addEventListener("mouseleave", onLeave);
    el.addEventListener("click", onClick);
    this.disposers.push(() => {
      el.removeEventListener("mouseover", onOver);
      el.removeEventListener("mouseleave", onLeave);
      el.removeEventListener("click", onClick);
    });
  }

  private makeSpan(pos: number): HTMLSpanElement {
    const { data } = this;
    const span = document.createElement("span");
    const kind = data.kinds[pos] ?? 0;
    const classes = ["mmviz-token"];
    if (pos >= data.answerStart) classes.push("mmviz-answer");
    if (kind === KIND_SPECIAL) classes.push("mmviz-special");
    if (kind === KIND_QUERY) classes.push("mmviz-query");
    const q = data.rowOf(pos);
    if (q >= 0) classes.push("mmviz-has-row");
    span.className = classes.join(" ");
    const text = data.tokens[pos] ?? "";
    span.textContent = displayToken(text);
    if (text === "") span.classList.add("mmviz-empty");
    span.dataset.pos = String(pos);
    span.setAttribute("role", "listitem");
    let title = `position ${pos}`;
    if (q >= 0) title += ` · attention row ${q}`;
    if (kind === KIND_SPECIAL) title += " · special token";
    if (pos >= data.answerStart) title += " · answer";
    span.title = title;
    this.spans[pos] = span;
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
    this.spans.forEach((span, pos) => {
      if (span !== undefined) span.classList.toggle("mmviz-has-row", hasRow(pos));
    });
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
    if (p.column === this.lastColumn) return; // same (memoised) column: tint unchanged
    this.lastColumn = p.column;
    for (const span of this.tinted) {
      span.style.removeProperty("background-color");
      span.style.removeProperty("color");
      span.classList.remove("mmviz-tinted");
      delete span.dataset.value;
    }
    this.tinted.clear();
    if (p.column === null) return;
    const positions = p.positions ?? this.data.queryPositions;
    for (let q = 0; q < positions.length; q++) {
      const span = this.spans[positions[q]!];
      if (span === undefined) continue;
      const v = p.column[q]!;
      if (!Number.isFinite(v)) continue;
      const rgb = scaleColor(p.scale, v);
      span.style.backgroundColor = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
      span.style.color = textColorOn(rgb);
      span.classList.add("mmviz-tinted");
      span.dataset.value = v.toFixed(6);
      this.tinted.add(span);
    }
  }

  dispose(): void {
    for (const d of this.disposers) d();
    this.disposers.length = 0;
  }
}
