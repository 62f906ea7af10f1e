/**
 * Tensor envelope, version 1 (see docs/widget-protocol.md).
 *
 * A tensor crosses from Python as `{v, dtype, shape, data, scale_dims?, scale?, offset?}` where the byte
 * fields arrive as DataView (ipywidgets buffers), ArrayBuffer or Uint8Array, possibly as sub-views of a
 * larger buffer. `openEnvelope` validates an envelope and returns a lazy reader that decodes only what is
 * asked for; `decodeEnvelope` decodes everything.
 */

export type ByteSource = DataView | ArrayBuffer | ArrayBufferView;

export type DType = "uint8" | "float16" | "float32";

export interface Envelope {
  v: number;
  dtype: string;
  shape: readonly number[];
  data: ByteSource;
  scale_dims?: number;
  scale?: ByteSource;
  offset?: ByteSource;
}

export interface Decoded {
  shape: number[];
  values: Float32Array;
}

const ITEMSIZE: Record<DType, number> = { uint8: 1, float16: 2, float32: 4 };

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A byte view of `x` that honours `byteOffset` / `byteLength` (no copy). */
export function asBytes(x: ByteSource): Uint8Array {
  if (x instanceof Uint8Array) return x;
  if (x instanceof ArrayBuffer) return new Uint8Array(x);
  if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  // SharedArrayBuffer or a foreign-realm ArrayBuffer (instanceof fails across iframes).
  const maybe = x as { byteLength?: unknown };
  if (typeof maybe.byteLength === "number") return new Uint8Array(x as ArrayBuffer);
  throw new TypeError(`mmviz: expected DataView, ArrayBuffer or Uint8Array, got ${describe(x)}`);
}

function describe(x: unknown): string {
  if (x === null) return "null";
  if (Array.isArray(x)) return "a JSON array (tensors must be sent as bytes)";
  if (typeof x === "object") return (x as object).constructor?.name ?? "object";
  return typeof x;
}

/** Is `x` something `asBytes` accepts? */
export function isByteSource(x: unknown): x is ByteSource {
  return x instanceof ArrayBuffer || ArrayBuffer.isView(x);
}

type Column = Float32Array | Int32Array;

/** Little-endian 4-byte values of `x` as `Kind`; a view when 4-aligned, else a copy. */
interface ColumnKind<T extends Column> {
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): T;
  new (length: number): T;
}

function read4<T extends Column>(x: ByteSource, Kind: ColumnKind<T>, name: string): T {
  const b = asBytes(x);
  if (b.byteLength % 4 !== 0) {
    throw new Error(`mmviz: ${name} column of ${b.byteLength} bytes is not a multiple of 4`);
  }
  const n = b.byteLength / 4;
  if (!LITTLE_ENDIAN) throw new Error("mmviz: big-endian hosts are not supported");
  if (b.byteOffset % 4 === 0) return new Kind(b.buffer, b.byteOffset, n);
  const out = new Kind(n);
  new Uint8Array(out.buffer).set(b);
  return out;
}

/** Little-endian float32 values of `x`; copies when the bytes are not 4-aligned. */
export function readFloat32(x: ByteSource): Float32Array {
  return read4(x, Float32Array, "float32");
}

/** Little-endian int32 values of `x`; copies when the bytes are not 4-aligned. */
export function readInt32(x: ByteSource): Int32Array {
  return read4(x, Int32Array, "int32");
}

/** Little-endian uint16 values of `x`; copies when the bytes are not 2-aligned. */
function readUint16(x: ByteSource): Uint16Array {
  const b = asBytes(x);
  const n = b.byteLength >>> 1;
  if (LITTLE_ENDIAN && b.byteOffset % 2 === 0) return new Uint16Array(b.buffer, b.byteOffset, n);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = (b[2 * i] ?? 0) | ((b[2 * i + 1] ?? 0) << 8);
  return out;
}

