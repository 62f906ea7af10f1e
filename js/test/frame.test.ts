/** The derived frame: which map every view draws, for attention (lazy heads), methods, words and the overview. */

import { describe, expect, it } from "vitest";
import { Channel } from "../src/channel";
import { buildData } from "../src/data";
import { Extras } from "../src/extras";
import { FrameBuilder } from "../src/frame";
import { createStaticModel } from "../src/host/static-host";
import { NO_METHODS, type MethodContext } from "../src/method-state";
import { readMaps } from "../src/methods";
import { MEAN } from "../src/protocol";
import { INITIAL_STATE, type ViewState } from "../src/store";
import { statRows } from "../src/views/overview";
import { answer, att, H, headsPayload, LAYERED, makeMethodsState, makeState, meanArray, P, Q, source, TOKENS } from "./fixtures";
import { encodeFloat32 } from "./helpers";

const st = (patch: Partial<ViewState>): ViewState => ({ ...INITIAL_STATE, layer: 1, ...patch });
const flush = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** Frames over the hand-made state; per-head maps are fetched from a fake kernel (`answer`). */
function lazy(state: Record<string, unknown> = makeState()) {
  const data = buildData(source(state));
  const model = createStaticModel(state, { kernel: true });
  const extras = new Extras({ H, Q, P, n: TOKENS.length }, new Channel(model));
  return { data, model, extras, frames: new FrameBuilder(data, extras) };
}

describe("attention frames", () => {
  it("draws the head mean from the first payload, a head after its layer arrives", async () => {
    const { model, frames } = lazy();
    const mean = meanArray();
    const f0 = frames.build(st({ hoverToken: 7 }), NO_METHODS);
    expect(f0.rows).toEqual([1]);
    expect([...f0.map!]).toEqual([...mean.slice((1 * Q + 1) * P, (1 * Q + 2) * P)]);
    const f1 = frames.build(st({ hoverToken: 7, head: 2 }), NO_METHODS);
    expect(f1.map).toBe(null);
    expect(f1.waiting).toMatch(/loading the heads of layer 1/);
    expect(model.sent.at(-1)!.content).toMatchObject({ type: "fetch", what: "heads", layer: 1 });
    answer(model, headsPayload(1));
    await flush();
    const f2 = frames.build(st({ hoverToken: 7, head: 2 }), NO_METHODS);
    expect(f2.waiting).toBe(null);
    [0, 1, 2, 3].forEach((p) => expect(f2.map![p]).toBeCloseTo(att(1, 2, 1, p), 6));
    expect(f2.scale.range).toBeCloseTo(att(1, 2, 1, 3), 6);
  });

  it("says a layer's heads are not in an exported page instead of loading them forever", () => {
    const data = buildData(source(makeState()));
    const extras = new Extras({ H, Q, P, n: TOKENS.length }, null, { [`heads:${MEAN}`]: headsPayload(0) });
    const frames = new FrameBuilder(data, extras);
    const missing = frames.build(st({ hoverToken: 7, head: 2 }), NO_METHODS);
    expect(missing.map).toBe(null);
    expect(missing.waiting).toMatch(/the heads of layer 1 are not available: not in this exported page .*to_html\(heads=/);
    const carried = frames.build(st({ hoverToken: 7, head: 2, layer: MEAN }), NO_METHODS);
    expect(carried.waiting).toBe(null);
  });

  it("previews an overview cell, averages over layers, and colours with the chosen scale", async () => {
    const { model, frames } = lazy();
    const preview = frames.build(st({ hoverToken: 8, preview: { layer: 0, head: 1 } }), NO_METHODS);
    expect([preview.layer, preview.head, preview.previewing]).toEqual([0, 1, true]);
    expect(model.sent.at(-1)!.content).toMatchObject({ layer: 0 });
    const all = frames.build(st({ hoverToken: 8, layer: MEAN, scale: "gamma", gamma: 0.3 }), NO_METHODS);
    const mean = meanArray();
    [0, 1, 2, 3].forEach((p) => expect(all.map![p]).toBeCloseTo((mean[(2) * P + p]! + mean[(Q + 2) * P + p]!) / 2, 6));
    expect(all.scale).toMatchObject({ mode: "gamma", gamma: 0.3 });
    const headAll = frames.build(st({ hoverToken: 8, layer: MEAN, head: 0 }), NO_METHODS);
    expect(headAll.waiting).toMatch(/every layer/);
    expect(model.sent.at(-1)!.content).toMatchObject({ type: "fetch", what: "heads", layer: MEAN });
    answer(model, encodeFloat32(Array.from({ length: H * Q * P }, (_, i) => i / 100), [H, Q, P]) as never);
    await flush();
    expect(frames.build(st({ hoverToken: 8, layer: MEAN, head: 0 }), NO_METHODS).map).not.toBe(null);
  });

  it("merges a word's pieces: the map is the mean of their rows", async () => {
    const s = makeState();
    const layout = s.token_layout as Record<string, unknown>;
    layout.word_start = Uint8Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 1]); // " what" + "?" are one word
    const { model, frames } = lazy(s);
    frames.build(st({ hoverToken: 7, words: true, head: 1 }), NO_METHODS);
    answer(model, headsPayload(1));
    await flush();
    const f = frames.build(st({ hoverToken: 7, words: true, head: 1 }), NO_METHODS);
    expect(f.focusPositions).toEqual([7, 8]);
    expect(f.rows).toEqual([1, 2]);
    [0, 1, 2, 3].forEach((p) => expect(f.map![p]).toBeCloseTo((att(1, 1, 1, p) + att(1, 1, 2, p)) / 2, 6));
    expect(frames.build(st({ hoverToken: 7, head: 1 }), NO_METHODS).focusPositions).toEqual([7]);
  });

  it("tints tokens by the drawn map's column at the hovered patch", async () => {
    const { data, model, frames } = lazy();
    frames.build(st({ hoverPatch: 2, head: 0 }), NO_METHODS);
    answer(model, headsPayload(1));
    await flush();
    const f = frames.build(st({ hoverPatch: 2, head: 0 }), NO_METHODS);
    expect([...f.columnPositions]).toEqual([...data.queryPositions]);
    [0, 1, 2, 3].forEach((q) => expect(f.column![q]).toBeCloseTo(att(1, 0, q, 2), 6));
  });
});

