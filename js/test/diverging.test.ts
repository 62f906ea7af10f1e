/** The diverging colour map of signed maps, and colour scales. */

import { describe, expect, it } from "vitest";
import {
  colorFor,
  cssDivergingGradient,
  DIVERGING,
  DIVERGING_CENTRE,
  DIVERGING_SIZE,
  divergingColor,
  divergingColorFor,
  divergingIndexFor,
  divergingIndexOf,
  relativeLuminance,
  scaleColor,
  scaleOf,
  toHex,
} from "../src/colormap";

describe("diverging LUT (PuOr)", () => {
  it("has an odd number of entries with 0 on the near-white centre entry", () => {
    expect(DIVERGING_SIZE % 2).toBe(1);
    expect(DIVERGING.length).toBe(DIVERGING_SIZE * 3);
    expect(divergingIndexFor(0)).toBe(DIVERGING_CENTRE);
    expect(toHex(divergingColorFor(0))).toBe("#f7f7f7");
    expect(toHex(divergingColorFor(-1))).toBe("#2d004b"); // dark purple: negative
    expect(toHex(divergingColorFor(1))).toBe("#7f3b08"); // dark orange-brown: positive
  });

  it("clamps, and maps NaN to the centre", () => {
    expect(divergingIndexFor(-7)).toBe(0);
    expect(divergingIndexFor(7)).toBe(DIVERGING_SIZE - 1);
    expect(divergingIndexFor(Number.NaN)).toBe(DIVERGING_CENTRE);
  });

  it("gets darker away from 0 on both sides (up to 8-bit rounding), and the sides have different hues", () => {
    const lightness = (i: number): number => {
      const y = relativeLuminance(divergingColor(i));
      return y > 216 / 24389 ? 116 * Math.cbrt(y) - 16 : (24389 / 27) * y;
    };
    for (let i = 1; i <= DIVERGING_CENTRE; i++) {
      expect(lightness(i)).toBeGreaterThan(lightness(i - 1) - 0.3);
      const j = DIVERGING_SIZE - 1 - i;
      expect(lightness(j)).toBeGreaterThan(lightness(j + 1) - 0.3);
    }
    expect(lightness(DIVERGING_CENTRE)).toBeGreaterThan(lightness(DIVERGING_CENTRE - 32) + 5);
    expect(lightness(DIVERGING_CENTRE)).toBeGreaterThan(lightness(DIVERGING_CENTRE + 32) + 5);
    for (const t of [0.3, 0.6, 1]) {
      const [r, , b] = divergingColorFor(t);
      const [rn, gn, bn] = divergingColorFor(-t);
      expect(r).toBeGreaterThan(b); // orange
      expect(bn).toBeGreaterThan(gn); // purple
      expect(bn).toBeGreaterThan(rn - 1);
    }
  });

  it("inverts exactly (every entry is distinct)", () => {
    for (let i = 0; i < DIVERGING_SIZE; i++) expect(divergingIndexOf(...divergingColor(i))).toBe(i);
  });

  it("makes a CSS gradient from −1 (left) to +1 (right)", () => {
    const g = cssDivergingGradient();
    expect(g.startsWith("linear-gradient(to right, #2d004b 0%")).toBe(true);
    expect(g).toContain("#f7f7f7 50%");
    expect(g.endsWith("#7f3b08 100%)")).toBe(true);
  });
});

describe("colour scales", () => {
  it("uses max |value| for signed maps (symmetric range) and the max for the others", () => {
    expect(scaleOf([0.2, -0.5, 0.1], true)).toEqual({ signed: true, range: 0.5 });
    expect(scaleOf([0.2, -0.5, 0.1], false)).toEqual({ signed: false, range: 0.2 });
    expect(scaleOf([Number.NaN, Infinity, 0.3], false).range).toBe(0.3);
    expect(scaleOf([], true).range).toBe(0);
  });

  it("only counts masked-in entries (the columns on screen)", () => {
    expect(scaleOf([0.9, 0.2, -0.4], true, [0, 1, 1]).range).toBe(0.4);
    expect(scaleOf([0.9, 0.2, 0.4], false, new Uint8Array([0, 1, 0])).range).toBe(0.2);
  });

  it("colours values on the scale's map", () => {
    const signed = { signed: true, range: 0.5 };
    expect(scaleColor(signed, 0.5)).toEqual(divergingColorFor(1));
    expect(scaleColor(signed, -0.25)).toEqual(divergingColorFor(-0.5));
    expect(scaleColor(signed, 0)).toEqual(divergingColorFor(0));
    expect(scaleColor({ signed: false, range: 2 }, 1)).toEqual(colorFor(0.5));
    expect(scaleColor({ signed: false, range: 0 }, 1)).toEqual(colorFor(0));
  });
});
