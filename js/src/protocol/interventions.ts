/**
 * Parsers of `mmviz/widget/interventions.py` → the Interventions panel: `meta.interventions` (what can run, the
 * kept runs and curve of the trace), a run (`run_payload`: the reply to an `intervene` request and each kept
 * history entry) and a knockout-by-window curve (`curve_payload`: the reply to a `curve` request). All plain JSON.
 * Labels come from the kernel but are only ever set as text.
 */

import { fail, lenientRecord, lenientText, record, type Fields } from "./validate";

export type Fill = "mean" | "zero" | "blur" | "paint" | "other";
export type Preset = "answer" | "last_prompt";
/** Every fill a kept run may name; `meta.interventions.fills` says which this kernel offers ("other" needs an image). */
export const FILLS: readonly Fill[] = ["mean", "zero", "blur", "paint", "other"];
/** The fills an older kernel, which sends no list, offers. */
const OLDER_FILLS: readonly Fill[] = ["mean", "zero", "blur"];
export const PRESETS: readonly Preset[] = ["answer", "last_prompt"];

/** An intervention as `to_dict()` writes it (the browser only ever sends image sources and preset targets). */
export type Intervention =
  | { kind: "ablate"; positions: number[]; fill: Fill }
  | { kind: "knockout"; layers: number[]; sources: "image"; to: Preset };

/** One run: the intervention and, per answer token, its position, log p before and Δ log p. */
export interface RunData {
  index: number;
  intervention: Intervention;
  label: string;
  description: string;
  positions: number[];
  clean: number[];
  delta: number[];
}

/** Δ log p of the first answer token for a window of `width` layers starting at each of `starts`. */
export interface CurveData {
  width: number;
  to: Preset;
  starts: number[];
  delta: number[];
  clean: number;
}

/** Image reliance per answer token against a baseline image (`reliance_payload`). */
export interface RelianceData {
  baseline: string;
  positions: number[];
  /** KL(p_real ‖ p_baseline) of the next-token distribution, nats (≥ 0). */
  kl: number[];
  /** log p_real − log p_baseline of the token. */
  pcxmi: number[];
}

/** `meta.interventions.reliance`: whether the kernel can measure it, its baselines, and what the trace keeps. */
export interface RelianceMeta {
  canMeasure: boolean;
  baselines: string[];
  defaultBaseline: string;
  kept: RelianceData[];
}

/** A greedy answer decoded with an intervention applied (`generation_payload`). */
export interface GenerationData {
  label: string;
  text: string;
  tokens: string[];
  original: string;
  stopped: string;
}

export interface InterventionsMeta {
  canRun: boolean;
  /** The fills this kernel offers, in its order. */
  fills: Fill[];
  defaultFill: Fill;
  history: RunData[];
  curve: CurveData | null;
  /** The longest greedy answer a `generate` request may ask for (0: an older kernel, no generation). */
  maxNewTokens: number;
  reliance: RelianceMeta;
}

function numbers(x: unknown, field: string, whole: boolean): number[] {
  if (!Array.isArray(x)) fail(field, "must be a list of numbers");
  return x.map((v: unknown, i) => {
    if (typeof v !== "number" || !Number.isFinite(v) || (whole && !Number.isInteger(v))) fail(`${field}[${i}]`, "must be a finite number");
    return v;
  });
}

function fillOf(x: unknown, field: string): Fill {
  if (!FILLS.includes(x as Fill)) fail(field, `must be one of ${FILLS.join(", ")}`);
  return x as Fill;
}

function presetOf(x: unknown, field: string): Preset {
  if (!PRESETS.includes(x as Preset)) fail(field, `must be one of ${PRESETS.join(", ")}`);
  return x as Preset;
}

function interventionOf(x: unknown, field: string): Intervention {
  const o = record(x, field);
  if (o.kind === "ablate") return { kind: "ablate", positions: numbers(o.positions, `${field}.positions`, true), fill: fillOf(o.fill, `${field}.fill`) };
  if (o.kind === "knockout") {
    if (o.sources !== "image") fail(`${field}.sources`, 'must be "image"');
    return { kind: "knockout", layers: numbers(o.layers, `${field}.layers`, true), sources: "image", to: presetOf(o.to, `${field}.to`) };
  }
  return fail(`${field}.kind`, 'must be "ablate" or "knockout"');
}

