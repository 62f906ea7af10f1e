// @vitest-environment happy-dom
/**
 * The Features panel: its parsers (mmviz/widget/features.py's payloads), and the panel in the whole widget against
 * a fake kernel: the SAE codes fetched when the tab opens, the focused token's top units listed with hostile labels
 * as text, a click fetches the unit and shows its card, the clamp request's Δ log p drawn one bar per answer token.
 */

import { afterEach, describe, expect, it, vi } from "vitest";
import { createStaticModel } from "../src/host/static-host";
import { parseClamp, parseFeatures, parseFeaturesMeta, parseUnit } from "../src/protocol";
import { realData, realState } from "./fixtures";
import { encodeFloat32, int32Bytes } from "./helpers";
import { mountWidget } from "./mount";

const HOSTILE = "<img src=x onerror=window.__pwned=1>";

/** A float16 envelope (what Python sends) of small values exactly representable in half precision. */
function float16(values: number[], shape: number[]) {
  const bits = new Uint16Array(values.map((v) => ({ 0: 0x0000, 0.5: 0x3800, 1: 0x3c00, 2: 0x4000 })[v as 0 | 0.5 | 1 | 2]!));
  return { v: 1, dtype: "float16", shape, data: new Uint8Array(bits.buffer) };
}

/** An SAE payload over `n` positions: position p has latents p % 4 (value 2) and (p + 1) % 4 (value 1). */
function saePayload(n: number) {
  const indices: number[] = [];
  const values: number[] = [];
  for (let p = 0; p < n; p++) indices.push(p % 4, (p + 1) % 4), values.push(2, 1);
  return {
    v: 1,
    kind: "sae",
    layer: -1,
    width: 4,
    k: 2,
    n_positions: n,
    indices: int32Bytes(indices),
    values: float16(values, [n, 2]),
    labels: { "0": "red object", "1": HOSTILE, "9": "out of range: dropped" },
    reconstruction_error: float16(new Array<number>(n).fill(0.5), [n]),
  };
}

function unitPayload(n: number, unit: number) {
  const activation = Array.from({ length: n }, (_, p) => (p % 4 === unit ? 2 : 0));
  return {
    v: 1,
    kind: "sae",
    layer: -1,
    unit,
    activation: encodeFloat32(activation, [n]),
    card: { label: HOSTILE, top_tokens: ["red", "<b>"], top_logits: [3, 1], peak_position: unit, peak_activation: 2, active_positions: 5 },
  };
}

describe("features parsers", () => {
  const n = 6;
  it("read the top-k codes, labels in range and the reconstruction error", () => {
    const f = parseFeatures(saePayload(n), n);
    expect([f.kind, f.layer, f.width, f.k]).toEqual(["sae", -1, 4, 2]);
    expect([...f.indices.slice(0, 4)]).toEqual([0, 1, 1, 2]);
    expect([...f.values.slice(0, 2)]).toEqual([2, 1]);
    expect(f.labels.get(1)).toBe(HOSTILE);
    expect(f.labels.has(9)).toBe(false);
    expect([...f.reconstructionError!]).toEqual(new Array(n).fill(0.5));
  });

  it("name the broken field", () => {
    expect(() => parseFeatures(saePayload(n), n + 1)).toThrow(/covers 6 positions/);
    expect(() => parseFeatures({ ...saePayload(n), width: 1 }, n)).toThrow(/features.indices holds 1/);
    expect(() => parseFeatures({ ...saePayload(n), kind: "heads" }, n)).toThrow(/features.kind/);
    expect(() => parseFeatures({ ...saePayload(n), reconstruction_error: null }, n)).toThrow(/reconstruction_error/);
    expect(() => parseFeatures({ ...saePayload(n), indices: int32Bytes([0]) }, n)).toThrow(/features.indices has 1 entries/);
  });

  it("read a unit, a clamp and the meta", () => {
    const u = parseUnit(unitPayload(n, 1), n);
    expect([...u.activation]).toEqual([0, 2, 0, 0, 0, 2]);
    expect(u.card.label).toBe(HOSTILE);
    expect(() => parseUnit(unitPayload(n, 1), n + 2)).toThrow(/unit.activation holds 6 values/);
    const clamp = { v: 1, latent: 0, value: 0, positions: int32Bytes([4, 5]), delta: encodeFloat32([-3, 0.5], [2]), clean: encodeFloat32([-0.1, -1], [2]) };
    const c = parseClamp(clamp, n);
    expect([...c.delta]).toEqual([-3, 0.5]);
    expect(() => parseClamp({ ...clamp, positions: int32Bytes([9]) }, n)).toThrow(/clamp.positions holds 9/);
    expect(() => parseClamp({ ...clamp, delta: encodeFloat32([1], [1]) }, n)).toThrow(/clamp.delta has 1 entries/);
    expect(parseFeaturesMeta(undefined)).toEqual({ neurons: false, sae: null, k: 0 });
    expect(parseFeaturesMeta({ neurons: true, sae: { layer: 2, width: 8 }, k: 16 }).sae).toEqual({ layer: 2, width: 8 });
  });
});

