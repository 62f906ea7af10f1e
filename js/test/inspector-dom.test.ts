// @vitest-environment happy-dom
/**
 * The linked views in happy-dom against a fake kernel: the layer × head overview, the scrubber's play, the arrow
 * keys, word merging, the lens panel and two displays of one model. Pixels are checked in real Chromium
 * (tests/browser/); here canvases have no 2D context.
 */

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createStaticModel, type StaticModel } from "../src/host/static-host";
import { SYNC_DELAY_MS } from "../src/sync";
import { PLAY_STEP_MS } from "../src/views/controls";
import { answer, headsPayload, L, makeState, TOKENS } from "./fixtures";
import { encodeFloat32, int32Bytes } from "./helpers";
import { mountWidget } from "./mount";

let cleanups: (() => void)[] = [];
beforeEach(() => {
  cleanups = [];
});
afterEach(() => {
  for (const c of cleanups) c();
  vi.useRealTimers();
});

function lazyState(): Record<string, unknown> {
  const s = makeState({ withHeads: false });
  (s.meta as Record<string, unknown>).extras = { heads: true, lens: true, projection: true };
  return s;
}

function mount(state: Record<string, unknown>, model: StaticModel = createStaticModel(state, { kernel: true })) {
  const { unmount, ...mounted } = mountWidget(model);
  cleanups.push(unmount);
  return { model, ...mounted };
}

const flush = () => new Promise<void>((resolve) => setTimeout(resolve, 0));
const fetches = (m: StaticModel) => m.sent.filter((s) => (s.content as { type: string }).type === "fetch").map((s) => s.content);

describe("layer × head overview", () => {
  it("selects a layer from its row header, a head over all layers from its column header, everything from the corner", () => {
    const w = mount(lazyState());
    const buttons = (sel: string) => [...w.el.querySelectorAll<HTMLButtonElement>(sel)];
    expect(buttons(".mmviz-overview-layerbtn")).toHaveLength(L);
    buttons(".mmviz-overview-layerbtn")[0]!.click();
    expect([w.root.dataset.layer, w.root.dataset.head]).toEqual(["0", "-1"]);
    buttons(".mmviz-overview-headbtn")[2]!.click();
    expect([w.root.dataset.layer, w.root.dataset.head]).toEqual(["-1", "2"]);
    expect(w.q(".mmviz-layer-value").textContent).toBe("all (mean)");
    expect(w.q(".mmviz-overview-grid").dataset.selected).toBe("-1,2");
    w.q<HTMLButtonElement>(".mmviz-overview-corner").click();
    expect([w.root.dataset.layer, w.root.dataset.head]).toEqual(["-1", "-1"]);
  });

  it("asks for every layer's heads only when the patch statistic needs them", async () => {
    const w = mount(lazyState());
    expect(fetches(w.model)).toEqual([]);
    const stat = w.q<HTMLSelectElement>(".mmviz-stat");
    stat.value = "patch";
    stat.dispatchEvent(new Event("change"));
    expect(w.q(".mmviz-overview-note").textContent).toMatch(/Hover a patch/);
    expect(fetches(w.model)).toEqual([]);
    w.q(".mmviz-token[data-pos='7']").dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    // A patch hover arrives from the image view; the store is the view's, so set it through the photo's handler.
    const stack = w.q(".mmviz-image-stack");
    stack.getBoundingClientRect = () => ({ left: 0, top: 0, width: 200, height: 120, right: 200, bottom: 120, x: 0, y: 0, toJSON() {} });
    stack.dispatchEvent(new MouseEvent("mousemove", { clientX: 150, clientY: 90 }));
    expect(w.root.dataset.patch).toBe("3");
    expect(fetches(w.model).map((c) => (c as { layer: number }).layer)).toEqual([0, 1]);
    expect(w.q(".mmviz-overview").dataset.missing).toBe(String(L));
    answer(w.model, headsPayload(0), 0);
    answer(w.model, headsPayload(1), 1);
    await flush();
    expect(w.q(".mmviz-overview").dataset.missing).toBe("0");
    expect(w.q(".mmviz-overview").dataset.patch).toBe("3");
  });
});

describe("layer scrubber", () => {
  it("plays through the layers from the first and stops at the last", () => {
    vi.useFakeTimers();
    const w = mount(lazyState()); // starts at layer 1 = the last
    w.q<HTMLButtonElement>(".mmviz-play").click();
    expect(w.root.dataset.layer).toBe("0");
    expect(w.q(".mmviz-play").getAttribute("aria-pressed")).toBe("true");
    vi.advanceTimersByTime(PLAY_STEP_MS);
    expect(w.root.dataset.layer).toBe("1");
    vi.advanceTimersByTime(PLAY_STEP_MS);
    expect(w.q(".mmviz-play").getAttribute("aria-pressed")).toBe("false");
    expect(w.root.dataset.layer).toBe("1");
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    expect(w.model.get("layer")).toBe(1);
  });
});

