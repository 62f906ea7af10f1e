/**
 * Parser of `payloads.map_payload` → one entry of the `maps` trait: a method's values over the image columns,
 * `[R, P]` or, per layer, `[S, R, P]`, with the sequence position each row explains.
 */

import type { TensorReader } from "../codec";
import { labelOf } from "./catalogue";
import { envelope, expectPositions, expectShape, fail, int32Field, lenientFlag, lenientText, record } from "./validate";

/** `"targets"`: row r explains the token at positions[r]; `"queries"`: row r is the query at positions[r]. */
export type MapRows = "targets" | "queries";

export interface MapPayload {
  name: string;
  label: string;
  meaning: string;
  signed: boolean;
  rows: MapRows;
  /** The sequence position of each row. */
  positions: Int32Array;
  /** The decoder layer of each slice (layered maps), or null. */
  layers: readonly number[] | null;
  /** `[R, P]` or `[S, R, P]`, in wire form (decoded on demand). */
  values: TensorReader;
}

/** Parse `maps[name]` against P image columns and n sequence positions; throws a clear Error. */
export function parseMap(name: string, raw: unknown, P: number, n: number): MapPayload {
  const field = `maps.${name}`;
  const o = record(raw, field);
  const values = envelope(o.values, `${field}.values`);
  const positions = int32Field(o, "positions", field);
  let layers: number[] | null = null;
  if (Array.isArray(o.layers)) {
    if (!o.layers.every((l) => typeof l === "number" && Number.isInteger(l))) fail(`${field}.layers`, "must be integers");
    layers = o.layers as number[];
  } else if (o.layers !== null && o.layers !== undefined) {
    fail(`${field}.layers`, "must be a list or null");
  }
  const R = positions.length;
  expectShape(values, layers === null ? [R, P] : [layers.length, R, P], `${field}.values`);
  expectPositions(positions, n, `${field}.positions`);
  return {
    name,
    label: lenientText(o.label) || labelOf(name),
    meaning: lenientText(o.meaning),
    signed: lenientFlag(o.signed),
    rows: o.rows === "queries" ? "queries" : "targets",
    positions,
    layers,
    values,
  };
}

/** Every entry of the `maps` trait; an entry that breaks the protocol is reported in `errors` and left out. */
export function parseMaps(raw: unknown, P: number, n: number): { maps: Map<string, MapPayload>; errors: string[] } {
  const maps = new Map<string, MapPayload>();
  const errors: string[] = [];
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return { maps, errors };
  for (const [name, entry] of Object.entries(raw)) {
    try {
      maps.set(name, parseMap(name, entry, P, n));
    } catch (err) {
      errors.push(err instanceof Error ? err.message : String(err));
    }
  }
  return { maps, errors };
}
