/**
 * The Features panel: for the focused position (the hovered patch, else the pinned or hovered token, as the lens
 * panel reads it), the most active units — MLP neurons of a chosen decoder layer, or the latents of the SAE given
 * to the Inspector — with bars; clicking one selects it: its exact activation is fetched and drawn over the image
 * patches (small image views of the panel's own, painted like the main heat map) and over the token strip (the
 * shell tints it while a unit is selected), next to its card (label, promoted tokens, peak). For an SAE latent,
 * "Clamp" asks the kernel to set it (0 = off) at every image position and shows Δ log p of every answer token.
 *
 * Labels and tokens come from files and tokenizers: they are only ever set with textContent. The data is fetched
 * per layer through the model's one request channel (extras.ts); the clamp goes through the same channel.
 */

import type { Channel, PendingRequest } from "../channel";
import { scaleOf, type ColorScale } from "../colormap";
import type { WidgetData } from "../data";
import { button, h, Listeners, option } from "../dom";
import { featuresKey, unitKey, type Extras } from "../extras";
import {
  clampRequest,
  fetchedPayload,
  parseClamp,
  type ClampData,
  type FeatureKind,
  type FeaturesData,
  type FeaturesMeta,
  type UnitData,
} from "../protocol";
import type { FeatureChoice, Store, ViewState } from "../store";
import { quoteToken } from "./caption";
import { ImageView } from "./image-view";
import { formatValue } from "./legend";
import { displayToken } from "./token-strip";

/** A clamp reruns the model once; on a large model that takes a while. */
export const CLAMP_TIMEOUT_MS = 10 * 60 * 1000;
/** Long side of the panel's image views (px). */
const MAP_SIDE = 192;

/** What the token strip shows while a unit is selected: its activation at every position. */
export interface TokenTint {
  column: Float32Array;
  positions: Int32Array;
  scale: ColorScale;
  key: string;
}

interface ClampState {
  unit: number;
  state: "pending" | "done" | "error";
  request: PendingRequest | null;
  data?: ClampData;
  error?: string;
}

export class FeaturesPanel {
  readonly el: HTMLDivElement;
  private readonly source: HTMLSelectElement;
  private readonly layerSelect: HTMLSelectElement;
  private readonly lookup: HTMLInputElement;
  private readonly status: HTMLDivElement;
  private readonly title: HTMLDivElement;
  private readonly list: HTMLOListElement;
  private readonly unitView: HTMLDivElement;
  private readonly card: HTMLDivElement;
  private readonly mapBox: HTMLDivElement;
  private readonly clampButton: HTMLButtonElement;
  private readonly clampValue: HTMLInputElement;
  private readonly clampBox: HTMLDivElement;
  /** The panel's image views, built when a unit is first selected (most pages never open the panel). */
  private images: ImageView[] = [];
  private listKey = "";
  private unitKeyShown = "";
  private clamp: ClampState | null = null;
  private readonly positions: Int32Array;
  private readonly listeners = new Listeners();

