/**
 * Data the browser fetches from the kernel when a view first needs it, cached per model (and per revision):
 * per-head attention of one layer (`heads:<layer>`, `heads:mean` = every head's mean over layers), the logit lens
 * (`lens`), the aligned projection (`projection`), and the Features panel's top-k units of a layer (`neurons:<layer>`,
 * `sae`) and one unit's activation (`unit:neurons:<layer>:<unit>`, `unit:sae:<unit>`). The requests go through the model's one channel
 * (channel.ts); the payloads are read by the protocol parsers. A static page (no kernel) reads the same payloads
 * from `state.prefetched`, under the same keys.
 *
 * Besides what a view asks for ({@link Extras.want}), idle prefetches (prefetch.ts) fetch what a view will likely
 * ask for next ({@link Extras.prefetch}): at most one in flight per model, cancellable until a view wants it, and
 * at most {@link MAX_UNUSED_PREFETCHED} kept that no view has used yet (the oldest are dropped first). A failed
 * prefetch leaves no trace for a view (its `want` fetches as usual) and stops prefetching at this revision, so a
 * kernel that declines (`Inspector.prefetch = False`) or struggles is asked once, not at every layer.
 */

import type { Channel, PendingRequest } from "./channel";
import type { TensorReader } from "./codec";
import {
  fetchedPayload,
  fetchRequest,
  MEAN,
  parseFeatures,
  parseHeads,
  parseLens,
  parseProjection,
  parseUnit,
  unitRequest,
  type FeatureKind,
  type FeaturesData,
  type FetchRequest,
  type Layer,
  type LensData,
  type ProjectionData,
  type UnitData,
} from "./protocol";

/** Computing the lens runs the model once; on a large model that takes a while. */
export const FETCH_TIMEOUT_MS = 5 * 60 * 1000;
/** Fetches in flight at once (the kernel answers one at a time anyway). */
const MAX_IN_FLIGHT = 2;
/** Prefetches in flight at once, across every view of a model: a view's own fetch queues behind at most this many. */
export const MAX_PREFETCH_IN_FLIGHT = 1;
/** Prefetched payloads kept that no view has used yet (beyond them, the oldest are dropped). */
export const MAX_UNUSED_PREFETCHED = 8;

export type Extra = TensorReader | LensData | ProjectionData | FeaturesData | UnitData;

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

/** The key of the Features panel's top-k units: the neurons of decoder `layer`, or the SAE's codes. */
export function featuresKey(kind: FeatureKind, layer: number): string {
  return kind === "sae" ? "sae" : `neurons:${layer}`;
}

/** The key of one unit's exact activation and card (neurons: of decoder `layer`; the SAE has one layer). */
export function unitKey(kind: FeatureKind, layer: number, unit: number): string {
  return kind === "sae" ? `unit:sae:${unit}` : `unit:neurons:${layer}:${unit}`;
}

/** The fetch request that asks for `key`. */
function requestOf(key: string): FetchRequest {
  if (key.startsWith("heads:")) {
    const layer = key.slice("heads:".length);
    return fetchRequest("heads", layer === MEAN ? MEAN : Number(layer));
  }
  if (key === "sae") return fetchRequest("sae");
  if (key.startsWith("neurons:")) return fetchRequest("neurons", Number(key.slice("neurons:".length)));
  if (key.startsWith("unit:")) {
    const parts = key.split(":");
    if (parts[1] === "sae") return unitRequest("sae", 0, Number(parts[2]));
    return unitRequest("neurons", Number(parts[2]), Number(parts[3]));
  }
  if (key === "lens" || key === "projection") return fetchRequest(key);
  throw new Error(`mmviz: unknown extra ${key}`);
}

/** A prefetch in flight; `wanted` once a view asked for its key (it is then the view's fetch: never cancelled). */
interface Prefetch {
  request: PendingRequest | null;
  wanted: boolean;
}

/** Fetched payloads of one model at one revision; every view of the model shares them. */
export class Extras {
  private readonly values = new Map<string, Extra>();
  private readonly status = new Map<string, ExtraStatus>();
  private readonly queue: string[] = [];
  private inFlight = 0;
  private readonly listeners = new Set<(key: string) => void>();
  private disposed = false;
  private readonly prefetches = new Map<string, Prefetch>();
  /** Keys that arrived by prefetch and no view has asked for yet, oldest first. */
  private readonly unused = new Set<string>();
  /** A prefetch failed (or the kernel declined it): no more prefetches at this revision. */
  private prefetchStopped = false;

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
    if (this.disposed) return;
    const prefetch = this.prefetches.get(key);
    if (prefetch !== undefined) prefetch.wanted = true; // on its way already: the view waits for it
    this.unused.delete(key); // arrived by prefetch: in use now, never dropped
    if (this.status.has(key)) return;
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

