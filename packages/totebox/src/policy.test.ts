import { once } from "node:events";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ToteboxError } from "./errors.ts";
import {
  canRead,
  canRun,
  isCalendarDate,
  lexSql,
  loadPolicyFile,
  type Policy,
  PolicyError,
  PolicyStore,
  parsePolicy,
  type ReloadResult,
  todayIn,
  type ViewSpec,
  validateParams,
  viewCatalogue,
  wrapRowKey,
} from "./policy.ts";

const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);

const OP_A = "a1b2c3d4e5f60718";
const OP_B = "ffeeddccbbaa9988";

const GOOD = `version: 1
views:
  position:
    description: "Cash as of a date"
    sql: |
      SELECT COALESCE(SUM(amount), 0) AS cash
      FROM journal
      WHERE date <= :as_of;
    params:
      as_of: { type: date, required: false, default: "today" }
    columns:
      cash: integer
    max_rows: 10
    timeout_ms: 500
  by_account:
    sql: |
      SELECT account, COUNT(*) AS n, SUM(amount) AS total
      FROM journal
      WHERE (:kind IS NULL OR account LIKE :kind || '%')
        AND amount >= :min_amount
        AND (:flag IS NULL OR :flag = 1)
        AND (:region IS NULL OR :region IN ('east', 'west'))
        AND (:memo IS NULL OR length(:memo) < 100)
      GROUP BY account ORDER BY account
    params:
      kind: { type: string, max_length: 8 }
      min_amount: { type: integer, default: 0, min: -1000000, max: 1000000 }
      flag: { type: boolean }
      region: { type: enum, values: [east, west] }
      memo: { type: string }
    columns:
      account: string
      n: integer
      total: integer
    row_key: account
    privacy_floor: { count_column: n, min: 3 }
  ratio:
    sql: "SELECT 1.5 * :x AS r"
    params:
      x: { type: number, required: true, min: 0, max: 10 }
    columns: { r: number }
commands:
  verify-ledger: { description: "Check the hash chain" }
  snapshot:
access:
  - tenants: "*"
    operators: ["${OP_A.toUpperCase()}"]
    views: "*"
    commands: [verify-ledger]
  - tenants: [acme]
    operators: "*"
    views: [position]
`;

let dir: string;
let db: Database.Database;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "totebox-policy-"));
  const file = path.join(dir, "archive.sqlite");
  const rw = new Database(file);
  rw.exec(`CREATE TABLE journal (id INTEGER PRIMARY KEY, date TEXT NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL);
           INSERT INTO journal (date, account, amount) VALUES ('2024-01-01', 'cash', 100);`);
  rw.close();
  db = new Database(file, { readonly: true });
});

