import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initArchive, openArchive } from "./archive.ts";
import { ToteboxError } from "./errors.ts";
import {
  IMPORT_COLUMNS,
  type ImportFormat,
  type ImportKind,
  type ImportLimits,
  type ImportResult,
  importFile,
  importText,
  parseCsv,
} from "./import.ts";
import { addAccounts, addCounterparties, appendTransaction, readTransaction, verifyChain } from "./ledger.ts";
import type { Db } from "./schema.ts";

/**
 * Fuzzing of CSV / JSONL imports (issue 8, "bad input everywhere") against real archives: every
 * refusal is a ToteboxError with an import code (and the 1-based line of the first bad row when
 * a row is to blame), nothing of a refused file is applied and the hash chain still verifies, and
 * every row of an accepted file is in the archive. One archive serves a property until a file is
 * accepted; then the next case gets a fresh copy of the template archive. Reproduce a failure
 * with FC_SEED=<logged seed>.
 */
const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);
const RUNS = 250;
/** A case slower than this is a hang: the files here are at most a few tens of KB. */
const MAX_CASE_MS = 5000;
const CREATED_AT = "2024-06-01T00:00:00.000Z";
const IMPORT_CODES = ["TOTEBOX_ERR_IMPORT_ROW", "TOTEBOX_ERR_IMPORT_FORMAT", "TOTEBOX_ERR_IMPORT_LIMIT"];
const KINDS: readonly ImportKind[] = ["journal", "units", "leases"];
const FORMATS: readonly ImportFormat[] = ["csv", "jsonl"];

// The template archive: a chart of accounts, a vendor and a tenant, property p1 with units
// u1..u8 (leases need units), and one journal entry (so an import can collide with it).
const ACCOUNTS = ["1000", "1100", "4000", "6000"];
const UNITS = ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"];
const P1_NAME = "Elm Court";
const RECORDED_TX = "seed-1";
const OLD_TENANT = "t-old";

let root: string;
let template: string;

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "totebox-import-fuzz-"));
  template = path.join(root, "template");
  await initArchive({
    dir: template,
    id: "fuzz",
    kind: "property",
    name: "Fuzz Holdings",
    created: CREATED_AT,
  });
  const { db } = await openArchive(template);
  addAccounts(db, [
    { code: "1000", name: "Cash", class: "asset", subtype: "cash" },
    { code: "1100", name: "Rent receivable", class: "asset", subtype: "receivable" },
    { code: "4000", name: "Rental income", class: "income", subtype: "rent" },
    { code: "6000", name: "Repairs", class: "expense", subtype: "operating" },
  ]);
  addCounterparties(db, [
    { id: "v1", name: "Acme Plumbing", kind: "vendor" },
    { id: OLD_TENANT, name: "Old Tenant", kind: "tenant" },
  ]);
  importText(
    db,
    [
      "property_id,property_name,unit_id,unit_type,area_sqm",
      ...UNITS.map((u) => `p1,${P1_NAME},${u},1br,50`),
    ].join("\n"),
    { kind: "units", format: "csv" },
  );
  appendTransaction(db, {
    id: RECORDED_TX,
    date: "2024-01-01",
    createdAt: CREATED_AT,
    lines: [
      { account: "1000", amount: 5 },
      { account: "4000", amount: -5 },
    ],
  });
  db.close();
});

afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Archives and oracles

interface Snapshot {
  tx: number;
  lines: number;
  daily: number;
  dailyLines: number;
  dailyAmount: number;
  properties: number;
  units: number;
  leases: number;
  counterparties: number;
  head: string;
}

const SNAPSHOT_SQL = `SELECT
  (SELECT count(*) FROM journal_tx) AS tx,
  (SELECT count(*) FROM journal_lines) AS lines,
  (SELECT count(*) FROM journal_daily_totals) AS daily,
  (SELECT coalesce(sum(lines), 0) FROM journal_daily_totals) AS dailyLines,
  (SELECT coalesce(sum(amount), 0) FROM journal_daily_totals) AS dailyAmount,
  (SELECT count(*) FROM properties) AS properties,
  (SELECT count(*) FROM units) AS units,
  (SELECT count(*) FROM leases) AS leases,
  (SELECT count(*) FROM counterparties) AS counterparties,
  coalesce((SELECT hash FROM journal_tx ORDER BY seq DESC LIMIT 1), '') AS head`;

const snapshot = (db: Db): Snapshot => db.prepare<[], Snapshot>(SNAPSHOT_SQL).get()!;

let archiveCount = 0;

/** One archive for a property's cases, replaced by a fresh copy of the template after an accepted import. */
class Arena {
  db!: Db;
  dir = "";
  baseline!: Snapshot;
  fresh = 0;
  accepted = 0;
  refused = 0;
  slowestMs = 0;

  async reset(): Promise<void> {
    this.close();
    this.dir = path.join(root, `archive-${archiveCount++}`);
    fs.cpSync(template, this.dir, { recursive: true });
    this.db = (await openArchive(this.dir)).db;
    this.baseline = snapshot(this.db);
    this.fresh++;
  }

  close(): void {
    if (this.db?.open) this.db.close();
    if (this.dir !== "") fs.rmSync(this.dir, { recursive: true, force: true });
  }

  stats(): Record<string, number> {
    return {
      accepted: this.accepted,
      refused: this.refused,
      freshArchives: this.fresh,
      slowestMs: Math.round(this.slowestMs),
    };
  }
}

type Outcome = { result: ImportResult } | { error: ToteboxError };

