import { type DuckDBConnection, DuckDBInstance } from "@duckdb/node-api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LoadPlan, planLoads } from "./load-plan.ts";

// The parses come from DuckDB itself, as in combine.ts: the rules are tested against the JSON the
// pinned DuckDB really produces, not against shapes written by hand.
let instance: DuckDBInstance;
let conn: DuckDBConnection;
/** The database's own tables and views, as combine.ts reads them. */
let catalog: Set<string>;
beforeAll(async () => {
  instance = await DuckDBInstance.create(":memory:");
  conn = await instance.connect();
  const names = await conn.runAndReadAll(
    "SELECT lower(view_name) FROM duckdb_views() UNION ALL SELECT lower(table_name) FROM duckdb_tables()",
  );
  catalog = new Set(names.getRows().map((r) => String(r[0])));
});
afterAll(() => {
  conn.closeSync();
  instance.closeSync();
});

async function parse(sql: string): Promise<unknown> {
  const r = await conn.runAndReadAll("SELECT json_serialize_sql($1::VARCHAR)", [sql]);
  return JSON.parse(r.getRows()[0]![0] as string);
}

const TABLES = new Map<string, readonly string[]>([
  ["coverage", ["totebox", "name", "tags", "status", "reason", "elapsed_ms"]],
  ["position", ["totebox", "tags", "as_of", "currency", "cash", "net_value"]],
  ["income", ["totebox", "tags", "period", "income", "expenses"]],
]);

async function plan(...sqls: string[]): Promise<LoadPlan | undefined> {
  return planLoads(await Promise.all(sqls.map(parse)), TABLES, catalog);
}

function shown(p: LoadPlan | undefined): Record<string, string[] | "all" | "no rows"> | undefined {
  if (p === undefined) return undefined;
  const out: Record<string, string[] | "all" | "no rows"> = {};
  for (const [t, l] of p) out[t] = !l.rows ? "no rows" : l.columns === undefined ? "all" : [...l.columns];
  return out;
}

