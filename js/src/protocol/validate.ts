/**
 * The one set of validators the protocol parsers share. Each checks one field of what Python sent and, when it
 * breaks the protocol, throws an Error whose message names the field (`mmviz: token_layout.boxes has …`), so a
 * broken payload is reported where it is, not as a wrong picture later.
 *
 * Two kinds: `required…` / `…Field` helpers throw; `lenient…` helpers fall back to a default for fields the
 * protocol lets Python leave out or that only label things (a missing label must not hide a map).
 */

import { asBytes, isByteSource, openEnvelope, readFloat32, readInt32, type TensorReader } from "../codec";

/** A dict as it arrives from Python (JSON object, byte fields as DataView / ArrayBuffer / Uint8Array). */
export type Fields = Readonly<Record<string, unknown>>;

/** Throw the protocol error about `field`: `mmviz: <field> <problem>`. */
export function fail(field: string, problem: string): never {
  throw new Error(`mmviz: ${field} ${problem}`);
}

/** `x` as a dict; throws when it is anything else (null, a list, a number). */
export function record(x: unknown, field: string): Fields {
  if (x === null || typeof x !== "object" || Array.isArray(x)) fail(field, "must be a dict");
  return x as Fields;
}

/** `x` as a dict, or an empty one when Python sent nothing usable (traits before the first trace). */
export function lenientRecord(x: unknown): Fields {
  return x !== null && typeof x === "object" && !Array.isArray(x) ? (x as Fields) : {};
}

/** A non-negative integer (a size or a count). */
export function count(x: unknown, field: string): number {
  if (typeof x !== "number" || !Number.isInteger(x) || x < 0) fail(field, "must be a count");
  return x;
}

/** A finite number, else `fallback`. */
export function lenientNumber(x: unknown, fallback: number): number {
  return typeof x === "number" && Number.isFinite(x) ? x : fallback;
}

/** A string, else `fallback`. */
export function lenientText(x: unknown, fallback = ""): string {
  return typeof x === "string" ? x : fallback;
}

/** A boolean, else `fallback`. */
export function lenientFlag(x: unknown, fallback = false): boolean {
  return typeof x === "boolean" ? x : fallback;
}

/** A list of display strings (non-strings are stringified; anything but a list is empty). */
export function lenientStrings(x: unknown): string[] {
  return Array.isArray(x) ? x.map((v) => (typeof v === "string" ? v : String(v))) : [];
}

/** Throw unless `actual` entries were sent where `expected` were due (`expectedText` says how they add up). */
export function expectLength(actual: number, expected: number, field: string, expectedText = String(expected)): void {
  if (actual !== expected) fail(field, `has ${actual} entries, expected ${expectedText}`);
}

/** Throw unless every value of `values` is a sequence position in 0…n−1. */
export function expectPositions(values: ArrayLike<number>, n: number, field: string): void {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!(v >= 0 && v < n)) fail(field, `holds ${v}, outside the positions 0…${n - 1}`);
  }
}

/** uint8 bytes at `o[key]`; null when absent. */
export function optionalBytes(o: Fields, key: string, field: string): Uint8Array | null {
  const x = o[key];
  if (x === undefined || x === null) return null;
  if (!isByteSource(x)) fail(`${field}.${key}`, "must be bytes (uint8)");
  return asBytes(x);
}

/** uint8 bytes at `o[key]`; throws when absent. */
export function bytesField(o: Fields, key: string, field: string): Uint8Array {
  const out = optionalBytes(o, key, field);
  if (out === null) fail(`${field}.${key}`, "must be bytes (uint8)");
  return out;
}

/** Little-endian int32 values at `o[key]`; empty when absent. */
export function optionalInt32(o: Fields, key: string, field: string): Int32Array {
  const x = o[key];
  if (x === undefined || x === null) return new Int32Array(0);
  if (!isByteSource(x)) fail(`${field}.${key}`, "must be bytes (int32)");
  return readInt32(x);
}

/** Little-endian int32 values at `o[key]`; throws when absent or when `length` is given and not met. */
export function int32Field(o: Fields, key: string, field: string, length?: number): Int32Array {
  if (!isByteSource(o[key])) fail(`${field}.${key}`, "must be bytes (int32)");
  const out = optionalInt32(o, key, field);
  if (length !== undefined) expectLength(out.length, length, `${field}.${key}`);
  return out;
}

/** Little-endian float32 values at `o[key]`; empty when absent. */
export function optionalFloat32(o: Fields, key: string, field: string): Float32Array {
  const x = o[key];
  if (x === undefined || x === null) return new Float32Array(0);
  if (!isByteSource(x)) fail(`${field}.${key}`, "must be bytes (float32)");
  return readFloat32(x);
}

/** Is `x` shaped like a tensor envelope (a dict with a version)? Empty traits (`{}`) are not. */
export function isEnvelope(x: unknown): boolean {
  return x !== null && typeof x === "object" && "v" in x;
}

/** Open the tensor envelope `x` (codec.ts); its errors are prefixed with `field`. */
export function envelope(x: unknown, field: string): TensorReader {
  try {
    return openEnvelope(x);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new Error(message.replace(/^mmviz: /, `mmviz: ${field}: `));
  }
}

/**
 * Throw unless `reader` has the shape `expected`; a string entry names a free axis (any size), e.g.
 * `["L", Q, P]`. Returns the reader.
 */
export function expectShape(reader: TensorReader, expected: readonly (number | string)[], field: string): TensorReader {
  const s = reader.shape;
  const ok = s.length === expected.length && expected.every((want, i) => typeof want === "string" || s[i] === want);
  if (!ok) fail(field, `has shape [${s.join(", ")}], expected [${expected.join(", ")}]`);
  return reader;
}

/** The `size` float values of the envelope at `o[key]`, decoded. */
export function floatsField(o: Fields, key: string, field: string, size: number): Float32Array {
  const reader = envelope(o[key], `${field}.${key}`);
  if (reader.size !== size) fail(`${field}.${key}`, `holds ${reader.size} values, expected ${size}`);
  return reader.read(0, size, 1);
}
