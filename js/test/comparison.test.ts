// @vitest-environment happy-dom
/**
 * The comparison widget in happy-dom: the pure helpers (relative depth, pair and slice lookup, divergent pairs),
 * the `comparison_data` parser, and two hand-made panes linked through their stores (tokens, patches, layers,
 * method) with pane A synced to the model. Canvas pixels are checked in real Chromium (tests/browser/).
 */

import { afterEach, describe, expect, it, vi } from "vitest";
import { buildComparison, divergentPairs, pairAt, relativeLayer, sliceAt, type ComparisonModel } from "../src/comparison";
import { createStaticModel } from "../src/host/static-host";
import { MEAN } from "../src/protocol";
import { parseComparison } from "../src/protocol/comparison";
import { SYNC_DELAY_MS } from "../src/sync";
import { makeState } from "./fixtures";
import { encodeFloat32, float32Bytes, int32Bytes } from "./helpers";

// The fixture state: 10 positions, answer at 9 (query rows 1, 7, 8, 9), a 2×2 image grid of 200×120 px, L = 2.
const K = 2;
const G = 4; // a 2×2 grid of cells, one per token box
const S = 2;

function comparisonData(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const diff = new Float32Array((S + 1) * K * G);
  for (let i = 0; i < diff.length; i++) diff[i] = (i % 7) - 3;
  return {
    v: 1,
    n_layers: [2, 2],
    answers: ["A", "A"],
    answer_changed: false,
    delta_logprob: 0,
    top_k: 0.1,
    pairs: {
      position_a: int32Bytes([8, 9]),
      position_b: int32Bytes([8, 9]),
      same_text: new Uint8Array([1, 1]),
      logprob_a: float32Bytes([-1, -2]),
      logprob_b: float32Bytes([-1.5, -2]),
    },
    links_a: int32Bytes([0, 1, -1, -1, -1, -1, 6, 7, 8, 9]),
    links_b: int32Bytes([0, 1, -1, -1, -1, -1, 6, 7, 8, 9]),
    grid: { shapes: [[2, 2]], shared: new Uint8Array([1, 1, 0, 1]) },
    methods: {
      attention: {
        label: "Attention",
        signed: false,
        rows: "queries",
        layers_a: [0, 1],
        layers_b: [0, 1],
        diff: encodeFloat32(diff, [S + 1, K, G]),
        js: float32Bytes([0.1, 0.4, 0.3, Number.NaN]),
        spearman: float32Bytes([0.9, 0.2, 0.5, Number.NaN]),
        iou_topk: float32Bytes([1, 0, 0.5, Number.NaN]),
      },
    },
    ...overrides,
  };
}

describe("helpers", () => {
  it("pairs layers by relative depth, the mean with the mean", () => {
    expect(relativeLayer(2, 3, 3)).toBe(2);
    expect([0, 1, 2].map((l) => relativeLayer(l, 3, 5))).toEqual([0, 2, 4]);
    expect([0, 1, 2, 3, 4].map((l) => relativeLayer(l, 5, 3))).toEqual([0, 1, 1, 2, 2]);
    expect(relativeLayer(MEAN, 3, 5)).toBe(MEAN);
    expect(relativeLayer(7, 1, 4)).toBe(3);
  });

  it("finds the pair a focus shows, the slice of a layer and the most divergent pairs", () => {
    const c = parseComparison(comparisonData(), 10, 10);
    const method = c.methods.get("attention")!;
    expect(pairAt(c, 8, "queries")).toBe(1); // the query at 8 predicts the token at 9
    expect(pairAt(c, 8, "targets")).toBe(0);
    expect(pairAt(c, null, "queries")).toBe(-1);
    expect([sliceAt(method, 0), sliceAt(method, 1), sliceAt(method, MEAN), sliceAt(method, 5)]).toEqual([0, 1, 2, 1]);
    expect(divergentPairs(c, method, 0).map((e) => e.pair)).toEqual([1, 0]);
    expect(divergentPairs(c, method, 1).map((e) => e.pair)).toEqual([0]); // NaN is left out
    const mean = divergentPairs(c, method, S);
    expect(mean.map((e) => [e.pair, e.js])).toEqual([
      [1, expect.closeTo(0.4, 6)],
      [0, expect.closeTo(0.2, 6)],
    ]);
  });

  it("rejects payloads that break the protocol, naming the field", () => {
    expect(() => parseComparison(comparisonData({ links_a: int32Bytes([0]) }), 10, 10)).toThrow(/comparison_data.links_a has 1 entries/);
    expect(() => parseComparison(comparisonData({ grid: { shapes: [[2, 3]], shared: new Uint8Array(4) } }), 10, 10)).toThrow(
      /grid.shared has 4 entries, expected 6/,
    );
    const methods = { attention: { ...(comparisonData().methods as Record<string, Record<string, unknown>>).attention, layers_b: [0] } };
    expect(() => parseComparison(comparisonData({ methods }), 10, 10)).toThrow(/layers_b has 1 entries/);
    expect(() => parseComparison(null, 10, 10)).toThrow(/comparison_data must be a dict/);
  });
});

