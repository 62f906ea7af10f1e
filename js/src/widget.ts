/**
 * anywidget lifecycle: `initialize` sets up the per-model data cache, `render` builds one independent view.
 *
 * Decoded data and fetched extras are shared by every view of a model (a WeakMap keyed by the model, dropped when
 * `revision` changes); the state store, DOM and listeners belong to each view, so a widget displayed twice gives
 * two independent views. Every view paints from one derived frame (frame.ts).
 */

import type { AnyModel } from "@anywidget/types";
import { Channel } from "./channel";
import { ComputeRequests, COMPUTE_TIMEOUT_MS, type ComputeStatus } from "./compute";
import { buildData, type WidgetData } from "./data";
import { Extras, type LensData, type ProjectionData } from "./extras";
import { FrameBuilder, NO_METHODS, type Frame, type MethodContext } from "./frame";
import { ATTENTION, parseCatalogue, parseMaps, type MethodInfo, type MethodMap } from "./methods";
import { ALL_LAYERS, focusToken, Store, type Panel, type ViewState } from "./store";
import { ModelSync } from "./sync";
import { Caption } from "./views/caption";
import { Controls } from "./views/controls";
import { ImageView } from "./views/image-view";
import { Legend, formatValue } from "./views/legend";
import { LensPanel } from "./views/lens-panel";
import { MethodSwitcher, type SwitcherEntry } from "./views/method-switcher";
import { Overview } from "./views/overview";
import { ProjectionPanel } from "./views/projection-panel";
import { TokenStrip } from "./views/token-strip";

export type { MethodContext } from "./frame";

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

/** Does this model have a kernel behind it? The static host (exported pages) says it has none. */
function hasKernel(model: Model): boolean {
  return (model as { kernel?: unknown }).kernel !== false;
}

interface CacheEntry {
  revision: unknown;
  data: WidgetData | null;
  error: Error | null;
  extras: Extras | null;
}

const cache = new WeakMap<object, CacheEntry>();
const channels = new WeakMap<object, Channel>();

/** The request/response channel of `model` (one per model, shared by its views). */
export function channelOf(model: Model): Channel {
  let c = channels.get(model);
  if (c === undefined) channels.set(model, (c = new Channel(model)));
  return c;
}

/** Decoded data of `model` at its current revision, and its fetched extras (built once, shared by its views). */
export function getData(model: Model): { data: WidgetData | null; error: Error | null; extras: Extras | null } {
  const revision = model.get("revision");
  const hit = cache.get(model);
  if (hit && hit.revision === revision) return hit;
  hit?.extras?.dispose();
  let entry: CacheEntry;
  try {
    const data = buildData(model);
    const prefetched = model.get("prefetched");
    const extras = new Extras(
      { L: data.L, H: data.H, Q: data.Q, P: data.P, n: data.n },
      hasKernel(model) ? channelOf(model) : null,
      prefetched !== null && typeof prefetched === "object" ? (prefetched as Record<string, unknown>) : {},
    );
    entry = { revision, data, error: null, extras };
  } catch (err) {
    entry = { revision, data: null, error: err instanceof Error ? err : new Error(String(err)), extras: null };
  }
  cache.set(model, entry);
  return entry;
}

export function initialize({ model }: { model: Model }): () => void {
  const drop = (): void => {
    cache.get(model)?.extras?.dispose();
    cache.delete(model);
  };
  model.on("change:revision", drop);
  return () => {
    model.off("change:revision", drop);
    drop();
    channels.get(model)?.dispose();
    channels.delete(model);
  };
}

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

/** Status text of a side panel's extra: why it is not shown yet. */
function extraMessage(extras: Extras, key: string, what: string): string {
  const st = extras.statusOf(key);
  if (st.state === "error") return `The ${what} could not be loaded: ${st.error ?? "unknown error"}.`;
  return `Loading the ${what} from the kernel…`;
}

