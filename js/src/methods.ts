/**
 * The map methods as the views use them: a computed map ({@link MethodMap}: rows by position, slices by layer,
 * rows and columns decoded on demand, like attention) and the switcher's texts. The `methods` and `maps` traits
 * are read by the protocol (protocol/catalogue.ts, protocol/map.ts).
 */

import type { TensorReader } from "./codec";
import { MEAN, parseMaps, type Cost, type Layer, type MapPayload, type MapRows, type MethodInfo } from "./protocol";

/** What a slice lookup found for a layer. */
export interface SliceChoice {
  /** Index of the slice in `values`; −1 = the mean of every slice. */
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

  readonly name: string;
  readonly label: string;
  readonly meaning: string;
  readonly signed: boolean;
  /** The sequence position of each row. */
  readonly positions: Int32Array;
  /** The decoder layer of each slice (layered maps), or null. */
  readonly layers: readonly number[] | null;
  /** `"targets"`: row r explains the token at positions[r]; `"queries"`: row r is the query at positions[r]. */
  readonly rows: MapRows;
  private readonly values: TensorReader;

  constructor(payload: MapPayload) {
    this.name = payload.name;
    this.label = payload.label;
    this.meaning = payload.meaning;
    this.signed = payload.signed;
    this.positions = payload.positions;
    this.layers = payload.layers;
    this.rows = payload.rows;
    this.values = payload.values;
    const s = this.values.shape;
    this.S = s.length === 3 ? s[0]! : 1;
    this.R = s[s.length - 2] ?? 0;
    this.P = s[s.length - 1] ?? 0;
    this.positions.forEach((pos, r) => {
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

  /**
   * The slice for decoder `layer`: exact when there is one, else the nearest (ties: the later layer). For
   * `"mean"`, slice −1 = the mean of every slice ({@link meanRow}, {@link meanColumn}) when there are several.
   */
  sliceFor(layer: Layer): SliceChoice {
    const layers = this.layers;
    if (layers === null || layers.length === 0) return { slice: 0, layer: null, exact: true };
    if (layer === MEAN) return this.S > 1 ? { slice: -1, layer: null, exact: true } : { slice: 0, layer: layers[0]!, exact: true };
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

/** Every entry of the `maps` trait as a {@link MethodMap}; entries that break the protocol are reported, not thrown. */
export function readMaps(raw: unknown, P: number, n: number): { maps: Map<string, MethodMap>; errors: string[] } {
  const parsed = parseMaps(raw, P, n);
  return { maps: new Map([...parsed.maps].map(([name, payload]) => [name, new MethodMap(payload)])), errors: parsed.errors };
}

/** A short hint of what computing a method costs (kernel-side forward/backward passes). */
export function costHint(cost: Cost): string {
  if (cost === "instant") return "instant";
  if (cost === "fast") return "a few passes";
  return "many passes, may take minutes";
}

/** Menu text of a method: its label, plus what selecting it does when it is not computed (or why it cannot be). */
export function optionText(m: MethodInfo, state: { computed: boolean; pending: boolean; canCompute: boolean }): string {
  if (state.computed) return m.label;
  if (state.pending) return `${m.label} (computing…)`;
  if (!state.canCompute) {
    if (m.available) return `${m.label} (not computed)`;
    return `${m.label} (${m.unavailable === "" ? "needs the model" : m.unavailable})`;
  }
  return `${m.label} (compute · ${costHint(m.cost)})`;
}

/** Does every row of `map` explain an answer token (positions ≥ answerStart)? */
export function explainsAnswerTokens(map: MethodMap, answerStart: number): boolean {
  return map.positions.length > 0 && map.positions.every((p) => p >= answerStart);
}
