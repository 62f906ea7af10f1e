/**
 * The controls row: the layer scrubber (slider, "all layers" toggle, play), the head selector, the colour scale
 * (linear / log / gamma), the heatmap opacity and the sub-word merge toggle. Every control writes the view's store;
 * syncing to Python is done by ModelSync.
 */

import type { WidgetData } from "../data";
import { ALL_LAYERS, type ScaleMode, type Store, type ViewState } from "../store";

/** Milliseconds per layer while playing. */
export const PLAY_STEP_MS = 600;

function labelled(text: string, ...children: HTMLElement[]): HTMLLabelElement {
  const wrap = document.createElement("label");
  wrap.className = "mmviz-control";
  const span = document.createElement("span");
  span.textContent = text;
  wrap.append(span, ...children);
  return wrap;
}

function option(value: string, text: string): HTMLOptionElement {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

export class Controls {
  readonly el: HTMLDivElement;
  readonly layerInput: HTMLInputElement;
  readonly layerLabel: HTMLOutputElement;
  readonly allLayers: HTMLButtonElement;
  readonly play: HTMLButtonElement;
  readonly headSelect: HTMLSelectElement;
  readonly scaleSelect: HTMLSelectElement;
  readonly gammaInput: HTMLInputElement;
  readonly opacityInput: HTMLInputElement;
  readonly wordsInput: HTMLInputElement;
  private readonly gammaWrap: HTMLLabelElement;
  private readonly disposers: (() => void)[] = [];
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly L: number;
  private layered = true;

  constructor(
    data: WidgetData,
    private readonly store: Store,
  ) {
    this.L = data.L;
    const el = document.createElement("div");
    el.className = "mmviz-controls";

    const layer = document.createElement("input");
    layer.type = "range";
    layer.className = "mmviz-layer";
    layer.min = "0";
    layer.max = String(Math.max(0, data.L - 1));
    layer.step = "1";
    layer.setAttribute("aria-label", "layer");
    const layerLabel = document.createElement("output");
    layerLabel.className = "mmviz-layer-value";
    const all = document.createElement("button");
    all.type = "button";
    all.className = "mmviz-all-layers";
    all.textContent = "all";
    all.title = "Mean over all layers";
    all.setAttribute("aria-pressed", "false");
    const play = document.createElement("button");
    play.type = "button";
    play.className = "mmviz-play";
    play.title = "Play through the layers";
    play.setAttribute("aria-label", "play through the layers");
    const layerWrap = labelled("Layer", layer, layerLabel, all, play);

    const head = document.createElement("select");
    head.className = "mmviz-head";
    head.append(option("-1", "mean of heads"));
    for (let h = 0; h < data.H; h++) head.append(option(String(h), `head ${h}`));

    const scale = document.createElement("select");
    scale.className = "mmviz-scale";
    scale.title = "How values map to colours: log and gamma < 1 spread out the small values";
    scale.append(option("linear", "linear"), option("log", "log"), option("gamma", "gamma"));
    const gamma = document.createElement("input");
    gamma.type = "number";
    gamma.className = "mmviz-gamma";
    gamma.min = "0.1";
    gamma.max = "4";
    gamma.step = "0.1";
    gamma.setAttribute("aria-label", "gamma");
    this.gammaWrap = labelled("γ", gamma);

    const opacity = document.createElement("input");
    opacity.type = "range";
    opacity.className = "mmviz-opacity";
    opacity.min = "0";
    opacity.max = "100";
    opacity.step = "5";
    opacity.setAttribute("aria-label", "heatmap opacity");

    const words = document.createElement("input");
    words.type = "checkbox";
    words.className = "mmviz-words-toggle";

    el.append(
      layerWrap,
      labelled("Head", head),
      labelled("Scale", scale),
      this.gammaWrap,
      labelled("Opacity", opacity),
      labelled("Words", words),
    );
    this.el = el;
    this.layerInput = layer;
    this.layerLabel = layerLabel;
    this.allLayers = all;
    this.play = play;
    this.headSelect = head;
    this.scaleSelect = scale;
    this.gammaInput = gamma;
    this.opacityInput = opacity;
    this.wordsInput = words;

    const on = (target: EventTarget, type: string, fn: () => void): void => {
      target.addEventListener(type, fn);
      this.disposers.push(() => target.removeEventListener(type, fn));
    };
    const onLayer = (): void => this.store.set({ layer: Number(layer.value), playing: false });
    on(layer, "input", onLayer);
    on(layer, "change", onLayer);
    on(all, "click", () => {
      const s = this.store.get();
      this.store.set({ layer: s.layer === ALL_LAYERS ? Number(layer.value) : ALL_LAYERS, playing: false });
    });
    on(play, "click", () => {
      const s = this.store.get();
      // Playing from the last layer (or from all layers) starts over at the first.
      const restart = !s.playing && (s.layer === ALL_LAYERS || s.layer >= this.L - 1);
      this.store.set({ playing: !s.playing, ...(restart ? { layer: 0 } : {}) });
    });
    on(head, "change", () => this.store.set({ head: Number(head.value) }));
    on(scale, "change", () => this.store.set({ scale: scale.value as ScaleMode }));
    on(gamma, "change", () => {
      const g = Number(gamma.value);
      if (g > 0 && Number.isFinite(g)) this.store.set({ gamma: g });
    });
    on(opacity, "input", () => this.store.set({ opacity: Number(opacity.value) / 100 }));
    on(words, "change", () => this.store.set({ words: words.checked }));
    this.update(store.get());
  }

  /**
   * Which controls apply to the shown map: the head selector to attention only, the layer scrubber to attention
   * and per-layer maps. Disabled controls keep their value.
   */
  setApplicable(layer: boolean, head: boolean, why: string): void {
    const noData = this.L === 0;
    this.layered = layer && !noData;
    for (const c of [this.layerInput, this.allLayers, this.play]) {
      c.disabled = !this.layered;
      c.dataset.title ??= c.title;
      c.title = layer ? c.dataset.title : why;
    }
    this.headSelect.disabled = noData || !head;
    this.headSelect.title = head ? "" : why;
    if (!this.layered && this.store.get().playing) this.store.set({ playing: false });
  }

  /** Reflect the store (changes from other views or from Python), and run or stop the player. */
  update(s: Readonly<ViewState>): void {
    const all = s.layer === ALL_LAYERS;
    if (!all) {
      const lv = String(s.layer);
      if (this.layerInput.value !== lv) this.layerInput.value = lv;
    }
    this.layerLabel.textContent = all ? "all (mean)" : String(s.layer);
    this.allLayers.setAttribute("aria-pressed", all ? "true" : "false");
    this.allLayers.classList.toggle("mmviz-on", all);
    const hv = String(s.head);
    if (this.headSelect.value !== hv) this.headSelect.value = hv;
    if (this.scaleSelect.value !== s.scale) this.scaleSelect.value = s.scale;
    this.gammaWrap.hidden = s.scale !== "gamma";
    const g = String(s.gamma);
    if (this.gammaInput.value !== g) this.gammaInput.value = g;
    const o = String(Math.round(s.opacity * 100));
    if (this.opacityInput.value !== o) this.opacityInput.value = o;
    this.wordsInput.checked = s.words;
    this.play.textContent = s.playing ? "⏸" : "▶";
    this.play.setAttribute("aria-pressed", s.playing ? "true" : "false");
    this.setPlaying(s.playing);
  }

  private setPlaying(playing: boolean): void {
    if (playing === (this.timer !== null)) return;
    if (!playing) {
      clearInterval(this.timer!);
      this.timer = null;
      return;
    }
    this.timer = setInterval(() => {
      const now = this.store.get();
      const next = now.layer + 1;
      if (next >= this.L || now.layer === ALL_LAYERS) this.store.set({ playing: false });
      else this.store.set({ layer: next });
    }, PLAY_STEP_MS);
  }

  dispose(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    for (const d of this.disposers) d();
    this.disposers.length = 0;
  }
}
