/**
 * The model's traits as typed data: tokens, layout, and lazily decoded attention.
 *
 * Attention stays in its wire form (uint8 + per-row scale/offset) and each hover map is decoded on
 * demand (P values for a map, Q values for a column), so a large tensor costs no more memory in the
 * browser than the bytes that were shipped. The first payload holds the head mean of every layer
 * (`attention_mean`) and per-head statistics (`head_stats`); per-head maps arrive per layer (extras.ts),
 * or all at once in the optional `attention` trait.
 */

import { asBytes, isByteSource, openEnvelope, readInt32, readFloat32, type TensorReader } from "./codec";

export const KIND_TEXT = 0;
export const KIND_SPECIAL = 1;
export const KIND_IMAGE = 2;
export const KIND_IMAGE_NEWLINE = 3;
export const KIND_IMAGE_SEP = 4;
export const KIND_QUERY = 5;

export function isImageKind(kind: number): boolean {
  return kind === KIND_IMAGE || kind === KIND_IMAGE_NEWLINE || kind === KIND_IMAGE_SEP;
}

export type Rect = [number, number, number, number];

export interface ImageMeta {
  width: number;
  height: number;
  /** Pixels outside this rectangle (original pixels) reach no token; null = whole image. */
  covered: Rect | null;
}

/** One view of an image (e.g. LLaVA-NeXT `base` / `crop`, Idefics3 `tile` / `global`): a layer of its columns. */
export interface ViewInfo {
  /** Index into `view_names` (the wire code). */
  code: number;
  /** Display name (`base`, `crop`, ...; `view N` when the name is unknown or empty). */
  name: string;
  /** Columns of this image in this view, in column order. */
  columns: readonly number[];
}

export interface Meta {
  family: string;
  model_name: string;
  n_layers: number;
  n_heads: number;
  map_label: string;
  map_description: string;
  /** Which lazily fetched extras the kernel can provide. */
  extras: { heads: boolean; lens: boolean; projection: boolean };
}

/** Per-head maps of one layer, `[H, Q, P]` at `base` in `reader` (a fetched layer, or a slice of `attention`). */
export class LayerHeads {
  constructor(
    private readonly reader: TensorReader,
    private readonly base: number,
    readonly H: number,
    readonly Q: number,
    readonly P: number,
  ) {}

  /** Attention of query row `q` over the P columns, for `head`. */
  row(head: number, q: number, out?: Float32Array): Float32Array {
    return this.reader.read(this.base + (head * this.Q + q) * this.P, this.P, 1, out);
  }

  /** Attention of every query row to column `p`, for `head`. */
  column(head: number, p: number, out?: Float32Array): Float32Array {
    return this.reader.read(this.base + head * this.Q * this.P + p, this.Q, this.P, out);
  }

  value(head: number, q: number, p: number): number {
    return this.reader.at(this.base + (head * this.Q + q) * this.P + p);
  }
}

/** Anything with the AnyModel `get`. */
export interface TraitSource {
  get(key: string): unknown;
}

export class WidgetData {
  /** Sequence position → attention row, or −1. */
  private readonly rowByPos: Int32Array;
  /** Sequence position → attention column, or −1. */
  private readonly colByPos: Int32Array;
  private readonly columnsByImage: number[][];
  private readonly bitmaps = new Map<number, Promise<ImageBitmap | null>>();

  constructor(
    readonly tokens: readonly string[],
    readonly kinds: Uint8Array,
    readonly answerStart: number,
    readonly queryPositions: Int32Array,
    readonly imagePositions: Int32Array,
    /** x0, y0, x1, y1 per column, original image pixels. */
    readonly boxes: Float32Array,
    /** row, col per column. */
    readonly grid: Int32Array,
    readonly imageIndex: Int32Array,
    readonly images: readonly ImageMeta[],
    readonly imageBytes: readonly Uint8Array[],
    readonly meta: Meta,
    /** `[L, H, Q, P]` when every head was shipped up front, else null (heads then arrive per layer). */
    readonly heads: TensorReader | null,
    /** `[L, Q, P]`, or null when not shipped. */
    readonly mean: TensorReader | null,
    /** View code of each column (index into `viewNames`); all 0 when not shipped. */
    readonly viewCodes: Uint8Array = new Uint8Array(imagePositions.length),
    readonly viewNames: readonly string[] = [],
    /** `[2, L, H, Q]`: image share and entropy of every head and row, or null. */
    readonly headStats: TensorReader | null = null,
    /** Per position: 1 when it starts a word (sub-word pieces merge into the word before them). */
    readonly wordStart: Uint8Array = new Uint8Array(tokens.length).fill(1),
    /** Per position: log p of the token given everything before it (answer tokens), NaN elsewhere. */
    readonly logprobs: Float32Array = new Float32Array(tokens.length).fill(Number.NaN),
  ) {
    const n = tokens.length;
    this.rowByPos = new Int32Array(n).fill(-1);
    this.colByPos = new Int32Array(n).fill(-1);
    queryPositions.forEach((pos, q) => {
      if (this.rowByPos[pos] === -1) this.rowByPos[pos] = q;
    });
    imagePositions.forEach((pos, p) => {
      if (this.colByPos[pos] === -1) this.colByPos[pos] = p;
    });
    this.columnsByImage = Array.from({ length: this.nImages }, () => [] as number[]);
    imageIndex.forEach((img, p) => this.columnsByImage[img]?.push(p));
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
    return this.heads?.shape[0] ?? this.mean?.shape[0] ?? 0;
  }
  /** Number of heads (from the shipped heads or statistics, else the metadata). */
  get H(): number {
    return this.heads?.shape[1] ?? this.headStats?.shape[2] ?? Math.max(0, Math.trunc(this.meta.n_heads));
  }

