// @vitest-environment happy-dom
/**
 * The token strip's Δ log p bars (the run the Interventions panel shows, one compact bar under each answer chip):
 * values and widths against the closed form (scale = max(largest |Δ|, 1 nat)), a word's bar the sum of its pieces',
 * the tooltip, and clearing. The panel's wiring is tested in interventions.test.ts.
 */

import { describe, expect, it } from "vitest";
import { buildData } from "../src/data";
import { Store } from "../src/store";
import { TokenStrip } from "../src/views/token-strip";
import { makeState, source } from "./fixtures";

const HOSTILE = "<img src=x onerror=window.__pwned=1>";

function strip(words: boolean): TokenStrip {
  const s = makeState();
  const layout = s.token_layout as Record<string, unknown>;
  layout.answer_start = 7; // " what", "?", "A" are the answer
  layout.word_start = Uint8Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 1]); // " what" + "?" are one word
  const t = new TokenStrip(buildData(source(s)), new Store(), words);
  document.body.append(t.el);
  return t;
}

const values = new Map([
  [7, -1],
  [8, -0.5],
  [9, 2],
]);

function bars(t: TokenStrip): [number, number, number, boolean][] {
  return [...t.el.querySelectorAll<HTMLElement>(".mmviz-has-delta")].map((chip) => {
    const fill = chip.querySelector<HTMLElement>(".mmviz-delta-fill")!;
    return [Number(chip.dataset.pos), Number(chip.dataset.delta), Number.parseFloat(fill.style.width), fill.classList.contains("mmviz-neg")];
  });
}

describe("Δ bars in the token strip", () => {
  it("one bar per answer chip, scaled to the largest |Δ|, the value in the tooltip; null clears them", () => {
    const t = strip(false);
    const before = t.spanAt(9)!.title;
    t.showDeltas({ values, label: HOSTILE, key: "a" });
    expect(bars(t)).toEqual([
      [7, -1, 25, true],
      [8, -0.5, 12.5, true],
      [9, 2, 50, false],
    ]);
    expect(t.el.dataset.deltaScale).toBe("2");
    expect(t.spanAt(9)!.title).toBe(`${before} · Δ log p +2.000 under ${HOSTILE} (bar: ±2.00 nats full width, at least ±1)`);
    expect(t.el.querySelector("img")).toBeNull();
    expect(t.spanAt(9)!.textContent).toBe("A");
    t.showDeltas({ values: new Map([[9, 5]]), label: "b", key: "a" }); // same key: unchanged
    expect(bars(t).length).toBe(3);
    t.showDeltas(null);
    expect(bars(t)).toEqual([]);
    expect(t.el.querySelectorAll(".mmviz-delta").length).toBe(0);
    expect(t.spanAt(9)!.title).toBe(before);
    expect(t.spanAt(9)!.dataset.delta).toBeUndefined();
  });

  it("a word's bar is the sum of its pieces' Δ; tiny Δ draw tiny bars (the 1-nat floor)", () => {
    const t = strip(true);
    t.showDeltas({ values, label: "r", key: "a" });
    expect(bars(t)).toEqual([
      [7, -1.5, 37.5, true],
      [9, 2, 50, false],
    ]);
    t.showDeltas({ values: new Map([[9, 0.001], [7, -0.0004], [8, NaN]]), label: "r", key: "b" });
    expect(t.el.dataset.deltaScale).toBe("1");
    expect(bars(t)).toEqual([
      [7, -0.0004, 0.02, true],
      [9, 0.001, 0.05, false],
    ]);
  });
});
