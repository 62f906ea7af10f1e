/**
 * The frame strip of a video trace: one thumbnail per ORIGINAL frame with a heat bar under it (how much of the
 * drawn map, e.g. the focused token's attention, falls on the video tokens that cover that frame), a click on a
 * frame shows that frame with its heatmap in the image view, and ▶ plays through the frames.
 *
 * Video tokens fuse `temporal_patch_size` consecutive frames (Qwen2-VL: 2), so the frames of one temporal group
 * share their tokens, their heat and their bar value. The strip knows the groups from `meta.video.groups`
 * (`[first, last]` frame of each group); a group's columns are the columns of image index `first`.
 */

import { button, h, Listeners } from "../dom";

/** What the strip reads: the groups, the columns of each group's first frame, and the decoded frames. */
export interface FrameSource {
  readonly nFrames: number;
  /** `[first, last]` original frame of every temporal group, in order. */
  readonly groups: readonly (readonly [number, number])[];
  /** Columns whose image index is `image` (a group's columns: `columnsOf(first)`). */
  columnsOf(image: number): readonly number[];
  /** The decoded frame `i` (null when it cannot be decoded). */
  bitmap(i: number): Promise<ImageBitmap | null>;
}

export const PLAY_INTERVAL_MS = 600;
const THUMB_SIDE = 56;

/** The group holding `frame` (−1 when none does). */
export function groupOf(groups: readonly (readonly [number, number])[], frame: number): number {
  return groups.findIndex(([first, last]) => first <= frame && frame <= last);
}

/** The columns drawn on `frame`: those of its temporal group (empty when no group holds it). */
export function frameColumns(src: FrameSource, frame: number): readonly number[] {
  const g = groupOf(src.groups, frame);
  return g < 0 ? [] : src.columnsOf(src.groups[g]![0]);
}

/** Per frame: the sum of `map` over the columns of the frame's group (NaN values skipped; 0 with no map). */
export function frameHeat(src: FrameSource, map: Float32Array | null): Float64Array {
  const out = new Float64Array(src.nFrames);
  if (map === null) return out;
  const byGroup = src.groups.map(([first]) => {
    let sum = 0;
    for (const p of src.columnsOf(first)) {
      const v = map[p];
      if (v !== undefined && Number.isFinite(v)) sum += v;
    }
    return sum;
  });
  for (let f = 0; f < src.nFrames; f++) {
    const g = groupOf(src.groups, f);
    out[f] = g < 0 ? 0 : byGroup[g]!;
  }
  return out;
}

export class FrameStrip {
  readonly el: HTMLDivElement;
  readonly playButton: HTMLButtonElement;
  private readonly cells: HTMLButtonElement[] = [];
  private readonly bars: HTMLDivElement[] = [];
  private readonly listeners = new Listeners();
  private timer: ReturnType<typeof setInterval> | null = null;
  private heatKey: unknown = undefined;
  private disposed = false;
  /** The frame shown in the image view. */
  frame = 0;

  constructor(
    private readonly src: FrameSource,
    /** Called with the frame to show and the columns to draw on it (its group's). */
    private readonly onFrame: (frame: number, columns: readonly number[]) => void,
    private readonly intervalMs = PLAY_INTERVAL_MS,
  ) {
    this.playButton = button({ className: "mmviz-frame-play", text: "▶", title: "Play through the frames" });
    this.playButton.setAttribute("aria-pressed", "false");
    this.listeners.on(this.playButton, "click", () => this.toggle());
    const row = h("div", { className: "mmviz-frame-row" });
    for (let f = 0; f < src.nFrames; f++) {
      const thumb = h("canvas", { className: "mmviz-frame-thumb", attrs: { "aria-hidden": "true" } });
      thumb.width = THUMB_SIDE;
      thumb.height = THUMB_SIDE;
      const bar = h("div", { className: "mmviz-frame-bar", data: { value: "0" } });
      bar.style.height = "0%";
      const well = h("div", { className: "mmviz-frame-well" }, bar);
      const g = groupOf(src.groups, f);
      const cell = button(
        {
          className: "mmviz-frame",
          data: { frame: String(f), group: String(g) },
          title: g < 0 ? `frame ${f}` : `frame ${f} (tokens of frames ${src.groups[g]![0]}–${src.groups[g]![1]})`,
        },
        thumb,
        well,
        h("span", { className: "mmviz-frame-index", text: String(f) }),
      );
      this.listeners.on(cell, "click", () => {
        this.pause();
        this.select(f);
      });
      this.cells.push(cell);
      this.bars.push(bar);
      row.append(cell);
      void src.bitmap(f).then((bmp) => this.drawThumb(thumb, bmp));
    }
    this.el = h("div", { className: "mmviz-frames", data: { frame: "0", playing: "0" } }, this.playButton, row);
    this.markCurrent();
  }

  /** Show `frame` (clamped to the video) in the image view. */
  select(frame: number): void {
    if (this.disposed || this.src.nFrames === 0) return;
    const f = Math.max(0, Math.min(this.src.nFrames - 1, Math.trunc(frame)));
    this.frame = f;
    this.markCurrent();
    this.onFrame(f, frameColumns(this.src, f));
  }

  /** Bars for `map` (all P columns; null: nothing focused). Skipped when `key` is unchanged. */
  update(map: Float32Array | null, key: unknown): void {
    if (key === this.heatKey) return;
    this.heatKey = key;
    const heat = frameHeat(this.src, map);
    let top = 0;
    for (const v of heat) top = Math.max(top, Math.abs(v));
    heat.forEach((v, f) => {
      const bar = this.bars[f]!;
      bar.style.height = `${top > 0 ? (100 * Math.abs(v)) / top : 0}%`;
      bar.dataset.value = String(v);
      bar.title = map === null ? "" : `frame ${f}: ${v.toPrecision(3)} (summed over its tokens)`;
      bar.classList.toggle("mmviz-negative", v < 0);
    });
    this.el.dataset.heat = map === null ? "" : "1";
  }

  get playing(): boolean {
    return this.timer !== null;
  }

  /** Step through the frames every `intervalMs` (from the shown one, wrapping at the end). */
  play(): void {
    if (this.timer !== null || this.disposed || this.src.nFrames < 2) return;
    this.timer = setInterval(() => this.select((this.frame + 1) % this.src.nFrames), this.intervalMs);
    this.paintPlaying();
  }

  pause(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.paintPlaying();
  }

  toggle(): void {
    if (this.playing) this.pause();
    else this.play();
  }

  private paintPlaying(): void {
    this.playButton.textContent = this.playing ? "⏸" : "▶";
    this.playButton.setAttribute("aria-pressed", this.playing ? "true" : "false");
    this.el.dataset.playing = this.playing ? "1" : "0";
  }

  private markCurrent(): void {
    this.el.dataset.frame = String(this.frame);
    this.cells.forEach((c, f) => c.classList.toggle("mmviz-on", f === this.frame));
  }

  private drawThumb(canvas: HTMLCanvasElement, bmp: ImageBitmap | null): void {
    if (this.disposed || bmp === null) return;
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const s = THUMB_SIDE / Math.max(bmp.width, bmp.height);
    const w = Math.max(1, Math.round(bmp.width * s));
    const ht = Math.max(1, Math.round(bmp.height * s));
    canvas.width = w;
    canvas.height = ht;
    ctx.drawImage(bmp, 0, 0, w, ht);
    canvas.dataset.loaded = "1";
  }

  dispose(): void {
    this.pause();
    this.disposed = true;
    this.listeners.dispose();
  }
}
