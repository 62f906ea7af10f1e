/** Colour bar with the value range of the current map. */

import { cssDivergingGradient, cssGradient } from "../colormap";
import { h } from "../dom";

/** 3 significant digits; "0" for zero. */
export function formatValue(v: number): string {
  if (!Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  return v.toPrecision(3);
}

export interface LegendState {
  /** Range of the image heatmap (its max; for signed maps max |value|), or null when no map is shown. */
  vmax: number | null;
  /** Range of the token tint (the map's values at the hovered patch), or null. */
  tokenMax: number | null;
  /** Signed maps: diverging colours over [−range, range]. */
  signed?: boolean;
  /** The map's name, e.g. "raw attention" or "Relevancy". */
  label?: string;
}

export class Legend {
  readonly el: HTMLDivElement;
  private readonly min: HTMLSpanElement;
  private readonly max: HTMLSpanElement;
  private readonly tokens: HTMLSpanElement;
  private readonly label: HTMLSpanElement;
  private readonly bar: HTMLSpanElement;
  private signed = false;

  constructor(private readonly mapLabel: string) {
    this.label = h("span", { className: "mmviz-legend-label", text: mapLabel || "attention" });
    this.min = h("span", { className: "mmviz-legend-min" });
    this.bar = h("span", { className: "mmviz-legend-bar", attrs: { "aria-hidden": "true" } });
    this.bar.style.backgroundImage = cssGradient();
    this.max = h("span", { className: "mmviz-legend-max" });
    this.tokens = h("span", { className: "mmviz-legend-tokens" });
    this.el = h("div", { className: "mmviz-legend" }, this.label, this.min, this.bar, this.max, this.tokens);
    this.update({ vmax: null, tokenMax: null });
  }

  update(s: LegendState): void {
    // The bar always starts at 0 (vmin = 0); its top is the max of what is shown on the image,
    // else of the token tint.
    // Signed maps: the bar is centred at 0 and runs over [−range, range].
    const signed = s.signed ?? false;
    if (signed !== this.signed) {
      this.signed = signed;
      this.bar.style.backgroundImage = signed ? cssDivergingGradient() : cssGradient();
    }
    const label = s.label || this.mapLabel || "attention";
    if (this.label.textContent !== label) this.label.textContent = label;
    const top = s.vmax ?? s.tokenMax;
    this.min.textContent = top === null ? "–" : signed && top > 0 ? formatValue(-top) : "0";
    this.max.textContent = top === null ? "–" : formatValue(top);
    this.el.dataset.vmax = top === null ? "" : String(top);
    this.el.dataset.signed = signed ? "1" : "0";
    const tokenRange =
      s.tokenMax === null ? "" : signed ? `${formatValue(-s.tokenMax)} – ${formatValue(s.tokenMax)}` : `0 – ${formatValue(s.tokenMax)}`;
    this.tokens.textContent = s.vmax !== null && s.tokenMax !== null ? `tokens: ${tokenRange}` : "";
  }
}