/** Runs one import; anything thrown but a ToteboxError fails the case, as does a slow case. */
function attempt(arena: Arena, run: (db: Db) => ImportResult): Outcome {
  const started = performance.now();
  let outcome: Outcome;
  try {
    outcome = { result: run(arena.db) };
  } catch (e) {
    if (!(e instanceof ToteboxError)) throw e;
    outcome = { error: e };
  }
  const ms = performance.now() - started;
  arena.slowestMs = Math.max(arena.slowestMs, ms);
  expect(ms, "one import").toBeLessThan(MAX_CASE_MS);
  expect(arena.db.inTransaction, "no transaction left open").toBe(false);
  return outcome;
}

/** Physical lines of a file as the importer counts them (CSV: CR, LF and CRLF; JSONL: LF). */
function lineCount(text: string, format: ImportFormat): number {
  return (format === "csv" ? text.match(/\r\n|\r|\n/g) : text.match(/\n/g))?.length ?? 0;
}

/** A refusal: an import code, a line inside the file when there is one, and nothing applied. */
function checkRefused(arena: Arena, e: ToteboxError, text: string, format: ImportFormat): void {
  arena.refused++;
  expect(IMPORT_CODES, e.message).toContain(e.code);
  if (e.code === "TOTEBOX_ERR_IMPORT_ROW") expect(e.detail?.line, e.message).toBeDefined();
  if (e.detail?.line !== undefined) {
    const line = e.detail.line;
    expect(Number.isInteger(line) && (line as number) >= 1, e.message).toBe(true);
    expect(line as number, e.message).toBeLessThanOrEqual(lineCount(text, format) + 1);
  }
  expect(snapshot(arena.db), "a refused file changes nothing").toEqual(arena.baseline);
  expect(verifyChain(arena.db).ok).toBe(true);
}

type Value = string | number | boolean | null;

/** The file's rows as an independent reader sees them (used only for accepted files). */
function rowsOf(text: string, format: ImportFormat): Record<string, Value>[] {
  if (format === "csv") {
    const [header, ...records] = parseCsv(text);
    return records.map((r) =>
      Object.fromEntries((header?.fields ?? []).map((h, i) => [h, r.fields[i] ?? null])),
    );
  }
  return text
    .replace(/^\uFEFF/, "")
    .split("\n")
    .map((l) => l.replace(/\r$/, ""))
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as Record<string, Value>);
}

const orNull = (v: Value | undefined): Value => (v === undefined || v === "" ? null : v);

/** An accepted file: counts moved by exactly the result, and every row of the file is in the archive. */
async function checkAccepted(
  arena: Arena,
  kind: ImportKind,
  text: string,
  format: ImportFormat,
  result: ImportResult,
): Promise<void> {
  arena.accepted++;
  const db = arena.db;
  const rows = rowsOf(text, format);
  expect(result.rows).toBe(rows.length);
  const now = snapshot(db);
  const was = arena.baseline;
  expect({
    tx: now.tx - was.tx,
    lines: now.lines - was.lines,
    dailyLines: now.dailyLines - was.dailyLines,
    properties: now.properties - was.properties,
    units: now.units - was.units,
    leases: now.leases - was.leases,
    counterparties: now.counterparties - was.counterparties,
  }).toEqual({
    tx: result.transactions,
    lines: result.lines,
    dailyLines: result.lines,
    properties: result.properties,
    units: result.units,
    leases: result.leases,
    counterparties: result.tenants,
  });
  expect(verifyChain(db).ok).toBe(true);
  if (kind === "journal") {
    expect(result.lines).toBe(rows.length);
    let i = 0;
    while (i < rows.length) {
      const id = String(rows[i]!.tx_id);
      const group: Record<string, Value>[] = [];
      while (i < rows.length && String(rows[i]!.tx_id) === id) group.push(rows[i++]!);
      const tx = readTransaction(db, { id });
      expect(tx, `transaction ${id}`).toBeDefined();
      expect(tx!.date).toBe(group[0]!.date);
      expect(tx!.lines.map((l) => [l.account, l.counterparty, l.amount, l.memo])).toEqual(
        group.map((r) => [r.account, orNull(r.counterparty), Number(r.amount), orNull(r.memo) ?? ""]),
      );
    }
  } else if (kind === "units") {
    expect(result.units).toBe(rows.length);
    const get = db.prepare<
      [string],
      { property_id: string; unit_type: string; area_sqm: number; market_rent: number }
    >("SELECT property_id, unit_type, area_sqm, market_rent FROM units WHERE id = ?");
    for (const r of rows) {
      expect(get.get(String(r.unit_id)), String(r.unit_id)).toEqual({
        property_id: r.property_id,
        unit_type: r.unit_type,
        area_sqm: Number(r.area_sqm),
        market_rent: orNull(r.market_rent) === null ? null : Number(r.market_rent),
      });
    }
  } else {
    expect(result.leases).toBe(rows.length);
    const get = db.prepare<
      [string],
      {
        unit_id: string;
        tenant_id: string;
        start_date: string;
        end_date: string | null;
        monthly_rent: number;
      }
    >("SELECT unit_id, tenant_id, start_date, end_date, monthly_rent FROM leases WHERE id = ?");
    for (const r of rows) {
      expect(get.get(String(r.lease_id)), String(r.lease_id)).toEqual({
        unit_id: r.unit_id,
        tenant_id: r.tenant_id,
        start_date: r.start_date,
        end_date: orNull(r.end_date),
        monthly_rent: Number(r.monthly_rent),
      });
    }
  }
  await arena.reset();
}

async function checkOutcome(
  arena: Arena,
  outcome: Outcome,
  kind: ImportKind,
  text: string,
  format: ImportFormat,
): Promise<void> {
  if ("error" in outcome) checkRefused(arena, outcome.error, text, format);
  else await checkAccepted(arena, kind, text, format, outcome.result);
}

