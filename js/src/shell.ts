/**
 * The shell of one view: builds the DOM of every view (header with the switcher, controls and legend; images and
 * token strip; caption; layer × head overview and the side panels) from one revision of the data, wires them to
 * the view's store, and paints them all from one derived frame (frame.ts) per state change. The Features panel
 * exists only with a kernel behind the page (its payloads are fetched and clamps run there); the Interventions
 * panel runs with one and, without, shows the runs kept in the trace.
 */

import type { Channel } from "./channel";
import { button, h, Listeners } from "./dom";
import type { WidgetData } from "./data";
import type { Extras } from "./extras";
import { FrameBuilder, type Frame } from "./frame";
import { switcherEntries, type MethodContext } from "./method-state";
import { ATTENTION, parseInterventionsMeta, type LensData, type MethodInfo, type ProjectionData } from "./protocol";
import type { Panel, Store, ViewState } from "./store";
import { Caption } from "./views/caption";
import { FeaturesPanel } from "./views/features";
import { FrameStrip } from "./views/frame-strip";
import { Controls } from "./views/controls";
import { InterventionsPanel } from "./views/interventions";
import { ImageView } from "./views/image-view";
import { Legend, formatValue } from "./views/legend";
import { LensPanel } from "./views/lens-panel";
import { MethodSwitcher, type SwitcherEntry } from "./views/method-switcher";
import { Overview } from "./views/overview";
import { ProjectionPanel } from "./views/projection-panel";
import { RelianceBar } from "./views/reliance";
import { TokenStrip } from "./views/token-strip";

/** Status text of a side panel's extra: why it is not shown yet. */
/** "layout measured": the boxes were read from the model (no adapter states them); the tooltip says how. */
export function measuredBadge(): HTMLElement {
  return h("span", {
    className: "mmviz-badge",
    text: "layout measured",
    title:
      "No adapter describes this family: which pixels each image token reads was measured from the model itself " +
      "(mmviz.adapters.measure_layout). mmviz.adapters.verify(model, processor, image) prints the report.",
  });
}

function extraMessage(extras: Extras, key: string, what: string): string {
  const st = extras.statusOf(key);
  if (st.state === "error") return `The ${what} could not be loaded: ${st.error ?? "unknown error"}.`;
  return `Loading the ${what} from the kernel…`;
}

/** The views of one revision of the data, built into `parent` and wired to the view's store (one per render). */
export class Shell {
  readonly controls: Controls;
  readonly switcher: MethodSwitcher;
  readonly legend: Legend;
  tokens: TokenStrip;
  readonly images: ImageView[] = [];
  /** A video trace's frame strip (its one image view shows the chosen frame); null for images. */
  readonly frameStrip: FrameStrip | null = null;
  readonly caption: Caption;
  readonly overview: Overview | null;
  readonly lens: LensPanel | null;
  readonly projection: ProjectionPanel | null;
  readonly features: FeaturesPanel | null;
  readonly interventions: InterventionsPanel | null;
  /** Image reliance per answer token under the strip: shown when measured or measurable. */
  readonly reliance: RelianceBar | null;
  readonly frames: FrameBuilder;
  private readonly tabs = new Map<Panel, HTMLButtonElement>();
  private readonly side: HTMLDivElement;
  private readonly listeners = new Listeners();
  /** Bumped when an extra arrives (part of the overview's memo key). */
  arrivals = 0;

