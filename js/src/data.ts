/**
 * The first render's data traits as one typed object (parsed by the protocol, ../protocol/): tokens, layout,
 * images, metadata, the head mean of every layer and the per-head statistics, with the lookups every view needs
 * (position → row / column, words, image views).
 *
 * Attention stays in its wire form (uint8 + per-row scale/offset) and each hover map is decoded on demand
 * (P values for a map, Q values for a column), so a large tensor costs no more memory in the browser than the
 * bytes that were shipped. Per-head maps are fetched per layer (extras.ts) and read through {@link LayerHeads}.
 */

import type { TensorReader } from "./codec";
import { MEAN, parseDataTraits, type DataTraits, type Head, type ImageMeta, type Layer, type Meta, type Rect } from "./protocol";

/** One view of an image (e.g. LLaVA-NeXT `base` / `crop`, Idefics3 `tile` / `global`): a layer of its columns. */
export interface ViewInfo {
  /** Index into `view_names` (the wire code). */
  code: number;
  /** Display name (`base`, `crop`, ...; `view N` when the name is unknown or empty). */
  name: string;
  /** Columns of this image in this view, in column order. */
  columns: readonly number[];
}

/** Per-head maps of one layer (or of the mean over layers), `[H, Q, P]`: a fetched `heads` payload. */
export class LayerHeads {
  constructor(
    private readonly reader: TensorReader,
    readonly H: number,
    readonly Q: number,
    readonly P: number,
  ) {}

  /** Attention of query row `q` over the P columns, for `head`. */
  row(head: number, q: number, out?: Float32Array): Float32Array {
    return this.reader.read((head * this.Q + q) * this.P, this.P, 1, out);
  }

  /** Attention of every query row to column `p`, for `head`. */
  column(head: number, p: number, out?: Float32Array): Float32Array {
    return this.reader.read(head * this.Q * this.P + p, this.Q, this.P, out);
  }

  value(head: number, q: number, p: number): number {
    return this.reader.at((head * this.Q + q) * this.P + p);
  }
}

/** Anything with the AnyModel `get`. */
export interface TraitSource {
  get(key: string): unknown;
}

export class WidgetData {
  readonly tokens: readonly string[];
  readonly kinds: Uint8Array;
  readonly answerStart: number;
  readonly queryPositions: Int32Array;
  readonly imagePositions: Int32Array;
  /** x0, y0, x1, y1 per column, original image pixels. */
  readonly boxes: Float32Array;
  /** row, col per column. */
  readonly grid: Int32Array;
  readonly imageIndex: Int32Array;
  readonly images: readonly ImageMeta[];
  readonly imageBytes: readonly Uint8Array[];
  readonly meta: Meta;
  /** `[L, Q, P]`: the head mean of every layer and row, or null when not shipped. */
  readonly mean: TensorReader | null;
  /** View code of each column (index into `viewNames`). */
  readonly viewCodes: Uint8Array;
  readonly viewNames: readonly string[];
  /** `[2, L, H, Q]`: image share and entropy of every head and row, or null. */
  readonly headStats: TensorReader | null;
  /** Per position: 1 when it starts a word (sub-word pieces merge into the word before them). */
  readonly wordStart: Uint8Array;
  /** Per position: log p of the token given everything before it (answer tokens), NaN elsewhere. */
  readonly logprobs: Float32Array;
  /** Sequence position → attention row, or −1. */
  private readonly rowByPos: Int32Array;
  /** Sequence position → attention column, or −1. */
  private readonly colByPos: Int32Array;
  private readonly columnsByImage: number[][];
  private readonly bitmaps = new Map<number, Promise<ImageBitmap | null>>();

  constructor(traits: DataTraits) {
    const { layout } = traits;
    this.tokens = traits.tokens;
    this.kinds = layout.kinds;
    this.answerStart = layout.answerStart;
    this.queryPositions = layout.queryPositions;
    this.imagePositions = layout.imagePositions;
    this.boxes = layout.boxes;
    this.grid = layout.grid;
    this.imageIndex = layout.imageIndex;
    this.images = layout.images;
    this.viewCodes = layout.viewCodes;
    this.viewNames = layout.viewNames;
    this.wordStart = layout.wordStart;
    this.logprobs = layout.logprobs;
    this.imageBytes = traits.imageBytes;
    this.meta = traits.meta;
    this.mean = traits.mean;
    this.headStats = traits.headStats;

    const n = this.tokens.length;
    this.rowByPos = new Int32Array(n).fill(-1);
    this.colByPos = new Int32Array(n).fill(-1);
    this.queryPositions.forEach((pos, q) => {
      if (this.rowByPos[pos] === -1) this.rowByPos[pos] = q;
    });
    this.imagePositions.forEach((pos, p) => {
      if (this.colByPos[pos] === -1) this.colByPos[pos] = p;
    });
    this.columnsByImage = Array.from({ length: this.nImages }, () => [] as number[]);
    this.imageIndex.forEach((img, p) => this.columnsByImage[img]?.push(p));
    const { viewCodes, viewNames } = this;
    this.viewsByImage = this.columnsByImage.map((cols) => {
      const byCode = new Map<number, number[]>();
      for (const p of cols) {
        const code = viewCodes[p] ?? 0;
        let list = byCode.get(code);
        if (!list) byCode.set(code, (list = []));
        list.push(p);
      }
      return [...byCode.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([code, columns]) => ({ code, name: viewNames[code] || (code === 0 ? "image" : `view ${code}`), columns }));
    });
  }

