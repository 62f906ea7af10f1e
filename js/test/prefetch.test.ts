// @vitest-environment happy-dom
/**
 * Idle prefetch of the neighbouring layers' per-head maps (prefetch.ts, and its half in extras.ts) against a fake
 * kernel: what is asked for and when, the bounds (one in flight, a bounded unused cache), cancellation by a newer
 * layer switch, a kernel that declines, and in the whole widget: a neighbouring layer paints with no new request.
 */

import { afterEach, describe, expect, it, vi } from "vitest";
import { Channel } from "../src/channel";
import { Extras, headsKey, MAX_UNUSED_PREFETCHED } from "../src/extras";
import { createStaticModel, type StaticModel } from "../src/host/static-host";
import {
  BUSY_RETRY_MS,
  FALLBACK_DELAY_MS,
  IDLE_TIMEOUT_MS,
  idleScheduler,
  neighbourLayers,
  Prefetcher,
  type PrefetchReport,
  type Scheduler,
} from "../src/prefetch";
import { MEAN } from "../src/protocol";
import { answer, answerFetch, H, headsPayload, P, Q, realState, TOKENS } from "./fixtures";
import { mountWidget } from "./mount";

const SHAPE = { H, Q, P, n: TOKENS.length };
const LAYERS = 10;

type Fetch = { type: string; what: string; layer?: number | string; prefetch?: boolean; request: string };
const fetches = (m: StaticModel): Fetch[] => m.sent.map((s) => s.content as Fetch).filter((c) => c.type === "fetch");

/** A scheduler the test runs by hand: `idle()` runs what waits for an idle moment (and retries when asked). */
function manualScheduler() {
  const tasks = new Map<number, { fn: () => void; delayMs: number }>();
  let next = 0;
  const schedule: Scheduler = (fn, delayMs) => {
    const id = ++next;
    tasks.set(id, { fn, delayMs });
    return () => tasks.delete(id);
  };
  const run = (which: (delayMs: number) => boolean): void => {
    const due = [...tasks.entries()].filter(([, t]) => which(t.delayMs));
    for (const [id] of due) tasks.delete(id);
    for (const [, t] of due) t.fn();
  };
  return {
    schedule,
    delays: () => [...tasks.values()].map((t) => t.delayMs),
    idle: () => run((d) => d === 0),
    retry: () => run((d) => d > 0),
  };
}

function setup(layers = LAYERS, channel = true) {
  const model = createStaticModel({}, { kernel: true });
  const requests = new Channel(model);
  const extras = new Extras(SHAPE, channel ? requests : null);
  const clock = manualScheduler();
  const reports: PrefetchReport[] = [];
  const prefetcher = new Prefetcher(extras, layers, { schedule: clock.schedule, onReport: (r) => reports.push(r) });
  const at = (layer: number | typeof MEAN, head: number | typeof MEAN = 0, attention = true) =>
    prefetcher.follow({ layer, head, attention });
  /** Answer the last fetch of `layer` like the kernel. */
  const reply = (layer: number): void => {
    let index = model.sent.length - 1;
    while (index >= 0 && (model.sent[index]!.content as Fetch).layer !== layer) index--;
    answer(model, headsPayload(layer), index);
  };
  return { model, requests, extras, clock, prefetcher, reports, at, reply };
}

describe("neighbourLayers", () => {
  it("lists the layers within the radius, nearest first, the direction of the last move first, inside 0 … L−1", () => {
    expect(neighbourLayers(5, 10, 2, 1)).toEqual([6, 7, 4, 3]);
    expect(neighbourLayers(5, 10, 2, -1)).toEqual([4, 3, 6, 7]);
    expect(neighbourLayers(0, 3, 2, 1)).toEqual([1, 2]);
    expect(neighbourLayers(9, 10, 2, 1)).toEqual([8, 7]);
    expect(neighbourLayers(0, 1, 2, 1)).toEqual([]);
  });
});