describe("method frames", () => {
  const context = (state: Record<string, unknown>): MethodContext => {
    const data = buildData(source(state));
    return { ...NO_METHODS, maps: readMaps(state.maps, data.P, data.n).maps, mapsGeneration: 1 };
  };

  it("uses the layer's slice of a layered map, and the mean of the slices for all layers", () => {
    const state = makeMethodsState(["layered"]);
    const data = buildData(source(state));
    const m = context(state);
    const frames = new FrameBuilder(data, null);
    const at0 = frames.build(st({ method: "layered", layer: 0, hoverToken: 9 }), m);
    LAYERED.slice(0, 4).forEach((v, p) => expect(at0.map![p]).toBeCloseTo(v, 2));
    const all = frames.build(st({ method: "layered", layer: MEAN, hoverToken: 9 }), m);
    [0, 1, 2, 3].forEach((p) => expect(all.map![p]).toBeCloseTo((LAYERED[p]! + LAYERED[4 + p]!) / 2, 2));
    expect(all.slice).toMatchObject({ slice: -1 });
  });
});

describe("overview rows", () => {
  it("averages over the focused rows, else the answer's rows", () => {
    const data = buildData(source(makeState()));
    expect(statRows(data, [7])).toEqual({ rows: [1], which: "focus" });
    expect(statRows(data, [])).toEqual({ rows: [2, 3], which: "answer" }); // positions 8 (predicts 9) and 9
    expect(statRows(data, [0])).toEqual({ rows: [2, 3], which: "answer" }); // a token without a row
  });
});