afterAll(() => {
  db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const load = (text: string): Policy => parsePolicy(text, { db, fileName: "policy.yaml" });

function policyError(text: string): PolicyError {
  try {
    load(text);
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    expect(e).toBeInstanceOf(ToteboxError);
    expect((e as PolicyError).code).toBe("TOTEBOX_ERR_POLICY");
    return e as PolicyError;
  }
  throw new Error("expected the policy to be refused");
}

/** 1-based line and column of the first occurrence of `needle` in `text`. */
function posOf(text: string, needle: string, from = 0): { line: number; column: number } {
  const at = text.indexOf(needle, from);
  if (at < 0) throw new Error(`needle not found: ${needle}`);
  const before = text.slice(0, at);
  return { line: before.split("\n").length, column: at - before.lastIndexOf("\n") };
}

function expectIssueAt(text: string, needle: string, message: RegExp): PolicyError {
  const e = policyError(text);
  const issue = e.issues.find((i) => message.test(i.message));
  expect(issue, `issues: ${JSON.stringify(e.issues)}`).toBeDefined();
  expect({ line: issue!.line, column: issue!.column }).toEqual(posOf(text, needle));
  return e;
}

describe("parsePolicy: a valid policy", () => {
  it("loads views, params, columns, commands and access rules", () => {
    const p = load(GOOD);
    expect([...p.views.keys()]).toEqual(["position", "by_account", "ratio"]);
    const position = p.views.get("position")!;
    expect(position.sql.endsWith(":as_of")).toBe(true); // trailing ';' removed
    expect(position.params[0]).toMatchObject({
      name: "as_of",
      type: "date",
      required: false,
      default: "today",
    });
    expect(position.maxRows).toBe(10);
    expect(position.timeoutMs).toBe(500);
    const byAccount = p.views.get("by_account")!;
    expect(byAccount.rowKey).toBe("account");
    expect(byAccount.privacyFloor).toEqual({ countColumn: "n", min: 3 });
    expect(byAccount.maxRows).toBe(1000);
    expect(byAccount.params.find((x) => x.name === "kind")?.maxLength).toBe(8);
    expect(byAccount.params.find((x) => x.name === "memo")?.maxLength).toBe(256);
    expect([...p.commands.keys()]).toEqual(["verify-ledger", "snapshot"]);
    expect(p.access[0]!.operators).toEqual([OP_A]);
    expect(p.digest).toMatch(/^[0-9a-f]{64}$/);
    expect(load(GOOD).generation).not.toBe(p.generation);
  });

  it("offers a catalogue without SQL", () => {
    const cat = viewCatalogue(load(GOOD));
    expect(cat.map((v) => v.name)).toEqual(["position", "by_account", "ratio"]);
    expect(JSON.stringify(cat)).not.toContain("SELECT");
  });

  it("applies access rules per tenant, operator, view and command", () => {
    const p = load(GOOD);
    expect(canRead(p, { tenant: "anyone", operator: OP_A, view: "ratio" })).toBe(true);
    expect(canRead(p, { tenant: "anyone", operator: OP_B, view: "ratio" })).toBe(false);
    expect(canRead(p, { tenant: "acme", operator: OP_B, view: "position" })).toBe(true);
    expect(canRead(p, { tenant: "acme", operator: OP_B, view: "by_account" })).toBe(false);
    expect(canRead(p, { tenant: "acme", operator: OP_A, view: "nope" })).toBe(false);
    expect(canRun(p, { tenant: "x", operator: OP_A.toUpperCase(), command: "verify-ledger" })).toBe(true);
    expect(canRun(p, { tenant: "x", operator: OP_A, command: "snapshot" })).toBe(false);
    expect(canRun(p, { tenant: "acme", operator: OP_B, command: "verify-ledger" })).toBe(false);
    expect(canRun(p, { tenant: "acme", operator: OP_A, command: "drop-everything" })).toBe(false);
  });

  it("wraps a row-keyed view as a filtered subquery", () => {
    const sql = load(GOOD).views.get("by_account")!.sql;
    const stmt = db.prepare(wrapRowKey(`${sql} -- trailing comment`, "account"));
    expect(stmt.reader).toBe(true);
  });
});

describe("parsePolicy: errors carry line and column", () => {
  it("reports YAML syntax errors and duplicate keys", () => {
    const text = "version: 1\nviews:\n  a: { sql: x\n";
    const e = policyError(text);
    expect(e.detail?.line).toBeGreaterThanOrEqual(3);
    const dup = GOOD.replace("    max_rows: 10\n", "    max_rows: 10\n    max_rows: 11\n");
    expectIssueAt(dup, "max_rows: 11", /unique/i);
  });

  it("reports unknown keys, bad types and out-of-range limits at the offending node", () => {
    expectIssueAt(
      GOOD.replace("    max_rows: 10\n", "    max_row: 10\n"),
      "max_row:",
      /unknown key "max_row"/,
    );
    expectIssueAt(GOOD.replace("{ type: date,", "{ type: datetime,"), "datetime", /unknown param type/);
    expectIssueAt(GOOD.replace("max_rows: 10", "max_rows: 0"), "0\n    timeout_ms", /between 1 and/);
    expectIssueAt(GOOD.replace("timeout_ms: 500", "timeout_ms: 999999"), "999999", /between 1 and/);
    expectIssueAt(GOOD.replace("cash: integer", "cash: money"), "money", /column type/);
    expectIssueAt(GOOD.replace("version: 1", "version: 2"), "2\nviews", /version must be 1/);
    expectIssueAt(GOOD.replace('default: "today"', 'default: "2023-02-29"'), '"2023-02-29"', /calendar date/);
    expectIssueAt(GOOD.replace("default: 0, min", "default: -5000000, min"), "-5000000", /at least/);
    expectIssueAt(
      GOOD.replace("values: [east, west]", "values: [east, east]"),
      "east]",
      /duplicate enum value/,
    );
    expectIssueAt(
      GOOD.replace("{ type: string, max_length: 8 }", "{ type: integer, max_length: 8 }"),
      "max_length: 8",
      /does not apply/,
    );
    expectIssueAt(
      GOOD.replace("required: true, min", "required: true, default: 1, min"),
      "default: 1",
      /required param cannot have a default/,
    );
  });

  it("refuses writes, PRAGMA, ATTACH and multiple statements, pointing into the SQL", () => {
    const withSql = (sql: string) => GOOD.replace('sql: "SELECT 1.5 * :x AS r"', `sql: "${sql}"`);
    expectIssueAt(withSql("DELETE FROM journal WHERE id = :x RETURNING 1.0 AS r"), "DELETE", /single SELECT/);
    expectIssueAt(
      withSql(
        "WITH t AS (SELECT 1) INSERT INTO journal (date, account, amount) SELECT :x, 'a', 1 RETURNING 1.0 AS r",
      ),
      '"WITH',
      /read-only/,
    );
    expectIssueAt(
      withSql("SELECT 1.5 * :x AS r FROM pragma_table_info('journal')"),
      "pragma_table_info",
      /not allowed/,
    );
    expectIssueAt(withSql("SELECT 1.5 * :x AS r; ATTACH 'x.db' AS y"), "ATTACH", /not allowed/);
    expectIssueAt(
      withSql("SELECT 1.5 * :x AS r FROM main.pragma_table_info('journal')"),
      "pragma_table_info",
      /not allowed/,
    );
    expectIssueAt(withSql("SELECT 1.5 * :x AS r; SELECT 2"), "; SELECT 2", /exactly one statement/);
    expectIssueAt(withSql("SELECT 1.5 * ? AS r"), "? AS r", /use :name/);
    expectIssueAt(withSql("SELECT 1.5 * @x AS r"), "@x AS r", /use :name/);
    // Keywords inside string literals, quoted names and comments are data, not SQL.
    const quiet = load(withSql("SELECT 1.5 * :x AS r /* ATTACH ; */ WHERE 'PRAGMA;' IS NOT NULL"));
    expect(quiet.views.get("ratio")!.sql).toContain("PRAGMA");
  });

  it("maps positions inside a literal block scalar to the file", () => {
    const text = GOOD.replace(
      "      WHERE date <= :as_of;\n",
      "      WHERE date <= :as_of AND account = :acct;\n",
    );
    expectIssueAt(text, ":acct", /uses :acct, which is not declared/);
    const text2 = GOOD.replace(
      "      FROM journal\n      WHERE date",
      "      FROM journal\n      -- PRAGMA in a comment\n      WHERE date",
    ).replace("GROUP BY account ORDER BY account", "GROUP BY account ORDER BY account; PRAGMA foo");
    expectIssueAt(text2, "PRAGMA foo", /not allowed/);
  });

  it("checks named parameters and columns against the statement", () => {
    expectIssueAt(
      GOOD.replace(
        "      memo: { type: string }\n",
        "      memo: { type: string }\n      extra: { type: string }\n",
      ),
      "extra: {",
      /declared but the SQL does not use :extra/,
    );
    const e = expectIssueAt(
      GOOD.replace("      n: integer\n      total: integer", "      total: integer\n      n: integer"),
      "account: string",
      /do not match the statement's columns/,
    );
    expect(e.detail?.path).toBe("views.by_account.columns");
    expectIssueAt(
      GOOD.replace("FROM journal\n      WHERE date", "FROM nowhere\n      WHERE date"),
      "|\n      SELECT COALESCE",
      /no such table: nowhere/,
    );
    expectIssueAt(GOOD.replace("row_key: account", "row_key: acct"), "acct", /not a declared column/);
    expectIssueAt(
      GOOD.replace("count_column: n,", "count_column: account,"),
      "account, min",
      /must be an integer column/,
    );
  });

  it("checks access rules against the declared views and commands", () => {
    expectIssueAt(
      GOOD.replace("views: [position]", "views: [positions]"),
      "positions",
      /no view named "positions"/,
    );
    expectIssueAt(
      GOOD.replace("commands: [verify-ledger]", "commands: [rm-rf]"),
      "rm-rf",
      /no command named/,
    );
    expectIssueAt(
      GOOD.replace(`operators: ["${OP_A.toUpperCase()}"]`, 'operators: ["not-hex"]'),
      '"not-hex"',
      /operator key id/,
    );
    expectIssueAt(
      GOOD.replace('  - tenants: [acme]\n    operators: "*"', '  - tenants: [acme]\n    operatorz: "*"'),
      "operatorz",
      /unknown key/,
    );
  });

  it("refuses aliases and non-mapping documents", () => {
    expectIssueAt(
      GOOD.replace("    max_rows: 10\n", "    max_rows: &m 10\n    timeout_mz: *m\n"),
      "timeout_mz",
      /unknown key/,
    );
    const aliased = GOOD.replace("    timeout_ms: 500\n", "    timeout_ms: *m\n").replace(
      "max_rows: 10",
      "max_rows: &m 10",
    );
    expectIssueAt(aliased, "*m", /aliases are not allowed/);
    expect(policyError("- 1\n- 2\n").detail?.line).toBe(1);
    expect(policyError("").code).toBe("TOTEBOX_ERR_POLICY");
  });

  it("reports every issue, the first one in the message and detail", () => {
    const text = GOOD.replace("max_rows: 10", "max_rows: -1").replace("cash: integer", "cash: money");
    const e = policyError(text);
    expect(e.issues.length).toBeGreaterThanOrEqual(2);
    expect(e.message).toMatch(/^policy\.yaml:\d+:\d+: /);
    expect(e.detail).toMatchObject({
      line: e.issues[0]!.line,
      column: e.issues[0]!.column,
      file: "policy.yaml",
    });
  });

  it("never throws anything but TOTEBOX_ERR_POLICY for random mutations of a valid file", () => {
    const pieces = [
      ":",
      "-",
      " ",
      "\n",
      "  ",
      "{",
      "}",
      "[",
      "]",
      "'",
      '"',
      "*",
      "&a",
      "*a",
      "!!str",
      "#",
      ";",
      "?",
      "|",
      ">",
      "null",
      "~",
      "1e999",
      "0x1F",
      "views",
      "sql",
      "SELECT",
      "PRAGMA",
      "\t",
      "\u0000",
      "é",
    ];
    const mutation = fc.oneof(
      fc.record({
        kind: fc.constant("insert" as const),
        at: fc.nat(),
        text: fc.oneof(fc.constantFrom(...pieces), fc.string({ maxLength: 6 })),
      }),
      fc.record({ kind: fc.constant("delete" as const), at: fc.nat(), len: fc.integer({ min: 1, max: 12 }) }),
      fc.record({ kind: fc.constant("dupline" as const), at: fc.nat() }),
      fc.record({ kind: fc.constant("swaplines" as const), at: fc.nat(), other: fc.nat() }),
    );
    let valid = 0;
    let refused = 0;
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (mutations) => {
        let text = GOOD;
        for (const m of mutations) {
          const lines = text.split("\n");
          if (m.kind === "insert") {
            const at = m.at % (text.length + 1);
            text = text.slice(0, at) + m.text + text.slice(at);
          } else if (m.kind === "delete") {
            const at = m.at % (text.length + 1);
            text = text.slice(0, at) + text.slice(at + m.len);
          } else if (m.kind === "dupline") {
            const i = m.at % lines.length;
            lines.splice(i, 0, lines[i]!);
            text = lines.join("\n");
          } else {
            const i = m.at % lines.length;
            const j = m.other % lines.length;
            [lines[i], lines[j]] = [lines[j]!, lines[i]!];
            text = lines.join("\n");
          }
        }
        try {
          const p = load(text);
          expect(p.version).toBe(1);
          for (const v of p.views.values()) expect(db.prepare(v.sql).readonly).toBe(true);
          valid++;
        } catch (e) {
          if (!(e instanceof PolicyError)) throw e;
          expect(e.code).toBe("TOTEBOX_ERR_POLICY");
          expect(Number.isInteger(e.detail?.line) && (e.detail?.line as number) >= 1).toBe(true);
          expect(Number.isInteger(e.detail?.column) && (e.detail?.column as number) >= 1).toBe(true);
          refused++;
        }
      }),
      { seed, numRuns: 400 },
    );
    expect(valid + refused).toBe(400);
  });
});

