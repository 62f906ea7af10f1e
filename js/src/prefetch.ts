/**
 * Idle prefetch of the neighbouring layers' per-head maps, one prefetcher per view.
 *
 * With a single head selected, a layer switch needs that layer's per-head maps (extras.ts `heads:<layer>`);
 * fetched on demand that is a round trip through Jupyter's messaging. While the view is idle, the prefetcher asks
 * for the current layer (when no view has yet: a hover will need it) and the layers next to it (±1 …
 * ±{@link PREFETCH_RADIUS}, the direction of the last move first), so a user scrubbing layers finds the next one
 * already in the browser.
 *
 * It stays out of the way: nothing while a view's own request (a fetch or a compute) is in flight, at most
 * `MAX_PREFETCH_IN_FLIGHT` per model and a bounded number kept unused (both enforced by Extras), never a layer that
 * is cached or on its way, nothing for the head mean (it ships with the first render) or another method's map. A
 * newer layer switch cancels the scheduled work and the prefetches that left the new window (their late replies
 * are dropped); one for the layer switched to is kept, and the view waits for it instead of asking again.
 */

import { headsKey } from "./extras";
import { MEAN, type Head, type Layer } from "./protocol";

/** Layers prefetched on each side of the current one. */
export const PREFETCH_RADIUS = 2;
/** requestIdleCallback's deadline: a page that is never idle still prefetches after this long. */
export const IDLE_TIMEOUT_MS = 500;
/** Without requestIdleCallback: wait this long after the last change. */
export const FALLBACK_DELAY_MS = 30;
/** While a view's own request is in flight (a compute has no arrival to wait for): look again after this long. */
export const BUSY_RETRY_MS = 200;

/** What the prefetcher needs from the model's fetched extras (extras.ts `Extras` implements it). */
export interface PrefetchSource {
  /** A kernel is behind the page and prefetching has not stopped. */
  readonly canPrefetch: boolean;
  /** A request a view waits for is in flight. */
  readonly userBusy: boolean;
  /** In the browser, on its way, or failed: nothing to prefetch. */
  known(key: string): boolean;
  /** Send a prefetch of `key`; false when nothing was sent (no free slot, known, no kernel). */
  prefetch(key: string): boolean;
  /** Drop the prefetch of `key` unless a view waits for it; whether it was cancelled. */
  cancelPrefetch(key: string): boolean;
  /** Hear every key that arrived, failed or was cancelled. */
  subscribe(fn: (key: string) => void): () => void;
}

/** Run `fn` when the page is idle (`delayMs` = 0) or after `delayMs`; returns the function that cancels it. */
export type Scheduler = (fn: () => void, delayMs: number) => () => void;

/** requestIdleCallback (with a deadline) where the browser has it, else a short timeout. */
export const idleScheduler: Scheduler = (fn, delayMs) => {
  if (delayMs === 0 && typeof requestIdleCallback === "function") {
    const id = requestIdleCallback(() => fn(), { timeout: IDLE_TIMEOUT_MS });
    return () => cancelIdleCallback(id);
  }
  const id = setTimeout(fn, delayMs > 0 ? delayMs : FALLBACK_DELAY_MS);
  return () => clearTimeout(id);
};

/** The part of a view's state the prefetcher follows. */
export interface PrefetchFocus {
  layer: Layer;
  head: Head;
  /** The view draws attention (per-head maps matter), not another method's map. */
  attention: boolean;
}

/**
 * `off`: nothing to prefetch for this selection (the head mean, another method, a page without a kernel, or the
 * kernel declined); `waiting`: work is scheduled for an idle moment (or waits for a view's request); `loading`: a
 * prefetch of this view is in flight; `idle`: the current and every neighbouring layer are in the browser (or on
 * their way).
 */
export type PrefetchState = "off" | "waiting" | "loading" | "idle";

export interface PrefetchReport {
  state: PrefetchState;
  /** Layers this view is prefetching now. */
  loading: readonly number[];
  /** Prefetches sent and cancelled by this view so far. */
  issued: number;
  cancelled: number;
}

/** The layers next to `layer` (of `layers`) within `radius`, nearest first, those in `direction` before the others. */
export function neighbourLayers(layer: number, layers: number, radius: number, direction: 1 | -1): number[] {
  const ahead: number[] = [];
  const behind: number[] = [];
  for (let d = 1; d <= radius; d++) {
    ahead.push(layer + d * direction);
    behind.push(layer - d * direction);
  }
  return [...ahead, ...behind].filter((l) => l >= 0 && l < layers);
}

