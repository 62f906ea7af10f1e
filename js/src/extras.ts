/**
 * Data the browser fetches from the kernel when a view first needs it, cached per model (and per revision):
 * per-head attention of one layer (`heads:<layer>`, `heads:-1` = mean over layers), the logit lens (`lens`) and
 * the aligned projection (`projection`). See docs/widget-protocol.md.
 *
 * Browser → kernel: `{"type": "fetch", "what", "layer"?, "request"}`; the kernel replies
 * `{"type": "fetched", "request", "ok", "payload", "buffer_paths"}` with the payload's byte fields as binary
 * buffers. A static page (no kernel) reads the same payloads from `state.prefetched`.
 */

import { Channel, ChannelTimeout } from "./channel";
import { asBytes, isByteSource, openEnvelope, putAtPath, readInt32, type TensorReader } from "./codec";
import type { Model } from "./widget";

/** Computing the lens runs the model once; on a large model that takes a while. */
export const FETCH_TIMEOUT_MS = 5 * 60 * 1000;
/** Fetches in flight at once (the kernel answers one at a time anyway). */
const MAX_IN_FLIGHT = 2;

export interface LensData {
  depths: number;
  n: number;
  k: number;
  vocab: readonly string[];
  /** `[D, N, k]` indices into `vocab`, best first. */
  top: Int32Array;
  /** `[D, N, k]` probabilities. */
  topProbs: Float32Array;
  /** `[N]` index into `vocab` of the token each position is read against. */
  target: Int32Array;
  /** `[D, N]` rank (0 = top) of that token at every depth. */
  targetRanks: Int32Array;
  /** `[D, N]` entropy in nats. */
  entropy: Float32Array;
}

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

export type Extra = TensorReader | LensData | ProjectionData;

export interface ExtraStatus {
  state: "idle" | "loading" | "ready" | "error";
  error?: string;
}

export interface ExtrasShape {
  /** Layers, heads, query rows, image columns of the attention (for validating fetched heads). */
  L: number;
  H: number;
  Q: number;
  P: number;
  /** Sequence positions. */
  n: number;
}

function record(x: unknown, what: string): Record<string, unknown> {
  if (x === null || typeof x !== "object" || Array.isArray(x)) throw new Error(`mmviz: ${what} must be a dict`);
  return x as Record<string, unknown>;
}

function int(x: unknown, what: string): number {
  if (typeof x !== "number" || !Number.isInteger(x) || x < 0) throw new Error(`mmviz: ${what} must be a count`);
  return x;
}

function bytesOf(o: Record<string, unknown>, key: string, what: string): Uint8Array {
  const x = o[key];
  if (!isByteSource(x)) throw new Error(`mmviz: ${what}.${key} must be bytes`);
  return asBytes(x);
}

function floats(o: Record<string, unknown>, key: string, what: string, size: number): Float32Array {
  const reader = openEnvelope(o[key]);
  if (reader.size !== size) throw new Error(`mmviz: ${what}.${key} holds ${reader.size} values, expected ${size}`);
  return reader.read(0, size, 1);
}

function ints(o: Record<string, unknown>, key: string, what: string, size: number): Int32Array {
  const x = o[key];
  if (!isByteSource(x)) throw new Error(`mmviz: ${what}.${key} must be bytes (int32)`);
  const out = readInt32(x);
  if (out.length !== size) throw new Error(`mmviz: ${what}.${key} holds ${out.length} values, expected ${size}`);
  return out;
}

/** Per-head maps of one layer: `[H, Q, P]`. */
export function parseHeads(raw: unknown, shape: ExtrasShape): TensorReader {
  const reader = openEnvelope(raw);
  const s = reader.shape;
  if (s.length !== 3 || s[0] !== shape.H || s[1] !== shape.Q || s[2] !== shape.P) {
    throw new Error(`mmviz: fetched heads have shape [${s.join(", ")}], expected [${shape.H}, ${shape.Q}, ${shape.P}]`);
  }
  return reader;
}

export function parseLens(raw: unknown, shape: ExtrasShape): LensData {
  const o = record(raw, "lens");
  const depths = int(o.depths, "lens.depths");
  const n = int(o.n_positions, "lens.n_positions");
  const k = int(o.k, "lens.k");
  if (n !== shape.n) throw new Error(`mmviz: the lens covers ${n} positions, the tokens are ${shape.n}`);
  const vocab = Array.isArray(o.vocab) ? o.vocab.map((t) => (typeof t === "string" ? t : String(t))) : [];
  const top = ints(o, "top", "lens", depths * n * k);
  const target = ints(o, "target", "lens", n);
  for (const arr of [top, target]) {
    for (const i of arr) if (i < 0 || i >= vocab.length) throw new Error(`mmviz: lens token index ${i} outside the vocabulary`);
  }
  return {
    depths,
    n,
    k,
    vocab,
    top,
    topProbs: floats(o, "top_probs", "lens", depths * n * k),
    target,
    targetRanks: ints(o, "target_ranks", "lens", depths * n),
    entropy: floats(o, "entropy", "lens", depths * n),
  };
}

