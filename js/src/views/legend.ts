/** Colour bar with the value range of the current map. */

import { cssGradient } from "../colormap";

/** 3 significant digits; "0" for zero. */
export function formatValue(v: number): string {
  if (!Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  return v.toPrecision(3);
}

export interface LegendState {
  /** Max of the image heatmap, or null when no map is shown. */
  vmax: number | null;
  /** Max of the token tint (attention to the hovered patch), or null. */
  tokenMax: number | null;
}

export class Legend {
  readonly el: HTMLDivElement;
  private readonly min: HTMLSpanElement;
  private readonly max: HTMLSpanElement;
  private readonly tokens: HTMLSpanElement;

  constructor(mapLabel: string) {
    const el = document.createElement("div");
    el.className = "mmviz-legend";
    const label = document.createElement("span");
    label.className = "mmviz-legend-label";
    label.textContent = mapLabel || "attention";
    const min = document.createElement("span");
    min.className = "mmviz-legend-min";
    const bar = document.createElement("span");
    bar.className = "mmviz-legend-bar";
    bar.style.backgroundImage = cssGradient();
    bar.setAttribute("aria-hidden", "true");
    const max = document.createElement("span");
    max.className = "mmviz-legend-max";
    const tokens = document.createElement("span");
    tokens.className = "mmviz-legend-tokens";
    el.append(label, min, bar, max, tokens);
    this.el = el;
    this.min = min;
    this.max = max;
    this.tokens = tokens;
    this.update({ vmax: null, tokenMax: null });
  }

  update(s: LegendState): void {
    // The bar always starts at 0 (vmin = 0); its top is the max of what is shown on the image,
    // else of the token tint.
    const top = s.vmax ?? s.tokenMax;
    this.min.textContent = top === null ? "–" : "0";
    this.max.textContent = top === null ? "–" : formatValue(top);
    this.el.dataset.vmax = top === null ? "" : String(top);
    this.tokens.textContent =
      s.vmax !== null && s.tokenMax !== null ? `tokens: 0 – ${formatValue(s.tokenMax)}` : "";
  }
}
