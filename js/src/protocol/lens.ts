/**
 * Parser of `payloads.lens_payload` → the fetched `lens` payload: the logit lens of every position at every depth
 * (depth 0 = the embeddings, d = after decoder layer d − 1), for the lens panel.
 */

import { count, fail, floatsField, int32Field, lenientStrings, record } from "./validate";

export interface LensData {
  depths: number;
  n: number;
  k: number;
  vocab: readonly string[];
  /** `[D, N, k]` indices into `vocab`, best first. */
  top: Int32Array;
  /** `[D, N, k]` probabilities. */
  topProbs: Float32Array;
  /** `[N]` index into `vocab` of the token each position is read against. */
  target: Int32Array;
  /** `[D, N]` rank (0 = top) of that token at every depth. */
  targetRanks: Int32Array;
  /** `[D, N]` entropy in nats. */
  entropy: Float32Array;
}

/** Parse the lens of `n` sequence positions; throws a clear Error. */
export function parseLens(raw: unknown, n: number): LensData {
  const o = record(raw, "lens");
  const depths = count(o.depths, "lens.depths");
  const positions = count(o.n_positions, "lens.n_positions");
  const k = count(o.k, "lens.k");
  if (positions !== n) fail("lens", `covers ${positions} positions, the tokens are ${n}`);
  const vocab = lenientStrings(o.vocab);
  const top = int32Field(o, "top", "lens", depths * n * k);
  const target = int32Field(o, "target", "lens", n);
  for (const [field, indices] of [["lens.top", top], ["lens.target", target]] as const) {
    for (const i of indices) if (!(i >= 0 && i < vocab.length)) fail(field, `holds ${i}, outside the vocabulary`);
  }
  return {
    depths,
    n,
    k,
    vocab,
    top,
    topProbs: floatsField(o, "top_probs", "lens", depths * n * k),
    target,
    targetRanks: int32Field(o, "target_ranks", "lens", depths * n),
    entropy: floatsField(o, "entropy", "lens", depths * n),
  };
}
