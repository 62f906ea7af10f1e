/** One plain-language line saying what is on screen. Built with textContent only. */

import type { WidgetData } from "../data";
import { h } from "../dom";
import { costHint, explainsAnswerTokens, type MethodMap, type SliceChoice } from "../methods";
import { MEAN, type Head, type Layer, type MethodInfo } from "../protocol";
import type { ViewState } from "../store";
import { displayToken, probabilityText } from "./token-strip";

export const CAVEAT = "Attention shows where a head reads, not what caused the answer.";

export interface CaptionState {
  state: Readonly<ViewState>;
  focus: number | null;
  /** Attention row of the focused token, −1 if none. */
  row: number;
  /** Max of the focused map (0 when the token sees no image token). */
  vmax: number;
  /** Is (layer, head) an existing map? */
  valid: boolean;
  /** The layer and head drawn when they differ from the selection (an overview cell is previewed). */
  preview?: { layer: Layer; head: Head } | null;
  /** Why the map is not drawn yet (per-head maps on their way), or null. */
  waiting?: string | null;
  /** The focused word's positions, when pieces are merged into words. */
  word?: readonly number[];
}

export function quoteToken(text: string, maxLen = 32): string {
  const shown = displayToken(text);
  return `‹${shown.length > maxLen ? `${shown.slice(0, maxLen - 1)}…` : shown}›`;
}

export function selectionText(layer: Layer, head: Head): string {
  const l = layer === MEAN ? "mean over all layers" : `layer ${layer}`;
  return `${l}, ${head === MEAN ? "mean of heads" : `head ${head}`}`;
}