// ---------------------------------------------------------------------------------------------
// Valid files: a model (header + rows of cells) and its rendering

/** A cell: a value, or text written into the CSV verbatim (no quoting). */
type Cell = Value | { raw: string };

interface Row {
  cells: Record<string, Cell | undefined>;
  /** CSV: one field too many or too few. */
  fields?: "more" | "fewer";
  /** JSONL: the whole line, verbatim. */
  json?: string;
}

interface Model {
  kind: ImportKind;
  header: string[];
  rows: Row[];
  /** Index of the first row of each journal transaction, per row. */
  txStart: number[];
}

interface Style {
  eol: "\n" | "\r\n" | "\r";
  bom: boolean;
  trailing: boolean;
  alwaysQuote: boolean;
  /** Rows preceded by a blank line. */
  blankBefore: number[];
  blank: string;
  numbersAsStrings: boolean;
  explicitNulls: boolean;
}

const NUMERIC = new Set(["amount", "area_sqm", "market_rent", "monthly_rent"]);

function renderCsv(m: Model, s: Style): { text: string; lines: number[] } {
  const cell = (v: Cell | undefined): string => {
    if (v === undefined || v === null) return "";
    if (typeof v === "object") return v.raw;
    const t = String(v);
    return s.alwaysQuote || /[",\r\n]/.test(t) ? `"${t.replaceAll('"', '""')}"` : t;
  };
  const out = [m.header.join(",")];
  const lines: number[] = [];
  let line = 2;
  for (const [i, row] of m.rows.entries()) {
    if (s.blankBefore.includes(i)) {
      out.push("");
      line++;
    }
    const fields = m.header.map((h) => cell(row.cells[h]));
    if (row.fields === "more") fields.push("extra");
    if (row.fields === "fewer") fields.pop();
    const record = fields.join(",");
    lines.push(line);
    out.push(record);
    line += 1 + (record.match(/\r\n|\r|\n/g)?.length ?? 0);
  }
  return { text: (s.bom ? "\uFEFF" : "") + out.join(s.eol) + (s.trailing ? s.eol : ""), lines };
}

function renderJsonl(m: Model, s: Style): { text: string; lines: number[] } {
  const eol = s.eol === "\r" ? "\n" : s.eol;
  const out: string[] = [];
  const lines: number[] = [];
  for (const [i, row] of m.rows.entries()) {
    if (s.blankBefore.includes(i)) out.push(s.blank);
    lines.push(out.length + 1);
    const obj: Record<string, Value> = {};
    for (const h of m.header) {
      const v = row.cells[h];
      if (v === undefined || (v === null && !s.explicitNulls)) continue;
      if (v !== null && typeof v === "object") obj[h] = v.raw;
      else obj[h] = s.numbersAsStrings && NUMERIC.has(h) && typeof v === "number" ? String(v) : v;
    }
    out.push(row.json ?? JSON.stringify(obj));
  }
  return { text: (s.bom ? "\uFEFF" : "") + out.join(eol) + (s.trailing ? eol : ""), lines };
}

const render = (m: Model, format: ImportFormat, s: Style) =>
  format === "csv" ? renderCsv(m, s) : renderJsonl(m, s);

const pad = (n: number, w: number) => String(n).padStart(w, "0");
const dateArb = fc.oneof(
  fc
    .tuple(
      fc.integer({ min: 1, max: 9999 }),
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 1, max: 28 }),
    )
    .map(([y, m, d]) => `${pad(y, 4)}-${pad(m, 2)}-${pad(d, 2)}`),
  fc.constantFrom("2024-02-29", "2000-02-29", "9999-12-31", "0001-01-01", "2023-12-31"),
);
const text = (maxLength: number) =>
  fc.string({
    unit: fc.constantFrom(
      "a",
      "b",
      "Z",
      "0",
      " ",
      ",",
      '"',
      "'",
      "\n",
      "\r",
      "\t",
      ";",
      "é",
      "🏠",
      "\\",
      "{",
    ),
    maxLength,
  });
/** Text that survives being a required field (not empty, not only read as null). */
const nonEmpty = (maxLength: number) => text(maxLength).map((t) => `n${t}`);

/** Columns in a random order: every required one, some optional ones. */
function headerArb(kind: ImportKind, force: readonly string[] = []): fc.Arbitrary<string[]> {
  const { required, optional } = IMPORT_COLUMNS[kind];
  return fc.subarray(optional.filter((c) => !force.includes(c))).chain((opt) => {
    const cols = [...required, ...force, ...opt];
    return fc.shuffledSubarray(cols, { minLength: cols.length, maxLength: cols.length });
  });
}

const restrict = (header: readonly string[], cells: Record<string, Cell>): Record<string, Cell | undefined> =>
  Object.fromEntries(header.map((h) => [h, cells[h]]));

const journalModel: fc.Arbitrary<Model> = fc
  .record({
    header: headerArb("journal"),
    txs: fc.array(
      fc.record({
        date: dateArb,
        lines: fc.array(
          fc.record({
            account: fc.constantFrom(...ACCOUNTS),
            amount: fc.integer({ min: -1e12, max: 1e12 }),
            counterparty: fc.option(fc.constant("v1"), { nil: null }),
            memo: text(12),
          }),
          { minLength: 1, maxLength: 3 },
        ),
      }),
      { minLength: 1, maxLength: 5 },
    ),
  })
  .map(({ header, txs }) => {
    const rows: Row[] = [];
    const txStart: number[] = [];
    for (const [t, tx] of txs.entries()) {
      const sum = tx.lines.reduce((s, l) => s + l.amount, 0);
      const start = rows.length;
      for (const l of [...tx.lines, { account: "1000", amount: -sum, counterparty: null, memo: "" }]) {
        txStart.push(start);
        rows.push({ cells: restrict(header, { tx_id: `tx-${t}`, date: tx.date, ...l }) });
      }
    }
    return { kind: "journal" as const, header, rows, txStart };
  });

