import { describe, expect, it } from "vitest";
import { buildData, isImageKind, maxOf } from "../src/data";
import { att, BOXES, H, L, makeState, meanArray, P, Q, QUERY_POSITIONS, source, TOKENS } from "./fixtures";

describe("layout", () => {
  const data = buildData(source(makeState()));

  it("reads tokens, kinds and sizes", () => {
    expect(data.n).toBe(TOKENS.length);
    expect([data.L, data.H, data.Q, data.P]).toEqual([L, H, Q, P]);
    expect(data.answerStart).toBe(9);
    expect(data.hasAttention).toBe(true);
    expect(data.nImages).toBe(1);
    expect([...data.kinds].map(isImageKind)).toEqual([false, false, true, true, true, true, true, false, false, false]);
  });

  it("maps sequence positions to query rows and image columns", () => {
    QUERY_POSITIONS.forEach((pos, q) => expect(data.rowOf(pos)).toBe(q));
    expect(data.rowOf(0)).toBe(-1);
    expect(data.rowOf(3)).toBe(-1);
    expect(data.rowOf(-1)).toBe(-1);
    expect(data.rowOf(TOKENS.length)).toBe(-1);
    expect(data.rowOf(1.5)).toBe(-1);
    expect(data.columnOfPosition(2)).toBe(0);
    expect(data.columnOfPosition(5)).toBe(3);
    expect(data.columnOfPosition(6)).toBe(-1); // image newline: no box, no column
  });

  it("reads boxes (from a misaligned sub-view) and groups columns by image", () => {
    expect(data.box(3)).toEqual(BOXES.slice(12, 16));
    expect(data.columnsOf(0)).toEqual([0, 1, 2, 3]);
    expect(data.columnsOf(1)).toEqual([]);
    expect(data.images[0]).toEqual({ width: 200, height: 120, covered: [0, 0, 200, 120] });
  });
});

describe("attention maps (float32 envelopes: exact)", () => {
  const data = buildData(source(makeState()));
  const mean = meanArray();

  it("mapFor(layer, head, q) is row q of [L, H, Q, P]", () => {
    for (let l = 0; l < L; l++)
      for (let h = 0; h < H; h++)
        for (let q = 0; q < Q; q++) {
          const want = Array.from({ length: P }, (_, p) => Math.fround(att(l, h, q, p)));
          expect([...data.mapFor(l, h, q)]).toEqual(want);
        }
  });

  it("mapFor(layer, -1, q) is row q of attention_mean", () => {
    for (let l = 0; l < L; l++)
      for (let q = 0; q < Q; q++) expect([...data.mapFor(l, -1, q)]).toEqual([...mean.slice((l * Q + q) * P, (l * Q + q + 1) * P)]);
  });

  it("columnFor(layer, head, p) is column p over all query rows", () => {
    for (let l = 0; l < L; l++)
      for (let p = 0; p < P; p++) {
        for (let h = 0; h < H; h++) {
          const want = Array.from({ length: Q }, (_, q) => Math.fround(att(l, h, q, p)));
          expect([...data.columnFor(l, h, p)]).toEqual(want);
        }
        const wantMean = Array.from({ length: Q }, (_, q) => mean[(l * Q + q) * P + p]);
        expect([...data.columnFor(l, -1, p)]).toEqual(wantMean);
      }
  });

  it("row and column agree at their crossing", () => {
    for (const head of [-1, 0, 2]) {
      expect(data.mapFor(1, head, 2)[3]).toBe(data.columnFor(1, head, 3)[2]);
    }
  });

  it("writes into a caller's buffer", () => {
    const out = new Float32Array(P);
    expect(data.mapFor(0, 1, 1, out)).toBe(out);
    expect(out[0]).toBe(Math.fround(att(0, 1, 1, 0)));
  });

  it("rejects selections that do not exist", () => {
    expect(data.validSelection(1, -1)).toBe(true);
    expect(data.validSelection(2, 0)).toBe(false);
    expect(data.validSelection(0, 3)).toBe(false);
    expect(data.validSelection(0, -2)).toBe(false);
    expect(() => data.mapFor(2, 0, 0)).toThrow(RangeError);
    expect(() => data.mapFor(0, 0, Q)).toThrow(RangeError);
    expect(() => data.columnFor(0, 0, P)).toThrow(RangeError);
  });
});