/** ‹token› or ‹word› (n pieces), with its probability when it is an answer token. */
function focusText(data: WidgetData, focus: number, word: readonly number[] | undefined): string {
  const positions = word !== undefined && word.length > 1 ? word : [focus];
  const text = quoteToken(positions.map((i) => data.tokens[i] ?? "").join(""));
  const pieces = positions.length > 1 ? ` (${positions.length} pieces, their maps averaged)` : "";
  const prob = probabilityText(positions.reduce((sum, i) => sum + (data.logprobs[i] ?? Number.NaN), 0));
  return `${text}${pieces}${prob ? `, ${prob}` : ""}`;
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
  const shown = c.preview ?? { layer: s.layer, head: s.head };
  const sel = selectionText(shown.layer, shown.head) + (c.preview ? " (previewed from the overview)" : "");
  const pinNote = s.pinnedToken !== null && c.focus === s.pinnedToken ? " (pinned: click it again or press Esc to unpin)" : "";
  const patch = s.hoverPatch;
  const patchNote =
    patch !== null ? ` Tokens are tinted by their attention to ${patchText(data, patch)}.` : "";
  if (c.focus !== null) {
    const tok = focusText(data, c.focus, c.word);
    if (c.row < 0) {
      return (
        `${tok} at position ${c.focus} has no attention row: maps were recorded for ${data.Q} ` +
        `query position${data.Q === 1 ? "" : "s"} only.${pinNote}${patchNote}`
      );
    }
    if (c.waiting) return `${tok} at ${sel}: ${c.waiting}${pinNote}`;
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
  const image = data.imageIndex[p] ?? 0;
  const views = data.viewsOf(image);
  const view = views.length > 1 ? views.find((v) => v.code === data.viewCodes[p]) : undefined;
  const img = data.nImages > 1 ? ` of image ${image + 1}` : view ? " of the image" : "";
  return `image patch ${p}${where}${view ? ` in the ${view.name} view` : ""}${img}`;
}

/** What the caption needs to describe a map method other than attention (or attention shipped as a map). */
export interface MethodCaptionState {
  state: Readonly<ViewState>;
  focus: number | null;
  info: Pick<MethodInfo, "name" | "label" | "meaning" | "cost">;
  /** The computed map, or null when `maps` does not hold it. */
  map: MethodMap | null;
  /** Row of the focused token, −1 if none. */
  row: number;
  /** The slice shown (layered maps), or null. */
  slice: SliceChoice | null;
  /** Colour range of the shown map (0: nothing to draw). */
  range: number;
  /** The kernel is computing it (for this view or from Python). */
  pending: boolean;
  /** Why the last request for it failed, or null. */
  failed: string | null;
  /** Selecting it can start a computation (a kernel and a model are there). */
  canCompute: boolean;
  /** The page is a static export (no kernel at all). */
  staticPage: boolean;
}

function sliceText(c: MethodCaptionState): string {
  const sl = c.slice;
  if (sl === null || sl.layer === null) return "";
  if (sl.exact) return `, layer ${sl.layer}`;
  return `, layer ${sl.layer} (layer ${c.state.layer} has no ${c.info.label} map; showing the nearest layer)`;
}

export function methodCaptionText(data: WidgetData, c: MethodCaptionState): string {
  const { state: s, info, map } = c;
  const label = info.label;
  const about = info.meaning ? ` ${info.meaning}` : "";
  if (map === null) {
    if (c.pending) {
      return `Computing ${label} in the kernel (${costHint(info.cost)})… the map appears here when it is done.${about}`;
    }
    if (c.failed !== null) return `${label} could not be computed: ${c.failed}.${about}`;
    if (!c.canCompute) {
      return c.staticPage
        ? `${label} was not computed before this page was exported, and the page has no kernel to compute it ` +
            `(pass methods=["${info.name}"] to mmviz.trace or mmviz.inspect).${about}`
        : `${label} was not computed, and it cannot be: the trace has no model attached.${about}`;
    }
    return `${label} is not computed yet: run inspector.compute("${info.name}") in Python.${about}`;
  }
  const sl = sliceText(c);
  const pinNote =
    s.pinnedToken !== null && c.focus === s.pinnedToken ? " (pinned: click it again or press Esc to unpin)" : "";
  const patch = s.hoverPatch;
  const patchNote = patch !== null ? ` Highlighted tokens are tinted by their ${label} value at ${patchText(data, patch)}.` : "";
  const signedNote = map.signed ? " Orange is positive, purple negative, white 0." : "";
  const which = explainsAnswerTokens(map, data.answerStart) ? "answer tokens" : "the highlighted tokens";
  if (c.focus !== null) {
    const tok = quoteToken(data.tokens[c.focus] ?? "");
    if (c.row < 0) {
      return (
        `${label} explains ${which}; hover one of the highlighted tokens ` +
        `(${tok} at position ${c.focus} has no ${label} map).${pinNote}${patchNote}`
      );
    }
    if (!(c.range > 0)) {
      return `${label} of ${tok} (position ${c.focus}) is 0 on every image token${sl}.${pinNote}${patchNote}${about}`;
    }
    const where = map.rows === "queries" ? `query row at position ${c.focus}` : `position ${c.focus}`;
    return `${label} of ${tok} (${where}) over image tokens${sl}${pinNote}.${patchNote}${signedNote}${about}`;
  }
  if (patch !== null) {
    return `${label} at ${patchText(data, patch)} for every highlighted token${sl}; tokens are tinted by value.${signedNote}${about}`;
  }
  return (
    `${label}${sl}: hover one of the highlighted tokens (${which === "answer tokens" ? "the answer" : "those with a map"}) ` +
    `to see its map (click to pin, Esc to unpin).${about}`
  );
}

export class Caption {
  readonly el: HTMLParagraphElement;
  constructor(private readonly data: WidgetData) {
    this.el = h("p", { className: "mmviz-caption", attrs: { "aria-live": "polite" } });
  }
  update(c: CaptionState | { method: MethodCaptionState }): void {
    const text = "method" in c ? methodCaptionText(this.data, c.method) : captionText(this.data, c);
    if (this.el.textContent !== text) this.el.textContent = text;
  }
}
