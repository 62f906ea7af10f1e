/**
 * The protocol parsers on what the Inspector sends (tests/fixtures/payloads_v1.json): one parser per Python
 * payload function, the payloads consistent with each other, and the shared validators' messages.
 */

import { describe, expect, it } from "vitest";
import { decodeEnvelope } from "../src/codec";
import {
  fetchedPayload,
  fetchRequest,
  isImageKind,
  KIND_QUERY,
  MEAN,
  parseCatalogue,
  parseChoice,
  parseDataTraits,
  parseHeads,
  parseLens,
  parseMap,
  parseProjection,
  parseSelection,
  replyError,
  replyHeader,
  selectionTraits,
} from "../src/protocol";
import { count, expectLength, expectShape, envelope, int32Field, record } from "../src/protocol/validate";
import { realFetched, realState, REAL_COMPUTED } from "./fixtures";
import { encodeFloat32 } from "./helpers";

const state = realState([...REAL_COMPUTED]);
const traits = parseDataTraits((key) => state[key]);
const { layout, meta } = traits;
const n = traits.tokens.length;
const Q = layout.queryPositions.length;
const P = layout.imagePositions.length;
const L = meta.n_layers;
const H = meta.n_heads;

/** A fetched payload of the recorded trace, through the reply path. */
const fetched = (key: string): unknown => fetchedPayload(realFetched(key, "r"));

describe("the first render's traits (layout_payload, attention_mean, head_stats, tokens, images, meta)", () => {
  it("parse, and agree with each other and with the metadata", () => {
    expect(n).toBeGreaterThan(0);
    expect(layout.kinds).toHaveLength(n);
    expect([...layout.imagePositions].every((pos) => isImageKind(layout.kinds[pos]!) || layout.kinds[pos] === KIND_QUERY)).toBe(true);
    expect(layout.boxes).toHaveLength(4 * P);
    expect(layout.images).toHaveLength(traits.imageBytes.length);
    expect(traits.mean!.shape).toEqual([L, Q, P]);
    expect(traits.headStats!.shape).toEqual([2, L, H, Q]);
    expect(layout.answerStart).toBeLessThan(n);
    expect(Number.isFinite(layout.logprobs[layout.answerStart]!)).toBe(true);
    expect(Number.isNaN(layout.logprobs[0]!)).toBe(true);
    expect(meta.extras).toEqual({ heads: true, lens: true, projection: true });
  });

  it("use the wire's vocabulary for the selection: an index or \"mean\"", () => {
    expect(state.head).toBe(MEAN);
    expect(parseSelection((key) => state[key], L, H, n)).toEqual({ layer: L - 1, head: MEAN, pinnedToken: null });
  });
});

describe("heads_payload (fetched heads)", () => {
  it("parses every layer's heads, whose mean over heads is the attention_mean of that layer", () => {
    const mean = traits.mean!;
    for (let l = 0; l < L; l++) {
      const heads = parseHeads(fetched(`heads:${l}`), H, Q, P);
      for (const q of [0, Q - 1]) {
        for (let p = 0; p < P; p += 7) {
          let sum = 0;
          for (let h = 0; h < H; h++) sum += heads.at((h * Q + q) * P + p);
          // Both sides are uint8 with one range per row: a few quantisation steps apart at most.
          expect(Math.abs(sum / H - mean.at((l * Q + q) * P + p))).toBeLessThan(0.02);
        }
      }
    }
  });

  it("parses the heads' mean over layers (layer \"mean\"), the mean of every layer's heads", () => {
    const all = parseHeads(fetched("heads:mean"), H, Q, P);
    const layers = Array.from({ length: L }, (_, l) => parseHeads(fetched(`heads:${l}`), H, Q, P));
    for (let i = 0; i < all.size; i += 13) {
      const want = layers.reduce((sum, r) => sum + r.at(i), 0) / L;
      expect(Math.abs(all.at(i) - want)).toBeLessThan(0.02);
    }
    expect(() => parseHeads(fetched("heads:0"), H, Q, P + 1)).toThrow(/heads payload has shape/);
  });
});

describe("lens_payload and projection_payload (fetched)", () => {
  it("parse the lens: one row per depth (embeddings and every layer), indices inside the vocabulary", () => {
    const lens = parseLens(fetched("lens"), n);
    expect(lens.depths).toBe(L + 1);
    expect(lens.top).toHaveLength(lens.depths * n * lens.k);
    expect(lens.topProbs.every((p) => p >= 0 && p <= 1.001)).toBe(true);
    expect(lens.targetRanks.every((r) => r >= 0)).toBe(true);
    expect(() => parseLens(fetched("lens"), n + 1)).toThrow(/lens covers/);
  });

  it("parse the projection: one frame for every depth", () => {
    const projection = parseProjection(fetched("projection"), n);
    expect(projection.depths).toBe(L + 1);
    expect(projection.coords).toHaveLength(projection.depths * n * 2);
    expect(projection.bounds[1]).toBeGreaterThan(projection.bounds[0]);
    expect([...projection.isImage].filter((v) => v === 1)).toHaveLength(P);
  });
});

