import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ToteboxError } from "./errors.ts";
import { type Policy, parsePolicy, type ViewSpec, validateParams } from "./policy.ts";
import {
  createInProcessViewRunner,
  createPooledViewRunner,
  type PooledViewRunner,
  type ViewRunner,
  type ViewRunRequest,
} from "./view-runner.ts";

const NOW = () => Date.UTC(2024, 5, 30, 12);

const POLICY = `version: 1
views:
  by_region:
    sql: |
      SELECT region, COUNT(*) AS n, SUM(amount) AS total
      FROM sales WHERE day <= :as_of
      GROUP BY region ORDER BY region
    params:
      as_of: { type: date, default: "today" }
    columns: { region: string, n: integer, total: integer }
    row_key: region
    privacy_floor: { count_column: n, min: 3 }
  all_sales:
    sql: |
      SELECT customer, amount, day, flag = 1 AS vip, amount / 100.0 AS units
      FROM sales ORDER BY id
    columns: { customer: string, amount: integer, day: date, vip: boolean, units: number }
    max_rows: 3
  echo:
    sql: "SELECT :flag AS f, :n AS n, :label AS label"
    params:
      flag: { type: boolean, required: true }
      n: { type: integer }
      label: { type: enum, values: [a, b] }
    columns: { f: boolean, n: integer, label: string }
  huge:
    sql: "SELECT 1152921504606846976 AS big, 9007199254740991 AS edge"
    columns: { big: integer, edge: integer }
  mistyped:
    sql: "SELECT 'abc' AS v"
    columns: { v: integer }
  slow_rows:
    description: "Endless rows that the floor suppresses: slow between rows"
    sql: |
      WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)
      SELECT x, 0 AS n FROM c
    columns: { x: integer, n: integer }
    privacy_floor: { count_column: n, min: 1 }
    timeout_ms: 200
  slow_aggregate:
    description: "One row after an endless computation: only killing the process stops it"
    sql: |
      WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)
      SELECT count(*) AS n FROM c
    columns: { n: integer }
    timeout_ms: 200
access: []
`;

let dir: string;
let file: string;
let rw: Database.Database;
let ro: Database.Database;
let policy: Policy;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "totebox-views-"));
  file = path.join(dir, "archive.sqlite");
  rw = new Database(file);
  rw.pragma("journal_mode = WAL");
  rw.exec(`CREATE TABLE sales (id INTEGER PRIMARY KEY, region TEXT NOT NULL, customer TEXT NOT NULL,
             amount INTEGER NOT NULL, day TEXT NOT NULL, flag INTEGER NOT NULL DEFAULT 0)`);
  const ins = rw.prepare("INSERT INTO sales (region, customer, amount, day, flag) VALUES (?, ?, ?, ?, ?)");
  const rows: [string, string, number, string, number][] = [
    ["east", "c1", 1000, "2024-01-05", 1],
    ["east", "c2", 2500, "2024-02-05", 0],
    ["east", "c3", 700, "2024-03-05", 0],
    ["east", "c4", 300, "2024-04-05", 1],
    ["east", "c5", 50, "2024-05-05", 0],
    ["west", "c6", 9000, "2024-01-09", 0],
    ["west", "c7", 100, "2024-02-09", 0],
    ["north", "c8", 1, "2024-03-01", 0],
    ["east", "c9", 1, "2099-01-01", 0],
  ];
  for (const r of rows) ins.run(...r);
  ro = new Database(file, { readonly: true });
  policy = parsePolicy(POLICY, { db: ro, fileName: "policy.yaml" });
});

