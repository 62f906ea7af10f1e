/** View-local focus state with synchronous pub/sub. Hover never leaves the browser. */

export interface FocusState {
  /** Sequence position under the mouse in the token strip. */
  hoverToken: number | null;
  /** Sequence position pinned by a click. */
  pinnedToken: number | null;
  /** Attention column (index into image_positions) under the mouse in an image view. */
  hoverPatch: number | null;
  layer: number;
  /** −1 = mean over heads. */
  head: number;
}

export type Listener = (state: Readonly<FocusState>, prev: Readonly<FocusState>) => void;

export const INITIAL_STATE: Readonly<FocusState> = {
  hoverToken: null,
  pinnedToken: null,
  hoverPatch: null,
  layer: 0,
  head: -1,
};

/** The token whose attention map is shown: the pinned one, else the hovered one. */
export function focusToken(s: Readonly<FocusState>): number | null {
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

export class Store extends StateStore<FocusState> {
  constructor(initial: Partial<FocusState> = {}) {
    super({ ...INITIAL_STATE, ...initial });
  }
}

/** View-local choice of what is drawn: the map method (synced to Python) and each image's view (browser only). */
export interface DisplayState {
  /** `"attention"` or a key of `maps`. */
  method: string;
  /** View code drawn for each image (see `WidgetData.selectedView`); −1 = the image's default. */
  views: readonly number[];
}

export class DisplayStore extends StateStore<DisplayState> {
  constructor(initial: Partial<DisplayState> = {}) {
    super({ method: "attention", views: [], ...initial });
  }
}
