/**
 * The data traits `Inspector._send_trace` sets itself rather than through a payload function: `tokens`, `images`
 * and `meta`.
 */

import { asBytes, isByteSource } from "../codec";
import { parseFeaturesMeta, type FeaturesMeta } from "./features";
import { fail, lenientFlag, lenientNumber, lenientRecord, lenientStrings, lenientText } from "./validate";

export interface Meta {
  family: string;
  /** Where the image tokens' boxes come from: "adapter" (stated by the family's adapter) or "measured". */
  layout_source: string;
  model_name: string;
  n_layers: number;
  n_heads: number;
  map_label: string;
  map_description: string;
  /** Which lazily fetched extras the kernel can provide. */
  extras: { heads: boolean; lens: boolean; projection: boolean };
  /** What the Features panel can show. */
  features: FeaturesMeta;
  /** `meta.interventions` as sent: the Interventions panel parses it (it needs the number of positions). */
  interventions: unknown;
  /** A video trace: its frames (the images) and temporal groups; null for images. */
  video: VideoMeta | null;
}

/** `meta.video`: the number of original frames and each temporal group's `[first, last]` frame. */
export interface VideoMeta {
  nFrames: number;
  groups: [number, number][];
}

/** `meta.video` (absent or malformed: null, the trace is shown as images). */
export function parseVideoMeta(raw: unknown): VideoMeta | null {
  if (raw === undefined || raw === null) return null;
  const m = lenientRecord(raw);
  const nFrames = lenientNumber(m.n_frames, 0);
  if (!Number.isInteger(nFrames) || nFrames < 1 || !Array.isArray(m.groups)) return null;
  const groups: [number, number][] = [];
  for (const g of m.groups as unknown[]) {
    if (!Array.isArray(g) || g.length !== 2) return null;
    const [first, last] = g as unknown[];
    if (!Number.isInteger(first) || !Number.isInteger(last)) return null;
    const [a, b] = [first as number, last as number];
    if (a < 0 || b < a || b >= nFrames) return null;
    groups.push([a, b]);
  }
  return { nFrames, groups };
}

/** `tokens`: the display string of every sequence position. */
export function parseTokens(raw: unknown): string[] {
  return lenientStrings(raw);
}

/** `images`: the PNG bytes of each input image. */
export function parseImages(raw: unknown): Uint8Array[] {
  return (Array.isArray(raw) ? raw : []).map((b: unknown, i) => {
    if (!isByteSource(b)) fail(`images[${i}]`, "must be PNG bytes");
    return asBytes(b);
  });
}

/** `meta`: names, sizes, the attention map's label and description, and what the kernel can serve. */
export function parseMeta(raw: unknown): Meta {
  const m = lenientRecord(raw);
  const extras = lenientRecord(m.extras);
  return {
    family: lenientText(m.family),
    layout_source: lenientText(m.layout_source) || "adapter",
    model_name: lenientText(m.model_name),
    n_layers: lenientNumber(m.n_layers, 0),
    n_heads: lenientNumber(m.n_heads, 0),
    map_label: lenientText(m.map_label),
    map_description: lenientText(m.map_description),
    // Heads are served unless the kernel says otherwise; the lens and the projection need a language model.
    extras: { heads: extras.heads !== false, lens: lenientFlag(extras.lens), projection: lenientFlag(extras.projection) },
    features: parseFeaturesMeta(m.features),
    interventions: m.interventions,
    video: parseVideoMeta(m.video),
  };
}

/** `busy`: the method the kernel is computing, or null when idle (`""`). */
export function parseBusy(raw: unknown): string | null {
  return lenientText(raw) || null;
}

/** `error`: a kernel-side failure to show, `""` when none. */
export function parseKernelError(raw: unknown): string {
  return lenientText(raw);
}

/** `prefetched` (static pages: `Inspector._prefetched`): the answers a kernel would give, by fetch key. */
export function parsePrefetched(raw: unknown): Readonly<Record<string, unknown>> {
  return lenientRecord(raw);
}
