// @vitest-environment happy-dom
/**
 * The frame strip of a video trace: groups, per-frame heat (sums over a group's columns, in closed form), the
 * strip inside the mounted widget (hover a token → the bars change; click a frame → the image view shows it),
 * ▶ play stepping through the frames, and its timer cleared on dispose; the image chip says "video · N frames";
 * selecting patches (click, rectangle, "Select this frame's tokens") uses the frame the strip shows, and Run
 * ablation sends exactly that group's positions. Pixels and a real kernel are checked in Chromium
 * (tests/browser/test_video_page.py).
 */

import { afterEach, describe, expect, it, vi } from "vitest";
import { createStaticModel } from "../src/host/static-host";
import { parseVideoMeta } from "../src/protocol";
import { FrameStrip, frameColumns, frameHeat, groupOf, type FrameSource } from "../src/views/frame-strip";
import { att, H, IMAGE_POSITIONS, makeState } from "./fixtures";
import { int32Bytes, float32Bytes } from "./helpers";
import { mountWidget } from "./mount";

const GROUPS: [number, number][] = [
  [0, 1],
  [2, 2],
];

/** 3 frames; group 0 (frames 0–1) holds columns 0, 1; group 1 (frame 2, padded) columns 2, 3. */
function source(): FrameSource {
  const columns: Record<number, number[]> = { 0: [0, 1], 2: [2, 3] };
  return { nFrames: 3, groups: GROUPS, columnsOf: (i) => columns[i] ?? [], bitmap: () => Promise.resolve(null) };
}

/** The hand-made state as a 3-frame video: columns 0–1 on frame 0's group, 2–3 on frame 2's. */
function videoState(): Record<string, unknown> {
  const s = makeState();
  const layout = s.token_layout as Record<string, unknown>;
  layout.boxes = float32Bytes([0, 0, 100, 120, 100, 0, 200, 120, 0, 0, 100, 120, 100, 0, 200, 120]);
  layout.grid = int32Bytes([0, 0, 0, 1, 0, 0, 0, 1]);
  layout.image_index = int32Bytes([0, 0, 2, 2]);
  layout.view = Uint8Array.from([6, 6, 6, 6]);
  layout.view_names = ["", "base", "crop", "tile", "global", "query", "frame"];
  const frame = { width: 200, height: 120, covered: [0, 0, 200, 120] };
  layout.images = [frame, frame, frame];
  s.meta = { ...(s.meta as Record<string, unknown>), video: { n_frames: 3, groups: GROUPS } };
  return s;
}

/** The head mean at layer 1 of query row q, column p (the fixture's closed form). */
function mean(q: number, p: number): number {
  let sum = 0;
  for (let h = 0; h < H; h++) sum += att(1, h, q, p);
  return sum / H;
}

afterEach(() => {
  vi.useRealTimers();
  document.body.innerHTML = "";
});

describe("frame groups and heat", () => {
  it("finds each frame's group and columns", () => {
    expect([0, 1, 2, 3].map((f) => groupOf(GROUPS, f))).toEqual([0, 0, 1, -1]);
    expect(frameColumns(source(), 1)).toEqual([0, 1]);
    expect(frameColumns(source(), 2)).toEqual([2, 3]);
  });

  it("sums the map over the frame's group, skipping NaN", () => {
    const heat = frameHeat(source(), Float32Array.from([0.5, 0.25, Number.NaN, 2]));
    expect(Array.from(heat)).toEqual([0.75, 0.75, 2]);
    expect(Array.from(frameHeat(source(), null))).toEqual([0, 0, 0]);
  });

  it("parses meta.video strictly (a bad span: shown as images)", () => {
    expect(parseVideoMeta({ n_frames: 3, groups: GROUPS })).toEqual({ nFrames: 3, groups: GROUPS });
    expect(parseVideoMeta(undefined)).toBeNull();
    expect(parseVideoMeta({ n_frames: 3, groups: [[2, 1]] })).toBeNull();
    expect(parseVideoMeta({ n_frames: 2, groups: [[0, 2]] })).toBeNull();
    expect(parseVideoMeta({ n_frames: 0, groups: [] })).toBeNull();
  });
});

