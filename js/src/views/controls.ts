/**
 * The controls row: the layer scrubber (slider, "all layers" toggle, play), the head selector, the colour scale
 * (linear / log / gamma), the heatmap opacity and the sub-word merge toggle. Every control writes the view's store;
 * syncing to Python is done by ModelSync.
 */

import type { WidgetData } from "../data";
import { button, h, Listeners, option } from "../dom";
import { MEAN, type Head } from "../protocol";
import type { ScaleMode, Store, ViewState } from "../store";

/** Milliseconds per layer while playing. */
export const PLAY_STEP_MS = 600;

function labelled(text: string, ...children: HTMLElement[]): HTMLLabelElement {
  return h("label", { className: "mmviz-control" }, h("span", { text }), ...children);
}

/** An `<input>` of `type` with its attributes (min, max, step, ...). */
function input(type: string, className: string, attrs: Record<string, string> = {}): HTMLInputElement {
  const el = h("input", { className, attrs });
  el.type = type;
  return el;
}

/** The head of the head selector's option `value` ("mean" or an index). */
function headOf(value: string): Head {
  return value === MEAN ? MEAN : Number(value);
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
  private readonly listeners = new Listeners();
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly L: number;
  private layered = true;

  constructor(
    data: WidgetData,
    private readonly store: Store,
  ) {
    this.L = data.L;
    const layer = input("range", "mmviz-layer", { min: "0", max: String(Math.max(0, data.L - 1)), step: "1", "aria-label": "layer" });
    const layerLabel = h("output", { className: "mmviz-layer-value" });
    const all = button({ className: "mmviz-all-layers", text: "all", title: "Mean over all layers", attrs: { "aria-pressed": "false" } });
    const play = button({ className: "mmviz-play", title: "Play through the layers", attrs: { "aria-label": "play through the layers" } });
    const head = h("select", { className: "mmviz-head" }, option(MEAN, "mean of heads"));
    for (let i = 0; i < data.H; i++) head.append(option(String(i), `head ${i}`));
    const scale = h(
      "select",
      { className: "mmviz-scale", title: "How values map to colours: log and gamma < 1 spread out the small values" },
      option("linear", "linear"),
      option("log", "log"),
      option("gamma", "gamma"),
    );
    const gamma = input("number", "mmviz-gamma", { min: "0.1", max: "4", step: "0.1", "aria-label": "gamma" });
    this.gammaWrap = labelled("γ", gamma);
    const opacity = input("range", "mmviz-opacity", { min: "0", max: "100", step: "5", "aria-label": "heatmap opacity" });
    const words = input("checkbox", "mmviz-words-toggle");

    this.el = h(
      "div",
      { className: "mmviz-controls" },
      labelled("Layer", layer, layerLabel, all, play),
      labelled("Head", head),
      labelled("Scale", scale),
      this.gammaWrap,
      labelled("Opacity", opacity),
      labelled("Words", words),
    );
    this.layerInput = layer;
    this.layerLabel = layerLabel;
    this.allLayers = all;
    this.play = play;
    this.headSelect = head;
    this.scaleSelect = scale;
    this.gammaInput = gamma;
    this.opacityInput = opacity;
    this.wordsInput = words;

    const on = this.listeners.on.bind(this.listeners);
    const onLayer = (): void => this.store.set({ layer: Number(layer.value), playing: false });
    on(layer, "input", onLayer);
    on(layer, "change", onLayer);
    on(all, "click", () => {
      const s = this.store.get();
      this.store.set({ layer: s.layer === MEAN ? Number(layer.value) : MEAN, playing: false });
    });
    on(play, "click", () => {
      const s = this.store.get();
      // Playing from the last layer (or from all layers) starts over at the first.
      const restart = !s.playing && (s.layer === MEAN || s.layer >= this.L - 1);
      this.store.set({ playing: !s.playing, ...(restart ? { layer: 0 } : {}) });
    });
    on(head, "change", () => this.store.set({ head: headOf(head.value) }));
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
    const all = s.layer === MEAN;
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
      if (now.layer === MEAN || now.layer + 1 >= this.L) this.store.set({ playing: false });
      else this.store.set({ layer: now.layer + 1 });
    }, PLAY_STEP_MS);
  }

  dispose(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.listeners.dispose();
  }
}