  constructor(
    readonly data: WidgetData,
    readonly extras: Extras | null,
    readonly store: Store,
    parent: HTMLElement,
    onPickMethod: (name: string) => void,
    channel: Channel | null = null,
  ) {
    this.frames = new FrameBuilder(data, extras);
    const title = h("div", {
      className: "mmviz-title",
      text: [data.meta.model_name, data.meta.family].filter(Boolean).join(" · "),
    });
    if (data.meta.layout_source === "measured") title.append(" ", measuredBadge());
    this.switcher = new MethodSwitcher(onPickMethod);
    this.controls = new Controls(data, store);
    this.controls.el.prepend(this.switcher.el);
    this.legend = new Legend(data.meta.map_label);
    const header = h("div", { className: "mmviz-header" }, title, this.controls.el, this.legend.el);

    const onView = (image: number, code: number): void => {
      const views = [...store.get().views];
      while (views.length <= image) views.push(-1);
      views[image] = code;
      store.set({ views });
    };
    const video = data.meta.video;
    const nViews = video === null ? data.nImages : Math.min(1, data.nImages); // a video: one view, frame by frame
    for (let i = 0; i < nViews; i++) this.images.push(new ImageView(data, store, i, undefined, onView));
    const imgs = h("div", { className: "mmviz-images", hidden: data.nImages === 0 }, ...this.images.map((v) => v.el));
    const frameView = this.images[0];
    if (video !== null && frameView !== undefined) {
      const source = { ...video, columnsOf: (i: number) => data.columnsOf(i), bitmap: (i: number) => data.bitmap(i) };
      this.frameStrip = new FrameStrip(source, (frame, columns) => {
        frameView.showFrame(frame, columns);
        this.interventions?.showFrame(frame, columns); // its image and "Select this frame's tokens" follow the strip
      });
      imgs.classList.add("mmviz-video");
      imgs.append(this.frameStrip.el);
      this.frameStrip.select(0);
    }
    this.tokens = new TokenStrip(data, store, store.get().words);
    const body = h("div", { className: "mmviz-body" }, imgs, this.tokens.el);

    this.overview = data.hasAttention ? new Overview(data, store, this.frames) : null;
    const canFetch = extras !== null;
    this.lens = canFetch && data.meta.extras.lens ? new LensPanel(data, store) : null;
    this.projection = canFetch && data.meta.extras.projection ? new ProjectionPanel(data, store) : null;
    const featuresMeta = data.meta.features;
    const hasFeatures = featuresMeta.neurons || featuresMeta.sae !== null;
    this.features = extras !== null && extras.live && hasFeatures ? new FeaturesPanel(data, store, extras, channel, featuresMeta) : null;
    // Interventions run with a live kernel; without one (a standalone page) the panel shows the kept runs only.
    const ivMeta = parseInterventionsMeta(data.meta.interventions, data.n);
    const live = extras !== null && extras.live && channel !== null;
    const hasKept = ivMeta.history.length > 0 || ivMeta.curve !== null;
    this.interventions = (live && ivMeta.canRun) || hasKept ? new InterventionsPanel(data, store, live ? channel : null, ivMeta) : null;
    const rel = ivMeta.reliance;
    this.reliance = rel.kept.length > 0 || (live && rel.canMeasure) ? new RelianceBar(data, store, live ? channel : null, rel) : null;
    if (this.reliance) {
      // Under the token strip: one column of the body holds both (the strip is replaced in place on rebuilds).
      const column = h("div", { className: "mmviz-token-column" });
      Object.assign(column.style, { flex: "1 1 280px", minWidth: "240px" });
      this.reliance.el.style.marginTop = "6px";
      this.tokens.el.replaceWith(column);
      column.append(this.tokens.el, this.reliance.el);
      this.reliance.onChange = () => this.repaint();
    }
    const tabBar = h("div", { className: "mmviz-tabs", attrs: { role: "tablist" } });
    for (const [panel, text, view] of [
      ["lens", "Logit lens", this.lens],
      ["projection", "Projection", this.projection],
      ["features", "Features", this.features],
      ["interventions", "Interventions", this.interventions],
    ] as const) {
      if (view === null) continue;
      const tab = button({ className: "mmviz-tab", text, data: { panel }, attrs: { role: "tab" } });
      this.listeners.on(tab, "click", () => store.set({ panel: store.get().panel === panel ? "none" : panel }));
      this.tabs.set(panel, tab);
      tabBar.append(tab);
    }
    this.side = h("div", { className: "mmviz-side" }, tabBar);
    if (this.lens) this.side.append(this.lens.el);
    if (this.projection) this.side.append(this.projection.el);
    if (this.features) {
      this.side.append(this.features.el);
      const features = this.features;
      // A click on a patch holds it for the Features panel, so the pointer can travel to the list.
      for (const v of this.images) {
        this.listeners.on(v.heat.parentElement ?? v.el, "click", () => {
          if (store.get().panel === "features") features.holdPatch();
        });
      }
    }
    if (this.interventions) {
      this.side.append(this.interventions.el);
      const panel = this.interventions;
      panel.onShow = () => this.repaint(); // the strip's Δ bars follow the shown run
      if (this.frameStrip && frameView) panel.showFrame(this.frameStrip.frame, frameView.columns);
      // While the panel is open, a click on a patch of the main image toggles it in the selection (shift: adds).
      for (const v of this.images) {
        this.listeners.on(v.heat.parentElement ?? v.el, "click", (ev) => {
          if (store.get().panel === "interventions") panel.clickPatch((ev as MouseEvent).shiftKey);
        });
        panel.attachRectangle(v, () => store.get().panel === "interventions"); // drag a rectangle: select
      }
      // Drag over the overview's rows: knock the image out of that layer window.
      if (this.overview && live && ivMeta.canRun) {
        this.overview.onLayerWindow = (first, last) => {
          store.set({ panel: "interventions" });
          panel.knockoutWindow(first, last);
        };
      }
    }
    const panels = h("div", { className: "mmviz-panels" });
    if (this.overview) panels.append(this.overview.el);
    if (this.tabs.size > 0) panels.append(this.side);

    this.caption = new Caption(data);
    parent.append(header, body, this.caption.el, panels);
    if (extras !== null) this.listeners.add(extras.subscribe(() => this.arrivals++));
  }

