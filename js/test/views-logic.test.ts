/** The DOM-free parts of the views: token display, image runs, caption text, geometry, legend numbers. */

import { describe, expect, it } from "vitest";
import { buildData } from "../src/data";
import { INITIAL_STATE, type ViewState as FocusState } from "../src/store";
import { CAVEAT, captionText, quoteToken } from "../src/views/caption";
import { displaySize, pixelRect } from "../src/views/image-view";
import { formatValue } from "../src/views/legend";
import { chipLabel, DELTA_FLOOR_NATS, deltaScale, deltaWidth, displayToken, imageRuns, signedText } from "../src/views/token-strip";
import { makeState, source } from "./fixtures";

const data = buildData(source(makeState()));

describe("token strip logic", () => {
  it("shows newlines and tabs", () => {
    expect(displayToken("a\nb")).toBe("a↵b");
    expect(displayToken("\r\n")).toBe("↵");
    expect(displayToken("\t x")).toBe("⇥ x");
  });

  it("collapses contiguous image-kind positions (incl. image newlines) into one run", () => {
    const runs = imageRuns(data);
    expect(runs).toEqual([{ start: 2, count: 5, images: [0] }]);
    expect(chipLabel(runs[0]!, 1)).toBe("image · 5 tokens");
    expect(chipLabel({ start: 0, count: 576, images: [1] }, 2)).toBe("image 2 · 576 tokens");
    expect(chipLabel({ start: 0, count: 1, images: [0, 1] }, 2)).toBe("2 images · 1 token");
  });

  it("labels a video's run by its frames: the frames of the groups whose tokens lie in it", () => {
    const video = { nFrames: 5, groups: [[0, 1], [2, 3], [4, 4]] as [number, number][] };
    // Groups' tokens carry their first frame as image index: images 0, 2, 4 → 2 + 2 + 1 frames.
    expect(chipLabel({ start: 3, count: 38, images: [0, 2, 4] }, 5, video)).toBe("video · 5 frames · 38 tokens");
    expect(chipLabel({ start: 3, count: 12, images: [2] }, 5, video)).toBe("video · 2 frames · 12 tokens");
    expect(chipLabel({ start: 3, count: 1, images: [4] }, 5, video)).toBe("video · 1 frame · 1 token");
  });

  it("scales Δ bars to the largest |Δ| but never below the floor", () => {
    expect(DELTA_FLOOR_NATS).toBe(1);
    expect(deltaScale([0.0004, -0.0002])).toBe(1); // ≈ 0 everywhere: ≈ empty bars, not full-width ones
    expect(deltaWidth(0.0004, deltaScale([0.0004, -0.0002]))).toBeCloseTo(0.02, 10);
    expect(deltaScale([-3, 0.5, Number.NaN])).toBe(3);
    expect([deltaWidth(-3, 3), deltaWidth(1.5, 3), deltaWidth(Number.NaN, 3), deltaWidth(9, 3)]).toEqual([50, 25, 0, 50]);
    expect(deltaScale([])).toBe(1);
    expect([signedText(0), signedText(-1.5), signedText(0.1234)]).toEqual(["+0.000", "-1.500", "+0.123"]);
  });
});

describe("caption", () => {
  const st = (patch: Partial<FocusState>): FocusState => ({ ...INITIAL_STATE, layer: 1, ...patch });

  it("describes the focused token's map", () => {
    const text = captionText(data, { state: st({ hoverToken: 7 }), focus: 7, row: 1, vmax: 0.5, valid: true });
    expect(text).toBe(
      "Attention of ‹ what› (query row at position 7) over image tokens, layer 1, mean of heads. Softmax attention.",
    );
  });

  it("says when a token has no row or cannot see the image", () => {
    expect(captionText(data, { state: st({ hoverToken: 0 }), focus: 0, row: -1, vmax: 0, valid: true })).toMatch(
      /‹<s>› at position 0 has no attention row/,
    );
    expect(
      captionText(data, { state: st({ pinnedToken: 1, head: 2 }), focus: 1, row: 0, vmax: 0, valid: true }),
    ).toMatch(/‹Hi› \(query row at position 1\) cannot see the image at layer 1, head 2: every value is 0.*pinned/);
  });

  it("describes a hovered patch, the idle state and missing data", () => {
    expect(captionText(data, { state: st({ hoverPatch: 3 }), focus: null, row: -1, vmax: 0, valid: true })).toMatch(
      /^Attention to image patch 3 \(grid row 1, column 1\) from every token with an attention row, layer 1/,
    );
    expect(captionText(data, { state: st({}), focus: null, row: -1, vmax: 0, valid: true })).toMatch(/^Hover over a token/);
    const none = buildData(source(makeState({ withMean: false })));
    expect(captionText(none, { state: st({}), focus: null, row: -1, vmax: 0, valid: false })).toMatch(/No attention maps/);
  });

  it("falls back to the caveat without a map description", () => {
    const s = makeState();
    (s.meta as Record<string, unknown>).map_description = "";
    const d = buildData(source(s));
    expect(captionText(d, { state: st({}), focus: null, row: -1, vmax: 0, valid: true })).toContain(CAVEAT);
  });

  it("quotes and truncates tokens", () => {
    expect(quoteToken("a\nb")).toBe("‹a↵b›");
    expect(quoteToken("x".repeat(40), 10)).toBe(`‹${"x".repeat(9)}…›`);
  });
});

describe("image geometry", () => {
  it("scales the long side to 384 and keeps the aspect", () => {
    expect(displaySize(200, 120)).toEqual([384, 230]);
    expect(displaySize(1024, 2048)).toEqual([192, 384]);
    expect(displaySize(336, 336, 100)).toEqual([100, 100]);
  });

  it("rounds boxes to integer pixels, so neighbours share edges without gaps", () => {
    const sx = 384 / 200;
    const sy = 230 / 120;
    const a = pixelRect([0, 0, 100, 60], sx, sy, 384, 230);
    const b = pixelRect([100, 60, 200, 120], sx, sy, 384, 230);
    expect(a).toEqual([0, 0, 192, 115]);
    expect(b).toEqual([192, 115, 384, 230]);
    expect(pixelRect([-5, -5, 500, 500], sx, sy, 384, 230)).toEqual([0, 0, 384, 230]);
  });
});

describe("legend numbers", () => {
  it("formats with 3 significant digits", () => {
    expect(formatValue(0)).toBe("0");
    expect(formatValue(0.012345)).toBe("0.0123");
    expect(formatValue(0.5)).toBe("0.500");
    expect(formatValue(Number.NaN)).toBe("–");
  });
});