export function parseProjection(raw: unknown, shape: ExtrasShape): ProjectionData {
  const o = record(raw, "projection");
  const depths = int(o.depths, "projection.depths");
  const n = int(o.n_positions, "projection.n_positions");
  if (n !== shape.n) throw new Error(`mmviz: the projection covers ${n} positions, the tokens are ${shape.n}`);
  const coords = floats(o, "coords", "projection", depths * n * 2);
  const isImage = bytesOf(o, "is_image", "projection");
  if (isImage.length !== n) throw new Error(`mmviz: projection.is_image has ${isImage.length} entries, expected ${n}`);
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
  if (!(bounds[1] >= bounds[0])) bounds.splice(0, 4, -1, 1, -1, 1);
  return {
    depths,
    n,
    coords,
    isImage,
    grid: ints(o, "grid", "projection", 2 * n),
    gap: floats(o, "modality_gap", "projection", depths),
    explained: typeof o.explained === "number" ? o.explained : Number.NaN,
    bounds,
  };
}

/** The key of a fetchable payload. */
export function headsKey(layer: number): string {
  return `heads:${layer}`;
}

function parseKey(key: string): { what: string; layer?: number } {
  if (key.startsWith("heads:")) return { what: "heads", layer: Number(key.slice(6)) };
  return { what: key };
}

/** Fetched payloads of one model at one revision; every view of the model shares them. */
export class Extras {
  private readonly values = new Map<string, Extra>();
  private readonly status = new Map<string, ExtraStatus>();
  private readonly queue: string[] = [];
  private inFlight = 0;
  private readonly listeners = new Set<(key: string) => void>();
  private disposed = false;

  constructor(
    private readonly shape: ExtrasShape,
    /** null: no kernel (a static page); only `prefetched` payloads exist. */
    private readonly channel: Channel | null,
    private readonly prefetched: Record<string, unknown> = {},
    private readonly timeoutMs = FETCH_TIMEOUT_MS,
  ) {}

  /** Status of `key` ("idle" until something asks for it). */
  statusOf(key: string): ExtraStatus {
    return this.status.get(key) ?? { state: "idle" };
  }

  /** The payload of `key` when it has arrived, else null (ask for it with {@link want}). */
  get<T extends Extra>(key: string): T | null {
    return (this.values.get(key) as T | undefined) ?? null;
  }

  /** Ask for `key` unless it is there, on its way or failed; listeners hear when it arrives or fails. */
  want(key: string): void {
    if (this.disposed || this.status.has(key)) return;
    if (key in this.prefetched) {
      this.settle(key, () => this.parse(key, this.prefetched[key]));
      return;
    }
    if (this.channel === null) {
      this.setStatus(key, { state: "error", error: "not in this exported page (export it from a live kernel)" });
      return;
    }
    this.setStatus(key, { state: "loading" });
    this.queue.push(key);
    this.pump();
  }

  /** Listen for keys that arrived or failed; returns the unsubscribe function. */
  subscribe(fn: (key: string) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private pump(): void {
    while (this.inFlight < MAX_IN_FLIGHT && this.queue.length > 0 && this.channel !== null) {
      const key = this.queue.shift()!;
      this.inFlight += 1;
      const { what, layer } = parseKey(key);
      this.channel
        .ask({ type: "fetch", what, ...(layer === undefined ? {} : { layer }) }, this.timeoutMs)
        .then(({ content, buffers }) => {
          if (content.ok !== true) {
            const why = typeof content.error === "string" && content.error ? content.error : "unknown error";
            throw new Error(why);
          }
          const payload = (content.payload ?? {}) as Record<string, unknown>;
          const paths = Array.isArray(content.buffer_paths) ? content.buffer_paths : [];
          paths.forEach((path, i) => {
            if (Array.isArray(path) && buffers[i] !== undefined) putAtPath(payload, path, buffers[i]);
          });
          this.settle(key, () => this.parse(key, payload));
        })
        .catch((err: unknown) => {
          const message = err instanceof ChannelTimeout || err instanceof Error ? err.message : String(err);
          this.setStatus(key, { state: "error", error: message });
        })
        .finally(() => {
          this.inFlight -= 1;
          this.pump();
        });
    }
  }

  private parse(key: string, raw: unknown): Extra {
    const { what } = parseKey(key);
    if (what === "heads") return parseHeads(raw, this.shape);
    if (what === "lens") return parseLens(raw, this.shape);
    if (what === "projection") return parseProjection(raw, this.shape);
    throw new Error(`mmviz: unknown extra ${key}`);
  }

  private settle(key: string, parse: () => Extra): void {
    try {
      this.values.set(key, parse());
      this.setStatus(key, { state: "ready" });
    } catch (err) {
      this.setStatus(key, { state: "error", error: err instanceof Error ? err.message : String(err) });
    }
  }

  private setStatus(key: string, s: ExtraStatus): void {
    if (this.disposed) return;
    this.status.set(key, s);
    if (s.state !== "loading") for (const fn of [...this.listeners]) fn(key);
  }

  dispose(): void {
    this.disposed = true;
    this.queue.length = 0;
    this.listeners.clear();
  }
}