const area = fc
  .tuple(
    fc.integer({ min: 0, max: 9_999_999 }),
    fc.option(fc.integer({ min: 1, max: 999_999 }), { nil: null }),
  )
  .filter(([i, f]) => i > 0 || f !== null)
  .map(([i, f]) => (f === null ? `${i}` : `${i}.${pad(f, 6).replace(/0+$/, "")}`));

const unitsModel: fc.Arbitrary<Model> = fc
  .record({
    header: headerArb("units"),
    rows: fc.array(
      fc.record({
        property: fc.nat({ max: 3 }),
        named: fc.boolean(),
        type: fc.option(fc.constantFrom("residential", "office", "retail", "industrial", "mixed"), {
          nil: null,
        }),
        unitType: fc.oneof(nonEmpty(10), fc.constant("x".repeat(64))),
        area,
        areaAsNumber: fc.boolean(),
        rent: fc.option(fc.integer({ min: 0, max: 1e9 }), { nil: null }),
      }),
      { minLength: 1, maxLength: 8 },
    ),
  })
  .map(({ header, rows }) => {
    const seen = new Set<string>(["p1"]);
    const out: Row[] = rows.map((r, i) => {
      const id = r.property === 0 ? "p1" : `pn-${r.property}`;
      const first = !seen.has(id);
      seen.add(id);
      const name = id === "p1" ? P1_NAME : `Property ${r.property}, "new"`;
      // A new property needs its name on its first row: give it there even if the header lacked
      // the column (added below); later rows may repeat it or leave it out.
      return {
        cells: {
          property_id: id,
          property_name: first || r.named ? name : null,
          property_type: r.type,
          unit_id: `un-${i}`,
          unit_type: r.unitType,
          area_sqm: r.areaAsNumber ? Number(r.area) : r.area,
          market_rent: r.rent,
        },
      };
    });
    const needsName = out.some((r) => r.cells.property_id !== "p1");
    const h = needsName && !header.includes("property_name") ? [...header, "property_name"] : header;
    return {
      kind: "units" as const,
      header: h,
      rows: out.map((r) => ({ cells: restrict(h, r.cells as Record<string, Cell>) })),
      txStart: [],
    };
  });

const leasesModel: fc.Arbitrary<Model> = fc
  .record({
    header: headerArb("leases"),
    units: fc.shuffledSubarray(UNITS, { minLength: 1, maxLength: UNITS.length }),
    leases: fc.array(
      fc.record({
        tenant: fc.nat({ max: 3 }),
        start: fc.tuple(
          fc.integer({ min: 1, max: 9990 }),
          fc.integer({ min: 1, max: 12 }),
          fc.integer({ min: 1, max: 28 }),
        ),
        years: fc.option(fc.nat({ max: 9 }), { nil: null }),
        rent: fc.integer({ min: 0, max: 1e9 }),
        rentAsString: fc.boolean(),
      }),
      { minLength: UNITS.length, maxLength: UNITS.length },
    ),
  })
  .map(({ header, units, leases }) => {
    const seen = new Set<string>([OLD_TENANT]);
    const rows: Row[] = units.map((unit, i) => {
      const l = leases[i]!;
      const tenant = l.tenant === 0 ? OLD_TENANT : `tn-${l.tenant}`;
      const first = !seen.has(tenant);
      seen.add(tenant);
      const [y, m, d] = l.start;
      return {
        cells: {
          lease_id: `l-${i}`,
          unit_id: unit,
          tenant_id: tenant,
          tenant_name: first ? `Tenant ${l.tenant}, Ltd` : null,
          start_date: `${pad(y, 4)}-${pad(m, 2)}-${pad(d, 2)}`,
          end_date: l.years === null ? null : `${pad(y + l.years, 4)}-${pad(m, 2)}-${pad(d, 2)}`,
          monthly_rent: l.rentAsString ? String(l.rent) : l.rent,
        },
      };
    });
    const needsName = rows.some((r) => r.cells.tenant_name !== null);
    const h = needsName && !header.includes("tenant_name") ? [...header, "tenant_name"] : header;
    return {
      kind: "leases" as const,
      header: h,
      rows: rows.map((r) => ({ cells: restrict(h, r.cells as Record<string, Cell>) })),
      txStart: [],
    };
  });

const modelOf = (kind: ImportKind): fc.Arbitrary<Model> =>
  kind === "journal" ? journalModel : kind === "units" ? unitsModel : leasesModel;

const styleArb: fc.Arbitrary<Style> = fc.record({
  eol: fc.constantFrom("\n" as const, "\r\n" as const, "\r" as const),
  bom: fc.boolean(),
  trailing: fc.boolean(),
  alwaysQuote: fc.boolean(),
  blankBefore: fc.array(fc.nat({ max: 8 }), { maxLength: 3 }),
  blank: fc.constantFrom("", "   ", "\t"),
  numbersAsStrings: fc.boolean(),
  explicitNulls: fc.boolean(),
});

const kindFormat = fc.tuple(fc.constantFrom(...KINDS), fc.constantFrom(...FORMATS));

// ---------------------------------------------------------------------------------------------
// Targeted mutations: each makes one known row the first bad one

interface Targeted {
  name: string;
  model: Model;
  /** Expected 1-based line, from the rendered rows' lines. */
  line: (rows: number[]) => number;
  code?: "TOTEBOX_ERR_IMPORT_LIMIT";
  limits?: Partial<ImportLimits>;
  /** Only for this format. */
  only?: ImportFormat;
}

