/**
 * Keyboard handling of one view: Esc unpins from anywhere on the page; while the widget has the keyboard focus,
 * ←/→ move the pinned token among the tokens the drawn map has a row for, and ↑/↓ move the layer (from the mean
 * over layers, they start at layer 0). Keys typed into the widget's own inputs and selects are theirs.
 */

import type { Listeners } from "./dom";
import { MEAN } from "./protocol";
import type { Store } from "./store";

/** What the keys act on now, or null before the first paint. */
export interface KeyTargets {
  /** The positions ←/→ step through (sorted). */
  rowPositions: readonly number[];
  /** Number of layers ↑/↓ step through. */
  layers: number;
}

/** The position ←/→ pins next: the first or last when nothing is focused, else the neighbour of `from`. */
export function stepPosition(positions: readonly number[], from: number | null, step: 1 | -1): number | undefined {
  if (positions.length === 0) return undefined;
  let index: number;
  if (from === null) index = step > 0 ? 0 : positions.length - 1;
  else {
    const here = positions.findIndex((p) => p >= from);
    const at = here === -1 ? positions.length : here;
    index = positions[at] === from ? at + step : step > 0 ? at : at - 1;
  }
  return positions[Math.max(0, Math.min(positions.length - 1, index))];
}

/** Listen for the view's keys on `root` (and Esc on the document) until `listeners` are disposed. */
export function bindKeyboard(root: HTMLElement, store: Store, targets: () => KeyTargets | null, listeners: Listeners): void {
  listeners.on(document, "keydown", (ev) => {
    if (ev.key === "Escape" && root.isConnected && store.get().pinnedToken !== null) store.set({ pinnedToken: null });
  });
  listeners.on(root, "keydown", (ev) => {
    const now = targets();
    if (now === null) return;
    const target = ev.target as HTMLElement | null;
    if (target !== null && target !== root && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return;
    const s = store.get();
    if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") {
      const next = stepPosition(now.rowPositions, s.pinnedToken ?? s.hoverToken, ev.key === "ArrowRight" ? 1 : -1);
      if (next === undefined) return;
      store.set({ pinnedToken: next });
    } else if (ev.key === "ArrowUp" || ev.key === "ArrowDown") {
      const from = s.layer === MEAN ? 0 : s.layer;
      const layer = Math.max(0, Math.min(now.layers - 1, from + (ev.key === "ArrowUp" ? 1 : -1)));
      store.set({ layer, playing: false });
    } else {
      return;
    }
    ev.preventDefault();
  });
}
