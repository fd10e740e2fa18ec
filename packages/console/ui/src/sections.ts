/** Reading combined sections by name (results come from a configurable server: nothing is assumed). */
import type { Section, UiResult } from "./api.ts";
import type { Cell } from "./format.ts";

export function section(result: UiResult | null | undefined, name: string): Section | undefined {
  return result?.sections.find((s) => s.name === name);
}

/** The first row as a name → cell map (the one-row "figures" and "summary" sections). */
export function firstRow(s: Section | undefined): Record<string, Cell> | null {
  const row = s?.rows[0];
  if (!s || !row) return null;
  const out: Record<string, Cell> = Object.create(null);
  s.columns.forEach((c, i) => {
    out[c.name] = row[i] ?? null;
  });
  return out;
}

/** The values of one column (missing column: all null). */
export function column(s: Section, name: string): Cell[] {
  const i = s.columns.findIndex((c) => c.name === name);
  return s.rows.map((r) => (i < 0 ? null : (r[i] ?? null)));
}

/** Rows whose `name` column satisfies `pred`. */
export function rowsWhere(s: Section, name: string, pred: (v: Cell) => boolean): Section["rows"] {
  const i = s.columns.findIndex((c) => c.name === name);
  return i < 0 ? [] : s.rows.filter((r) => pred(r[i] ?? null));
}

/**
 * One side of a drill-down: the rows of a `read` of the intercompany view that name the
 * counterparty. If the answer has a `totebox` column, only the side's own rows count.
 */
export function sideRows(result: UiResult, self: string, counterparty: string) {
  const out: { section: Section; rows: Section["rows"]; total: number }[] = [];
  for (const s of result.sections) {
    const cp = s.columns.findIndex((c) => c.name === "counterparty_entity");
    const tb = s.columns.findIndex((c) => c.name === "totebox");
    const own = tb < 0 ? s.rows : s.rows.filter((r) => r[tb] === self);
    out.push({
      section: s,
      rows: cp < 0 ? own : own.filter((r) => r[cp] === counterparty),
      total: own.length,
    });
  }
  return out;
}