  constructor(
    private readonly data: WidgetData,
    private readonly store: Store,
    private readonly extras: Extras,
    private readonly channel: Channel | null,
    readonly meta: FeaturesMeta,
  ) {
    this.positions = Int32Array.from({ length: data.n }, (_, i) => i);
    this.source = h("select", { className: "mmviz-features-source", attrs: { "aria-label": "units" } });
    if (meta.neurons) this.source.append(option("neurons", "MLP neurons"));
    if (meta.sae !== null) this.source.append(option("sae", `SAE latents (after layer ${meta.sae.layer})`));
    this.layerSelect = h("select", { className: "mmviz-features-layer", attrs: { "aria-label": "neurons of layer" } });
    for (let l = 0; l < data.L; l++) this.layerSelect.append(option(String(l), `layer ${l}`));
    this.lookup = h("input", { className: "mmviz-features-lookup", attrs: { type: "number", min: "0", step: "1" } });
    this.lookup.placeholder = "unit #";
    const show = button({ className: "mmviz-features-show", text: "Show" });
    const head = h(
      "div",
      { className: "mmviz-features-head" },
      this.source,
      this.layerSelect,
      h("label", { className: "mmviz-control" }, this.lookup, show),
    );
    this.status = h("div", { className: "mmviz-features-status" });
    this.title = h("div", { className: "mmviz-features-title" });
    this.list = h("ol", { className: "mmviz-features-list" });
    this.mapBox = h("div", { className: "mmviz-features-maps" });
    this.card = h("div", { className: "mmviz-features-card" });
    this.clampValue = h("input", { className: "mmviz-features-clamp-value", attrs: { type: "number", step: "any" } });
    this.clampValue.value = "0";
    this.clampButton = button({
      className: "mmviz-features-clamp",
      text: "Clamp",
      title: "Set this latent to the value at every image position and rerun the model on the answer",
    });
    this.clampBox = h("div", { className: "mmviz-features-clamp-result", data: { state: "none" } });
    const clampRow = h("div", { className: "mmviz-features-clamp-row" }, this.clampButton, h("span", { text: "to" }), this.clampValue);
    this.unitView = h("div", { className: "mmviz-features-unit", hidden: true }, this.mapBox, this.card, clampRow, this.clampBox);
    this.el = h("div", { className: "mmviz-features", data: { unit: "-1", pos: "-1" } }, head, this.status, this.title, this.list, this.unitView);

    const choose = (patch: Partial<FeatureChoice>): void =>
      this.store.set({ features: { ...this.store.get().features, unit: null, ...patch } });
    this.listeners.on(this.source, "change", () => choose({ source: this.source.value === "sae" ? "sae" : "neurons" }));
    this.listeners.on(this.layerSelect, "change", () => choose({ layer: Number(this.layerSelect.value) }));
    this.listeners.on(this.list, "click", (ev) => {
      const row = (ev.target as Element | null)?.closest?.("li[data-unit]");
      if (!(row instanceof HTMLElement)) return;
      const unit = Number(row.dataset.unit);
      const current = this.store.get().features;
      this.store.set({ features: { ...current, unit: current.unit === unit ? null : unit } });
    });
    const lookUp = (): void => {
      const unit = Number(this.lookup.value);
      const width = this.widthOf(this.kindOf(this.store.get()));
      if (!Number.isInteger(unit) || unit < 0 || (width > 0 && unit >= width)) {
        this.showStatus(`Unit must be a whole number in 0…${Math.max(0, width - 1)}.`);
        return;
      }
      this.store.set({ features: { ...this.store.get().features, unit } });
    };
    this.listeners.on(show, "click", lookUp);
    this.listeners.on(this.lookup, "keydown", (ev) => {
      if (ev.key === "Enter") lookUp();
    });
    this.listeners.on(this.clampButton, "click", () => this.sendClamp());
  }

  /** The source shown: the one chosen when the trace can show it, else whatever it can. */
  kindOf(s: Readonly<ViewState>): FeatureKind {
    if (s.features.source !== "neurons" && this.meta.sae !== null) return "sae";
    return this.meta.neurons ? "neurons" : "sae";
  }

  /** The decoder layer the listed units belong to. */
  layerOf(s: Readonly<ViewState>): number {
    if (this.kindOf(s) === "sae") return this.meta.sae?.layer ?? 0;
    return Math.max(0, Math.min(this.data.L - 1, s.features.layer));
  }

  private widthOf(kind: FeatureKind): number {
    if (kind === "sae") return this.meta.sae?.width ?? 0;
    return this.extras.get<FeaturesData>(featuresKey("neurons", this.layerOf(this.store.get())))?.width ?? 0;
  }

  /**
   * The position the panel describes: the hovered patch's, else the hovered token, else the patch a click held,
   * else the pinned token, else null.
   */
  positionOf(s: Readonly<ViewState>, focus: number | null): number | null {
    if (s.hoverPatch !== null) return this.data.imagePositions[s.hoverPatch] ?? null;
    if (s.hoverToken === null && s.features.held !== null) return s.features.held;
    return focus;
  }

  /** A click on an image patch holds (or, clicked again, releases) its position for the panel. */
  holdPatch(): void {
    const s = this.store.get();
    const pos = s.hoverPatch === null ? null : (this.data.imagePositions[s.hoverPatch] ?? null);
    if (pos === null) return;
    this.store.set({ features: { ...s.features, held: s.features.held === pos ? null : pos } });
  }

