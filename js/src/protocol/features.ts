/**
 * Parsers of `mmviz/widget/features.py` → the Features panel's payloads: one layer's top-k units at every position
 * (`features_payload`: fetched `neurons` of a layer, or `sae`), one unit's exact activation and card
 * (`unit_payload`: fetched `unit`), and the answer's change when a latent is clamped (`clamp_payload`: the reply
 * to a `clamp` request). Labels and card tokens come from files and tokenizers: the views set them as text only.
 */

import {
  count,
  envelope,
  expectLength,
  fail,
  floatsField,
  int32Field,
  lenientNumber,
  lenientRecord,
  lenientStrings,
  lenientText,
  record,
} from "./validate";

export type FeatureKind = "neurons" | "sae";

/** `meta.features`: what the panel can show (neurons need the model; the SAE is the one given to the Inspector). */
export interface FeaturesMeta {
  neurons: boolean;
  sae: { layer: number; width: number } | null;
  /** Units kept per position. */
  k: number;
}

/** One layer's top-k units at every position. */
export interface FeaturesData {
  kind: FeatureKind;
  /** The decoder layer (an SAE on the embeddings reads "after layer −1"). */
  layer: number;
  /** How many units there are. */
  width: number;
  k: number;
  n: number;
  /** `[N, k]` unit indices, most active first. */
  indices: Int32Array;
  /** `[N, k]` activations. */
  values: Float32Array;
  labels: ReadonlyMap<number, string>;
  /** SAE only: `[N]` ‖x − x̂‖ / ‖x‖ at every position; null for neurons. */
  reconstructionError: Float32Array | null;
}

export interface UnitCard {
  label: string;
  topTokens: readonly string[];
  topLogits: readonly number[];
  peakPosition: number;
  peakActivation: number;
  activePositions: number;
}

/** One unit's exact activation at every position, and its card. */
export interface UnitData {
  kind: FeatureKind;
  layer: number;
  unit: number;
  activation: Float32Array;
  card: UnitCard;
}

/** The reply to a clamp: Δ log p (and log p before) of every answer token. */
export interface ClampData {
  latent: number;
  value: number;
  positions: Int32Array;
  delta: Float32Array;
  clean: Float32Array;
  description: string;
}

function kindOf(x: unknown, field: string): FeatureKind {
  if (x !== "neurons" && x !== "sae") fail(field, `must be "neurons" or "sae", not ${JSON.stringify(x)}`);
  return x;
}

function integer(x: unknown, field: string): number {
  if (typeof x !== "number" || !Number.isInteger(x)) fail(field, "must be an integer");
  return x;
}

/** `meta.features` (lenient: an older kernel sends none, and the panel is then not shown). */
export function parseFeaturesMeta(raw: unknown): FeaturesMeta {
  const o = lenientRecord(raw);
  const sae = o.sae === null || o.sae === undefined ? null : lenientRecord(o.sae);
  return {
    neurons: o.neurons === true,
    sae: sae === null ? null : { layer: lenientNumber(sae.layer, 0), width: lenientNumber(sae.width, 0) },
    k: lenientNumber(o.k, 0),
  };
}

/** Parse a fetched `neurons` / `sae` payload over `n` positions; throws a clear Error naming the broken field. */
export function parseFeatures(raw: unknown, n: number): FeaturesData {
  const o = record(raw, "features");
  const kind = kindOf(o.kind, "features.kind");
  const layer = integer(o.layer, "features.layer");
  const width = count(o.width, "features.width");
  const k = count(o.k, "features.k");
  const positions = count(o.n_positions, "features.n_positions");
  if (positions !== n) fail("features", `covers ${positions} positions, the tokens are ${n}`);
  const indices = int32Field(o, "indices", "features", n * k);
  for (const i of indices) if (!(i >= 0 && i < width)) fail("features.indices", `holds ${i}, outside the units 0…${width - 1}`);
  const labels = new Map<number, string>();
  for (const [key, label] of Object.entries(lenientRecord(o.labels))) {
    const unit = Number(key);
    if (Number.isInteger(unit) && unit >= 0 && unit < width) labels.set(unit, lenientText(label));
  }
  const error = o.reconstruction_error;
  if (kind === "sae" && (error === null || error === undefined)) fail("features.reconstruction_error", "is due for an SAE");
  return {
    kind,
    layer,
    width,
    k,
    n,
    indices,
    values: floatsField(o, "values", "features", n * k),
    labels,
    reconstructionError: error === null || error === undefined ? null : floatsField(o, "reconstruction_error", "features", n),
  };
}

/** Parse a fetched `unit` payload over `n` positions. */
export function parseUnit(raw: unknown, n: number): UnitData {
  const o = record(raw, "unit");
  const c = record(o.card, "unit.card");
  const topLogits = Array.isArray(c.top_logits) ? c.top_logits.map((v: unknown) => lenientNumber(v, Number.NaN)) : [];
  return {
    kind: kindOf(o.kind, "unit.kind"),
    layer: integer(o.layer, "unit.layer"),
    unit: count(o.unit, "unit.unit"),
    activation: floatsField(o, "activation", "unit", n),
    card: {
      label: lenientText(c.label),
      topTokens: lenientStrings(c.top_tokens),
      topLogits,
      peakPosition: lenientNumber(c.peak_position, -1),
      peakActivation: lenientNumber(c.peak_activation, Number.NaN),
      activePositions: lenientNumber(c.active_positions, 0),
    },
  };
}

/** Parse the payload of a `clamped` reply. */
export function parseClamp(raw: unknown, n: number): ClampData {
  const o = record(raw, "clamp");
  const positions = int32Field(o, "positions", "clamp");
  for (const p of positions) if (!(p >= 0 && p < n)) fail("clamp.positions", `holds ${p}, outside the positions 0…${n - 1}`);
  const T = positions.length;
  const delta = envelope(o.delta, "clamp.delta");
  expectLength(delta.size, T, "clamp.delta");
  return {
    latent: count(o.latent, "clamp.latent"),
    value: lenientNumber(o.value, 0),
    positions,
    delta: floatsField(o, "delta", "clamp", T),
    clean: floatsField(o, "clean", "clamp", T),
    description: lenientText(o.description),
  };
}
