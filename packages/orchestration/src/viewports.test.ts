import { readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { isOrchError, type OrchError } from "./errors.ts";
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

const TODAY = "2026-11-01";

/** A small valid definition; each refusal test breaks one thing in a copy of it. */
function base(): Record<string, unknown> {
  return {
    description: "Cash by region",
    params: {
      as_of: { type: "date", default: "today" },
      group_by: { type: "tag", default: "region" },
      min_cash: { type: "integer" },
    },
    reads: [{ view: "position", as: "position", params: { as_of: "$as_of" } }],
    sections: [
      {
        name: "cash",
        title: "Cash by $group_by",
        sql: "SELECT coalesce(tags[$group_by], '(none)') AS grp, sum(cash) AS cash FROM position GROUP BY ALL ORDER BY 1",
        columns: { grp: "string", cash: "integer" },
        chart: { type: "bar", x: "grp", y: ["cash"] },
      },
    ],
  };
}

async function compileOne(definition: unknown, name = "cash-view"): Promise<Viewport> {
  const m = await compileViewports([{ name, definition, line: 12, column: 3 }]);
  return m.get(name)!;
}

async function refusal(definition: unknown, name = "cash-view"): Promise<OrchError> {
  try {
    await compileOne(definition, name);
  } catch (e) {
    if (isOrchError(e)) return e;
    throw e;
  }
  throw new Error("expected the definition to be refused");
}

function withSection(patch: Record<string, unknown>): Record<string, unknown> {
  const d = base();
  d.sections = [{ ...(d.sections as Record<string, unknown>[])[0]!, ...patch }];
  return d;
}

function withRead(patch: Record<string, unknown>): Record<string, unknown> {
  const d = base();
  d.reads = [{ ...(d.reads as Record<string, unknown>[])[0]!, ...patch }];
  return d;
}

describe("the default views' columns", () => {
  it("equal the columns of packages/totebox/src/default-policy.yaml, in order", () => {
    const text = readFileSync(new URL("../../totebox/src/default-policy.yaml", import.meta.url), "utf8");
    const policy = parse(text) as { views: Record<string, { columns: Record<string, string> }> };
    const fromPolicy = Object.fromEntries(
      Object.entries(policy.views).map(([view, spec]) => [
        view,
        Object.entries(spec.columns).map(([name, type]) => ({ name, type })),
      ]),
    );
    expect(DEFAULT_VIEW_COLUMNS).toEqual(fromPolicy);
  });
});

describe("compileViewports", () => {
  it("compiles a valid definition into a frozen viewport", async () => {
    const v = await compileOne(base());
    expect(v).toMatchObject({
      name: "cash-view",
      description: "Cash by region",
      targets: [],
      builtin: false,
      params: [
        { name: "as_of", type: "date", default: "today", required: false },
        { name: "group_by", type: "tag", default: "region", required: false },
        { name: "min_cash", type: "integer", default: undefined, required: false },
      ],
      reads: [{ view: "position", as: "position", params: { as_of: "$as_of" } }],
      sections: [
        {
          name: "cash",
          title: "Cash by $group_by",
          columns: [
            { name: "grp", type: "string" },
            { name: "cash", type: "integer" },
          ],
          chart: { type: "bar", x: "grp", y: ["cash"] },
        },
      ],
    });
    expect(v.reads[0]!.columns).toEqual(DEFAULT_VIEW_COLUMNS.position);
    expect(Object.isFrozen(v)).toBe(true);
    expect(Object.isFrozen(v.sections[0]!.columns)).toBe(true);
  });

  it("takes `as` from the view's name when omitted, and declared columns for other views", async () => {
    const d = base();
    d.reads = [
      { view: "income-summary" },
      { view: "solar-output", as: "solar", columns: { kwh: "number", day: "date", online: "boolean" } },
    ];
    d.sections = [
      {
        name: "s",
        sql: "SELECT count(*) AS n, sum(kwh) AS kwh FROM income_summary, solar WHERE online",
        columns: { n: "integer", kwh: "number" },
      },
    ];
    const v = await compileOne(d);
    expect(v.reads.map((r) => r.as)).toEqual(["income_summary", "solar"]);
    expect(v.sections[0]!.title).toBe("s");
  });

  // Each case: [what, definition, fragment the problem must contain].
  const cases: [string, () => unknown, RegExp][] = [
    ["a definition that is not a mapping", () => [1, 2], /must be a mapping/],
    ["an unknown top-level key", () => ({ ...base(), sectoins: [] }), /unknown key "sectoins"/],
    ["an unknown key in a read", () => withRead({ viewz: "x" }), /reads\[0\] has an unknown key "viewz"/],
    ["an unknown key in a section", () => withSection({ colour: "red" }), /has an unknown key "colour"/],
    [
      "an unknown key in a param",
      () => ({ ...base(), params: { as_of: { type: "date", defualt: "today" } } }),
      /param "as_of" has an unknown key "defualt"/,
    ],
    ["a bad param type", () => ({ ...base(), params: { as_of: { type: "float" } } }), /type must be one of/],
    [
      "a default of the wrong type",
      () => ({
        ...base(),
        params: { ...(base().params as object), min_cash: { type: "integer", default: "lots" } },
      }),
      /param "min_cash": default is not a valid integer/,
    ],
    [
      "a bad column type",
      () => withSection({ columns: { grp: "string", cash: "money" } }),
      /column "cash" has type/,
    ],
    ["sql that is not a string", () => withSection({ sql: 42 }), /sql must be a string/],
    [
      "reads that are not a list",
      () => ({ ...base(), reads: { view: "position" } }),
      /reads must be a non-empty list/,
    ],
    ["no sections", () => ({ ...base(), sections: [] }), /sections must be a non-empty list/],
    ["a bad table name", () => withRead({ as: "Position; DROP" }), /reads\[0\]: as must match/],
    [
      "a duplicate `as`",
      () => ({
        ...base(),
        reads: [
          { view: "position", as: "p" },
          { view: "occupancy", as: "p" },
        ],
      }),
      /duplicate "as: p"/,
    ],
    ["the reserved table name coverage", () => withRead({ as: "coverage" }), /"as: coverage" is reserved/],
    [
      "a reserved column name",
      () => withRead({ view: "custom", columns: { totebox: "string" } }),
      /column "totebox" is reserved/,
    ],
    [
      "a $ref to an undeclared param",
      () => withRead({ params: { as_of: "$when" } }),
      /refers to undeclared viewport param "\$when"/,
    ],
    [
      "a view outside the default policy without columns",
      () => withRead({ view: "solar-output" }),
      /view "solar-output" is not a default view, so its columns must be declared/,
    ],
    [
      "a chart naming an undeclared column",
      () => withSection({ chart: { type: "bar", x: "region" } }),
      /chart x/,
    ],
    ["a bad chart type", () => withSection({ chart: { type: "radar" } }), /chart type must be one of/],
    [
      "an SQL syntax error",
      () => withSection({ sql: "SELEC grp FROM position" }),
      /SQL does not compile: Parser Error/,
    ],
    [
      "SQL referring to an unknown table",
      () => withSection({ sql: "SELECT 'x' AS grp, sum(cash) AS cash FROM ledger" }),
      /SQL does not compile: Catalog Error: Table with name ledger does not exist/,
    ],
    [
      "SQL referring to an unknown column",
      () => withSection({ sql: "SELECT region AS grp, sum(cash) AS cash FROM position GROUP BY ALL" }),
      /SQL does not compile: Binder Error: Referenced column "region" not found/,
    ],
    [
      "SQL referring to an undeclared $param",
      () => withSection({ sql: "SELECT $region AS grp, sum(cash) AS cash FROM position" }),
      /SQL refers to undeclared parameter \$region/,
    ],
    [
      "declared columns named differently from the SQL's",
      () => withSection({ columns: { group: "string", cash: "integer" }, chart: undefined }),
      /declared columns \(group string, cash integer\) differ from the SQL's result columns \(grp VARCHAR, cash HUGEINT\)/,
    ],
    [
      "declared columns typed differently from the SQL's",
      () => withSection({ columns: { grp: "string", cash: "date" } }),
      /column "cash" is declared date but the SQL returns HUGEINT/,
    ],
    [
      "fewer declared columns than the SQL returns",
      () => withSection({ columns: { grp: "string" }, chart: undefined }),
      /differ from the SQL's result columns/,
    ],
    [
      "a statement other than SELECT",
      () => withSection({ sql: "CREATE TABLE t (x INT)" }),
      /one SELECT statement/,
    ],
    [
      "two statements",
      () => withSection({ sql: "SELECT 'a' AS grp, 1 AS cash; SELECT 'b' AS grp, 2 AS cash" }),
      /multiple statements/,
    ],
    [
      "SQL that reads a file (the sandbox has no file system)",
      () => withSection({ sql: "SELECT column0 AS grp, 1 AS cash FROM read_csv('/etc/passwd')" }),
      /file system operations are disabled/,
    ],
    [
      "SQL that writes a file",
      () => withSection({ sql: "COPY (SELECT 1) TO '/tmp/orch-viewport-leak.csv'" }),
      /one SELECT statement|disabled/,
    ],
  ];

  it.each(cases)(
    "refuses %s, naming the viewport, the problem and where it was defined",
    async (_, def, re) => {
      const e = await refusal(def());
      expect(e.code).toBe("ORCH_ERR_VIEWPORT_INVALID");
      expect(e.message).toMatch(/^viewport "cash-view": /);
      expect(e.message).toMatch(re);
      expect(e.detail).toMatchObject({ name: "cash-view", line: 12, column: 3 });
      expect(String(e.detail?.problem)).toMatch(re);
    },
  );

  it("names the section a SQL problem is in", async () => {
    const e = await refusal(withSection({ sql: "SELEC 1" }));
    expect(e.detail).toMatchObject({ section: "cash" });
    expect(e.message).toContain('section "cash"');
  });

  it("refuses a bad viewport name and a viewport defined twice", async () => {
    expect((await refusal(base(), "Cash View!")).message).toMatch(/viewport name must match/);
    const twice = compileViewports([
      { name: "a", definition: base(), line: 1, column: 1 },
      { name: "a", definition: base(), line: 9, column: 1 },
    ]);
    await expect(twice).rejects.toMatchObject({
      code: "ORCH_ERR_VIEWPORT_INVALID",
      detail: { name: "a", line: 9 },
    });
  });

  it("never fails with anything but ORCH_ERR_VIEWPORT_INVALID on arbitrary definitions (property)", async () => {
    const mutated = fc.oneof(
      fc.anything(),
      fc.record({ reads: fc.anything(), sections: fc.anything() }),
      fc
        .tuple(fc.constantFrom("params", "reads", "sections", "description", "targets"), fc.anything())
        .map(([k, v]) => ({ ...base(), [k]: v })),
    );
    await fc.assert(
      fc.asyncProperty(mutated, async (d) => {
        try {
          await compileOne(d);
        } catch (e) {
          expect(isOrchError(e) && e.code === "ORCH_ERR_VIEWPORT_INVALID").toBe(true);
        }
      }),
      { seed, numRuns: 200 },
    );
  });
});

describe("builtinViewports", () => {
  it("compiles the three built-ins from builtin-viewports.yaml", async () => {
    const t0 = performance.now();
    const m = await builtinViewports();
    console.log(`built-ins compiled in ${(performance.now() - t0).toFixed(0)} ms`);
    expect([...m.keys()]).toEqual(["portfolio", "reconciliation", "executive-summary"]);
    for (const v of m.values()) expect(v.builtin).toBe(true);
    const p = m.get("portfolio")!;
    expect(p.params).toEqual([
      { name: "group_by", type: "tag", default: "region", required: false },
      { name: "as_of", type: "date", default: "today", required: false },
    ]);
    expect(p.reads.map((r) => [r.view, r.as])).toEqual([
      ["position", "position"],
      ["occupancy", "occupancy"],
    ]);
    expect(p.sections.map((s) => s.name)).toEqual(["rollup"]);
    expect(m.get("reconciliation")!.sections.map((s) => s.name)).toEqual(["pairs", "summary"]);
    const exec = m.get("executive-summary")!;
    expect(exec.reads.map((r) => r.view)).toEqual([
      "position",
      "income-summary",
      "occupancy",
      "intercompany",
      "archive-health",
    ]);
    expect(exec.sections.map((s) => [s.name, s.chart?.type])).toEqual([
      ["figures", "tiles"],
      ["windows", "bar"],
      ["exceptions", "table"],
      ["coverage", "pie"],
    ]);
    // A fresh map each call, the same frozen viewports inside.
    const again = await builtinViewports();
    expect(again).not.toBe(m);
    expect(again.get("portfolio")).toBe(p);
  });
});

describe("resolveViewportParams", () => {
  let v: Viewport;
  const resolve = async (given: unknown) => {
    v ??= await compileOne(
      {
        ...base(),
        params: {
          as_of: { type: "date", default: "today" },
          group_by: { type: "tag", default: "region" },
          min_cash: { type: "integer" },
          label: { type: "string", default: "Cash" },
          strict: { type: "boolean", default: false },
          tenant: { type: "string", required: true },
        },
      },
      "params-view",
    );
    return resolveViewportParams(v, given, TODAY);
  };
  const paramError = async (given: unknown) => {
    try {
      await resolve(given);
    } catch (e) {
      if (isOrchError(e)) return e;
      throw e;
    }
    throw new Error("expected a param error");
  };

  it("applies defaults, resolves today, keeps optional params without a default absent", async () => {
    expect(await resolve({ tenant: "acme" })).toEqual({
      as_of: TODAY,
      group_by: "region",
      label: "Cash",
      strict: false,
      tenant: "acme",
    });
    expect(
      await resolve({
        tenant: "acme",
        as_of: "2024-02-29",
        group_by: "kind",
        min_cash: 5,
        strict: true,
        label: "",
      }),
    ).toEqual({
      as_of: "2024-02-29",
      group_by: "kind",
      min_cash: 5,
      strict: true,
      label: "",
      tenant: "acme",
    });
    // Command lines send text: canonical forms of integers and booleans, and "today".
    expect(await resolve({ tenant: "acme", min_cash: "-42", strict: "true", as_of: "today" })).toMatchObject({
      min_cash: -42,
      strict: true,
      as_of: TODAY,
    });
    expect(Object.isFrozen(await resolve({ tenant: "acme" }))).toBe(true);
  });

  it.each([
    ["an unknown param", { tenant: "a", colour: "red" }, /param "colour" is not a parameter/],
    ["a missing required param", {}, /param "tenant" is required/],
    [
      "a date that is not a calendar day",
      { tenant: "a", as_of: "2026-02-30" },
      /param "as_of" must be a date/,
    ],
    ["a date in another format", { tenant: "a", as_of: "01/11/2026" }, /param "as_of" must be a date/],
    ["a non-integer", { tenant: "a", min_cash: 1.5 }, /param "min_cash" must be an integer/],
    ["an unsafe integer", { tenant: "a", min_cash: 2 ** 60 }, /must be an integer/],
    ["a non-boolean", { tenant: "a", strict: "yes" }, /param "strict" must be a boolean/],
    ["a tag key with '='", { tenant: "a", group_by: "region=west" }, /param "group_by" must be a tag/],
    ["an empty tag key", { tenant: "a", group_by: "" }, /must be a tag/],
    ["an oversize string", { tenant: "x".repeat(5_000) }, /param "tenant" must be a string/],
    ["params that are not a mapping", ["a"], /params must be a mapping/],
  ])("refuses %s with ORCH_ERR_VIEWPORT_PARAM", async (_, given, re) => {
    const e = await paramError(given);
    expect(e.code).toBe("ORCH_ERR_VIEWPORT_PARAM");
    expect(e.message).toMatch(re);
    expect(e.detail).toMatchObject({ viewport: "params-view" });
  });

  it("never echoes the value it refuses", async () => {
    const e = await paramError({ tenant: "a", min_cash: "s3cr3t-token-bytes" });
    expect(e.message).not.toContain("s3cr3t");
    expect(JSON.stringify(e.detail)).not.toContain("s3cr3t");
  });

  it("answers arbitrary input with a resolution or ORCH_ERR_VIEWPORT_PARAM, nothing else (property)", async () => {
    await resolve({ tenant: "x" });
    fc.assert(
      fc.property(
        fc.oneof(
          fc.anything(),
          fc.dictionary(fc.constantFrom("as_of", "min_cash", "strict", "tenant", "group_by"), fc.anything()),
        ),
        (given) => {
          try {
            resolveViewportParams(v, given, TODAY);
          } catch (e) {
            expect(isOrchError(e) && e.code === "ORCH_ERR_VIEWPORT_PARAM").toBe(true);
          }
        },
      ),
      { seed, numRuns: 500 },
    );
  });
});

describe("readParams", () => {
  it("substitutes $refs, passes literals through, leaves out refs without a value", async () => {
    const d = base();
    d.reads = [
      {
        view: "position",
        params: { as_of: "$as_of", currency: "USD", limit: 5, deep: true, floor: "$min_cash" },
      },
    ];
    const v = await compileOne(d);
    const params = resolveViewportParams(v, {}, TODAY);
    expect(readParams(v.reads[0]!, params)).toEqual({ as_of: TODAY, currency: "USD", limit: 5, deep: true });
    expect(readParams(v.reads[0]!, { ...params, min_cash: 7 })).toEqual({
      as_of: TODAY,
      currency: "USD",
      limit: 5,
      deep: true,
      floor: 7,
    });
  });
});