describe("validateParams", () => {
  let position: ViewSpec;
  let byAccount: ViewSpec;
  let ratio: ViewSpec;
  beforeAll(() => {
    const p = load(GOOD);
    position = p.views.get("position")!;
    byAccount = p.views.get("by_account")!;
    ratio = p.views.get("ratio")!;
  });

  function paramError(fn: () => unknown, param: string): ToteboxError {
    try {
      fn();
    } catch (e) {
      expect(e).toBeInstanceOf(ToteboxError);
      expect((e as ToteboxError).code).toBe("TOTEBOX_ERR_PARAM");
      expect((e as ToteboxError).detail?.param).toBe(param);
      return e as ToteboxError;
    }
    throw new Error("expected TOTEBOX_ERR_PARAM");
  }

  it("resolves the today default with the injected clock and time zone", () => {
    const now = () => Date.UTC(2024, 0, 31, 23, 30);
    expect(validateParams(position, {}, { now })).toEqual({ as_of: "2024-01-31" });
    expect(validateParams(position, undefined, { now, timeZone: "Asia/Tokyo" })).toEqual({
      as_of: "2024-02-01",
    });
    expect(todayIn(Date.UTC(2023, 11, 31, 12), "UTC")).toBe("2023-12-31");
    expect(validateParams(position, { as_of: "2024-02-29" })).toEqual({ as_of: "2024-02-29" });
  });

  it("types and bounds every kind of value", () => {
    expect(validateParams(byAccount, { kind: "ca", min_amount: "42", flag: "true", region: "east" })).toEqual(
      {
        kind: "ca",
        min_amount: 42,
        flag: true,
        region: "east",
        memo: null,
      },
    );
    expect(validateParams(byAccount, new Map([["min_amount", 7n]]))).toMatchObject({ min_amount: 7 });
    expect(validateParams(byAccount, {}).min_amount).toBe(0);
    expect(validateParams(ratio, { x: 2.5 })).toEqual({ x: 2.5 });
    expect(validateParams(ratio, { x: "1e1" })).toEqual({ x: 10 });
  });

  it("refuses bad values, naming the param and the reason", () => {
    expect(
      paramError(() => validateParams(position, { as_of: "2023-02-29" }), "as_of").detail?.reason,
    ).toMatch(/calendar date/);
    paramError(() => validateParams(position, { as_of: "2024-1-01" }), "as_of");
    paramError(() => validateParams(position, { as_of: 20240101 }), "as_of");
    paramError(() => validateParams(position, { when: "2024-01-01" }), "when");
    paramError(() => validateParams(byAccount, { kind: "x".repeat(9) }), "kind");
    paramError(() => validateParams(byAccount, { memo: "x".repeat(257) }), "memo");
    paramError(() => validateParams(byAccount, { min_amount: 1.5 }), "min_amount");
    paramError(() => validateParams(byAccount, { min_amount: "1.0" }), "min_amount");
    paramError(() => validateParams(byAccount, { min_amount: 2 ** 53 }), "min_amount");
    paramError(() => validateParams(byAccount, { min_amount: 10n ** 20n }), "min_amount");
    paramError(() => validateParams(byAccount, { min_amount: 1_000_001 }), "min_amount");
    paramError(() => validateParams(byAccount, { flag: 1 }), "flag");
    paramError(() => validateParams(byAccount, { region: "north" }), "region");
    paramError(() => validateParams(byAccount, { kind: ["ca"] }), "kind");
    paramError(() => validateParams(ratio, {}), "x");
    paramError(() => validateParams(ratio, { x: Number.NaN }), "x");
    paramError(() => validateParams(ratio, { x: 11 }), "x");
    paramError(() => validateParams(ratio, { x: "1e999" }), "x");
    paramError(() => validateParams(ratio, [1]), "*");
    paramError(() => validateParams(ratio, JSON.parse('{"x": 1, "__proto__": {"y": 1}}')), "__proto__");
  });

  it("accepts only real calendar dates", () => {
    expect(isCalendarDate("2000-02-29")).toBe(true);
    expect(isCalendarDate("1900-02-29")).toBe(false);
    expect(isCalendarDate("2024-04-31")).toBe(false);
    expect(isCalendarDate("2024-12-31")).toBe(true);
    expect(isCalendarDate("0000-01-01")).toBe(false);
    expect(isCalendarDate("2024-13-01")).toBe(false);
  });
});

