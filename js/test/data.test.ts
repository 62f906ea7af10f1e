import { describe, expect, it } from "vitest";
import { buildData, LayerHeads, maxOf } from "../src/data";
import { isImageKind, MEAN, parseHeads } from "../src/protocol";
import { att, BOXES, H, headsPayload, L, makeState, meanArray, P, Q, QUERY_POSITIONS, source, TOKENS } from "./fixtures";
import { encodeUint8 } from "./helpers";

/** Layer `l`'s per-head maps as the browser reads a fetched `heads` payload. */
function fetchedHeads(l: number, payload: unknown = headsPayload(l)): LayerHeads {
  return new LayerHeads(parseHeads(payload, H, Q, P), H, Q, P);
}

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

  it("a fetched layer's heads: row q of head h is row q of [H, Q, P]", () => {
    for (let l = 0; l < L; l++) {
      const heads = fetchedHeads(l);
      for (let h = 0; h < H; h++)
        for (let q = 0; q < Q; q++) {
          const want = Array.from({ length: P }, (_, p) => Math.fround(att(l, h, q, p)));
          expect([...heads.row(h, q)]).toEqual(want);
        }
    }
  });

  it("meanMap(layer, q) is row q of attention_mean", () => {
    for (let l = 0; l < L; l++)
      for (let q = 0; q < Q; q++) expect([...data.meanMap(l, q)]).toEqual([...mean.slice((l * Q + q) * P, (l * Q + q + 1) * P)]);
  });

  it("columns are column p over all query rows, for a head and for the head mean", () => {
    for (let l = 0; l < L; l++)
      for (let p = 0; p < P; p++) {
        const heads = fetchedHeads(l);
        for (let h = 0; h < H; h++) {
          const want = Array.from({ length: Q }, (_, q) => Math.fround(att(l, h, q, p)));
          expect([...heads.column(h, p)]).toEqual(want);
        }
        const wantMean = Array.from({ length: Q }, (_, q) => mean[(l * Q + q) * P + p]);
        expect([...data.meanColumn(l, p)]).toEqual(wantMean);
      }
  });

  it("row and column agree at their crossing", () => {
    expect(data.meanMap(1, 2)[3]).toBe(data.meanColumn(1, 3)[2]);
    const heads = fetchedHeads(1);
    for (const head of [0, 2]) expect(heads.row(head, 2)[3]).toBe(heads.column(head, 3)[2]);
  });

  it("writes into a caller's buffer", () => {
    const out = new Float32Array(P);
    expect(fetchedHeads(0).row(1, 1, out)).toBe(out);
    expect(out[0]).toBe(Math.fround(att(0, 1, 1, 0)));
    expect(data.meanMap(0, 1, out)).toBe(out);
    expect(out[0]).toBe(mean[(0 * Q + 1) * P]);
  });

  it("rejects selections that do not exist", () => {
    expect(data.validSelection(1, MEAN)).toBe(true);
    expect(data.validSelection(MEAN, 2)).toBe(true);
    expect(data.validSelection(2, 0)).toBe(false);
    expect(data.validSelection(0, 3)).toBe(false);
    expect(data.validSelection(0, -2)).toBe(false);
    expect(data.validSelection(-1, MEAN)).toBe(false); // −1 is not the mean any more: "mean" is
    expect(() => data.meanMap(2, 0)).toThrow(RangeError);
    expect(() => data.meanMap(0, Q)).toThrow(RangeError);
    expect(() => data.meanColumn(0, P)).toThrow(RangeError);
  });
});

describe("attention maps (uint8 envelopes: within half a quantisation step)", () => {
  it("decodes rows lazily to within scale / 2", () => {
    for (let l = 0; l < L; l++) {
      const values = Array.from({ length: H * Q * P }, (_, i) => att(l, Math.floor(i / (Q * P)), Math.floor(i / P) % Q, i % P));
      const heads = fetchedHeads(l, encodeUint8(values, [H, Q, P], 2));
      for (let h = 0; h < H; h++)
        for (let q = 0; q < Q; q++) {
          const row = heads.row(h, q);
          const range = att(l, h, q, P - 1) - att(l, h, q, 0);
          row.forEach((v, p) => expect(Math.abs(v - att(l, h, q, p))).toBeLessThanOrEqual(range / 510 + 1e-7));
          const col = heads.column(h, 1);
          expect(col[q]).toBe(row[1]);
        }
    }
  });
});

describe("fallbacks and errors", () => {
  it("works with the head mean only: heads are fetched per layer, H comes from the metadata", () => {
    const data = buildData(source(makeState()));
    expect([data.L, data.H]).toEqual([L, H]);
    expect(data.validSelection(0, MEAN)).toBe(true);
    expect(data.validSelection(0, 0)).toBe(true);
    expect(data.validSelection(MEAN, MEAN)).toBe(true); // mean over layers
    const meanOverLayers = data.meanMap(MEAN, 1);
    const want = [0, 1, 2, 3].map((p) => (data.meanMap(0, 1)[p]! + data.meanMap(1, 1)[p]!) / 2);
    want.forEach((v, p) => expect(meanOverLayers[p]).toBeCloseTo(v, 6));
    const column = data.meanColumn(MEAN, 2);
    [0, 1, 2, 3].forEach((q) => expect(column[q]).toBeCloseTo((data.meanColumn(0, 2)[q]! + data.meanColumn(1, 2)[q]!) / 2, 6));
  });

  it("treats empty attention traits as no data", () => {
    const data = buildData(source(makeState({ withMean: false })));
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
      /token_layout\.query_positions holds 99, outside the positions 0…9/,
    );
    expect(bad((s) => (s.attention_mean = { ...s.attention_mean, shape: [L, Q * P, 1] }))).toThrow(/attention_mean has shape/);
    expect(bad((s) => (s.attention_mean = { ...s.attention_mean, shape: [L, Q, P + 1] }))).toThrow(/attention_mean: float32 tensor/);
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
