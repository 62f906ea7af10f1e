/**
 * The sweep widget's payloads (`mmviz/widget/sweep.py`): the `table_data` trait (`sweep_payload`), the browser-owned
 * `sort` / `text_filter` / `ranges` traits, and the `open` request with its one `opened` reply.
 */

import { asBytes, isByteSource, readFloat32 } from "../codec";
import { count, expectLength, fail, lenientRecord, lenientText, record, type Fields } from "./validate";

/** One column of the table: text cells, or numbers (NaN: none) with an optional per-row profile (sparkline). */
export type SweepColumn =
  | { kind: "text"; name: string; label: string; values: readonly string[] }
  | {
      kind: "number";
      name: string;
      label: string;
      values: Float32Array;
      /** `[n, length]` row-major: each row's per-layer profile (an array statistic), or null for a scalar. */
      series: { length: number; data: Float32Array } | null;
    };

export interface SweepTable {
  n: number;
  ids: readonly string[];
  /** The error of a failed example, `""` for the others. */
  errors: readonly string[];
  /** PNG bytes of each example's thumbnail (empty: none). */
  thumbnails: readonly Uint8Array[];
  /** Whether each example's trace was kept. */
  kept: readonly boolean[];
  columns: readonly SweepColumn[];
}

/** The browser-owned view settings. `ranges[column] = [low, high]`, either bound null (open). */
export interface SweepControls {
  sort: { column: string; descending: boolean };
  textFilter: string;
  ranges: Readonly<Record<string, readonly [number | null, number | null]>>;
}

function strings(x: unknown, field: string, n: number): string[] {
  if (!Array.isArray(x)) fail(field, "must be a list of strings");
  expectLength(x.length, n, field);
  return x.map((v) => (typeof v === "string" ? v : String(v)));
}

function parseColumn(raw: unknown, n: number, index: number): SweepColumn {
  const field = `table_data.columns[${index}]`;
  const o = record(raw, field);
  const name = lenientText(o.name);
  if (name === "") fail(`${field}.name`, "must be a non-empty string");
  const label = lenientText(o.label) || name;
  if (o.kind === "text") return { kind: "text", name, label, values: strings(o.values, `${field}.values`, n) };
  if (o.kind !== "number") fail(`${field}.kind`, `must be "text" or "number", not ${JSON.stringify(o.kind)}`);
  if (!isByteSource(o.values)) fail(`${field}.values`, "must be bytes (float32)");
  const values = readFloat32(o.values);
  expectLength(values.length, n, `${field}.values`);
  let series: { length: number; data: Float32Array } | null = null;
  if (o.series !== undefined && o.series !== null) {
    const s = record(o.series, `${field}.series`);
    const length = count(s.length, `${field}.series.length`);
    if (!isByteSource(s.data)) fail(`${field}.series.data`, "must be bytes (float32)");
    const data = readFloat32(s.data);
    expectLength(data.length, n * length, `${field}.series.data`, `${n} × ${length}`);
    series = { length, data };
  }
  return { kind: "number", name, label, values, series };
}

/** Parse the `table_data` trait; throws a clear Error naming the field that breaks the protocol. */
export function parseSweepTable(raw: unknown): SweepTable {
  const o: Fields = record(raw, "table_data");
  if (o.v !== 1) fail("table_data.v", `must be 1 (this bundle's version), not ${JSON.stringify(o.v)}`);
  const n = count(o.n, "table_data.n");
  const ids = strings(o.ids, "table_data.ids", n);
  const errors = strings(o.errors, "table_data.errors", n);
  if (!Array.isArray(o.thumbnails)) fail("table_data.thumbnails", "must be a list of PNG bytes");
  expectLength(o.thumbnails.length, n, "table_data.thumbnails");
  const thumbnails = o.thumbnails.map((t) => (isByteSource(t) ? asBytes(t) : new Uint8Array(0)));
  if (!Array.isArray(o.kept)) fail("table_data.kept", "must be a list of booleans");
  expectLength(o.kept.length, n, "table_data.kept");
  const kept = o.kept.map((k) => k === true);
  if (!Array.isArray(o.columns)) fail("table_data.columns", "must be a list");
  const columns = o.columns.map((c, i) => parseColumn(c, n, i));
  return { n, ids, errors, thumbnails, kept, columns };
}

/** The view settings from the model's traits; anything malformed falls back to "no sort / no filter". */
export function parseSweepControls(get: (key: string) => unknown, table: SweepTable): SweepControls {
  const sortRaw = lenientRecord(get("sort"));
  const names = new Set(table.columns.map((c) => c.name));
  const column = typeof sortRaw.column === "string" && names.has(sortRaw.column) ? sortRaw.column : "";
  const ranges: Record<string, readonly [number | null, number | null]> = {};
  const numeric = new Set(table.columns.filter((c) => c.kind === "number").map((c) => c.name));
  for (const [name, bounds] of Object.entries(lenientRecord(get("ranges")))) {
    if (!numeric.has(name) || !Array.isArray(bounds) || bounds.length !== 2) continue;
    const [low, high] = bounds.map((b: unknown) => (typeof b === "number" && Number.isFinite(b) ? b : null));
    ranges[name] = [low ?? null, high ?? null];
  }
  return { sort: { column, descending: sortRaw.descending === true }, textFilter: lenientText(get("text_filter")), ranges };
}

/** `{"type": "open", "id"}`: ask the kernel for an example's inspector. */
export interface OpenRequest {
  type: "open";
  id: string;
}

/**
 * The inspector state of an `opened` reply with its byte fields put back from the binary buffers (`buffer_paths[i]`
 * is where buffer i goes); throws the kernel's error (why the example cannot be opened) when it failed.
 */
export function openedState(content: Fields, buffers: readonly DataView[], put: (state: Record<string, unknown>, path: (string | number)[], value: unknown) => void): Record<string, unknown> {
  if (content.ok !== true) throw new Error(lenientText(content.error) || "the kernel could not open this example");
  const state = { ...lenientRecord(content.payload) } as Record<string, unknown>;
  const paths = Array.isArray(content.buffer_paths) ? content.buffer_paths : [];
  paths.forEach((path: unknown, i) => {
    const buffer = buffers[i];
    if (Array.isArray(path) && buffer !== undefined) put(state, path as (string | number)[], buffer);
  });
  return state;
}
