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

export class Store {
  private state: FocusState;
  private readonly listeners = new Set<Listener>();

  constructor(initial: Partial<FocusState> = {}) {
    this.state = { ...INITIAL_STATE, ...initial };
  }

  get(): Readonly<FocusState> {
    return this.state;
  }

  /** Merge `patch`; listeners run synchronously, and only when a value actually changed. */
  set(patch: Partial<FocusState>): void {
    const prev = this.state;
    let changed = false;
    for (const key of Object.keys(patch) as (keyof FocusState)[]) {
      const value = patch[key];
      if (value !== undefined && !Object.is(prev[key], value)) {
        changed = true;
        break;
      }
    }
    if (!changed) return;
    const next = { ...prev };
    for (const key of Object.keys(patch) as (keyof FocusState)[]) {
      const value = patch[key];
      if (value !== undefined) (next as Record<keyof FocusState, number | null>)[key] = value;
    }
    this.state = next;
    for (const fn of [...this.listeners]) fn(next, prev);
  }

  subscribe(fn: Listener): () => void {
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