describe("keyboard", () => {
  it("moves the pinned token with ←/→ among the tokens that have a map, and the layer with ↑/↓", () => {
    const w = mount(lazyState());
    const key = (k: string) => w.root.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));
    key("ArrowRight");
    expect(w.root.dataset.focus).toBe("1"); // the first query position
    key("ArrowRight");
    expect(w.root.dataset.focus).toBe("7");
    key("ArrowLeft");
    key("ArrowLeft");
    key("ArrowLeft");
    expect(w.root.dataset.focus).toBe("1");
    key("ArrowDown");
    expect(w.root.dataset.layer).toBe("0");
    key("ArrowDown");
    expect(w.root.dataset.layer).toBe("0");
    key("ArrowUp");
    expect(w.root.dataset.layer).toBe("1");
    document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape" }));
    expect(w.root.dataset.focus).toBe("-1");
  });
});

describe("word merging", () => {
  it("shows a word's pieces as one chip and focuses all of them", () => {
    const s = lazyState();
    (s.token_layout as Record<string, unknown>).word_start = Uint8Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 1]);
    const w = mount(s);
    const toggle = w.q<HTMLInputElement>(".mmviz-words-toggle");
    toggle.checked = true;
    toggle.dispatchEvent(new Event("change"));
    const chip = w.q(".mmviz-token[data-pos='7']");
    expect(chip.textContent).toBe(" what?");
    expect(chip.dataset.positions).toBe("7,8");
    expect(w.el.querySelector(".mmviz-token[data-pos='8']")).toBe(null);
    chip.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(w.q(".mmviz-caption").textContent).toMatch(/‹ what\?› \(2 pieces, their maps averaged\)/);
  });
});

describe("logit-lens panel", () => {
  it("fetches the lens when opened, then reads the focused token through it; a row click selects its layer", async () => {
    const w = mount(lazyState());
    expect(fetches(w.model)).toEqual([]);
    w.q<HTMLButtonElement>(".mmviz-tab[data-panel='lens']").click();
    expect(fetches(w.model)).toEqual([{ type: "fetch", what: "lens", request: expect.any(String) }]);
    expect(w.q(".mmviz-lens-status").textContent).toMatch(/Loading the logit lens/);
    const n = TOKENS.length;
    const D = L + 1;
    const k = 2;
    answer(w.model, {
      depths: D,
      n_positions: n,
      k,
      vocab: ["red", "<img src=x onerror=alert(1)>", "blue"],
      top: int32Bytes(Array.from({ length: D * n * k }, (_, i) => (i % 2 === 0 ? 0 : 1))),
      top_probs: encodeFloat32(Array.from({ length: D * n * k }, (_, i) => (i % 2 === 0 ? 0.6 : 0.1)), [D, n, k]),
      target: int32Bytes(Array.from({ length: n }, () => 2)),
      target_ranks: int32Bytes(Array.from({ length: D * n }, (_, i) => Math.floor(i / n))),
      entropy: encodeFloat32(new Array(D * n).fill(1), [D, n]),
    } as never);
    await flush();
    w.q(".mmviz-token[data-pos='7']").dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    const rows = [...w.el.querySelectorAll<HTMLTableRowElement>("tr.mmviz-lens-row")];
    expect(rows.map((r) => r.dataset.depth)).toEqual(["0", "1", "2"]);
    expect([...rows[1]!.querySelectorAll(".mmviz-lens-token")].map((c) => c.textContent)).toEqual([
      "red",
      "<img src=x onerror=alert(1)>",
    ]);
    expect(w.el.querySelector(".mmviz-lens img")).toBe(null); // inert text
    expect(rows.map((r) => r.querySelector(".mmviz-lens-rank")!.textContent)).toEqual(["#1", "#2", "#3"]);
    expect(rows[2]!.classList.contains("mmviz-current")).toBe(true); // layer 1 = depth 2
    expect(w.q(".mmviz-lens-title").textContent).toMatch(/‹ what› \(position 7\).*rank of ‹blue›/);
    rows[1]!.querySelector("th")!.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    expect(w.root.dataset.layer).toBe("0");
  });
});

describe("two displays of one widget", () => {
  it("are independent views that share the fetched data", async () => {
    const state = lazyState();
    const model = createStaticModel(state, { kernel: true });
    const a = mount(state, model);
    const b = mount(state, model);
    a.q(".mmviz-token[data-pos='7']").dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(a.root.dataset.focus).toBe("7");
    expect(b.root.dataset.focus).toBe("-1");
    const head = a.q<HTMLSelectElement>(".mmviz-head");
    head.value = "1";
    head.dispatchEvent(new Event("change"));
    expect(fetches(model)).toHaveLength(1);
    answer(model, headsPayload(1));
    await flush();
    const bHead = b.q<HTMLSelectElement>(".mmviz-head");
    bHead.value = "2";
    bHead.dispatchEvent(new Event("change"));
    expect(fetches(model)).toHaveLength(1); // layer 1's heads are already here
    expect(b.root.dataset.waiting).toBe("");
  });
});