  /** Is a kernel behind the page (false on a standalone page, which carries no Features payloads)? */
  get live(): boolean {
    return this.channel !== null;
  }

  /** Can {@link prefetch} send anything (a kernel behind the page, no failed prefetch at this revision)? */
  get canPrefetch(): boolean {
    return !this.disposed && this.channel !== null && !this.prefetchStopped;
  }

  /**
   * A request a view (not a prefetch) is waiting for: a fetch queued or in flight, a prefetch a view adopted, or
   * another request on the channel (a compute). Prefetches wait while it is true: the kernel answers one at a time.
   */
  get userBusy(): boolean {
    if (this.queue.length > 0 || this.inFlight > 0) return true;
    for (const p of this.prefetches.values()) if (p.wanted) return true;
    return this.channel !== null && this.channel.pending > this.prefetches.size;
  }

  /** Is `key` in the browser, on its way, or failed (nothing to prefetch)? */
  known(key: string): boolean {
    return this.status.has(key);
  }

  /**
   * Fetch `key` before a view asks for it. Returns false, sending nothing, when it is known already, the page has
   * no kernel, {@link MAX_PREFETCH_IN_FLIGHT} prefetches are in flight, or prefetching stopped. Listeners hear
   * when it arrives (it is then kept as unused until a view wants it) or is given up.
   */
  prefetch(key: string): boolean {
    if (!this.canPrefetch || this.status.has(key) || key in this.prefetched) return false;
    if (this.prefetches.size >= MAX_PREFETCH_IN_FLIGHT) return false;
    const entry: Prefetch = { request: null, wanted: false };
    this.prefetches.set(key, entry);
    this.status.set(key, { state: "loading" });
    const finish = (): boolean => {
      const current = this.prefetches.get(key) === entry;
      if (current) this.prefetches.delete(key);
      return current;
    };
    entry.request = this.channel!.ask({ ...requestOf(key), prefetch: true }, this.timeoutMs, {
      reply: (reply) => {
        if (!finish()) return;
        let raw: unknown;
        try {
          raw = fetchedPayload(reply); // throws the kernel's error (or that it declined)
        } catch {
          this.prefetchFailed(key, entry);
          return;
        }
        if (!entry.wanted) this.keepUnused(key);
        this.settle(key, () => this.parse(key, raw));
        // A malformed payload is shown like a view's own fetch (the kernel would send the same bytes again).
        if (this.status.get(key)?.state === "error") {
          this.prefetchStopped = true;
          this.unused.delete(key);
        }
      },
      fail: () => {
        if (finish()) this.prefetchFailed(key, entry);
      },
    });
    return this.prefetches.get(key) === entry; // false when the send failed at once
  }

  /**
   * Stop waiting for the prefetch of `key` (a newer layer switch moved away from it): its late reply is dropped
   * and the key is unknown again. A prefetch a view wants is never cancelled. Returns whether it was cancelled.
   */
  cancelPrefetch(key: string): boolean {
    const entry = this.prefetches.get(key);
    if (entry === undefined || entry.wanted) return false;
    this.prefetches.delete(key);
    entry.request?.cancel();
    this.status.delete(key);
    this.notify(key); // a slot is free: other views' prefetchers may go on
    return true;
  }

  /**
   * A prefetch failed (or the kernel declined it): the key is unknown again, and a view that waits for it asks
   * for it as its own fetch (which the kernel does not decline, and whose failure the view shows).
   */
  private prefetchFailed(key: string, entry: Prefetch): void {
    this.prefetchStopped = true;
    this.unused.delete(key);
    this.status.delete(key);
    if (entry.wanted) this.want(key);
    else this.notify(key);
  }

  /** Keep a prefetched `key` no view asked for yet, dropping the oldest such payloads beyond the bound. */
  private keepUnused(key: string): void {
    this.unused.add(key);
    for (const old of this.unused) {
      if (this.unused.size <= MAX_UNUSED_PREFETCHED) break;
      this.unused.delete(old);
      this.values.delete(old);
      this.status.delete(old);
    }
  }

  /** Keys that arrived by prefetch and no view has used yet, oldest first (for tests and the test hooks). */
  unusedPrefetched(): string[] {
    return [...this.unused];
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
    if (what === "neurons" || what === "sae") return parseFeatures(raw, n);
    if (what === "unit") return parseUnit(raw, n);
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
    if (s.state !== "loading") this.notify(key);
  }

  private notify(key: string): void {
    if (this.disposed) return;
    for (const fn of [...this.listeners]) fn(key);
  }

  dispose(): void {
    this.disposed = true;
    this.queue.length = 0;
    for (const p of this.prefetches.values()) p.request?.cancel();
    this.prefetches.clear();
    this.listeners.clear();
  }
}
