/** The method catalogue and the `maps` trait: parsing, rows by position, slices by layer, switcher entries. */

import { describe, expect, it } from "vitest";
import { buildData } from "../src/data";
import { switcherEntries, type MethodContext } from "../src/method-state";
import { costHint, explainsAnswerTokens, MethodMap, optionText, readMaps } from "../src/methods";
import { labelOf, MEAN, parseCatalogue, parseMap as parseMapPayload } from "../src/protocol";
import { catalogueEntry, LAYERED, makeMethodsState, mapEntry, P, RELEVANCY, SIGNED, source, TOKENS } from "./fixtures";
import { int32Bytes } from "./helpers";

const N = TOKENS.length;

/** A `maps` entry as the views use it. */
const parseMap = (name: string, raw: unknown, P: number, n: number): MethodMap => new MethodMap(parseMapPayload(name, raw, P, n));
const parseMaps = readMaps;

describe("parseCatalogue", () => {
  it("keeps the order and fills defaults; attention is always computed", () => {
    const cat = parseCatalogue(makeMethodsState().methods);
    expect(cat.map((m) => m.name)).toEqual(["attention", "relevancy", "signed", "layered", "missing"]);
    expect(cat[0]).toMatchObject({ label: "Attention", computed: true, cost: "instant" });
    expect(cat[2]).toMatchObject({ signed: true, cost: "slow", computed: false, available: true });
    expect(cat[4]!.available).toBe(false);
  });

  it("skips malformed and duplicate entries and tolerates a missing trait", () => {
    expect(parseCatalogue(undefined)).toEqual([]);
    expect(parseCatalogue({ name: "x" })).toEqual([]);
    const cat = parseCatalogue([null, 3, { label: "no name" }, { name: "grad_cam", cost: "weird" }, { name: "grad_cam" }]);
    expect(cat).toHaveLength(1);
    expect(cat[0]).toMatchObject({ name: "grad_cam", label: "Grad cam", cost: "fast", available: true });
    expect(labelOf("logit_lens")).toBe("Logit lens");
  });
});

describe("MethodMap", () => {
  it("finds rows by sequence position, and decodes rows and columns within a quantisation step", () => {
    const m = parseMap("signed", mapEntry(SIGNED, [2, P], [8, 9], { signed: true }), P, N);
    expect([m.R, m.P, m.S]).toEqual([2, P, 1]);
    expect(m.signed).toBe(true);
    expect(m.rowOf(9)).toBe(1);
    expect(m.rowOf(8)).toBe(0);
    expect(m.rowOf(7)).toBe(-1);
    expect(m.hasRow(1)).toBe(false);
    const row = m.row(0, 1);
    row.forEach((v, p) => expect(Math.abs(v - SIGNED[P + p]!)).toBeLessThanOrEqual(2 / 510 + 1e-6));
    const col = m.column(0, 3);
    expect(col[0]).toBeCloseTo(SIGNED[3]!, 2);
    expect(col[1]).toBe(row[3]);
    expect(() => m.row(1, 0)).toThrow(RangeError);
    expect(m.sliceFor(5)).toEqual({ slice: 0, layer: null, exact: true });
  });

  it("picks the slice of the layer, else the nearest one (ties: the later layer)", () => {
    const m = parseMap("layered", mapEntry([...LAYERED, ...LAYERED], [4, 1, P], [9], { layers: [0, 2, 4, 5] }), P, N);
    expect(m.S).toBe(4);
    expect(m.sliceFor(2)).toEqual({ slice: 1, layer: 2, exact: true });
    expect(m.sliceFor(3)).toEqual({ slice: 2, layer: 4, exact: false });
    expect(m.sliceFor(1)).toEqual({ slice: 1, layer: 2, exact: false });
    expect(m.sliceFor(9)).toEqual({ slice: 3, layer: 5, exact: false });
    expect(m.sliceFor(MEAN)).toEqual({ slice: -1, layer: null, exact: true }); // the mean of every slice
    expect(m.row(1, 0)[3]).toBeCloseTo(0.4, 2);
  });

  it("reports entries that break the protocol without dropping the others", () => {
    const good = mapEntry(RELEVANCY, [1, P], [9]);
    const { maps, errors } = parseMaps(
      {
        relevancy: good,
        shape: mapEntry(RELEVANCY, [2, 2], [8, 9]),
        rows: { ...good, positions: int32Bytes([8, 9]) },
        pos: { ...good, positions: int32Bytes([N]) },
        layers: { ...good, layers: "all" },
        nobytes: { ...good, positions: [9] },
        env: { ...good, values: { ...(good.values as object), v: 7 } },
        notadict: 3,
      },
      P,
      N,
    );
    expect([...maps.keys()]).toEqual(["relevancy"]);
    expect(errors).toHaveLength(7);
    expect(errors.join("\n")).toMatch(/maps\.shape\.values has shape \[2, 2\], expected \[2, 4\]/);
    expect(errors.join("\n")).toMatch(/maps\.rows\.values has shape \[1, 4\], expected \[2, 4\]/);
    expect(errors.join("\n")).toMatch(/maps\.pos\.positions holds 10/);
    expect(errors.join("\n")).toMatch(/maps\.layers\.layers must be a list or null/);
    expect(errors.join("\n")).toMatch(/maps\.nobytes\.positions must be bytes/);
    expect(errors.join("\n")).toMatch(/maps\.env\.values: unsupported tensor envelope version 7/);
    expect(errors.join("\n")).toMatch(/maps\.notadict must be a dict/);
    expect(parseMaps(null, P, N).maps.size).toBe(0);
  });

  it("reads whether rows are targets or queries (default: targets)", () => {
    expect(parseMap("r", mapEntry(RELEVANCY, [1, P], [9]), P, N).rows).toBe("targets");
    expect(parseMap("r", { ...mapEntry(RELEVANCY, [1, P], [9]), rows: "queries" }, P, N).rows).toBe("queries");
    expect(parseMap("r", { ...mapEntry(RELEVANCY, [1, P], [9]), rows: 3 }, P, N).rows).toBe("targets");
  });

  it("knows when it explains answer tokens only", () => {
    expect(explainsAnswerTokens(parseMap("r", mapEntry(RELEVANCY, [1, P], [9]), P, N), 9)).toBe(true);
    expect(explainsAnswerTokens(parseMap("s", mapEntry(SIGNED, [2, P], [8, 9]), P, N), 9)).toBe(false);
  });
});