describe("attention maps (uint8 envelopes: within half a quantisation step)", () => {
  const data = buildData(source(makeState({ dtype: "uint8" })));
  it("decodes rows lazily to within scale / 2", () => {
    for (let l = 0; l < L; l++)
      for (let h = 0; h < H; h++)
        for (let q = 0; q < Q; q++) {
          const row = data.mapFor(l, h, q);
          const range = att(l, h, q, P - 1) - att(l, h, q, 0);
          row.forEach((v, p) => expect(Math.abs(v - att(l, h, q, p))).toBeLessThanOrEqual(range / 510 + 1e-7));
          const col = data.columnFor(l, h, 1);
          expect(col[q]).toBe(row[1]);
        }
  });
});

describe("fallbacks and errors", () => {
  it("averages heads when attention_mean is missing", () => {
    const data = buildData(source(makeState({ withMean: false })));
    const mean = meanArray();
    const row = data.mapFor(0, -1, 1);
    row.forEach((v, p) => expect(v).toBeCloseTo(mean[Q + p]!, 6));
    const col = data.columnFor(1, -1, 2);
    col.forEach((v, q) => expect(v).toBeCloseTo(mean[(Q + q) * P + 2]!, 6));
  });

  it("works with the head mean only: heads are then fetched per layer", () => {
    const data = buildData(source(makeState({ withHeads: false })));
    expect([data.L, data.H]).toEqual([L, H]); // H from the metadata
    expect(data.validSelection(0, -1)).toBe(true);
    expect(data.validSelection(0, 0)).toBe(true);
    expect(data.eagerHeads(0)).toBe(null);
    expect(() => data.mapFor(0, 0, 0)).toThrow(/were not shipped/);
    expect(data.validSelection(-1, -1)).toBe(true); // mean over layers
    const meanOverLayers = data.mapFor(-1, -1, 1);
    const want = [0, 1, 2, 3].map((p) => (data.mapFor(0, -1, 1)[p]! + data.mapFor(1, -1, 1)[p]!) / 2);
    want.forEach((v, p) => expect(meanOverLayers[p]).toBeCloseTo(v, 6));
  });

  it("treats empty attention traits as no data", () => {
    const data = buildData(source(makeState({ withHeads: false, withMean: false })));
    expect(data.hasAttention).toBe(false);
    expect(data.L).toBe(0);
    const empty = buildData(source({}));
    expect(empty.n).toBe(0);
    expect(empty.hasAttention).toBe(false);
  });

  it("throws clear errors on protocol violations", () => {
    const bad = (patch: (s: Record<string, any>) => void): (() => unknown) => {
      const s = makeState() as Record<string, any>;
      patch(s);
      return () => buildData(source(s));
    };
    expect(bad((s) => (s.tokens = s.tokens.slice(1)))).toThrow(/n_positions/);
    expect(bad((s) => (s.token_layout.v = 2))).toThrow(/token_layout version 2/);
    expect(bad((s) => (s.token_layout.boxes = new Uint8Array(8)))).toThrow(/boxes/);
    expect(bad((s) => (s.token_layout.query_positions = new Uint8Array(Int32Array.from([99]).buffer)))).toThrow(
      /position 99/,
    );
    expect(bad((s) => (s.attention = { ...s.attention, shape: [L, H * Q, 1, P] }))).toThrow(/attention has shape/);
    expect(bad((s) => (s.attention = { ...s.attention, shape: [L, H, Q, P + 1] }))).toThrow(/attention: float32 tensor/);
    expect(bad((s) => (s.attention_mean = { ...s.attention_mean, v: 3 }))).toThrow(/attention_mean: unsupported tensor envelope version 3/);
    expect(bad((s) => (s.token_layout.images = []))).toThrow(/refers to image 0/);
    expect(bad((s) => (s.images = [[1, 2, 3]]))).toThrow(/PNG bytes/);
  });
});

describe("maxOf", () => {
  it("ignores NaN and returns 0 for empty input", () => {
    expect(maxOf([0.1, Number.NaN, 0.3, 0.2])).toBe(0.3);
    expect(maxOf([])).toBe(0);
    expect(maxOf([Number.NaN])).toBe(0);
  });
});
