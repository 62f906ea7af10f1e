/**
 * The custom messages between the browser and the kernel (`Inspector._on_message`): fetch, compute, clamp,
 * intervene, curve, generate and reliance requests, and their `fetched` / `computed` / `clamped` / `intervened` /
 * `curved` / `generated` / `relied` replies. Every request carries a `request` id and its reply carries it back
 * (channel.ts matches them).
 */

import { putAtPath } from "../codec";
import type { Intervention, Preset } from "./interventions";
import type { Layer } from "./selection";
import { lenientText, type Fields } from "./validate";

/**
 * What the browser can fetch (`meta.extras` says which the kernel serves; `meta.features` whether the Features
 * panel's `neurons` of a layer, `sae` codes and a `unit`'s activation can be).
 */
export type FetchWhat = "heads" | "lens" | "projection" | "neurons" | "sae" | "unit";

/**
 * `{"type": "fetch", "what", "layer"?, "prefetch"?}`: per-head maps of a layer (or `"mean"`), the lens, the
 * projection. `prefetch: true` marks a fetch nobody asked for yet (prefetch.ts), which the kernel may decline
 * (`Inspector.prefetch = False`); it is answered like any fetch.
 */
export interface FetchRequest {
  type: "fetch";
  what: FetchWhat;
  layer?: Layer;
  prefetch?: true;
  /** `what: "unit"`: whose unit (`"neurons"` of `layer`, or `"sae"`) and which. */
  kind?: "neurons" | "sae";
  unit?: number;
}

/** `{"type": "compute", "method"}`: compute a method's map (it arrives through the `maps` trait). */
export interface ComputeRequest {
  type: "compute";
  method: string;
}

/**
 * `{"type": "clamp", "latent", "value"}`: set an SAE latent (0 = off) at every image position; the `clamped`
 * reply carries Δ log p of every answer token as a payload with binary buffers, like a fetch.
 */
export interface ClampRequest {
  type: "clamp";
  latent: number;
  value: number;
}

/**
 * `{"type": "intervene", "intervention"}`: run an ablation or a knockout (kept in the trace); the `intervened` reply's
 * payload is the run (plain JSON, interventions.ts).
 */
export interface InterveneRequest {
  type: "intervene";
  intervention: Intervention;
}

/** `{"type": "curve", "width", "to"}`: the knockout-by-window curve; answered `curved`. */
export interface CurveRequest {
  type: "curve";
  width: number;
  to: Preset;
}

/**
 * `{"type": "generate", "intervention", "max_new_tokens"}`: the greedy answer with the intervention applied (null: the
 * clean model); answered `generated`. Nothing is kept.
 */
export interface GenerateRequest {
  type: "generate";
  intervention: Intervention | null;
  max_new_tokens: number;
}

/** `{"type": "reliance", "baseline"}`: every answer token's image reliance (kept in the trace); answered `relied`. */
export interface RelianceRequest {
  type: "reliance";
  baseline: string;
}

export type Request = FetchRequest | ComputeRequest | ClampRequest | InterveneRequest | CurveRequest | GenerateRequest | RelianceRequest;

/** The reply type the kernel answers each request type with. */
export const REPLY_TYPE = {
  fetch: "fetched",
  compute: "computed",
  clamp: "clamped",
  intervene: "intervened",
  curve: "curved",
  generate: "generated",
  reliance: "relied",
} as const;
export type ReplyType = (typeof REPLY_TYPE)[Request["type"]];

export function fetchRequest(what: FetchWhat, layer?: Layer): FetchRequest {
  return layer === undefined ? { type: "fetch", what } : { type: "fetch", what, layer };
}

/** The fetch of unit `unit` of `kind` (neurons: of decoder `layer`). */
export function unitRequest(kind: "neurons" | "sae", layer: number, unit: number): FetchRequest {
  return kind === "sae" ? { type: "fetch", what: "unit", kind, unit } : { type: "fetch", what: "unit", kind, layer, unit };
}

export function clampRequest(latent: number, value = 0): ClampRequest {
  return { type: "clamp", latent, value };
}

export function computeRequest(method: string): ComputeRequest {
  return { type: "compute", method };
}

/** A reply as it arrives: its content (`{"type", "request", "ok", "error"?, ...}`) and its binary buffers. */
export interface Reply {
  content: Fields;
  buffers: readonly DataView[];
}

/** The request id and type of a custom message, or null when it is not a reply to a request. */
export function replyHeader(content: unknown): { request: string; type: string } | null {
  if (content === null || typeof content !== "object") return null;
  const { request, type } = content as Fields;
  return typeof request === "string" && typeof type === "string" ? { request, type } : null;
}

/** Why the kernel refused a request (`ok` is not true), or null when it succeeded. */
export function replyError(reply: Reply): string | null {
  if (reply.content.ok === true) return null;
  return lenientText(reply.content.error) || "unknown error";
}

/**
 * The payload of a `fetched` (or `clamped`) reply with its byte fields put back from the binary buffers (`buffer_paths[i]` is
 * where buffer i goes, as ipywidgets' `put_buffers`); throws the kernel's error when the fetch failed.
 */
export function fetchedPayload(reply: Reply): unknown {
  const error = replyError(reply);
  if (error !== null) throw new Error(error);
  const { payload, buffer_paths: paths } = reply.content;
  const out = (payload !== null && typeof payload === "object" ? payload : {}) as Record<string, unknown>;
  (Array.isArray(paths) ? paths : []).forEach((path: unknown, i) => {
    const buffer = reply.buffers[i];
    if (Array.isArray(path) && buffer !== undefined) putAtPath(out, path as (string | number)[], buffer);
  });
  return out;
}
