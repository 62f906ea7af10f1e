/**
 * Parser of `payloads.heads_payload` → a fetched `heads` payload: uint8 `[H, Q, P]`, every head of one layer
 * (`layer` = ℓ) or every head's mean over layers (`layer` = `"mean"`).
 */

import type { TensorReader } from "../codec";
import { envelope, expectShape } from "./validate";

/** Every head's maps of one layer (or of the mean over layers), H heads × Q rows × P columns. */
export function parseHeads(raw: unknown, H: number, Q: number, P: number): TensorReader {
  return expectShape(envelope(raw, "heads payload"), [H, Q, P], "heads payload");
}
