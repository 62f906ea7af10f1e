/**
 * anywidget lifecycle: `initialize` sets up the per-model data cache, `render` builds one independent view.
 *
 * Decoded data is shared by every view of a model (WeakMap keyed by model, dropped when `revision`
 * changes); DOM and focus state (hover, pin, layer, head) belong to each view.
 */

import type { AnyModel } from "@anywidget/types";
import { buildData, maxOf, type WidgetData } from "./data";
import { focusToken, Store, type FocusState } from "./store";
import { ModelSync } from "./sync";
import { Caption } from "./views/caption";
import { Controls } from "./views/controls";
import { ImageView } from "./views/image-view";
import { Legend } from "./views/legend";
import { TokenStrip } from "./views/token-strip";

/** The subset of anywidget's AnyModel this widget uses (the static host implements exactly this). */
export interface Model {
  get(key: string): any;
  set(key: string, value: any): void;
  on(eventName: string, callback: (...args: any[]) => void): void;
  off(eventName?: string | null, callback?: ((...args: any[]) => void) | null): void;
  save_changes(): void;
  send(content: any, callbacks?: any, buffers?: ArrayBuffer[] | ArrayBufferView[]): void;
}

// Compile-time check that a real anywidget model satisfies Model.
type Assert<T extends true> = T;
export type _AnyModelIsModel = Assert<AnyModel extends Model ? true : false>;

interface CacheEntry {
  revision: unknown;
  data: WidgetData | null;
  error: Error | null;
}

const cache = new WeakMap<object, CacheEntry>();

/** Decoded data of `model` at its current revision (built once, shared by its views). */
export function getData(model: Model): { data: WidgetData | null; error: Error | null } {
  const revision = model.get("revision");
  const hit = cache.get(model);
  if (hit && hit.revision === revision) return hit;
  let entry: CacheEntry;
  try {
    entry = { revision, data: buildData(model), error: null };
  } catch (err) {
    entry = { revision, data: null, error: err instanceof Error ? err : new Error(String(err)) };
  }
  cache.set(model, entry);
  return entry;
}

export function initialize({ model }: { model: Model }): () => void {
  const drop = (): void => {
    cache.delete(model);
  };
  model.on("change:revision", drop);
  return () => model.off("change:revision", drop);
}

/** Everything built from one revision of the data (one per render). */
class BuiltView {
  readonly controls: Controls;
  readonly legend: Legend;
  readonly tokens: TokenStrip;
  readonly images: ImageView[] = [];
  readonly caption: Caption;
  private mapKey = "";
  private map: Float32Array | null = null;
  private vmax = 0;
  private colKey = "";
  private column: Float32Array | null = null;
  private colMax = 0;

  constructor(
    readonly data: WidgetData,
    readonly store: Store,
    parent: HTMLElement,
  ) {
    const header = document.createElement("div");
    header.className = "mmviz-header";
    const title = document.createElement("div");
    title.className = "mmviz-title";
    title.textContent = [data.meta.model_name, data.meta.family].filter(Boolean).join(" · ");
    this.controls = new Controls(data, store);
    this.legend = new Legend(data.meta.map_label);
    header.append(title, this.controls.el, this.legend.el);

    const body = document.createElement("div");
    body.className = "mmviz-body";
    const imgs = document.createElement("div");
    imgs.className = "mmviz-images";
    for (let i = 0; i < data.nImages; i++) {
      const v = new ImageView(data, store, i);
      this.images.push(v);
      imgs.append(v.el);
    }
    if (data.nImages === 0) imgs.hidden = true;
    this.tokens = new TokenStrip(data, store);
    body.append(imgs, this.tokens.el);

    this.caption = new Caption(data);
    parent.append(header, body, this.caption.el);
  }

  paint(s: Readonly<FocusState>): void {
    const { data } = this;
    const focus = focusToken(s);
    const valid = data.hasAttention && data.validSelection(s.layer, s.head);
    const q = focus === null ? -1 : data.rowOf(focus);

    const mapKey = valid && q >= 0 ? `${s.layer}|${s.head}|${q}` : "none";
    if (mapKey !== this.mapKey) {
      this.mapKey = mapKey;
      this.map = mapKey === "none" ? null : data.mapFor(s.layer, s.head, q);
      this.vmax = this.map === null ? 0 : maxOf(this.map);
    }
    const shownRow = this.map === null ? -1 : q;
    for (const v of this.images) {
      v.paintHeat(this.map, this.vmax, shownRow, mapKey);
      v.paintOutline(s.hoverPatch);
    }

    const colKey = valid && s.hoverPatch !== null ? `${s.layer}|${s.head}|${s.hoverPatch}` : "none";
    if (colKey !== this.colKey) {
      this.colKey = colKey;
      this.column = colKey === "none" ? null : data.columnFor(s.layer, s.head, s.hoverPatch!);
      this.colMax = this.column === null ? 0 : maxOf(this.column);
    }
    this.tokens.paint({
      hoverToken: s.hoverToken,
      pinnedToken: s.pinnedToken,
      column: this.column,
      columnMax: this.colMax,
    });
    this.legend.update({
      vmax: this.map === null ? null : this.vmax,
      tokenMax: this.column === null ? null : this.colMax,
    });
    this.caption.update({ state: s, focus, row: q, vmax: this.vmax, valid });
    this.controls.update(s);
  }

