/**
 * A minimal anywidget host for standalone HTML export (`Inspector.to_html()`) and for tests.
 *
 * `createStaticModel` implements the host model contract (model.ts: anywidget's `AnyModel`); `mountStatic` turns
 * an exported payload (`{state, buffers: [{path, data: base64}]}`) into such a model, with each buffer placed at
 * its path as a DataView (like ipywidgets' `put_buffers`), and renders the widget into an element.
 */

import { base64ToBytes, putAtPath } from "../codec";
import { DIVERGING, VIRIDIS } from "../colormap";
import { h } from "../dom";
import { initialize, render } from "../widget";
import type { Model } from "./model";

export { putAtPath };

/** anywidget's event handler type (the contract's, so every `on` overload accepts it). */
type Callback = NonNullable<Parameters<Model["off"]>[1]>;

export interface StaticModel extends Model {
  /** Any key (not only the Inspector's traits): tests and pages may carry more. */
  get(key: string): unknown;
  set(key: string, value: unknown): void;
  /** One entry per `save_changes()`: the keys set since the previous save and their values. */
  readonly savedChanges: Record<string, unknown>[];
  /** One entry per `send()`. */
  readonly sent: { content: unknown; buffers: ArrayBuffer[] | ArrayBufferView[] | undefined }[];
  /** The current state (live object). */
  readonly state: Record<string, unknown>;
  /** False: no kernel answers `send` (an exported page), so the widget offers no compute-on-request. */
  readonly kernel: boolean;
  /** Deliver a custom message as if the kernel had sent it (`msg:custom` listeners get `content, buffers`). */
  receive(content: unknown, buffers?: DataView[]): void;
}

export interface StaticModelOptions {
  /** Pretend a kernel answers `send` (tests that play the kernel with `receive`). Default false. */
  kernel?: boolean;
}

export function createStaticModel(state: Record<string, unknown> = {}, options: StaticModelOptions = {}): StaticModel {
  const values: Record<string, unknown> = { ...state };
  const listeners = new Map<string, Set<Callback>>();
  let dirty: Record<string, unknown> = {};
  const model: StaticModel = {
    state: values,
    kernel: options.kernel ?? false,
    savedChanges: [],
    sent: [],
    get(key) {
      return values[key];
    },
    set(key, value) {
      if (Object.is(values[key], value)) return;
      values[key] = value;
      dirty[key] = value;
      for (const cb of [...(listeners.get(`change:${key}`) ?? [])]) cb(model, value);
      for (const cb of [...(listeners.get("change") ?? [])]) cb(model);
    },
    on(eventName: string, callback: Callback) {
      let set = listeners.get(eventName);
      if (!set) listeners.set(eventName, (set = new Set()));
      set.add(callback);
    },
    off(eventName?: string | null, callback?: Callback | null) {
      // Backbone semantics: no name = every event, no callback = every callback of that event.
      const names = eventName == null ? [...listeners.keys()] : [eventName];
      for (const name of names) {
        if (callback == null) listeners.delete(name);
        else listeners.get(name)?.delete(callback);
      }
    },
    save_changes() {
      model.savedChanges.push(dirty);
      dirty = {};
    },
    send(content, _callbacks, buffers) {
      model.sent.push({ content, buffers });
    },
    receive(content, buffers = []) {
      for (const cb of [...(listeners.get("msg:custom") ?? [])]) cb(content, buffers);
    },
    widget_manager: {
      get_model(id: string): Promise<never> {
        return Promise.reject(new Error(`mmviz static host: no widget manager (model ${id})`));
      },
    },
  };
  return model;
}

export interface StaticPayload {
  state: Record<string, unknown>;
  buffers?: { path: (string | number)[]; data: string }[];
}

export interface Mounted {
  model: StaticModel;
  /** Test hook: the colour maps as flat r,g,b lists (viridis 256 entries: 0…max; diverging 255: −range…+range). */
  colormaps: { viridis: number[]; diverging: number[] };
  /** Undo the render (listeners, DOM) and the initialize. */
  destroy(): void;
}

export function mountStatic(el: HTMLElement, payload: StaticPayload): Mounted {
  const state = { ...(payload.state ?? {}) };
  for (const { path, data } of payload.buffers ?? []) {
    const bytes = base64ToBytes(data);
    putAtPath(state, path, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  }
  const model = createStaticModel(state);
  const endInit = initialize({ model });
  let cleanup: () => void = () => {};
  try {
    cleanup = render({ model, el });
  } catch (err) {
    // render() reports data errors itself; anything else still gets shown rather than thrown.
    el.append(h("div", { className: "mmviz-error", text: `mmviz: ${err instanceof Error ? err.message : String(err)}` }));
  }
  return {
    model,
    colormaps: { viridis: [...VIRIDIS], diverging: [...DIVERGING] },
    destroy() {
      cleanup();
      endInit();
    },
  };
}