describe("the Features panel", () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    while (cleanups.length > 0) cleanups.pop()!();
    vi.useRealTimers();
  });

  it("lists the focused token's latents, shows hostile labels as text, draws the unit and the clamp's Δ log p", async () => {
    const flush = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 0)); // extras repaint in a microtask
    const { data } = realData([]);
    const n = data.n;
    const state = realState([]);
    const meta = { ...(state.meta as Record<string, unknown>), features: { neurons: false, sae: { layer: -1, width: 4 }, k: 2 } };
    const model = createStaticModel({ ...state, meta }, { kernel: true });
    const { q, el, unmount } = mountWidget(model);
    cleanups.push(unmount);
    const last = () => model.sent.at(-1)!.content as Record<string, unknown>;
    q('.mmviz-tab[data-panel="features"]').click();
    expect(last()).toMatchObject({ type: "fetch", what: "sae" });
    expect(last().layer).toBeUndefined();
    model.receive({ type: "fetched", request: last().request, ok: true, what: "sae", payload: saePayload(n), buffer_paths: [] });
    await flush();

    const pos = [...Array(n).keys()].find((p) => p % 4 === 1 && data.kinds[p] === 0)!; // a text token listing latent 1 first
    q(`.mmviz-token[data-pos="${pos}"]`).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    const panel = q(".mmviz-features");
    expect(panel.dataset.pos).toBe(String(pos));
    expect(panel.dataset.units).toBe(`${pos % 4},${(pos + 1) % 4}`);
    expect(panel.dataset.recon).toBe("0.5000");
    const hostileRow = [...el.querySelectorAll<HTMLElement>(".mmviz-feature")].find((li) => li.dataset.unit === "1");
    expect(hostileRow!.querySelector(".mmviz-feature-label")!.textContent).toBe(HOSTILE);
    expect(el.querySelector("img")).toBeNull();

    // Look up latent 1 by number: its unit payload is fetched, its card shows the hostile label literally.
    const lookup = q<HTMLInputElement>(".mmviz-features-lookup");
    lookup.value = "1";
    q(".mmviz-features-show").click();
    expect(last()).toMatchObject({ type: "fetch", what: "unit", kind: "sae", unit: 1 });
    model.receive({ type: "fetched", request: last().request, ok: true, payload: unitPayload(n, 1), buffer_paths: [] });
    await flush();
    expect(panel.dataset.unit).toBe("1");
    expect(panel.dataset.unitReady).toBe("1");
    expect(q(".mmviz-features-label").textContent).toContain(HOSTILE);
    expect(el.querySelector("img, b")).toBeNull();
    // The token strip shows the unit's activation: positions with p % 4 === 1 are tinted at 2.
    const tinted = q(`.mmviz-token[data-pos="${[...Array(n).keys()].find((p) => p % 4 === 1 && data.kinds[p] === 0)}"]`);
    expect(tinted.dataset.value).toBe("2.000000");

    // Clamp: one request, then one sign-coloured bar per answer token.
    q(".mmviz-features-clamp").click();
    expect(last()).toMatchObject({ type: "clamp", latent: 1, value: 0 });
    expect(q(".mmviz-features-clamp-result").dataset.state).toBe("pending");
    const positions = [data.answerStart, data.answerStart + 1].filter((p) => p < n);
    const payload = {
      v: 1, latent: 1, value: 0, positions: int32Bytes(positions),
      delta: encodeFloat32(positions.map((_, i) => (i === 0 ? -2.5 : 0.25)), [positions.length]),
      clean: encodeFloat32(positions.map(() => -0.5), [positions.length]), description: "x",
    };  // prettier-ignore
    model.receive({ type: "clamped", request: last().request, ok: true, payload, buffer_paths: [] });
    expect(q(".mmviz-features-clamp-result").dataset.state).toBe("done");
    const rows = [...el.querySelectorAll<HTMLElement>(".mmviz-clamp-row")];
    expect(rows.map((r) => r.dataset.pos)).toEqual(positions.map(String));
    expect(rows[0]!.querySelector(".mmviz-clamp-bar")!.classList.contains("mmviz-neg")).toBe(true);
    expect(Number(rows[0]!.dataset.delta)).toBeCloseTo(-2.5);

    // A refused clamp is shown, not thrown.
    q(".mmviz-features-clamp").click();
    model.receive({ type: "clamped", request: last().request, ok: false, error: "no SAE was given <b>x</b>" });
    expect(q(".mmviz-features-clamp-result").dataset.state).toBe("error");
    expect(q(".mmviz-features-clamp-result").textContent).toContain("<b>x</b>");
  });

  it("is not built on a page without a kernel, nor when the trace has neither neurons nor an SAE", () => {
    const state = realState([]);
    const meta = { ...(state.meta as Record<string, unknown>), features: { neurons: true, sae: null, k: 16 } };
    const staticPage = mountWidget(createStaticModel({ ...state, meta }, { kernel: false }));
    cleanups.push(staticPage.unmount);
    expect(staticPage.el.querySelector('.mmviz-tab[data-panel="features"]')).toBeNull();
    const bare = { ...(state.meta as Record<string, unknown>), features: { neurons: false, sae: null, k: 16 } };
    const none = mountWidget(createStaticModel({ ...state, meta: bare }, { kernel: true }));
    cleanups.push(none.unmount);
    expect(none.el.querySelector('.mmviz-tab[data-panel="features"]')).toBeNull();
  });
});
