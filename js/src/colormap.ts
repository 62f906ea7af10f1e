/**
 * Viridis (matplotlib's perceptually uniform, colour-blind-safe sequential map) as a 256-entry sRGB LUT.
 * The table is matplotlib's `viridis` sampled at its 256 entries and rounded to 8 bits.
 */

export type RGB = [number, number, number];

/** 256 × "rrggbb". */
const VIRIDIS_HEX =
  "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769" +
  "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a" +
  "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85" +
  "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b" +
  "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d" +
  "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e" +
  "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e" +
  "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d" +
  "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88" +
  "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81" +
  "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74" +
  "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863" +
  "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d" +
  "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32" +
  "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a" +
  "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725";

/** Flat r,g,b bytes of the 256 LUT entries. */
export const VIRIDIS: Uint8Array = (() => {
  const out = new Uint8Array(256 * 3);
  for (let i = 0; i < 256 * 3; i++) out[i] = parseInt(VIRIDIS_HEX.slice(2 * i, 2 * i + 2), 16);
  return out;
})();

export const LUT_SIZE = 256;

/** LUT index for t in [0, 1] (clamped; NaN maps to 0, callers draw NaN as transparent). */
export function lutIndexFor(t: number): number {
  if (!(t > 0)) return 0; // also NaN
  if (t >= 1) return LUT_SIZE - 1;
  return Math.round(t * (LUT_SIZE - 1));
}

/** The LUT entry at `index` (clamped). */
export function lutColor(index: number): RGB {
  const i = Math.max(0, Math.min(LUT_SIZE - 1, Math.round(index))) * 3;
  return [VIRIDIS[i]!, VIRIDIS[i + 1]!, VIRIDIS[i + 2]!];
}

/** Colour for t in [0, 1]; t is clamped. */
export function colorFor(t: number): RGB {
  return lutColor(lutIndexFor(t));
}

/** Index of the entry of the flat r,g,b table `lut` nearest to (r, g, b) (squared RGB distance; first on ties). */
function nearestEntry(lut: Uint8Array, r: number, g: number, b: number): number {
  let best = 0;
  let bestD = Infinity;
  for (let i = 0; i < lut.length / 3; i++) {
    const dr = lut[3 * i]! - r;
    const dg = lut[3 * i + 1]! - g;
    const db = lut[3 * i + 2]! - b;
    const d = dr * dr + dg * dg + db * db;
    if (d < bestD) {
      bestD = d;
      best = i;
      if (d === 0) break;
    }
  }
  return best;
}

/** Index of the viridis entry nearest to (r, g, b) (tests read canvas pixels back into values with it). */
export function lutIndexOf(r: number, g: number, b: number): number {
  return nearestEntry(VIRIDIS, r, g, b);
}

export function toHex([r, g, b]: RGB): string {
  return "#" + [r, g, b].map((c) => c.toString(16).padStart(2, "0")).join("");
}

/** CSS `rgb(...)` of t. */
export function cssColorFor(t: number): string {
  const [r, g, b] = colorFor(t);
  return `rgb(${r}, ${g}, ${b})`;
}

