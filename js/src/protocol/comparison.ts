/**
 * Parser of `mmviz/widget/comparison.py` `comparison_payload` → the `comparison_data` trait of a
 * `ComparisonWidget`: the answer-token pairs, the position links between the two traces, the common pixel grid and,
 * per compared method, the A − B maps and the metrics of every (layer slice, pair). The two panes' own states
 * (`side_a`, `side_b`) are Inspector states and are read by the Inspector's parsers.
 */

import type { TensorReader } from "../codec";
import { asBytes, isByteSource, readFloat32 } from "../codec";
import { labelOf } from "./catalogue";
import type { MapRows } from "./map";
import {
  envelope,
  expectLength,
  expectShape,
  fail,
  int32Field,
  lenientFlag,
  lenientNumber,
  lenientText,
  record,
  type Fields,
} from "./validate";

export interface ComparedMethod {
  name: string;
  label: string;
  signed: boolean;
  rows: MapRows;
  /** A's layer of each slice (`[-1]` for a map without layers), and the B layer paired with it. */
  layersA: readonly number[];
  layersB: readonly number[];
  /** `[S + 1, K, G]`: the A − B map of each slice and pair (the last slice: the mean over layers). */
  diff: TensorReader;
  /** `[S, K]` each (NaN: undefined). */
  js: Float32Array;
  spearman: Float32Array;
  iouTopk: Float32Array;
}

export interface ComparisonData {
  /** Decoder layers of A and of B. */
  nLayers: [number, number];
  answers: [string, string];
  answerChanged: boolean;
  deltaLogprob: number;
  topK: number;
  /** K pairs: the sequence positions in A and in B, whether the texts match, each token's log p. */
  positionA: Int32Array;
  positionB: Int32Array;
  sameText: Uint8Array;
  logprobA: Float32Array;
  logprobB: Float32Array;
  /** Per position of A the linked position of B (−1: none), and the other way round. */
  linksA: Int32Array;
  linksB: Int32Array;
  /** `[rows, cols]` of the grid of each image (cells of image 0 first). */
  shapes: readonly [number, number][];
  /** Per cell: 1 when both traces reach it. */
  shared: Uint8Array;
  /** G, the number of cells. */
  cells: number;
  methods: ReadonlyMap<string, ComparedMethod>;
}

function layerList(x: unknown, field: string): number[] {
  if (!Array.isArray(x) || x.length === 0 || !x.every((v) => typeof v === "number" && Number.isInteger(v))) {
    fail(field, "must be a non-empty list of integers");
  }
  return x as number[];
}

function floats(o: Fields, key: string, field: string, size: number): Float32Array {
  if (!isByteSource(o[key])) fail(`${field}.${key}`, "must be bytes (float32)");
  const out = readFloat32(o[key] as ArrayBufferView);
  expectLength(out.length, size, `${field}.${key}`);
  return out;
}

function parseMethod(name: string, raw: unknown, K: number, G: number): ComparedMethod {
  const field = `comparison_data.methods.${name}`;
  const o = record(raw, field);
  const layersA = layerList(o.layers_a, `${field}.layers_a`);
  const layersB = layerList(o.layers_b, `${field}.layers_b`);
  expectLength(layersB.length, layersA.length, `${field}.layers_b`);
  const S = layersA.length;
  const diff = expectShape(envelope(o.diff, `${field}.diff`), [S + 1, K, G], `${field}.diff`);
  return {
    name,
    label: lenientText(o.label) || labelOf(name),
    signed: lenientFlag(o.signed),
    rows: o.rows === "queries" ? "queries" : "targets",
    layersA,
    layersB,
    diff,
    js: floats(o, "js", field, S * K),
    spearman: floats(o, "spearman", field, S * K),
    iouTopk: floats(o, "iou_topk", field, S * K),
  };
}

/** Parse the `comparison_data` trait against the two traces' lengths `nA`, `nB`; throws a clear Error. */
export function parseComparison(raw: unknown, nA: number, nB: number): ComparisonData {
  const o = record(raw, "comparison_data");
  const pairs = record(o.pairs, "comparison_data.pairs");
  const positionA = int32Field(pairs, "position_a", "comparison_data.pairs");
  const K = positionA.length;
  const positionB = int32Field(pairs, "position_b", "comparison_data.pairs", K);
  if (!isByteSource(pairs.same_text)) fail("comparison_data.pairs.same_text", "must be bytes (uint8)");
  const sameText = asBytes(pairs.same_text as ArrayBufferView);
  expectLength(sameText.length, K, "comparison_data.pairs.same_text");
  const grid = record(o.grid, "comparison_data.grid");
  if (!Array.isArray(grid.shapes)) fail("comparison_data.grid.shapes", "must be a list of [rows, cols]");
  const shapes = (grid.shapes as unknown[]).map((s, i): [number, number] => {
    if (!Array.isArray(s) || s.length !== 2 || !s.every((v) => typeof v === "number" && Number.isInteger(v) && v > 0)) {
      fail(`comparison_data.grid.shapes[${i}]`, "must be [rows, cols]");
    }
    return [s[0] as number, s[1] as number];
  });
  const G = shapes.reduce((total, [r, c]) => total + r * c, 0);
  if (!isByteSource(grid.shared)) fail("comparison_data.grid.shared", "must be bytes (uint8)");
  const shared = asBytes(grid.shared as ArrayBufferView);
  expectLength(shared.length, G, "comparison_data.grid.shared");
  const methods = new Map<string, ComparedMethod>();
  for (const [name, entry] of Object.entries(record(o.methods, "comparison_data.methods"))) {
    methods.set(name, parseMethod(name, entry, K, G));
  }
  const nLayers = Array.isArray(o.n_layers) ? o.n_layers : [];
  const answers = Array.isArray(o.answers) ? o.answers : [];
  return {
    nLayers: [lenientNumber(nLayers[0], 0), lenientNumber(nLayers[1], 0)],
    answers: [lenientText(answers[0]), lenientText(answers[1])],
    answerChanged: lenientFlag(o.answer_changed),
    deltaLogprob: lenientNumber(o.delta_logprob, Number.NaN),
    topK: lenientNumber(o.top_k, Number.NaN),
    positionA,
    positionB,
    sameText,
    logprobA: floats(pairs, "logprob_a", "comparison_data.pairs", K),
    logprobB: floats(pairs, "logprob_b", "comparison_data.pairs", K),
    linksA: int32Field(o, "links_a", "comparison_data", nA),
    linksB: int32Field(o, "links_b", "comparison_data", nB),
    shapes,
    shared,
    cells: G,
    methods,
  };
}
