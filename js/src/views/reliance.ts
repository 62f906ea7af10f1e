/**
 * Image reliance per answer token, under the token strip: how much each answer token's next-token distribution
 * changes when the image is replaced by a baseline (KL(p_real ‖ p_baseline) in nats, `mmviz.methods.image_reliance`).
 * The strip's answer chips get a stripe coloured by it, a list ranks the answer tokens by it (or keeps their order),
 * and while a method map is shown with nothing hovered or pinned it shows the most image-reliant answer token — a
 * caption's "the" and "of" do not depend on the image, its colour word does.
 *
 * Measured on request ("Measure": two forwards in the kernel, kept in the trace) or shipped in `meta` when the trace
 * already keeps it (`mmviz.inspect(..., reliance="blank")`, a loaded trace). A few numbers per answer token: shading,
 * sorting and the default never wait for the kernel. Labels are only ever set as text.
 */

import type { Channel, PendingRequest } from "../channel";
import type { WidgetData } from "../data";
import { colorFor } from "../colormap";
import { button, h, Listeners, option } from "../dom";
import type { MethodMap } from "../methods";
import { ATTENTION, fetchedPayload, parseReliance, type RelianceData, type RelianceMeta } from "../protocol";
import { focusToken, type Store, type ViewState } from "../store";
import { formatValue } from "./legend";
import { displayToken, type TokenStrip } from "./token-strip";

/** Reliance is measured with two forwards: allow for a large model. */
export const RELIANCE_TIMEOUT_MS = 10 * 60 * 1000;

const BASELINE_TEXT: Record<string, string> = {
  blank: "a blank grey image",
  blur: "the blurred image",
  mean: "the mean image token",
};

/** What the baseline `name` replaces the image by, in words. */
export function baselineText(name: string): string {
  return BASELINE_TEXT[name] ?? `the ${name} baseline`;
}

/** Indices of `values` from the largest to the smallest (ties: the earlier first). */
export function rankByValue(values: readonly number[]): number[] {
  return values.map((_, i) => i).sort((a, b) => values[b]! - values[a]! || a - b);
}

/**
 * The answer position a method map shows by default: the most image-reliant one the map has a row for (null when
 * none has, or the largest KL is 0: nothing depends on the image, so no token is preferred).
 */
export function mostReliant(r: RelianceData, hasRow: (pos: number) => boolean): number | null {
  for (const i of rankByValue(r.kl)) {
    const pos = r.positions[i]!;
    if (r.kl[i]! > 0 && hasRow(pos)) return pos;
  }
  return null;
}