  /** Rebuild the token strip (pieces ↔ words). */
  private rebuildTokens(words: boolean): void {
    const strip = new TokenStrip(this.data, this.store, words);
    this.tokens.el.replaceWith(strip.el);
    this.tokens.dispose();
    this.tokens = strip;
  }

  paint(s: Readonly<ViewState>, m: MethodContext): Frame {
    const { data } = this;
    if (this.tokens.words !== s.words) this.rebuildTokens(s.words);
    this.last = [s, m];
    // A method map with nothing hovered or pinned shows the most image-reliant answer token (when measured).
    const methodMap = s.method && s.method !== ATTENTION ? (m.maps.get(s.method) ?? null) : null;
    const fallback = this.reliance?.defaultFocus(s, methodMap) ?? null;
    const f = this.frames.build(fallback === null ? s : { ...s, hoverToken: fallback }, m);
    const entries = switcherEntries(data, m);
    const info = entries.find((e) => e.info.name === f.method)?.info;
    this.images.forEach((v, i) => {
      v.setView(data.selectedView(i, s.views));
      v.paintHeat(f.map, f.scale, f.map === null ? -1 : (f.rows[0] ?? -1), f.mapKey);
      v.heat.dataset.method = f.map === null ? "" : f.method;
      v.heat.dataset.layer = f.slice?.layer != null ? String(f.slice.layer) : f.attention ? String(f.layer) : "";
      v.heat.dataset.scale = s.scale;
      v.heat.dataset.gamma = String(s.gamma);
      v.setOpacity(s.opacity);
      v.paintOutline(s.hoverPatch);
      const value = s.hoverPatch !== null && f.map !== null ? f.map[s.hoverPatch] : undefined;
      v.paintTooltip(s.hoverPatch, value === undefined ? "" : `${this.patchLabel(s.hoverPatch!)}: ${formatValue(value)}`);
    });

    this.frameStrip?.update(f.map, f.mapKey);
    if (f.methodMap !== null) {
      const map = f.methodMap;
      this.tokens.setRows(`${f.method}|${m.mapsGeneration}`, (pos) => map.hasRow(pos), map.positions.length < data.n);
    } else {
      this.tokens.setRows(f.attention ? "attention" : `none|${f.method}`, (pos) => f.attention && data.rowOf(pos) >= 0, !f.attention);
    }
    // While the Features panel shows a unit, the strip shows that unit's activation at every token instead.
    const tint = s.panel === "features" ? (this.features?.tokenTint(s) ?? null) : null;
    this.tokens.paint({
      hoverToken: s.hoverToken,
      pinnedToken: s.pinnedToken,
      column: tint?.column ?? f.column,
      positions: tint?.positions ?? f.columnPositions,
      scale: tint?.scale ?? f.columnScale,
      key: tint?.key ?? f.columnKey,
    });
    this.tokens.markDefault(fallback);
    // While the Interventions panel is open, a Δ log p bar under every answer chip for the run it shows.
    this.tokens.showDeltas(s.panel === "interventions" ? (this.interventions?.stripDeltas() ?? null) : null);
    if (this.reliance) this.reliance.paintStrip(this.tokens);
    this.legend.update({
      vmax: f.map === null ? null : f.scale.range,
      tokenMax: f.column === null ? null : f.columnScale.range,
      signed: f.scale.signed,
      label: f.attention ? data.meta.map_label : (info?.label ?? f.methodMap?.label ?? f.method),
    });
    this.paintCaption(s, f, m, entries, info);
    const layered = f.attention || (f.methodMap !== null && f.methodMap.layers !== null && f.methodMap.layers.length > 0);
    this.controls.setApplicable(layered, f.attention, f.attention ? "" : "this map does not depend on it");
    this.controls.update(s);
    this.switcher.update(entries, f.method);
    this.paintPanels(s, f);
    return f;
  }

