import { describe, expect, it } from "vitest";
import {
  colorFor,
  cssGradient,
  LUT_SIZE,
  lutColor,
  lutIndexFor,
  lutIndexOf,
  relativeLuminance,
  textColorOn,
  toHex,
  VIRIDIS,
} from "../src/colormap";

/** CIE L* of an sRGB colour. */
function lightness(rgb: [number, number, number]): number {
  const y = relativeLuminance(rgb);
  return y > 216 / 24389 ? 116 * Math.cbrt(y) - 16 : (24389 / 27) * y;
}

describe("viridis LUT", () => {
  it("has 256 RGB entries", () => {
    expect(LUT_SIZE).toBe(256);
    expect(VIRIDIS.length).toBe(256 * 3);
  });

  it("matches viridis at the endpoints and the middle", () => {
    expect(toHex(colorFor(0))).toBe("#440154");
    expect(toHex(colorFor(1))).toBe("#fde725");
    expect(toHex(lutColor(128))).toBe("#21918c"); // matplotlib viridis(128/255)
  });

  it("has (near-)monotone lightness: never drops by more than 8-bit rounding, and rises overall", () => {
    let prev = lightness(lutColor(0));
    for (let i = 1; i < LUT_SIZE; i++) {
      const l = lightness(lutColor(i));
      expect(l).toBeGreaterThan(prev - 0.05);
      prev = l;
    }
    for (let i = 4; i < LUT_SIZE; i += 4) {
      expect(lightness(lutColor(i))).toBeGreaterThan(lightness(lutColor(i - 4)));
    }
    expect(lightness(colorFor(1)) - lightness(colorFor(0))).toBeGreaterThan(70);
  });

  it("round-trips through lutIndexOf", () => {
    for (let i = 0; i <= 1000; i++) {
      const t = i / 1000;
      const c = colorFor(t);
      const idx = lutIndexOf(...c);
      expect(lutColor(idx)).toEqual(c); // identical colour (two pairs of LUT entries coincide in 8 bits)
      expect(Math.abs(idx - lutIndexFor(t))).toBeLessThanOrEqual(1);
    }
    for (let i = 0; i < LUT_SIZE; i++) expect(lutColor(lutIndexOf(...lutColor(i)))).toEqual(lutColor(i));
  });

  it("finds the nearest entry for colours off the LUT", () => {
    const [r, g, b] = lutColor(200);
    expect(lutIndexOf(r + 1, g - 1, b)).toBeGreaterThanOrEqual(199);
    expect(lutIndexOf(r + 1, g - 1, b)).toBeLessThanOrEqual(201);
  });

  it("clamps t and maps NaN to the low end", () => {
    expect(colorFor(-3)).toEqual(colorFor(0));
    expect(colorFor(7)).toEqual(colorFor(1));
    expect(colorFor(-Infinity)).toEqual(colorFor(0));
    expect(colorFor(Infinity)).toEqual(colorFor(1));
    expect(colorFor(Number.NaN)).toEqual(colorFor(0));
    expect(lutIndexFor(0.5)).toBe(128);
  });

  it("builds a CSS gradient from the LUT", () => {
    const g = cssGradient();
    expect(g.startsWith("linear-gradient(to right, #440154 0%")).toBe(true);
    expect(g.endsWith("#fde725 100%)")).toBe(true);
  });

  it("picks readable text colours", () => {
    expect(textColorOn(colorFor(0))).toBe("#fff");
    expect(textColorOn(colorFor(1))).toBe("#000");
  });
});
