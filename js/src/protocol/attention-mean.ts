/**
 * Parser of `payloads.attention_mean` → the `attention_mean` trait: uint8 `[L, Q, P]`, the head mean of every
 * layer and query row (the map drawn at first render, and the start of the mean over layers).
 */

import type { TensorReader } from "../codec";
import { envelope, expectShape, isEnvelope } from "./validate";

/** The head mean over Q query rows and P image columns; null when no attention was recorded (`{}`). */
export function parseAttentionMean(raw: unknown, Q: number, P: number): TensorReader | null {
  if (!isEnvelope(raw)) return null;
  return expectShape(envelope(raw, "attention_mean"), ["L", Q, P], "attention_mean");
}