describe("linked panes", () => {
  let cleanup: (() => void) | null = null;
  afterEach(() => {
    cleanup?.();
    cleanup = null;
    vi.useRealTimers();
  });

  function mount(overrides: Record<string, unknown> = {}) {
    vi.stubGlobal("createImageBitmap", undefined);
    const model = createStaticModel({
      kind: "comparison",
      revision: 1,
      side_a: makeState(),
      side_b: makeState(),
      comparison_data: comparisonData(overrides),
      layer: 1,
      head: MEAN,
      pinned: -1,
      method: "attention",
    });
    const el = document.createElement("div");
    document.body.append(el);
    const view = buildComparison(model as unknown as ComparisonModel, el);
    cleanup = () => {
      view.dispose();
      el.remove();
    };
    return { model, view, el };
  }

  it("a token hovered or pinned in one pane is focused in the other, both ways", () => {
    const { view, el } = mount();
    const [a, b] = view.panes;
    a.store.set({ hoverToken: 8 });
    expect(b.store.get().hoverToken).toBe(8);
    expect(el.querySelector<HTMLElement>(".mmviz-comparison")!.dataset.pair).toBe("1");
    b.store.set({ hoverToken: 7 });
    expect(a.store.get().hoverToken).toBe(7);
    a.store.set({ hoverToken: 3 }); // an image position: no link
    expect(b.store.get().hoverToken).toBeNull();
    b.store.set({ pinnedToken: 9 });
    expect(a.store.get().pinnedToken).toBe(9);
  });

  it("a patch hovered in one pane is the patch over the same pixels in the other", () => {
    const { view } = mount();
    const [a, b] = view.panes;
    a.store.set({ hoverPatch: 3 });
    expect(b.store.get().hoverPatch).toBe(3);
    b.store.set({ hoverPatch: 1 });
    expect(a.store.get().hoverPatch).toBe(1);
    a.store.set({ hoverPatch: null });
    expect(b.store.get().hoverPatch).toBeNull();
  });

  it("the layer and the method follow, and pane A is synced to the model", () => {
    vi.useFakeTimers();
    const { view, model, el } = mount();
    const [a, b] = view.panes;
    expect(b.store.get().layer).toBe(1);
    a.store.set({ layer: 0 });
    expect(b.store.get().layer).toBe(0);
    b.store.set({ layer: MEAN });
    expect(a.store.get().layer).toBe(MEAN);
    expect(el.querySelector<HTMLElement>(".mmviz-comparison")!.dataset.slice).toBe(String(S));
    vi.advanceTimersByTime(SYNC_DELAY_MS + 1);
    expect(model.get("layer")).toBe(MEAN);
    model.set("layer", 1); // Python moves A: B follows
    expect(a.store.get().layer).toBe(1);
    expect(b.store.get().layer).toBe(1);
  });

  it("lists the most divergent pairs; a click pins the pair in both panes", () => {
    const { view, el } = mount();
    const [a, b] = view.panes;
    const items = [...el.querySelectorAll<HTMLButtonElement>(".mmviz-divergent-pair")];
    expect(items.map((i) => i.dataset.pair)).toEqual(["0"]); // layer 1: pair 1's JS is NaN
    items[0]!.click();
    expect(a.store.get().pinnedToken).toBe(7); // the query row predicting position 8
    expect(b.store.get().pinnedToken).toBe(7);
    expect(el.querySelector<HTMLElement>(".mmviz-diff-heat")!.dataset.pair).toBe("0");
  });
});
