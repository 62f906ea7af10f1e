/**
 * The map methods: the `methods` catalogue (what the switcher offers) and the `maps` trait (what was computed).
 *
 * `maps[name]` = `{label, meaning, signed, values, positions, layers}` with `values` a uint8 envelope `[R, P]`
 * or `[S, R, P]` (one slice per decoder layer in `layers`). Values stay in wire form; a row or a column is
 * decoded on demand, like attention.
 */

import { isByteSource, openEnvelope, readInt32, type TensorReader } from "./codec";

export const ATTENTION = "attention";

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
  /** The kernel can compute it (false when the trace has no model attached). */
  available: boolean;
}

/** What a slice lookup found for a layer. */
export interface SliceChoice {
  /** Index of the slice in `values`. */
  slice: number;
  /** Decoder layer of that slice (null for maps that do not depend on the layer). */
  layer: number | null;
  /** False when the requested layer has no slice and the nearest one is used instead. */
  exact: boolean;
}

export class MethodMap {
  /** Sequence position → row, for the positions that have one. */
  private readonly rowByPos = new Map<number, number>();
  /** The slice of each decoder layer (for layered maps). */
  readonly S: number;
  readonly R: number;
  readonly P: number;

  constructor(
    readonly name: string,
    readonly label: string,
    readonly meaning: string,
    readonly signed: boolean,
    readonly positions: Int32Array,
    readonly layers: readonly number[] | null,
    private readonly values: TensorReader,
    /** `"targets"`: row r explains the token at positions[r]; `"queries"`: row r is the query at positions[r]. */
    readonly rows: "targets" | "queries" = "targets",
  ) {
    const s = values.shape;
    this.S = s.length === 3 ? s[0]! : 1;
    this.R = s[s.length - 2] ?? 0;
    this.P = s[s.length - 1] ?? 0;
    positions.forEach((pos, r) => {
      if (!this.rowByPos.has(pos)) this.rowByPos.set(pos, r);
    });
  }

  /** Row of sequence position `pos`, or −1 when the map does not explain that token. */
  rowOf(pos: number): number {
    return this.rowByPos.get(pos) ?? -1;
  }

  hasRow(pos: number): boolean {
    return this.rowByPos.has(pos);
  }

  /** The slice for decoder `layer`: exact when there is one, else the nearest (ties: the later layer). */
  sliceFor(layer: number): SliceChoice {
    const layers = this.layers;
    if (layers === null || layers.length === 0) return { slice: 0, layer: null, exact: true };
    let best = 0;
    let bestD = Infinity;
    layers.forEach((l, i) => {
      const d = Math.abs(l - layer);
      if (d < bestD || (d === bestD && l > layers[best]!)) {
        best = i;
        bestD = d;
      }
    });
    return { slice: best, layer: layers[best]!, exact: bestD === 0 };
  }

  /** The P values of row `r` in slice `slice`. */
  row(slice: number, r: number, out?: Float32Array): Float32Array {
    this.check(slice, r, 0);
    return this.values.read((slice * this.R + r) * this.P, this.P, 1, out);
  }

  /** The R values of column `p` in slice `slice` (row order, i.e. `positions` order). */
  column(slice: number, p: number, out?: Float32Array): Float32Array {
    this.check(slice, 0, p);
    return this.values.read(slice * this.R * this.P + p, this.R, this.P, out);
  }

  /** Row `r` averaged over every slice (a layered map at "all layers"). */
  meanRow(r: number): Float32Array {
    return this.meanOfSlices((s, out) => this.row(s, r, out), this.P);
  }

  /** Column `p` averaged over every slice. */
  meanColumn(p: number): Float32Array {
    return this.meanOfSlices((s, out) => this.column(s, p, out), this.R);
  }

  private meanOfSlices(read: (slice: number, out: Float32Array) => Float32Array, size: number): Float32Array {
    const res = new Float32Array(size);
    const tmp = new Float32Array(size);
    for (let s = 0; s < this.S; s++) {
      read(s, tmp);
      for (let i = 0; i < size; i++) res[i] = res[i]! + tmp[i]! / this.S;
    }
    return res;
  }

  private check(slice: number, r: number, p: number): void {
    if (!(slice >= 0 && slice < this.S && r >= 0 && r < Math.max(1, this.R) && p >= 0 && p < Math.max(1, this.P))) {
      throw new RangeError(`mmviz: ${this.name}: no value at slice ${slice}, row ${r}, column ${p}`);
    }
  }
}

function bool(x: unknown, fallback = false): boolean {
  return typeof x === "boolean" ? x : fallback;
}

function text(x: unknown, fallback = ""): string {
  return typeof x === "string" ? x : fallback;
}