describe("method_catalogue and map_payload", () => {
  it("parse the catalogue in menu order, attention first and computed", () => {
    const catalogue = parseCatalogue(state.methods);
    expect(catalogue[0]).toMatchObject({ name: "attention", computed: true, layered: true });
    for (const name of REAL_COMPUTED) expect(catalogue.find((m) => m.name === name)?.computed).toBe(true);
    expect(new Set(catalogue.map((m) => m.cost))).toEqual(new Set(["instant", "fast", "slow"]));
  });

  it("parse every computed map: rows for the answer tokens, signed and per-layer maps as Python says", () => {
    const maps = state.maps as Record<string, unknown>;
    for (const name of REAL_COMPUTED) {
      const map = parseMap(name, maps[name], P, n);
      expect(map.rows).toBe("targets");
      expect([...map.positions].every((pos) => pos >= layout.answerStart)).toBe(true);
      expect(map.values.shape.slice(-2)).toEqual([map.positions.length, P]);
    }
    expect(parseMap("gradient_x_input", maps.gradient_x_input, P, n).signed).toBe(true);
    const layered = parseMap("grad_cam", maps.grad_cam, P, n);
    expect(layered.layers).toEqual(Array.from({ length: L }, (_, l) => l));
    expect(parseMap("relevancy", maps.relevancy, P, n).layers).toBe(null);
  });
});

describe("messages", () => {
  it("ask for a layer's heads by index or \"mean\"; read the reply's id, error and payload", () => {
    expect(fetchRequest("heads", MEAN)).toEqual({ type: "fetch", what: "heads", layer: "mean" });
    expect(fetchRequest("lens")).toEqual({ type: "fetch", what: "lens" });
    const reply = realFetched("heads:mean", "r7");
    expect(reply.content.layer).toBe(MEAN); // the kernel echoes the layer asked for
    expect(replyHeader(reply.content)).toEqual({ request: "r7", type: "fetched" });
    expect(replyHeader({ type: "fetched" })).toBe(null);
    expect(replyError(reply)).toBe(null);
    expect(decodeEnvelope(fetchedPayload(reply)).shape).toEqual([H, Q, P]);
    const refused = { content: { type: "fetched", request: "r8", ok: false, error: "layer 9 is out of range" }, buffers: [] };
    expect(replyError(refused)).toBe("layer 9 is out of range");
    expect(() => fetchedPayload(refused)).toThrow("layer 9 is out of range");
    expect(replyError({ content: { ok: false }, buffers: [] })).toBe("unknown error");
  });
});

describe("selection traits", () => {
  it("read an index or \"mean\", and fall back for what the data cannot show", () => {
    expect(parseChoice(MEAN, 4)).toBe(MEAN);
    expect(parseChoice(2, 4)).toBe(2);
    expect(parseChoice(4, 4)).toBe(null);
    expect(parseChoice(-1, 4)).toBe(null); // −1 is no longer the mean
    expect(parseChoice("2", 4)).toBe(null);
    const read = (values: Record<string, unknown>) => parseSelection((key) => values[key], 4, 3, 10);
    expect(read({ layer: MEAN, head: 2, pinned: 7 })).toEqual({ layer: MEAN, head: 2, pinnedToken: 7 });
    expect(read({ layer: 9, head: 5, pinned: 10 })).toEqual({ layer: 3, head: MEAN, pinnedToken: null });
    expect(read({ layer: -1, head: -1, pinned: -1 })).toEqual({ layer: 0, head: MEAN, pinnedToken: null });
    expect(read({})).toEqual({ layer: 0, head: MEAN, pinnedToken: null });
  });

  it("write the traits Python validates: \"mean\" or an index, pinned −1 for none", () => {
    expect(selectionTraits({ layer: MEAN, head: MEAN, pinnedToken: null })).toEqual({ layer: "mean", head: "mean", pinned: -1 });
    expect(selectionTraits({ layer: 2, head: 1, pinnedToken: 5, method: "rise" })).toEqual({ layer: 2, head: 1, pinned: 5, method: "rise" });
  });
});

describe("validators", () => {
  it("throw an Error naming the field", () => {
    expect(() => record([], "lens")).toThrow("mmviz: lens must be a dict");
    expect(() => count(-1, "lens.k")).toThrow("mmviz: lens.k must be a count");
    expect(() => expectLength(3, 4, "token_layout.kinds")).toThrow("mmviz: token_layout.kinds has 3 entries, expected 4");
    expect(() => int32Field({ top: [1] }, "top", "lens")).toThrow("mmviz: lens.top must be bytes (int32)");
    expect(() => int32Field({ top: new Uint8Array(8) }, "top", "lens", 3)).toThrow("mmviz: lens.top has 2 entries, expected 3");
    expect(() => envelope({ v: 2 }, "attention_mean")).toThrow(/^mmviz: attention_mean: unsupported tensor envelope version 2/);
    const reader = envelope(encodeFloat32([1, 2, 3, 4, 5, 6], [2, 3]), "x");
    expect(expectShape(reader, ["L", 3], "x")).toBe(reader);
    expect(() => expectShape(reader, ["L", 2], "x")).toThrow("mmviz: x has shape [2, 3], expected [L, 2]");
  });
});
