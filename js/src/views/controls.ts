/** Layer slider and head selector. They update the view's store immediately; syncing to the model is done by ModelSync. */

import type { WidgetData } from "../data";
import type { FocusState, Store } from "../store";

export class Controls {
  readonly el: HTMLDivElement;
  readonly layerInput: HTMLInputElement;
  readonly layerLabel: HTMLOutputElement;
  readonly headSelect: HTMLSelectElement;
  private readonly disposers: (() => void)[] = [];
  private readonly L: number;

  constructor(
    data: WidgetData,
    private readonly store: Store,
  ) {
    this.L = data.L;
    const el = document.createElement("div");
    el.className = "mmviz-controls";

    const layerWrap = document.createElement("label");
    layerWrap.className = "mmviz-control";
    const layerText = document.createElement("span");
    layerText.textContent = "Layer";
    const layer = document.createElement("input");
    layer.type = "range";
    layer.className = "mmviz-layer";
    layer.min = "0";
    layer.max = String(Math.max(0, data.L - 1));
    layer.step = "1";
    layer.disabled = data.L === 0;
    const layerLabel = document.createElement("output");
    layerLabel.className = "mmviz-layer-value";
    layerWrap.append(layerText, layer, layerLabel);

    const headWrap = document.createElement("label");
    headWrap.className = "mmviz-control";
    const headText = document.createElement("span");
    headText.textContent = "Head";
    const head = document.createElement("select");
    head.className = "mmviz-head";
    const mean = document.createElement("option");
    mean.value = "-1";
    mean.textContent = "mean of heads";
    head.append(mean);
    for (let h = 0; h < data.H; h++) {
      const o = document.createElement("option");
      o.value = String(h);
      o.textContent = `head ${h}`;
      head.append(o);
    }
    head.disabled = data.L === 0;
    headWrap.append(headText, head);

    el.append(layerWrap, headWrap);
    this.el = el;
    this.layerInput = layer;
    this.layerLabel = layerLabel;
    this.headSelect = head;

    const onLayer = (): void => this.store.set({ layer: Number(layer.value) });
    const onHead = (): void => this.store.set({ head: Number(head.value) });
    layer.addEventListener("input", onLayer);
    layer.addEventListener("change", onLayer);
    head.addEventListener("change", onHead);
    this.disposers.push(() => {
      layer.removeEventListener("input", onLayer);
      layer.removeEventListener("change", onLayer);
      head.removeEventListener("change", onHead);
    });
    this.update(store.get());
  }

  /**
   * Which controls apply to the shown map: the head selector to attention only, the layer slider to attention
   * and per-layer maps. Disabled controls keep their value.
   */
  setApplicable(layer: boolean, head: boolean, why: string): void {
    const noData = this.L === 0;
    this.layerInput.disabled = noData || !layer;
    this.headSelect.disabled = noData || !head;
    this.layerInput.title = layer ? "" : why;
    this.headSelect.title = head ? "" : why;
  }

  /** Reflect the store (changes from the other controls' view or from Python). */
  update(s: Readonly<FocusState>): void {
    const lv = String(s.layer);
    if (this.layerInput.value !== lv) this.layerInput.value = lv;
    this.layerLabel.textContent = lv;
    const hv = String(s.head);
    if (this.headSelect.value !== hv) this.headSelect.value = hv;
  }

  dispose(): void {
    for (const d of this.disposers) d();
    this.disposers.length = 0;
  }
}
