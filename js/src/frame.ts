/**
 * What the views draw, derived from the state store and the data in one place: the focused token (or word), the
 * map over the image columns (attention at a layer and head, or a method's map), its colour scale, and the
 * column under a hovered patch that tints the tokens. Every view paints from the same {@link Frame}, so the image,
 * the tokens, the legend and the caption can never disagree.
 *
 * Maps are memoised by what determines them, so repainting on an unrelated change costs nothing, and a hover only
 * decodes the P (or Q) values it needs.
 */

import type { TensorReader } from "./codec";
import { scaleOf, type ColorScale } from "./colormap";
import { LayerHeads, type WidgetData } from "./data";
import { headsKey, type Extras } from "./extras";
import type { MethodContext } from "./method-state";
import type { MethodMap, SliceChoice } from "./methods";
import { ATTENTION, MEAN, type Head, type Layer } from "./protocol";
import { focusToken, type ViewState } from "./store";

export interface Frame {
  /** The focused position (pinned, else hovered), or null; in word mode the word's first piece. */
  focus: number | null;
  /** Every position whose map is combined: the focused token, or all pieces of the focused word. */
  focusPositions: readonly number[];
  method: string;
  /** Drawing attention (the attention traits and fetched heads) rather than a method's map. */
  attention: boolean;
  methodMap: MethodMap | null;
  /** The layer and head drawn: the selection, or the overview cell being previewed. */
  layer: Layer;
  head: Head;
  previewing: boolean;
  /** The slice of a layered method map that is drawn (null for attention or a map without layers). */
  slice: SliceChoice | null;
  /** Rows of the drawn map for `focusPositions` (attention rows or the map's rows); empty when none. */
  rows: readonly number[];
  map: Float32Array | null;
  scale: ColorScale;
  /** Why the map is not there yet ("loading the heads of layer 5"), or null. */
  waiting: string | null;
  /** Columns drawn: every image's selected view (views of one image are never drawn together). */
  visible: Uint8Array;
  /** The drawn map's value of every row at the hovered patch, and the positions of those rows. */
  column: Float32Array | null;
  columnPositions: Int32Array;
  columnScale: ColorScale;
  /** Identifies the drawn map and column (views repaint only when these change). */
  mapKey: string;
  columnKey: string;
}

const NONE: ColorScale = { signed: false, range: 0 };

function mean(rows: readonly Float32Array[], size: number): Float32Array {
  if (rows.length === 1) return rows[0]!;
  const out = new Float32Array(size);
  for (const r of rows) for (let i = 0; i < size; i++) out[i] = out[i]! + r[i]! / rows.length;
  return out;
}

export class FrameBuilder {
  private mapKey = "";
  private map: Float32Array | null = null;
  private scaleBase: ColorScale = NONE;
  private columnKey = "";
  private column: Float32Array | null = null;
  private columnScale: ColorScale = NONE;
  private columnPositions: Int32Array;
  private visibleKey = "";
  private visible: Uint8Array;
  /** Fetched heads of the mean over layers (`heads:mean`) or of one layer, by key. */
  private readonly heads = new Map<string, LayerHeads>();

  constructor(
    private readonly data: WidgetData,
    private readonly extras: Extras | null,
  ) {
    this.columnPositions = data.queryPositions;
    this.visible = new Uint8Array(data.P);
  }

  /** The per-head maps of `layer` (`"mean"`: every head's mean over layers), or null after asking for them. */
  headsOf(layer: Layer): LayerHeads | null {
    if (this.extras === null) return null;
    const key = headsKey(layer);
    const known = this.heads.get(key);
    if (known) return known;
    // Asked for even when it is there: a payload that arrived by an idle prefetch is then in use (never dropped);
    // a payload a static page carries is there at once.
    this.extras.want(key);
    const reader = this.extras.get<TensorReader>(key);
    if (reader === null) return null;
    const { H, Q, P } = this.data;
    const heads = new LayerHeads(reader, H, Q, P);
    this.heads.set(key, heads);
    return heads;
  }

  /** Why a layer's per-head maps are not drawn: still on their way, or not available (an exported page without them). */
  private headsWaiting(layer: Layer): string {
    const where = layer === MEAN ? "every layer" : `layer ${layer}`;
    const status = this.extras?.statusOf(headsKey(layer));
    return status?.state === "error"
      ? `the heads of ${where} are not available: ${status.error ?? "the kernel could not send them"}`
      : `loading the heads of ${where}…`;
  }

  /** Attention of query row `q` at (layer, head): the head mean from the first payload, a head once fetched. */
  private attentionRow(layer: Layer, head: Head, q: number): Float32Array | null {
    if (head === MEAN) return this.data.meanMap(layer, q);
    return this.headsOf(layer)?.row(head, q) ?? null;
  }

