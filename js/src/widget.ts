/**
 * The anywidget lifecycle: `initialize` sets up what a model shares with all its views, `render` builds one
 * independent view and returns its cleanup.
 *
 * Shared per model (a WeakMap keyed by the model): the decoded data and the fetched extras (dropped when
 * `revision` changes) and the one request channel to the kernel. Owned by each view: its state store, its DOM
 * (shell.ts), its method state (method-state.ts), its idle prefetch of the neighbouring layers (prefetch.ts),
 * keyboard handling (keyboard.ts) and listeners; a widget displayed twice gives two independent views.
 */

import { Channel } from "./channel";
import { buildData, type WidgetData } from "./data";
import { Listeners, h } from "./dom";
import { Extras } from "./extras";
import type { Frame } from "./frame";
import { hasKernel, type Model } from "./host/model";
import { bindKeyboard } from "./keyboard";
import { MethodState, NO_METHODS } from "./method-state";
import { Prefetcher, type PrefetchReport } from "./prefetch";
import { parseKernelError, parseMethod, parsePrefetched, parseSelection } from "./protocol";
import { Shell } from "./shell";
import { focusToken, Store, type ViewState } from "./store";
import { ModelSync } from "./sync";

interface Revision {
  revision: unknown;
  data: WidgetData | null;
  error: Error | null;
  extras: Extras | null;
}

const revisions = new WeakMap<Model, Revision>();
const channels = new WeakMap<Model, Channel>();

/** The request/response channel of `model` (one per model, shared by its views). */
export function channelOf(model: Model): Channel {
  let c = channels.get(model);
  if (c === undefined) channels.set(model, (c = new Channel(model)));
  return c;
}

/** Decoded data of `model` at its current revision, and its fetched extras (built once, shared by its views). */
export function getData(model: Model): Revision {
  const revision = model.get("revision");
  const hit = revisions.get(model);
  if (hit && hit.revision === revision) return hit;
  hit?.extras?.dispose();
  let entry: Revision;
  try {
    const data = buildData(model);
    const extras = new Extras(
      { H: data.H, Q: data.Q, P: data.P, n: data.n },
      hasKernel(model) ? channelOf(model) : null,
      parsePrefetched(model.get("prefetched")),
    );
    entry = { revision, data, error: null, extras };
  } catch (err) {
    entry = { revision, data: null, error: err instanceof Error ? err : new Error(String(err)), extras: null };
  }
  revisions.set(model, entry);
  return entry;
}

export function initialize({ model }: { model: Model }): () => void {
  const drop = (): void => {
    revisions.get(model)?.extras?.dispose();
    revisions.delete(model);
  };
  model.on("change:revision", drop);
  return () => {
    model.off("change:revision", drop);
    drop();
    channels.get(model)?.dispose();
    channels.delete(model);
  };
}

/** The synced part of a view's state, as the model holds it (checked against the data). */
function stateFromModel(model: Model, data: WidgetData | null): Partial<ViewState> {
  return parseSelection((key) => model.get(key), data?.L ?? 0, data?.H ?? 0, data?.n ?? 0);
}

export interface RenderOptions {
  /** How long to wait for the kernel's reply to a compute request (default 10 minutes). */
  computeTimeoutMs?: number;
}

