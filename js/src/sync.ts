/** Debounced browser → Python sync of `layer`, `head`, `pinned` and `method` (hover never leaves the browser). */

import type { Model } from "./host/model";
import { selectionTraits, type SelectionTraits } from "./protocol";
import type { ViewState } from "./store";

export const SYNC_DELAY_MS = 150;

/** What is synced: the layer, head, pinned token and the map method of a view's state. */
export type SyncState = Pick<ViewState, "layer" | "head" | "pinnedToken"> & { readonly method?: string };

export class ModelSync {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private pending: SyncState | null = null;

  constructor(
    private readonly model: Model,
    private readonly delay = SYNC_DELAY_MS,
  ) {}

  /** Schedule a sync of `s` (the latest call wins). */
  schedule(s: SyncState): void {
    this.pending = s;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), this.delay);
  }

  /** Write the pending state now (only the traits that differ), then save once. */
  flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const s = this.pending;
    this.pending = null;
    if (s === null) return;
    const want = selectionTraits(s);
    let dirty = false;
    for (const key of Object.keys(want) as (keyof SelectionTraits)[]) {
      const value = want[key];
      if (value !== undefined && this.model.get(key) !== value) {
        this.model.set(key, value);
        dirty = true;
      }
    }
    if (dirty) this.model.save_changes();
  }

  /** Drop a pending sync without writing it. */
  cancel(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.pending = null;
  }
}
