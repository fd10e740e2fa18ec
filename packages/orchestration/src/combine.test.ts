import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type Cell,
  type ColumnSpec,
  connectPsp,
  createIdentity,
  type DecodedResult,
  decodeResult,
  encodeResult,
  issueCallCapabilityBatch,
  issueGrant,
  ManualClock,
  openCommander,
} from "@os-orchestration/psp";
import {
  expectedIntercompanyBalance,
  generateDemoData,
  initArchive,
  openArchive,
  type ToteboxRemote,
  ToteboxServer,
  trustPeer,
} from "@os-orchestration/totebox";
import fc from "fast-check";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type CombinedSection,
  type CombineInput,
  combineSandboxCounts,
  planViewportLoads,
  runCombine,
  viewportLoadPlan,
  withSandbox,
} from "./combine.ts";
import { isOrchError, type OrchErrorCode } from "./errors.ts";
import type { LoadPlan } from "./load-plan.ts";
import {
  builtinViewports,
  compileViewports,
  DEFAULT_VIEW_COLUMNS,
  readParams,
  resolveViewportParams,
  type Viewport,
} from "./viewports.ts";

/**
 * Reproduce a property failure with FC_SEED=<logged seed>.
 */
const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);

const AS_OF = "2026-10-31";
const PERIODS = ["1D", "1W", "30D", "90D", "YTD", "ITD"] as const;

// ---------------------------------------------------------------------------------------------
// A synthetic fleet: what each Totebox would answer, turned into real Arrow answers.

type Status = "ok" | "timeout" | "offline" | "denied" | "suppressed" | "error";

interface Position {
  currency: string;
  cash: number;
  assets: number;
  liabilities: number;
  equity: number;
  debt: number;
  net_value: number;
}

interface FakeTotebox {
  id: string;
  name: string;
  tags: Record<string, string>;
  status: Status;
  reason: string;
  /** undefined: this Totebox gave no answer for that view. */
  position?: Position;
  occupancy?: { units: number; occupied: number };
  income?: Record<(typeof PERIODS)[number], { income: number; expenses: number }>;
  intercompany?: { peer: string; name: string; balance: number }[];
  pending?: number;
}

function answer(columns: readonly ColumnSpec[], rows: readonly (readonly unknown[])[]): DecodedResult {
  return decodeResult(encodeResult(columns, rows), columns);
}

function viewAnswer(t: FakeTotebox, view: string): DecodedResult | undefined {
  const cols = DEFAULT_VIEW_COLUMNS[view]!;
  switch (view) {
    case "position": {
      const p = t.position;
      if (!p) return undefined;
      return answer(cols, [
        [AS_OF, p.currency, p.cash, p.assets, p.liabilities, p.equity, p.debt, p.net_value],
      ]);
    }
    case "occupancy": {
      const o = t.occupancy;
      if (!o) return undefined;
      const ratio = o.units > 0 ? o.occupied / o.units : 0;
      return answer(cols, [[AS_OF, o.units, o.occupied, ratio, o.units * 50.5, o.occupied * 50.5, 0, 0]]);
    }
    case "income-summary": {
      const inc = t.income;
      if (!inc) return undefined;
      return answer(
        cols,
        PERIODS.map((p) => [
          p,
          "2026-01-01",
          AS_OF,
          inc[p].income,
          inc[p].expenses,
          inc[p].income - inc[p].expenses,
        ]),
      );
    }
    case "intercompany": {
      const ic = t.intercompany;
      if (!ic) return undefined;
      return answer(
        cols,
        ic.map((r) => [r.peer, r.name, r.balance, 3]),
      );
    }
    case "archive-health": {
      if (t.pending === undefined) return undefined;
      return answer(cols, [
        [10, 20, "2024-01-01", AS_OF, `${AS_OF}T18:00:00.000Z`, 10, "ab".repeat(32), t.pending],
      ]);
    }
  }
  throw new Error(`no fake answers for ${view}`);
}

function inputFor(
  v: Viewport,
  fleet: readonly FakeTotebox[],
  params: Readonly<Record<string, string | number | boolean>>,
  extra: Partial<CombineInput> = {},
  viewAnswerOf: (t: FakeTotebox, view: string) => DecodedResult | undefined = viewAnswer,
): CombineInput {
  const results = new Map<
    string,
    { totebox: string; tags: Record<string, string>; result: DecodedResult }[]
  >();
  for (const read of v.reads) {
    const list = [];
    for (const t of fleet) {
      // A suppressed Totebox answered, with every row held back by its owner's privacy floor.
      if (t.status === "suppressed") {
        list.push({ totebox: t.id, tags: t.tags, result: answer(read.columns, []) });
        continue;
      }
      if (t.status !== "ok") continue;
      const result = viewAnswerOf(t, read.view);
      if (result) list.push({ totebox: t.id, tags: t.tags, result });
    }
    results.set(read.as, list);
  }
  return {
    viewport: v,
    params,
    results,
    coverage: fleet.map((t) => ({
      totebox: t.id,
      name: t.name,
      tags: t.tags,
      status: t.status,
      reason: t.reason,
      elapsedMs: 12.5,
    })),
    ...extra,
  };
}

const pos = (
  currency: string,
  cash: number,
  assets: number,
  liabilities: number,
  debt: number,
): Position => ({
  currency,
  cash,
  assets,
  liabilities,
  equity: assets - liabilities,
  debt,
  net_value: assets - liabilities,
});

const incomeOf = (base: number) =>
  Object.fromEntries(
    PERIODS.map((p, i) => [p, { income: base * (i + 1), expenses: Math.round(base * (i + 1) * 0.6) }]),
  ) as FakeTotebox["income"];

/**
 * A small estate with every case the built-ins must get right:
 * - alpha ↔ beta reconcile (500 / -500); alpha ↔ gamma do not (-200 / 250: difference 50);
 * - beta ↔ delta is one-sided because delta is offline; gamma ↔ zeta because zeta is not targeted;
 *   eps ↔ alpha because alpha answered without a row for eps;
 * - delta has no region tag (group "(none)") and another currency; eta has no units;
 * - beta has staged entries pending, kappa timed out, mu's answers were all suppressed (so eta ↔ mu
 *   is one-sided too).
 */
