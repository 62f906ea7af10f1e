/**
 * Compute-on-request: a view asks the kernel for a method that is not computed yet, through the model's one
 * request channel (channel.ts), and keeps the request's status (pending, failed, timed out) in its store.
 *
 * Browser → kernel: `{"type": "compute", "method": name, "request": id}`. The kernel replies
 * `{"type": "computed", "method", "request", "ok", "error"?}`; the map itself arrives through the `maps` trait.
 * A new request replaces the pending one (whose late reply is then stale), and a request the kernel does not
 * answer within `timeoutMs` is given up (the map still shows if it arrives later).
 */

import { ChannelTimeout, type Channel, type PendingRequest } from "./channel";
import { computeRequest, replyError } from "./protocol";
import { IDLE, type ComputeStatus, type Store } from "./store";

/** Torch work on a real model can take minutes. */
export const COMPUTE_TIMEOUT_MS = 10 * 60 * 1000;

export class ComputeRequests {
  private inFlight: PendingRequest | null = null;
  private disposed = false;

  /** @param onFailure called after a request failed or timed out, with the method that was asked for. */
  constructor(
    private readonly channel: Channel,
    private readonly store: Store,
    private readonly timeoutMs = COMPUTE_TIMEOUT_MS,
    private readonly onFailure: (method: string) => void = () => {},
  ) {}

  /** The status in the store. */
  get(): Readonly<ComputeStatus> {
    return this.store.get().compute;
  }

  /** The id of the request in flight (null when idle). */
  get currentRequest(): string | null {
    return this.inFlight?.id ?? null;
  }

  /**
   * Ask the kernel for `method`; `returnTo` is the method to show again if it fails. A request for the method
   * already pending is not sent twice.
   */
  request(method: string, returnTo: string = this.get().returnTo): void {
    if (this.disposed || this.get().pending === method) return;
    this.inFlight?.cancel();
    this.store.set({ compute: { pending: method, since: Date.now(), failed: null, returnTo } });
    const sent = this.channel.ask(computeRequest(method), this.timeoutMs, {
      reply: (reply) => {
        const error = replyError(reply);
        if (error === null) this.settle({ ...IDLE, returnTo });
        else this.fail(method, error, false);
      },
      fail: (err) => {
        const timedOut = err instanceof ChannelTimeout;
        this.fail(method, timedOut ? `${err.message}; the map still appears if it finishes later` : err.message, timedOut);
      },
    });
    // A send that failed at once has already settled the request.
    this.inFlight = this.get().pending === method ? sent : null;
  }

  /** Forget the last failure (e.g. when the user picks another method). */
  clearFailure(): void {
    const status = this.get();
    if (status.failed !== null) this.store.set({ compute: { ...status, failed: null } });
  }

  private fail(method: string, message: string, timedOut: boolean): void {
    this.settle({ ...IDLE, failed: { method, message, timedOut }, returnTo: this.get().returnTo });
    this.onFailure(method);
  }

  private settle(status: ComputeStatus): void {
    this.inFlight = null;
    if (!this.disposed) this.store.set({ compute: status });
  }

  dispose(): void {
    this.disposed = true;
    this.inFlight?.cancel();
    this.inFlight = null;
  }
}
