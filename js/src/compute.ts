/**
 * Compute-on-request: the browser asks the kernel for a method that is not computed yet.
 *
 * Browser → kernel: `{"type": "compute", "method": name, "request": id}` (`model.send`). The kernel replies
 * `{"type": "computed", "method", "request", "ok", "error"?}` as a custom message; the map itself arrives through
 * the `maps` trait. Replies are matched by `request` (stale ones are dropped), and a request the kernel does not
 * answer within `timeoutMs` is given up (the map still shows if it arrives later).
 */

import type { Model } from "./widget";

/** Torch work on a real model can take minutes. */
export const COMPUTE_TIMEOUT_MS = 10 * 60 * 1000;

export interface ComputeStatus {
  /** The method being computed for this view, or null. */
  pending: string | null;
  /** When the pending request was sent (Date.now()). */
  since: number;
  /** The last failure: the method and a message for the user (cleared by the next request). */
  failed: { method: string; message: string; timedOut: boolean } | null;
}

export interface ComputedReply {
  type: "computed";
  method?: unknown;
  request?: unknown;
  ok?: unknown;
  error?: unknown;
}

function isReply(x: unknown): x is ComputedReply {
  return x !== null && typeof x === "object" && (x as { type?: unknown }).type === "computed";
}

let counter = 0;

/** A request id unique across views and pages (two views of one model share its replies). */
function newRequestId(): string {
  counter += 1;
  return `mmviz-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}-${counter}`;
}

export class ComputeRequests {
  private status: ComputeStatus = { pending: null, since: 0, failed: null };
  private requestId: string | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private readonly onMsg: (content: unknown) => void;
  private disposed = false;

  /**
   * @param onChange called after every status change (reply, failure, timeout).
   * @param onFailure called when a request fails or times out, with the method that was asked for.
   */
  constructor(
    private readonly model: Model,
    private readonly onChange: (status: Readonly<ComputeStatus>) => void,
    private readonly timeoutMs = COMPUTE_TIMEOUT_MS,
    private readonly onFailure: (method: string) => void = () => {},
  ) {
    this.onMsg = (content: unknown) => this.receive(content);
    model.on("msg:custom", this.onMsg);
  }

  get(): Readonly<ComputeStatus> {
    return this.status;
  }

  /** The id of the request in flight (null when idle). */
  get currentRequest(): string | null {
    return this.requestId;
  }

  /** Ask the kernel for `method`. A request for the method already pending is not sent twice. */
  request(method: string): void {
    if (this.disposed) return;
    if (this.status.pending === method) return;
    this.clearTimer();
    const id = newRequestId();
    this.requestId = id;
    this.status = { pending: method, since: Date.now(), failed: null };
    this.timer = setTimeout(() => this.timeout(), this.timeoutMs);
    try {
      this.model.send({ type: "compute", method, request: id });
    } catch (err) {
      this.fail(method, `could not reach the kernel: ${err instanceof Error ? err.message : String(err)}`, false);
      return;
    }
    this.onChange(this.status);
  }

  /** Handle a custom message from the kernel; returns whether it was the reply to the pending request. */
  receive(content: unknown): boolean {
    if (this.disposed || !isReply(content)) return false;
    if (this.requestId === null || content.request !== this.requestId) return false; // stale or another view's
    const method = this.status.pending ?? (typeof content.method === "string" ? content.method : "");
    if (content.ok === true) {
      this.clearTimer();
      this.requestId = null;
      this.status = { pending: null, since: 0, failed: null };
      this.onChange(this.status);
    } else {
      const why = typeof content.error === "string" && content.error !== "" ? content.error : "unknown error";
      this.fail(method, why, false);
    }
    return true;
  }

  /** Forget the last failure (e.g. when the user picks another method). */
  clearFailure(): void {
    if (this.status.failed === null) return;
    this.status = { ...this.status, failed: null };
    this.onChange(this.status);
  }

  private timeout(): void {
    this.timer = null;
    const method = this.status.pending;
    if (method === null) return;
    const minutes = Math.round(this.timeoutMs / 60000);
    const after = minutes >= 1 ? `${minutes} minute${minutes === 1 ? "" : "s"}` : `${Math.round(this.timeoutMs / 1000)} s`;
    this.fail(
      method,
      `the kernel did not answer within ${after} (is it busy, or was it restarted?); the map still appears if it ` +
        "finishes later",
      true,
    );
  }

  private fail(method: string, message: string, timedOut: boolean): void {
    this.clearTimer();
    this.requestId = null;
    this.status = { pending: null, since: 0, failed: { method, message, timedOut } };
    this.onFailure(method);
    this.onChange(this.status);
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  dispose(): void {
    this.disposed = true;
    this.clearTimer();
    this.model.off("msg:custom", this.onMsg);
  }
}