describe("FrameStrip", () => {
  it("selects frames, draws relative bars and plays with a timer it clears on dispose", () => {
    vi.useFakeTimers();
    const shown: [number, readonly number[]][] = [];
    const strip = new FrameStrip(source(), (f, cols) => shown.push([f, cols]), 100);
    document.body.append(strip.el);
    strip.update(Float32Array.from([1, 1, 1, 0]), "k");
    const bars = [...strip.el.querySelectorAll<HTMLElement>(".mmviz-frame-bar")];
    expect(bars.map((b) => b.style.height)).toEqual(["100%", "100%", "50%"]);
    expect(bars.map((b) => Number(b.dataset.value))).toEqual([2, 2, 1]);

    strip.el.querySelector<HTMLElement>('.mmviz-frame[data-frame="2"]')!.click();
    expect(shown.at(-1)).toEqual([2, [2, 3]]);
    expect(strip.el.dataset.frame).toBe("2");

    strip.playButton.click();
    expect(strip.playing).toBe(true);
    expect(strip.playButton.getAttribute("aria-pressed")).toBe("true");
    vi.advanceTimersByTime(100);
    expect(strip.frame).toBe(0); // wraps after the last frame
    vi.advanceTimersByTime(200);
    expect(shown.map(([f]) => f)).toEqual([2, 0, 1, 2]);
    expect(vi.getTimerCount()).toBe(1);
    strip.dispose();
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(1000);
    expect(shown.length).toBe(4);
  });
});

describe("the strip in the inspector", () => {
  it("shows one image view, bars for the hovered token, and the clicked frame", () => {
    const { q, el, unmount } = mountWidget(createStaticModel(videoState(), { kernel: false }));
    try {
      expect(el.querySelectorAll(".mmviz-image").length).toBe(1);
      expect(el.querySelectorAll(".mmviz-frame").length).toBe(3);
      expect(q(".mmviz-image").dataset.frame).toBe("0");
      q('.mmviz-token[data-pos="7"]').dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
      const values = () => [...el.querySelectorAll<HTMLElement>(".mmviz-frame-bar")].map((b) => Number(b.dataset.value));
      const first = values();
      expect(first[0]).toBeCloseTo(mean(1, 0) + mean(1, 1), 3);
      expect(first[1]).toBe(first[0]);
      expect(first[2]).toBeCloseTo(mean(1, 2) + mean(1, 3), 3);
      q('.mmviz-token[data-pos="9"]').dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
      const second = values();
      expect(second[2]).toBeCloseTo(mean(3, 2) + mean(3, 3), 3);
      expect(second[2]).not.toBeCloseTo(first[2]!, 4);
      q('.mmviz-frame[data-frame="2"]').click();
      expect(q(".mmviz-image").dataset.frame).toBe("2");
      expect(q(".mmviz-image-label").textContent).toContain("frame 2 of 3");
    } finally {
      unmount();
    }
  });
});

