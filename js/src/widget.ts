/**
 * anywidget lifecycle: `initialize` sets up the per-model data cache, `render` builds one independent view.
 *
 * Decoded data is shared by every view of a model (WeakMap keyed by model, dropped when `revision`
 * changes); DOM and focus state (hover, pin, layer, head) belong to each view.
 */

import type { AnyModel } from "@anywidget/types";
import { scaleOf, type ColorScale } from "./colormap";
import { ComputeRequests, COMPUTE_TIMEOUT_MS, type ComputeStatus } from "./compute";
import { buildData, type WidgetData } from "./data";
import { ATTENTION, parseCatalogue, parseMaps, type MethodInfo, type MethodMap, type SliceChoice } from "./methods";
import { DisplayStore, focusToken, Store, type DisplayState, type FocusState } from "./store";
import { ModelSync } from "./sync";
import { Caption } from "./views/caption";
import { Controls } from "./views/controls";
import { ImageView } from "./views/image-view";
import { Legend } from "./views/legend";
import { MethodSwitcher, type SwitcherEntry } from "./views/method-switcher";
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

/** What the methods side of a view knows when it paints (catalogue, parsed maps, compute state). */
export interface MethodContext {
  catalogue: readonly MethodInfo[];
  maps: ReadonlyMap<string, MethodMap>;
  /** Bumped whenever `maps` is re-parsed (part of the memo keys). */
  mapsGeneration: number;
  /** The method being computed (this view's request or the kernel's `busy`), or null. */
  pending: string | null;
  /** The last failed request. */
  failed: { method: string; message: string } | null;
  /** A kernel is there to compute methods (false on a static export). */
  kernel: boolean;
}

const NO_METHODS: MethodContext = {
  catalogue: [],
  maps: new Map(),
  mapsGeneration: 0,
  pending: null,
  failed: null,
  kernel: false,
};

/** The switcher's entries: the catalogue, then computed maps it does not list; attention first if absent. */
export function switcherEntries(data: WidgetData, m: MethodContext): SwitcherEntry[] {
  const infos: MethodInfo[] = [...m.catalogue];
  if (infos.length > 0 && data.hasAttention && !infos.some((i) => i.name === ATTENTION)) {
    infos.unshift({
      name: ATTENTION,
      label: "Attention",
      meaning: data.meta.map_description,
      signed: false,
      layered: true,
      cost: "instant",
      computed: true,
      available: true,
    });
  }
  for (const [name, map] of m.maps) {
    if (infos.some((i) => i.name === name)) continue;
    infos.push({
      name,
      label: map.label,
      meaning: map.meaning,
      signed: map.signed,
      layered: map.layers !== null,
      cost: "fast",
      computed: true,
      available: false,
    });
  }
  return infos.map((info) => {
    const computed = (info.name === ATTENTION && data.hasAttention) || m.maps.has(info.name);
    return {
      info,
      computed,
      pending: !computed && m.pending === info.name,
      canCompute: !computed && m.kernel && info.available,
    };
  });
}

/** Everything built from one revision of the data (one per render). */
class BuiltView {
  readonly controls: Controls;
  readonly switcher: MethodSwitcher;
  readonly legend: Legend;
  readonly tokens: TokenStrip;
  readonly images: ImageView[] = [];
  readonly caption: Caption;
  private mapKey = "";
  private map: Float32Array | null = null;
  private scale: ColorScale = { signed: false, range: 0 };
  private colKey = "";
  private column: Float32Array | null = null;
  private colScale: ColorScale = { signed: false, range: 0 };
  private visibleKey = "";
  private visible: Uint8Array = new Uint8Array(0);

