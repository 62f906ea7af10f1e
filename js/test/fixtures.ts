/**
 * Test fixtures.
 *
 * The payloads production sends come from Python: tests/fixtures/payloads_v1.json, written by
 * tests/fixtures/make_payload_fixtures.py from a real trace of the `shapes-vlm` zoo model (the first render's
 * state, the kernel's replies to every fetch, and three computed methods). The DOM tests mount the widget on them
 * and play the kernel with the recorded replies.
 *
 * The hand-made state below ({@link makeState}) stays for unit tests that need values known in closed form
 * ({@link att}: every attention value distinct, so a decoded row proves which row was read) or a shape the real
 * trace lacks (a map without a slice for some layer, several views of one image, malformed payloads).
 */

import recorded from "../../tests/fixtures/payloads_v1.json";
import { base64ToBytes, putAtPath } from "../src/codec";
import { buildData, type WidgetData } from "../src/data";
import type { StaticModel } from "../src/host/static-host";
import { readMaps, type MethodMap } from "../src/methods";
import { MEAN, parseCatalogue, type MethodInfo } from "../src/protocol";
import { encodeFloat32, encodeUint8, float32Bytes, int32Bytes, subView } from "./helpers";

// ---------------------------------------------------------------------------------------------------------------
// Python-written payloads


/** A synced state or message with its byte fields split out, base64-encoded (`widget_payload`'s form). */
interface RecordedState {
  state: Record<string, unknown>;
  buffers: { path: (string | number)[]; data: string }[];
}

/** A kernel reply: the custom message and its binary buffers. */
interface RecordedReply {
  content: Record<string, unknown>;
  buffers: string[];
}

interface Recorded {
  scene: number;
  question: string;
  widget: RecordedState;
  fetched: Record<string, RecordedReply>;
  computed: Record<string, RecordedReply & { traits: RecordedState }>;
}

/** The recorded payloads (imported, so that happy-dom test files, whose `import.meta.url` is not a file URL, can read them too). */
function payloads(): Recorded {
  return recorded as unknown as Recorded;
}

function view(b64: string): DataView {
  const bytes = base64ToBytes(b64);
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A fresh copy of `r` with every buffer back at its path as a DataView (as the host hands traits over). */
function decoded(r: RecordedState): Record<string, unknown> {
  const state = structuredClone(r.state);
  for (const { path, data } of r.buffers) putAtPath(state, path, view(data));
  return state;
}

/** The methods computed in the recorded trace, in the order they were computed. */
export const REAL_COMPUTED = ["relevancy", "gradient_x_input", "grad_cam"] as const;
export type RealMethod = (typeof REAL_COMPUTED)[number];

/**
 * The Inspector's state at first render (no method computed), plus the traits synced while computing
 * `computed` (each one's `maps` holds every method computed before it too).
 */
export function realState(computed: readonly RealMethod[] = []): Record<string, unknown> {
  const state = decoded(payloads().widget);
  for (const method of computed) Object.assign(state, realTraits(method));
  return state;
}

/** The traits the Inspector synced while computing `method` (`busy`, `maps`, `methods`), as the host gets them. */
export function realTraits(method: RealMethod): Record<string, unknown> {
  return decoded(payloads().computed[method]!.traits);
}

/** The kernel's recorded reply to a fetch of `key` (`heads:<layer>`, `lens`, `projection`), for request `id`. */
export function realFetched(key: string, id: string): { content: Record<string, unknown>; buffers: DataView[] } {
  const r = payloads().fetched[key];
  if (r === undefined) throw new Error(`no recorded reply for ${key}`);
  return { content: { ...structuredClone(r.content), request: id }, buffers: r.buffers.map(view) };
}

/** Every recorded fetch reply's payload, by key: what `Inspector.to_html()` puts in `state.prefetched`. */
export function realPrefetched(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(payloads().fetched)) {
    const { content, buffers } = realFetched(key, "prefetched");
    const payload = content.payload as Record<string, unknown>;
    (content.buffer_paths as (string | number)[][]).forEach((path, i) => putAtPath(payload, path, buffers[i]));
    out[key] = payload;
  }
  return out;
}

/** The fetch key a request asks for (as extras.ts keys it). */
function keyOf(content: { what: string; layer?: number | string }): string {
  return content.what === "heads" ? `heads:${content.layer}` : content.what;
}

/** Answer the fetch request `model.sent[sentIndex]` with the kernel's recorded reply. */
export function answerFetch(model: StaticModel, sentIndex = -1): void {
  const content = model.sent.at(sentIndex)!.content as { type: string; what: string; layer?: number | string; request: string };
  if (content.type !== "fetch") throw new Error(`sent[${sentIndex}] is a ${content.type} request`);
  const reply = realFetched(keyOf(content), content.request);
  model.receive(reply.content, reply.buffers);
}

/** The kernel's recorded `computed` reply for `method`, answering request `id`. */
export function realComputed(method: RealMethod, id: string): Record<string, unknown> {
  return { ...structuredClone(payloads().computed[method]!.content), request: id };
}

/** The recorded first render as the views read it (positions, rows, columns), with `computed` maps parsed. */
export function realData(computed: readonly RealMethod[] = []): { data: WidgetData; maps: Map<string, MethodMap>; methods: MethodInfo[] } {
  const state = realState(computed);
  const data = buildData(source(state));
  return { data, maps: readMaps(state.maps, data.P, data.n).maps, methods: parseCatalogue(state.methods) };
}

// ---------------------------------------------------------------------------------------------------------------
// Hand-made state with values known in closed form


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
  /** Ship `attention_mean` (without it, no attention was recorded). */
  withMean?: boolean;
}

/**
 * A small hand-made widget state, as the Inspector lays it out (built with the test encoder): 10 positions, 4
 * query rows, a 2×2 image grid, L = 2 layers of H = 3 heads; per-head maps are fetched ({@link headsPayload}).
 */
export function makeState(opts: StateOptions = {}): Record<string, unknown> {
  const { dtype = "float32", withMean = true } = opts;
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
    head: MEAN,
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
  patch: Partial<{ label: string; meaning: string; signed: boolean; layered: boolean; cost: string; computed: boolean; available: boolean; unavailable: string }> = {},
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

/** Layer `l`'s heads as the kernel's payload: `[H, Q, P]` float32 ({@link att}, exact). */
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
