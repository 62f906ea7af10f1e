/**
 * The method side of one view: the parsed `methods` catalogue and `maps` trait, which method is shown and what
 * was asked of the kernel. What changes over time lives in the view's store (`method`, and `compute`: the pending
 * request, its failure and the method to go back to); this class reads the traits and turns a pick in the
 * switcher into a store change and, for a method not computed yet, a compute request (compute.ts).
 */

import type { Channel } from "./channel";
import { ComputeRequests, COMPUTE_TIMEOUT_MS } from "./compute";
import type { WidgetData } from "./data";
import { hasKernel, type Model } from "./host/model";
import { readMaps, type MethodMap } from "./methods";
import { ATTENTION, parseBusy, parseCatalogue, type MethodInfo } from "./protocol";
import type { ComputeStatus, Store } from "./store";
import type { SwitcherEntry } from "./views/method-switcher";

/** What the methods side of a view knows (catalogue, parsed maps, compute state), for one paint. */
export interface MethodContext {
  catalogue: readonly MethodInfo[];
  maps: ReadonlyMap<string, MethodMap>;
  /** Bumped whenever `maps` is re-parsed (part of the memo keys). */
  mapsGeneration: number;
  /** The method being computed (this view's request or the kernel's `busy`), or null. */
  pending: string | null;
  /** The last failed request. */
  failed: ComputeStatus["failed"];
  /** A kernel is there to compute methods and fetch extras (false on a static export). */
  kernel: boolean;
}

export const NO_METHODS: MethodContext = {
  catalogue: [],
  maps: new Map(),
  mapsGeneration: 0,
  pending: null,
  failed: null,
  kernel: false,
};

/** Is `name` drawable now: attention (with attention data) or a map `maps` holds? */
function isComputed(name: string, data: WidgetData | null, maps: ReadonlyMap<string, MethodMap>): boolean {
  return (name === ATTENTION && data?.hasAttention === true) || maps.has(name);
}

/** The switcher's entries: the catalogue, then computed maps it does not list; attention first if absent. */
export function switcherEntries(data: WidgetData, m: MethodContext): SwitcherEntry[] {
  const infos: MethodInfo[] = [...m.catalogue];
  if (infos.length > 0 && data.hasAttention && !infos.some((i) => i.name === ATTENTION)) {
    infos.unshift({
      name: ATTENTION,
      label: "Attention",
      meaning: data.meta.map_description,
      signed: false,
      layered: true,
      cost: "instant",
      computed: true,
      available: true,
      unavailable: "",
    });
  }
  for (const [name, map] of m.maps) {
    if (infos.some((i) => i.name === name)) continue;
    infos.push({
      name,
      label: map.label,
      meaning: map.meaning,
      signed: map.signed,
      layered: map.layers !== null,
      cost: "fast",
      computed: true,
      available: false,
      unavailable: "",
    });
  }
  return infos.map((info) => {
    const computed = isComputed(info.name, data, m.maps);
    return {
      info,
      computed,
      pending: !computed && m.pending === info.name,
      canCompute: !computed && m.kernel && info.available,
    };
  });
}

export class MethodState {
  private catalogue: MethodInfo[] = [];
  private maps: ReadonlyMap<string, MethodMap> = new Map();
  /** One message per `maps` entry that breaks the protocol. */
  private mapErrors: string[] = [];
  private generation = 0;
  private data: WidgetData | null = null;
  private readonly compute: ComputeRequests;

  constructor(
    private readonly model: Model,
    private readonly store: Store,
    channel: Channel,
    computeTimeoutMs = COMPUTE_TIMEOUT_MS,
  ) {
    this.compute = new ComputeRequests(channel, store, computeTimeoutMs, (method) => {
      // Show the previous map again, so the failed method can be picked (and asked for) again.
      const s = store.get();
      if (s.method === method && !this.maps.has(method)) store.set({ method: s.compute.returnTo });
    });
  }

  /** Re-read the `methods` and `maps` traits; maps are checked against `data` (none without data). */
  read(data: WidgetData | null): void {
    this.data = data;
    this.catalogue = parseCatalogue(this.model.get("methods"));
    const parsed = data ? readMaps(this.model.get("maps"), data.P, data.n) : { maps: new Map<string, MethodMap>(), errors: [] };
    this.maps = parsed.maps;
    this.mapErrors = parsed.errors;
    this.generation += 1;
  }

  /** Everything a paint needs to know about methods. */
  context(): MethodContext {
    const { compute } = this.store.get();
    return {
      catalogue: this.catalogue,
      maps: this.maps,
      mapsGeneration: this.generation,
      pending: compute.pending ?? parseBusy(this.model.get("busy")),
      failed: compute.failed,
      kernel: hasKernel(this.model),
    };
  }

  /** The user picked `name` in the switcher: show it, and ask the kernel for it when it can be computed. */
  pick(name: string): void {
    const current = this.store.get().method;
    this.compute.clearFailure();
    if (name === current) return;
    const info = this.catalogue.find((i) => i.name === name);
    const ask = !isComputed(name, this.data, this.maps) && info !== undefined && info.available && hasKernel(this.model);
    this.store.set({ method: name });
    if (ask) this.compute.request(name, current);
  }

  /** What the error box says about methods: malformed maps, and the last failed request. */
  errors(): string[] {
    const { failed } = this.store.get().compute;
    if (failed === null) return this.mapErrors;
    const label = this.catalogue.find((i) => i.name === failed.method)?.label ?? failed.method;
    return [...this.mapErrors, `mmviz: could not compute ${label}: ${failed.message}`];
  }

  dispose(): void {
    this.compute.dispose();
  }
}
