/**
 * The synced selection traits `layer`, `head`, `pinned` and `method` (set by `Inspector`, changed by both sides),
 * and the one vocabulary for layer and head choices used on the wire, in the store and in every view:
 * an index, or {@link MEAN} for the mean over layers or over heads (as `mmviz.selection` in Python).
 */

import { lenientText } from "./validate";

/** The mean over layers (as a `layer`) or over heads (as a `head`). */
export const MEAN = "mean";
export type Mean = typeof MEAN;

/** A decoder layer `0 … L−1`, or the mean over every layer. */
export type Layer = number | Mean;
/** An attention head `0 … H−1`, or the mean over heads. */
export type Head = number | Mean;

/** The map method the Inspector starts with (the attention traits). */
export const ATTENTION = "attention";

/** `layer` / `head` as Python sent them: `"mean"` or an index in `0 … count−1`; anything else is null. */
export function parseChoice(x: unknown, count: number): Layer | null {
  if (x === MEAN) return MEAN;
  return typeof x === "number" && Number.isInteger(x) && x >= 0 && x < count ? x : null;
}

export interface Selection {
  layer: Layer;
  head: Head;
  /** The pinned position, or null (`pinned` is −1 on the wire for none). */
  pinnedToken: number | null;
}

/**
 * The synced selection as Python set it, checked against the data (L layers, H heads, n positions). A value the
 * data cannot show falls back: a layer outside 0…L−1 to the nearest layer, a head outside 0…H−1 to the mean.
 */
export function parseSelection(get: (key: "layer" | "head" | "pinned") => unknown, L: number, H: number, n: number): Selection {
  const rawLayer = get("layer");
  const layer =
    parseChoice(rawLayer, L) ??
    (typeof rawLayer === "number" && Number.isFinite(rawLayer) ? Math.max(0, Math.min(L - 1, Math.trunc(rawLayer))) : 0);
  const head = parseChoice(get("head"), H) ?? MEAN;
  const pinned = get("pinned");
  const pinnedToken = typeof pinned === "number" && Number.isInteger(pinned) && pinned >= 0 && pinned < n ? pinned : null;
  return { layer, head, pinnedToken };
}

/** The `method` trait: a method name, `"attention"` when unset. */
export function parseMethod(x: unknown): string {
  return lenientText(x) || ATTENTION;
}

/** The synced traits of a selection, as Python receives them (`pinned` −1 = none). */
export interface SelectionTraits {
  layer: Layer;
  head: Head;
  pinned: number;
  method?: string;
}

export function selectionTraits(s: Selection & { readonly method?: string }): SelectionTraits {
  const traits: SelectionTraits = { layer: s.layer, head: s.head, pinned: s.pinnedToken ?? -1 };
  if (typeof s.method === "string") traits.method = s.method;
  return traits;
}