  private showStatus(message: string): void {
    this.status.textContent = message;
    this.status.hidden = message === "";
  }

  /** The selected unit's payload once it arrived (asked for when missing), else null. */
  private unitOf(s: Readonly<ViewState>): UnitData | null {
    if (s.features.unit === null) return null;
    const key = unitKey(this.kindOf(s), this.layerOf(s), s.features.unit);
    this.extras.want(key);
    return this.extras.get<UnitData>(key);
  }

  /** The selected unit's activation over every position, for the token strip (null: nothing selected yet). */
  tokenTint(s: Readonly<ViewState>): TokenTint | null {
    const unit = this.unitOf(s);
    if (unit === null) return null;
    const signed = unit.activation.some((v) => v < 0);
    return {
      column: unit.activation,
      positions: this.positions,
      scale: { ...scaleOf(unit.activation, signed), mode: s.scale, gamma: s.gamma },
      key: `unit|${unit.kind}|${unit.layer}|${unit.unit}|${s.scale}|${s.gamma}`,
    };
  }

  update(s: Readonly<ViewState>, focus: number | null): void {
    const kind = this.kindOf(s);
    const layer = this.layerOf(s);
    if (this.source.value !== kind) this.source.value = kind;
    this.layerSelect.hidden = kind !== "neurons";
    if (this.layerSelect.value !== String(layer)) this.layerSelect.value = String(layer);
    const key = featuresKey(kind, layer);
    this.extras.want(key);
    const top = this.extras.get<FeaturesData>(key);
    const pos = this.positionOf(s, focus);
    this.el.dataset.kind = kind;
    this.el.dataset.layer = String(layer);
    this.el.dataset.pos = String(pos ?? -1);
    this.el.dataset.held = String(s.features.held ?? -1);
    const what = kind === "sae" ? "SAE latents" : `neurons of layer ${layer}`;
    const st = this.extras.statusOf(key);
    if (top === null) {
      this.showStatus(st.state === "error" ? `The ${what} could not be loaded: ${st.error ?? "unknown error"}.` : `Loading the ${what} from the kernel…`);
    } else {
      this.showStatus(pos === null ? "Hover an image patch or a token to list its most active units; click a patch to hold it." : "");
    }
    this.paintList(top, pos, kind);
    this.paintUnit(s, kind, top, pos);
  }

  private paintList(top: FeaturesData | null, pos: number | null, kind: FeatureKind): void {
    const key = `${top === null ? "none" : `${top.kind}|${top.layer}`}|${pos}`;
    if (key === this.listKey) return;
    this.listKey = key;
    if (top === null || pos === null || pos >= top.n) {
      this.title.textContent = "";
      this.list.replaceChildren();
      this.el.dataset.units = "";
      delete this.el.dataset.recon;
      return;
    }
    const { k } = top;
    const rows: HTMLLIElement[] = [];
    const units: number[] = [];
    const best = top.values[pos * k] ?? 0;
    for (let j = 0; j < k; j++) {
      const value = top.values[pos * k + j]!;
      if (!(value > 0)) continue; // inactive: the list shows what fires here
      const unit = top.indices[pos * k + j]!;
      units.push(unit);
      const label = top.labels.get(unit) ?? "";
      const bar = h("span", { className: "mmviz-feature-bar" });
      bar.style.width = `${Math.round((100 * value) / (best > 0 ? best : 1))}%`;
      rows.push(
        h(
          "li",
          { className: "mmviz-feature", data: { unit: String(unit), value: value.toFixed(4) }, title: `activation ${formatValue(value)}` },
          h("span", { className: "mmviz-feature-bars" }, bar),
          h("span", { className: "mmviz-feature-unit", text: `#${unit}` }),
          h("span", { className: "mmviz-feature-value", text: formatValue(value) }),
          h("span", { className: "mmviz-feature-label", text: label }),
        ),
      );
    }
    this.el.dataset.units = units.join(",");
    const where = this.data.columnOfPosition(pos) >= 0 ? `image patch ${this.data.columnOfPosition(pos)}` : quoteToken(this.data.tokens[pos] ?? "");
    let title = `Most active ${kind === "sae" ? "SAE latents" : `neurons of layer ${top.layer}`} at ${where} (position ${pos})`;
    const recon = top.reconstructionError?.[pos];
    if (recon !== undefined) {
      title += ` · reconstruction error ${recon.toFixed(3)}`;
      this.el.dataset.recon = recon.toFixed(4);
    } else delete this.el.dataset.recon;
    this.title.textContent = rows.length === 0 ? `${title}: none active` : title;
    this.list.replaceChildren(...rows);
  }

