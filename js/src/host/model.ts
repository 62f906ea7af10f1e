/**
 * The host model contract: what the widget needs from its host, i.e. anywidget's `AnyModel` over the Inspector's
 * synced traits. Jupyter (through anywidget) and the static host (static-host.ts, exported pages and tests)
 * implement it. Every trait is typed `unknown` on purpose: the kernel's values are checked by the protocol
 * parsers (../protocol/), never trusted as typed.
 */

import type { AnyModel } from "@anywidget/types";

/** The synced traits of `mmviz.Inspector` (docs/widget-protocol.md, "Inspector traits"). */
export type WidgetTraits = {
  revision: unknown;
  tokens: unknown;
  token_layout: unknown;
  images: unknown;
  attention_mean: unknown;
  head_stats: unknown;
  meta: unknown;
  layer: unknown;
  head: unknown;
  pinned: unknown;
  error: unknown;
  method: unknown;
  methods: unknown;
  maps: unknown;
  busy: unknown;
  /** Static pages only: the answers a kernel would give to fetch requests, keyed `heads:<layer>`, `lens`, ... */
  prefetched: unknown;
};

export type Model = AnyModel<WidgetTraits>;

/** Does this model have a kernel behind it? The static host (exported pages) says it has none (`kernel: false`). */
export function hasKernel(model: Model): boolean {
  return (model as { kernel?: unknown }).kernel !== false;
}