describe("Prefetcher", () => {
  it("prefetches the current and the neighbouring layers at an idle moment, one request at a time, never what is cached", () => {
    const { model, extras, clock, prefetcher, at, reply } = setup();
    at(3);
    expect(fetches(model)).toEqual([]); // nothing before the page is idle
    expect(prefetcher.report().state).toBe("waiting");
    clock.idle();
    // The current layer first (no view asked for it yet: nothing is focused, and a hover will need it).
    expect(fetches(model)).toEqual([{ type: "fetch", what: "heads", layer: 3, prefetch: true, request: expect.any(String) }]);
    expect(prefetcher.report()).toMatchObject({ state: "loading", loading: [3], issued: 1 });
    clock.idle();
    expect(fetches(model)).toHaveLength(1); // one in flight at most
    for (const layer of [3, 4, 5, 2, 1]) {
      reply(layer);
      clock.idle();
    }
    expect(fetches(model).map((f) => f.layer)).toEqual([3, 4, 5, 2, 1]); // nearest first, upwards first
    expect(prefetcher.report()).toEqual({ state: "idle", loading: [], issued: 5, cancelled: 0 });
    expect(clock.delays()).toEqual([]); // nothing left to do: nothing scheduled
    expect(extras.unusedPrefetched()).toEqual([3, 4, 5, 2, 1].map(headsKey));

    // The view moves up one layer: it is in the browser (no request), and only the new neighbour is asked for.
    at(4);
    extras.want(headsKey(4));
    expect(extras.get(headsKey(4))).not.toBeNull();
    expect(extras.unusedPrefetched()).not.toContain(headsKey(4)); // in use now
    clock.idle();
    expect(fetches(model).map((f) => f.layer)).toEqual([3, 4, 5, 2, 1, 6]);
    prefetcher.dispose();
  });

  it("waits while a view's own request is in flight, and prefetches nothing for the head mean, another method or a static page", () => {
    const { model, requests, extras, clock, prefetcher, at, reply } = setup();
    extras.want(headsKey(3)); // the view's own fetch of the layer it shows
    at(3);
    clock.idle();
    expect(fetches(model).map((f) => [f.layer, f.prefetch])).toEqual([[3, undefined]]);
    expect(clock.delays()).toEqual([BUSY_RETRY_MS]);
    reply(3); // its arrival: the next idle moment prefetches
    expect(clock.delays()).toEqual([0]);
    clock.idle();
    expect(fetches(model).map((f) => [f.layer, f.prefetch])).toEqual([[3, undefined], [4, true]]);
    reply(4);
    // A compute request in flight (the kernel is busy with torch work): no prefetch, look again later.
    requests.ask({ type: "compute", method: "relevancy" }, 60_000, { reply: () => {}, fail: () => {} });
    const before = model.sent.length;
    clock.idle();
    expect(model.sent).toHaveLength(before);
    expect(clock.delays()).toEqual([BUSY_RETRY_MS]);

    for (const [layer, head, attention] of [[3, MEAN, true], [MEAN, 0, true], [3, 0, false]] as const) {
      at(layer, head, attention);
      expect(prefetcher.report().state).toBe("off");
      expect(clock.delays()).toEqual([]);
    }
    const page = setup(LAYERS, false);
    page.at(3);
    expect(page.prefetcher.report().state).toBe("off");
    expect(page.clock.delays()).toEqual([]);
  });

  it("cancels a prefetch a newer layer switch left behind, keeps one still in the window, and the layer switched to", () => {
    const { model, extras, clock, prefetcher, at, reply } = setup();
    extras.want(headsKey(3)); // the view shows layer 3
    reply(3);
    at(3);
    clock.idle(); // 4 in flight
    at(8); // a jump: 4 is stale
    expect(prefetcher.report()).toMatchObject({ state: "waiting", cancelled: 1 });
    expect(extras.known(headsKey(4))).toBe(false);
    reply(4); // the late reply is dropped
    expect(extras.get(headsKey(4))).toBeNull();
    clock.idle();
    expect(fetches(model).map((f) => f.layer)).toEqual([3, 4, 8]);

    extras.want(headsKey(8)); // the view asks for the layer on its way: it waits for it, no second request
    expect(fetches(model)).toHaveLength(3);
    expect(extras.userBusy).toBe(true);
    reply(8);
    expect(extras.get(headsKey(8))).not.toBeNull();
    expect(extras.unusedPrefetched()).toEqual([]); // it was wanted
    clock.idle();
    expect(fetches(model).at(-1)!.layer).toBe(9); // moving up: 9 first

    at(9); // the layer on its way is the one switched to: kept
    expect(prefetcher.report()).toMatchObject({ loading: [9], cancelled: 1 });
    reply(9);
    clock.idle(); // at 9: 8 is there, 7 next
    expect(fetches(model).at(-1)!.layer).toBe(7);
    at(8); // moving down one: 7 is still a neighbour, kept
    expect(prefetcher.report()).toMatchObject({ loading: [7], cancelled: 1 });
    prefetcher.dispose(); // a view closed: its prefetches go with it
    expect(extras.known(headsKey(7))).toBe(false);
  });

  it(`keeps at most ${MAX_UNUSED_PREFETCHED} prefetched layers no view used, dropping the oldest; used ones stay`, () => {
    const { extras, clock, at, reply, model } = setup(60);
    const walk = (layer: number): void => {
      at(layer);
      for (;;) {
        clock.idle();
        const last = fetches(model).at(-1);
        if (last === undefined || extras.get(headsKey(Number(last.layer))) !== null) break;
        reply(Number(last.layer));
      }
    };
    walk(0); // 0, 1, 2
    extras.want(headsKey(1)); // a view shows layer 1: in use
    for (const layer of [10, 20, 30]) walk(layer); // 5 more each
    expect(extras.unusedPrefetched()).toHaveLength(MAX_UNUSED_PREFETCHED);
    expect(extras.known(headsKey(2))).toBe(false); // the oldest unused ones were dropped
    expect(extras.known(headsKey(11))).toBe(false);
    expect(extras.get(headsKey(1))).not.toBeNull();
    expect(extras.unusedPrefetched()).toEqual([22, 19, 18, 30, 31, 32, 29, 28].map(headsKey));
  });

  it("stops prefetching when the kernel declines (Inspector.prefetch = False); the view's own fetch still works", () => {
    const { model, extras, clock, prefetcher, at, reply } = setup();
    at(3);
    clock.idle();
    const declined = fetches(model)[0]!;
    model.receive({ type: "fetched", request: declined.request, ok: false, error: "prefetching is off (Inspector.prefetch = False)" });
    expect(prefetcher.report().state).toBe("off");
    expect(extras.canPrefetch).toBe(false);
    expect(extras.known(headsKey(3))).toBe(false); // no error left for a view to trip on
    at(6);
    clock.idle();
    expect(fetches(model)).toHaveLength(1); // asked once, not at every layer
    extras.want(headsKey(3));
    expect(fetches(model).at(-1)).toMatchObject({ layer: 3 });
    expect(fetches(model).at(-1)!.prefetch).toBeUndefined();
    reply(3);
    expect(extras.statusOf(headsKey(3)).state).toBe("ready");
  });

  it("a view that waits for a declined prefetch gets the layer by its own fetch, not the kernel's refusal", () => {
    const { model, extras, clock, at, reply } = setup();
    at(3);
    clock.idle(); // 3 on its way as a prefetch
    extras.want(headsKey(3)); // the view needs it now: it waits for the prefetch
    const declined = fetches(model)[0]!;
    model.receive({ type: "fetched", request: declined.request, ok: false, error: "prefetching is off (Inspector.prefetch = False)" });
    expect(fetches(model).map((f) => [f.layer, f.prefetch])).toEqual([[3, true], [3, undefined]]);
    expect(extras.statusOf(headsKey(3)).state).toBe("loading");
    reply(3);
    expect(extras.statusOf(headsKey(3)).state).toBe("ready");
  });
});