export function render({ model, el }: { model: Model; el: HTMLElement }, options: RenderOptions = {}): () => void {
  const errorBox = h("div", { className: "mmviz-error", attrs: { role: "alert" }, hidden: true });
  const content = h("div", { className: "mmviz-content" });
  const root = h("div", { className: "mmviz-root" }, errorBox, content);
  root.tabIndex = 0; // focusable: the arrow keys move the pinned token and the layer
  el.append(root);

  const listeners = new Listeners();
  const store = new Store({ method: parseMethod(model.get("method")) });
  const sync = new ModelSync(model);
  const methods = new MethodState(model, store, channelOf(model), options.computeTimeoutMs);
  let shell: Shell | null = null;
  let frame: Frame | null = null;
  let dataError: string | null = null;
  let applyingModel = false;
  let unsubscribeExtras: () => void = () => {};
  let prefetcher: Prefetcher | null = null;
  // Test hooks of the idle prefetch, written whenever it changes (it also changes between repaints).
  const showPrefetch = (r: PrefetchReport): void => {
    root.dataset.prefetch = r.state;
    root.dataset.prefetchLoading = r.loading.join(",");
    root.dataset.prefetchIssued = String(r.issued);
    root.dataset.prefetchCancelled = String(r.cancelled);
  };

  const showErrors = (): void => {
    const msgs = [parseKernelError(model.get("error")), dataError ?? "", ...methods.errors()].filter((m) => m !== "");
    const text = msgs.join("\n");
    if (errorBox.textContent !== text) errorBox.textContent = text;
    errorBox.hidden = msgs.length === 0;
  };

  let painting = false;
  const paint = (): void => {
    if (painting) return; // a view set the store while painting: that change repaints on its own
    painting = true;
    const s = store.get();
    const m = shell ? methods.context() : NO_METHODS;
    try {
      if (shell) frame = shell.paint(s, m);
    } catch (err) {
      dataError = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
    } finally {
      painting = false;
    }
    showErrors();
    // After the paint: the view's own fetch of this layer (if any) is on its way and goes first.
    prefetcher?.follow({ layer: s.layer, head: s.head, attention: frame?.attention ?? false });
    // Test hooks: set after painting.
    root.dataset.layer = String(s.layer);
    root.dataset.head = String(s.head);
    root.dataset.focus = String(focusToken(s) ?? -1);
    root.dataset.patch = String(s.hoverPatch ?? -1);
    root.dataset.method = s.method;
    root.dataset.busy = m.pending ?? "";
    root.dataset.waiting = frame?.waiting ?? "";
    root.dataset.ready = "1";
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
    shell?.dispose();
    shell = null;
    frame = null;
    unsubscribeExtras();
    prefetcher?.dispose();
    prefetcher = null;
    content.replaceChildren();
    const { data, error, extras } = getData(model);
    dataError = error ? error.message : null;
    applyModel({
      ...stateFromModel(model, data),
      method: parseMethod(model.get("method")),
      views: data ? data.defaultViews() : [],
      hoverToken: null,
      hoverPatch: null,
      preview: null,
      playing: false,
    });
    if (data) {
      try {
        shell = new Shell(data, extras, store, content, (name) => methods.pick(name), hasKernel(model) ? channelOf(model) : null);
      } catch (err) {
        content.replaceChildren();
        dataError = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
    unsubscribeExtras = extras?.subscribe(() => queueMicrotask(paint)) ?? (() => {});
    if (shell !== null && extras !== null) prefetcher = new Prefetcher(extras, shell.data.L, { onReport: showPrefetch });
    else showPrefetch({ state: "off", loading: [], issued: 0, cancelled: 0 });
    methods.read(shell?.data ?? null);
    paint();
  };

  listeners.add(
    store.subscribe((s, prev) => {
      paint();
      if (painting) queueMicrotask(paint);
      const synced = s.layer !== prev.layer || s.head !== prev.head || s.pinnedToken !== prev.pinnedToken || s.method !== prev.method;
      if (!applyingModel && synced) sync.schedule(s);
    }),
  );

  const onSelection = (): void => applyModel(stateFromModel(model, shell?.data ?? null));
  const onMethods = (): void => {
    methods.read(shell?.data ?? null);
    paint();
  };
  const modelEvents: [`change:${string}`, () => void][] = [
    ["change:layer", onSelection],
    ["change:head", onSelection],
    ["change:pinned", onSelection],
    ["change:method", () => applyModel({ method: parseMethod(model.get("method")) })],
    ["change:methods", onMethods],
    ["change:maps", onMethods],
    ["change:busy", paint],
    ["change:revision", build],
    ["change:error", showErrors],
  ];
  for (const [name, fn] of modelEvents) {
    model.on(name, fn);
    listeners.add(() => model.off(name, fn));
  }
  bindKeyboard(
    root,
    store,
    () => (shell === null || frame === null ? null : { rowPositions: shell.rowPositions(frame), layers: shell.data.L }),
    listeners,
  );

  build();

  return () => {
    listeners.dispose();
    methods.dispose();
    unsubscribeExtras();
    prefetcher?.dispose();
    prefetcher = null;
    try {
      sync.flush(); // the last layer/head/pin/method choice still reaches Python
    } catch {
      sync.cancel();
    }
    store.clear();
    shell?.dispose();
    shell = null;
    root.remove();
  };
}