  private readonly viewsByImage: ViewInfo[][];

  /** The views of image `i`, by view code. One entry (or none) for an image shown as a single layer. */
  viewsOf(image: number): readonly ViewInfo[] {
    return this.viewsByImage[image] ?? [];
  }

  /**
   * The view shown by default for image `i`: the finest one, i.e. the one with the most columns (ties: the
   * smaller mean box, then the lower code). −1 when the image has no columns.
   */
  defaultView(image: number): number {
    let best: ViewInfo | null = null;
    let bestArea = Infinity;
    for (const v of this.viewsOf(image)) {
      let area = 0;
      for (const p of v.columns) {
        const [x0, y0, x1, y1] = this.box(p);
        area += (x1 - x0) * (y1 - y0);
      }
      area /= Math.max(1, v.columns.length);
      if (best === null || v.columns.length > best.columns.length || (v.columns.length === best.columns.length && area < bestArea)) {
        best = v;
        bestArea = area;
      }
    }
    return best === null ? -1 : best.code;
  }

  /** The default view of every image. */
  defaultViews(): number[] {
    return Array.from({ length: this.nImages }, (_, i) => this.defaultView(i));
  }

  /**
   * Per column, 1 when it is drawn: columns of images with a single view always are; of an image with several
   * views, only those of the selected view (`views[image]`, a view code; a code the image lacks → its default).
   * Views of one image cover the same pixels, so they are never drawn (or scaled) together.
   */
  visibleColumns(views: readonly number[]): Uint8Array {
    const mask = new Uint8Array(this.P);
    for (let i = 0; i < this.nImages; i++) {
      const list = this.viewsOf(i);
      const code = this.selectedView(i, views);
      for (const v of list) {
        if (list.length > 1 && v.code !== code) continue;
        for (const p of v.columns) mask[p] = 1;
      }
    }
    return mask;
  }

  /** The view code drawn for image `i` given the selection `views` (validated; default when absent). */
  selectedView(image: number, views: readonly number[]): number {
    const want = views[image];
    const list = this.viewsOf(image);
    if (want !== undefined && list.some((v) => v.code === want)) return want;
    return this.defaultView(image);
  }

  /** N, the number of sequence positions. */
  get n(): number {
    return this.tokens.length;
  }
  get Q(): number {
    return this.queryPositions.length;
  }
  get P(): number {
    return this.imagePositions.length;
  }
  /** Number of layers (0 when no attention was shipped). */
  get L(): number {
    return this.mean?.shape[0] ?? 0;
  }
  /** Number of heads (from the statistics, else the metadata). */
  get H(): number {
    return this.headStats?.shape[2] ?? Math.max(0, Math.trunc(this.meta.n_heads));
  }

  /** Image share (stat 0) or entropy (stat 1) of (layer, head) at query row q; NaN when not shipped. */
  headStat(stat: 0 | 1, layer: number, head: number, q: number): number {
    const s = this.headStats;
    if (s === null) return Number.NaN;
    return s.at(((stat * this.L + layer) * this.H + head) * this.Q + q);
  }
  get hasAttention(): boolean {
    return this.L > 0 && this.Q > 0 && this.P > 0;
  }
  /** Number of image views: one per image that has metadata, bytes or columns. */
  get nImages(): number {
    let maxIndex = -1;
    for (const i of this.imageIndex) maxIndex = Math.max(maxIndex, i);
    return Math.max(this.images.length, this.imageBytes.length, maxIndex + 1);
  }

  /** Attention row of sequence position `pos`, or −1. */
  rowOf(pos: number): number {
    return Number.isInteger(pos) && pos >= 0 && pos < this.n ? this.rowByPos[pos]! : -1;
  }

  private wordIndex: Int32Array | null = null;
  private wordList: number[][] = [];