describe("planLoads: which input columns a viewport's SQL can observe", () => {
  it("keeps the columns named anywhere, in table order; a table never read gets no rows", async () => {
    expect(
      shown(
        await plan(
          "SELECT tags['region'] AS region, count(*) AS n, sum(net_value) AS v FROM position GROUP BY ROLLUP (1) ORDER BY 1",
        ),
      ),
    ).toEqual({ coverage: "no rows", position: ["tags", "net_value"], income: "no rows" });
  });

  it("a table read only for its rows keeps one column (its Totebox) to hold them", async () => {
    expect(shown(await plan("SELECT count(*) FROM position"))?.position).toEqual(["totebox"]);
  });

  it("takes every section of the viewport into account", async () => {
    expect(
      shown(await plan("SELECT sum(cash) AS c FROM position", "SELECT max(status) AS s FROM coverage")),
    ).toEqual({ coverage: ["status"], position: ["cash"], income: "no rows" });
  });

  it("matches names in any case and however qualified; USING columns count as named", async () => {
    expect(
      shown(
        await plan(
          "SELECT sum(P.CASH) FROM Position AS P JOIN income i USING (totebox) WHERE i.Expenses > 0",
        ),
      ),
    ).toEqual({
      coverage: "no rows",
      position: ["totebox", "cash"],
      income: ["totebox", "expenses"],
    });
  });

  it("a star over a VALUES list (a CTE of constants) reads none of our columns", async () => {
    expect(
      shown(
        await plan(
          "WITH p(ord, period) AS (VALUES (1, '1D'), (2, 'YTD')) SELECT p.period, sum(i.expenses) FROM p LEFT JOIN income i ON i.period = p.period GROUP BY ALL",
        ),
      ),
    ).toEqual({ coverage: "no rows", position: "no rows", income: ["period", "expenses"] });
  });

  it("tables named in WITH are read like ours; the columns named through them are what count", async () => {
    expect(
      shown(
        await plan(
          "WITH pos AS (SELECT totebox, sum(cash) AS c FROM position GROUP BY ALL) SELECT max(c) FROM pos",
        ),
      ),
    ).toEqual({ coverage: "no rows", position: ["totebox", "cash"], income: "no rows" });
  });

  it("a CTE named like a catalog view plans nothing: out of its scope the name reaches the catalog", async () => {
    // Section 1 defines the CTE; section 2's `duckdb_columns` is the catalog's, which would show
    // how many columns `position` was created with.
    expect(catalog.has("duckdb_columns")).toBe(true);
    expect(
      await plan(
        "WITH duckdb_columns AS (SELECT 1 AS one) SELECT max(one) FROM duckdb_columns",
        "SELECT sum(cash), (SELECT count(*) FROM duckdb_columns WHERE table_name = 'position') FROM position",
      ),
    ).toBeUndefined();
    expect(
      await plan(
        "SELECT sum(cash), (SELECT count(*) FROM duckdb_columns WHERE table_name = 'position'), (WITH duckdb_columns AS (SELECT 1 AS one) SELECT max(one) FROM duckdb_columns) FROM position",
      ),
    ).toBeUndefined();
  });

  it("GROUP BY ALL groups by the named select list; ORDER BY ALL parses as a star, so plans nothing", async () => {
    expect(shown(await plan("SELECT currency, sum(cash) FROM position GROUP BY ALL"))?.position).toEqual([
      "currency",
      "cash",
    ]);
    expect(await plan("SELECT currency, sum(cash) FROM position GROUP BY ALL ORDER BY ALL")).toBeUndefined();
  });

  it("a table or alias used as a value loads that table whole", async () => {
    expect(shown(await plan("SELECT to_json(position) FROM position"))?.position).toBe("all");
    expect(shown(await plan("SELECT list(p) FROM position AS p"))?.position).toBe("all");
    // A column that shares a table's name is taken the same way (more is loaded, never less).
    expect(shown(await plan("SELECT sum(i.income) FROM income AS i"))?.income).toBe("all");
  });

  it("plans nothing (everything loaded) for what can read columns without naming them", async () => {
    for (const sql of [
      "SELECT * FROM position",
      "SELECT p.* FROM position p",
      "SELECT * EXCLUDE (cash) FROM position",
      "SELECT max(COLUMNS('^c')) FROM position",
      "FROM position",
      "SELECT count(*) FROM position NATURAL JOIN income",
      "SELECT max(c) FROM position AS p(a, b, c)",
      "SELECT count(*) FROM query_table('position')",
      "SELECT count(*) FROM (PIVOT position ON currency IN ('USD') USING sum(cash))",
      "SELECT * FROM (VALUES (1)) v, position",
      "SELECT #3 FROM position",
      "SELECT count(*) FROM duckdb_columns WHERE table_name = 'position'",
      "SELECT count(*) FROM information_schema.columns WHERE table_name = 'position'",
      "SELECT sum(cash) FROM main.position",
      "SELECT x FROM position, unnest([1, 2]) AS t(x)",
      "SELECT count(*) FROM sqlite_master",
      "SELECT count(*) FROM pg_attribute",
      "SELECT count(*) FROM duckdb_tables",
      "SELECT count(*) FROM (position JOIN income ON position.totebox = income.totebox) AS j",
      "SELECT count(*) FROM (SUMMARIZE position)",
    ]) {
      expect(await plan(sql), sql).toBeUndefined();
    }
  });

  it("plans nothing when a parse is an error, is malformed, or when nothing would be left out", async () => {
    expect(await plan("SELECT count(*) FROM position", "PIVOT position ON currency")).toBeUndefined();
    expect(
      planLoads([{ error: false, statements: [{ node: { class: "COLUMN_REF" } }] }], TABLES, catalog),
    ).toBeUndefined();
    expect(planLoads([null], TABLES, catalog)).toBeUndefined();
    const everything =
      "SELECT max(totebox), max(name), max(tags), max(status), max(reason), max(elapsed_ms) FROM coverage";
    expect(
      planLoads([await parse(everything)], new Map([["coverage", TABLES.get("coverage")!]]), catalog),
    ).toBeUndefined();
  });

  it("a deeply nested expression is walked without overflowing the stack", async () => {
    const deep = `SELECT ${"(".repeat(500)}cash${")".repeat(500)} FROM position`;
    expect(shown(await plan(deep))?.position).toEqual(["cash"]);
  });
});
