/**
 * The logit-lens panel: for the hovered patch (else the focused token), the top-k tokens the residual stream
 * decodes to at every depth, with their probabilities, and the rank of the token that position is read against
 * (the next token of the sequence: at t − 1 the answer token t; at an image patch the first answer token). The
 * current layer's row is highlighted; clicking a row selects that layer. Token text is set with textContent only.
 *
 * The lens is fetched from the kernel the first time the panel is opened (extras.ts).
 */

import type { WidgetData } from "../data";
import type { LensData } from "../extras";
import { ALL_LAYERS, type Store, type ViewState } from "../store";
import { quoteToken } from "./caption";
import { displayToken } from "./token-strip";

/** Row label of depth d: the embeddings, then the state after decoder layer d − 1. */
export function depthLabel(depth: number): string {
  return depth === 0 ? "embeddings" : `layer ${depth - 1}`;
}

export class LensPanel {
  readonly el: HTMLDivElement;
  private readonly title: HTMLDivElement;
  private readonly body: HTMLTableSectionElement;
  private readonly status: HTMLDivElement;
  private key = "";
  private readonly disposers: (() => void)[] = [];

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
  ) {
    const el = document.createElement("div");
    el.className = "mmviz-lens";
    const title = document.createElement("div");
    title.className = "mmviz-lens-title";
    const status = document.createElement("div");
    status.className = "mmviz-lens-status";
    const table = document.createElement("table");
    table.className = "mmviz-lens-table";
    const body = document.createElement("tbody");
    table.append(body);
    el.append(title, status, table);
    this.el = el;
    this.title = title;
    this.body = body;
    this.status = status;
    const onClick = (ev: MouseEvent): void => {
      const row = (ev.target as Element | null)?.closest?.("tr[data-depth]");
      if (!(row instanceof HTMLElement)) return;
      const depth = Number(row.dataset.depth);
      if (depth >= 1) this.store.set({ layer: depth - 1, playing: false });
    };
    body.addEventListener("click", onClick);
    this.disposers.push(() => body.removeEventListener("click", onClick));
  }

  /** The position the panel describes: the hovered patch's, else the focused token, else null. */
  positionOf(s: Readonly<ViewState>, focus: number | null): number | null {
    if (s.hoverPatch !== null) return this.data.imagePositions[s.hoverPatch] ?? null;
    return focus;
  }

  /** Show `message` instead of the table (loading, failed, nothing focused). */
  showStatus(message: string): void {
    this.status.textContent = message;
    this.status.hidden = message === "";
  }

  update(s: Readonly<ViewState>, focus: number | null, lens: LensData | null, message: string): void {
    const pos = lens === null ? null : this.positionOf(s, focus);
    const currentDepth = s.layer === ALL_LAYERS ? -1 : s.layer + 1;
    const key = `${pos}|${lens === null ? "none" : "lens"}|${currentDepth}`;
    this.showStatus(lens === null ? message : pos === null ? "Hover a token or an image patch to read it through the lens." : "");
    if (key === this.key) return;
    this.key = key;
    this.el.dataset.pos = String(pos ?? -1);
    if (lens === null || pos === null || pos >= lens.n) {
      this.title.textContent = "Logit lens";
      this.body.replaceChildren();
      return;
    }
    const { k, depths, n } = lens;
    const target = lens.vocab[lens.target[pos]!] ?? "";
    this.title.textContent =
      `Logit lens at ${quoteToken(this.data.tokens[pos] ?? "")} (position ${pos}): top ${k} per depth; ` +
      `rank of ${quoteToken(target)}`;
    const rows: HTMLTableRowElement[] = [];
    for (let d = 0; d < depths; d++) {
      const tr = document.createElement("tr");
      tr.className = "mmviz-lens-row";
      tr.dataset.depth = String(d);
      if (d === currentDepth) tr.classList.add("mmviz-current");
      const label = document.createElement("th");
      label.scope = "row";
      label.textContent = depthLabel(d);
      tr.append(label);
      for (let j = 0; j < k; j++) {
        const i = (d * n + pos) * k + j;
        const prob = lens.topProbs[i]!;
        const td = document.createElement("td");
        td.className = "mmviz-lens-token";
        td.textContent = displayToken(lens.vocab[lens.top[i]!] ?? "");
        td.dataset.prob = prob.toFixed(4);
        td.title = `p = ${prob.toFixed(3)}`;
        td.style.setProperty("--mmviz-p", `${Math.round(Math.max(0, Math.min(1, prob)) * 100)}%`);
        tr.append(td);
      }
      const rank = lens.targetRanks[d * n + pos]!;
      const rankCell = document.createElement("td");
      rankCell.className = "mmviz-lens-rank";
      rankCell.dataset.rank = String(rank);
      rankCell.textContent = `#${rank + 1}`;
      // Bar length falls with log rank: full at rank 1, empty beyond 10 000.
      const fill = Math.max(0, 1 - Math.log10(rank + 1) / 4);
      rankCell.style.setProperty("--mmviz-p", `${Math.round(fill * 100)}%`);
      tr.append(rankCell);
      rows.push(tr);
    }
    this.body.replaceChildren(...rows);
  }

  dispose(): void {
    for (const d of this.disposers) d();
    this.disposers.length = 0;
  }
}
