/**
 * The SQL of the default views (default-policy.yaml), run on demo archives and checked against
 * figures computed independently in JS from the raw journal lines (not from
 * journal_daily_totals, which the views read: so the derived table is checked too).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { expectedIntercompanyBalance, generateDemoData } from "./demo-data.ts";
import { importText } from "./import.ts";
import { chainHead, verifyChain } from "./ledger.ts";
import { parsePolicy } from "./policy.ts";
import { type Db, initEntity, openArchiveDatabase } from "./schema.ts";

const POLICY_FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), "default-policy.yaml");
const AS_OF = "2025-06-30";
const SEED = 99;

type ColumnType = "string" | "integer" | "number" | "date" | "boolean";
interface ViewDef {
  description: string;
  sql: string;
  params: Record<string, { type: string; required: boolean; default?: string }>;
  columns: Record<string, ColumnType>;
  row_key: string | null;
  privacy_floor: { count_column: string; min: number } | null;
  max_rows: number;
  timeout_ms: number;
}
type Row = Record<string, unknown>;

let dir: string;
let policy: { version: number; views: Record<string, ViewDef>; commands: unknown; access: unknown[] };
let property: Db;
let company: Db;
let empty: Db;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "totebox-views-"));
  policy = YAML.parse(fs.readFileSync(POLICY_FILE, "utf8"));
  const peers = [
    { entityId: "holdco", name: "Holdco plc" },
    { entityId: "sister", name: "Sister Ltd" },
  ];
  property = openArchiveDatabase(path.join(dir, "property.db"));
  generateDemoData(property, {
    kind: "property",
    seed: SEED,
    entityId: "prop",
    asOf: AS_OF,
    scale: 0.4,
    peers,
  });
  // A small building with a single let unit: its group must be caught by the privacy floor.
  importText(
    property,
    "property_id,property_name,property_type,unit_id,unit_type,area_sqm,market_rent\nsolo,Solo House,office,solo-1,penthouse,210,900000\nsolo,,,solo-2,penthouse,190,850000\n",
    { kind: "units", format: "csv" },
  );
  importText(
    property,
    "lease_id,unit_id,tenant_id,tenant_name,start_date,end_date,monthly_rent\nsolo-l1,solo-1,t-solo,Kestrel Legal LLP,2024-01-01,2029-12-31,880000\n",
    { kind: "leases", format: "csv" },
  );
  company = openArchiveDatabase(path.join(dir, "company.db"));
  generateDemoData(company, {
    kind: "company",
    seed: SEED,
    entityId: "opco",
    asOf: AS_OF,
    scale: 0.4,
    peers,
  });
  empty = openArchiveDatabase(path.join(dir, "empty.db"));
  initEntity(empty, { id: "blank", kind: "household", name: "Blank", currency: "GBP" });
});

afterAll(() => {
  for (const db of [property, company, empty]) db?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function view(name: string): ViewDef {
  const v = policy.views[name];
  if (!v) throw new Error(`no view ${name}`);
  return v;
}

function run(db: Db, name: string, asOf?: string): Row[] {
  const v = view(name);
  const params = Object.keys(v.params).length > 0 ? { as_of: asOf ?? AS_OF } : {};
  return db.prepare<[Record<string, unknown>], Row>(v.sql).all(params);
}

/** Every journal line with its date and account class, straight from the journal tables. */
function lines(
  db: Db,
): { date: string; account: string; cls: string; subtype: string; cp: string | null; amount: number }[] {
  return db
    .prepare<
      [],
      { date: string; account: string; cls: string; subtype: string; cp: string | null; amount: number }
    >(
      `SELECT t.date, l.account, a.class AS cls, a.subtype, l.counterparty AS cp, l.amount
         FROM journal_lines l JOIN journal_tx t ON t.seq = l.tx_seq JOIN accounts a ON a.code = l.account`,
    )
    .all();
}

const sum = <T>(items: readonly T[], f: (x: T) => number): number => items.reduce((s, x) => s + f(x), 0);