  /** The positions of the word `pos` belongs to (pieces merged by `wordStart`), in order. */
  wordOf(pos: number): readonly number[] {
    if (this.wordIndex === null) {
      this.wordIndex = new Int32Array(this.n);
      for (let i = 0; i < this.n; i++) {
        if (i === 0 || this.wordStart[i] !== 0) this.wordList.push([]);
        this.wordList[this.wordList.length - 1]!.push(i);
        this.wordIndex[i] = this.wordList.length - 1;
      }
    }
    return Number.isInteger(pos) && pos >= 0 && pos < this.n ? this.wordList[this.wordIndex[pos]!]! : [];
  }

  /** Attention column of sequence position `pos`, or −1. */
  columnOfPosition(pos: number): number {
    return Number.isInteger(pos) && pos >= 0 && pos < this.n ? this.colByPos[pos]! : -1;
  }

  /** Columns (indices into image_positions) that belong to image `i`. */
  columnsOf(image: number): readonly number[] {
    return this.columnsByImage[image] ?? [];
  }

  /** Box of column `p` in original image pixels. */
  box(p: number): Rect {
    const b = this.boxes;
    return [b[4 * p]!, b[4 * p + 1]!, b[4 * p + 2]!, b[4 * p + 3]!];
  }

  /** Does (layer, head) name a map that exists (an index in range, or `"mean"`)? */
  validSelection(layer: Layer, head: Head): boolean {
    if (this.L === 0 || this.mean === null) return false;
    const inRange = (x: Layer, count: number): boolean => x === MEAN || (Number.isInteger(x) && x >= 0 && x < count);
    return inRange(layer, this.L) && inRange(head, this.H);
  }

  private checkMean(layer: Layer): void {
    if (!this.validSelection(layer, MEAN)) {
      throw new RangeError(`mmviz: no attention map for layer ${layer} (L=${this.L})`);
    }
  }

  /**
   * The head mean's attention of query row `q` over all P image columns at `layer` (`"mean"`: the mean over
   * layers), from the first payload. A single head's map is fetched (extras.ts, {@link LayerHeads}).
   */
  meanMap(layer: Layer, q: number, out?: Float32Array): Float32Array {
    this.checkMean(layer);
    if (layer === MEAN) return this.meanOverLayers((l, o) => this.meanMap(l, q, o), this.P, out);
    const { Q, P } = this;
    if (!(Number.isInteger(q) && q >= 0 && q < Q)) throw new RangeError(`mmviz: query row ${q} outside 0…${Q - 1}`);
    return this.mean!.read((layer * Q + q) * P, P, 1, out);
  }

  /** The head mean's attention of every query row to image column `p` at `layer`: Q values in row order. */
  meanColumn(layer: Layer, p: number, out?: Float32Array): Float32Array {
    this.checkMean(layer);
    if (layer === MEAN) return this.meanOverLayers((l, o) => this.meanColumn(l, p, o), this.Q, out);
    const { Q, P } = this;
    if (!(Number.isInteger(p) && p >= 0 && p < P)) throw new RangeError(`mmviz: image column ${p} outside 0…${P - 1}`);
    return this.mean!.read(layer * Q * P + p, Q, P, out);
  }

  private meanOverLayers(read: (layer: number, out: Float32Array) => Float32Array, size: number, out?: Float32Array): Float32Array {
    const res = out ?? new Float32Array(size);
    res.fill(0);
    const tmp = new Float32Array(size);
    for (let l = 0; l < this.L; l++) {
      read(l, tmp);
      for (let i = 0; i < size; i++) res[i] = res[i]! + tmp[i]! / this.L;
    }
    return res;
  }

  /** The decoded PNG of image `i` (cached, shared by every view of this model). */
  bitmap(i: number): Promise<ImageBitmap | null> {
    let pending = this.bitmaps.get(i);
    if (pending === undefined) {
      const bytes = this.imageBytes[i];
      pending =
        bytes === undefined || bytes.byteLength === 0 || typeof createImageBitmap !== "function"
          ? Promise.resolve(null)
          : createImageBitmap(new Blob([bytes.slice()], { type: "image/png" })).catch((err: unknown) => {
              console.warn(`mmviz: could not decode image ${i}:`, err);
              return null;
            });
      this.bitmaps.set(i, pending);
    }
    return pending;
  }
}

/** Max over finite values (0 for an empty or all-NaN array). */
export function maxOf(values: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (v > m) m = v;
  }
  return m === -Infinity ? 0 : m;
}

/** Read every data trait of `model` (protocol parsers); throws a clear Error when the traits break the protocol. */
export function buildData(model: TraitSource): WidgetData {
  return new WidgetData(parseDataTraits((key) => model.get(key)));
}