  dispose(): void {
    this.controls.dispose();
    this.tokens.dispose();
    for (const v of this.images) v.dispose();
  }
}

function toInt(x: unknown, fallback: number): number {
  return typeof x === "number" && Number.isFinite(x) ? Math.trunc(x) : fallback;
}

/** layer / head / pinned from the model, clamped to what `data` holds. */
function stateFromModel(model: Model, data: WidgetData | null): Partial<FocusState> {
  const L = data?.L ?? 0;
  const H = data?.H ?? 0;
  const n = data?.n ?? 0;
  const layer = Math.max(0, Math.min(Math.max(0, L - 1), toInt(model.get("layer"), 0)));
  let head = toInt(model.get("head"), -1);
  if (!(head >= -1 && head < H)) head = -1;
  const pinned = toInt(model.get("pinned"), -1);
  return { layer, head, pinnedToken: pinned >= 0 && pinned < n ? pinned : null };
}

export function render({ model, el }: { model: Model; el: HTMLElement }): () => void {
  const root = document.createElement("div");
  root.className = "mmviz-root";
  const errorBox = document.createElement("div");
  errorBox.className = "mmviz-error";
  errorBox.setAttribute("role", "alert");
  errorBox.hidden = true;
  const content = document.createElement("div");
  content.className = "mmviz-content";
  root.append(errorBox, content);
  el.append(root);

  const store = new Store();
  const sync = new ModelSync(model);
  let view: BuiltView | null = null;
  let dataError: string | null = null;
  let applyingModel = false;

  const showErrors = (): void => {
    const kernel = model.get("error");
    const msgs = [typeof kernel === "string" ? kernel : "", dataError ?? ""].filter((m) => m !== "");
    errorBox.textContent = msgs.join("\n");
    errorBox.hidden = msgs.length === 0;
  };

  const paint = (): void => {
    const s = store.get();
    if (view) {
      try {
        view.paint(s);
      } catch (err) {
        dataError = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
        showErrors();
      }
    }
    // Test hooks: set after painting.
    const focus = focusToken(s);
    root.dataset.layer = String(s.layer);
    root.dataset.head = String(s.head);
    root.dataset.focus = String(focus ?? -1);
    root.dataset.patch = String(s.hoverPatch ?? -1);
    root.dataset.ready = "1";
  };

  const applyModel = (patch: Partial<FocusState>): void => {
    applyingModel = true;
    try {
      store.set(patch);
    } finally {
      applyingModel = false;
    }
  };

  const build = (): void => {
    view?.dispose();
    view = null;
    content.replaceChildren();
    const { data, error } = getData(model);
    dataError = error ? error.message : null;
    showErrors();
    applyModel({ ...stateFromModel(model, data), hoverToken: null, hoverPatch: null });
    if (data) {
      try {
        view = new BuiltView(data, store, content);
      } catch (err) {
        content.replaceChildren();
        dataError = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
        showErrors();
      }
    }
    paint();
  };

  const unsubscribe = store.subscribe((s, prev) => {
    paint();
    if (
      !applyingModel &&
      (s.layer !== prev.layer || s.head !== prev.head || s.pinnedToken !== prev.pinnedToken)
    ) {
      sync.schedule(s);
    }
  });

  const onSelection = (): void => applyModel(stateFromModel(model, view?.data ?? null));
  const onRevision = (): void => build();
  const onError = (): void => showErrors();
  model.on("change:layer", onSelection);
  model.on("change:head", onSelection);
  model.on("change:pinned", onSelection);
  model.on("change:revision", onRevision);
  model.on("change:error", onError);

  const onKey = (ev: KeyboardEvent): void => {
    if (ev.key === "Escape" && root.isConnected && store.get().pinnedToken !== null) {
      store.set({ pinnedToken: null });
    }
  };
  document.addEventListener("keydown", onKey);

  build();

  return () => {
    document.removeEventListener("keydown", onKey);
    model.off("change:layer", onSelection);
    model.off("change:head", onSelection);
    model.off("change:pinned", onSelection);
    model.off("change:revision", onRevision);
    model.off("change:error", onError);
    unsubscribe();
    store.clear();
    try {
      sync.flush(); // the last layer/head/pin choice still reaches Python
    } catch {
      sync.cancel();
    }
    view?.dispose();
    view = null;
    root.remove();
  };
}