describe("idleScheduler", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    vi.useRealTimers();
  });

  it("uses requestIdleCallback with a deadline where the browser has it, else a short timeout", () => {
    const idle = vi.fn((_fn: () => void, _options: { timeout: number }) => 7);
    const cancelIdle = vi.fn();
    vi.stubGlobal("requestIdleCallback", idle);
    vi.stubGlobal("cancelIdleCallback", cancelIdle);
    const fn = vi.fn();
    idleScheduler(fn, 0)();
    expect(idle.mock.calls[0]![1]).toEqual({ timeout: IDLE_TIMEOUT_MS });
    expect(cancelIdle).toHaveBeenCalledWith(7);
    vi.unstubAllGlobals();
    vi.stubGlobal("requestIdleCallback", undefined);
    vi.useFakeTimers();
    idleScheduler(fn, 0);
    vi.advanceTimersByTime(FALLBACK_DELAY_MS);
    expect(fn).toHaveBeenCalledTimes(1);
    const cancel = idleScheduler(fn, BUSY_RETRY_MS);
    cancel();
    vi.advanceTimersByTime(BUSY_RETRY_MS);
    expect(fn).toHaveBeenCalledTimes(1);
  });
});

describe("in the widget", () => {
  afterEach(() => vi.useRealTimers());

  it("after an idle moment, a switch to the neighbouring layer paints at once, with no new request", async () => {
    vi.useFakeTimers(); // happy-dom has no requestIdleCallback: the fallback timeout runs under the fake clock
    const model = createStaticModel(realState(), { kernel: true });
    const { root, q, unmount } = mountWidget(model);
    try {
      const last = Number(root.dataset.layer); // the Inspector opens at the last layer
      expect(root.dataset.prefetch).toBe("off"); // the head mean: nothing to prefetch
      q(".mmviz-token.mmviz-answer").dispatchEvent(new MouseEvent("click", { bubbles: true }));
      const head = q<HTMLSelectElement>(".mmviz-head");
      head.value = "0";
      head.dispatchEvent(new Event("change"));
      expect(root.dataset.waiting).toMatch(/loading the heads of layer/);
      answerFetch(model); // the view's own fetch
      await vi.advanceTimersByTimeAsync(0);
      expect(root.dataset.waiting).toBe("");
      for (let i = 0; i < 2; i++) {
        await vi.advanceTimersByTimeAsync(FALLBACK_DELAY_MS);
        expect(root.dataset.prefetch).toBe("loading");
        answerFetch(model);
      }
      await vi.advanceTimersByTimeAsync(FALLBACK_DELAY_MS);
      expect(fetches(model).map((f) => [f.layer, f.prefetch ?? false])).toEqual([
        [last, false],
        [last - 1, true],
        [last - 2, true],
      ]);
      expect(root.dataset.prefetch).toBe("idle");
      expect(root.dataset.prefetchIssued).toBe("2");

      const slider = q<HTMLInputElement>(".mmviz-layer");
      slider.value = String(last - 1);
      slider.dispatchEvent(new Event("input"));
      expect(root.dataset.layer).toBe(String(last - 1));
      expect(root.dataset.waiting).toBe(""); // painted in the same task: nothing to wait for
      expect(q(".mmviz-heat").dataset.layer).toBe(String(last - 1));
      expect(fetches(model)).toHaveLength(3);
      await vi.advanceTimersByTimeAsync(FALLBACK_DELAY_MS);
      expect(fetches(model).at(-1)).toMatchObject({ layer: last - 3, prefetch: true }); // the next one down
    } finally {
      unmount();
    }
  });
});