/** Everything built from one revision of the data (one per render). */
class BuiltView {
  readonly controls: Controls;
  readonly switcher: MethodSwitcher;
  readonly legend: Legend;
  tokens: TokenStrip;
  readonly images: ImageView[] = [];
  readonly caption: Caption;
  readonly overview: Overview | null;
  readonly lens: LensPanel | null;
  readonly projection: ProjectionPanel | null;
  readonly frames: FrameBuilder;
  private readonly tabs = new Map<Panel, HTMLButtonElement>();
  private readonly side: HTMLDivElement;
  private readonly disposers: (() => void)[] = [];
  /** Bumped when an extra arrives (part of the overview's memo key). */
  arrivals = 0;

  constructor(
    readonly data: WidgetData,
    readonly extras: Extras | null,
    readonly store: Store,
    parent: HTMLElement,
    onPickMethod: (name: string) => void,
  ) {
    this.frames = new FrameBuilder(data, extras);
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
      const views = [...store.get().views];
      while (views.length <= image) views.push(-1);
      views[image] = code;
      store.set({ views });
    };
    for (let i = 0; i < data.nImages; i++) {
      const v = new ImageView(data, store, i, undefined, onView);
      this.images.push(v);
      imgs.append(v.el);
    }
    imgs.hidden = data.nImages === 0;
    this.tokens = new TokenStrip(data, store, store.get().words);
    body.append(imgs, this.tokens.el);

    const panels = document.createElement("div");
    panels.className = "mmviz-panels";
    this.overview = data.hasAttention ? new Overview(data, store, this.frames) : null;
    const side = document.createElement("div");
    side.className = "mmviz-side";
    const tabBar = document.createElement("div");
    tabBar.className = "mmviz-tabs";
    tabBar.setAttribute("role", "tablist");
    const canFetch = extras !== null;
    this.lens = canFetch && data.meta.extras.lens ? new LensPanel(data, store) : null;
    this.projection = canFetch && data.meta.extras.projection ? new ProjectionPanel(data, store) : null;
    for (const [panel, text, view] of [
      ["lens", "Logit lens", this.lens],
      ["projection", "Projection", this.projection],
    ] as const) {
      if (view === null) continue;
      const tab = document.createElement("button");
      tab.type = "button";
      tab.className = "mmviz-tab";
      tab.dataset.panel = panel;
      tab.textContent = text;
      tab.setAttribute("role", "tab");
      const onTab = (): void => store.set({ panel: store.get().panel === panel ? "none" : panel });
      tab.addEventListener("click", onTab);
      this.disposers.push(() => tab.removeEventListener("click", onTab));
      this.tabs.set(panel, tab);
      tabBar.append(tab);
    }
    this.side = side;
    side.append(tabBar);
    if (this.lens) side.append(this.lens.el);
    if (this.projection) side.append(this.projection.el);
    if (this.overview) panels.append(this.overview.el);
    if (this.tabs.size > 0) panels.append(side);