const BAD_DATES = [
  "2024-02-30",
  "2023-02-29",
  "0000-01-01",
  "10000-01-01",
  "2024-13-01",
  "2024-00-10",
  "24-01-01",
  "2024/01/01",
  " 2024-01-01",
  "2024-01-01T00:00",
  "２０２４-01-01",
];
const BAD_INTEGERS = [
  "1.5",
  "1e3",
  "0x10",
  " 12",
  "12 ",
  "+5",
  "99999999999999999",
  "abc",
  "١٢",
  "−5",
  "--1",
  "1,000",
];
const BAD_AREAS = [
  "0",
  "-4",
  "1e3",
  "10000001",
  "abc",
  "",
  "1.1234567",
  " 5",
  "0x10",
  "NaN",
  "Infinity",
  "1.",
];
const TEXT_COLUMNS: Record<ImportKind, readonly string[]> = {
  journal: ["tx_id", "account", "memo", "counterparty"],
  units: ["property_id", "unit_id", "unit_type", "property_name"],
  leases: ["lease_id", "unit_id", "tenant_id", "tenant_name"],
};

const clone = (m: Model): Model => ({
  ...m,
  header: [...m.header],
  rows: m.rows.map((r) => ({ ...r, cells: { ...r.cells } })),
});

/** Sets a cell, adding the column to the header when the file lacks it. */
function setCell(m: Model, row: number, col: string, v: Cell): void {
  if (!m.header.includes(col)) m.header.push(col);
  m.rows[row]!.cells[col] = v;
}

