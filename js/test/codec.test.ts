import { existsSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  asBytes,
  base64ToBytes,
  decodeEnvelope,
  halfToFloat,
  openEnvelope,
  readFloat16,
  readFloat32,
  readInt32,
  rowView,
} from "../src/codec";
import { encodeFloat32, encodeUint8, subView } from "./helpers";

const FIXTURE = new URL("../../tests/fixtures/envelope_v1.json", import.meta.url);

interface FixtureCase {
  name: string;
  envelope: Record<string, unknown>;
  expected: number[];
  tolerance: number;
}

const BYTE_FIELDS = ["data", "scale", "offset"];

function loadCases(): FixtureCase[] {
  const parsed = JSON.parse(readFileSync(FIXTURE, "utf8")) as { cases: FixtureCase[] };
  return parsed.cases.map((c) => ({
    ...c,
    envelope: Object.fromEntries(
      Object.entries(c.envelope).map(([k, v]) => [k, BYTE_FIELDS.includes(k) ? base64ToBytes(v as string) : v]),
    ),
  }));
}

describe("shared fixture tests/fixtures/envelope_v1.json", () => {
  it("exists (written by tests/fixtures/make_envelope_fixture.py)", () => {
    expect(existsSync(FIXTURE)).toBe(true);
  });

  const cases = existsSync(FIXTURE) ? loadCases() : [];
  it("has cases covering every dtype", () => {
    const dtypes = new Set(cases.map((c) => c.envelope.dtype));
    expect(dtypes).toEqual(new Set(["uint8", "float16", "float32"]));
  });

  for (const c of cases) {
    it(`decodes: ${c.name}`, () => {
      const { shape, values } = decodeEnvelope(c.envelope);
      expect(shape).toEqual(c.envelope.shape);
      expect(values.length).toBe(c.expected.length);
      c.expected.forEach((want, i) => {
        expect(Math.abs(values[i]! - want)).toBeLessThanOrEqual(c.tolerance);
      });
    });

    it(`decodes from misaligned DataView sub-views: ${c.name}`, () => {
      const env: Record<string, unknown> = { ...c.envelope };
      let at = 3;
      for (const k of BYTE_FIELDS) {
        if (env[k] instanceof Uint8Array) env[k] = subView(env[k] as Uint8Array, at++);
      }
      const { values } = decodeEnvelope(env);
      c.expected.forEach((want, i) => expect(Math.abs(values[i]! - want)).toBeLessThanOrEqual(c.tolerance));
    });

    it(`lazy reads agree with the full decode: ${c.name}`, () => {
      const r = openEnvelope(c.envelope);
      const all = decodeEnvelope(c.envelope).values;
      for (let i = 0; i < r.size; i++) expect(r.at(i)).toBe(all[i]);
      if (r.shape.length >= 2) {
        const last = r.shape[r.shape.length - 1]!;
        const col = r.read(1, r.size / last, last);
        col.forEach((v, j) => expect(v).toBe(all[1 + j * last]));
        const row = rowView(c.envelope, 1);
        expect(row.shape).toEqual(r.shape.slice(1));
        const inner = row.values.length;
        row.values.forEach((v, j) => expect(v).toBe(all[inner + j]));
      }
    });
  }
});

describe("asBytes", () => {
  it("honours byteOffset and byteLength of a DataView", () => {
    const buf = new Uint8Array([9, 9, 9, 1, 2, 3, 9]).buffer;
    expect([...asBytes(new DataView(buf, 3, 3))]).toEqual([1, 2, 3]);
  });
  it("honours byteOffset of a Uint8Array and wraps an ArrayBuffer", () => {
    const big = new Uint8Array([7, 8, 9, 10]);
    expect([...asBytes(big.subarray(1, 3))]).toEqual([8, 9]);
    expect([...asBytes(big.buffer)]).toEqual([7, 8, 9, 10]);
  });
  it("rejects JSON lists", () => {
    expect(() => asBytes([1, 2, 3] as unknown as Uint8Array)).toThrow(/bytes|DataView/);
  });
});

describe("column readers", () => {
  it("read float32 and int32 at an odd byte offset (copying)", () => {
    const f = new Uint8Array(Float32Array.from([1.5, -2.25, 3e-8]).buffer);
    const i = new Uint8Array(Int32Array.from([7, -1, 2 ** 30]).buffer);
    const fv = readFloat32(subView(f, 5));
    const iv = readInt32(subView(i, 1));
    expect([...fv]).toEqual([1.5, -2.25, Math.fround(3e-8)]);
    expect([...iv]).toEqual([7, -1, 2 ** 30]);
  });
  it("does not copy aligned data", () => {
    const f = Float32Array.from([1, 2, 3, 4]);
    const v = readFloat32(new DataView(f.buffer, 4, 8));
    expect([...v]).toEqual([2, 3]);
    expect(v.buffer).toBe(f.buffer);
  });
  it("rejects lengths that are not a multiple of 4", () => {
    expect(() => readFloat32(new Uint8Array(6))).toThrow(/multiple of 4/);
    expect(() => readInt32(new Uint8Array(3))).toThrow(/multiple of 4/);
  });
});