describe("lexSql", () => {
  it("finds parameters outside literals only", () => {
    const { tokens } = lexSql(
      "SELECT ':no', \"a:b\", [c:d], `e:f` -- :x\n /* :y */ FROM t WHERE a = :p AND b = :q1",
    );
    expect(tokens.filter((t) => t.kind === "param").map((t) => t.text)).toEqual(["p", "q1"]);
    expect(lexSql("SELECT 'open").error?.message).toMatch(/unterminated/);
  });
});

describe("PolicyStore", () => {
  function storeIn(): { store: PolicyStore; file: string } {
    const sub = fs.mkdtempSync(path.join(dir, "store-"));
    const file = path.join(sub, "policy.yaml");
    fs.writeFileSync(file, GOOD);
    return { store: new PolicyStore({ file, db, debounceMs: 20 }), file };
  }

  /** Replaces the file atomically (as editors do), so a watcher never sees half a file. */
  function replaceFile(file: string, text: string): void {
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  }

  it("refuses to start on an invalid file", () => {
    const file = path.join(dir, "bad.yaml");
    fs.writeFileSync(file, "version: 1\nviews: 3\n");
    expect(() => new PolicyStore({ file, db })).toThrow(
      expect.objectContaining({ code: "TOTEBOX_ERR_POLICY" }),
    );
    expect(() => loadPolicyFile(path.join(dir, "missing.yaml"), { db })).toThrow(PolicyError);
  });

  it("reload() swaps in a good policy and keeps the old one when the new file is bad", () => {
    const { store, file } = storeIn();
    const first = store.current;
    const events: ReloadResult[] = [];
    store.on("reload", (r: ReloadResult) => events.push(r));

    expect(store.reload()).toMatchObject({ ok: true, changed: false });
    expect(store.current).toBe(first);

    fs.writeFileSync(file, GOOD.replace("max_rows: 10", "max_rows: 20"));
    const r = store.reload();
    expect(r).toMatchObject({ ok: true, changed: true });
    expect(store.current.views.get("position")!.maxRows).toBe(20);
    expect(store.current.generation).not.toBe(first.generation);
    const second = store.current;

    const bad = GOOD.replace("cash: integer", "cash: money");
    fs.writeFileSync(file, bad);
    const failed = store.reload();
    expect(failed.ok).toBe(false);
    if (!failed.ok) {
      expect(failed.error.code).toBe("TOTEBOX_ERR_POLICY");
      expect(failed.error.detail).toMatchObject({ ...posOf(bad, "money"), file: "policy.yaml" });
    }
    expect(store.current).toBe(second);
    expect(events.map((e) => e.ok)).toEqual([true, true, false]);
    store.close();
  });

  it("the watcher reloads after the file is replaced (waits on the reload event)", async () => {
    const { store, file } = storeIn();
    store.watch();
    try {
      const until = async (pred: (r: ReloadResult) => boolean): Promise<ReloadResult> => {
        for (;;) {
          const [r] = (await once(store, "reload")) as [ReloadResult];
          if (pred(r)) return r;
        }
      };
      const changed = until((r) => r.ok && r.policy.views.get("position")!.maxRows === 33);
      replaceFile(file, GOOD.replace("max_rows: 10", "max_rows: 33"));
      await changed;
      expect(store.current.views.get("position")!.maxRows).toBe(33);

      const refused = until((r) => !r.ok);
      replaceFile(file, "version: 1\nviews:\n  x: 1\n");
      const r = await refused;
      expect(r.ok).toBe(false);
      expect(store.current.views.get("position")!.maxRows).toBe(33);
    } finally {
      store.close();
    }
  });
});