const FLEET: FakeTotebox[] = [
  {
    id: "alpha",
    name: "Alpha Holdings",
    tags: { region: "west", kind: "company" },
    status: "ok",
    reason: "",
    position: pos("USD", 1_000_00, 5_000_00, 2_000_00, 1_500_00),
    occupancy: { units: 10, occupied: 9 },
    income: incomeOf(1_000),
    intercompany: [
      { peer: "beta", name: "Beta Ltd", balance: 500 },
      { peer: "gamma", name: "Gamma Inc", balance: -200 },
    ],
    pending: 0,
  },
  {
    id: "beta",
    name: "Beta Ltd",
    tags: { region: "west", kind: "property" },
    status: "ok",
    reason: "",
    position: pos("USD", 250_00, 9_000_00, 7_000_00, 6_500_00),
    occupancy: { units: 30, occupied: 21 },
    income: incomeOf(700),
    intercompany: [
      { peer: "alpha", name: "Alpha Holdings", balance: -500 },
      { peer: "delta", name: "Delta GmbH", balance: 1_234 },
    ],
    pending: 2,
  },
  {
    id: "gamma",
    name: "Gamma Inc",
    tags: { region: "east", kind: "company" },
    status: "ok",
    reason: "",
    position: pos("USD", 77_00, 800_00, 900_00, 0),
    occupancy: { units: 4, occupied: 1 },
    income: incomeOf(333),
    intercompany: [
      { peer: "alpha", name: "Alpha Holdings", balance: 250 },
      { peer: "zeta", name: "Zeta Partners", balance: -4_000 },
    ],
    pending: 1,
  },
  {
    id: "delta",
    name: "Delta GmbH",
    tags: { kind: "property" },
    status: "offline",
    reason: "ORCH_ERR_TOTEBOX_OFFLINE: no link",
    position: pos("EUR", 1, 2, 3, 4),
  },
  {
    id: "eps",
    name: "Eps Fund",
    tags: { region: "east", kind: "fund" },
    status: "ok",
    reason: "",
    position: pos("USD", 10_00, 10_00, 0, 0),
    occupancy: { units: 0, occupied: 0 },
    income: incomeOf(50),
    intercompany: [{ peer: "alpha", name: "Alpha Holdings", balance: 75 }],
    pending: 0,
  },
  {
    id: "eta",
    name: "Eta Household",
    tags: { kind: "household" },
    status: "ok",
    reason: "",
    position: pos("EUR", 5_00, 6_00, 1_00, 0),
    occupancy: { units: 0, occupied: 0 },
    income: incomeOf(10),
    intercompany: [{ peer: "mu", name: "Mu Trust", balance: 900 }],
    pending: 0,
  },
  {
    id: "kappa",
    name: "Kappa Project",
    tags: { region: "north", kind: "project" },
    status: "timeout",
    reason: "ORCH_ERR_TOTEBOX_TIMEOUT: no answer in 5000 ms",
  },
  {
    id: "mu",
    name: "Mu Trust",
    tags: { region: "north", kind: "fund" },
    status: "suppressed",
    reason: "2 group(s) below the owner's privacy floor",
  },
];

// ---------------------------------------------------------------------------------------------
// The same questions answered in plain TypeScript.

const sumOrNull = (xs: (number | undefined)[]): number | null => {
  const present = xs.filter((x): x is number => x !== undefined);
  return present.length === 0 ? null : present.reduce((a, b) => a + b, 0);
};

const currencyOf = (ps: (Position | undefined)[]): string | null => {
  const set = new Set(ps.filter((p): p is Position => p !== undefined).map((p) => p.currency));
  return set.size === 0 ? null : set.size === 1 ? [...set][0]! : "MIXED";
};

const byCodeUnits = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function expectedPortfolio(fleet: readonly FakeTotebox[], groupBy: string): Cell[][] {
  const answered = fleet.filter((t) => t.status === "ok" && (t.position || t.occupancy));
  const figures = (ts: FakeTotebox[]): Cell[] => {
    const units = sumOrNull(ts.map((t) => t.occupancy?.units));
    const occupied = sumOrNull(ts.map((t) => t.occupancy?.occupied));
    return [
      ts.length,
      currencyOf(ts.map((t) => t.position)),
      sumOrNull(ts.map((t) => t.position?.cash)),
      sumOrNull(ts.map((t) => t.position?.assets)),
      sumOrNull(ts.map((t) => t.position?.liabilities)),
      sumOrNull(ts.map((t) => t.position?.equity)),
      sumOrNull(ts.map((t) => t.position?.debt)),
      sumOrNull(ts.map((t) => t.position?.net_value)),
      units,
      occupied,
      units !== null && units > 0 ? occupied! / units : 0,
    ];
  };
  const groups = new Map<string, FakeTotebox[]>();
  for (const t of answered) {
    const g = Object.hasOwn(t.tags, groupBy) ? t.tags[groupBy]! : "(none)";
    const members = groups.get(g);
    if (members) members.push(t);
    else groups.set(g, [t]);
  }
  const rows: Cell[][] = [];
  for (const g of [...groups.keys()].sort(byCodeUnits)) {
    const members = groups.get(g)!.sort((a, b) => byCodeUnits(a.id, b.id));
    for (const t of members) rows.push(["totebox", g, t.id, t.name, ...figures([t])]);
    rows.push(["subtotal", g, null, null, ...figures(members)]);
  }
  rows.push(["total", null, null, null, ...figures(answered)]);
  return rows;
}

interface Pair {
  a: string;
  b: string;
  balanceA: number | null;
  balanceB: number | null;
  status: "matched" | "mismatched" | "one-sided";
  missingSide: "a" | "b" | null;
  missingReason: string | null;
}

function expectedPairs(fleet: readonly FakeTotebox[]): Pair[] {
  const ic = new Map<string, number>();
  for (const t of fleet) {
    if (t.status !== "ok") continue;
    for (const r of t.intercompany ?? []) {
      if (r.peer === t.id) continue;
      const k = `${t.id}\u0000${r.peer}`;
      ic.set(k, (ic.get(k) ?? 0) + r.balance);
    }
  }
  const keys = new Set<string>();
  for (const k of ic.keys()) {
    const [o, p] = k.split("\u0000") as [string, string];
    keys.add(o < p ? `${o}\u0000${p}` : `${p}\u0000${o}`);
  }
  const why = (id: string): string => {
    const c = fleet.find((t) => t.id === id);
    if (!c) return "not targeted";
    if (c.status === "suppressed") return "suppressed by its privacy floor";
    if (c.status !== "ok") return `did not answer (${c.status})`;
    return "no row";
  };
  const pairs = [...keys].map((k): Pair => {
    const [a, b] = k.split("\u0000") as [string, string];
    const balanceA = ic.get(`${a}\u0000${b}`) ?? null;
    const balanceB = ic.get(`${b}\u0000${a}`) ?? null;
    const status =
      balanceA === null || balanceB === null
        ? "one-sided"
        : balanceA + balanceB === 0
          ? "matched"
          : "mismatched";
    const missingSide = balanceA === null ? "a" : balanceB === null ? "b" : null;
    return {
      a,
      b,
      balanceA,
      balanceB,
      status,
      missingSide,
      missingReason: missingSide === null ? null : why(missingSide === "a" ? a : b),
    };
  });
  const rank = { mismatched: 0, "one-sided": 1, matched: 2 } as const;
  const diff = (p: Pair) =>
    p.balanceA !== null && p.balanceB !== null ? Math.abs(p.balanceA + p.balanceB) : -1;
  return pairs.sort(
    (x, y) =>
      rank[x.status] - rank[y.status] || diff(y) - diff(x) || byCodeUnits(x.a, y.a) || byCodeUnits(x.b, y.b),
  );
}

function section(out: CombinedSection[], name: string): CombinedSection {
  const s = out.find((x) => x.name === name);
  if (!s) throw new Error(`no section ${name}`);
  return s;
}

function objects(s: CombinedSection): Record<string, Cell>[] {
  return s.rows.map((r) => Object.fromEntries(s.columns.map((c, i) => [c.name, r[i]!])));
}

async function combineError(
  p: Promise<unknown>,
): Promise<{ code: OrchErrorCode; message: string; detail: unknown }> {
  try {
    await p;
  } catch (e) {
    if (isOrchError(e)) return { code: e.code, message: e.message, detail: e.detail };
    throw e;
  }
  throw new Error("expected the combine to fail");
}