    this.caption = new Caption(data);
    parent.append(header, body, this.caption.el, panels);
    if (extras !== null) this.disposers.push(extras.subscribe(() => this.arrivals++));
  }

  /** Rebuild the token strip (pieces ↔ words). */
  private rebuildTokens(words: boolean): void {
    const strip = new TokenStrip(this.data, this.store, words);
    this.tokens.el.replaceWith(strip.el);
    this.tokens.dispose();
    this.tokens = strip;
  }

  paint(s: Readonly<ViewState>, m: MethodContext): Frame {
    const { data } = this;
    if (this.tokens.words !== s.words) this.rebuildTokens(s.words);
    const f = this.frames.build(s, m);
    const entries = switcherEntries(data, m);
    const info = entries.find((e) => e.info.name === f.method)?.info;
    this.images.forEach((v, i) => {
      v.setView(data.selectedView(i, s.views));
      v.paintHeat(f.map, f.scale, f.map === null ? -1 : (f.rows[0] ?? -1), f.mapKey);
      v.heat.dataset.method = f.map === null ? "" : f.method;
      v.heat.dataset.layer = f.slice?.layer != null ? String(f.slice.layer) : f.attention ? String(f.layer) : "";
      v.heat.dataset.scale = s.scale;
      v.heat.dataset.gamma = String(s.gamma);
      v.setOpacity(s.opacity);
      v.paintOutline(s.hoverPatch);
      const value = s.hoverPatch !== null && f.map !== null ? f.map[s.hoverPatch] : undefined;
      v.paintTooltip(s.hoverPatch, value === undefined ? "" : `${this.patchLabel(s.hoverPatch!)}: ${formatValue(value)}`);
    });

    if (f.methodMap !== null) {
      const map = f.methodMap;
      this.tokens.setRows(`${f.method}|${m.mapsGeneration}`, (pos) => map.hasRow(pos), map.positions.length < data.n);
    } else {
      this.tokens.setRows(f.attention ? "attention" : `none|${f.method}`, (pos) => f.attention && data.rowOf(pos) >= 0, !f.attention);
    }
    this.tokens.paint({
      hoverToken: s.hoverToken,
      pinnedToken: s.pinnedToken,
      column: f.column,
      positions: f.columnPositions,
      scale: f.columnScale,
      key: f.columnKey,
    });
    this.legend.update({
      vmax: f.map === null ? null : f.scale.range,
      tokenMax: f.column === null ? null : f.columnScale.range,
      signed: f.scale.signed,
      label: f.attention ? data.meta.map_label : (info?.label ?? f.methodMap?.label ?? f.method),
    });
    this.paintCaption(s, f, m, entries, info);
    const layered = f.attention || (f.methodMap !== null && f.methodMap.layers !== null && f.methodMap.layers.length > 0);
    this.controls.setApplicable(layered, f.attention, f.attention ? "" : "this map does not depend on it");
    this.controls.update(s);
    this.switcher.update(entries, f.method);
    this.paintPanels(s, f);
    return f;
  }

  private patchLabel(p: number): string {
    const g = this.data.grid;
    return g.length === 2 * this.data.P ? `patch (${g[2 * p]}, ${g[2 * p + 1]})` : `patch ${p}`;
  }

  private paintCaption(
    s: Readonly<ViewState>,
    f: Frame,
    m: MethodContext,
    entries: readonly SwitcherEntry[],
    info: MethodInfo | undefined,
  ): void {
    if (f.attention || (f.method === ATTENTION && f.methodMap === null)) {
      this.caption.update({
        state: s,
        focus: f.focus,
        row: f.rows[0] ?? -1,
        vmax: f.scale.range,
        valid: f.attention && this.data.validSelection(f.layer, f.head),
        preview: f.previewing ? { layer: f.layer, head: f.head } : null,
        waiting: f.waiting,
        word: f.focusPositions,
      });
      return;
    }
    const entry = entries.find((e) => e.info.name === f.method);
    const failed = m.failed !== null && m.failed.method === f.method ? m.failed.message : null;
    this.caption.update({
      method: {
        state: s,
        focus: f.focus,
        info: info ?? { name: f.method, label: f.methodMap?.label ?? f.method, meaning: f.methodMap?.meaning ?? "", cost: "fast" },
        map: f.methodMap,
        row: f.rows[0] ?? -1,
        slice: f.slice,
        range: f.scale.range,
        pending: m.pending === f.method,
        failed,
        canCompute: entry?.canCompute ?? false,
        staticPage: !m.kernel,
      },
    });
  }

  private paintPanels(s: Readonly<ViewState>, f: Frame): void {
    this.overview?.update(s, f.focusPositions, this.arrivals);
    for (const [panel, tab] of this.tabs) {
      tab.setAttribute("aria-selected", s.panel === panel ? "true" : "false");
      tab.classList.toggle("mmviz-on", s.panel === panel);
    }
    this.side.dataset.panel = s.panel;
    const extras = this.extras;
    if (this.lens) {
      this.lens.el.hidden = s.panel !== "lens";
      if (s.panel === "lens" && extras) {
        extras.want("lens");
        this.lens.update(s, f.focus, extras.get<LensData>("lens"), extraMessage(extras, "lens", "logit lens"));
      }
    }
    if (this.projection) {
      this.projection.el.hidden = s.panel !== "projection";
      if (s.panel === "projection" && extras) {
        extras.want("projection");
        const data = extras.get<ProjectionData>("projection");
        this.projection.update(s, f.focusPositions, data, extraMessage(extras, "projection", "projection"));
      }
    }
  }

  /** Positions the arrow keys step through: those the drawn map has a row for. */
  rowPositions(f: Frame): number[] {
    if (f.methodMap !== null) return [...new Set(f.methodMap.positions)].sort((a, b) => a - b);
    return [...this.data.queryPositions].sort((a, b) => a - b);
  }

  dispose(): void {
    for (const d of this.disposers) d();
    this.disposers.length = 0;
    this.controls.dispose();
    this.switcher.dispose();
    this.tokens.dispose();
    this.overview?.dispose();
    this.lens?.dispose();
    this.projection?.dispose();
    for (const v of this.images) v.dispose();
  }
}