  private patchLabel(p: number): string {
    const g = this.data.grid;
    return g.length === 2 * this.data.P ? `patch (${g[2 * p]}, ${g[2 * p + 1]})` : `patch ${p}`;
  }

  private paintCaption(
    s: Readonly<ViewState>,
    f: Frame,
    m: MethodContext,
    entries: readonly SwitcherEntry[],
    info: MethodInfo | undefined,
  ): void {
    if (f.attention || (f.method === ATTENTION && f.methodMap === null)) {
      this.caption.update({
        state: s,
        focus: f.focus,
        row: f.rows[0] ?? -1,
        vmax: f.scale.range,
        valid: f.attention && this.data.validSelection(f.layer, f.head),
        preview: f.previewing ? { layer: f.layer, head: f.head } : null,
        waiting: f.waiting,
        word: f.focusPositions,
      });
      return;
    }
    const entry = entries.find((e) => e.info.name === f.method);
    const failed = m.failed !== null && m.failed.method === f.method ? m.failed.message : null;
    this.caption.update({
      method: {
        state: s,
        focus: f.focus,
        info: info ?? { name: f.method, label: f.methodMap?.label ?? f.method, meaning: f.methodMap?.meaning ?? "", cost: "fast" },
        map: f.methodMap,
        row: f.rows[0] ?? -1,
        slice: f.slice,
        range: f.scale.range,
        pending: m.pending === f.method,
        failed,
        canCompute: entry?.canCompute ?? false,
        staticPage: !m.kernel,
      },
    });
  }

  private paintPanels(s: Readonly<ViewState>, f: Frame): void {
    this.overview?.update(s, f.focusPositions, this.arrivals);
    for (const [panel, tab] of this.tabs) {
      tab.setAttribute("aria-selected", s.panel === panel ? "true" : "false");
      tab.classList.toggle("mmviz-on", s.panel === panel);
    }
    this.side.dataset.panel = s.panel;
    const extras = this.extras;
    if (this.lens) {
      this.lens.el.hidden = s.panel !== "lens";
      if (s.panel === "lens" && extras) {
        extras.want("lens");
        this.lens.update(s, f.focus, extras.get<LensData>("lens"), extraMessage(extras, "lens", "logit lens"));
      }
    }
    if (this.projection) {
      this.projection.el.hidden = s.panel !== "projection";
      if (s.panel === "projection" && extras) {
        extras.want("projection");
        const data = extras.get<ProjectionData>("projection");
        this.projection.update(s, f.focusPositions, data, extraMessage(extras, "projection", "projection"));
      }
    }
    if (this.features) {
      this.features.el.hidden = s.panel !== "features";
      if (s.panel === "features") this.features.update(s, f.focus);
    }
    if (this.interventions) {
      this.interventions.el.hidden = s.panel !== "interventions";
      if (s.panel === "interventions") this.interventions.update(s, f.map);
    }
  }

  /** The state and methods of the last paint (a reliance measurement arriving repaints with them). */
  private last: [Readonly<ViewState>, MethodContext] | null = null;

  /** Paint again with the last state (something the views show changed outside the store). */
  private repaint(): void {
    if (this.last !== null) this.paint(this.last[0], this.last[1]);
  }

  /** Positions the arrow keys step through: those the drawn map has a row for. */
  rowPositions(f: Frame): number[] {
    if (f.methodMap !== null) return [...new Set(f.methodMap.positions)].sort((a, b) => a - b);
    return [...this.data.queryPositions].sort((a, b) => a - b);
  }

  dispose(): void {
    this.listeners.dispose();
    this.controls.dispose();
    this.switcher.dispose();
    this.tokens.dispose();
    this.overview?.dispose();
    this.lens?.dispose();
    this.projection?.dispose();
    this.features?.dispose();
    this.interventions?.dispose();
    this.reliance?.dispose();
    for (const v of this.images) v.dispose();
    this.frameStrip?.dispose();
  }
}