/** Relative luminance (WCAG) of an sRGB colour, 0…1. */
export function relativeLuminance([r, g, b]: RGB): number {
  const lin = (c: number): number => {
    const v = c / 255;
    return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

/** Black or white, whichever reads better on `bg`. */
export function textColorOn(bg: RGB): string {
  return relativeLuminance(bg) > 0.18 ? "#000" : "#fff";
}

/** A CSS linear-gradient for the legend (left = 0, right = 1). */
export function cssGradient(direction = "to right", stops = 17): string {
  const parts: string[] = [];
  for (let i = 0; i < stops; i++) {
    const t = i / (stops - 1);
    parts.push(`${toHex(colorFor(t))} ${(t * 100).toFixed(2).replace(/\.?0+$/, "")}%`);
  }
  return `linear-gradient(${direction}, ${parts.join(", ")})`;
}

/**
 * Diverging map for signed values: ColorBrewer PuOr (colour-blind safe), purple for negative, near-white at 0,
 * orange for positive. 255 entries so that 0 falls exactly on the centre entry (index 127); interpolated
 * linearly in sRGB between ColorBrewer's 11 anchors, whose lightness rises monotonically towards the centre.
 */
const PUOR_ANCHORS = [
  "2d004b", "542788", "8073ac", "b2abd2", "d8daeb", "f7f7f7", "fee0b6", "fdb863", "e08214", "b35806", "7f3b08",
];

export const DIVERGING_SIZE = 255;
export const DIVERGING_CENTRE = (DIVERGING_SIZE - 1) / 2;

/** Flat r,g,b bytes of the 255 diverging entries (index 0 = −1, 127 = 0, 254 = +1). */
export const DIVERGING: Uint8Array = (() => {
  const anchors = PUOR_ANCHORS.map((hex) => [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)));
  const out = new Uint8Array(DIVERGING_SIZE * 3);
  const segments = anchors.length - 1;
  for (let i = 0; i < DIVERGING_SIZE; i++) {
    const x = (i / (DIVERGING_SIZE - 1)) * segments;
    const k = Math.min(segments - 1, Math.floor(x));
    const f = x - k;
    for (let c = 0; c < 3; c++) out[3 * i + c] = Math.round(anchors[k]![c]! * (1 - f) + anchors[k + 1]![c]! * f);
  }
  return out;
})();

/** Diverging index of t in [−1, 1] (clamped; NaN → centre). */
export function divergingIndexFor(t: number): number {
  if (Number.isNaN(t)) return DIVERGING_CENTRE;
  const c = Math.max(-1, Math.min(1, t));
  return Math.round((c + 1) * DIVERGING_CENTRE);
}

export function divergingColor(index: number): RGB {
  const i = Math.max(0, Math.min(DIVERGING_SIZE - 1, Math.round(index))) * 3;
  return [DIVERGING[i]!, DIVERGING[i + 1]!, DIVERGING[i + 2]!];
}

/** Colour of t in [−1, 1] on the diverging map. */
export function divergingColorFor(t: number): RGB {
  return divergingColor(divergingIndexFor(t));
}

/** Index of the diverging entry nearest to (r, g, b). */
export function divergingIndexOf(r: number, g: number, b: number): number {
  return nearestEntry(DIVERGING, r, g, b);
}

/**
 * How values become colours: non-negative maps use viridis over [0, range]; signed maps use the diverging map
 * over [−range, range] with range = max(|min|, |max|), so 0 is always the neutral centre. `mode` reshapes the
 * relative value t = v / range before the lookup (for signed maps on |t|, keeping the sign): `linear` (t),
 * `log` (log(1 + 1000 t) / log 1001, which spreads the small values) or `gamma` (t^gamma; < 1 spreads small ones).
 */
export interface ColorScale {
  signed: boolean;
  /** > 0 for a drawable map. */
  range: number;
  mode?: "linear" | "log" | "gamma";
  gamma?: number;
}

export const LOG_SPREAD = 1000;

/** The relative value t ∈ [0, 1] after the scale's `mode`. */
export function scaled(scale: ColorScale, t: number): number {
  if (!(t > 0)) return 0;
  const c = Math.min(1, t);
  if (scale.mode === "log") return Math.log1p(LOG_SPREAD * c) / Math.log1p(LOG_SPREAD);
  if (scale.mode === "gamma") return c ** (scale.gamma ?? 0.5);
  return c;
}

/** The scale of `values` (only indices where `mask` is non-zero, when given). NaN and ±Inf are ignored. */
export function scaleOf(values: ArrayLike<number>, signed: boolean, mask?: ArrayLike<number>): ColorScale {
  let range = 0;
  for (let i = 0; i < values.length; i++) {
    if (mask !== undefined && !mask[i]) continue;
    const v = values[i]!;
    if (!Number.isFinite(v)) continue;
    const m = signed ? Math.abs(v) : v;
    if (m > range) range = m;
  }
  return { signed, range };
}

export function scaleColor(scale: ColorScale, v: number): RGB {
  const t = scale.range > 0 ? v / scale.range : 0;
  if (scale.signed) return divergingColorFor(Math.sign(t) * scaled(scale, Math.abs(t)));
  return colorFor(scaled(scale, t));
}

/** A CSS linear-gradient of the diverging map (left = −1, right = +1). */
export function cssDivergingGradient(direction = "to right", stops = 17): string {
  const parts: string[] = [];
  for (let i = 0; i < stops; i++) {
    const t = i / (stops - 1);
    parts.push(`${toHex(divergingColorFor(2 * t - 1))} ${(t * 100).toFixed(2).replace(/\.?0+$/, "")}%`);
  }
  return `linear-gradient(${direction}, ${parts.join(", ")})`;
}