describe("float16", () => {
  it("converts special and ordinary bit patterns", () => {
    expect(halfToFloat(0x0000)).toBe(0);
    expect(Object.is(halfToFloat(0x8000), -0)).toBe(true);
    expect(halfToFloat(0x3c00)).toBe(1);
    expect(halfToFloat(0xc000)).toBe(-2);
    expect(halfToFloat(0x3555)).toBeCloseTo(0.333251953125, 12);
    expect(halfToFloat(0x7bff)).toBe(65504);
    expect(halfToFloat(0x0001)).toBe(2 ** -24); // smallest subnormal
    expect(halfToFloat(0x03ff)).toBe(1023 * 2 ** -24); // largest subnormal
    expect(halfToFloat(0x0400)).toBe(2 ** -14); // smallest normal
    expect(halfToFloat(0x7c00)).toBe(Infinity);
    expect(halfToFloat(0xfc00)).toBe(-Infinity);
    expect(halfToFloat(0x7e00)).toBeNaN();
  });
  it("decodes little-endian halves from an odd offset", () => {
    const bytes = new Uint8Array([0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38]); // 1, -2, 0.5
    expect([...readFloat16(subView(bytes, 3))]).toEqual([1, -2, 0.5]);
    const env = { v: 1, dtype: "float16", shape: [3], data: subView(bytes, 7) };
    expect([...decodeEnvelope(env).values]).toEqual([1, -2, 0.5]);
  });
});

describe("uint8 envelopes", () => {
  it("decode offset + scale · q per leading index", () => {
    const values = [0, 0.5, 1, 10, 20, 30];
    const env = encodeUint8(values, [2, 3]);
    const { values: out } = decodeEnvelope(env);
    values.forEach((v, i) => expect(out[i]).toBeCloseTo(v, 1));
    expect(out[3]).toBeCloseTo(10, 5);
    expect(out[5]).toBeCloseTo(30, 4);
  });
  it("honours odd byte offsets of data, scale and offset", () => {
    const env = encodeUint8([0.1, 0.2, 0.3, 0.4], [2, 2]);
    const plain = decodeEnvelope(env).values;
    const moved = decodeEnvelope({
      ...env,
      data: subView(env.data as Uint8Array, 1),
      scale: subView(env.scale as Uint8Array, 3),
      offset: subView(env.offset as Uint8Array, 5),
    }).values;
    expect([...moved]).toEqual([...plain]);
  });
  it("accepts ArrayBuffer byte fields", () => {
    const env = encodeUint8([1, 2, 3], [1, 3]);
    const ab = (x: unknown): ArrayBuffer => (x as Uint8Array).slice().buffer;
    const out = decodeEnvelope({ ...env, data: ab(env.data), scale: ab(env.scale), offset: ab(env.offset) });
    expect(out.values[2]).toBeCloseTo(3, 5);
  });
  it("handles empty tensors", () => {
    const env = encodeUint8([], [0, 4]);
    expect(decodeEnvelope(env)).toEqual({ shape: [0, 4], values: new Float32Array(0) });
  });
});

describe("malformed envelopes throw clear errors", () => {
  const good = encodeUint8([0, 1, 2, 3], [2, 2]);
  it("wrong version", () => {
    expect(() => decodeEnvelope({ ...good, v: 2 })).toThrow(/version 2/);
    expect(() => decodeEnvelope({ ...good, v: undefined })).toThrow(/version/);
  });
  it("unknown dtype", () => {
    expect(() => decodeEnvelope({ ...good, dtype: "int64" })).toThrow(/unknown tensor dtype "int64"/);
  });
  it("data length mismatch", () => {
    expect(() => decodeEnvelope({ ...good, data: new Uint8Array(5) })).toThrow(/needs 4 bytes, got 5/);
    const f = encodeFloat32([1, 2, 3], [3]);
    expect(() => decodeEnvelope({ ...f, shape: [4] })).toThrow(/needs 16 bytes, got 12/);
    expect(() => decodeEnvelope({ v: 1, dtype: "float16", shape: [2], data: new Uint8Array(3) })).toThrow(
      /needs 4 bytes, got 3/,
    );
  });
  it("scale / offset length mismatch", () => {
    expect(() => decodeEnvelope({ ...good, scale: new Uint8Array(4) })).toThrow(/scale\/offset/);
    expect(() => decodeEnvelope({ ...good, scale_dims: 3 })).toThrow(/scale_dims/);
    expect(() => decodeEnvelope({ ...good, scale: undefined })).toThrow(/scale/);
  });
  it("bad shape or non-byte data", () => {
    expect(() => decodeEnvelope({ ...good, shape: [2, -2] })).toThrow(/shape/);
    expect(() => decodeEnvelope({ ...good, data: [0, 1, 2, 3] })).toThrow(/bytes/);
    expect(() => decodeEnvelope(null)).toThrow(/object/);
  });
  it("out-of-range reads", () => {
    const r = openEnvelope(good);
    expect(() => r.read(3, 2)).toThrow(RangeError);
    expect(() => rowView(good, 2)).toThrow(RangeError);
  });
});
