/**
 * The widget protocol (docs/widget-protocol.md), the browser's half: one parser per Python payload function of
 * `mmviz/widget/payloads.py`, file for file, all built on one set of validators (validate.ts) and the tensor
 * codec (../codec.ts). Everything the kernel sends is read here and nowhere else.
 *
 * Python (`payloads.py`, `inspector.py`) → what crosses → parser:
 *
 * - `layout_payload`       → `token_layout` trait      → layout.ts `parseLayout`
 * - `attention_mean`       → `attention_mean` trait    → attention-mean.ts `parseAttentionMean`
 * - `head_stats`           → `head_stats` trait        → head-stats.ts `parseHeadStats`
 * - `heads_payload`        → fetched `heads`           → heads.ts `parseHeads`
 * - `lens_payload`         → fetched `lens`            → lens.ts `parseLens`
 * - `projection_payload`   → fetched `projection`      → projection.ts `parseProjection`
 * - `method_catalogue`     → `methods` trait           → catalogue.ts `parseCatalogue`
 * - `map_payload`          → each entry of `maps`      → map.ts `parseMap` (`parseMaps` over the trait)
 * - `Inspector` itself     → `tokens`, `images`, `meta`, `busy`, `error`, `prefetched` → inspector-traits.ts
 * - `Inspector` selection  → `layer`, `head`, `pinned`, `method` (both ways)          → selection.ts
 * - `Inspector._on_message` → fetch / compute / clamp requests and replies             → messages.ts
 * - `features.features_payload`, `unit_payload`, `clamp_payload` → fetched `neurons` / `sae` / `unit`, `clamped`
 *                                                                   → features.ts
 * - `interventions.run_payload`, `curve_payload`, `generation_payload`, `reliance_payload`, `Interventions.meta`
 *   → `intervened`, `curved`, `generated`, `relied`, `meta.interventions`
 *                                                                   → interventions.ts
 * - `comparison_payload`   → `comparison_data` trait of a ComparisonWidget  → comparison.ts `parseComparison`
 * - `sweep_payload`        → `table_data` trait of a SweepWidget (+ `sort`, `text_filter`, `ranges`, `open`) → sweep.ts
 */

import type { TensorReader } from "../codec";
import { parseAttentionMean } from "./attention-mean";
import { parseHeadStats } from "./head-stats";
import { parseImages, parseMeta, parseTokens, type Meta } from "./inspector-traits";
import { parseLayout, type TokenLayout } from "./layout";

export { parseAttentionMean } from "./attention-mean";
export { labelOf, parseCatalogue, type Cost, type MethodInfo } from "./catalogue";
export { parseHeadStats } from "./head-stats";
export { parseHeads } from "./heads";
export {
  parseBusy,
  parseImages,
  parseKernelError,
  parseMeta,
  parsePrefetched,
  parseTokens,
  parseVideoMeta,
  type Meta,
  type VideoMeta,
} from "./inspector-traits";
export {
  isImageKind,
  KIND_IMAGE,
  KIND_IMAGE_NEWLINE,
  KIND_IMAGE_SEP,
  KIND_QUERY,
  KIND_SPECIAL,
  KIND_TEXT,
  parseLayout,
  type ImageMeta,
  type Rect,
  type TokenLayout,
} from "./layout";
export {
  parseClamp,
  parseFeatures,
  parseFeaturesMeta,
  parseUnit,
  type ClampData,
  type FeatureKind,
  type FeaturesData,
  type FeaturesMeta,
  type UnitCard,
  type UnitData,
} from "./features";
export {
  FILLS,
  parseCurve,
  parseInterventionsMeta,
  parseGeneration,
  parseReliance,
  parseRun,
  PRESETS,
  type CurveData,
  type Fill,
  type GenerationData,
  type Intervention,
  type InterventionsMeta,
  type Preset,
  type RelianceData,
  type RelianceMeta,
  type RunData,
} from "./interventions";
export { parseLens, type LensData } from "./lens";
export { parseMap, parseMaps, type MapPayload, type MapRows } from "./map";
export {
  clampRequest,
  computeRequest,
  fetchedPayload,
  fetchRequest,
  replyError,
  replyHeader,
  REPLY_TYPE,
  unitRequest,
  type ClampRequest,
  type ComputeRequest,
  type CurveRequest,
  type FetchRequest,
  type GenerateRequest,
  type InterveneRequest,
  type RelianceRequest,
  type FetchWhat,
  type Reply,
  type ReplyType,
  type Request,
} from "./messages";
export { parseComparison, type ComparedMethod, type ComparisonData } from "./comparison";
export { parseProjection, type ProjectionData } from "./projection";
export { parseSweepControls, parseSweepTable, type SweepColumn, type SweepControls, type SweepTable } from "./sweep";
export {
  ATTENTION,
  MEAN,
  parseChoice,
  parseMethod,
  parseSelection,
  selectionTraits,
  type Head,
  type Layer,
  type Mean,
  type Selection,
  type SelectionTraits,
} from "./selection";

/** The data traits of the first render, parsed and checked against each other. */
export interface DataTraits {
  tokens: readonly string[];
  layout: TokenLayout;
  imageBytes: readonly Uint8Array[];
  meta: Meta;
  /** `[L, Q, P]`, or null when no attention was recorded. */
  mean: TensorReader | null;
  /** `[2, L, H, Q]`, or null when not sent. */
  headStats: TensorReader | null;
}

/** Read every data trait through `get` (the model's); throws a clear Error when they break the protocol. */
export function parseDataTraits(get: (key: string) => unknown): DataTraits {
  const tokens = parseTokens(get("tokens"));
  // `token_layout`, not `layout`: ipywidgets' own `layout` trait is the DOM box's.
  const layout = parseLayout(get("token_layout"), tokens.length);
  const Q = layout.queryPositions.length;
  const P = layout.imagePositions.length;
  const mean = parseAttentionMean(get("attention_mean"), Q, P);
  return {
    tokens,
    layout,
    imageBytes: parseImages(get("images")),
    meta: parseMeta(get("meta")),
    mean,
    headStats: parseHeadStats(get("head_stats"), mean?.shape[0] ?? null, Q),
  };
}
