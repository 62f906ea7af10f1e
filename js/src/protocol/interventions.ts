/**
 * Parsers of `mmviz/widget/interventions.py` → the Interventions panel: `meta.interventions` (what can run, the
 * kept runs and curve of the trace), a run (`run_payload`: the reply to an `intervene` request and each kept
 * history entry) and a knockout-by-window curve (`curve_payload`: the reply to a `curve` request). All plain JSON.
 * Labels come from the kernel but are only ever set as text.
 */

import { fail, lenientRecord, lenientText, record, type Fields } from "./validate";

export type Fill = "mean" | "zero" | "blur";
export type Preset = "answer" | "last_prompt";
export const FILLS: readonly Fill[] = ["mean", "zero", "blur"];
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

export interface InterventionsMeta {
  canRun: boolean;
  defaultFill: Fill;
  history: RunData[];
  curve: CurveData | null;
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
  return { canRun: o.can_run === true, defaultFill: FILLS.includes(o.default_fill as Fill) ? (o.default_fill as Fill) : "zero", history, curve };
}