  constructor(
    readonly data: WidgetData,
    readonly store: Store,
    readonly display: DisplayStore,
    parent: HTMLElement,
    onPickMethod: (name: string) => void,
  ) {
    const header = document.createElement("div");
    header.className = "mmviz-header";
    const title = document.createElement("div");
    title.className = "mmviz-title";
    title.textContent = [data.meta.model_name, data.meta.family].filter(Boolean).join(" · ");
    this.switcher = new MethodSwitcher(onPickMethod);
    this.controls = new Controls(data, store);
    this.controls.el.prepend(this.switcher.el);
    this.legend = new Legend(data.meta.map_label);
    header.append(title, this.controls.el, this.legend.el);

    const body = document.createElement("div");
    body.className = "mmviz-body";
    const imgs = document.createElement("div");
    imgs.className = "mmviz-images";
    const onView = (image: number, code: number): void => {
      const views = [...this.display.get().views];
      while (views.length <= image) views.push(-1);
      views[image] = code;
      this.display.set({ views });
    };
    for (let i = 0; i < data.nImages; i++) {
      const v = new ImageView(data, store, i, undefined, onView);
      this.images.push(v);
      imgs.append(v.el);
    }
    if (data.nImages === 0) imgs.hidden = true;
    this.tokens = new TokenStrip(data, store);
    body.append(imgs, this.tokens.el);

    this.caption = new Caption(data);
    parent.append(header, body, this.caption.el);
  }

  /** The method actually drawn: `d.method` when it has data, the attention traits for attention. */
  paint(s: Readonly<FocusState>, d: Readonly<DisplayState>, m: MethodContext): void {
    const { data } = this;
    const focus = focusToken(s);
    const method = d.method || ATTENTION;
    const entries = switcherEntries(data, m);
    const info = entries.find((e) => e.info.name === method)?.info;
    const useAttention = method === ATTENTION && data.hasAttention;
    const methodMap = useAttention ? null : (m.maps.get(method) ?? null);

    // Columns drawn: every image's selected view (views of one image are never drawn together).
    const viewsKey = data.defaultViews().map((_, i) => data.selectedView(i, d.views)).join(",");
    if (viewsKey !== this.visibleKey) {
      this.visibleKey = viewsKey;
      this.visible = data.visibleColumns(d.views);
    }
    this.images.forEach((v, i) => v.setView(data.selectedView(i, d.views)));

    let valid: boolean;
    let row: number;
    let slice: SliceChoice | null = null;
    let mapKey: string;
    if (useAttention) {
      valid = data.validSelection(s.layer, s.head);
      row = focus === null ? -1 : data.rowOf(focus);
      mapKey = valid && row >= 0 ? `attention|${s.layer}|${s.head}|${row}|${viewsKey}` : "none";
      if (mapKey !== this.mapKey) {
        this.mapKey = mapKey;
        this.map = mapKey === "none" ? null : data.mapFor(s.layer, s.head, row);
        this.scale = this.map === null ? { signed: false, range: 0 } : scaleOf(this.map, false, this.visible);
      }
    } else if (methodMap !== null) {
      valid = true;
      slice = methodMap.sliceFor(s.layer);
      row = focus === null ? -1 : methodMap.rowOf(focus);
      mapKey = row >= 0 ? `${method}|${m.mapsGeneration}|${slice.slice}|${row}|${viewsKey}` : "none";
      if (mapKey !== this.mapKey) {
        this.mapKey = mapKey;
        this.map = mapKey === "none" ? null : methodMap.row(slice.slice, row);
        this.scale =
          this.map === null ? { signed: methodMap.signed, range: 0 } : scaleOf(this.map, methodMap.signed, this.visible);
      }
    } else {
      valid = false;
      row = -1;
      mapKey = "none";
      this.mapKey = mapKey;
      this.map = null;
      this.scale = { signed: info?.signed ?? false, range: 0 };
    }
    const shownRow = this.map === null ? -1 : row;
    for (const v of this.images) {
      v.paintHeat(this.map, this.scale, shownRow, mapKey);
      v.heat.dataset.method = this.map === null ? "" : method;
      v.heat.dataset.layer = slice?.layer != null ? String(slice.layer) : useAttention ? String(s.layer) : "";
      v.paintOutline(s.hoverPatch);
    }

    // Patch hover: tint the tokens by the shown map's values at that patch.
    const patch = s.hoverPatch;
    let positions: Int32Array | undefined;
    let colKey = "none";
    if (patch !== null && useAttention && data.validSelection(s.layer, s.head)) {
      colKey = `attention|${s.layer}|${s.head}|${patch}`;
    } else if (patch !== null && methodMap !== null && slice !== null) {
      colKey = `${method}|${m.mapsGeneration}|${slice.slice}|${patch}`;
      positions = methodMap.positions;
    }
    if (colKey !== this.colKey) {
      this.colKey = colKey;
      if (colKey === "none") this.column = null;
      else if (useAttention) this.column = data.columnFor(s.layer, s.head, patch!);
      else this.column = methodMap!.column(slice!.slice, patch!);
      this.colScale =
        this.column === null ? { signed: false, range: 0 } : scaleOf(this.column, methodMap?.signed ?? false);
    }
    if (methodMap !== null) {
      const sparse = methodMap.positions.length < data.n;
      this.tokens.setRows(`${method}|${m.mapsGeneration}`, (pos) => methodMap.hasRow(pos), sparse);
    } else {
      this.tokens.setRows(useAttention ? "attention" : `none|${method}`, (pos) => useAttention && data.rowOf(pos) >= 0, !useAttention);
    }
    this.tokens.paint({
      hoverToken: s.hoverToken,
      pinnedToken: s.pinnedToken,
      column: this.column,
      ...(positions ? { positions } : {}),
      scale: this.colScale,
    });
    const signed = methodMap?.signed ?? false;
    this.legend.update({
      vmax: this.map === null ? null : this.scale.range,
      tokenMax: this.column === null ? null : this.colScale.range,
      signed,
      label: useAttention ? data.meta.map_label : (info?.label ?? methodMap?.label ?? method),
    });
    if (useAttention || (method === ATTENTION && methodMap === null)) {
      this.caption.update({ state: s, focus, row, vmax: this.scale.range, valid: useAttention && valid });
    } else {
      const entry = entries.find((e) => e.info.name === method);
      const failed = m.failed !== null && m.failed.method === method ? m.failed.message : null;
      this.caption.update({
        method: {
          state: s,
          focus,
          info: info ?? { name: method, label: methodMap?.label ?? method, meaning: methodMap?.meaning ?? "", cost: "fast" },
          map: methodMap,
          row,
          slice,
          range: this.scale.range,
          pending: m.pending === method,
          failed,
          canCompute: entry?.canCompute ?? false,
          staticPage: !m.kernel,
        },
      });
    }
    const layered = useAttention || (methodMap !== null && methodMap.layers !== null && methodMap.layers.length > 0);
    this.controls.setApplicable(layered, useAttention, useAttention ? "" : "this map does not depend on it");
    this.controls.update(s);
    this.switcher.update(entries, method);
  }