function targeted(kind: ImportKind): fc.Arbitrary<Targeted> {
  return fc
    .record({ model: modelOf(kind), pick: fc.nat(), pick2: fc.nat(), which: fc.nat() })
    .map(({ model: base, pick, pick2, which }): Targeted => {
      const m = clone(base);
      const n = m.rows.length;
      const k = pick % n;
      const at = (row: number) => (lines: number[]) => lines[row]!;
      const choose = <T>(xs: readonly T[], i = pick2): T => xs[i % xs.length]!;
      const textCol = choose(TEXT_COLUMNS[kind].filter((c) => m.header.includes(c)));
      const withText = (insert: string): Cell => {
        const v = m.rows[k]!.cells[textCol];
        const s = typeof v === "string" && v !== "" ? v : "x";
        const i = pick2 % (s.length + 1);
        return s.slice(0, i) + insert + s.slice(i);
      };
      const common: (() => Targeted)[] = [
        () => {
          setCell(m, k, textCol, withText("\u0000"));
          return { name: `NUL in ${textCol}`, model: m, line: at(k) };
        },
        () => {
          setCell(m, k, textCol, withText("\uD800"));
          return { name: `unpaired surrogate in ${textCol}`, model: m, line: at(k) };
        },
        () => {
          setCell(m, k, choose(m.header), "x".repeat(9000));
          return { name: "field over maxFieldChars", model: m, line: at(k) };
        },
        () => ({
          name: "maxRows",
          model: m,
          line: at(k),
          code: "TOTEBOX_ERR_IMPORT_LIMIT",
          limits: { maxRows: k },
        }),
        () => {
          m.rows[k]!.fields = pick2 % 2 === 0 ? "more" : "fewer";
          return { name: `${m.rows[k]!.fields} fields`, model: m, line: at(k), only: "csv" };
        },
        () => {
          setCell(m, k, choose(m.header), { raw: pick2 % 2 === 0 ? 'ab"cd' : '"ab"cd' });
          return { name: "stray quote", model: m, line: at(k), only: "csv" };
        },
        () => {
          // In the last column of the last row: nothing after it can close the quote.
          setCell(m, n - 1, m.header[m.header.length - 1]!, { raw: '"never closed' });
          return { name: "unterminated quote", model: m, line: at(n - 1), only: "csv" };
        },
        () => {
          const i = pick2 % m.header.length;
          const bad = choose(["colour", m.header[(i + 1) % m.header.length]!, "", " tx_id", "TX_ID"], pick);
          m.header[i] = bad;
          return { name: `header column ${JSON.stringify(bad)}`, model: m, line: () => 1, only: "csv" };
        },
        () => {
          const { required } = IMPORT_COLUMNS[kind];
          m.header = m.header.filter((h) => h !== choose(required));
          return { name: "missing required column", model: m, line: () => 1, only: "csv" };
        },
        () => {
          m.rows[k]!.json = choose(['{"tx_id":', "[1,2]", "42", '"row"', "null", "{}}", "{'a':1}", "true"]);
          return { name: "not a JSON object", model: m, line: at(k), only: "jsonl" };
        },
        () => {
          m.rows[k]!.cells.colour = "red";
          m.header.push("colour");
          return { name: "unknown field", model: m, line: at(k), only: "jsonl" };
        },
        () => {
          const cells: Record<string, unknown> = { ...m.rows[k]!.cells };
          cells[choose(m.header)] = choose([{ $gt: 0 }, [1], { raw: "x" }]);
          m.rows[k]!.json = JSON.stringify(cells);
          return { name: "nested value", model: m, line: at(k), only: "jsonl" };
        },
        () => {
          const col = choose(IMPORT_COLUMNS[kind].required);
          const cells: Record<string, unknown> = { ...m.rows[k]!.cells };
          if (pick % 2 === 0) delete cells[col];
          else cells[col] = null;
          m.rows[k]!.json = JSON.stringify(cells);
          return { name: `required ${col} missing or null`, model: m, line: at(k), only: "jsonl" };
        },
      ];
      const specific: (() => Targeted)[] =
        kind === "journal"
          ? [
              () => {
                setCell(m, k, "date", choose(BAD_DATES));
                return { name: "bad date", model: m, line: at(k) };
              },
              () => {
                setCell(m, k, "amount", choose([...BAD_INTEGERS, ""]));
                return { name: "bad amount", model: m, line: at(k) };
              },
              () => {
                setCell(m, k, "account", "9999");
                return { name: "unknown account", model: m, line: at(k) };
              },
              () => {
                setCell(m, k, "counterparty", "ghost");
                return { name: "unknown counterparty", model: m, line: at(k) };
              },
              () => {
                const amount = m.rows[k]!.cells.amount as number;
                setCell(m, k, "amount", amount + 1 + (pick2 % 1000));
                return { name: "unbalanced", model: m, line: at(m.txStart[k]!) };
              },
              () => {
                // The second line of k's transaction, on another (valid) day.
                const row = m.txStart[k]! + 1;
                setCell(
                  m,
                  row,
                  "date",
                  m.rows[row]!.cells.date === "2020-01-01" ? "2020-01-02" : "2020-01-01",
                );
                return { name: "date differs inside a transaction", model: m, line: at(row) };
              },
              () => {
                const starts = [...new Set(m.txStart)];
                if (starts.length < 3) {
                  for (const r of m.rows.filter((_, i) => m.txStart[i] === m.txStart[k]))
                    r.cells.tx_id = RECORDED_TX;
                  return { name: "transaction already recorded", model: m, line: at(m.txStart[k]!) };
                }
                const t = 2 + (pick2 % (starts.length - 2));
                const earlier = m.rows[starts[t - 2]!]!.cells.tx_id!;
                for (const [i, r] of m.rows.entries())
                  if (m.txStart[i] === starts[t]) r.cells.tx_id = earlier;
                return { name: "tx_id reappears", model: m, line: at(starts[t]!) };
              },
              () => ({
                name: "maxLinesPerTx",
                model: m,
                line: at(1),
                limits: { maxLinesPerTx: 1 },
              }),
            ]
          : kind === "units"
            ? [
                () => {
                  setCell(m, k, "property_id", "pz-new");
                  m.rows[k]!.cells.property_name = null;
                  return { name: "new property without a name", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "property_id", "p1");
                  setCell(m, k, "property_name", "Another Name");
                  return { name: "property name conflict", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "property_type", choose(["castle", "Office", " retail"]));
                  return { name: "bad property_type", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "area_sqm", choose(BAD_AREAS));
                  return { name: "bad area", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "market_rent", choose(["-1", ...BAD_INTEGERS]));
                  return { name: "bad market_rent", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "unit_id", k === 0 ? "u1" : (m.rows[pick2 % k]!.cells.unit_id ?? "u1"));
                  return { name: "duplicate unit", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "unit_type", "x".repeat(65));
                  return { name: "unit_type too long", model: m, line: at(k) };
                },
              ]
            : [
                () => {
                  setCell(m, k, "unit_id", "nope");
                  return { name: "unknown unit", model: m, line: at(k) };
                },
                () => {
                  if (k === 0) {
                    setCell(m, k, "lease_id", "l-0");
                    setCell(m, k, "unit_id", "nope");
                    return { name: "unknown unit", model: m, line: at(k) };
                  }
                  const j = pick2 % k;
                  for (const c of ["unit_id", "start_date", "end_date"])
                    setCell(m, k, c, m.rows[j]!.cells[c] ?? null);
                  return { name: "overlapping lease", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "lease_id", k === 0 ? "l-0" : (m.rows[pick2 % k]!.cells.lease_id ?? "l-0"));
                  if (k === 0) setCell(m, k, "unit_id", "nope");
                  return { name: "duplicate lease", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "tenant_id", "tz-new");
                  if (m.header.includes("tenant_name")) m.rows[k]!.cells.tenant_name = null;
                  return { name: "new tenant without a name", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "start_date", "2024-06-01");
                  setCell(m, k, "end_date", "2024-05-31");
                  return { name: "end before start", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, pick % 2 === 0 ? "start_date" : "end_date", choose(BAD_DATES));
                  return { name: "bad lease date", model: m, line: at(k) };
                },
                () => {
                  setCell(m, k, "monthly_rent", choose(["-1", "", ...BAD_INTEGERS]));
                  return { name: "bad rent", model: m, line: at(k) };
                },
              ];
      const all = [...common, ...specific];
      return all[which % all.length]!();
    });
}

// ---------------------------------------------------------------------------------------------
// Text mutations of valid files (not targeted: any outcome but a crash or a half import is fine)

type TextMutation =
  | { kind: "flip"; at: number; ch: string }
  | { kind: "insert"; at: number; s: string }
  | { kind: "deleteLine" | "duplicateLine" | "swapFields"; line: number }
  | { kind: "swapLines"; a: number; b: number }
  | { kind: "truncate"; at: number }
  | { kind: "crlf" | "bom" | "quoteNumbers" | "unquoteNumbers" };

const INSERTS = [
  ",",
  '"',
  '""',
  "\r\n",
  "\n",
  "\r",
  "\u0000",
  "\uFEFF",
  "\uD800",
  "x".repeat(9000),
  "-",
  "1e3",
  "9999999999999999",
  "2024-02-30",
  "{}",
  '"amount":1,',
  "null",
  "\\u0000",
  "\\ud800",
];