function shiftDays(iso: string, days: number): string {
  const d = new Date(`${iso}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

describe("default-policy.yaml", () => {
  it("has the policy format and ships the six default views", () => {
    expect(policy.version).toBe(1);
    expect(Object.keys(policy.views)).toEqual([
      "position",
      "income-summary",
      "occupancy",
      "rent-roll-summary",
      "intercompany",
      "archive-health",
    ]);
    // commands and access are the server's part of the file (filled by the lead); the default
    // still lets paired operators read every view.
    expect(typeof policy.commands).toBe("object");
    expect(policy.access).toEqual(
      expect.arrayContaining([expect.objectContaining({ tenants: "*", operators: "*", views: "*" })]),
    );
    for (const [name, v] of Object.entries(policy.views)) {
      expect(Object.keys(v).sort(), name).toEqual(
        [
          "columns",
          "description",
          "max_rows",
          "params",
          "privacy_floor",
          "row_key",
          "sql",
          "timeout_ms",
        ].sort(),
      );
      expect(v.description.length, name).toBeGreaterThan(20);
      expect(v.sql, name).not.toMatch(/[?@$]/);
      for (const [p, spec] of Object.entries(v.params)) {
        expect(p).toBe("as_of");
        expect(spec).toEqual({ type: "date", required: false, default: "today" });
      }
      if (v.row_key !== null) expect(Object.keys(v.columns)).toContain(v.row_key);
    }
    expect(view("rent-roll-summary").privacy_floor).toEqual({ count_column: "leased_units", min: 3 });
  });

  it("is accepted by the policy loader against an archive (prepared read-only, columns matched)", () => {
    const ro = openArchiveDatabase(path.join(dir, "property.db"), { readonly: true });
    try {
      const loaded = parsePolicy(fs.readFileSync(POLICY_FILE, "utf8"), {
        db: ro,
        fileName: "default-policy.yaml",
      });
      expect([...loaded.views.keys()]).toHaveLength(6);
    } finally {
      ro.close();
    }
  });

  it("declares each view's output columns in order, and every value has its declared type", () => {
    for (const db of [property, company, empty]) {
      for (const [name, v] of Object.entries(policy.views)) {
        const stmt = db.prepare(v.sql);
        expect(stmt.readonly, name).toBe(true);
        expect(
          stmt.columns().map((c) => c.name),
          name,
        ).toEqual(Object.keys(v.columns));
        const rows = run(db, name);
        expect(rows.length, name).toBeLessThanOrEqual(v.max_rows);
        for (const row of rows) {
          for (const [col, type] of Object.entries(v.columns)) {
            const value = row[col];
            if (value === null) continue;
            const ok =
              type === "integer"
                ? Number.isSafeInteger(value)
                : type === "number"
                  ? typeof value === "number" && Number.isFinite(value)
                  : type === "date"
                    ? typeof value === "string" && /^\d{4}-\d{2}-\d{2}$/.test(value)
                    : type === "boolean"
                      ? value === 0 || value === 1
                      : typeof value === "string";
            expect(ok, `${name}.${col} = ${String(value)}`).toBe(true);
          }
        }
      }
    }
  });
});

describe("position", () => {
  it.each([AS_OF, "2024-01-15", "2022-07-01", "2020-01-01"])("matches the journal as of %s", (asOf) => {
    for (const db of [property, company]) {
      const ls = lines(db).filter((l) => l.date <= asOf);
      const [row] = run(db, "position", asOf);
      const assets = sum(ls, (l) => (l.cls === "asset" ? l.amount : 0));
      const liabilities = 0 - sum(ls, (l) => (l.cls === "liability" ? l.amount : 0));
      expect(row).toEqual({
        as_of: asOf,
        currency: "USD",
        cash: sum(ls, (l) => (l.subtype === "cash" ? l.amount : 0)),
        assets,
        liabilities,
        equity: 0 - sum(ls, (l) => (["equity", "income", "expense"].includes(l.cls) ? l.amount : 0)),
        debt: 0 - sum(ls, (l) => (l.cls === "liability" && l.subtype === "debt" ? l.amount : 0)),
        net_value: assets - liabilities,
      });
      // The balance-sheet identity: equity equals net value because every entry balances.
      expect(row!.equity).toBe(row!.net_value);
    }
    const [p] = run(property, "position", AS_OF);
    expect(p!.cash as number).toBeGreaterThan(0);
    expect(p!.debt as number).toBeGreaterThan(0);
  });

  it("answers zeros for an archive without entries", () => {
    expect(run(empty, "position")).toEqual([
      { as_of: AS_OF, currency: "GBP", cash: 0, assets: 0, liabilities: 0, equity: 0, debt: 0, net_value: 0 },
    ]);
  });
});

describe("income-summary", () => {
  it.each([AS_OF, "2024-03-01", "2023-12-31"])("matches the journal for each window ending %s", (asOf) => {
    for (const db of [property, company]) {
      const ls = lines(db);
      const first = ls.map((l) => l.date).sort()[0]!;
      const windows: [string, string][] = [
        ["1D", asOf],
        ["1W", shiftDays(asOf, -6)],
        ["30D", shiftDays(asOf, -29)],
        ["90D", shiftDays(asOf, -89)],
        ["YTD", `${asOf.slice(0, 4)}-01-01`],
        ["ITD", first],
      ];
      const expected = windows.map(([period, start]) => {
        const inWindow = ls.filter((l) => l.date >= start && l.date <= asOf);
        const income = 0 - sum(inWindow, (l) => (l.cls === "income" ? l.amount : 0));
        const expenses = sum(inWindow, (l) => (l.cls === "expense" ? l.amount : 0));
        return { period, start_date: start, end_date: asOf, income, expenses, net: income - expenses };
      });
      expect(run(db, "income-summary", asOf)).toEqual(expected);
    }
  });

  it("has income in the 30-day window of a property archive (rent is charged monthly)", () => {
    const rows = run(property, "income-summary");
    expect(rows.find((r) => r.period === "30D")!.income as number).toBeGreaterThan(0);
    expect(run(empty, "income-summary").map((r) => [r.period, r.income, r.expenses, r.net])).toEqual(
      ["1D", "1W", "30D", "90D", "YTD", "ITD"].map((p) => [p, 0, 0, 0]),
    );
  });
});

interface LeaseRow {
  unit_id: string;
  property_id: string;
  property_name: string;
  property_type: string;
  unit_type: string;
  area_sqm: number;
  rent: number | null;
}

function unitsWithActiveLease(db: Db, asOf: string): LeaseRow[] {
  const units = db
    .prepare<[], Omit<LeaseRow, "rent" | "unit_id"> & { id: string }>(
      "SELECT u.id, u.property_id, p.name AS property_name, p.property_type, u.unit_type, u.area_sqm FROM units u JOIN properties p ON p.id = u.property_id",
    )
    .all();
  const leases = db
    .prepare<[], { unit_id: string; start_date: string; end_date: string | null; monthly_rent: number }>(
      "SELECT unit_id, start_date, end_date, monthly_rent FROM leases",
    )
    .all();
  return units.map((u) => {
    const active = leases.filter(
      (l) => l.unit_id === u.id && l.start_date <= asOf && (l.end_date === null || l.end_date >= asOf),
    );
    expect(active.length).toBeLessThanOrEqual(1);
    return { ...u, unit_id: u.id, rent: active[0]?.monthly_rent ?? null };
  });
}

describe("occupancy", () => {
  it.each([AS_OF, "2023-09-01"])("matches units and leases as of %s", (asOf) => {
    const us = unitsWithActiveLease(property, asOf);
    const let_ = us.filter((u) => u.rent !== null);
    const [row] = run(property, "occupancy", asOf);
    expect(row).toMatchObject({
      as_of: asOf,
      units: us.length,
      occupied_units: let_.length,
      monthly_rent_roll: sum(let_, (u) => u.rent!),
      average_rent: Math.round(sum(let_, (u) => u.rent!) / let_.length),
    });
    expect(row!.occupancy_ratio).toBeCloseTo(let_.length / us.length, 12);
    expect(row!.area_sqm).toBeCloseTo(
      sum(us, (u) => u.area_sqm),
      6,
    );
    expect(row!.occupied_area_sqm).toBeCloseTo(
      sum(let_, (u) => u.area_sqm),
      6,
    );
  });

  it("answers one row of zeros for archives without units", () => {
    for (const db of [company, empty]) {
      expect(run(db, "occupancy")).toEqual([
        {
          as_of: AS_OF,
          units: 0,
          occupied_units: 0,
          occupancy_ratio: 0,
          area_sqm: 0,
          occupied_area_sqm: 0,
          monthly_rent_roll: 0,
          average_rent: 0,
        },
      ]);
    }
  });
});

describe("rent-roll-summary", () => {
  it("groups units and active leases by property and unit type", () => {
    const us = unitsWithActiveLease(property, AS_OF);
    const groups = new Map<string, LeaseRow[]>();
    for (const u of us) {
      const key = `${u.property_id}\u0000${u.unit_type}`;
      groups.set(key, [...(groups.get(key) ?? []), u]);
    }
    const expected = [...groups.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, g]) => {
        const let_ = g.filter((u) => u.rent !== null);
        const rent = sum(let_, (u) => u.rent!);
        const letArea = sum(let_, (u) => u.area_sqm);
        return {
          property_id: g[0]!.property_id,
          property_name: g[0]!.property_name,
          property_type: g[0]!.property_type,
          unit_type: g[0]!.unit_type,
          units: g.length,
          leased_units: let_.length,
          area_sqm: sum(g, (u) => u.area_sqm),
          monthly_rent: rent,
          average_rent: let_.length ? Math.round(rent / let_.length) : 0,
          rent_per_sqm: letArea ? Math.round((rent / letArea) * 100) / 100 : 0,
        };
      });
    const rows = run(property, "rent-roll-summary");
    expect(rows).toHaveLength(expected.length);
    rows.forEach((r, i) => {
      const e = expected[i]!;
      expect({ ...r, area_sqm: 0, rent_per_sqm: 0 }).toEqual({ ...e, area_sqm: 0, rent_per_sqm: 0 });
      expect(r.area_sqm).toBeCloseTo(e.area_sqm, 6);
      expect(r.rent_per_sqm).toBeCloseTo(e.rent_per_sqm, 2);
    });
    // The single-tenant building is a group under the floor: the runner will suppress it.
    const solo = rows.find((r) => r.property_id === "solo")!;
    expect(solo).toMatchObject({ units: 2, leased_units: 1, monthly_rent: 880000, average_rent: 880000 });
    expect(solo.leased_units as number).toBeLessThan(view("rent-roll-summary").privacy_floor!.min);
    expect(rows.some((r) => (r.leased_units as number) >= 3)).toBe(true);
    expect(run(company, "rent-roll-summary")).toEqual([]);
  });
});

describe("intercompany", () => {
  it.each([AS_OF, "2024-06-30"])("gives the balance with each related entity as of %s", (asOf) => {
    for (const [db, self] of [
      [property, "prop"],
      [company, "opco"],
    ] as const) {
      const cps = db
        .prepare<[], { id: string; entity_ref: string; name: string }>(
          "SELECT id, entity_ref, name FROM counterparties WHERE entity_ref IS NOT NULL ORDER BY entity_ref",
        )
        .all();
      const ls = lines(db).filter((l) => l.date <= asOf && l.subtype === "intercompany");
      const expected = cps.map((c) => {
        const mine = ls.filter((l) => l.cp === c.id);
        return {
          counterparty_entity: c.entity_ref,
          counterparty_name: c.name,
          balance: sum(mine, (l) => l.amount),
          lines: mine.length,
        };
      });
      const rows = run(db, "intercompany", asOf);
      expect(rows).toEqual(expected);
      if (asOf === AS_OF) {
        for (const r of rows) {
          expect(r.balance).toBe(
            expectedIntercompanyBalance(self, r.counterparty_entity as string, SEED, AS_OF),
          );
        }
      }
    }
  });

  it("lists every related entity in id order, and nothing for an archive without any", () => {
    const balances = (db: Db): Map<string, number> =>
      new Map(run(db, "intercompany").map((r) => [r.counterparty_entity as string, r.balance as number]));
    expect([...balances(property).keys()]).toEqual(["holdco", "sister"]);
    expect([...balances(company).keys()]).toEqual(["holdco", "sister"]);
    expect(run(empty, "intercompany")).toEqual([]);
  });
});

describe("archive-health", () => {
  it("reports entries, lines, dates and the chain head that verifyChain confirms", () => {
    for (const db of [property, company]) {
      const v = verifyChain(db);
      if (!v.ok) throw new Error(v.reason);
      const dates = db
        .prepare<[], { lo: string; hi: string }>("SELECT min(date) AS lo, max(date) AS hi FROM journal_tx")
        .get()!;
      const [row] = run(db, "archive-health");
      expect(row).toEqual({
        entries: v.entries,
        lines: v.lines,
        first_entry_date: dates.lo,
        last_entry_date: dates.hi,
        last_recorded_at: db
          .prepare("SELECT created_at FROM journal_tx WHERE seq = ?")
          .pluck()
          .get(v.entries),
        last_seq: chainHead(db).seq,
        head_hash: v.head,
        pending_staged_entries: 0,
      });
    }
    expect(run(empty, "archive-health")).toEqual([
      {
        entries: 0,
        lines: 0,
        first_entry_date: null,
        last_entry_date: null,
        last_recorded_at: null,
        last_seq: 0,
        head_hash: "0".repeat(64),
        pending_staged_entries: 0,
      },
    ]);
  });
});
