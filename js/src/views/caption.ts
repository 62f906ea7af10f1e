/** One plain-language line saying what is on screen. Built with textContent only. */

import type { WidgetData } from "../data";
import type { FocusState } from "../store";
import { displayToken } from "./token-strip";

export const CAVEAT = "Attention shows where a head reads, not what caused the answer.";

export interface CaptionState {
  state: Readonly<FocusState>;
  focus: number | null;
  /** Attention row of the focused token, −1 if none. */
  row: number;
  /** Max of the focused map (0 when the token sees no image token). */
  vmax: number;
  /** Is (layer, head) an existing map? */
  valid: boolean;
}

export function quoteToken(text: string, maxLen = 32): string {
  const shown = displayToken(text);
  return `‹${shown.length > maxLen ? `${shown.slice(0, maxLen - 1)}…` : shown}›`;
}

export function selectionText(layer: number, head: number): string {
  return `layer ${layer}, ${head === -1 ? "mean of heads" : `head ${head}`}`;
}

export function captionText(data: WidgetData, c: CaptionState): string {
  const { state: s } = c;
  const about = data.meta.map_description || CAVEAT;
  if (!data.hasAttention) {
    return data.n === 0
      ? "Nothing to show yet."
      : "No attention maps were recorded for this input, so only the tokens are shown.";
  }
  if (!c.valid) return `There is no attention map for ${selectionText(s.layer, s.head)}.`;
  const sel = selectionText(s.layer, s.head);
  const pinNote = s.pinnedToken !== null && c.focus === s.pinnedToken ? " (pinned: click it again or press Esc to unpin)" : "";
  const patch = s.hoverPatch;
  const patchNote =
    patch !== null ? ` Tokens are tinted by their attention to ${patchText(data, patch)}.` : "";
  if (c.focus !== null) {
    const tok = quoteToken(data.tokens[c.focus] ?? "");
    if (c.row < 0) {
      return (
        `${tok} at position ${c.focus} has no attention row: maps were recorded for ${data.Q} ` +
        `query position${data.Q === 1 ? "" : "s"} only.${pinNote}${patchNote}`
      );
    }
    if (!(c.vmax > 0)) {
      return (
        `${tok} (query row at position ${c.focus}) cannot see the image at ${sel}: every value is 0, ` +
        `as for a token before the image in a causal model.${pinNote}${patchNote}`
      );
    }
    return `Attention of ${tok} (query row at position ${c.focus}) over image tokens, ${sel}${pinNote}.${patchNote} ${about}`;
  }
  if (patch !== null) {
    return `Attention to ${patchText(data, patch)} from every token with an attention row, ${sel}; tokens are tinted by value. ${about}`;
  }
  return (
    "Hover over a token to see where it looks in the image (click to pin it, Esc to unpin); " +
    `hover over the image to see which tokens look at a patch. ${about}`
  );
}

function patchText(data: WidgetData, p: number): string {
  const g = data.grid;
  const where = g.length === 2 * data.P ? ` (grid row ${g[2 * p]}, column ${g[2 * p + 1]})` : "";
  const img = data.nImages > 1 ? ` of image ${(data.imageIndex[p] ?? 0) + 1}` : "";
  return `image patch ${p}${where}${img}`;
}

export class Caption {
  readonly el: HTMLParagraphElement;
  constructor(private readonly data: WidgetData) {
    this.el = document.createElement("p");
    this.el.className = "mmviz-caption";
    this.el.setAttribute("aria-live", "polite");
  }
  update(c: CaptionState): void {
    const text = captionText(this.data, c);
    if (this.el.textContent !== text) this.el.textContent = text;
  }
}
