import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createStaticModel, putAtPath } from "../src/host/static-host";
import { ModelSync, SYNC_DELAY_MS } from "../src/sync";
import { MEAN } from "../src/protocol";
import { INITIAL_STATE } from "../src/store";

describe("createStaticModel", () => {
  it("gets the initial state without aliasing the caller's object", () => {
    const init = { layer: 1, tokens: ["a"] };
    const m = createStaticModel(init);
    expect(m.get("layer")).toBe(1);
    expect(m.get("tokens")).toEqual(["a"]);
    expect(m.get("missing")).toBeUndefined();
    m.set("layer", 2);
    expect(init.layer).toBe(1);
  });

  it("emits change:<key> (and change) on set, only when the value changes", () => {
    const m = createStaticModel({ layer: 0 });
    const onLayer = vi.fn();
    const onAny = vi.fn();
    const onHead = vi.fn();
    m.on("change:layer", onLayer);
    m.on("change", onAny);
    m.on("change:head", onHead);
    m.set("layer", 3);
    expect(onLayer).toHaveBeenCalledTimes(1);
    expect(onLayer).toHaveBeenCalledWith(m, 3);
    expect(onAny).toHaveBeenCalledTimes(1);
    m.set("layer", 3);
    expect(onLayer).toHaveBeenCalledTimes(1);
    expect(onHead).not.toHaveBeenCalled();
    expect(m.get("layer")).toBe(3);
  });

  it("off removes one callback, all callbacks of an event, or everything", () => {
    const m = createStaticModel({});
    const a = vi.fn();
    const b = vi.fn();
    m.on("change:x", a);
    m.on("change:x", b);
    m.off("change:x", a);
    m.set("x", 1);
    expect(a).not.toHaveBeenCalled();
    expect(b).toHaveBeenCalledTimes(1);
    m.off("change:x");
    m.set("x", 2);
    expect(b).toHaveBeenCalledTimes(1);
    m.on("change:y", a);
    m.off();
    m.set("y", 1);
    expect(a).not.toHaveBeenCalled();
  });

  it("records save_changes (keys set since the last save) and send", () => {
    const m = createStaticModel({ layer: 0, head: "mean" });
    m.set("layer", 2);
    m.set("head", 1);
    m.save_changes();
    m.save_changes();
    m.set("layer", 2); // unchanged: not dirty
    m.set("pinned", 4);
    m.save_changes();
    expect(m.savedChanges).toEqual([{ layer: 2, head: 1 }, {}, { pinned: 4 }]);
    m.send({ hello: 1 });
    expect(m.sent).toEqual([{ content: { hello: 1 }, buffers: undefined }]);
  });

  it("has a widget_manager stub that rejects", async () => {
    await expect(createStaticModel().widget_manager.get_model("x")).rejects.toThrow(/no widget manager/);
  });
});

describe("putAtPath (ipywidgets put_buffers)", () => {
  it("puts buffers into nested dicts and lists", () => {
    const dv = new DataView(new ArrayBuffer(4));
    const state: Record<string, any> = { attention: { v: 1 }, images: [null, null] };
    putAtPath(state, ["attention", "data"], dv);
    putAtPath(state, ["images", 1], dv);
    putAtPath(state, ["token_layout", "kinds"], dv);
    putAtPath(state, ["new", 0], dv);
    expect(state.attention).toEqual({ v: 1, data: dv });
    expect(state.images[1]).toBe(dv);
    expect(state.token_layout.kinds).toBe(dv);
    expect(Array.isArray(state.new)).toBe(true);
    expect(() => putAtPath(state, [], dv)).toThrow(/empty/);
  });
});

describe("ModelSync (debounced browser → Python)", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("writes the latest layer/head/pinned once, after the delay", () => {
    const m = createStaticModel({ layer: 0, head: "mean", pinned: -1, method: "attention" });
    const sync = new ModelSync(m);
    sync.schedule({ ...INITIAL_STATE, layer: 1 });
    sync.schedule({ ...INITIAL_STATE, layer: 2, head: 1 });
    vi.advanceTimersByTime(SYNC_DELAY_MS - 1);
    expect(m.savedChanges).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(m.savedChanges).toEqual([{ layer: 2, head: 1 }]);
    sync.schedule({ ...INITIAL_STATE, layer: 2, head: 1, pinnedToken: 7 });
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    expect(m.savedChanges).toEqual([{ layer: 2, head: 1 }, { pinned: 7 }]);
    expect(m.get("pinned")).toBe(7);
  });

  it("does not save when nothing differs, and cancel drops a pending write", () => {
    const m = createStaticModel({ layer: 0, head: "mean", pinned: -1, method: "attention" });
    const sync = new ModelSync(m);
    sync.schedule(INITIAL_STATE);
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    sync.schedule({ ...INITIAL_STATE, layer: 4 });
    sync.cancel();
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    expect(m.savedChanges).toEqual([]);
  });

  it("sends the mean over layers or heads as \"mean\" (the wire's word), an index otherwise", () => {
    const m = createStaticModel({ layer: 0, head: 1, pinned: -1, method: "attention" });
    const sync = new ModelSync(m);
    sync.schedule({ ...INITIAL_STATE, layer: MEAN, head: MEAN });
    sync.flush();
    sync.schedule({ ...INITIAL_STATE, layer: 3, head: 2 });
    sync.flush();
    expect(m.savedChanges).toEqual([{ layer: "mean", head: "mean" }, { layer: 3, head: 2 }]);
  });

  it("flush writes immediately", () => {
    const m = createStaticModel({ layer: 0, head: "mean", pinned: -1, method: "attention" });
    const sync = new ModelSync(m);
    sync.schedule({ ...INITIAL_STATE, head: 2 });
    sync.flush();
    expect(m.savedChanges).toEqual([{ head: 2 }]);
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    expect(m.savedChanges.length).toBe(1);
  });
});
