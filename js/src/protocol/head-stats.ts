/**
 * Parser of `payloads.head_stats` → the `head_stats` trait: uint8 `[2, L, H, Q]`, the image share (0) and the
 * attention entropy in nats (1) of every head and query row, for the layer × head overview.
 */

import type { TensorReader } from "../codec";
import { envelope, expectShape, isEnvelope } from "./validate";

/** Per-head statistics of L layers (null: any) and Q query rows; null when not sent (`{}`). */
export function parseHeadStats(raw: unknown, L: number | null, Q: number): TensorReader | null {
  if (!isEnvelope(raw)) return null;
  return expectShape(envelope(raw, "head_stats"), [2, L ?? "L", "H", Q], "head_stats");
}