function toInt(x: unknown, fallback: number): number {
  return typeof x === "number" && Number.isInteger(x) ? x : fallback;
}

/** The synced part of the state, read from the model (validated against the data). */
function stateFromModel(model: Model, data: WidgetData | null): Partial<ViewState> {
  const L = data?.L ?? 0;
  const H = data?.H ?? 0;
  const n = data?.n ?? 0;
  let layer = toInt(model.get("layer"), 0);
  if (layer !== ALL_LAYERS && (layer < 0 || layer >= L)) layer = Math.max(0, Math.min(L - 1, layer));
  let head = toInt(model.get("head"), -1);
  if (head < -1 || head >= H) head = -1;
  const pinned = toInt(model.get("pinned"), -1);
  return { layer, head, pinnedToken: pinned >= 0 && pinned < n ? pinned : null };
}

function methodFromModel(model: Model): string {
  const m = model.get("method");
  return typeof m === "string" && m !== "" ? m : ATTENTION;
}

export interface RenderOptions {
  /** How long to wait for the kernel's reply to a compute request (default 10 minutes). */
  computeTimeoutMs?: number;
}

export function render({ model, el }: { model: Model; el: HTMLElement }, options: RenderOptions = {}): () => void {
  const root = document.createElement("div");
  root.className = "mmviz-root";
  root.tabIndex = 0; // focusable: the arrow keys move the pinned token and the layer
  const errorBox = document.createElement("div");
  errorBox.className = "mmviz-error";
  errorBox.setAttribute("role", "alert");
  errorBox.hidden = true;
  const content = document.createElement("div");
  content.className = "mmviz-content";
  root.append(errorBox, content);
  el.append(root);

  const store = new Store({ method: methodFromModel(model) });
  const sync = new ModelSync(model);
  let view: BuiltView | null = null;
  let frame: Frame | null = null;
  let dataError: string | null = null;
  let mapsErrors: string[] = [];
  let applyingModel = false;
  let catalogue: MethodInfo[] = [];
  let maps: ReadonlyMap<string, MethodMap> = new Map();
  let mapsGeneration = 0;
  let unsubscribeExtras: () => void = () => {};
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

  let painting = false;
  const paint = (): void => {
    if (painting) return; // a view set the store while painting: that change repaints on its own
    painting = true;
    const s = store.get();
    const m = view ? methodContext() : NO_METHODS;
    try {
      if (view) frame = view.paint(s, m);
    } catch (err) {
      dataError = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
      showErrors();
    } finally {
      painting = false;
    }
    // Test hooks: set after painting.
    const focus = focusToken(s);
    root.dataset.layer = String(s.layer);
    root.dataset.head = String(s.head);
    root.dataset.focus = String(focus ?? -1);
    root.dataset.patch = String(s.hoverPatch ?? -1);
    root.dataset.method = s.method;
    root.dataset.busy = m.pending ?? "";
    root.dataset.waiting = frame?.waiting ?? "";
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
      if (store.get().method === method && !maps.has(method)) store.set({ method: beforeRequest });
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
    const current = store.get().method;
    compute.clearFailure();
    if (name === current) return;
    const data = view?.data;
    const computed = (name === ATTENTION && data?.hasAttention === true) || maps.has(name);
    const info = catalogue.find((i) => i.name === name);
    if (!computed && info !== undefined && info.available && hasKernel(model)) {
      beforeRequest = current;
      store.set({ method: name });
      compute.request(name);
    } else {
      store.set({ method: name });
    }
  };

  /** Apply a change that came from the model (Python), without syncing it back. */
  const applyModel = (patch: Partial<ViewState>): void => {
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
    unsubscribeExtras();
    content.replaceChildren();
    const { data, error, extras } = getData(model);
    dataError = error ? error.message : null;
    applyModel({
      ...stateFromModel(model, data),
      method: methodFromModel(model),
      views: data ? data.defaultViews() : [],
      hoverToken: null,
      hoverPatch: null,
      preview: null,
      playing: false,
    });
    if (data) {
      try {
        view = new BuiltView(data, extras, store, content, pickMethod);
      } catch (err) {
        content.replaceChildren();
        dataError = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
    unsubscribeExtras = extras?.subscribe(() => queueMicrotask(paint)) ?? (() => {});
    readMethods();
    showErrors();
    paint();
  };

  const unsubscribe = store.subscribe((s, prev) => {
    paint();
    if (painting) queueMicrotask(paint);
    if (
      !applyingModel &&
      (s.layer !== prev.layer || s.head !== prev.head || s.pinnedToken !== prev.pinnedToken || s.method !== prev.method)
    ) {
      sync.schedule(s);
    }
  });

  const onSelection = (): void => applyModel(stateFromModel(model, view?.data ?? null));
  const onMethod = (): void => applyModel({ method: methodFromModel(model) });
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

  // Esc unpins from anywhere; the arrow keys act when the widget has the keyboard focus.
  const onKey = (ev: KeyboardEvent): void => {
    if (ev.key === "Escape" && root.isConnected && store.get().pinnedToken !== null) {
      store.set({ pinnedToken: null });
    }
  };
  const onRootKey = (ev: KeyboardEvent): void => {
    if (view === null || frame === null) return;
    const target = ev.target as HTMLElement | null;
    if (target !== null && target !== root && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return;
    const s = store.get();
    if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") {
      const positions = view.rowPositions(frame);
      if (positions.length === 0) return;
      const from = s.pinnedToken ?? s.hoverToken;
      const step = ev.key === "ArrowRight" ? 1 : -1;
      let index: number;
      if (from === null) index = step > 0 ? 0 : positions.length - 1;
      else {
        const here = positions.findIndex((p) => p >= from);
        const at = here === -1 ? positions.length : here;
        index = positions[at] === from ? at + step : step > 0 ? at : at - 1;
      }
      index = Math.max(0, Math.min(positions.length - 1, index));
      store.set({ pinnedToken: positions[index]! });
    } else if (ev.key === "ArrowUp" || ev.key === "ArrowDown") {
      const L = view.data.L;
      const from = s.layer === ALL_LAYERS ? 0 : s.layer;
      const layer = Math.max(0, Math.min(L - 1, from + (ev.key === "ArrowUp" ? 1 : -1)));
      store.set({ layer, playing: false });
    } else {
      return;
    }
    ev.preventDefault();
  };
  document.addEventListener("keydown", onKey);
  root.addEventListener("keydown", onRootKey);

  build();

  return () => {
    document.removeEventListener("keydown", onKey);
    root.removeEventListener("keydown", onRootKey);
    for (const [name, fn] of events) model.off(name, fn);
    compute.dispose();
    unsubscribe();
    unsubscribeExtras();
    try {
      sync.flush(); // the last layer/head/pin/method choice still reaches Python
    } catch {
      sync.cancel();
    }
    store.clear();
    view?.dispose();
    view = null;
    root.remove();
  };
}
