/** Several views of one image (LLaVA-NeXT base/crop, Idefics3 tile/global) are layers: one drawn at a time. */

import { describe, expect, it } from "vitest";
import { buildData } from "../src/data";
import { captionText } from "../src/views/caption";
import { INITIAL_STATE } from "../src/store";
import { makeState, source } from "./fixtures";
import { float32Bytes, int32Bytes } from "./helpers";

/**
 * 2 images. Image 0: a coarse "base" view of 1 column (the whole image) and a fine "crop" view of 2 columns
 * (its two halves); image 1: a single view of 1 column. Columns in order: base, crop, crop, image 1.
 */
function viewsState(): Record<string, unknown> {
  const s = makeState();
  const layout = s.token_layout as Record<string, unknown>;
  layout.boxes = float32Bytes([0, 0, 200, 120, 0, 0, 100, 120, 100, 0, 200, 120, 0, 0, 50, 50]);
  layout.grid = int32Bytes([0, 0, 0, 0, 0, 1, 0, 0]);
  layout.image_index = int32Bytes([0, 0, 0, 1]);
  layout.view = Uint8Array.from([1, 2, 2, 0]);
  layout.view_names = ["", "base", "crop", "tile", "global", "query", "frame"];
  layout.images = [
    { width: 200, height: 120, covered: [0, 0, 200, 120] },
    { width: 50, height: 50, covered: [0, 0, 50, 50] },
  ];
  return s;
}

describe("image views", () => {
  const data = buildData(source(viewsState()));

  it("groups each image's columns by view", () => {
    expect(data.nImages).toBe(2);
    expect(data.viewsOf(0)).toEqual([
      { code: 1, name: "base", columns: [0] },
      { code: 2, name: "crop", columns: [1, 2] },
    ]);
    expect(data.viewsOf(1)).toEqual([{ code: 0, name: "image", columns: [3] }]);
    expect(data.viewsOf(5)).toEqual([]);
  });

  it("defaults to the finest view: the one with the most columns", () => {
    expect(data.defaultView(0)).toBe(2);
    expect(data.defaultView(1)).toBe(0);
    expect(data.defaultViews()).toEqual([2, 0]);
  });

  it("draws only the selected view of an image with several views, never both", () => {
    expect([...data.visibleColumns([])]).toEqual([0, 1, 1, 1]);
    expect([...data.visibleColumns([1, -1])]).toEqual([1, 0, 0, 1]);
    expect([...data.visibleColumns([2, 0])]).toEqual([0, 1, 1, 1]);
    expect([...data.visibleColumns([7])]).toEqual([0, 1, 1, 1]); // unknown code: the default
    expect(data.selectedView(0, [1])).toBe(1);
    expect(data.selectedView(0, [9])).toBe(2);
  });

  it("names the view of a hovered patch", () => {
    const text = captionText(data, {
      state: { ...INITIAL_STATE, layer: 1, hoverPatch: 1 },
      focus: null,
      row: -1,
      vmax: 0,
      valid: true,
    });
    expect(text).toMatch(/^Attention to image patch 1 \(grid row 0, column 0\) in the crop view of image 1 from every/);
  });

  it("falls back to a single view without `view`, and rejects a malformed one", () => {
    const s = makeState();
    const plain = buildData(source(s));
    expect(plain.viewsOf(0)).toEqual([{ code: 0, name: "image", columns: [0, 1, 2, 3] }]);
    (s.token_layout as Record<string, unknown>).view = Uint8Array.from([1, 2]);
    expect(() => buildData(source(s))).toThrow(/token_layout\.view has 2 entries, expected 4/);
    (s.token_layout as Record<string, unknown>).view = [1, 1, 1, 1];
    expect(() => buildData(source(s))).toThrow(/token_layout\.view must be bytes/);
  });

  it("names views without a name by their code", () => {
    const s = viewsState();
    (s.token_layout as Record<string, unknown>).view_names = [];
    const d = buildData(source(s));
    expect(d.viewsOf(0).map((v) => v.name)).toEqual(["view 1", "view 2"]);
  });
});
