/** A small synthetic widget state (what the Python Inspector would send), built with the test encoder. */

import type { StaticModel } from "../src/host/static-host";
import { encodeFloat32, encodeUint8, float32Bytes, int32Bytes, subView } from "./helpers";

export const L = 2;
export const H = 3;
export const TOKENS = ["<s>", "Hi", "<img>", "<img>", "<img>", "<img>", "\n", " what", "?", "A"];
export const KINDS = [1, 0, 2, 2, 2, 2, 3, 0, 0, 0];
export const QUERY_POSITIONS = [1, 7, 8, 9];
export const IMAGE_POSITIONS = [2, 3, 4, 5];
export const Q = QUERY_POSITIONS.length;
export const P = IMAGE_POSITIONS.length;
/** 2×2 grid over a 200×120 image. */
export const BOXES = [0, 0, 100, 60, 100, 0, 200, 60, 0, 60, 100, 120, 100, 60, 200, 120];

/** The attention value at (l, h, q, p): distinct everywhere. */
export function att(l: number, h: number, q: number, p: number): number {
  return (1 + l * 1000 + h * 100 + q * 10 + p) / 4096;
}

export function headsArray(): Float32Array {
  const out = new Float32Array(L * H * Q * P);
  let i = 0;
  for (let l = 0; l < L; l++)
    for (let h = 0; h < H; h++) for (let q = 0; q < Q; q++) for (let p = 0; p < P; p++) out[i++] = att(l, h, q, p);
  return out;
}

export function meanArray(): Float32Array {
  const out = new Float32Array(L * Q * P);
  let i = 0;
  for (let l = 0; l < L; l++)
    for (let q = 0; q < Q; q++)
      for (let p = 0; p < P; p++) {
        let s = 0;
        for (let h = 0; h < H; h++) s += att(l, h, q, p);
        out[i++] = s / H;
      }
  return out;
}

export interface StateOptions {
  dtype?: "uint8" | "float32";
  withMean?: boolean;
  withHeads?: boolean;
}

export function makeState(opts: StateOptions = {}): Record<string, unknown> {
  const { dtype = "float32", withMean = true, withHeads = true } = opts;
  const enc = (v: Float32Array, shape: number[]) => (dtype === "uint8" ? encodeUint8(v, shape) : encodeFloat32(v, shape));
  return {
    revision: 1,
    tokens: TOKENS,
    token_layout: {
      v: 1,
      n_positions: TOKENS.length,
      kinds: subView(Uint8Array.from(KINDS), 1),
      answer_start: 9,
      query_positions: subView(int32Bytes(QUERY_POSITIONS), 3),
      image_positions: int32Bytes(IMAGE_POSITIONS),
      boxes: subView(float32Bytes(BOXES), 2),
      grid: int32Bytes([0, 0, 0, 1, 1, 0, 1, 1]),
      image_index: int32Bytes([0, 0, 0, 0]),
      images: [{ width: 200, height: 120, covered: [0, 0, 200, 120] }],
    },
    images: [],
    attention: withHeads ? enc(headsArray(), [L, H, Q, P]) : {},
    attention_mean: withMean ? enc(meanArray(), [L, Q, P]) : {},
    meta: {
      family: "llava",
      model_name: "tiny",
      n_layers: L,
      n_heads: H,
      map_label: "raw attention",
      map_description: "Softmax attention.",
    },
    layer: 1,
    head: -1,
    pinned: -1,
    error: "",
  };
}

/** A TraitSource over a plain state object. */
export function source(state: Record<string, unknown>): { get(key: string): unknown } {
  return { get: (key: string) => state[key] };
}

/** A `maps` entry as Python's `map_payload` sends it (uint8, one range per row). */
export function mapEntry(
  values: ArrayLike<number>,
  shape: number[],
  positions: number[],
  opts: { layers?: number[] | null; signed?: boolean; label?: string; meaning?: string } = {},
): Record<string, unknown> {
  return {
    label: opts.label ?? "Relevancy",
    meaning: opts.meaning ?? "How much each image token contributed to the token.",
    signed: opts.signed ?? false,
    values: encodeUint8(values, shape),
    positions: int32Bytes(positions),
    layers: opts.layers ?? null,
  };
}

/** Relevancy of the answer token (position 9) over the 4 columns: the largest in column 2. */
export const RELEVANCY = [0.1, 0.2, 0.9, 0.3];
/** A signed map of positions 8 and 9: position 9 is most positive at column 0 and most negative at column 3. */
export const SIGNED = [0.5, -0.1, 0.2, -0.25, 0.8, 0.1, -0.3, -1.2];
/** A per-layer map (slices after layers 0 and 1) of the single row of position 9. */
export const LAYERED = [0.4, 0.3, 0.2, 0.1, 0.1, 0.2, 0.3, 0.4];

export function catalogueEntry(
  name: string,
  patch: Partial<{ label: string; meaning: string; signed: boolean; layered: boolean; cost: string; computed: boolean; available: boolean }> = {},
): Record<string, unknown> {
  return {
    name,
    label: name === "attention" ? "Attention" : name.charAt(0).toUpperCase() + name.slice(1),
    meaning: `${name} meaning.`,
    signed: false,
    layered: name === "attention",
    cost: name === "attention" ? "instant" : "fast",
    computed: name === "attention",
    available: true,
    ...patch,
  };
}

/** makeState plus a method catalogue and the maps named in `computed`. */
export function makeMethodsState(computed: string[] = ["relevancy"], opts: StateOptions = {}): Record<string, unknown> {
  const all: Record<string, Record<string, unknown>> = {
    relevancy: mapEntry(RELEVANCY, [1, P], [9]),
    signed: mapEntry(SIGNED, [2, P], [8, 9], { signed: true, label: "Signed", meaning: "signed meaning." }),
    layered: mapEntry(LAYERED, [2, 1, P], [9], { layers: [0, 1], label: "Layered", meaning: "layered meaning." }),
  };
  const maps: Record<string, unknown> = {};
  for (const name of computed) maps[name] = all[name];
  return {
    ...makeState(opts),
    method: "attention",
    methods: [
      catalogueEntry("attention"),
      catalogueEntry("relevancy", { computed: computed.includes("relevancy") }),
      catalogueEntry("signed", { signed: true, cost: "slow", computed: computed.includes("signed") }),
      catalogueEntry("layered", { layered: true, computed: computed.includes("layered") }),
      catalogueEntry("missing", { available: false }),
    ],
    maps,
    busy: "",
  };
}

/** Layer `l`'s heads as the kernel's payload: `[H, Q, P]` float32. */
export function headsPayload(l: number): Record<string, unknown> {
  const values: number[] = [];
  for (let h = 0; h < H; h++) for (let q = 0; q < Q; q++) for (let p = 0; p < P; p++) values.push(att(l, h, q, p));
  return encodeFloat32(values, [H, Q, P]) as unknown as Record<string, unknown>;
}

/** Reply to the last fetch like the kernel: byte fields split out as buffers with their paths. */
export function answer(model: StaticModel, payload: Record<string, unknown>, sentIndex = -1): void {
  const request = (model.sent.at(sentIndex)!.content as { request: string }).request;
  const stripped: Record<string, unknown> = {};
  const paths: string[][] = [];
  const buffers: DataView[] = [];
  for (const [key, value] of Object.entries(payload)) {
    if (value instanceof Uint8Array) {
      paths.push([key]);
      buffers.push(new DataView(value.buffer, value.byteOffset, value.byteLength));
    } else stripped[key] = value;
  }
  model.receive({ type: "fetched", request, ok: true, payload: stripped, buffer_paths: paths }, buffers);
}