/** Human label of a method name without a catalogue entry: `grad_cam` → `Grad cam`. */
export function labelOf(name: string): string {
  const s = name.replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** The `methods` trait as a list (malformed entries are skipped; unknown costs become "fast"). */
export function parseCatalogue(raw: unknown): MethodInfo[] {
  if (!Array.isArray(raw)) return [];
  const out: MethodInfo[] = [];
  const seen = new Set<string>();
  for (const e of raw) {
    if (e === null || typeof e !== "object") continue;
    const o = e as Record<string, unknown>;
    const name = text(o.name);
    if (name === "" || seen.has(name)) continue;
    seen.add(name);
    const cost = o.cost === "instant" || o.cost === "fast" || o.cost === "slow" ? o.cost : "fast";
    out.push({
      name,
      label: text(o.label) || labelOf(name),
      meaning: text(o.meaning),
      signed: bool(o.signed),
      layered: bool(o.layered),
      cost,
      computed: name === ATTENTION || bool(o.computed),
      available: bool(o.available, true),
    });
  }
  return out;
}

export interface ParsedMaps {
  maps: Map<string, MethodMap>;
  /** One message per entry that breaks the protocol (that entry is left out). */
  errors: string[];
}

/** Parse one `maps` entry against P image columns and n sequence positions; throws a clear Error. */
export function parseMap(name: string, raw: unknown, P: number, n: number): MethodMap {
  if (raw === null || typeof raw !== "object") throw new Error(`mmviz: maps.${name} must be a dict`);
  const o = raw as Record<string, unknown>;
  let values: TensorReader;
  try {
    values = openEnvelope(o.values);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(msg.replace(/^mmviz: /, `mmviz: maps.${name}.values: `));
  }
  if (!isByteSource(o.positions)) throw new Error(`mmviz: maps.${name}.positions must be bytes (int32)`);
  const positions = readInt32(o.positions);
  let layers: number[] | null = null;
  if (Array.isArray(o.layers)) {
    layers = o.layers.map((l) => (typeof l === "number" && Number.isInteger(l) ? l : Number.NaN));
    if (layers.some((l) => Number.isNaN(l))) throw new Error(`mmviz: maps.${name}.layers must be integers`);
  } else if (o.layers !== null && o.layers !== undefined) {
    throw new Error(`mmviz: maps.${name}.layers must be a list or null`);
  }
  const s = values.shape;
  const R = positions.length;
  const want = layers === null ? `[${R}, ${P}]` : `[${layers.length}, ${R}, ${P}]`;
  const ok =
    layers === null
      ? s.length === 2 && s[0] === R && s[1] === P
      : s.length === 3 && s[0] === layers.length && s[1] === R && s[2] === P;
  if (!ok) throw new Error(`mmviz: maps.${name}.values has shape [${s.join(", ")}], expected ${want}`);
  for (const pos of positions) {
    if (pos < 0 || pos >= n) throw new Error(`mmviz: maps.${name}.positions holds ${pos}, outside 0…${n - 1}`);
  }
  const rows = o.rows === "queries" ? "queries" : "targets";
  return new MethodMap(name, text(o.label) || labelOf(name), text(o.meaning), bool(o.signed), positions, layers, values, rows);
}

/** Every entry of the `maps` trait; entries that break the protocol are reported, not thrown. */
export function parseMaps(raw: unknown, P: number, n: number): ParsedMaps {
  const maps = new Map<string, MethodMap>();
  const errors: string[] = [];
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return { maps, errors };
  for (const [name, entry] of Object.entries(raw as Record<string, unknown>)) {
    try {
      maps.set(name, parseMap(name, entry, P, n));
    } catch (err) {
      errors.push(err instanceof Error ? err.message : String(err));
    }
  }
  return { maps, errors };
}

/** A short hint of what computing a method costs (kernel-side forward/backward passes). */
export function costHint(cost: Cost): string {
  if (cost === "instant") return "instant";
  if (cost === "fast") return "a few passes";
  return "many passes, may take minutes";
}

/** Menu text of a method: its label, plus what selecting it does when it is not computed. */
export function optionText(m: MethodInfo, state: { computed: boolean; pending: boolean; canCompute: boolean }): string {
  if (state.computed) return m.label;
  if (state.pending) return `${m.label} (computing…)`;
  if (!state.canCompute) return `${m.label} (not computed)`;
  return `${m.label} (compute · ${costHint(m.cost)})`;
}

/** Does every row of `map` explain an answer token (positions ≥ answerStart)? */
export function explainsAnswerTokens(map: MethodMap, answerStart: number): boolean {
  return map.positions.length > 0 && map.positions.every((p) => p >= answerStart);
}