const textMutation: fc.Arbitrary<TextMutation> = fc.oneof(
  fc.record({
    kind: fc.constant("flip" as const),
    at: fc.nat(),
    ch: fc.oneof(fc.string({ unit: "binary", minLength: 1, maxLength: 1 }), fc.constantFrom(...INSERTS)),
  }),
  fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), s: fc.constantFrom(...INSERTS) }),
  fc.record({
    kind: fc.constantFrom("deleteLine" as const, "duplicateLine" as const, "swapFields" as const),
    line: fc.nat(),
  }),
  fc.record({ kind: fc.constant("swapLines" as const), a: fc.nat(), b: fc.nat() }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({
    kind: fc.constantFrom(
      "crlf" as const,
      "bom" as const,
      "quoteNumbers" as const,
      "unquoteNumbers" as const,
    ),
  }),
);

function mutateText(t: string, m: TextMutation): string {
  const lines = t.split("\n");
  const li = (n: number) => n % lines.length;
  const at = (n: number) => n % (t.length + 1);
  switch (m.kind) {
    case "flip":
      return t.slice(0, at(m.at)) + m.ch + t.slice(at(m.at) + 1);
    case "insert":
      return t.slice(0, at(m.at)) + m.s + t.slice(at(m.at));
    case "deleteLine":
      lines.splice(li(m.line), 1);
      return lines.join("\n");
    case "duplicateLine":
      lines.splice(li(m.line), 0, lines[li(m.line)]!);
      return lines.join("\n");
    case "swapFields": {
      const f = lines[li(m.line)]!.split(",");
      if (f.length > 1) [f[0], f[f.length - 1]] = [f[f.length - 1]!, f[0]!];
      lines[li(m.line)] = f.join(",");
      return lines.join("\n");
    }
    case "swapLines": {
      const [x, y] = [li(m.a), li(m.b)];
      [lines[x], lines[y]] = [lines[y]!, lines[x]!];
      return lines.join("\n");
    }
    case "truncate":
      return t.slice(0, at(m.at));
    case "crlf":
      return t.replace(/\r?\n/g, "\r\n");
    case "bom":
      return `\uFEFF${t}`;
    case "quoteNumbers":
      return t.replace(/:(-?\d+)/g, ':"$1"');
    case "unquoteNumbers":
      return t.replace(/"(-?\d+)"/g, "$1");
  }
}

const limitsArb: fc.Arbitrary<Partial<ImportLimits> | undefined> = fc.option(
  fc.record(
    {
      maxRows: fc.nat({ max: 12 }),
      maxFieldChars: fc.integer({ min: 1, max: 40 }),
      maxRecordChars: fc.integer({ min: 1, max: 200 }),
      maxFields: fc.integer({ min: 1, max: 8 }),
      maxLinesPerTx: fc.integer({ min: 1, max: 4 }),
      maxFileBytes: fc.integer({ min: 0, max: 2000 }),
    },
    { requiredKeys: [] },
  ),
  { nil: undefined, freq: 4 },
);

// ---------------------------------------------------------------------------------------------
// Properties

describe("imports under fuzzing, against real archives", () => {
  it("accepts every valid file in full, whatever its quoting, line ends, BOM, order and number style", async () => {
    const arena = new Arena();
    await arena.reset();
    try {
      await fc.assert(
        fc.asyncProperty(
          kindFormat.chain(([kind, format]) =>
            fc.tuple(fc.constant(kind), fc.constant(format), modelOf(kind), styleArb),
          ),
          async ([kind, format, model, style]) => {
            const { text } = render(model, format, style);
            const outcome = attempt(arena, (db) =>
              importText(db, text, { kind, format, createdAt: CREATED_AT }),
            );
            if ("error" in outcome)
              throw new Error(`refused a valid file: ${outcome.error.message}\n${text}`);
            expect(outcome.result.rows).toBe(model.rows.length);
            await checkAccepted(arena, kind, text, format, outcome.result);
          },
        ),
        { seed, numRuns: RUNS },
      );
      console.log("valid files", arena.stats());
    } finally {
      arena.close();
    }
  });

  it("refuses a file whose first bad row is known, at that row's line, applying nothing", async () => {
    const arena = new Arena();
    await arena.reset();
    const names = new Map<string, number>();
    try {
      await fc.assert(
        fc.asyncProperty(
          kindFormat.chain(([kind, format]) =>
            fc.tuple(fc.constant(kind), fc.constant(format), targeted(kind), styleArb),
          ),
          async ([kind, format0, t, style]) => {
            const format = t.only ?? format0;
            const { text, lines } = render(t.model, format, style);
            const outcome = attempt(arena, (db) =>
              importText(db, text, {
                kind,
                format,
                createdAt: CREATED_AT,
                ...(t.limits ? { limits: t.limits } : {}),
              }),
            );
            if (!("error" in outcome)) {
              await arena.reset(); // so that shrinking starts from a clean archive again
              throw new Error(`accepted (${t.name}): ${JSON.stringify(text)}`);
            }
            const e = outcome.error;
            const want = { code: t.code ?? "TOTEBOX_ERR_IMPORT_ROW", line: t.line(lines) };
            expect({ code: e.code, line: e.detail?.line }, `${t.name}: ${e.message}`).toEqual(want);
            checkRefused(arena, e, text, format);
            names.set(t.name, (names.get(t.name) ?? 0) + 1);
          },
        ),
        { seed, numRuns: RUNS * 2 },
      );
      console.log("targeted refusals", arena.stats(), `${names.size} kinds of bad row`);
      expect(names.size).toBeGreaterThan(20);
    } finally {
      arena.close();
    }
  });

  it("mutated valid files (flips, NUL, BOM, CRLF, huge fields, lines, limits): refused cleanly or imported in full", async () => {
    const arena = new Arena();
    await arena.reset();
    try {
      await fc.assert(
        fc.asyncProperty(
          kindFormat.chain(([kind, format]) =>
            fc.tuple(
              fc.constant(kind),
              fc.constant(format),
              modelOf(kind),
              styleArb,
              fc.array(textMutation, { minLength: 1, maxLength: 3 }),
              limitsArb,
            ),
          ),
          async ([kind, format, model, style, mutations, limits]) => {
            const text = mutations.reduce(mutateText, render(model, format, style).text);
            const outcome = attempt(arena, (db) =>
              importText(db, text, { kind, format, createdAt: CREATED_AT, ...(limits ? { limits } : {}) }),
            );
            await checkOutcome(arena, outcome, kind, text, format);
          },
        ),
        { seed, numRuns: RUNS },
      );
      console.log("mutated files", arena.stats());
    } finally {
      arena.close();
    }
  });

  it("arbitrary bytes from a file (with or without a valid header first): refused cleanly or imported in full", async () => {
    const arena = new Arena();
    await arena.reset();
    const dir = fs.mkdtempSync(path.join(root, "bytes-"));
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom(...KINDS),
          fc.constantFrom("x.csv", "x.jsonl", "x.ndjson", "x.CSV", "x.txt", "x"),
          fc.constantFrom(undefined, ...FORMATS),
          fc.boolean(),
          fc.uint8Array({ maxLength: 600 }),
          async (kind, name, format, withHeader, bytes) => {
            const { required, optional } = IMPORT_COLUMNS[kind];
            const head = withHeader
              ? Buffer.from(`${[...required, ...optional].join(",")}\n`)
              : Buffer.alloc(0);
            const file = path.join(dir, name);
            fs.writeFileSync(file, Buffer.concat([head, bytes]));
            const outcome = attempt(arena, (db) =>
              importFile(db, file, { kind, createdAt: CREATED_AT, ...(format ? { format } : {}) }),
            );
            const used: ImportFormat =
              format ?? (/\.csv$/i.test(name) ? "csv" : /\.(jsonl|ndjson)$/.test(name) ? "jsonl" : "csv");
            // Only valid UTF-8 gets past the decoder, so an accepted file decodes.
            const text =
              "result" in outcome
                ? new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(fs.readFileSync(file))
                : fs.readFileSync(file, "latin1");
            await checkOutcome(arena, outcome, kind, text, used);
          },
        ),
        { seed, numRuns: RUNS },
      );
      console.log("arbitrary bytes", arena.stats());
    } finally {
      arena.close();
    }
  });
});