  dispose(): void {
    this.controls.dispose();
    this.switcher.dispose();
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

function methodFromModel(model: Model): string {
  const m = model.get("method");
  return typeof m === "string" && m !== "" ? m : ATTENTION;
}

/** Does this model have a kernel behind it? The static host (exported pages) says it has none. */
function hasKernel(model: Model): boolean {
  return (model as { kernel?: unknown }).kernel !== false;
}

export interface RenderOptions {
  /** How long to wait for the kernel's reply to a compute request (default 10 minutes). */
  computeTimeoutMs?: number;
}

export function render({ model, el }: { model: Model; el: HTMLElement }, options: RenderOptions = {}): () => void {
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
  const display = new DisplayStore({ method: methodFromModel(model) });
  const sync = new ModelSync(model);
  let view: BuiltView | null = null;
  let dataError: string | null = null;
  let mapsErrors: string[] = [];
  let applyingModel = false;
  let catalogue: MethodInfo[] = [];
  let maps: ReadonlyMap<string, MethodMap> = new Map();
  let mapsGeneration = 0;
  /** The method shown before a request for an uncomputed one (shown again if that request fails). */
  let beforeRequest: string = ATTENTION;

  const computeFailureText = (st: Readonly<ComputeStatus>): string => {
    if (st.failed === null) return "";
    const label = catalogue.find((i) => i.name === st.failed!.method)?.label ?? st.failed.method;
    return `mmviz: could not compute ${label}: ${st.failed.message}`;
  };

  const showErrors = (): void => {
    const kernel = model.get("error");
    const msgs = [
      typeof kernel === "string" ? kernel : "",
      dataError ?? "",
      ...mapsErrors,
      computeFailureText(compute.get()),
    ].filter((m) => m !== "");
    const text = msgs.join("\n");
    if (errorBox.textContent !== text) errorBox.textContent = text;
    errorBox.hidden = msgs.length === 0;
  };

  const methodContext = (): MethodContext => {
    const busy = model.get("busy");
    const st = compute.get();
    return {
      catalogue,
      maps,
      mapsGeneration,
      pending: st.pending ?? (typeof busy === "string" && busy !== "" ? busy : null),
      failed: st.failed,
      kernel: hasKernel(model),
    };
  };

  const paint = (): void => {
    const s = store.get();
    const d = display.get();
    const m = view ? methodContext() : NO_METHODS;
    if (view) {
      try {
        view.paint(s, d, m);
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
    root.dataset.method = d.method;
    root.dataset.busy = m.pending ?? "";
    root.dataset.ready = "1";
  };

  const compute = new ComputeRequests(
    model,
    () => {
      showErrors();
      paint();
    },
    options.computeTimeoutMs ?? COMPUTE_TIMEOUT_MS,
    (method) => {
      // Show the previous map again, so the failed method can be picked (and asked for) again.
      if (display.get().method === method && !maps.has(method)) display.set({ method: beforeRequest });
    },
  );

  const readMethods = (): void => {
    catalogue = parseCatalogue(model.get("methods"));
    const data = view?.data ?? null;
    const parsed = data ? parseMaps(model.get("maps"), data.P, data.n) : { maps: new Map<string, MethodMap>(), errors: [] };
    maps = parsed.maps;
    mapsErrors = parsed.errors;
    mapsGeneration += 1;
  };

  const pickMethod = (name: string): void => {
    const current = display.get().method;
    compute.clearFailure();
    if (name === current) return;
    const data = view?.data;
    const computed = (name === ATTENTION && data?.hasAttention === true) || maps.has(name);
    const info = catalogue.find((i) => i.name === name);
    if (!computed && info !== undefined && info.available && hasKernel(model)) {
      beforeRequest = current;
      display.set({ method: name });
      compute.request(name);
    } else {
      display.set({ method: name });
    }
  };

  const applyModel = (patch: Partial<FocusState>): void => {
    applyingModel = true;
    try {
      store.set(patch);
    } finally {
      applyingModel = false;
    }
  };

  const applyDisplay = (patch: Partial<DisplayState>): void => {
    applyingModel = true;
    try {
      display.set(patch);
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
    applyModel({ ...stateFromModel(model, data), hoverToken: null, hoverPatch: null });
    applyDisplay({ method: methodFromModel(model), views: data ? data.defaultViews() : [] });
    if (data) {
      try {
        view = new BuiltView(data, store, display, content, pickMethod);
      } catch (err) {
        content.replaceChildren();
        dataError = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
    readMethods();
    showErrors();
    paint();
  };

  const scheduleSync = (): void => sync.schedule({ ...store.get(), method: display.get().method });

  const unsubscribe = store.subscribe((s, prev) => {
    paint();
    if (
      !applyingModel &&
      (s.layer !== prev.layer || s.head !== prev.head || s.pinnedToken !== prev.pinnedToken)
    ) {
      scheduleSync();
    }
  });
  const unsubscribeDisplay = display.subscribe((d, prev) => {
    paint();
    if (!applyingModel && d.method !== prev.method) scheduleSync();
  });

  const onSelection = (): void => applyModel(stateFromModel(model, view?.data ?? null));
  const onMethod = (): void => applyDisplay({ method: methodFromModel(model) });
  const onMethods = (): void => {
    readMethods();
    showErrors();
    paint();
  };
  const onBusy = (): void => paint();
  const onRevision = (): void => build();
  const onError = (): void => showErrors();
  const events: [string, () => void][] = [
    ["change:layer", onSelection],
    ["change:head", onSelection],
    ["change:pinned", onSelection],
    ["change:method", onMethod],
    ["change:methods", onMethods],
    ["change:maps", onMethods],
    ["change:busy", onBusy],
    ["change:revision", onRevision],
    ["change:error", onError],
  ];
  for (const [name, fn] of events) model.on(name, fn);

  const onKey = (ev: KeyboardEvent): void => {
    if (ev.key === "Escape" && root.isConnected && store.get().pinnedToken !== null) {
      store.set({ pinnedToken: null });
    }
  };
  document.addEventListener("keydown", onKey);

  build();

  return () => {
    document.removeEventListener("keydown", onKey);
    for (const [name, fn] of events) model.off(name, fn);
    compute.dispose();
    unsubscribe();
    unsubscribeDisplay();
    store.clear();
    display.clear();
    try {
      sync.flush(); // the last layer/head/pin/method choice still reaches Python
    } catch {
      sync.cancel();
    }
    view?.dispose();
    view = null;
    root.remove();
  };
}