export class RelianceBar {
  readonly el: HTMLDivElement;
  private readonly kept = new Map<string, RelianceData>();
  private readonly baseline: HTMLSelectElement;
  private readonly measureButton: HTMLButtonElement;
  private readonly sort: HTMLInputElement;
  private readonly legend: HTMLDivElement;
  private readonly list: HTMLOListElement;
  private readonly status: HTMLSpanElement;
  private pending: PendingRequest | null = null;
  private readonly listeners = new Listeners();
  /** Called when what the views show changed (a measurement arrived, the baseline or order changed). */
  onChange: () => void = () => {};

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
    private readonly channel: Channel | null,
    readonly meta: RelianceMeta,
  ) {
    for (const r of meta.kept) this.kept.set(r.baseline, r);
    const baselines = [...new Set([...meta.baselines, ...this.kept.keys()])];
    this.baseline = h("select", { className: "mmviz-reliance-baseline", attrs: { "aria-label": "reliance baseline" } });
    for (const b of baselines) this.baseline.append(option(b, `vs ${baselineText(b)}`));
    const first = meta.kept.find((r) => r.baseline === meta.defaultBaseline) ?? meta.kept[0];
    this.baseline.value = first?.baseline ?? meta.defaultBaseline;
    this.measureButton = button({ className: "mmviz-reliance-measure", text: "Measure", title: "Two forwards in the kernel: the answer with the real image and with the baseline image" });
    this.measureButton.hidden = !(meta.canMeasure && channel !== null);
    this.sort = h("input", { className: "mmviz-reliance-sort", attrs: { type: "checkbox", "aria-label": "sort answer tokens by image reliance" } });
    this.sort.checked = true;
    this.status = h("span", { className: "mmviz-reliance-status", data: { state: "idle" } });
    this.legend = h("div", { className: "mmviz-reliance-legend" });
    this.list = h("ol", { className: "mmviz-reliance-list" });
    // Inline, as the rest of the bar: one wrapping row of chips (style.css is shared with every view).
    Object.assign(this.list.style, { display: "flex", flexWrap: "wrap", gap: "4px", listStyle: "none", padding: "0", margin: "2px 0" });
    const head = h(
      "div",
      { className: "mmviz-reliance-head" },
      h("span", { className: "mmviz-panel-title", text: "Image reliance" }),
      this.baseline,
      this.measureButton,
      h("label", { className: "mmviz-control" }, this.sort, h("span", { text: "sort by reliance" })),
      this.status,
    );
    this.el = h("div", { className: "mmviz-reliance", data: { baseline: "", sorted: "1" } }, head, this.legend, this.list);
    this.listeners.on(this.baseline, "change", () => this.changed());
    this.listeners.on(this.sort, "change", () => this.changed());
    this.listeners.on(this.measureButton, "click", () => this.measure());
    this.listeners.on(this.list, "click", (ev) => {
      const li = (ev.target as Element | null)?.closest?.("li[data-pos]");
      if (!(li instanceof HTMLElement)) return;
      const pos = Number(li.dataset.pos);
      this.store.set({ pinnedToken: this.store.get().pinnedToken === pos ? null : pos });
    });
    this.paintList();
  }

  /** The measurement against the chosen baseline, when there is one. */
  get current(): RelianceData | null {
    return this.kept.get(this.baseline.value) ?? null;
  }

  private changed(): void {
    this.paintList();
    this.onChange();
  }

  /** Ask the kernel for the chosen baseline's measurement (once; kept afterwards). */
  measure(): void {
    if (this.channel === null || !this.meta.canMeasure) return;
    const baseline = this.baseline.value;
    if (this.kept.has(baseline)) return this.changed();
    this.pending?.cancel();
    this.measureButton.disabled = true;
    this.showStatus(`Measuring against ${baselineText(baseline)}…`, "pending");
    const pending = this.channel.ask({ type: "reliance", baseline }, RELIANCE_TIMEOUT_MS, {
      reply: (reply) => {
        if (this.pending !== pending) return;
        this.pending = null;
        this.measureButton.disabled = false;
        try {
          const r = parseReliance(fetchedPayload(reply), this.data.n);
          this.kept.set(r.baseline, r);
          this.showStatus("", "done");
          this.changed();
        } catch (err) {
          this.showStatus(`Image reliance failed: ${err instanceof Error ? err.message : String(err)}`, "error");
        }
      },
      fail: (err) => {
        if (this.pending !== pending) return;
        this.pending = null;
        this.measureButton.disabled = false;
        this.showStatus(`Image reliance failed: ${err.message}`, "error");
      },
    });
    this.pending = pending;
  }

  private showStatus(text: string, state: "idle" | "pending" | "error" | "done"): void {
    this.status.textContent = text;
    this.status.dataset.state = state;
  }

  private paintList(): void {
    const r = this.current;
    this.el.dataset.baseline = r?.baseline ?? "";
    this.el.dataset.sorted = this.sort.checked ? "1" : "0";
    this.measureButton.disabled = r !== null || this.pending !== null;
    if (r === null) {
      const can = this.meta.canMeasure && this.channel !== null;
      this.legend.textContent = can
        ? `Not measured against ${baselineText(this.baseline.value)} yet: Measure runs the model twice.`
        : `Not measured against ${baselineText(this.baseline.value)}; measuring needs the model (a kernel and an attached trace).`;
      this.list.replaceChildren();
      return;
    }
    const max = Math.max(0, ...r.kl);
    this.legend.textContent =
      `KL(p ‖ p with ${baselineText(r.baseline)}) of each answer token's next-token distribution, in nats vs ${baselineText(r.baseline)}: ` +
      `the stripe under an answer token, dark = 0 … bright = ${formatValue(max)}. High: the token was read off the image; ~0: template.`;
    const order = this.sort.checked ? rankByValue(r.kl) : r.positions.map((_, i) => i);
    this.list.replaceChildren(
      ...order.map((i) => {
        const pos = r.positions[i]!;
        const li = h(
          "li",
          { className: "mmviz-reliance-entry", data: { pos: String(pos), kl: r.kl[i]!.toFixed(6) }, title: `position ${pos} · P-CXMI ${formatValue(r.pcxmi[i]!)} (log p real − log p baseline)` },
          h("span", { className: "mmviz-reliance-token", text: displayToken(this.data.tokens[pos] ?? "") }),
          h("span", { className: "mmviz-reliance-value", text: ` ${formatValue(r.kl[i]!)} nats` }),
        );
        const [cr, cg, cb] = colorFor(max > 0 ? r.kl[i]! / max : 0);
        Object.assign(li.style, { cursor: "pointer", padding: "0 4px", borderBottom: `4px solid rgb(${cr}, ${cg}, ${cb})` });
        return li;
      }),
    );
  }

  /** The position a method map shows while nothing is hovered or pinned: the most image-reliant answer token. */
  defaultFocus(s: Readonly<ViewState>, map: Pick<MethodMap, "hasRow"> | null): number | null {
    const r = this.current;
    if (r === null || (s.method || ATTENTION) === ATTENTION || map === null || focusToken(s) !== null) return null;
    return mostReliant(r, (pos) => map.hasRow(pos));
  }

  /** Shade `strip`'s answer chips by the current measurement (or clear them). */
  paintStrip(strip: TokenStrip): void {
    const r = this.current;
    if (r === null) return strip.shade(null, 0, "none");
    strip.shade(new Map(r.positions.map((p, i) => [p, r.kl[i]!])), Math.max(0, ...r.kl), `reliance|${r.baseline}`);
  }

  dispose(): void {
    this.pending?.cancel();
    this.pending = null;
    this.listeners.dispose();
  }
}
