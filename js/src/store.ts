/**
 * The one state store of a view: what is focused, how it is drawn, and which map method is shown and asked for.
 * Every view reads it and writes to it; each `render` has its own store, so two displays of one widget are
 * independent. Hover never leaves the browser; `layer`, `head`, `pinnedToken` and `method` are synced to Python
 * (debounced, see sync.ts), in the wire's vocabulary: a layer or head is an index or `"mean"`.
 */

import { ATTENTION, MEAN, type Head, type Layer } from "./protocol";

/** This view's compute-on-request bookkeeping (compute.ts writes it; the switcher, caption and error box show it). */
export interface ComputeStatus {
  /** The method this view asked the kernel for, until the reply (or the timeout), else null. */
  pending: string | null;
  /** When the pending request was sent (Date.now()). */
  since: number;
  /** The last failure: the method and a message for the user (cleared by the next pick). */
  failed: { method: string; message: string; timedOut: boolean } | null;
  /** The method shown before the pending request; shown again if the request fails. */
  returnTo: string;
}

export const IDLE: Readonly<ComputeStatus> = { pending: null, since: 0, failed: null, returnTo: ATTENTION };

export type ScaleMode = "linear" | "log" | "gamma";
export type Statistic = "share" | "entropy" | "patch";
export type Panel = "none" | "lens" | "projection" | "features" | "interventions";

/** The Features panel's choice: which units (neurons of a layer, or the SAE's latents) and the unit selected. */
export interface FeatureChoice {
  /** `"auto"`: the SAE when the Inspector was given one, else the neurons. */
  source: "auto" | "neurons" | "sae";
  /** The decoder layer whose neurons are listed (the SAE has its own). */
  layer: number;
  /** The unit whose map is drawn (clicked in the list), or null. */
  unit: number | null;
  /**
   * The position a click on an image patch held for the panel (so the pointer can leave the image for the list),
   * or null; a hovered patch or token still shows its own units.
   */
  held: number | null;
}
export type ColorBy = "modality" | "row";

export interface ViewState {
  /** Sequence position under the mouse (token strip, projection, lens). */
  hoverToken: number | null;
  /** Sequence position pinned by a click (or moved with the arrow keys). */
  pinnedToken: number | null;
  /** Image column (index into image_positions) under the mouse. */
  hoverPatch: number | null;
  /** 0 … L−1, or `"mean"`: the mean over all layers. */
  layer: Layer;
  /** 0 … H−1, or `"mean"`: the mean over heads. */
  head: Head;
  /** The layer × head overview cell under the mouse: its map is previewed on the image. */
  preview: { layer: number; head: number } | null;
  /** The map shown: `"attention"` or a key of `maps`. */
  method: string;
  /** Compute-on-request for a method `maps` does not hold yet. */
  compute: Readonly<ComputeStatus>;
  /** View code drawn for each image (see `WidgetData.selectedView`); −1 = the image's default. */
  views: readonly number[];
  /** Merge sub-word pieces into words in the token strip (a word's map is the mean of its pieces' maps). */
  words: boolean;
  scale: ScaleMode;
  /** Exponent of the gamma scale. */
  gamma: number;
  /** Heatmap opacity over the photo, 0 … 1. */
  opacity: number;
  /** What the layer × head overview colours its cells by. */
  stat: Statistic;
  /** The side panel shown beside the layer × head overview ("none" until opened: its data is fetched then). */
  panel: Panel;
  colorBy: ColorBy;
  /** The layer scrubber is playing. */
  playing: boolean;
  features: Readonly<FeatureChoice>;
}

export const INITIAL_STATE: Readonly<ViewState> = {
  hoverToken: null,
  pinnedToken: null,
  hoverPatch: null,
  layer: 0,
  head: MEAN,
  preview: null,
  method: ATTENTION,
  compute: IDLE,
  views: [],
  words: false,
  scale: "linear",
  gamma: 0.5,
  opacity: 0.65,
  stat: "share",
  panel: "none",
  colorBy: "modality",
  playing: false,
  features: { source: "auto", layer: 0, unit: null, held: null },
};

/** The token whose map is shown: the pinned one, else the hovered one. */
export function focusToken(s: Readonly<ViewState>): number | null {
  return s.pinnedToken ?? s.hoverToken;
}

/** A small immutable state with synchronous pub/sub (listeners run only when a value changed, by Object.is). */
export class StateStore<T extends object> {
  private state: T;
  private readonly listeners = new Set<(state: Readonly<T>, prev: Readonly<T>) => void>();

  constructor(initial: T) {
    this.state = { ...initial };
  }

  get(): Readonly<T> {
    return this.state;
  }

  /** Merge `patch`; listeners run synchronously, and only when a value actually changed. */
  set(patch: Partial<T>): void {
    const prev = this.state;
    const keys = Object.keys(patch) as (keyof T)[];
    const changed = keys.some((key) => patch[key] !== undefined && !Object.is(prev[key], patch[key]));
    if (!changed) return;
    const next = { ...prev };
    for (const key of keys) {
      const value = patch[key];
      if (value !== undefined) next[key] = value as T[keyof T];
    }
    this.state = next;
    for (const fn of [...this.listeners]) fn(next, prev);
  }

  subscribe(fn: (state: Readonly<T>, prev: Readonly<T>) => void): () => void {
    this.listeners.add(fn);
    return () => {
      this.listeners.delete(fn);
    };
  }

  /** Drop every listener (view cleanup). */
  clear(): void {
    this.listeners.clear();
  }
}

export class Store extends StateStore<ViewState> {
  constructor(initial: Partial<ViewState> = {}) {
    super({ ...INITIAL_STATE, ...initial });
  }
}