  private paintUnit(s: Readonly<ViewState>, kind: FeatureKind, top: FeaturesData | null, pos: number | null): void {
    for (const li of this.list.children) {
      if (li instanceof HTMLElement) li.classList.toggle("mmviz-on", Number(li.dataset.unit) === s.features.unit);
    }
    const unit = this.unitOf(s);
    this.el.dataset.unit = String(s.features.unit ?? -1);
    this.unitView.hidden = s.features.unit === null;
    this.clampButton.hidden = kind !== "sae" || this.channel === null;
    this.clampValue.hidden = this.clampButton.hidden;
    if (s.features.unit === null) return;
    if (unit === null) {
      const st = this.extras.statusOf(unitKey(kind, this.layerOf(s), s.features.unit));
      this.card.textContent = st.state === "error" ? `Unit #${s.features.unit} could not be loaded: ${st.error ?? ""}` : `Loading unit #${s.features.unit}…`;
      this.el.dataset.unitReady = "0";
      return;
    }
    if (this.images.length === 0) this.buildImages();
    const signed = unit.activation.some((v) => v < 0);
    const map = new Float32Array(this.data.P);
    this.data.imagePositions.forEach((p, column) => (map[column] = unit.activation[p] ?? Number.NaN));
    const scale: ColorScale = { ...scaleOf(map, signed, this.data.visibleColumns(s.views)), mode: s.scale, gamma: s.gamma };
    const mapKey = `${unit.kind}|${unit.layer}|${unit.unit}|${s.scale}|${s.gamma}|${s.views.join(",")}`;
    this.images.forEach((v, i) => {
      v.setView(this.data.selectedView(i, s.views));
      v.paintHeat(map, scale, unit.unit, mapKey);
      v.setOpacity(s.opacity);
      v.paintOutline(s.hoverPatch);
    });
    const recon = top?.reconstructionError && pos !== null ? top.reconstructionError[pos] : undefined;
    const cardKey = `${mapKey}|${recon}`;
    if (cardKey !== this.unitKeyShown) {
      this.unitKeyShown = cardKey;
      this.paintCard(unit, recon);
    }
    this.el.dataset.unitReady = "1";
    if (this.clamp !== null && this.clamp.unit !== unit.unit) this.dropClamp();
  }

  private buildImages(): void {
    for (let i = 0; i < this.data.nImages; i++) {
      const v = new ImageView(this.data, this.store, i, MAP_SIDE);
      // Classes of their own too, so a page's tests (and styles) can tell them from the main image views.
      v.el.classList.add("mmviz-features-image");
      v.heat.classList.add("mmviz-features-heat");
      this.listeners.on(v.heat.parentElement ?? v.el, "click", () => this.holdPatch());
      this.images.push(v);
      this.mapBox.append(v.el);
    }
  }

  private paintCard(unit: UnitData, recon: number | undefined): void {
    const { card } = unit;
    const name = unit.kind === "sae" ? `SAE latent #${unit.unit}` : `neuron #${unit.unit} of layer ${unit.layer}`;
    const peak = card.peakPosition >= 0 ? `${formatValue(card.peakActivation)} at position ${card.peakPosition}` : "—";
    const line = (label: string, value: string, cls: string): HTMLDivElement =>
      h("div", { className: cls }, h("span", { className: "mmviz-features-key", text: label }), h("span", { text: value }));
    const rows = [
      h("div", { className: "mmviz-features-name", text: name }),
      line("label", card.label === "" ? "(none)" : card.label, "mmviz-features-label"),
      line("promotes", card.topTokens.map((t) => displayToken(t)).join(" · ") || "(no model to read it through)", "mmviz-features-tokens"),
      line("peak", peak, "mmviz-features-peak"),
      line("active at", `${card.activePositions} of ${this.data.n} positions`, "mmviz-features-active"),
    ];
    if (recon !== undefined) rows.push(line("SAE reconstruction error here", recon.toFixed(3), "mmviz-features-recon"));
    this.card.replaceChildren(...rows);
    this.card.dataset.label = card.label;
  }