describe("interventions on a video", () => {
  const LIVE = { can_run: true, fills: ["mean", "zero"], default_fill: "zero", history: [], curve: null, max_new_tokens: 0 };

  function pointer(type: string, x: number, y: number, shiftKey = false): MouseEvent {
    return new MouseEvent(type, { bubbles: true, clientX: x, clientY: y, shiftKey, button: 0 });
  }

  function mountVideo() {
    const s = videoState();
    s.meta = { ...(s.meta as Record<string, unknown>), interventions: LIVE };
    const model = createStaticModel(s, { kernel: true });
    const mounted = mountWidget(model);
    const last = () => model.sent.at(-1)!.content as Record<string, unknown>;
    return { ...mounted, model, last };
  }

  it("labels the image chip as a video of its frames", () => {
    const { q, unmount } = mountWidget(createStaticModel(videoState(), { kernel: false }));
    try {
      expect(q(".mmviz-image-chip").textContent).toBe("video · 3 frames · 5 tokens");
    } finally {
      unmount();
    }
  });

  it("selects the shown frame's group in one gesture and ablates exactly its positions", () => {
    const { q, el, last, unmount } = mountVideo();
    try {
      q('.mmviz-tab[data-panel="interventions"]').click();
      const panel = q(".mmviz-interventions");
      expect(el.querySelectorAll(".mmviz-iv-image").length).toBe(1); // one image, frame by frame, as the main view
      expect(q(".mmviz-iv-frame-row").hidden).toBe(false);
      expect(q(".mmviz-iv-frame-label").textContent).toBe("Frame 0 (its group: frames 0–1) · 2 tokens");
      q('.mmviz-frame[data-frame="2"]').click();
      expect(q(".mmviz-iv-image").dataset.frame).toBe("2");
      expect(panel.dataset.frame).toBe("2");
      expect(q(".mmviz-iv-frame-label").textContent).toBe("Frame 2 (its group: frame 2) · 2 tokens");
      q(".mmviz-iv-select-frame").click();
      expect(panel.dataset.selected).toBe("2,3");
      q(".mmviz-iv-run-ablate").click();
      expect(last()).toMatchObject({ type: "intervene", intervention: { kind: "ablate", positions: [IMAGE_POSITIONS[2], IMAGE_POSITIONS[3]], fill: "zero" } });
      // Frame 1 shares frame 0's group; a shift-click adds it to the selection.
      q('.mmviz-frame[data-frame="1"]').click();
      q(".mmviz-iv-select-frame").dispatchEvent(new MouseEvent("click", { bubbles: true, shiftKey: true }));
      expect(panel.dataset.selected).toBe("0,1,2,3");
      q(".mmviz-iv-select-frame").click();
      expect(panel.dataset.selected).toBe("0,1");
    } finally {
      unmount();
    }
  });

  it("a click or a rectangle on the main view takes the shown frame's patches, not image 0's", () => {
    const { q, unmount } = mountVideo();
    try {
      q('.mmviz-tab[data-panel="interventions"]').click();
      const panel = q(".mmviz-interventions");
      q('.mmviz-frame[data-frame="2"]').click();
      const main = q(".mmviz-images .mmviz-image-stack");
      main.getBoundingClientRect = () => ({ left: 0, top: 0, width: 200, height: 120 }) as DOMRect;
      // Column 3's box (right half of frame 2's group): hover then click toggles it.
      main.dispatchEvent(new MouseEvent("mousemove", { bubbles: true, clientX: 150, clientY: 60 }));
      main.dispatchEvent(new MouseEvent("click", { bubbles: true }));
      expect(panel.dataset.selected).toBe("3");
      // A rectangle over the whole frame: every patch of frame 2's group (columns 2, 3), none of frame 0's.
      main.dispatchEvent(pointer("pointerdown", 1, 1));
      window.dispatchEvent(pointer("pointermove", 199, 119));
      window.dispatchEvent(pointer("pointerup", 199, 119));
      expect(panel.dataset.selected).toBe("2,3");
      // The panel's own image follows the strip too.
      const own = q(".mmviz-iv-image .mmviz-image-stack");
      own.getBoundingClientRect = () => ({ left: 0, top: 0, width: 100, height: 60 }) as DOMRect;
      q('.mmviz-frame[data-frame="0"]').click();
      own.dispatchEvent(pointer("pointerdown", 1, 1));
      window.dispatchEvent(pointer("pointermove", 40, 50));
      window.dispatchEvent(pointer("pointerup", 40, 50));
      expect(panel.dataset.selected).toBe("0");
    } finally {
      unmount();
    }
  });
});
