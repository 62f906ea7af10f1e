import { describe, expect, it, vi } from "vitest";
import { MEAN } from "../src/protocol";
import { focusToken, Store } from "../src/store";

describe("Store", () => {
  it("starts with nothing focused, layer 0 and the head mean", () => {
    const s = new Store();
    expect(s.get()).toMatchObject({ hoverToken: null, pinnedToken: null, hoverPatch: null, layer: 0, head: MEAN });
    expect(s.get()).toMatchObject({ method: "attention", preview: null, words: false, scale: "linear", panel: "none" });
    expect(s.get().compute).toEqual({ pending: null, since: 0, failed: null, returnTo: "attention" });
    expect(new Store({ layer: 3 }).get().layer).toBe(3);
  });

  it("notifies synchronously, only on change, with the previous state", () => {
    const s = new Store();
    const fn = vi.fn();
    const off = s.subscribe(fn);
    s.set({ hoverToken: 4 });
    expect(fn).toHaveBeenCalledTimes(1);
    expect(fn.mock.calls[0]![0].hoverToken).toBe(4);
    expect(fn.mock.calls[0]![1].hoverToken).toBe(null);
    s.set({ hoverToken: 4 });
    s.set({});
    expect(fn).toHaveBeenCalledTimes(1);
    s.set({ hoverToken: null, layer: 2 });
    expect(fn).toHaveBeenCalledTimes(2);
    expect(s.get()).toMatchObject({ hoverToken: null, layer: 2 });
    off();
    s.set({ layer: 1 });
    expect(fn).toHaveBeenCalledTimes(2);
  });

  it("keeps states immutable", () => {
    const s = new Store();
    const before = s.get();
    s.set({ head: 2 });
    expect(before.head).toBe(MEAN);
    expect(s.get()).not.toBe(before);
  });

  it("focuses the pinned token over the hovered one", () => {
    const s = new Store();
    expect(focusToken(s.get())).toBe(null);
    s.set({ hoverToken: 3 });
    expect(focusToken(s.get())).toBe(3);
    s.set({ pinnedToken: 0 });
    expect(focusToken(s.get())).toBe(0); // 0 is a position, not "none"
    s.set({ pinnedToken: null });
    expect(focusToken(s.get())).toBe(3);
  });

  it("clear() drops every listener", () => {
    const s = new Store();
    const fn = vi.fn();
    s.subscribe(fn);
    s.clear();
    s.set({ layer: 5 });
    expect(fn).not.toHaveBeenCalled();
  });
});
