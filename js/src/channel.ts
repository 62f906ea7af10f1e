/**
 * The request/response channel over anywidget custom messages, shared by every view of one model.
 *
 * A request is `model.send({...content, request: id})`; the kernel answers with a custom message carrying the same
 * `request` id (and binary buffers, for fetched data). Replies are matched by id; a reply nobody waits for (a stale
 * one, or one for a request that timed out) is dropped. Each request has its own timeout, long enough for torch
 * work, after which its promise rejects with a {@link ChannelTimeout}.
 */

import type { Model } from "./widget";

export interface Reply {
  content: Record<string, unknown>;
  buffers: readonly DataView[];
}

export class ChannelTimeout extends Error {
  constructor(readonly ms: number) {
    const minutes = Math.round(ms / 60000);
    const after = minutes >= 1 ? `${minutes} minute${minutes === 1 ? "" : "s"}` : `${Math.round(ms / 1000)} s`;
    super(`the kernel did not answer within ${after} (is it busy, or was it restarted?)`);
  }
}

interface Waiting {
  resolve: (reply: Reply) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

let counter = 0;

/** A request id unique across views and pages (two views of one model share one channel). */
export function newRequestId(): string {
  counter += 1;
  return `mmviz-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}-${counter}`;
}

function asView(b: unknown): DataView | null {
  if (b instanceof DataView) return b;
  if (b instanceof ArrayBuffer) return new DataView(b);
  if (ArrayBuffer.isView(b)) return new DataView(b.buffer, b.byteOffset, b.byteLength);
  return null;
}

export class Channel {
  private readonly waiting = new Map<string, Waiting>();
  private readonly onMsg: (content: unknown, buffers?: unknown) => void;

  constructor(private readonly model: Model) {
    this.onMsg = (content, buffers) => this.receive(content, buffers);
    model.on("msg:custom", this.onMsg);
  }

  /** Send `content` (a `request` id is added) and wait for the kernel's reply. */
  ask(content: Record<string, unknown>, timeoutMs: number): Promise<Reply> {
    const id = newRequestId();
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new ChannelTimeout(timeoutMs));
      }, timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
      try {
        this.model.send({ ...content, request: id });
      } catch (err) {
        clearTimeout(timer);
        this.waiting.delete(id);
        reject(new Error(`could not reach the kernel: ${err instanceof Error ? err.message : String(err)}`));
      }
    });
  }

  /** Handle a custom message; returns whether it answered a request in flight. */
  receive(content: unknown, buffers?: unknown): boolean {
    if (content === null || typeof content !== "object") return false;
    const id = (content as { request?: unknown }).request;
    if (typeof id !== "string") return false;
    const w = this.waiting.get(id);
    if (w === undefined) return false; // stale, timed out, or another page's
    this.waiting.delete(id);
    clearTimeout(w.timer);
    const views = (Array.isArray(buffers) ? buffers : []).map(asView).filter((v): v is DataView => v !== null);
    w.resolve({ content: content as Record<string, unknown>, buffers: views });
    return true;
  }

  /** Number of requests in flight. */
  get pending(): number {
    return this.waiting.size;
  }

  dispose(): void {
    this.model.off("msg:custom", this.onMsg);
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(new Error("the widget was closed"));
    }
    this.waiting.clear();
  }
}
