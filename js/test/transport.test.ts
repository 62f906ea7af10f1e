/** The request/response channel and the fetched extras, against a fake kernel. */

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Channel, ChannelTimeout, type ReplyHandlers } from "../src/channel";
import type { TensorReader } from "../src/codec";
import { Extras, FETCH_TIMEOUT_MS, headsKey } from "../src/extras";
import { createStaticModel } from "../src/host/static-host";
import { MEAN, parseLens, parseProjection, type Reply } from "../src/protocol";
import { answer, att, H, headsPayload, P, Q, TOKENS } from "./fixtures";
import { encodeFloat32, float32Bytes, int32Bytes } from "./helpers";

const SHAPE = { H, Q, P, n: TOKENS.length };

/** Handlers that settle a promise (so a test can await the reply or the failure). */
function settled(): { handlers: ReplyHandlers; result: Promise<Reply> } {
  let handlers!: ReplyHandlers;
  const result = new Promise<Reply>((resolve, reject) => {
    handlers = { reply: resolve, fail: reject };
  });
  return { handlers, result };
}

const flush = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

describe("Channel", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("matches replies by request id, drops stale and foreign ones, and times out", async () => {
    const model = createStaticModel({}, { kernel: true });
    const channel = new Channel(model);
    const first = settled();
    const second = settled();
    const askedFirst = channel.ask({ type: "fetch", what: "lens" }, 1000, first.handlers);
    channel.ask({ type: "fetch", what: "projection" }, 1000, second.handlers);
    const [a, b] = model.sent.map((s) => s.content as { request: string; what: string });
    expect(a!.what).toBe("lens");
    expect(a!.request).toBe(askedFirst.id);
    expect(a!.request).not.toBe(b!.request);
    expect(channel.receive({ type: "fetched", request: "someone-else" })).toBe(false);
    expect(channel.receive({ type: "fetched", request: b!.request, ok: true }, [new Uint8Array([1, 2])])).toBe(true);
    const reply = await second.result;
    expect(reply.content.ok).toBe(true);
    expect(reply.buffers[0]!.getUint8(1)).toBe(2);
    expect(channel.receive({ type: "fetched", request: b!.request, ok: true })).toBe(false); // a second copy is stale
    vi.advanceTimersByTime(1000);
    await expect(first.result).rejects.toBeInstanceOf(ChannelTimeout);
    expect(channel.receive({ type: "fetched", request: a!.request, ok: true })).toBe(false); // late: dropped
    expect(channel.pending).toBe(0);
    channel.dispose();
  });
});