describe("switcher entries", () => {
  const state = makeMethodsState(["relevancy"]);
  const data = buildData(source(state));
  const ctx = (patch: Partial<MethodContext> = {}): MethodContext => ({
    catalogue: parseCatalogue(state.methods),
    maps: parseMaps(state.maps, P, N).maps,
    mapsGeneration: 1,
    pending: null,
    failed: null,
    kernel: true,
    ...patch,
  });

  it("marks computed, computable, pending and unavailable methods", () => {
    const entries = switcherEntries(data, ctx({ pending: "signed" }));
    const by = Object.fromEntries(entries.map((e) => [e.info.name, e]));
    expect(entries.map((e) => e.info.name)).toEqual(["attention", "relevancy", "signed", "layered", "missing"]);
    expect(by.attention).toMatchObject({ computed: true, canCompute: false });
    expect(by.relevancy).toMatchObject({ computed: true, pending: false });
    expect(by.signed).toMatchObject({ computed: false, pending: true, canCompute: true });
    expect(by.layered).toMatchObject({ computed: false, pending: false, canCompute: true });
    expect(by.missing).toMatchObject({ computed: false, canCompute: false });
    expect(optionText(by.relevancy!.info, by.relevancy!)).toBe("Relevancy");
    expect(optionText(by.signed!.info, by.signed!)).toBe("Signed (computing…)");
    expect(optionText(by.layered!.info, by.layered!)).toBe(`Layered (compute · ${costHint("fast")})`);
    expect(optionText(by.missing!.info, by.missing!)).toBe("Missing (needs the model)");
    // a method the family refuses says why, also with a kernel
    const refused = parseCatalogue([catalogueEntry("rollout", { available: false, unavailable: "needs the image at sequence positions" })])[0]!;
    expect(refused.unavailable).toBe("needs the image at sequence positions");
    expect(optionText(refused, { computed: false, pending: false, canCompute: false })).toBe("Rollout (needs the image at sequence positions)");
  });

  it("offers nothing to compute without a kernel, and lists maps the catalogue lacks", () => {
    const extra = parseMaps({ ...(state.maps as object), signed: mapEntry(SIGNED, [2, P], [8, 9], { signed: true, label: "Extra" }) }, P, N).maps;
    const entries = switcherEntries(data, ctx({ kernel: false, catalogue: parseCatalogue([]), maps: extra }));
    expect(entries.map((e) => e.info.name)).toEqual(["relevancy", "signed"]);
    const withCat = switcherEntries(data, ctx({ kernel: false }));
    expect(withCat.filter((e) => e.canCompute)).toEqual([]);
  });

  it("gives cost hints users can act on", () => {
    expect(costHint("instant")).toBe("instant");
    expect(costHint("slow")).toMatch(/minutes/);
  });
});