let builtins: Map<string, Viewport>;
beforeAll(async () => {
  builtins = await builtinViewports();
});
const vp = (name: string) => builtins.get(name)!;

// ---------------------------------------------------------------------------------------------

describe("portfolio", () => {
  it("rolls up by region: Toteboxes, subtotals per group, grand total, weighted occupancy", async () => {
    const params = resolveViewportParams(vp("portfolio"), {}, AS_OF);
    expect(params).toEqual({ group_by: "region", as_of: AS_OF });
    const out = await runCombine(inputFor(vp("portfolio"), FLEET, params));
    expect(out).toHaveLength(1);
    const rollup = out[0]!;
    expect(rollup.title).toBe("Portfolio by region");
    expect(rollup.chart).toEqual({ type: "bar", x: "grp", y: ["net_value"] });
    expect(rollup.rows).toEqual(expectedPortfolio(FLEET, "region"));

    // Spelled out once, so the expectation above is not only a mirror of its own helper.
    const rows = objects(rollup);
    expect(rows.map((r) => [r.level, r.grp, r.totebox])).toEqual([
      ["totebox", "(none)", "eta"],
      ["subtotal", "(none)", null],
      ["totebox", "east", "eps"],
      ["totebox", "east", "gamma"],
      ["subtotal", "east", null],
      ["totebox", "west", "alpha"],
      ["totebox", "west", "beta"],
      ["subtotal", "west", null],
      ["total", null, null],
    ]);
    const west = rows[7]!;
    expect(west).toMatchObject({ toteboxes: 2, currency: "USD", units: 40, occupied_units: 30 });
    expect(west.net_value).toBe(3_000_00 + 2_000_00);
    expect(west.occupancy_ratio).toBe(30 / 40);
    const total = rows[8]!;
    // delta (offline) and kappa (timeout) contribute nothing; eta's EUR makes the total MIXED.
    expect(total).toMatchObject({ toteboxes: 5, currency: "MIXED", units: 44, occupied_units: 31 });
    expect(total.occupancy_ratio).toBe(31 / 44);
    expect(rows[0]).toMatchObject({ name: "Eta Household", occupancy_ratio: 0, units: 0 });
  });

  it("groups by any tag; a Totebox without the tag goes to (none)", async () => {
    const params = resolveViewportParams(vp("portfolio"), { group_by: "kind" }, AS_OF);
    const out = await runCombine(inputFor(vp("portfolio"), FLEET, params));
    expect(out[0]!.title).toBe("Portfolio by kind");
    expect(out[0]!.rows).toEqual(expectedPortfolio(FLEET, "kind"));
    const none = await runCombine(
      inputFor(vp("portfolio"), FLEET, resolveViewportParams(vp("portfolio"), { group_by: "nope" }, AS_OF)),
    );
    expect(objects(none[0]!).filter((r) => r.level === "subtotal")).toHaveLength(1);
    expect(objects(none[0]!)[5]).toMatchObject({ level: "subtotal", grp: "(none)", toteboxes: 5 });
  });

  it("frozen tags (one object per registry entry, as fan-outs hand them) give the same roll-up, run after run", async () => {
    // The combine remembers the DuckDB map of a frozen tags object; a second run reuses it.
    const frozen = FLEET.map((t) => ({ ...t, tags: Object.freeze({ ...t.tags }) }));
    for (const groupBy of ["region", "kind", "region"]) {
      const params = resolveViewportParams(vp("portfolio"), { group_by: groupBy }, AS_OF);
      const out = await runCombine(inputFor(vp("portfolio"), frozen, params));
      expect(out[0]!.rows).toEqual(expectedPortfolio(FLEET, groupBy));
    }
  });

  it("an estate where nobody answered still has its grand total row (zero Toteboxes, unknown sums)", async () => {
    const down = FLEET.map((t) => ({ ...t, status: "offline" as const }));
    const out = await runCombine(inputFor(vp("portfolio"), down, { group_by: "region", as_of: AS_OF }));
    expect(out[0]!.rows).toEqual([
      ["total", null, null, null, 0, null, null, null, null, null, null, null, null, null, 0],
    ]);
  });

  it("equals the plain-TypeScript roll-up on random fleets (property)", async () => {
    const tagValue = fc.constantFrom("west", "east", "north", "(none)", "A", "a", "zz");
    const tb = fc.record({
      tags: fc.record({ region: tagValue, kind: tagValue }, { requiredKeys: [] }),
      status: fc.constantFrom<Status>("ok", "ok", "ok", "offline", "timeout", "denied", "suppressed"),
      position: fc.option(
        fc.record({
          currency: fc.constantFrom("USD", "EUR"),
          cash: fc.integer({ min: -1e12, max: 1e12 }),
          assets: fc.integer({ min: 0, max: 1e13 }),
          liabilities: fc.integer({ min: 0, max: 1e13 }),
          equity: fc.integer({ min: -1e13, max: 1e13 }),
          debt: fc.integer({ min: 0, max: 1e13 }),
          net_value: fc.integer({ min: -1e13, max: 1e13 }),
        }),
        { nil: undefined },
      ),
      occupancy: fc.option(
        fc
          .tuple(fc.integer({ min: 0, max: 5_000 }), fc.integer({ min: 0, max: 5_000 }))
          .map(([a, b]) => ({ units: Math.max(a, b), occupied: Math.min(a, b) })),
        { nil: undefined },
      ),
    });
    await fc.assert(
      fc.asyncProperty(
        fc.array(tb, { minLength: 0, maxLength: 25 }),
        fc.constantFrom("region", "kind"),
        async (tbs, by) => {
          const fleet: FakeTotebox[] = tbs.map((t, i) => ({
            id: `tb-${String(i).padStart(2, "0")}`,
            name: `Totebox ${i}`,
            reason: t.status === "ok" ? "" : "down",
            ...t,
          }));
          const out = await runCombine(inputFor(vp("portfolio"), fleet, { group_by: by, as_of: AS_OF }));
          expect(out[0]!.rows).toEqual(expectedPortfolio(fleet, by));
        },
      ),
      { seed, numRuns: 25 },
    );
  });
});

