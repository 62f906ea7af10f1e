/**
 * Parser of `payloads.method_catalogue` → the `methods` trait: the method switcher's entries, in menu order.
 * Malformed entries are skipped (a broken entry must not hide the others); unknown costs read as "fast".
 */

import { ATTENTION } from "./selection";
import { lenientFlag, lenientText, type Fields } from "./validate";

export type Cost = "instant" | "fast" | "slow";

export interface MethodInfo {
  name: string;
  label: string;
  meaning: string;
  signed: boolean;
  layered: boolean;
  cost: Cost;
  /** The catalogue says `maps` holds it (attention: always). */
  computed: boolean;
  /** The kernel can compute it (false when the trace has no model attached, or the family refuses it). */
  available: boolean;
  /** Why the family refuses it ("" when it does not): shown in the menu instead of "needs the model". */
  unavailable: string;
}

/** Human label of a method name without a label: `grad_cam` → `Grad cam`. */
export function labelOf(name: string): string {
  const s = name.replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** The `methods` trait as a list (a missing trait is an empty catalogue). */
export function parseCatalogue(raw: unknown): MethodInfo[] {
  if (!Array.isArray(raw)) return [];
  const out: MethodInfo[] = [];
  const seen = new Set<string>();
  for (const entry of raw) {
    if (entry === null || typeof entry !== "object") continue;
    const o = entry as Fields;
    const name = lenientText(o.name);
    if (name === "" || seen.has(name)) continue;
    seen.add(name);
    const cost = o.cost === "instant" || o.cost === "fast" || o.cost === "slow" ? o.cost : "fast";
    out.push({
      name,
      label: lenientText(o.label) || labelOf(name),
      meaning: lenientText(o.meaning),
      signed: lenientFlag(o.signed),
      layered: lenientFlag(o.layered),
      cost,
      computed: name === ATTENTION || lenientFlag(o.computed),
      available: lenientFlag(o.available, true),
      unavailable: lenientText(o.unavailable),
    });
  }
  return out;
}