/** Parse a run (an `intervened` reply's payload, or a kept history entry) over `n` positions. */
export function parseRun(raw: unknown, n: number): RunData {
  const o: Fields = record(raw, "run");
  const positions = numbers(o.positions, "run.positions", true);
  for (const p of positions) if (!(p >= 0 && p < n)) fail("run.positions", `holds ${p}, outside the positions 0…${n - 1}`);
  const clean = numbers(o.clean, "run.clean", false);
  const delta = numbers(o.delta, "run.delta", false);
  if (clean.length !== positions.length || delta.length !== positions.length) fail("run", "positions, clean and delta differ in length");
  const index = o.index;
  if (typeof index !== "number" || !Number.isInteger(index) || index < 0) fail("run.index", "must be a whole number ≥ 0");
  return { index, intervention: interventionOf(o.intervention, "run.intervention"), label: lenientText(o.label), description: lenientText(o.description), positions, clean, delta };
}

/** Parse a `curved` reply's payload (or the kept curve). */
export function parseCurve(raw: unknown): CurveData {
  const o = record(raw, "curve");
  const starts = numbers(o.starts, "curve.starts", true);
  const delta = numbers(o.delta, "curve.delta", false);
  if (starts.length !== delta.length) fail("curve", "starts and delta differ in length");
  const width = o.width;
  if (typeof width !== "number" || !Number.isInteger(width) || width < 1) fail("curve.width", "must be a whole number ≥ 1");
  const clean = typeof o.clean === "number" && Number.isFinite(o.clean) ? o.clean : 0;
  return { width, to: presetOf(o.to, "curve.to"), starts, delta, clean };
}

/** Parse a `relied` reply's payload (or a kept measurement) over `n` positions. */
export function parseReliance(raw: unknown, n: number): RelianceData {
  const o = record(raw, "reliance");
  const positions = numbers(o.positions, "reliance.positions", true);
  for (const p of positions) if (!(p >= 0 && p < n)) fail("reliance.positions", `holds ${p}, outside the positions 0…${n - 1}`);
  const kl = numbers(o.kl, "reliance.kl", false);
  const pcxmi = numbers(o.pcxmi, "reliance.pcxmi", false);
  if (kl.length !== positions.length || pcxmi.length !== positions.length) fail("reliance", "positions, kl and pcxmi differ in length");
  if (kl.some((v) => v < 0)) fail("reliance.kl", "must be ≥ 0");
  return { baseline: lenientText(o.baseline) || "baseline", positions, kl, pcxmi };
}

/** Parse a `generated` reply's payload. */
export function parseGeneration(raw: unknown): GenerationData {
  const o = record(raw, "generation");
  if (!Array.isArray(o.tokens)) fail("generation.tokens", "must be a list of strings");
  return {
    label: lenientText(o.label),
    text: lenientText(o.text),
    tokens: (o.tokens as unknown[]).map((t) => lenientText(t)),
    original: lenientText(o.original),
    stopped: o.stopped === "eos" ? "eos" : "length",
  };
}

function relianceMetaOf(raw: unknown, n: number): RelianceMeta {
  const o = lenientRecord(raw);
  const baselines = Array.isArray(o.baselines) ? o.baselines.filter((b): b is string => typeof b === "string" && b.length <= 40) : [];
  const kept: RelianceData[] = [];
  for (const entry of Array.isArray(o.kept) ? o.kept : []) {
    try {
      kept.push(parseReliance(entry, n));
    } catch {
      // a damaged measurement is dropped; the rest still shades
    }
  }
  const fallback = baselines[0] ?? "blank";
  const defaultBaseline = typeof o.default_baseline === "string" && baselines.includes(o.default_baseline) ? o.default_baseline : fallback;
  return { canMeasure: o.can_measure === true && baselines.length > 0, baselines, defaultBaseline, kept };
}

/** `meta.interventions` (lenient: an older kernel sends none; a damaged history entry is dropped, not fatal). */
export function parseInterventionsMeta(raw: unknown, n: number): InterventionsMeta {
  const o = lenientRecord(raw);
  const history: RunData[] = [];
  for (const entry of Array.isArray(o.history) ? o.history : []) {
    try {
      history.push(parseRun(entry, n));
    } catch {
      // skipped: the rest of the history still shows
    }
  }
  let curve: CurveData | null = null;
  try {
    curve = o.curve === null || o.curve === undefined ? null : parseCurve(o.curve);
  } catch {
    curve = null;
  }
  const offered = Array.isArray(o.fills) ? FILLS.filter((f) => (o.fills as unknown[]).includes(f)) : [...OLDER_FILLS];
  const fills = offered.length > 0 ? offered : [...OLDER_FILLS];
  const defaultFill = fills.includes(o.default_fill as Fill) ? (o.default_fill as Fill) : fills.includes("zero") ? "zero" : fills[0]!;
  const maxNewTokens = typeof o.max_new_tokens === "number" && Number.isInteger(o.max_new_tokens) && o.max_new_tokens > 0 ? Math.min(o.max_new_tokens, 1024) : 0;
  return { canRun: o.can_run === true, fills, defaultFill, history, curve, maxNewTokens, reliance: relianceMetaOf(o.reliance, n) };
}