describe("reconciliation", () => {
  it("classifies every intercompany pair: matched, mismatched (with the difference), one-sided (and why)", async () => {
    const out = await runCombine(inputFor(vp("reconciliation"), FLEET, { as_of: AS_OF }));
    const pairs = objects(section(out, "pairs"));
    expect(pairs).toEqual([
      {
        entity_a: "alpha",
        name_a: "Alpha Holdings",
        entity_b: "gamma",
        name_b: "Gamma Inc",
        balance_a: -200,
        balance_b: 250,
        difference: 50,
        status: "mismatched",
        missing_side: null,
        missing_reason: null,
      },
      {
        entity_a: "alpha",
        name_a: "Alpha Holdings",
        entity_b: "eps",
        name_b: "Eps Fund",
        balance_a: null,
        balance_b: 75,
        difference: null,
        status: "one-sided",
        missing_side: "a",
        missing_reason: "no row",
      },
      {
        entity_a: "beta",
        name_a: "Beta Ltd",
        entity_b: "delta",
        name_b: "Delta GmbH",
        balance_a: 1_234,
        balance_b: null,
        difference: null,
        status: "one-sided",
        missing_side: "b",
        missing_reason: "did not answer (offline)",
      },
      {
        entity_a: "eta",
        name_a: "Eta Household",
        entity_b: "mu",
        name_b: "Mu Trust",
        balance_a: 900,
        balance_b: null,
        difference: null,
        status: "one-sided",
        missing_side: "b",
        missing_reason: "suppressed by its privacy floor",
      },
      {
        entity_a: "gamma",
        name_a: "Gamma Inc",
        entity_b: "zeta",
        // Not in the fleet: named by gamma's own books.
        name_b: "Zeta Partners",
        balance_a: -4_000,
        balance_b: null,
        difference: null,
        status: "one-sided",
        missing_side: "b",
        missing_reason: "not targeted",
      },
      {
        entity_a: "alpha",
        name_a: "Alpha Holdings",
        entity_b: "beta",
        name_b: "Beta Ltd",
        balance_a: 500,
        balance_b: -500,
        difference: 0,
        status: "matched",
        missing_side: null,
        missing_reason: null,
      },
    ]);
    expect(objects(section(out, "summary"))).toEqual([
      { pairs: 6, matched: 1, mismatched: 1, one_sided: 4, total_abs_difference: 50 },
    ]);
    expect(section(out, "pairs").title).toBe(`Intercompany pairs as of ${AS_OF}`);
  });

  it("a counterparty missing from coverage as offline turns its pairs one-sided", async () => {
    const fleet = FLEET.map((t) => (t.id === "gamma" ? { ...t, status: "offline" as const } : t));
    const pairs = objects(
      section(await runCombine(inputFor(vp("reconciliation"), fleet, { as_of: AS_OF })), "pairs"),
    );
    expect(pairs.find((p) => p.entity_a === "alpha" && p.entity_b === "gamma")).toMatchObject({
      balance_a: -200,
      balance_b: null,
      status: "one-sided",
      missing_side: "b",
      missing_reason: "did not answer (offline)",
    });
    // gamma ↔ zeta vanished: neither side answered.
    expect(pairs.some((p) => p.entity_b === "zeta")).toBe(false);
  });

  it("equals the plain-TypeScript classification on random books (property)", async () => {
    const ids = ["a1", "b2", "c3", "d4", "e5", "f6"];
    const books = fc.array(
      fc.record({
        status: fc.constantFrom<Status>("ok", "ok", "ok", "offline", "error", "suppressed"),
        rows: fc.uniqueArray(
          fc.record({
            peer: fc.constantFrom(...ids, "outsider"),
            balance: fc.oneof(fc.integer({ min: -3, max: 3 }), fc.integer({ min: -1e12, max: 1e12 })),
          }),
          { selector: (r) => r.peer, maxLength: 6 },
        ),
      }),
      { minLength: 1, maxLength: ids.length },
    );
    await fc.assert(
      fc.asyncProperty(books, async (bs) => {
        const fleet: FakeTotebox[] = bs.map((b, i) => ({
          id: ids[i]!,
          name: `Entity ${ids[i]}`,
          tags: {},
          status: b.status,
          reason: "",
          intercompany: b.rows.map((r) => ({ peer: r.peer, name: `Entity ${r.peer}`, balance: r.balance })),
        }));
        const out = await runCombine(inputFor(vp("reconciliation"), fleet, { as_of: AS_OF }));
        const got = objects(section(out, "pairs")).map((p) => [
          p.entity_a,
          p.entity_b,
          p.balance_a,
          p.balance_b,
          p.status,
          p.missing_side,
          p.missing_reason,
        ]);
        const want = expectedPairs(fleet);
        expect(got).toEqual(
          want.map((p) => [p.a, p.b, p.balanceA, p.balanceB, p.status, p.missingSide, p.missingReason]),
        );
        const mism = want.filter((p) => p.status === "mismatched");
        expect(objects(section(out, "summary"))[0]).toEqual({
          pairs: want.length,
          matched: want.filter((p) => p.status === "matched").length,
          mismatched: mism.length,
          one_sided: want.filter((p) => p.status === "one-sided").length,
          total_abs_difference: mism.reduce((s, p) => s + Math.abs(p.balanceA! + p.balanceB!), 0),
        });
      }),
      { seed, numRuns: 25 },
    );
  });
});

describe("executive-summary", () => {
  it("figures, income windows, exceptions and coverage of the estate", async () => {
    const out = await runCombine(inputFor(vp("executive-summary"), FLEET, { as_of: AS_OF }));
    expect(out.map((s) => [s.name, s.chart?.type])).toEqual([
      ["figures", "tiles"],
      ["windows", "bar"],
      ["exceptions", "table"],
      ["coverage", "pie"],
    ]);
    const ok = FLEET.filter((t) => t.status === "ok");
    const sum = (f: (t: FakeTotebox) => number | undefined) => sumOrNull(ok.map(f));
    expect(objects(section(out, "figures"))).toEqual([
      {
        toteboxes_targeted: 8,
        // mu answered (suppressed), with nothing to add.
        toteboxes_answered: 6,
        currency: "MIXED",
        cash: sum((t) => t.position?.cash),
        assets: sum((t) => t.position?.assets),
        liabilities: sum((t) => t.position?.liabilities),
        debt: sum((t) => t.position?.debt),
        net_value: sum((t) => t.position?.net_value),
        units: 44,
        occupied_units: 31,
        occupancy_ratio: 31 / 44,
        pending_staged_entries: 3,
      },
    ]);
    expect(objects(section(out, "windows"))).toEqual(
      PERIODS.map((p) => ({
        period: p,
        toteboxes: 5,
        income: sum((t) => t.income?.[p].income),
        expenses: sum((t) => t.income?.[p].expenses),
        net: sum((t) => (t.income ? t.income[p].income - t.income[p].expenses : undefined)),
      })),
    );
    expect(objects(section(out, "exceptions"))).toEqual([
      {
        kind: "intercompany-mismatch",
        totebox: "alpha",
        detail: "with gamma: alpha records -200, gamma records 250, difference 50",
        amount: 50,
      },
      {
        kind: "intercompany-one-sided",
        totebox: "gamma",
        detail: "with zeta: gamma records -4000, no mirror (not targeted)",
        amount: -4_000,
      },
      {
        kind: "intercompany-one-sided",
        totebox: "beta",
        detail: "with delta: beta records 1234, no mirror (did not answer (offline))",
        amount: 1_234,
      },
      {
        kind: "intercompany-one-sided",
        totebox: "eta",
        detail: "with mu: eta records 900, no mirror (suppressed by its privacy floor)",
        amount: 900,
      },
      {
        kind: "intercompany-one-sided",
        totebox: "eps",
        detail: "with alpha: eps records 75, no mirror (no row)",
        amount: 75,
      },
      {
        kind: "not-answered",
        totebox: "delta",
        detail: "offline: ORCH_ERR_TOTEBOX_OFFLINE: no link",
        amount: null,
      },
      {
        kind: "not-answered",
        totebox: "kappa",
        detail: "timeout: ORCH_ERR_TOTEBOX_TIMEOUT: no answer in 5000 ms",
        amount: null,
      },
      {
        kind: "suppressed",
        totebox: "mu",
        detail: "suppressed: 2 group(s) below the owner's privacy floor",
        amount: null,
      },
      { kind: "pending-staged", totebox: "beta", detail: "2 staged entries awaiting the owner", amount: 2 },
      { kind: "pending-staged", totebox: "gamma", detail: "1 staged entry awaiting the owner", amount: 1 },
    ]);
    expect(section(out, "coverage").rows).toEqual([
      ["ok", 5],
      ["timeout", 1],
      ["offline", 1],
      ["denied", 0],
      ["suppressed", 1],
      ["error", 0],
    ]);
  });

  it("its intercompany exceptions are exactly reconciliation's non-matched pairs", async () => {
    const rec = objects(
      section(await runCombine(inputFor(vp("reconciliation"), FLEET, { as_of: AS_OF })), "pairs"),
    );
    const exe = objects(
      section(await runCombine(inputFor(vp("executive-summary"), FLEET, { as_of: AS_OF })), "exceptions"),
    );
    const fromRec = rec
      .filter((p) => p.status !== "matched")
      .map((p) => [p.status, [p.entity_a, p.entity_b].sort().join("|")])
      .sort();
    const fromExe = exe
      .filter((e) => String(e.kind).startsWith("intercompany-"))
      .map((e) => {
        const other = /^with ([^:]+):/.exec(String(e.detail))![1]!;
        return [
          String(e.kind).replace("intercompany-", "").replace("mismatch", "mismatched"),
          [e.totebox, other].sort().join("|"),
        ];
      })
      .sort();
    expect(fromExe).toEqual(fromRec);
  });
});