describe("Extras", () => {
  it("fetches a layer's heads once, caches them and tells its listeners", async () => {
    const model = createStaticModel({}, { kernel: true });
    const extras = new Extras(SHAPE, new Channel(model));
    const heard = vi.fn();
    extras.subscribe(heard);
    extras.want(headsKey(1));
    extras.want(headsKey(1)); // on its way: not asked twice
    expect(model.sent.map((s) => s.content)).toEqual([{ type: "fetch", what: "heads", layer: 1, request: expect.any(String) }]);
    expect(extras.statusOf(headsKey(1)).state).toBe("loading");
    answer(model, headsPayload(1));
    await flush();
    expect(heard).toHaveBeenCalledWith(headsKey(1));
    const reader = extras.get<TensorReader>(headsKey(1))!;
    expect(reader.at((2 * Q + 3) * P + 1)).toBeCloseTo(att(1, 2, 3, 1), 6);
    extras.want(headsKey(1));
    expect(model.sent).toHaveLength(1);
  });

  it("keeps at most two fetches in flight and reports the kernel's errors and malformed payloads", async () => {
    const model = createStaticModel({}, { kernel: true });
    const extras = new Extras(SHAPE, new Channel(model));
    extras.want(headsKey(0));
    extras.want(headsKey(1));
    extras.want("lens");
    expect(model.sent).toHaveLength(2);
    const [r0] = model.sent.map((s) => (s.content as { request: string }).request);
    model.receive({ type: "fetched", request: r0, ok: false, error: "layer 0 is gone" });
    await flush();
    expect(extras.statusOf(headsKey(0))).toEqual({ state: "error", error: "layer 0 is gone" });
    expect(model.sent).toHaveLength(3); // the queue moves on
    answer(model, { ...headsPayload(1), shape: [H, Q, P + 1] }, 1);
    await flush();
    expect(extras.statusOf(headsKey(1)).error).toMatch(/shape \[3, 4, 5\]/);
  });

  it("times out a fetch the kernel never answers", async () => {
    vi.useFakeTimers();
    const model = createStaticModel({}, { kernel: true });
    const extras = new Extras(SHAPE, new Channel(model));
    extras.want("lens");
    vi.advanceTimersByTime(FETCH_TIMEOUT_MS);
    await vi.runAllTimersAsync();
    expect(extras.statusOf("lens").error).toMatch(/did not answer within 5 minutes/);
    vi.useRealTimers();
  });

  it("asks for every head's mean over layers as layer \"mean\", and finds it under heads:mean on a static page", async () => {
    const model = createStaticModel({}, { kernel: true });
    const extras = new Extras(SHAPE, new Channel(model));
    expect(headsKey(MEAN)).toBe("heads:mean");
    extras.want(headsKey(MEAN));
    expect(model.sent.map((s) => s.content)).toEqual([{ type: "fetch", what: "heads", layer: "mean", request: expect.any(String) }]);
    answer(model, headsPayload(0));
    await flush();
    expect(extras.statusOf(headsKey(MEAN)).state).toBe("ready");
    const page = new Extras(SHAPE, null, { "heads:mean": headsPayload(0) });
    page.want(headsKey(MEAN));
    expect(page.statusOf(headsKey(MEAN)).state).toBe("ready");
  });

  it("reads prefetched payloads on a page without a kernel, and says what is missing", () => {
    const prefetched = { [headsKey(0)]: headsPayload(0) };
    const extras = new Extras(SHAPE, null, prefetched);
    extras.want(headsKey(0));
    expect(extras.statusOf(headsKey(0)).state).toBe("ready");
    extras.want("lens");
    expect(extras.statusOf("lens").error).toMatch(/not in this exported page/);
  });
});

describe("lens and projection payloads", () => {
  const n = TOKENS.length;
  const D = 3;
  const k = 2;
  const lens = () => ({
    depths: D,
    n_positions: n,
    k,
    vocab: ["a", "b", "<script>"],
    top: int32Bytes(Array.from({ length: D * n * k }, (_, i) => i % 3)),
    top_probs: encodeFloat32(Array.from({ length: D * n * k }, (_, i) => (i % 2 ? 0.2 : 0.7)), [D, n, k]),
    target: int32Bytes(Array.from({ length: n }, () => 2)),
    target_ranks: int32Bytes(Array.from({ length: D * n }, (_, i) => i)),
    entropy: encodeFloat32(Array.from({ length: D * n }, () => 1), [D, n]),
  });

  it("parses the lens and checks its indices", () => {
    const parsed = parseLens(lens(), n);
    expect([parsed.depths, parsed.n, parsed.k]).toEqual([D, n, k]);
    expect(parsed.vocab[parsed.target[0]!]).toBe("<script>");
    expect(parsed.targetRanks[n + 1]).toBe(n + 1);
    expect(parsed.topProbs[1]).toBeCloseTo(0.2, 6);
    expect(() => parseLens({ ...lens(), vocab: ["a"] }, n)).toThrow(/outside the vocabulary/);
    expect(() => parseLens({ ...lens(), n_positions: n + 1 }, n)).toThrow(/covers 11 positions/);
  });

  it("parses the projection and its bounds over every depth", () => {
    const coords = Array.from({ length: D * n * 2 }, (_, i) => (i % 2 ? -i : i));
    const parsed = parseProjection(
      {
        depths: D,
        n_positions: n,
        coords: encodeFloat32(coords, [D, n, 2]),
        is_image: new Uint8Array(n),
        grid: int32Bytes(Array.from({ length: 2 * n }, () => -1)),
        modality_gap: encodeFloat32([0.1, 0.2, 0.3], [D]),
        explained: 0.5,
      },
      n,
    );
    expect(parsed.bounds).toEqual([0, D * n * 2 - 2, -(D * n * 2 - 1), -1]);
    expect(parsed.gap[2]).toBeCloseTo(0.3, 6);
    expect(() => parseProjection({ depths: D, n_positions: n, coords: float32Bytes([1]) }, n)).toThrow();
  });
});
