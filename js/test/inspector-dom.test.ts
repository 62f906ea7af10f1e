// @vitest-environment happy-dom
/**
 * The linked views in happy-dom on the payloads the Inspector sends (tests/fixtures/payloads_v1.json), with a
 * fake kernel replaying the recorded fetch replies: the layer × head overview, the scrubber's play, the arrow keys,
 * word merging, the lens panel, two displays of one model, and a standalone page reading `state.prefetched`.
 * Pixels are checked in real Chromium (tests/browser/); here canvases have no 2D context.
 */

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { fetchedPayload, MEAN, parseLens } from "../src/protocol";
import { createStaticModel, mountStatic, type StaticModel } from "../src/host/static-host";
import { SYNC_DELAY_MS } from "../src/sync";
import { quoteToken } from "../src/views/caption";
import { PLAY_STEP_MS } from "../src/views/controls";
import { answerFetch, realData, realFetched, realPrefetched, realState } from "./fixtures";
import { mountWidget } from "./mount";

const { data } = realData();
const { L, H } = data;
/** A prompt token with an attention row. */
const PROMPT = data.tokens.indexOf("what");

let cleanups: (() => void)[] = [];
beforeEach(() => {
  cleanups = [];
});
afterEach(() => {
  for (const c of cleanups) c();
  vi.useRealTimers();
});

function mount(state: Record<string, unknown>, model: StaticModel = createStaticModel(state, { kernel: true })) {
  const { unmount, ...mounted } = mountWidget(model);
  cleanups.push(unmount);
  return { model, ...mounted };
}

const flush = () => new Promise<void>((resolve) => setTimeout(resolve, 0));
type Fetch = { type: string; what: string; layer?: number | string; request: string };
const fetches = (m: StaticModel): Fetch[] =>
  m.sent.map((s) => s.content as Fetch).filter((c) => c.type === "fetch");
/** Answer every fetch not answered yet (in order) with the kernel's recorded reply. */
function answerAll(m: StaticModel, answered: Set<string>): void {
  for (let i = 0; i < m.sent.length; i++) {
    const c = m.sent[i]!.content as Fetch;
    if (c.type !== "fetch" || answered.has(c.request)) continue;
    answered.add(c.request);
    answerFetch(m, i);
  }
}

describe("layer × head overview", () => {
  it("selects a layer from its row header, a head over all layers from its column header, everything from the corner", () => {
    const w = mount(realState());
    const buttons = (sel: string) => [...w.el.querySelectorAll<HTMLButtonElement>(sel)];
    expect(buttons(".mmviz-overview-layerbtn")).toHaveLength(L);
    expect(buttons(".mmviz-overview-headbtn")).toHaveLength(H);
    buttons(".mmviz-overview-layerbtn")[0]!.click();
    expect([w.root.dataset.layer, w.root.dataset.head]).toEqual(["0", MEAN]);
    buttons(".mmviz-overview-headbtn")[2]!.click();
    expect([w.root.dataset.layer, w.root.dataset.head]).toEqual([MEAN, "2"]);
    expect(w.q(".mmviz-layer-value").textContent).toBe("all (mean)");
    expect(w.q(".mmviz-overview-grid").dataset.selected).toBe("mean,2");
    w.q<HTMLButtonElement>(".mmviz-overview-corner").click();
    expect([w.root.dataset.layer, w.root.dataset.head]).toEqual([MEAN, MEAN]);
  });

  it("asks for every layer's heads only when the patch statistic needs them", async () => {
    const w = mount(realState());
    expect(fetches(w.model)).toEqual([]);
    const stat = w.q<HTMLSelectElement>(".mmviz-stat");
    stat.value = "patch";
    stat.dispatchEvent(new Event("change"));
    expect(w.q(".mmviz-overview-note").textContent).toMatch(/Hover a patch/);
    expect(fetches(w.model)).toEqual([]);
    w.q(`.mmviz-token[data-pos='${PROMPT}']`).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    // A patch hover arrives from the image view; the stack is laid out at the image's own size, so client
    // coordinates are original pixels: hover the centre of column 27's box.
    const patch = 27;
    const [x0, y0, x1, y1] = data.box(patch);
    const { width, height } = data.images[0]!;
    const stack = w.q(".mmviz-image-stack");
    stack.getBoundingClientRect = () => ({ left: 0, top: 0, width, height, right: width, bottom: height, x: 0, y: 0, toJSON() {} });
    stack.dispatchEvent(new MouseEvent("mousemove", { clientX: (x0 + x1) / 2, clientY: (y0 + y1) / 2 }));
    expect(w.root.dataset.patch).toBe(String(patch));
    expect(w.q(".mmviz-overview").dataset.missing).toBe(String(L));
    const answered = new Set<string>();
    while (fetches(w.model).length > answered.size) answerAll(w.model, answered); // two at a time
    expect(fetches(w.model).map((c) => [c.what, c.layer])).toEqual(Array.from({ length: L }, (_, l) => ["heads", l]));
    await flush();
    expect(w.q(".mmviz-overview").dataset.missing).toBe("0");
    expect(w.q(".mmviz-overview").dataset.patch).toBe(String(patch));
  });
});