// ---------------------------------------------------------------------------------------------

describe("combine values, limits and failures", () => {
  const custom = async (
    sql: string,
    columns: Record<string, string>,
    extra: Record<string, unknown> = {},
  ) => {
    const m = await compileViewports([
      {
        name: "custom",
        definition: {
          params: {
            as_of: { type: "date", default: "today" },
            flag: { type: "boolean" },
            n: { type: "integer" },
          },
          reads: [{ view: "position", params: { as_of: "$as_of" } }, { view: "intercompany" }],
          sections: [{ name: "s", sql, columns }],
          ...extra,
        },
        line: 1,
        column: 1,
      },
    ]);
    return m.get("custom")!;
  };

  it("a kept database starts each combine empty: nothing of the last combine's tables or rows is there", async () => {
    // Every table of this viewport and every row in them, as the next combine sees it.
    const v = await custom(
      "SELECT (SELECT count(*) FROM duckdb_tables()) AS tables, (SELECT count(*) FROM position) AS positions, (SELECT count(*) FROM intercompany) AS pairs",
      { tables: "integer", positions: "integer", pairs: "integer" },
    );
    const params = resolveViewportParams(v, {}, AS_OF);
    const first = await runCombine(inputFor(v, FLEET, params));
    const answered = FLEET.filter((t) => t.status === "ok" || t.status === "suppressed").length;
    // coverage, position and intercompany; the fleet's rows loaded.
    expect(first[0]!.rows[0]![0]).toBe(3);
    expect(first[0]!.rows[0]![1]).toBeGreaterThanOrEqual(answered - 1);
    const before = combineSandboxCounts();
    const empty = await runCombine(inputFor(v, [], params));
    const after = combineSandboxCounts();
    // The same database, kept: reused, not opened again.
    expect(after.reused).toBe(before.reused + 1);
    expect(after.opened).toBe(before.opened);
    expect(empty[0]!.rows).toEqual([[3, 0, 0]]);
  });

  it("a kept table keeps nothing of the last combine's rows: no segment, no size, no value", async () => {
    // The same viewport twice: the second combine finds the input tables the first created (kept
    // with the database), and nothing in them of the first combine's rows.
    const v = await custom(
      `SELECT (SELECT count(*) FROM pragma_storage_info('position')) AS segments,
              (SELECT sum(estimated_size) FROM duckdb_tables()) AS size,
              (SELECT count(*) FROM position) AS positions,
              (SELECT min(totebox) FROM position) AS lowest,
              (SELECT table_oid FROM duckdb_tables() WHERE table_name = 'position') AS oid`,
      { segments: "integer", size: "integer", positions: "integer", lowest: "string", oid: "integer" },
    );
    const params = resolveViewportParams(v, {}, AS_OF);
    const first = await runCombine(inputFor(v, FLEET, params));
    expect(first[0]!.rows[0]![2]).toBeGreaterThan(0);
    const before = combineSandboxCounts();
    const second = await runCombine(inputFor(v, [], params));
    expect(combineSandboxCounts().reused).toBe(before.reused + 1);
    // The same table (kept, not created again), and empty.
    expect(second[0]!.rows).toEqual([[0, 0, 0, null, first[0]!.rows[0]![4]]]);
  });

  it("a kept database that combined another viewport holds only this one's tables", async () => {
    const portfolio = vp("portfolio");
    await runCombine(inputFor(portfolio, FLEET, { group_by: "region", as_of: AS_OF }));
    const v = await custom(
      "SELECT string_agg(table_name, ',' ORDER BY table_name) AS names FROM duckdb_tables()",
      {
        names: "string",
      },
    );
    const before = combineSandboxCounts();
    const r = await runCombine(inputFor(v, FLEET, resolveViewportParams(v, {}, AS_OF)));
    expect(combineSandboxCounts().reused).toBe(before.reused + 1);
    // portfolio's occupancy table is gone; this viewport's intercompany is there.
    expect(r[0]!.rows).toEqual([["coverage,intercompany,position"]]);
  });

  it("a database whose combine failed is closed, not kept for the next", async () => {
    // Compiles on empty tables (max of nothing is NULL); fails once a Totebox id is in them.
    const v = await custom("SELECT CAST(max(totebox) AS INTEGER) AS n FROM position", { n: "integer" });
    const ok = await custom("SELECT count(*) AS n FROM position", { n: "integer" });
    const params = resolveViewportParams(v, {}, AS_OF);
    await runCombine(inputFor(ok, [], params)); // at least one kept
    const before = combineSandboxCounts();
    expect(before.idle).toBeGreaterThan(0);
    expect((await combineError(runCombine(inputFor(v, FLEET, params)))).code).toBe("ORCH_ERR_COMBINE");
    const after = combineSandboxCounts();
    expect(after.reused).toBe(before.reused + 1);
    expect(after.idle).toBe(before.idle - 1);
    await runCombine(inputFor(ok, [], params));
    expect(combineSandboxCounts().idle).toBe(Math.max(before.idle - 1, 1));
  });

  it("converts cells: big integers to digit strings, dates to YYYY-MM-DD, decimals to numbers, NULL to null", async () => {
    const v = await custom(
      `SELECT sum(balance) AS big, max(as_of) AS d, 1.5 * 2 AS dec, $flag AS flag, $n AS n, NULL::VARCHAR AS s,
              min(balance) AS small
         FROM intercompany, position`,
      {
        big: "integer",
        d: "date",
        dec: "number",
        flag: "boolean",
        n: "integer",
        s: "string",
        small: "integer",
      },
    );
    const fleet: FakeTotebox[] = [
      {
        ...FLEET[0]!,
        intercompany: [
          { peer: "x", name: "X", balance: 2 ** 53 },
          { peer: "y", name: "Y", balance: 2 ** 53 },
        ],
      },
    ];
    const params = resolveViewportParams(v, { flag: "true" }, AS_OF);
    const out = await runCombine(inputFor(v, fleet, params));
    expect(out[0]!.rows).toEqual([["18014398509481984", AS_OF, 3, true, null, null, "9007199254740992"]]);
  });

  it("runs in a sandbox: no spilling to disk, no file or network access, configuration locked", async () => {
    const v = await custom(
      `SELECT current_setting('temp_directory')::VARCHAR AS temp_directory,
              current_setting('enable_external_access')::VARCHAR AS external_access,
              current_setting('lock_configuration')::VARCHAR AS locked,
              current_setting('autoload_known_extensions')::VARCHAR AS autoload,
              current_setting('threads')::VARCHAR AS threads`,
      {
        temp_directory: "string",
        external_access: "string",
        locked: "string",
        autoload: "string",
        threads: "string",
      },
    );
    const out = await runCombine(inputFor(v, FLEET, { as_of: AS_OF }));
    expect(objects(out[0]!)).toEqual([
      { temp_directory: "", external_access: "false", locked: "true", autoload: "false", threads: "1" },
    ]);
  });

  it("refuses more input rows than maxCombineInputRows before loading anything", async () => {
    const e = await combineError(
      runCombine({
        ...inputFor(vp("portfolio"), FLEET, { group_by: "region", as_of: AS_OF }),
        limits: { maxCombineInputRows: 10 },
      }),
    );
    expect(e.code).toBe("ORCH_ERR_COMBINE_LIMIT");
    expect(e.detail).toMatchObject({ limit: "maxCombineInputRows", max: 10 });
  });

  it("refuses a section returning more than maxCombineOutputRows", async () => {
    const e = await combineError(
      runCombine({
        ...inputFor(vp("portfolio"), FLEET, { group_by: "region", as_of: AS_OF }),
        limits: { maxCombineOutputRows: 8 },
      }),
    );
    expect(e.code).toBe("ORCH_ERR_COMBINE_LIMIT");
    expect(e.detail).toMatchObject({ limit: "maxCombineOutputRows", section: "rollup" });
    // Exactly at the limit is fine.
    const ok = await runCombine({
      ...inputFor(vp("portfolio"), FLEET, { group_by: "region", as_of: AS_OF }),
      limits: { maxCombineOutputRows: 9 },
    });
    expect(ok[0]!.rows).toHaveLength(9);
  });

  it("a section failing at run time is ORCH_ERR_COMBINE naming the section, never quoting data", async () => {
    const v = await custom("SELECT CAST(counterparty_name AS INTEGER) AS n FROM intercompany", {
      n: "integer",
    });
    const e = await combineError(runCombine(inputFor(v, FLEET.slice(0, 1), { as_of: AS_OF })));
    expect(e.code).toBe("ORCH_ERR_COMBINE");
    expect(e.message).toContain('section "s"');
    expect(e.message).not.toContain("Beta");
    expect(JSON.stringify(e.detail)).not.toContain("Beta");
    expect(e.detail).toMatchObject({ section: "s", error: "Conversion Error" });
  });

  it("interrupts a section that runs past the deadline, and stops on cancellation", async () => {
    // Cheap on the empty tables of compile time, endless once position has a row.
    const v = await custom("SELECT count(*) AS n FROM position, range(100000000000)", { n: "integer" });
    const started = performance.now();
    const idle0 = combineSandboxCounts().idle;
    const e = await combineError(runCombine({ ...inputFor(v, FLEET, { as_of: AS_OF }), timeoutMs: 200 }));
    expect(e.code).toBe("ORCH_ERR_COMBINE_LIMIT");
    expect(e.detail).toMatchObject({ limit: "timeoutMs", section: "s" });
    console.log(`interrupted after ${(performance.now() - started).toFixed(0)} ms (budget 200 ms)`);

    const ac = new AbortController();
    const running = runCombine({ ...inputFor(v, FLEET, { as_of: AS_OF }), signal: ac.signal });
    ac.abort();
    expect((await combineError(running)).code).toBe("ORCH_ERR_CANCELLED");
    // Neither interrupted database was kept (each took a kept one, if any, and closed it).
    expect(combineSandboxCounts().idle).toBe(Math.max(idle0 - 2, 0));
  });

  it("refuses malformed input: duplicate coverage, unknown Totebox or read, answers of the wrong shape", async () => {
    const base = inputFor(vp("portfolio"), FLEET, { group_by: "region", as_of: AS_OF });
    const dup = await combineError(runCombine({ ...base, coverage: [...base.coverage, base.coverage[0]!] }));
    expect(dup).toMatchObject({ code: "ORCH_ERR_COMBINE", detail: { totebox: "alpha" } });

    const badStatus = await combineError(
      runCombine({
        ...base,
        coverage: base.coverage.map((c, i) => (i === 0 ? { ...c, status: "fine" } : c)),
      }),
    );
    expect(badStatus.code).toBe("ORCH_ERR_COMBINE");

    const stranger = new Map(base.results);
    stranger.set("position", [
      ...base.results.get("position")!,
      { totebox: "mallory", tags: {}, result: viewAnswer(FLEET[0]!, "position")! },
    ]);
    expect(await combineError(runCombine({ ...base, results: stranger }))).toMatchObject({
      code: "ORCH_ERR_COMBINE",
      detail: { totebox: "mallory" },
    });

    const unknownRead = new Map(base.results);
    unknownRead.set("ledger", []);
    expect((await combineError(runCombine({ ...base, results: unknownRead }))).code).toBe("ORCH_ERR_COMBINE");

    const wrongShape = new Map(base.results);
    wrongShape.set("position", [
      {
        totebox: "alpha",
        tags: {},
        result: answer(
          [
            { name: "cash", type: "string" },
            { name: "net_value", type: "integer" },
          ],
          [["lots", 1]],
        ),
      },
    ]);
    expect(await combineError(runCombine({ ...base, results: wrongShape }))).toMatchObject({
      code: "ORCH_ERR_COMBINE",
      detail: { read: "position", totebox: "alpha" },
    });
  });

  // Loading only the columns a viewport's SQL reads (load-plan.ts) must never change a dashboard:
  // every case here runs the same combine twice, on the compiled viewport (with its plan) and on
  // an uncompiled copy of it (no plan: every column loaded), and the results must be equal.
  const unplanned = (v: Viewport): Viewport => ({ ...v });
  const bothWays = async (
    v: Viewport,
    params: Readonly<Record<string, string | number | boolean>>,
    fleet: readonly FakeTotebox[] = FLEET,
  ) => {
    const planned = await runCombine(inputFor(v, fleet, params));
    const all = await runCombine(inputFor(unplanned(v), fleet, params));
    expect(planned).toEqual(all);
    return planned;
  };
  const loads = (v: Viewport, table: string): string[] | "all" | "no rows" => {
    const t = viewportLoadPlan(v)?.get(table);
    if (t === undefined || t.columns === undefined) return t?.rows === false ? "no rows" : "all";
    return t.rows ? [...t.columns] : "no rows";
  };

  it("the built-in viewports load only the columns their SQL names, with the same results as loading all", async () => {
    for (const name of ["portfolio", "reconciliation", "executive-summary"]) {
      const v = vp(name);
      expect(viewportLoadPlan(v), name).toBeDefined();
      const out = await bothWays(v, resolveViewportParams(v, {}, AS_OF));
      expect(out.some((s) => s.rows.length > 0)).toBe(true);
    }
    // The portfolio never reads a position's as_of (the read's params already pin it) and reads
    // two of occupancy's eight columns.
    const positionColumns = DEFAULT_VIEW_COLUMNS.position!.map((c) => c.name);
    expect(loads(vp("portfolio"), "position")).toEqual([
      "totebox",
      "tags",
      ...positionColumns.filter((c) => c !== "as_of"),
    ]);
    expect(loads(vp("portfolio"), "occupancy")).toEqual(["totebox", "tags", "units", "occupied_units"]);
  });

  it("a table the SQL never reads is left empty; one read only for its rows keeps its Totebox column", async () => {
    const v = await custom("SELECT count(*) AS n FROM position", { n: "integer" });
    expect(loads(v, "position")).toEqual(["totebox"]);
    expect(loads(v, "intercompany")).toBe("no rows");
    expect(loads(v, "coverage")).toBe("no rows");
    const out = await bothWays(v, resolveViewportParams(v, {}, AS_OF));
    expect(out[0]!.rows[0]![0]).toBeGreaterThan(0);
  });

  it("names are matched as DuckDB matches them: any case, qualified, aliased, in USING, in subqueries", async () => {
    const v = await custom(
      `SELECT sum(P.NET_VALUE) AS a, (SELECT max(Cash) FROM Position) AS b, count(*) AS c
         FROM position AS p JOIN coverage USING (totebox) WHERE p.currency IS NOT NULL`,
      { a: "integer", b: "integer", c: "integer" },
    );
    expect(loads(v, "position")).toEqual(["totebox", "currency", "cash", "net_value"]);
    expect(loads(v, "coverage")).toEqual(["totebox"]);
    await bothWays(v, resolveViewportParams(v, {}, AS_OF));
  });

  it("a plan is used only if every section still compiles on tables created without its left-out columns", async () => {
    const v = await custom("SELECT sum(net_value) AS v, max(currency) AS c FROM position", {
      v: "integer",
      c: "string",
    });
    expect(loads(v, "position")).toEqual(["currency", "net_value"]);
    // The same viewport planned again with a planner that leaves out a column the SQL names: the
    // check on pruned tables refuses that plan, so the viewport loads everything.
    const copy = unplanned(v);
    const wrong = (): LoadPlan =>
      new Map([
        ["coverage", { rows: false, columns: undefined }],
        ["position", { rows: true, columns: new Set(["net_value"]) }],
        ["intercompany", { rows: false, columns: undefined }],
      ]);
    await withSandbox((box) => planViewportLoads(box, copy, wrong));
    expect(viewportLoadPlan(copy)).toBeUndefined();
    // A planner that keeps what the SQL names passes the same check.
    const right = (): LoadPlan =>
      new Map([
        ["coverage", { rows: false, columns: undefined }],
        ["position", { rows: true, columns: new Set(["currency", "net_value"]) }],
        ["intercompany", { rows: false, columns: undefined }],
      ]);
    await withSandbox((box) => planViewportLoads(box, copy, right));
    expect(loads(copy, "position")).toEqual(["currency", "net_value"]);
  });

  it("pruned tables load answers larger than one DuckDB chunk, row for row", async () => {
    const v = await custom(
      "SELECT count(*) AS n, sum(balance) AS b, count(DISTINCT totebox) AS t, max(tags['region']) AS r FROM intercompany",
      { n: "integer", b: "integer", t: "integer", r: "string" },
    );
    expect(loads(v, "intercompany")).toEqual(["totebox", "tags", "balance"]);
    // 3 Toteboxes of 1,500 rows: chunks of 2,048 rows end in the middle of the second answer.
    const fleet: FakeTotebox[] = FLEET.filter((t) => t.status === "ok")
      .slice(0, 3)
      .map((t, k) => ({
        ...t,
        intercompany: Array.from({ length: 1_500 }, (_, i) => ({ peer: `p${i}`, name: "P", balance: i + k })),
      }));
    const out = await bothWays(v, resolveViewportParams(v, {}, AS_OF), fleet);
    const expected = fleet.reduce((sum, t) => sum + t.intercompany!.reduce((a, r) => a + r.balance, 0), 0);
    expect(out[0]!.rows[0]!.slice(0, 3)).toEqual([4_500, expected, 3]);
  });

  // SQL that observes columns it does not name: each loads them all (no plan, or the whole
  // table), and gives the same result as loading everything.
  const observesUnnamed: [string, string, Record<string, string>, "no plan" | string][] = [
    [
      "a star",
      "SELECT count(*) AS n FROM (SELECT DISTINCT position.* FROM position)",
      { n: "integer" },
      "no plan",
    ],
    [
      "COLUMNS(...)",
      "SELECT max(COLUMNS('^c')) FROM position",
      { currency: "string", cash: "integer" },
      "no plan",
    ],
    [
      "a star with EXCLUDE",
      "SELECT count(*) AS n FROM (SELECT * EXCLUDE (cash) FROM position)",
      { n: "integer" },
      "no plan",
    ],
    ["FROM without SELECT", "SELECT count(*) AS n FROM (FROM position)", { n: "integer" }, "no plan"],
    [
      "a row as a value",
      "SELECT string_agg(to_json(position)::VARCHAR, ';' ORDER BY totebox) AS j FROM position",
      { j: "string" },
      "position",
    ],
    ["an alias as a value", "SELECT count(DISTINCT p) AS n FROM position p", { n: "integer" }, "position"],
    [
      "a NATURAL join",
      "SELECT count(*) AS n FROM position NATURAL JOIN position AS q",
      { n: "integer" },
      "no plan",
    ],
    ["column aliases on a table", "SELECT max(c) AS m FROM position AS p(a, b, c)", { m: "date" }, "no plan"],
    ["a table function", "SELECT count(*) AS n FROM query_table('position')", { n: "integer" }, "no plan"],
    [
      "a PIVOT",
      "SELECT count(*) AS n FROM (PIVOT position ON currency IN ('USD', 'EUR') USING sum(cash))",
      { n: "integer" },
      "no plan",
    ],
    [
      "UNPIVOT",
      "SELECT count(*) AS n FROM (UNPIVOT (SELECT cash, debt FROM position) ON cash, debt INTO NAME k VALUE v)",
      { n: "integer" },
      "no plan",
    ],
  ];
  for (const [what, sql, columns, expected] of observesUnnamed) {
    it(`SQL with ${what} loads every column it can observe`, async () => {
      const v = await custom(sql, columns);
      if (expected === "no plan") expect(viewportLoadPlan(v)).toBeUndefined();
      else {
        // A plan exists (the other read is left out), and it loads this table whole.
        expect(loads(v, expected)).toBe("all");
        expect(loads(v, "intercompany")).toBe("no rows");
      }
      await bothWays(v, resolveViewportParams(v, {}, AS_OF));
    });
  }

  it("prints how long one portfolio combine takes over 24 and over 10,000 Toteboxes", async () => {
    const v = vp("portfolio");
    const regions = ["west", "east", "north", "south", "central"];
    for (const n of [24, 10_000]) {
      const fleet: FakeTotebox[] = Array.from({ length: n }, (_, i) => ({
        id: `tb-${String(i).padStart(5, "0")}`,
        name: `Totebox ${i}`,
        tags: { region: regions[i % regions.length]!, kind: i % 3 === 0 ? "company" : "property" },
        status: i % 97 === 0 ? "offline" : "ok",
        reason: "",
        position: pos("USD", 1_000 * (i % 50), 50_000 * (i % 50), 20_000 * (i % 50), 10_000 * (i % 50)),
        occupancy: { units: (i % 40) + 1, occupied: i % 40 },
      }));
      // Toteboxes with the same figures share one decoded answer: building 20,000 Arrow answers
      // would cost the test far more than the combine it measures.
      const cache = new Map<string, DecodedResult | undefined>();
      const cached = (t: FakeTotebox, view: string) => {
        const key = `${view}|${JSON.stringify(view === "position" ? t.position : t.occupancy)}`;
        if (!cache.has(key)) cache.set(key, viewAnswer(t, view));
        return cache.get(key);
      };
      const input = inputFor(v, fleet, { group_by: "region", as_of: AS_OF }, {}, cached);
      const times: string[] = [];
      let out: CombinedSection[] = [];
      for (let run = 0; run < 2; run++) {
        const t0 = performance.now();
        out = await runCombine(input);
        times.push(`${(performance.now() - t0).toFixed(1)} ms`);
      }
      expect(out[0]!.rows).toEqual(expectedPortfolio(fleet, "region"));
      console.log(
        `portfolio combine over ${n} Toteboxes: ${times.join(", then ")} (${out[0]!.rows.length} rows out)`,
      );
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Real archives, real Toteboxes, real PSP: reconciliation against the demo generator's own rule.

describe("reconciliation over real Totebox archives", () => {
  const NOW = Date.parse("2026-11-01T12:00:00Z");
  const clock = new ManualClock(NOW);
  const ids = ["co-a", "co-b", "co-c", "co-d"];
  let demoSeed = 0;
  let root: string;
  const servers: ToteboxServer[] = [];
  const answers = new Map<string, DecodedResult>();

  const pairsOf = () => ids.flatMap((a, i) => ids.slice(i + 1).map((b) => [a, b] as const));
  const reconciles = (s: number, a: string, b: string) =>
    expectedIntercompanyBalance(a, b, s, AS_OF) + expectedIntercompanyBalance(b, a, s, AS_OF) === 0;

  beforeAll(async () => {
    // The first seed whose estate has both a reconciling and a non-reconciling pair.
    for (let s = 1; s < 1_000 && demoSeed === 0; s++) {
      const r = pairsOf().map(([a, b]) => reconciles(s, a, b));
      if (r.includes(true) && r.includes(false)) demoSeed = s;
    }
    root = mkdtempSync(join(tmpdir(), "orch-combine-"));
    const [hub, operator] = await Promise.all([
      createIdentity({ name: "hub" }),
      createIdentity({ name: "op" }),
    ]);
    for (const id of ids) {
      const dir = join(root, id);
      await initArchive({ dir, id, kind: "company", name: `Company ${id}`, tags: { region: "west" } });
      const a = await openArchive(dir);
      generateDemoData(a.db, {
        kind: "company",
        seed: demoSeed,
        scale: 0.2,
        entityId: id,
        asOf: AS_OF,
        peers: ids.filter((p) => p !== id).map((p) => ({ entityId: p, name: `Company ${p}` })),
      });
      trustPeer(a.db, {
        kind: "aggregator",
        label: "hub",
        publicKey: hub.publicKey,
        fingerprint: hub.fingerprint,
        now: NOW,
      });
      trustPeer(a.db, { kind: "operator", label: "op", publicKey: operator.publicKey, now: NOW });
      a.db.close();
      servers.push(
        await ToteboxServer.start({
          dir,
          clock,
          viewRunner: "in-process",
          logger: pino({ level: "silent" }),
        }),
      );
    }
    const grant = issueGrant({
      operator: "op",
      aggregatorId: hub.fingerprint,
      aggregatorKey: hub.publicKey,
      tenant: "demo",
      toteboxIds: ids,
      views: ["intercompany"],
      actions: ["read"],
      signer: operator.privateKey,
      clock,
    });
    const caps = issueCallCapabilityBatch(
      ids.map((id) => ({ grant, totebox: id, view: "intercompany", action: "read", clock })),
      hub.privateKey,
    );
    const read = vp("reconciliation").reads[0]!;
    const params = readParams(
      read,
      resolveViewportParams(vp("reconciliation"), { as_of: AS_OF }, "2099-01-01"),
    );
    expect(params).toEqual({ as_of: AS_OF });
    await Promise.all(
      servers.map(async (s, i) => {
        const link = await connectPsp({
          identity: hub,
          role: "commander",
          host: "127.0.0.1",
          port: s.address.port,
          expect: s.identity.fingerprint,
        });
        try {
          const ans = await openCommander<ToteboxRemote>(link)
            .authorize(grant)
            .view(read.view)
            .read(caps[i]!, params);
          answers.set(ids[i]!, decodeResult(new Uint8Array(ans.arrow), read.columns));
        } finally {
          link.close();
        }
      }),
    );
  });
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()));
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const inputOf = (down: readonly string[]): CombineInput => ({
    viewport: vp("reconciliation"),
    params: { as_of: AS_OF },
    results: new Map([
      [
        "intercompany",
        ids
          .filter((id) => !down.includes(id))
          .map((id) => ({ totebox: id, tags: { region: "west" }, result: answers.get(id)! })),
      ],
    ]),
    coverage: ids.map((id) => ({
      totebox: id,
      name: `Company ${id}`,
      tags: { region: "west" },
      status: down.includes(id) ? "offline" : "ok",
      reason: down.includes(id) ? "ORCH_ERR_TOTEBOX_OFFLINE" : "",
      elapsedMs: 1,
    })),
  });

  it("every pair's balances and status follow expectedIntercompanyBalance", async () => {
    const pairs = objects(section(await runCombine(inputOf([])), "pairs"));
    expect(pairs).toHaveLength(6);
    for (const [a, b] of pairsOf()) {
      const row = pairs.find((p) => p.entity_a === a && p.entity_b === b)!;
      const ea = expectedIntercompanyBalance(a, b, demoSeed, AS_OF);
      const eb = expectedIntercompanyBalance(b, a, demoSeed, AS_OF);
      expect(row).toMatchObject({
        balance_a: ea,
        balance_b: eb,
        difference: ea + eb,
        status: ea + eb === 0 ? "matched" : "mismatched",
      });
    }
    // Exceptions first.
    const statuses = pairs.map((p) => p.status);
    expect(statuses).toEqual(
      [...statuses].sort((x, y) => (x === "matched" ? 1 : 0) - (y === "matched" ? 1 : 0)),
    );
    expect(statuses).toContain("mismatched");
    expect(statuses).toContain("matched");
  });

  it("with one Totebox offline, its pairs are one-sided and carry the present side's own balance", async () => {
    const pairs = objects(section(await runCombine(inputOf(["co-c"])), "pairs"));
    for (const [a, b] of pairsOf()) {
      const row = pairs.find((p) => p.entity_a === a && p.entity_b === b)!;
      if (a !== "co-c" && b !== "co-c") {
        expect(row.status).not.toBe("one-sided");
        continue;
      }
      const present = a === "co-c" ? b : a;
      expect(row).toMatchObject({
        status: "one-sided",
        missing_side: a === "co-c" ? "a" : "b",
        missing_reason: "did not answer (offline)",
        [a === "co-c" ? "balance_b" : "balance_a"]: expectedIntercompanyBalance(
          present,
          "co-c",
          demoSeed,
          AS_OF,
        ),
      });
    }
  });
});
