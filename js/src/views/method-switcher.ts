/**
 * The method switcher: a `<select class="mmviz-method">` listing the `methods` catalogue in order. Computed methods
 * show their label; the others say what selecting them does ("Relevancy (compute · a few passes)") or are disabled
 * when nothing can compute them. Option text is set with textContent only.
 */

import { h, Listeners, option } from "../dom";
import { optionText } from "../methods";
import type { MethodInfo } from "../protocol";

export interface SwitcherEntry {
  info: MethodInfo;
  /** `maps` holds it (attention: always). */
  computed: boolean;
  /** This view asked the kernel for it, or the kernel says it is computing it. */
  pending: boolean;
  /** Selecting it can start a computation. */
  canCompute: boolean;
}

export class MethodSwitcher {
  readonly el: HTMLLabelElement;
  readonly select: HTMLSelectElement;
  private signature = "";
  private readonly listeners = new Listeners();

  constructor(onPick: (name: string) => void) {
    this.select = h("select", { className: "mmviz-method", attrs: { "aria-label": "map method" } });
    this.el = h("label", { className: "mmviz-control mmviz-method-control", hidden: true }, h("span", { text: "Map" }), this.select);
    this.listeners.on(this.select, "change", () => onPick(this.select.value));
  }

  /** Rebuild the options when the catalogue or a method's state changed; select `current`. */
  update(entries: readonly SwitcherEntry[], current: string): void {
    const signature = JSON.stringify(
      entries.map((e) => [e.info.name, e.info.label, e.info.cost, e.computed, e.pending, e.canCompute]),
    );
    if (signature !== this.signature) {
      this.signature = signature;
      const options = entries.map((e) => {
        const o = option(e.info.name, optionText(e.info, e));
        o.disabled = !e.computed && !e.pending && !e.canCompute;
        o.dataset.computed = e.computed ? "1" : "0";
        o.dataset.cost = e.info.cost;
        o.title = e.info.meaning;
        return o;
      });
      this.select.replaceChildren(...options);
    }
    // A single entry (attention alone) needs no menu.
    this.el.hidden = entries.length <= 1;
    if (entries.some((e) => e.info.name === current) && this.select.value !== current) this.select.value = current;
    this.select.dataset.method = current;
  }

  dispose(): void {
    this.listeners.dispose();
  }
}
