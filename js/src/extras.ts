/**
 * Data the browser fetches from the kernel when a view first needs it, cached per model (and per revision):
 * per-head attention of one layer (`heads:<layer>`, `heads:mean` = every head's mean over layers), the logit lens
 * (`lens`) and the aligned projection (`projection`). The requests go through the model's one channel
 * (channel.ts); the payloads are read by the protocol parsers. A static page (no kernel) reads the same payloads
 * from `state.prefetched`, under the same keys.
 */

import type { Channel } from "./channel";
import type { TensorReader } from "./codec";
import {
  fetchedPayload,
  fetchRequest,
  MEAN,
  parseHeads,
  parseLens,
  parseProjection,
  type FetchRequest,
  type Layer,
  type LensData,
  type ProjectionData,
} from "./protocol";

/** Computing the lens runs the model once; on a large model that takes a while. */
export const FETCH_TIMEOUT_MS = 5 * 60 * 1000;
/** Fetches in flight at once (the kernel answers one at a time anyway). */
const MAX_IN_FLIGHT = 2;

export type Extra = TensorReader | LensData | ProjectionData;

export interface ExtraStatus {
  state: "idle" | "loading" | "ready" | "error";
  error?: string;
}

export interface ExtrasShape {
  /** Heads, query rows and image columns of the attention (for validating fetched heads). */
  H: number;
  Q: number;
  P: number;
  /** Sequence positions. */
  n: number;
}

/** The key of a layer's fetched heads (also its key in `state.prefetched`). */
export function headsKey(layer: Layer): string {
  return `heads:${layer}`;
}

/** The fetch request that asks for `key`. */
function requestOf(key: string): FetchRequest {
  if (key.startsWith("heads:")) {
    const layer = key.slice("heads:".length);
    return fetchRequest("heads", layer === MEAN ? MEAN : Number(layer));
  }
  if (key === "lens" || key === "projection") return fetchRequest(key);
  throw new Error(`mmviz: unknown extra ${key}`);
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
    private readonly prefetched: Readonly<Record<string, unknown>> = {},
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
      this.setStatus(key, {
        state: "error",
        error: "not in this exported page (Inspector.to_html(heads=…) chooses the layers it carries)",
      });
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
      const done = (): void => {
        this.inFlight -= 1;
        this.pump();
      };
      this.channel.ask(requestOf(key), this.timeoutMs, {
        reply: (reply) => {
          this.settle(key, () => this.parse(key, fetchedPayload(reply)));
          done();
        },
        fail: (err) => {
          this.setStatus(key, { state: "error", error: err.message });
          done();
        },
      });
    }
  }

  private parse(key: string, raw: unknown): Extra {
    const { what } = requestOf(key);
    const { H, Q, P, n } = this.shape;
    if (what === "heads") return parseHeads(raw, H, Q, P);
    if (what === "lens") return parseLens(raw, n);
    return parseProjection(raw, n);
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
