/**
 * Parser of `payloads.projection_payload` → the fetched `projection` payload: every position's hidden state at
 * every depth in one 2-D PCA frame, for the projection panel.
 */

import { bytesField, count, expectLength, fail, floatsField, int32Field, record } from "./validate";

export interface ProjectionData {
  depths: number;
  n: number;
  /** `[D, N, 2]` in one frame for all depths. */
  coords: Float32Array;
  isImage: Uint8Array;
  /** `[N, 2]` grid row and column of image positions (−1 for text). */
  grid: Int32Array;
  /** `[D]` cosine distance between mean image and mean text state. */
  gap: Float32Array;
  explained: number;
  /** Bounds of `coords` over all depths: [xmin, xmax, ymin, ymax]. */
  bounds: [number, number, number, number];
}

/** [xmin, xmax, ymin, ymax] of the finite points of `coords` (x, y pairs); [−1, 1, −1, 1] when there are none. */
function boundsOf(coords: Float32Array): [number, number, number, number] {
  const bounds: [number, number, number, number] = [Infinity, -Infinity, Infinity, -Infinity];
  for (let i = 0; i < coords.length; i += 2) {
    const x = coords[i]!;
    const y = coords[i + 1]!;
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    bounds[0] = Math.min(bounds[0], x);
    bounds[1] = Math.max(bounds[1], x);
    bounds[2] = Math.min(bounds[2], y);
    bounds[3] = Math.max(bounds[3], y);
  }
  return bounds[1] >= bounds[0] ? bounds : [-1, 1, -1, 1];
}

/** Parse the projection of `n` sequence positions; throws a clear Error. */
export function parseProjection(raw: unknown, n: number): ProjectionData {
  const o = record(raw, "projection");
  const depths = count(o.depths, "projection.depths");
  const positions = count(o.n_positions, "projection.n_positions");
  if (positions !== n) fail("projection", `covers ${positions} positions, the tokens are ${n}`);
  const coords = floatsField(o, "coords", "projection", depths * n * 2);
  const isImage = bytesField(o, "is_image", "projection");
  expectLength(isImage.length, n, "projection.is_image");
  return {
    depths,
    n,
    coords,
    isImage,
    grid: int32Field(o, "grid", "projection", 2 * n),
    gap: floatsField(o, "modality_gap", "projection", depths),
    explained: typeof o.explained === "number" ? o.explained : Number.NaN,
    bounds: boundsOf(coords),
  };
}