describe("layer scrubber", () => {
  it("plays through the layers from the first and stops at the last", () => {
    vi.useFakeTimers();
    const w = mount(realState()); // the Inspector starts at the last layer
    expect(w.root.dataset.layer).toBe(String(L - 1));
    w.q<HTMLButtonElement>(".mmviz-play").click();
    expect(w.root.dataset.layer).toBe("0");
    expect(w.q(".mmviz-play").getAttribute("aria-pressed")).toBe("true");
    for (let l = 1; l < L; l++) {
      vi.advanceTimersByTime(PLAY_STEP_MS);
      expect(w.root.dataset.layer).toBe(String(l));
    }
    vi.advanceTimersByTime(PLAY_STEP_MS);
    expect(w.q(".mmviz-play").getAttribute("aria-pressed")).toBe("false");
    expect(w.root.dataset.layer).toBe(String(L - 1));
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    expect(w.model.get("layer")).toBe(L - 1);
  });
});

describe("keyboard", () => {
  it("moves the pinned token with ←/→ among the tokens that have a map, and the layer with ↑/↓", () => {
    const w = mount(realState());
    const key = (k: string) => w.root.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));
    const rows = [...data.queryPositions].sort((a, b) => a - b);
    key("ArrowRight");
    expect(w.root.dataset.focus).toBe(String(rows[0])); // the first query position
    key("ArrowRight");
    expect(w.root.dataset.focus).toBe(String(rows[1]));
    key("ArrowLeft");
    key("ArrowLeft");
    key("ArrowLeft");
    expect(w.root.dataset.focus).toBe(String(rows[0]));
    key("ArrowDown");
    expect(w.root.dataset.layer).toBe(String(L - 2));
    for (let i = 0; i < L; i++) key("ArrowDown");
    expect(w.root.dataset.layer).toBe("0");
    key("ArrowUp");
    expect(w.root.dataset.layer).toBe("1");
    document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape" }));
    expect(w.root.dataset.focus).toBe("-1");
  });
});

describe("word merging", () => {
  it("shows a word's pieces as one chip and focuses all of them", () => {
    const s = realState();
    // The shapes tokenizer has whole-word tokens only: make "?" a piece of the word before it by hand.
    const square = data.tokens.indexOf("square");
    expect(data.tokens[square + 1]).toBe("?");
    const wordStart = Uint8Array.from(data.wordStart);
    wordStart[square + 1] = 0;
    (s.token_layout as Record<string, unknown>).word_start = wordStart;
    const w = mount(s);
    const toggle = w.q<HTMLInputElement>(".mmviz-words-toggle");
    toggle.checked = true;
    toggle.dispatchEvent(new Event("change"));
    const chip = w.q(`.mmviz-token[data-pos='${square}']`);
    expect(chip.textContent).toBe("square?");
    expect(chip.dataset.positions).toBe(`${square},${square + 1}`);
    expect(w.el.querySelector(`.mmviz-token[data-pos='${square + 1}']`)).toBe(null);
    chip.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(w.q(".mmviz-caption").textContent).toMatch(/‹square\?› \(2 pieces, their maps averaged\)/);
  });
});