export interface PrefetcherOptions {
  radius?: number;
  schedule?: Scheduler;
  /** Called whenever the report changes (the view writes its test hooks from it). */
  onReport?: (report: PrefetchReport) => void;
}

export class Prefetcher {
  private readonly radius: number;
  private readonly schedule: Scheduler;
  /** Keys to prefetch for the current focus, in order: the current layer, then its neighbours. */
  private window: string[] = [];
  /** Keys whose prefetch a layer switch keeps: the window's. */
  private keep = new Set<string>();
  private focusKey = "";
  private lastLayer: number | null = null;
  private direction: 1 | -1 = 1;
  /** This view's prefetches in flight. */
  private readonly mine = new Set<string>();
  private cancelScheduled: (() => void) | null = null;
  private retrying = false;
  private issued = 0;
  private cancelled = 0;
  private reported = "";
  private readonly unsubscribe: () => void;
  private disposed = false;

  constructor(
    private readonly source: PrefetchSource,
    private readonly layers: number,
    private readonly options: PrefetcherOptions = {},
  ) {
    this.radius = options.radius ?? PREFETCH_RADIUS;
    this.schedule = options.schedule ?? idleScheduler;
    this.unsubscribe = source.subscribe((key) => {
      this.mine.delete(key); // any news of a key means it is no longer on its way
      if (this.retrying) this.stopScheduled(); // a request arrived: look again at the next idle moment
      this.pump();
    });
  }

  /** Follow the view's selection (call on every state change; cheap when the layer did not change). */
  follow(focus: PrefetchFocus): void {
    if (this.disposed) return;
    const layer = focus.layer === MEAN ? null : focus.layer;
    const enabled = layer !== null && focus.attention && focus.head !== MEAN;
    const focusKey = enabled ? String(layer) : "off";
    if (focusKey !== this.focusKey) {
      this.focusKey = focusKey;
      if (layer !== null && this.lastLayer !== null && layer !== this.lastLayer) this.direction = layer > this.lastLayer ? 1 : -1;
      if (layer !== null) this.lastLayer = layer;
      this.window = enabled ? [layer, ...neighbourLayers(layer, this.layers, this.radius, this.direction)].map(headsKey) : [];
      this.keep = new Set(this.window);
      this.stopScheduled();
      // A newer switch supersedes the prefetches that left the window: their late replies are dropped.
      for (const key of [...this.mine]) {
        if (this.keep.has(key)) continue;
        this.mine.delete(key);
        if (this.source.cancelPrefetch(key)) this.cancelled++;
      }
    }
    this.pump();
  }

  /** Where the prefetcher stands (also passed to `onReport` when it changes). */
  report(): PrefetchReport {
    const loading = [...this.mine].map((key) => Number(key.slice("heads:".length))).sort((a, b) => a - b);
    let state: PrefetchState;
    if (this.mine.size > 0) state = "loading";
    else if (!this.source.canPrefetch || this.window.length === 0) state = "off";
    else state = this.next() === null ? "idle" : "waiting";
    return { state, loading, issued: this.issued, cancelled: this.cancelled };
  }

  /** The next key of the window to prefetch, or null. */
  private next(): string | null {
    if (!this.source.canPrefetch) return null;
    return this.window.find((key) => !this.source.known(key)) ?? null;
  }

  /** Schedule a run for an idle moment when there is something to prefetch. */
  private pump(): void {
    if (this.disposed) return;
    if (this.cancelScheduled === null && this.next() !== null) this.cancelScheduled = this.schedule(() => this.run(), 0);
    this.tell();
  }

  private run(): void {
    this.cancelScheduled = null;
    this.retrying = false;
    if (this.disposed) return;
    if (this.source.userBusy) {
      // The view's own request goes first (the kernel answers one at a time); its arrival pumps again.
      this.retrying = true;
      this.cancelScheduled = this.schedule(() => this.run(), BUSY_RETRY_MS);
    } else {
      for (let key = this.next(); key !== null; key = this.next()) {
        if (!this.source.prefetch(key)) break; // the model's prefetch slots are taken: an arrival pumps again
        this.mine.add(key);
        this.issued++;
      }
    }
    this.tell();
  }

  private stopScheduled(): void {
    this.cancelScheduled?.();
    this.cancelScheduled = null;
    this.retrying = false;
  }

  private tell(): void {
    const report = this.report();
    const text = JSON.stringify(report);
    if (text === this.reported) return;
    this.reported = text;
    this.options.onReport?.(report);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.unsubscribe();
    this.stopScheduled();
    for (const key of this.mine) this.source.cancelPrefetch(key);
    this.mine.clear();
  }
}