  /** The per-head maps of `layer` when every head was shipped up front (null: fetch them, see extras.ts). */
  eagerHeads(layer: number): LayerHeads | null {
    if (this.heads === null || !(layer >= 0 && layer < this.L)) return null;
    return new LayerHeads(this.heads, layer * this.H * this.Q * this.P, this.H, this.Q, this.P);
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

  /** Does (layer, head) name a map that exists? layer −1 = mean over layers, head −1 = mean over heads. */
  validSelection(layer: number, head: number): boolean {
    if (!(Number.isInteger(layer) && layer >= -1 && layer < this.L) || this.L === 0) return false;
    if (head === -1) return this.mean !== null || this.heads !== null;
    return Number.isInteger(head) && head >= 0 && head < this.H;
  }

  private check(layer: number, head: number): void {
    if (!this.validSelection(layer, head)) {
      throw new RangeError(`mmviz: no attention map for layer ${layer}, head ${head} (L=${this.L}, H=${this.H})`);
    }
  }

  /**
   * Attention of query row `q` over all P image columns at (layer, head) from the data shipped up front; head −1 =
   * mean of heads, layer −1 = mean of layers. A single head needs the `attention` trait (else see extras.ts).
   */
  mapFor(layer: number, head: number, q: number, out?: Float32Array): Float32Array {
    this.check(layer, head);
    if (layer === -1) return this.meanOverLayers((l, o) => this.mapFor(l, head, q, o), this.P, out);
    if (head >= 0 && this.heads === null) throw new RangeError(`mmviz: the heads of layer ${layer} were not shipped`);
    const { Q, P, H } = this;
    if (!(Number.isInteger(q) && q >= 0 && q < Q)) throw new RangeError(`mmviz: query row ${q} outside 0…${Q - 1}`);
    if (head === -1) {
      if (this.mean) return this.mean.read((layer * Q + q) * P, P, 1, out);
      // Fallback when only per-head maps were shipped: average them here.
      const res = out ?? new Float32Array(P);
      res.fill(0);
      const tmp = new Float32Array(P);
      for (let h = 0; h < H; h++) {
        this.heads!.read(((layer * H + h) * Q + q) * P, P, 1, tmp);
        for (let p = 0; p < P; p++) res[p] = res[p]! + tmp[p]! / H;
      }
      return res;
    }
    return this.heads!.read(((layer * H + head) * Q + q) * P, P, 1, out);
  }

  /** Attention of every query row to image column `p` at (layer, head): Q values in row order. */
  columnFor(layer: number, head: number, p: number, out?: Float32Array): Float32Array {
    this.check(layer, head);
    if (layer === -1) return this.meanOverLayers((l, o) => this.columnFor(l, head, p, o), this.Q, out);
    if (head >= 0 && this.heads === null) throw new RangeError(`mmviz: the heads of layer ${layer} were not shipped`);
    const { Q, P, H } = this;
    if (!(Number.isInteger(p) && p >= 0 && p < P)) throw new RangeError(`mmviz: image column ${p} outside 0…${P - 1}`);
    if (head === -1) {
      if (this.mean) return this.mean.read(layer * Q * P + p, Q, P, out);
      const res = out ?? new Float32Array(Q);
      res.fill(0);
      const tmp = new Float32Array(Q);
      for (let h = 0; h < H; h++) {
        this.heads!.read((layer * H + h) * Q * P + p, Q, P, tmp);
        for (let q = 0; q < Q; q++) res[q] = res[q]! + tmp[q]! / H;
      }
      return res;
    }
    return this.heads!.read((layer * H + head) * Q * P + p, Q, P, out);
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

function isEnvelope(x: unknown): boolean {
  return x !== null && typeof x === "object" && "v" in (x as object);
}

function num(x: unknown, fallback: number): number {
  return typeof x === "number" && Number.isFinite(x) ? x : fallback;
}

function str(x: unknown): string {
  return typeof x === "string" ? x : "";
}

function optInt32(layout: Record<string, unknown>, key: string): Int32Array {
  const x = layout[key];
  if (x === undefined || x === null) return new Int32Array(0);
  if (!isByteSource(x)) throw new Error(`mmviz: token_layout.${key} must be bytes (int32)`);
  return readInt32(x);
}

function optFloat32(layout: Record<string, unknown>, key: string): Float32Array {
  const x = layout[key];
  if (x === undefined || x === null) return new Float32Array(0);
  if (!isByteSource(x)) throw new Error(`mmviz: token_layout.${key} must be bytes (float32)`);
  return readFloat32(x);
}

function parseImageMeta(x: unknown, i: number): ImageMeta {
  if (x === null || typeof x !== "object") throw new Error(`mmviz: token_layout.images[${i}] must be a dict`);
  const o = x as Record<string, unknown>;
  const width = num(o.width, 0);
  const height = num(o.height, 0);
  if (!(width > 0 && height > 0)) throw new Error(`mmviz: token_layout.images[${i}] needs a positive width and height`);
  let covered: Rect | null = null;
  if (Array.isArray(o.covered) && o.covered.length === 4 && o.covered.every((v) => typeof v === "number")) {
    covered = o.covered as Rect;
  }
  return { width, height, covered };
}

function openTrait(name: string, env: unknown): TensorReader {
  try {
    return openEnvelope(env);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(msg.replace(/^mmviz: /, `mmviz: ${name}: `));
  }
}

/** Read every data trait of `model`; throws a clear Error when the traits break the protocol. */
export function buildData(model: TraitSource): WidgetData {
  const rawTokens = model.get("tokens");
  const tokens = Array.isArray(rawTokens) ? rawTokens.map((t) => (typeof t === "string" ? t : String(t))) : [];
  // `token_layout`, not `layout`: ipywidgets' own `layout` trait is the DOM box's.
  const rawLayout = model.get("token_layout");
  const layout = (rawLayout !== null && typeof rawLayout === "object" ? rawLayout : {}) as Record<string, unknown>;

  if (layout.v !== undefined && layout.v !== 1) {
    throw new Error(`mmviz: unsupported token_layout version ${JSON.stringify(layout.v)} (this widget reads v=1)`);
  }
  const n = tokens.length;
  if (layout.n_positions !== undefined && layout.n_positions !== n) {
    throw new Error(`mmviz: token_layout.n_positions is ${String(layout.n_positions)} but there are ${n} tokens`);
  }
  let kinds: Uint8Array;
  if (layout.kinds === undefined || layout.kinds === null) {
    kinds = new Uint8Array(n);
  } else if (isByteSource(layout.kinds)) {
    kinds = asBytes(layout.kinds);
    if (kinds.length !== n) throw new Error(`mmviz: token_layout.kinds has ${kinds.length} entries, expected ${n}`);
  } else {
    throw new Error("mmviz: token_layout.kinds must be bytes (uint8)");
  }
  const answerStart = Math.max(0, Math.min(n, Math.trunc(num(layout.answer_start, n))));
  const queryPositions = optInt32(layout, "query_positions");
  const imagePositions = optInt32(layout, "image_positions");
  const P = imagePositions.length;
  const boxes = optFloat32(layout, "boxes");
  const grid = optInt32(layout, "grid");
  const imageIndex = optInt32(layout, "image_index");
  for (const [name, arr] of [["query_positions", queryPositions], ["image_positions", imagePositions]] as const) {
    for (const pos of arr) {
      if (pos < 0 || pos >= n) throw new Error(`mmviz: token_layout.${name} holds position ${pos}, outside 0…${n - 1}`);
    }
  }
  if (boxes.length !== 4 * P) throw new Error(`mmviz: token_layout.boxes has ${boxes.length} values, expected 4·${P}`);
  if (grid.length !== 0 && grid.length !== 2 * P) {
    throw new Error(`mmviz: token_layout.grid has ${grid.length} values, expected 2·${P}`);
  }
  let imageIdx = imageIndex;
  if (imageIdx.length === 0 && P > 0) imageIdx = new Int32Array(P); // single image
  if (imageIdx.length !== P) throw new Error(`mmviz: token_layout.image_index has ${imageIdx.length} values, expected ${P}`);
  for (const i of imageIdx) if (i < 0) throw new Error(`mmviz: token_layout.image_index holds ${i}`);

  let viewCodes: Uint8Array;
  if (layout.view === undefined || layout.view === null) {
    viewCodes = new Uint8Array(P);
  } else if (isByteSource(layout.view)) {
    viewCodes = asBytes(layout.view);
    if (viewCodes.length !== P) throw new Error(`mmviz: token_layout.view has ${viewCodes.length} entries, expected ${P}`);
  } else {
    throw new Error("mmviz: token_layout.view must be bytes (uint8)");
  }
  const viewNames = Array.isArray(layout.view_names) ? layout.view_names.map((v) => (typeof v === "string" ? v : String(v))) : [];

  const images = Array.isArray(layout.images) ? layout.images.map(parseImageMeta) : [];
  const rawImages = model.get("images");
  const imageBytes = (Array.isArray(rawImages) ? rawImages : []).map((b, i) => {
    if (!isByteSource(b)) throw new Error(`mmviz: images[${i}] must be PNG bytes`);
    return asBytes(b);
  });

  const rawMeta = model.get("meta");
  const m = (rawMeta !== null && typeof rawMeta === "object" ? rawMeta : {}) as Record<string, unknown>;
  const meta: Meta = {
    family: str(m.family),
    model_name: str(m.model_name),
    n_layers: num(m.n_layers, 0),
    n_heads: num(m.n_heads, 0),
    map_label: str(m.map_label),
    map_description: str(m.map_description),
    extras: parseExtrasFlags(m.extras),
  };

  const Q = queryPositions.length;
  const rawHeads = model.get("attention");
  const rawMean = model.get("attention_mean");
  const heads = isEnvelope(rawHeads) ? openTrait("attention", rawHeads) : null;
  const mean = isEnvelope(rawMean) ? openTrait("attention_mean", rawMean) : null;
  const rawStats = model.get("head_stats");
  const headStats = isEnvelope(rawStats) ? openTrait("head_stats", rawStats) : null;
  if (heads) {
    const s = heads.shape;
    if (s.length !== 4 || s[2] !== Q || s[3] !== P) {
      throw new Error(`mmviz: attention has shape [${s.join(", ")}], expected [L, H, ${Q}, ${P}]`);
    }
  }
  if (mean) {
    const s = mean.shape;
    const L = heads ? heads.shape[0] : s[0];
    if (s.length !== 3 || s[0] !== L || s[1] !== Q || s[2] !== P) {
      throw new Error(`mmviz: attention_mean has shape [${s.join(", ")}], expected [${L ?? "L"}, ${Q}, ${P}]`);
    }
  }
  if (headStats) {
    const s = headStats.shape;
    const L = mean?.shape[0] ?? heads?.shape[0] ?? s[1];
    if (s.length !== 4 || s[0] !== 2 || s[1] !== L || s[3] !== Q || (heads !== null && s[2] !== heads.shape[1])) {
      throw new Error(`mmviz: head_stats has shape [${s.join(", ")}], expected [2, ${L ?? "L"}, H, ${Q}]`);
    }
  }
  const wordStart = optBytes(layout, "word_start", n) ?? new Uint8Array(n).fill(1);
  const rawLogprobs = optFloat32(layout, "logprobs");
  if (rawLogprobs.length !== 0 && rawLogprobs.length !== n) {
    throw new Error(`mmviz: token_layout.logprobs has ${rawLogprobs.length} values, expected ${n}`);
  }
  const logprobs = rawLogprobs.length === n ? rawLogprobs : new Float32Array(n).fill(Number.NaN);
  // Images referenced by columns need a size to be drawn.
  for (const i of imageIdx) {
    if (i >= images.length) throw new Error(`mmviz: token_layout.image_index refers to image ${i} but layout.images has ${images.length}`);
  }
  return new WidgetData(
    tokens,
    kinds,
    answerStart,
    queryPositions,
    imagePositions,
    boxes,
    grid,
    imageIdx,
    images,
    imageBytes,
    meta,
    heads,
    mean,
    viewCodes,
    viewNames,
    headStats,
    wordStart,
    logprobs,
  );
}

function parseExtrasFlags(x: unknown): Meta["extras"] {
  const o = (x !== null && typeof x === "object" ? x : {}) as Record<string, unknown>;
  return { heads: o.heads !== false, lens: o.lens === true, projection: o.projection === true };
}

function optBytes(layout: Record<string, unknown>, key: string, n: number): Uint8Array | null {
  const x = layout[key];
  if (x === undefined || x === null) return null;
  if (!isByteSource(x)) throw new Error(`mmviz: token_layout.${key} must be bytes (uint8)`);
  const out = asBytes(x);
  if (out.length !== n) throw new Error(`mmviz: token_layout.${key} has ${out.length} entries, expected ${n}`);
  return out;
}