describe("logit-lens panel", () => {
  it("fetches the lens when opened, then reads the focused token through it; a row click selects its layer", async () => {
    const w = mount(realState());
    expect(fetches(w.model)).toEqual([]);
    w.q<HTMLButtonElement>(".mmviz-tab[data-panel='lens']").click();
    expect(fetches(w.model)).toEqual([{ type: "fetch", what: "lens", request: expect.any(String) }]);
    expect(w.q(".mmviz-lens-status").textContent).toMatch(/Loading the logit lens/);
    const reply = realFetched("lens", fetches(w.model)[0]!.request);
    const lens = parseLens(fetchedPayload(realFetched("lens", "copy")), data.n);
    // The real vocabulary holds no markup: put some in, to see that token text stays inert.
    const { k, n } = lens;
    const markup = "<img src=x onerror=alert(1)>";
    (reply.content.payload as { vocab: string[] }).vocab[lens.top[(1 * n + PROMPT) * k]!] = markup;
    w.model.receive(reply.content, reply.buffers);
    await flush();
    w.q(`.mmviz-token[data-pos='${PROMPT}']`).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    const rows = [...w.el.querySelectorAll<HTMLTableRowElement>("tr.mmviz-lens-row")];
    expect(rows.map((r) => r.dataset.depth)).toEqual(Array.from({ length: L + 1 }, (_, d) => String(d)));
    const topOf = (d: number) => Array.from({ length: k }, (_, j) => lens.vocab[lens.top[(d * n + PROMPT) * k + j]!]);
    const cells = [...rows[1]!.querySelectorAll(".mmviz-lens-token")].map((c) => c.textContent);
    expect(cells).toEqual([markup, ...topOf(1).slice(1)]);
    expect(cells).toHaveLength(k);
    expect(w.el.querySelector(".mmviz-lens img")).toBe(null); // inert text
    expect(rows.map((r) => r.querySelector(".mmviz-lens-rank")!.textContent)).toEqual(
      rows.map((_, d) => `#${lens.targetRanks[d * n + PROMPT]! + 1}`),
    );
    expect(rows.map((r) => r.classList.contains("mmviz-current"))).toEqual(rows.map((_, d) => d === L)); // layer L−1
    const target = lens.vocab[lens.target[PROMPT]!]!;
    expect(w.q(".mmviz-lens-title").textContent).toContain(`${quoteToken("what")} (position ${PROMPT})`);
    expect(w.q(".mmviz-lens-title").textContent).toContain(`rank of ${quoteToken(target)}`);
    rows[1]!.querySelector("th")!.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    expect(w.root.dataset.layer).toBe("0");
  });
});

describe("two displays of one widget", () => {
  it("are independent views that share the fetched data", async () => {
    const state = realState();
    const model = createStaticModel(state, { kernel: true });
    const a = mount(state, model);
    const b = mount(state, model);
    a.q(`.mmviz-token[data-pos='${PROMPT}']`).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(a.root.dataset.focus).toBe(String(PROMPT));
    expect(b.root.dataset.focus).toBe("-1");
    const head = a.q<HTMLSelectElement>(".mmviz-head");
    head.value = "1";
    head.dispatchEvent(new Event("change"));
    expect(fetches(model)).toEqual([{ type: "fetch", what: "heads", layer: L - 1, request: expect.any(String) }]);
    answerFetch(model);
    await flush();
    const bHead = b.q<HTMLSelectElement>(".mmviz-head");
    bHead.value = "2";
    bHead.dispatchEvent(new Event("change"));
    expect(fetches(model)).toHaveLength(1); // the last layer's heads are already here
    expect(b.root.dataset.waiting).toBe("");
  });
});

describe("a standalone page (Inspector.to_html)", () => {
  it("reads every fetched payload from state.prefetched, the mean over layers under heads:mean", async () => {
    const el = document.createElement("div");
    document.body.append(el);
    const page = mountStatic(el, { state: { ...realState(), prefetched: realPrefetched() } });
    cleanups.push(() => {
      page.destroy();
      el.remove();
    });
    const q = <T extends HTMLElement = HTMLElement>(sel: string) => el.querySelector<T>(sel)!;
    const root = q(".mmviz-root");
    q(`.mmviz-token[data-pos='${PROMPT}']`).dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    q<HTMLButtonElement>(".mmviz-overview-headbtn[data-head='1']").click();
    expect([root.dataset.layer, root.dataset.head]).toEqual([MEAN, "1"]);
    expect(root.dataset.waiting).toBe("");
    expect(q(".mmviz-heat").dataset.row).toBe(String(data.rowOf(PROMPT)));
    q<HTMLButtonElement>(".mmviz-tab[data-panel='lens']").click();
    await flush();
    expect(el.querySelectorAll("tr.mmviz-lens-row")).toHaveLength(L + 1);
    expect(page.model.sent).toEqual([]); // no kernel: nothing asked
    expect(q(".mmviz-error").hidden).toBe(true);
  });
});
