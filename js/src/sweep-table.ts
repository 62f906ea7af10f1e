/**
 * The sweep table's logic, with no DOM: which rows a filter keeps and in what order (the same rules as Python's
 * `mmviz.widget.sweep.visible_rows`), the value shown in a cell, and the sparkline of a row's per-layer profile.
 */

import type { SweepColumn, SweepControls, SweepTable } from "./protocol/sweep";

/**
 * The rows `controls` keep, in their order. A row is kept when every ranged column's value lies in `[low, high]`
 * (a missing value never does) and, for a non-empty text filter, one of its text cells or its error contains it
 * (case ignored). Sorting is stable; missing numbers are last in either direction.
 */
export function visibleRows(table: SweepTable, controls: SweepControls): number[] {
  const byName = new Map(table.columns.map((c) => [c.name, c]));
  const needle = controls.textFilter.trim().toLowerCase();
  const texts = table.columns.filter((c): c is Extract<SweepColumn, { kind: "text" }> => c.kind === "text");
  const kept: number[] = [];
  for (let row = 0; row < table.n; row++) {
    let ok = true;
    for (const [name, [low, high]] of Object.entries(controls.ranges)) {
      const column = byName.get(name);
      if (column === undefined || column.kind !== "number") continue;
      const v = column.values[row]!;
      if (Number.isNaN(v) || (low !== null && v < low) || (high !== null && v > high)) {
        ok = false;
        break;
      }
    }
    if (ok && needle !== "") {
      const cells = [...texts.map((c) => c.values[row]!), table.errors[row]!];
      ok = cells.some((cell) => cell.toLowerCase().includes(needle));
    }
    if (ok) kept.push(row);
  }
  const column = byName.get(controls.sort.column);
  if (column === undefined) return kept;
  const sign = controls.sort.descending ? -1 : 1;
  if (column.kind === "number") {
    const present = kept.filter((r) => !Number.isNaN(column.values[r]!));
    const missing = kept.filter((r) => Number.isNaN(column.values[r]!));
    present.sort((a, b) => sign * (column.values[a]! - column.values[b]!));
    return [...present, ...missing];
  }
  return kept.sort((a, b) => {
    const x = column.values[a]!;
    const y = column.values[b]!;
    return x === y ? 0 : sign * (x < y ? -1 : 1);
  });
}

/** The text of a number cell: 3 significant digits, `—` for a missing value. */
export function formatCell(value: number): string {
  if (Number.isNaN(value)) return "—";
  if (value !== 0 && (Math.abs(value) >= 1e4 || Math.abs(value) < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(3)).toString();
}

/** The sort after a click on `column`'s header: ascending first, then the other direction. */
export function nextSort(current: SweepControls["sort"], column: string): SweepControls["sort"] {
  return current.column === column ? { column, descending: !current.descending } : { column, descending: false };
}

/**
 * The SVG polyline points of a row's profile in a `width × height` box (missing entries break nothing: they are
 * skipped); `""` when the row has no finite entry.
 */
export function sparklinePoints(values: ArrayLike<number>, width: number, height: number): string {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (Number.isFinite(v)) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  if (!Number.isFinite(lo)) return "";
  const span = hi > lo ? hi - lo : 1;
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points: string[] = [];
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isFinite(v)) continue;
    const y = hi > lo ? height - ((v - lo) / span) * height : height / 2;
    points.push(`${(i * step).toFixed(1)},${y.toFixed(1)}`);
  }
  return points.join(" ");
}
