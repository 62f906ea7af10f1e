/**
 * Parser of `payloads.layout_payload` → the `token_layout` trait: what every sequence position is, which of them
 * are the attention rows (queries) and columns (image tokens with a box), and where each column lies in its image.
 */

import {
  expectLength,
  expectPositions,
  fail,
  lenientNumber,
  lenientRecord,
  lenientStrings,
  optionalBytes,
  optionalFloat32,
  optionalInt32,
  type Fields,
} from "./validate";

/** x0, y0, x1, y1 in original image pixels. */
export type Rect = [number, number, number, number];

/** `token_layout.kinds` codes. */
export const KIND_TEXT = 0;
export const KIND_SPECIAL = 1;
export const KIND_IMAGE = 2;
export const KIND_IMAGE_NEWLINE = 3;
export const KIND_IMAGE_SEP = 4;
export const KIND_QUERY = 5;

export function isImageKind(kind: number): boolean {
  return kind === KIND_IMAGE || kind === KIND_IMAGE_NEWLINE || kind === KIND_IMAGE_SEP;
}

export interface ImageMeta {
  width: number;
  height: number;
  /** Pixels outside this rectangle (original pixels) reach no token; null = whole image. */
  covered: Rect | null;
}

export interface TokenLayout {
  kinds: Uint8Array;
  answerStart: number;
  queryPositions: Int32Array;
  imagePositions: Int32Array;
  /** x0, y0, x1, y1 per column, original image pixels. */
  boxes: Float32Array;
  /** row, col per column (empty when not sent). */
  grid: Int32Array;
  imageIndex: Int32Array;
  /** View code of each column (index into `viewNames`); all 0 when not sent. */
  viewCodes: Uint8Array;
  viewNames: readonly string[];
  images: readonly ImageMeta[];
  /** Per position: 1 when it starts a word (sub-word pieces merge into the word before them). */
  wordStart: Uint8Array;
  /** Per position: log p of the token given everything before it (answer tokens), NaN elsewhere. */
  logprobs: Float32Array;
}

const FIELD = "token_layout";

function parseImageMeta(x: unknown, i: number): ImageMeta {
  if (x === null || typeof x !== "object") fail(`${FIELD}.images[${i}]`, "must be a dict");
  const o = x as Fields;
  const width = lenientNumber(o.width, 0);
  const height = lenientNumber(o.height, 0);
  if (!(width > 0 && height > 0)) fail(`${FIELD}.images[${i}]`, "needs a positive width and height");
  const covered =
    Array.isArray(o.covered) && o.covered.length === 4 && o.covered.every((v) => typeof v === "number")
      ? (o.covered as Rect)
      : null;
  return { width, height, covered };
}

/** uint8 per position at `key`, or `fallback` when absent. */
function perPosition(layout: Fields, key: string, n: number, fallback: () => Uint8Array): Uint8Array {
  const bytes = optionalBytes(layout, key, FIELD);
  if (bytes === null) return fallback();
  expectLength(bytes.length, n, `${FIELD}.${key}`);
  return bytes;
}

/** Parse the `token_layout` trait for `n` sequence positions (the `tokens` trait); throws a clear Error. */
export function parseLayout(raw: unknown, n: number): TokenLayout {
  const layout = lenientRecord(raw);
  if (layout.v !== undefined && layout.v !== 1) {
    throw new Error(`mmviz: unsupported token_layout version ${JSON.stringify(layout.v)} (this widget reads v=1)`);
  }
  if (layout.n_positions !== undefined && layout.n_positions !== n) {
    fail(`${FIELD}.n_positions`, `is ${String(layout.n_positions)} but there are ${n} tokens`);
  }
  const kinds = perPosition(layout, "kinds", n, () => new Uint8Array(n));
  const answerStart = Math.max(0, Math.min(n, Math.trunc(lenientNumber(layout.answer_start, n))));
  const queryPositions = optionalInt32(layout, "query_positions", FIELD);
  const imagePositions = optionalInt32(layout, "image_positions", FIELD);
  expectPositions(queryPositions, n, `${FIELD}.query_positions`);
  expectPositions(imagePositions, n, `${FIELD}.image_positions`);
  const P = imagePositions.length;

  const boxes = optionalFloat32(layout, "boxes", FIELD);
  expectLength(boxes.length, 4 * P, `${FIELD}.boxes`, `4·${P}`);
  const grid = optionalInt32(layout, "grid", FIELD);
  if (grid.length !== 0) expectLength(grid.length, 2 * P, `${FIELD}.grid`, `2·${P}`);
  let imageIndex = optionalInt32(layout, "image_index", FIELD);
  if (imageIndex.length === 0 && P > 0) imageIndex = new Int32Array(P); // a single image
  expectLength(imageIndex.length, P, `${FIELD}.image_index`);
  const viewCodes = perPosition(layout, "view", P, () => new Uint8Array(P));
  const viewNames = lenientStrings(layout.view_names);

  const images = Array.isArray(layout.images) ? layout.images.map(parseImageMeta) : [];
  // Every column's image needs a size to be drawn.
  for (const i of imageIndex) {
    if (i < 0) fail(`${FIELD}.image_index`, `holds ${i}`);
    if (i >= images.length) fail(`${FIELD}.image_index`, `refers to image ${i} but layout.images has ${images.length}`);
  }
  const wordStart = perPosition(layout, "word_start", n, () => new Uint8Array(n).fill(1));
  const rawLogprobs = optionalFloat32(layout, "logprobs", FIELD);
  if (rawLogprobs.length !== 0) expectLength(rawLogprobs.length, n, `${FIELD}.logprobs`);
  const logprobs = rawLogprobs.length === n ? rawLogprobs : new Float32Array(n).fill(Number.NaN);
  return {
    kinds,
    answerStart,
    queryPositions,
    imagePositions,
    boxes,
    grid,
    imageIndex,
    viewCodes,
    viewNames,
    images,
    wordStart,
    logprobs,
  };
}
