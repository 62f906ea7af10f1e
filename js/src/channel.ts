/**
 * The one request channel to the kernel (fetch and compute), shared by every view of one model.
 *
 * A request is `model.send({...request, request: id})`; the kernel answers with a custom message of the matching
 * reply type (`fetched` / `computed`) carrying the same `request` id. Replies are matched by id; a reply nobody
 * waits for (stale, cancelled, timed out, or another page's) is dropped. Each request has its own timeout, long
 * enough for torch work, after which it fails with a {@link ChannelTimeout}.
 *
 * Handlers run synchronously inside `receive`, so the view that asked repaints in the same task as the reply.
 */

import type { Model } from "./host/model";
import { REPLY_TYPE, replyHeader, type Reply, type ReplyType, type Request } from "./protocol";

export class ChannelTimeout extends Error {
  constructor(readonly ms: number) {
    const minutes = Math.round(ms / 60000);
    const after = minutes >= 1 ? `${minutes} minute${minutes === 1 ? "" : "s"}` : `${Math.round(ms / 1000)} s`;
    super(`the kernel did not answer within ${after} (is it busy, or was it restarted?)`);
  }
}

export interface ReplyHandlers {
  /** The kernel's reply (its `ok` / `error` are the caller's to read). */
  reply(reply: Reply): void;
  /** No reply: the send failed, the request timed out ({@link ChannelTimeout}) or the channel was closed. */
  fail(error: Error): void;
}

/** A request in flight. */
export interface PendingRequest {
  readonly id: string;
  /** Stop waiting: a later reply is dropped as stale, and no handler runs. */
  cancel(): void;
}

interface Waiting {
  replyType: ReplyType;
  handlers: ReplyHandlers;
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

  /** Send `request` (a `request` id is added) and call `handlers` with the kernel's reply or the failure. */
  ask(request: Request, timeoutMs: number, handlers: ReplyHandlers): PendingRequest {
    const id = newRequestId();
    const timer = setTimeout(() => {
      if (this.waiting.delete(id)) handlers.fail(new ChannelTimeout(timeoutMs));
    }, timeoutMs);
    this.waiting.set(id, { replyType: REPLY_TYPE[request.type], handlers, timer });
    const pending: PendingRequest = { id, cancel: () => this.forget(id) };
    try {
      this.model.send({ ...request, request: id });
    } catch (err) {
      this.forget(id);
      handlers.fail(new Error(`could not reach the kernel: ${err instanceof Error ? err.message : String(err)}`));
    }
    return pending;
  }

  /** Handle a custom message; returns whether it answered a request in flight. */
  receive(content: unknown, buffers?: unknown): boolean {
    const header = replyHeader(content);
    const w = header === null ? undefined : this.waiting.get(header.request);
    if (header === null || w === undefined || header.type !== w.replyType) return false;
    this.forget(header.request);
    const views = (Array.isArray(buffers) ? buffers : []).map(asView).filter((v): v is DataView => v !== null);
    w.handlers.reply({ content: content as Reply["content"], buffers: views });
    return true;
  }

  /** Number of requests in flight. */
  get pending(): number {
    return this.waiting.size;
  }

  private forget(id: string): void {
    const w = this.waiting.get(id);
    if (w === undefined) return;
    clearTimeout(w.timer);
    this.waiting.delete(id);
  }

  dispose(): void {
    this.model.off("msg:custom", this.onMsg);
    const waiting = [...this.waiting.values()];
    for (const w of waiting) clearTimeout(w.timer);
    this.waiting.clear();
    for (const w of waiting) w.handlers.fail(new Error("the widget was closed"));
  }
}
