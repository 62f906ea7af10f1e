/**
 * The logit-lens panel: for the hovered patch (else the focused token), the top-k tokens the residual stream
 * decodes to at every depth, with their probabilities, and the rank of the token that position is read against
 * (the next token of the sequence: at t − 1 the answer token t; at an image patch the first answer token). The
 * current layer's row is highlighted; clicking a row selects that layer. Token text is set with textContent only.
 *
 * The lens is fetched from the kernel the first time the panel is opened (extras.ts).
 */

import type { WidgetData } from "../data";
import { h, Listeners } from "../dom";
import { MEAN, type LensData } from "../protocol";
import type { Store, ViewState } from "../store";
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
  private readonly listeners = new Listeners();

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
  ) {
    this.title = h("div", { className: "mmviz-lens-title" });
    this.status = h("div", { className: "mmviz-lens-status" });
    this.body = h("tbody");
    this.el = h("div", { className: "mmviz-lens" }, this.title, this.status, h("table", { className: "mmviz-lens-table" }, this.body));
    this.listeners.on(this.body, "click", (ev) => {
      const row = (ev.target as Element | null)?.closest?.("tr[data-depth]");
      if (!(row instanceof HTMLElement)) return;
      const depth = Number(row.dataset.depth);
      if (depth >= 1) this.store.set({ layer: depth - 1, playing: false });
    });
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
    const currentDepth = s.layer === MEAN ? -1 : s.layer + 1;
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
      const tr = h("tr", { className: "mmviz-lens-row", data: { depth: String(d) } });
      if (d === currentDepth) tr.classList.add("mmviz-current");
      const label = h("th", { text: depthLabel(d) });
      label.scope = "row";
      tr.append(label);
      for (let j = 0; j < k; j++) {
        const i = (d * n + pos) * k + j;
        const prob = lens.topProbs[i]!;
        const td = h("td", {
          className: "mmviz-lens-token",
          text: displayToken(lens.vocab[lens.top[i]!] ?? ""),
          data: { prob: prob.toFixed(4) },
          title: `p = ${prob.toFixed(3)}`,
        });
        td.style.setProperty("--mmviz-p", `${Math.round(Math.max(0, Math.min(1, prob)) * 100)}%`);
        tr.append(td);
      }
      const rank = lens.targetRanks[d * n + pos]!;
      const rankCell = h("td", { className: "mmviz-lens-rank", text: `#${rank + 1}`, data: { rank: String(rank) } });
      // Bar length falls with log rank: full at rank 1, empty beyond 10 000.
      const fill = Math.max(0, 1 - Math.log10(rank + 1) / 4);
      rankCell.style.setProperty("--mmviz-p", `${Math.round(fill * 100)}%`);
      tr.append(rankCell);
      rows.push(tr);
    }
    this.body.replaceChildren(...rows);
  }

  dispose(): void {
    this.listeners.dispose();
  }
}