afterAll(() => {
  ro.close();
  rw.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function request(
  view: string,
  raw: Record<string, unknown> = {},
  rowKey?: string | number,
  p: Policy = policy,
): ViewRunRequest {
  return { policy: p, view, params: validateParams(p.views.get(view)!, raw, { now: NOW }), rowKey };
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<ToteboxError> {
  try {
    await promise;
  } catch (e) {
    expect(e).toBeInstanceOf(ToteboxError);
    expect((e as ToteboxError).code).toBe(code);
    return e as ToteboxError;
  }
  throw new Error(`expected ${code}`);
}

const modes: [string, () => ViewRunner][] = [
  ["pool", () => createPooledViewRunner(file, { limits: { poolSize: 2 } })],
  ["in-process", () => createInProcessViewRunner(file)],
];

describe.each(modes)("view runner (%s mode)", (_mode, make) => {
  let runner: ViewRunner;
  beforeEach(() => {
    runner = make();
  });
  afterEach(async () => {
    await runner.close();
  });

  it("runs a view with typed params and applies the privacy floor", async () => {
    const r = await runner.run(request("by_region"));
    expect(r.columns).toEqual([
      { name: "region", type: "string" },
      { name: "n", type: "integer" },
      { name: "total", type: "integer" },
    ]);
    // east has 5 rows up to today (the 2099 row is excluded); west (2) and north (1) are below the floor.
    expect(r.rows).toEqual([["east", 5, 4550]]);
    expect(r.suppressedGroups).toBe(2);
    expect(r.rowCount).toBe(1);
    const earlier = await runner.run(request("by_region", { as_of: "2024-02-29" }));
    expect(earlier.rows).toEqual([]);
    expect(earlier.suppressedGroups).toBe(2);
  });

  it("filters by the capability's row key", async () => {
    const east = await runner.run(request("by_region", {}, "east"));
    expect(east.rows).toEqual([["east", 5, 4550]]);
    expect(east.suppressedGroups).toBe(0);
    const west = await runner.run(request("by_region", {}, "west"));
    expect(west.rows).toEqual([]);
    expect(west.suppressedGroups).toBe(1);
    expect((await runner.run(request("by_region", {}, "nowhere"))).rowCount).toBe(0);
    await expectCode(runner.run(request("all_sales", {}, "c1")), "TOTEBOX_ERR_PARAM");
    await expectCode(runner.run(request("by_region", {}, "x".repeat(300))), "TOTEBOX_ERR_PARAM");
  });

  it("enforces max_rows", async () => {
    const e = await expectCode(runner.run(request("all_sales")), "TOTEBOX_ERR_VIEW_ROWS");
    expect(e.detail).toMatchObject({ view: "all_sales", maxRows: 3 });
  });

  it("converts cells to their declared types; integers beyond 2^53 stay exact as bigint", async () => {
    const five: Policy = {
      ...policy,
      views: new Map([["all_sales", { ...policy.views.get("all_sales")!, maxRows: 50 }]]),
    };
    const all = await runner.run(request("all_sales", {}, undefined, five));
    expect(all.rows[0]).toEqual(["c1", 1000, "2024-01-05", true, 10]);
    expect(all.rows[1]).toEqual(["c2", 2500, "2024-02-05", false, 25]);
    const huge = await runner.run(request("huge"));
    expect(huge.rows).toEqual([[1152921504606846976n, 9007199254740991]]);
    const echo = await runner.run(request("echo", { flag: true, n: "12", label: "b" }));
    expect(echo.rows).toEqual([[true, 12, "b"]]);
    expect((await runner.run(request("echo", { flag: false }))).rows).toEqual([[false, null, null]]);
    await expectCode(runner.run(request("mistyped")), "TOTEBOX_ERR_VIEW_RESULT");
  });

  it("refuses unknown views and unknown params", async () => {
    await expectCode(runner.run({ policy, view: "nope", params: {} }), "TOTEBOX_ERR_VIEW_UNKNOWN");
    await expectCode(runner.run({ policy, view: "huge", params: { x: 1 } }), "TOTEBOX_ERR_PARAM");
  });

  it("cannot write even if a writing statement slipped past the policy (read-only connection)", async () => {
    const base = policy.views.get("huge")!;
    const evil: ViewSpec = {
      ...base,
      name: "evil",
      sql: "INSERT INTO sales (region, customer, amount, day) VALUES ('x', 'x', 1, '2024-01-01') RETURNING 1 AS big, 2 AS edge",
    };
    const forged: Policy = {
      ...policy,
      views: new Map([["evil", evil]]),
      generation: policy.generation + 100_000,
    };
    const e = await expectCode(
      runner.run({ policy: forged, view: "evil", params: {} }),
      "TOTEBOX_ERR_VIEW_FAILED",
    );
    expect(String(e.detail?.reason)).toMatch(/readonly|read-only/i);
    expect(rw.prepare("SELECT COUNT(*) AS n FROM sales WHERE region = 'x'").get()).toEqual({ n: 0 });
  });

  it("drops cached statements when the policy is reloaded, and sees new commits", async () => {
    const first = await runner.run(request("huge"));
    const changed = parsePolicy(POLICY.replace("SELECT 1152921504606846976 AS big", "SELECT 7 AS big"), {
      db: ro,
    });
    const second = await runner.run(request("huge", {}, undefined, changed));
    expect(first.rows[0]![0]).toBe(1152921504606846976n);
    expect(second.rows[0]![0]).toBe(7);

    // Rows dated 2099 are outside every other test's "today".
    const future = { as_of: "2100-01-01" };
    const before = await runner.run(request("by_region", future, "east"));
    rw.prepare(
      "INSERT INTO sales (region, customer, amount, day) VALUES ('east', 'c10', 5, '2099-06-01')",
    ).run();
    const after = await runner.run(request("by_region", future, "east"));
    expect(after.rows[0]![1]).toBe((before.rows[0]![1] as number) + 1);
  });

  it("times out a view that keeps computing between rows, then serves the next query", async () => {
    const e = await expectCode(runner.run(request("slow_rows")), "TOTEBOX_ERR_VIEW_TIMEOUT");
    expect(e.detail).toMatchObject({ view: "slow_rows", timeoutMs: 200 });
    expect((await runner.run(request("huge"))).rowCount).toBe(1);
  });

  it("a request cancelled before it starts never runs", async () => {
    const c = new AbortController();
    c.abort();
    let started = 0;
    const e = await expectCode(
      runner.run({ ...request("huge"), signal: c.signal, onStart: () => started++ }),
      "TOTEBOX_ERR_CANCELLED",
    );
    expect(e.detail).toMatchObject({ view: "huge" });
    expect(started).toBe(0);
    expect((await runner.run(request("huge"))).rowCount).toBe(1);
  });

  it("a cancel that arrives once the SQL started rejects CANCELLED (the answer is dropped)", async () => {
    const c = new AbortController();
    let started = 0;
    const run = runner.run({
      ...request("huge"),
      signal: c.signal,
      onStart: () => {
        started++;
        c.abort();
      },
    });
    await expectCode(run, "TOTEBOX_ERR_CANCELLED");
    expect(started).toBe(1);
    // Finished requests ignore a later abort; the runner still serves.
    const later = new AbortController();
    const ok = await runner.run({ ...request("huge"), signal: later.signal });
    later.abort();
    expect(ok.rowCount).toBe(1);
  });

  it("fails pending and later requests once closed", async () => {
    await runner.close();
    await expectCode(runner.run(request("huge")), "TOTEBOX_ERR_VIEW_FAILED");
  });
});

describe("pooled view runner", () => {
  let runner: PooledViewRunner;
  afterEach(async () => {
    await runner.close();
  });

  it("kills a query stuck inside SQLite on timeout and replaces its process", async () => {
    runner = createPooledViewRunner(file, { limits: { poolSize: 1 } });
    expect((await runner.run(request("huge"))).rowCount).toBe(1);
    const e = await expectCode(runner.run(request("slow_aggregate")), "TOTEBOX_ERR_VIEW_TIMEOUT");
    expect(e.detail).toMatchObject({ view: "slow_aggregate" });
    expect(runner.stats()).toMatchObject({ killed: 1, spawned: 2, children: 1 });
    // The replacement serves at once (the only process was the stuck one).
    expect((await runner.run(request("by_region"))).rows).toEqual([
      [expect.any(String), expect.any(Number), expect.any(Number)],
    ]);
  });

  it("serves concurrent requests across the pool", async () => {
    runner = createPooledViewRunner(file, { limits: { poolSize: 3 } });
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) => runner.run(request("echo", { flag: i % 2 === 0, n: i }))),
    );
    expect(results.map((r) => r.rows[0]![1])).toEqual(Array.from({ length: 30 }, (_, i) => i));
    expect(runner.stats()).toMatchObject({ running: 0, queued: 0, killed: 0 });
  });

  it("refuses beyond maxPending with TOTEBOX_ERR_VIEW_BUSY and still times out the queued ones", async () => {
    runner = createPooledViewRunner(file, { limits: { poolSize: 1, maxPending: 2 } });
    const a = runner.run(request("slow_aggregate"));
    const b = runner.run(request("slow_aggregate"));
    await expectCode(runner.run(request("huge")), "TOTEBOX_ERR_VIEW_BUSY");
    await expectCode(a, "TOTEBOX_ERR_VIEW_TIMEOUT");
    await expectCode(b, "TOTEBOX_ERR_VIEW_TIMEOUT");
    expect((await runner.run(request("huge"))).rowCount).toBe(1);
  });

  it("a cancel kills the process running the query and replaces it", async () => {
    runner = createPooledViewRunner(file, { limits: { poolSize: 1 } });
    const c = new AbortController();
    let started = 0;
    const stuck = runner.run({ ...request("slow_aggregate"), signal: c.signal, onStart: () => started++ });
    // Dispatched at once to the idle process.
    expect(started).toBe(1);
    expect(runner.stats()).toMatchObject({ running: 1, queued: 0 });
    c.abort();
    await expectCode(stuck, "TOTEBOX_ERR_CANCELLED");
    expect(runner.stats()).toMatchObject({
      cancelled: 1,
      cancelKilled: 1,
      killed: 0,
      spawned: 2,
      children: 1,
    });
    expect((await runner.run(request("huge"))).rowCount).toBe(1);
  });

  it("a cancel takes a queued request out of the queue, leaving the running one alone", async () => {
    runner = createPooledViewRunner(file, { limits: { poolSize: 1 } });
    const first = new AbortController();
    const second = new AbortController();
    let secondStarted = false;
    const a = runner.run({ ...request("slow_aggregate"), signal: first.signal });
    const b = runner.run({
      ...request("huge"),
      signal: second.signal,
      onStart: () => {
        secondStarted = true;
      },
    });
    expect(runner.stats()).toMatchObject({ running: 1, queued: 1 });
    second.abort();
    await expectCode(b, "TOTEBOX_ERR_CANCELLED");
    expect(secondStarted).toBe(false);
    expect(runner.stats()).toMatchObject({
      running: 1,
      queued: 0,
      cancelled: 1,
      cancelKilled: 0,
      spawned: 1,
    });
    first.abort();
    await expectCode(a, "TOTEBOX_ERR_CANCELLED");
    expect(runner.stats()).toMatchObject({ cancelled: 2, cancelKilled: 1, spawned: 2 });
  });

  it("close() fails requests in flight", async () => {
    runner = createPooledViewRunner(file, { limits: { poolSize: 1 } });
    const stuck = runner.run(request("slow_aggregate"));
    const queued = runner.run(request("huge"));
    await runner.close();
    await expectCode(stuck, "TOTEBOX_ERR_VIEW_FAILED");
    await expectCode(queued, "TOTEBOX_ERR_VIEW_FAILED");
    expect(runner.stats().children).toBe(0);
  });
});