  /** Attention of every query row to column `p` at (layer, head), or null while the head is fetched. */
  private attentionColumn(layer: Layer, head: Head, p: number): Float32Array | null {
    if (head === MEAN) return this.data.meanColumn(layer, p);
    return this.headsOf(layer)?.column(head, p) ?? null;
  }

  build(s: Readonly<ViewState>, m: MethodContext): Frame {
    const { data } = this;
    const focused = focusToken(s);
    const focusPositions = focused === null ? [] : s.words ? data.wordOf(focused) : [focused];
    const focus = focusPositions[0] ?? null;
    const method = s.method || ATTENTION;
    const attention = method === ATTENTION && data.hasAttention;
    const methodMap = attention ? null : (m.maps.get(method) ?? null);
    const previewing = s.preview !== null && attention;
    const layer = previewing ? s.preview!.layer : s.layer;
    const head = previewing ? s.preview!.head : s.head;

    const viewsKey = data.defaultViews().map((_, i) => data.selectedView(i, s.views)).join(",");
    if (viewsKey !== this.visibleKey) {
      this.visibleKey = viewsKey;
      this.visible = data.visibleColumns(s.views);
      this.mapKey = ""; // the scale is over the visible columns
    }

    let rows: number[] = [];
    let slice: SliceChoice | null = null;
    let waiting: string | null = null;
    let mapKey = "none";
    let signed = false;
    let readRow: ((row: number) => Float32Array | null) | null = null;
    if (attention) {
      rows = focusPositions.map((pos) => data.rowOf(pos)).filter((q) => q >= 0);
      if (data.validSelection(layer, head) && rows.length > 0) {
        mapKey = `attention|${layer}|${head}|${rows.join(",")}|${viewsKey}`;
        readRow = (q) => this.attentionRow(layer, head, q);
      }
    } else if (methodMap !== null) {
      signed = methodMap.signed;
      slice = methodMap.sliceFor(layer);
      rows = focusPositions.map((pos) => methodMap.rowOf(pos)).filter((r) => r >= 0);
      if (rows.length > 0) {
        mapKey = `${method}|${m.mapsGeneration}|${slice.slice}|${rows.join(",")}|${viewsKey}`;
        const at = slice.slice;
        readRow = (r) => (at === -1 ? methodMap.meanRow(r) : methodMap.row(at, r));
      }
    } else {
      signed = m.catalogue.find((i) => i.name === method)?.signed ?? false;
    }
    if (mapKey !== this.mapKey || this.map === null) {
      const read = readRow === null ? [] : rows.map((r) => readRow!(r));
      if (read.length > 0 && read.every((r) => r !== null)) {
        this.mapKey = mapKey;
        this.map = mean(read as Float32Array[], data.P);
        this.scaleBase = scaleOf(this.map, signed, this.visible);
      } else {
        this.mapKey = read.length > 0 ? "" : mapKey; // not arrived yet: build again next time
        this.map = null;
        this.scaleBase = { signed, range: 0 };
        if (read.length > 0) waiting = this.headsWaiting(layer);
      }
    }
    const scale: ColorScale = { ...this.scaleBase, mode: s.scale, gamma: s.gamma };

    // Patch hover: the drawn map's values at that patch tint the tokens.
    const patch = s.hoverPatch;
    let columnKey = "none";
    let readColumn: (() => Float32Array | null) | null = null;
    let positions = data.queryPositions;
    if (patch !== null && attention && data.validSelection(layer, head)) {
      columnKey = `attention|${layer}|${head}|${patch}`;
      readColumn = () => this.attentionColumn(layer, head, patch);
    } else if (patch !== null && methodMap !== null && slice !== null) {
      columnKey = `${method}|${m.mapsGeneration}|${slice.slice}|${patch}`;
      positions = methodMap.positions;
      const at = slice.slice;
      readColumn = () => (at === -1 ? methodMap.meanColumn(patch) : methodMap.column(at, patch));
    }
    if (columnKey !== this.columnKey || (this.column === null && readColumn !== null)) {
      const column = readColumn === null ? null : readColumn();
      this.columnKey = column === null && readColumn !== null ? "" : columnKey;
      this.column = column;
      this.columnPositions = positions;
      this.columnScale = column === null ? NONE : scaleOf(column, signed);
    }
    return {
      focus,
      focusPositions,
      method,
      attention,
      methodMap,
      layer,
      head,
      previewing,
      slice,
      rows,
      map: this.map,
      scale,
      waiting,
      visible: this.visible,
      column: this.column,
      columnPositions: this.columnPositions,
      columnScale: { ...this.columnScale, mode: s.scale, gamma: s.gamma },
      mapKey: `${this.mapKey}|${s.scale}|${s.gamma}`,
      columnKey: `${this.columnKey}|${s.scale}|${s.gamma}`,
    };
  }
}
