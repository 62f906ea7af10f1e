/** Compute-on-request with a fake kernel: request, pending state (in the store), stale replies, errors, timeout. */

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Channel } from "../src/channel";
import { ComputeRequests, COMPUTE_TIMEOUT_MS } from "../src/compute";
import { createStaticModel } from "../src/host/static-host";
import { Store } from "../src/store";

type Sent = { type: string; method: string; request: string };

describe("ComputeRequests", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const setup = (timeout = COMPUTE_TIMEOUT_MS) => {
    const model = createStaticModel({}, { kernel: true });
    const channel = new Channel(model);
    const store = new Store();
    const changes = vi.fn();
    store.subscribe(changes);
    const failures = vi.fn();
    const c = new ComputeRequests(channel, store, timeout, failures);
    return { model, channel, store, c, changes, failures, last: () => model.sent.at(-1)!.content as Sent };
  };

  it("sends one compute message per request, with a fresh id, and is pending until the reply", () => {
    const { model, c, changes, last } = setup();
    c.request("relevancy");
    expect(model.sent).toHaveLength(1);
    expect(last()).toMatchObject({ type: "compute", method: "relevancy" });
    expect(typeof last().request).toBe("string");
    expect(c.get().pending).toBe("relevancy");
    expect(changes).toHaveBeenCalledTimes(1);
    c.request("relevancy"); // already pending: not sent twice
    expect(model.sent).toHaveLength(1);
    const first = last().request;
    c.request("rise"); // another method replaces the pending request
    expect(model.sent).toHaveLength(2);
    expect(last().request).not.toBe(first);
    expect(c.currentRequest).toBe(last().request);
  });

  it("drops stale replies and other messages; the matching reply ends the pending state", () => {
    const { model, channel, c, changes, last } = setup();
    c.request("relevancy");
    const stale = last().request;
    c.request("rise");
    const current = last().request;
    changes.mockClear();
    model.receive({ type: "computed", method: "relevancy", request: stale, ok: true });
    model.receive({ type: "other", request: current, ok: true });
    model.receive("computed");
    model.receive(null);
    expect(c.get().pending).toBe("rise");
    expect(changes).not.toHaveBeenCalled();
    model.receive({ type: "computed", method: "rise", request: current, ok: true });
    expect(c.get()).toMatchObject({ pending: null, failed: null });
    expect(changes).toHaveBeenCalledTimes(1);
    // A second copy of the same reply is stale too.
    expect(channel.receive({ type: "computed", method: "rise", request: current, ok: true })).toBe(false);
  });

  it("shares the model's one channel with fetches; a reply of the other type answers neither", () => {
    const { model, channel, c, last } = setup();
    const fetched = vi.fn();
    channel.ask({ type: "fetch", what: "lens" }, 1000, { reply: fetched, fail: () => {} });
    const fetchId = last().request;
    c.request("rise");
    const computeId = last().request;
    expect(channel.pending).toBe(2);
    model.receive({ type: "fetched", request: computeId, ok: true });
    model.receive({ type: "computed", request: fetchId, ok: true });
    expect(c.get().pending).toBe("rise");
    expect(fetched).not.toHaveBeenCalled();
    model.receive({ type: "fetched", request: fetchId, ok: true });
    model.receive({ type: "computed", request: computeId, ok: true });
    expect(fetched).toHaveBeenCalledTimes(1);
    expect(c.get().pending).toBe(null);
    expect(channel.pending).toBe(0);
  });

  it("reports the kernel's error and calls onFailure", () => {
    const { model, c, failures, last } = setup();
    c.request("occlusion");
    model.receive({ type: "computed", method: "occlusion", request: last().request, ok: false, error: "no model" });
    expect(c.get().pending).toBe(null);
    expect(c.get().failed).toEqual({ method: "occlusion", message: "no model", timedOut: false });
    expect(failures).toHaveBeenCalledWith("occlusion");
    c.clearFailure();
    expect(c.get().failed).toBe(null);
    c.request("occlusion");
    model.receive({ type: "computed", request: last().request, ok: false });
    expect(c.get().failed?.message).toBe("unknown error");
  });

  it("gives up after the timeout, saying the kernel did not answer; a late reply is stale", () => {
    const { channel, c, failures, last } = setup();
    c.request("rise");
    const id = last().request;
    vi.advanceTimersByTime(COMPUTE_TIMEOUT_MS - 1);
    expect(c.get().pending).toBe("rise");
    vi.advanceTimersByTime(1);
    expect(c.get().pending).toBe(null);
    expect(c.get().failed).toMatchObject({ method: "rise", timedOut: true });
    expect(c.get().failed!.message).toMatch(/kernel did not answer within 10 minutes/);
    expect(failures).toHaveBeenCalledWith("rise");
    expect(channel.receive({ type: "computed", method: "rise", request: id, ok: true })).toBe(false);
    expect(COMPUTE_TIMEOUT_MS).toBeGreaterThanOrEqual(5 * 60 * 1000);
  });

  it("a reply cancels the timeout; dispose stops listening", () => {
    const { model, c, failures, last } = setup(1000);
    c.request("rise");
    model.receive({ type: "computed", method: "rise", request: last().request, ok: true });
    vi.advanceTimersByTime(5000);
    expect(failures).not.toHaveBeenCalled();
    c.request("knockout");
    c.dispose();
    model.receive({ type: "computed", method: "knockout", request: last().request, ok: true });
    expect(c.get().pending).toBe("knockout");
    vi.advanceTimersByTime(5000);
    expect(failures).not.toHaveBeenCalled();
  });

  it("reports a send that throws as a failure", () => {
    const model = createStaticModel({}, { kernel: true });
    model.send = () => {
      throw new Error("comm closed");
    };
    const c = new ComputeRequests(new Channel(model), new Store());
    c.request("rise");
    expect(c.get().failed?.message).toMatch(/could not reach the kernel: comm closed/);
    c.dispose();
  });
});