describe("import regressions found by fuzzing", () => {
  let arena: Arena;
  beforeAll(async () => {
    arena = new Arena();
    await arena.reset();
  });
  afterAll(() => arena.close());

  const refusedAt = (kind: ImportKind, format: ImportFormat, text: string, line: number, reason: RegExp) => {
    const outcome = attempt(arena, (db) => importText(db, text, { kind, format }));
    if (!("error" in outcome)) throw new Error(`accepted: ${JSON.stringify(text)}`);
    expect(outcome.error.code).toBe("TOTEBOX_ERR_IMPORT_ROW");
    expect(outcome.error.detail?.line).toBe(line);
    expect(String(outcome.error.detail?.reason)).toMatch(reason);
    checkRefused(arena, outcome.error, text, format);
  };

  it("refuses NUL in ids and names (SQLite's length() stops at NUL: raw SqliteError / CONSTRAINT before)", () => {
    const nul = /NUL character/;
    refusedAt(
      "units",
      "csv",
      "property_id,property_name,unit_id,unit_type,area_sqm\n\0p,N,ux,1br,40\n",
      2,
      nul,
    );
    refusedAt("units", "csv", "property_id,unit_id,unit_type,area_sqm\np1,ux,\0,40\n", 2, nul);
    const leases = "lease_id,unit_id,tenant_id,tenant_name,start_date,monthly_rent\n";
    refusedAt("leases", "csv", `${leases}\0l,u1,t1,Ann,2024-01-01,100\n`, 2, nul);
    refusedAt("leases", "csv", `${leases}l1,u1,\0t,Ann,2024-01-01,100\n`, 2, nul);
    refusedAt("leases", "csv", `${leases}l1,u1,t1,\0Ann,2024-01-01,100\n`, 2, nul);
    refusedAt(
      "journal",
      "csv",
      "tx_id,date,account,amount\n\0t,2024-01-01,1000,5\n\0t,2024-01-01,4000,-5\n",
      2,
      nul,
    );
  });

  it("refuses unpaired surrogates, which used to leave an entry failing verifyChain", () => {
    const row = (memo: string) =>
      `{"tx_id":"s1","date":"2024-01-03","account":"1000","amount":1,"memo":"${memo}"}\n{"tx_id":"s1","date":"2024-01-03","account":"4000","amount":-1}\n`;
    refusedAt("journal", "jsonl", row("\\ud800x"), 1, /unpaired surrogate/);
    refusedAt("journal", "jsonl", row("x\\udc00"), 1, /unpaired surrogate/);
    refusedAt(
      "journal",
      "csv",
      "tx_id,date,account,amount,memo\ns1,2024-01-03,1000,1,\uD800\ns1,2024-01-03,4000,-1,\n",
      2,
      /unpaired/,
    );
    // A well-formed pair is text like any other.
    const ok = attempt(arena, (db) =>
      importText(db, row("\\ud83c\\udfe0"), { kind: "journal", format: "jsonl" }),
    );
    expect("result" in ok && ok.result.lines).toBe(2);
    expect(readTransaction(arena.db, { id: "s1" })?.lines[0]?.memo).toBe("🏠");
    expect(verifyChain(arena.db).ok).toBe(true);
  });
});