  private dropClamp(): void {
    this.clamp?.request?.cancel();
    this.clamp = null;
    this.clampBox.replaceChildren();
    this.clampBox.dataset.state = "none";
  }

  private sendClamp(): void {
    const unit = this.store.get().features.unit;
    if (unit === null || this.channel === null || this.kindOf(this.store.get()) !== "sae") return;
    const value = Number(this.clampValue.value === "" ? "0" : this.clampValue.value);
    if (!Number.isFinite(value)) {
      this.paintClamp({ unit, state: "error", request: null, error: "the clamp value must be a number" });
      return;
    }
    this.dropClamp();
    const entry: ClampState = { unit, state: "pending", request: null };
    this.clamp = entry;
    this.paintClamp(entry);
    entry.request = this.channel.ask(clampRequest(unit, value), CLAMP_TIMEOUT_MS, {
      reply: (reply) => {
        if (this.clamp !== entry) return;
        try {
          entry.data = parseClamp(fetchedPayload(reply), this.data.n);
          entry.state = "done";
        } catch (err) {
          entry.state = "error";
          entry.error = err instanceof Error ? err.message : String(err);
        }
        this.paintClamp(entry);
      },
      fail: (err) => {
        if (this.clamp !== entry) return;
        entry.state = "error";
        entry.error = err.message;
        this.paintClamp(entry);
      },
    });
  }

  /** Δ log p of every answer token: one bar each, red when the clamp lowered it, blue when it raised it. */
  private paintClamp(c: ClampState): void {
    this.clampBox.dataset.state = c.state;
    this.clampButton.disabled = c.state === "pending";
    if (c.state === "pending") {
      this.clampBox.replaceChildren(h("div", { className: "mmviz-features-status", text: "Running the model with the latent clamped…" }));
      return;
    }
    if (c.state === "error" || c.data === undefined) {
      this.clampBox.replaceChildren(h("div", { className: "mmviz-features-status", text: `Clamp failed: ${c.error ?? ""}` }));
      return;
    }
    const { data } = c;
    let largest = 0;
    for (const d of data.delta) largest = Math.max(largest, Math.abs(d));
    const rows: HTMLElement[] = [
      h("div", { className: "mmviz-features-clamp-title", text: `Δ log p of each answer token, latent #${data.latent} set to ${data.value}` }),
    ];
    data.positions.forEach((pos, i) => {
      const delta = data.delta[i]!;
      const bar = h("span", { className: `mmviz-clamp-bar ${delta < 0 ? "mmviz-neg" : "mmviz-pos"}` });
      bar.style.width = `${largest > 0 ? Math.round((50 * Math.abs(delta)) / largest) : 0}%`;
      rows.push(
        h(
          "div",
          { className: "mmviz-clamp-row", data: { pos: String(pos), delta: delta.toFixed(6) }, title: `log p ${data.clean[i]!.toFixed(3)} → ${(data.clean[i]! + delta).toFixed(3)}` },
          h("span", { className: "mmviz-clamp-token", text: displayToken(this.data.tokens[pos] ?? "") }),
          h("span", { className: "mmviz-clamp-track" }, bar),
          h("span", { className: "mmviz-clamp-value", text: `${delta >= 0 ? "+" : ""}${delta.toFixed(3)}` }),
        ),
      );
    });
    this.clampBox.replaceChildren(...rows);
  }

  dispose(): void {
    this.clamp?.request?.cancel();
    this.clamp = null;
    this.listeners.dispose();
    for (const v of this.images) v.dispose();
  }
}