/** IEEE 754 binary16 bit pattern → number (handles subnormals, ±0, ±Inf, NaN). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x03ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero / subnormal: frac · 2^-10 · 2^-14
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

let HALF_LUT: Float32Array | null = null;
function halfLut(): Float32Array {
  if (HALF_LUT === null) {
    HALF_LUT = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) HALF_LUT[i] = halfToFloat(i);
  }
  return HALF_LUT;
}

/** float16 bytes → Float32Array. */
export function readFloat16(x: ByteSource): Float32Array {
  const h = readUint16(x);
  const lut = halfLut();
  const out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) out[i] = lut[h[i]!]!;
  return out;
}

function product(xs: readonly number[]): number {
  let p = 1;
  for (const x of xs) p *= x;
  return p;
}

/** A validated envelope whose values are decoded on demand. */
export interface TensorReader {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly size: number;
  /** Value at a flat (C-order) index. */
  at(flat: number): number;
  /** `count` values starting at `start`, `stride` apart, into `out` (allocated when omitted). */
  read(start: number, count: number, stride?: number, out?: Float32Array): Float32Array;
}

/** Validate an envelope and return a lazy reader. Throws a clear Error when the envelope is malformed. */
export function openEnvelope(env: unknown): TensorReader {
  if (env === null || typeof env !== "object") {
    throw new Error(`mmviz: tensor envelope must be an object, got ${describe(env)}`);
  }
  const e = env as Partial<Envelope>;
  if (e.v !== 1) {
    throw new Error(`mmviz: unsupported tensor envelope version ${JSON.stringify(e.v)} (this widget reads v=1)`);
  }
  const dtype = e.dtype;
  if (dtype !== "uint8" && dtype !== "float16" && dtype !== "float32") {
    throw new Error(`mmviz: unknown tensor dtype ${JSON.stringify(dtype)} (expected uint8, float16 or float32)`);
  }
  const shape = e.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`mmviz: tensor shape must be a list of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  if (e.data === undefined || !isByteSource(e.data)) {
    throw new Error(`mmviz: tensor data must be bytes, got ${describe(e.data)}`);
  }
  const size = product(shape);
  const data = asBytes(e.data);
  const expected = size * ITEMSIZE[dtype];
  if (data.byteLength !== expected) {
    throw new Error(
      `mmviz: ${dtype} tensor of shape [${shape.join(", ")}] needs ${expected} bytes, got ${data.byteLength}`,
    );
  }

  if (dtype === "uint8") {
    const k = e.scale_dims;
    if (!Number.isInteger(k) || (k as number) < 0 || (k as number) > shape.length) {
      throw new Error(`mmviz: uint8 tensor needs scale_dims in 0…${shape.length}, got ${JSON.stringify(k)}`);
    }
    if (e.scale === undefined || e.offset === undefined || !isByteSource(e.scale) || !isByteSource(e.offset)) {
      throw new Error("mmviz: uint8 tensor needs `scale` and `offset` bytes");
    }
    const nScale = product(shape.slice(0, k));
    const scale = readFloat32(e.scale);
    const offset = readFloat32(e.offset);
    if (scale.length !== nScale || offset.length !== nScale) {
      throw new Error(
        `mmviz: uint8 tensor with scale_dims=${k} needs ${nScale} scale/offset values, ` +
          `got ${scale.length}/${offset.length}`,
      );
    }
    const inner = product(shape.slice(k));
    return new Uint8Reader(shape, size, data, scale, offset, inner);
  }
  const values = dtype === "float32" ? readFloat32(data) : readFloat16(data);
  return new FloatReader(shape, dtype, values);
}

/** offset + scale · q in float32 arithmetic, as numpy does it (bit-identical to mmviz.widget.wire.decode). */
function dequant(offset: number, scale: number, q: number): number {
  return Math.fround(offset + Math.fround(scale * q));
}

class Uint8Reader implements TensorReader {
  readonly dtype = "uint8" as const;
  constructor(
    readonly shape: readonly number[],
    readonly size: number,
    private readonly q: Uint8Array,
    private readonly scale: Float32Array,
    private readonly offset: Float32Array,
    private readonly inner: number,
  ) {}

  at(flat: number): number {
    const s = Math.floor(flat / this.inner);
    return dequant(this.offset[s]!, this.scale[s]!, this.q[flat]!);
  }

  read(start: number, count: number, stride = 1, out?: Float32Array): Float32Array {
    checkRange(this.size, start, count, stride);
    const res = out ?? new Float32Array(count);
    const { q, scale, offset, inner } = this;
    if (stride === 1) {
      // Walk slice by slice so the division happens once per slice.
      let i = 0;
      while (i < count) {
        const flat = start + i;
        const s = Math.floor(flat / inner);
        const end = Math.min(count, (s + 1) * inner - start);
        const o = offset[s]!;
        const sc = scale[s]!;
        for (; i < end; i++) res[i] = dequant(o, sc, q[start + i]!);
      }
    } else {
      for (let i = 0, flat = start; i < count; i++, flat += stride) {
        const s = Math.floor(flat / inner);
        res[i] = dequant(offset[s]!, scale[s]!, q[flat]!);
      }
    }
    return res;
  }
}

class FloatReader implements TensorReader {
  readonly size: number;
  constructor(
    readonly shape: readonly number[],
    readonly dtype: DType,
    private readonly values: Float32Array,
  ) {
    this.size = values.length;
  }

  at(flat: number): number {
    return this.values[flat]!;
  }

  read(start: number, count: number, stride = 1, out?: Float32Array): Float32Array {
    checkRange(this.size, start, count, stride);
    if (stride === 1 && out === undefined) return this.values.slice(start, start + count);
    const res = out ?? new Float32Array(count);
    for (let i = 0, flat = start; i < count; i++, flat += stride) res[i] = this.values[flat]!;
    return res;
  }
}

function checkRange(size: number, start: number, count: number, stride: number): void {
  if (count === 0) return;
  const last = start + (count - 1) * stride;
  if (!(start >= 0 && last < size && stride >= 1)) {
    throw new RangeError(`mmviz: read of ${count}×${stride} from ${start} is outside a tensor of ${size} values`);
  }
}

/** Decode a whole envelope into float32 values. */
export function decodeEnvelope(env: unknown): Decoded {
  const r = openEnvelope(env);
  return { shape: [...r.shape], values: r.read(0, r.size) };
}

/** Decode the `index`-th slice along the first axis (e.g. one layer of `[L, H, Q, P]`). */
export function rowView(env: unknown, index: number): Decoded {
  const r = openEnvelope(env);
  if (r.shape.length === 0) throw new RangeError("mmviz: rowView of a scalar tensor");
  const n = r.shape[0]!;
  if (!Number.isInteger(index) || index < 0 || index >= n) {
    throw new RangeError(`mmviz: row ${index} outside 0…${n - 1}`);
  }
  const inner = product(r.shape.slice(1));
  return { shape: r.shape.slice(1), values: r.read(index * inner, inner) };
}

/** base64 → bytes (used by the static host and by tests). */
export function base64ToBytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** Put `value` at `path` inside `state`, creating containers on the way (ipywidgets' put_buffers). */
export function putAtPath(state: Record<string, unknown>, path: readonly (string | number)[], value: unknown): void {
  if (path.length === 0) throw new Error("mmviz static host: empty buffer path");
  let obj: any = state;
  for (let i = 0; i < path.length - 1; i++) {
    const key = path[i]!;
    if (obj[key] === undefined || obj[key] === null) obj[key] = typeof path[i + 1] === "number" ? [] : {};
    obj = obj[key];
  }
  obj[path[path.length - 1]!] = value;
}
