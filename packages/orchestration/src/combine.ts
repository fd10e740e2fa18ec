/**
 * The combine step of a viewport: the fleet's answers, loaded into a per-request in-memory DuckDB,
 * queried by the viewport's SQL sections.
 *
 * Stateless hub (DESIGN invariant 1): each combine runs in an in-memory DuckDB instance, inside
 * one transaction that is rolled back when it ends (instances are kept between combines: opening
 * one costs ~15 ms; withCombineSandbox), and it is sandboxed so that no SQL can write a record
 * anywhere:
 * - `temp_directory` is empty (no spilling to disk: a combine that outgrows `memory_limit` fails
 *   instead of writing rows to a temp file), the memory limit is fixed;
 * - `enable_external_access=false` refuses every file and network access (COPY TO, ATTACH,
 *   read_csv, extension installation);
 * - extensions are not auto-installed or auto-loaded, and `lock_configuration` stops the SQL from
 *   undoing any of this;
 * - only a single SELECT statement is accepted per section (checked at compile and at run).
 *
 * Tables the SQL sees (all names are identifiers validated by viewports.ts):
 * - per read `as: X`: X(totebox VARCHAR, tags MAP(VARCHAR, VARCHAR), <view columns>), one row per
 *   result row per Totebox that answered ok;
 * - coverage(totebox, name, tags, status, reason, elapsed_ms): every targeted Totebox once.
 * Viewport params are bound as DuckDB named parameters ($name), typed from the param spec.
 *
 * Data fed in is hostile (it came from Toteboxes): counts are bounded before DuckDB is touched
 * (maxCombineInputRows), each answer's columns are checked against the read's declared columns,
 * output is bounded (maxCombineOutputRows, streaming, so an oversize result is never materialised)
 * and every run has a deadline enforced with `interrupt()`. A failing section is reported as
 * ORCH_ERR_COMBINE naming the section and DuckDB's error class, never DuckDB's message: at run time
 * that message can quote data values ("could not convert string 'x'").
 */
import { randomInt } from "node:crypto";
import {
  BIGINT,
  BOOLEAN,
  DATE,
  DOUBLE,
  type DuckDBAppender,
  type DuckDBConnection,
  DuckDBDataChunk,
  DuckDBDateValue,
  DuckDBDecimalValue,
  DuckDBInstance,
  type DuckDBMapValue,
  type DuckDBPreparedStatement,
  type DuckDBResult,
  type DuckDBType,
  DuckDBTypeId,
  type DuckDBValue,
  dateValue,
  MAP,
  mapValue,
  StatementType,
  VARCHAR,
} from "@duckdb/node-api";
import type { Cell, ColumnSpec, ColumnType, DecodedResult } from "@os-orchestration/psp";
import { OrchError } from "./errors.ts";
import { type OrchLimits, resolveOrchLimits } from "./limits.ts";
import { type LoadPlan, planLoads, type TableLoad } from "./load-plan.ts";
import type { ChartHint, Viewport, ViewportRead, ViewportSection } from "./viewports.ts";

export interface CombineInput {
  readonly viewport: Viewport;
  /** The output of resolveViewportParams. */
  readonly params: Readonly<Record<string, string | number | boolean>>;
  /** Per read (keyed by `as`): the decoded answers of the Toteboxes that answered ok. */
  readonly results: ReadonlyMap<
    string,
    readonly { totebox: string; tags: Readonly<Record<string, string>>; result: DecodedResult }[]
  >;
  /** Every targeted Totebox exactly once. */
  readonly coverage: readonly {
    totebox: string;
    name: string;
    tags: Readonly<Record<string, string>>;
    status: string;
    reason: string;
    elapsedMs: number;
  }[];
  readonly limits?: Partial<OrchLimits>;
  /** Wall-clock budget for loading and running every section, ms. Default COMBINE_TIMEOUT_MS. */
  readonly timeoutMs?: number;
  /** Cancels a running combine (the fan-out was cancelled): ORCH_ERR_CANCELLED. */
  readonly signal?: AbortSignal;
}

/** What the coverage table is made of: a fan-out's outcome per Totebox (fanout.ts ToteboxOutcome). */
export interface CoverageSource {
  readonly totebox: string;
  readonly name: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly status: string;
  readonly code: string | null;
  readonly elapsedMs: number;
}

/**
 * The combine's coverage input from a fan-out's outcomes, one row per targeted Totebox: what the
 * aggregator combines and what a console recomputes a result from must be the same table. A loop,
 * not a `map` callback: the aggregator builds it per query (see columnIndex).
 */
export function coverageOf(outcomes: readonly CoverageSource[]): CombineInput["coverage"][number][] {
  const coverage: CombineInput["coverage"][number][] = new Array(outcomes.length);
  for (let i = 0; i < outcomes.length; i++) {
    const o = outcomes[i]!;
    coverage[i] = {
      totebox: o.totebox,
      name: o.name,
      tags: o.tags,
      status: o.status,
      reason: o.code ?? "",
      elapsedMs: o.elapsedMs,
    };
  }
  return coverage;
}

export interface CombinedSection {
  readonly name: string;
  readonly title: string;
  readonly columns: readonly ColumnSpec[];
  readonly rows: readonly (readonly Cell[])[];
  readonly chart: ChartHint | undefined;
}

/** Default wall-clock budget of one combine (all sections), ms. */
export const COMBINE_TIMEOUT_MS = 10_000;
/** Budget of one section at compile time (empty tables: anything slow is a runaway query). */
export const COMPILE_SECTION_TIMEOUT_MS = 5_000;
/** DuckDB memory limit per combine. No spilling, so past this the combine fails. */
export const COMBINE_MEMORY_LIMIT = "1GB";

const COVERAGE_STATUSES = new Set(["ok", "timeout", "offline", "denied", "suppressed", "error"]);
/** DuckDB's standard vector size: a data chunk holds at most this many rows. */
const CHUNK_ROWS = 2048;
const MS_PER_DAY = 86_400_000;

// ---------------------------------------------------------------------------------------------
// Sandbox

/**
 * Order matters: `temp_directory` cannot be changed once external access is off, and nothing can
 * be changed once the configuration is locked.
 */
const SANDBOX_CONFIG: Readonly<Record<string, string>> = Object.freeze({
  threads: "1",
  temp_directory: "",
  memory_limit: COMBINE_MEMORY_LIMIT,
  autoinstall_known_extensions: "false",
  autoload_known_extensions: "false",
  enable_external_access: "false",
  lock_configuration: "true",
});

/** @internal An open sandboxed DuckDB (viewports.ts compiles in one; runCombine runs in one). */
export interface SqlSandbox {
  readonly connection: DuckDBConnection;
  /**
   * Runs `fn` with the viewport's input tables created empty (as `plan` creates them, when given),
   * in a transaction rolled back after.
   */
  inScratch(v: Viewport, fn: () => Promise<void>, plan?: LoadPlan): Promise<void>;
}

/** @internal Opens a sandboxed in-memory DuckDB, runs `fn`, always closes it. */
export async function withSandbox<T>(fn: (box: SqlSandbox) => Promise<T>): Promise<T> {
  const sb = await openSandbox();
  const conn = sb.connection;
  const box: SqlSandbox = {
    connection: conn,
    async inScratch(v, run, plan) {
      await conn.run("BEGIN TRANSACTION");
      try {
        await createTables(conn, v, plan);
        await run();
      } finally {
        await conn.run("ROLLBACK");
      }
    },
  };
  try {
    return await fn(box);
  } finally {
    closeSandbox(sb);
  }
}

/**
 * DuckDB instances kept between combines (runCombine). Opening one costs ~15 ms of CPU here
 * (measured: 15-17 ms each, 60 in a row), 15 µs per Totebox of a fan-out over 1,000, once per
 * query. A kept instance is reused only as it was left by a combine that ran to the end: every
 * combine runs in one transaction that is always rolled back, so no row, table or macro a combine
 * made is there for the next (a section is one SELECT, checked when the viewport loads, and the
 * configuration is locked), and the random seed a section may set (`setseed`) is drawn afresh
 * after each. What does stay is the input tables of the viewport the instance last combined,
 * created outside any transaction and empty (Sandbox; combine.test.ts checks that no segment, size
 * or value of the last combine's rows is left in them), and that viewport's prepared sections.
 * Instance-wide counters do go on (transaction and object ids, a kept table's oid): a section
 * that reads them sees how many combines ran before it, which no dashboard has a use for. An
 * instance whose combine failed, was interrupted or timed out, or whose rollback failed, is
 * closed, not kept. Concurrent combines each take their own instance.
 */
const idleSandboxes: Sandbox[] = [];

/**
 * An open sandboxed DuckDB. A kept one (withCombineSandbox) also keeps the input tables of the
 * viewport it last combined, created outside any transaction and empty between combines (each
 * combine's rows are appended inside its transaction and rolled back with it), and that viewport's
 * sections prepared on them: a combine of the same viewport then skips creating its tables and
 * planning its SQL, ~2.4 of the ~6 ms a combine cost whatever its size (performance.md, eleventh
 * round). Another viewport's combine drops them first.
 */
interface Sandbox {
  readonly instance: DuckDBInstance;
  readonly connection: DuckDBConnection;
  tablesFor: Viewport | undefined;
  readonly prepared: Map<ViewportSection, DuckDBPreparedStatement>;
}
/** Instances kept idle at most (each a few MB once its rows are rolled back). */
const MAX_IDLE_SANDBOXES = 2;
const sandboxCounts = { opened: 0, reused: 0 };

/** @internal Instances opened and reused by combines so far, and kept idle now (tests). */
export function combineSandboxCounts(): { opened: number; reused: number; idle: number } {
  return { ...sandboxCounts, idle: idleSandboxes.length };
}

async function openSandbox(): Promise<Sandbox> {
  let instance: DuckDBInstance | undefined;
  let connection: DuckDBConnection | undefined;
  try {
    instance = await DuckDBInstance.create(":memory:", { ...SANDBOX_CONFIG });
    connection = await instance.connect();
  } catch (cause) {
    connection?.closeSync();
    instance?.closeSync();
    throw new OrchError("ORCH_ERR_INTERNAL", "cannot open the combine database", {}, { cause });
  }
  return { instance, connection, tablesFor: undefined, prepared: new Map() };
}

function closeSandbox(sb: Sandbox): void {
  destroyPrepared(sb);
  sb.connection.closeSync();
  sb.instance.closeSync();
}

function destroyPrepared(sb: Sandbox): void {
  for (const p of sb.prepared.values()) p.destroySync();
  sb.prepared.clear();
}

/**
 * Makes `sb` hold `v`'s input tables, empty, outside any transaction: as they are when it last
 * combined `v`, or created afresh (another viewport's dropped first, with its prepared sections).
 */
async function holdTables(sb: Sandbox, v: Viewport, plan: LoadPlan | undefined): Promise<void> {
  if (sb.tablesFor === v) return;
  destroyPrepared(sb);
  const held = sb.tablesFor;
  sb.tablesFor = undefined;
  if (held !== undefined) {
    for (const name of inputTables(held).keys()) await sb.connection.run(`DROP TABLE IF EXISTS ${q(name)}`);
  }
  await createTables(sb.connection, v, plan);
  sb.tablesFor = v;
}

/** @internal Closes the instances kept idle (a server closing; tests). The next combine opens one. */
export function closeCombineSandboxes(): void {
  for (const sb of idleSandboxes.splice(0)) closeSandbox(sb);
}

/**
 * Runs `fn` on a kept or new sandboxed DuckDB holding `v`'s input tables (holdTables), inside a
 * transaction that is rolled back after.
 */
async function withCombineSandbox<T>(
  v: Viewport,
  plan: LoadPlan | undefined,
  fn: (sb: Sandbox) => Promise<T>,
): Promise<T> {
  const kept = idleSandboxes.pop();
  if (kept) sandboxCounts.reused++;
  else sandboxCounts.opened++;
  const sb = kept ?? (await openSandbox());
  const conn = sb.connection;
  try {
    await holdTables(sb, v, plan);
  } catch (cause) {
    closeSandbox(sb);
    throw new OrchError("ORCH_ERR_INTERNAL", "cannot create the combine's tables", {}, { cause });
  }
  try {
    await conn.run("BEGIN TRANSACTION");
  } catch (cause) {
    closeSandbox(sb);
    throw new OrchError("ORCH_ERR_INTERNAL", "cannot start the combine's transaction", {}, { cause });
  }
  let out: T;
  try {
    out = await fn(sb);
  } catch (e) {
    // The combine's own error is the one reported; the instance is not kept.
    await conn.run("ROLLBACK").catch(() => {});
    closeSandbox(sb);
    throw e;
  }
  // The result stands whatever happens next; an instance that cannot be put back as it was goes.
  let clean = false;
  try {
    await conn.run("ROLLBACK");
    await conn.run(`SELECT setseed(${(randomInt(0, 2 ** 30) / 2 ** 30).toFixed(9)})`);
    clean = true;
  } catch {
    // closed below
  }
  if (clean && idleSandboxes.length < MAX_IDLE_SANDBOXES) idleSandboxes.push(sb);
  else closeSandbox(sb);
  return out;
}

const DUCK_TYPES: Readonly<Record<ColumnType, DuckDBType>> = {
  string: VARCHAR,
  integer: BIGINT,
  number: DOUBLE,
  date: DATE,
  boolean: BOOLEAN,
};
const TAGS_TYPE = MAP(VARCHAR, VARCHAR);

/** Names are validated identifiers (viewports.ts); quoting also keeps keywords usable as names. */
const q = (name: string): string => `"${name}"`;

/** An input table's column, with its DuckDB type. */
interface InputColumn {
  readonly name: string;
  readonly type: DuckDBType;
}

/** The coverage table: one row per targeted Totebox (feedCoverage writes them in this order). */
const COVERAGE_COLUMNS: readonly InputColumn[] = [
  { name: "totebox", type: VARCHAR },
  { name: "name", type: VARCHAR },
  { name: "tags", type: TAGS_TYPE },
  { name: "status", type: VARCHAR },
  { name: "reason", type: VARCHAR },
  { name: "elapsed_ms", type: DOUBLE },
];

/** A read's table: its Totebox, that Totebox's tags, then the read's declared columns. */
function readColumns(r: ViewportRead): InputColumn[] {
  const out: InputColumn[] = [
    { name: "totebox", type: VARCHAR },
    { name: "tags", type: TAGS_TYPE },
  ];
  for (const c of r.columns) out.push({ name: c.name, type: DUCK_TYPES[c.type] });
  return out;
}

/** Every input table of a viewport and its columns, in table order. */
function inputTables(v: Viewport): Map<string, readonly InputColumn[]> {
  const tables = new Map<string, readonly InputColumn[]>([["coverage", COVERAGE_COLUMNS]]);
  for (const r of v.reads) tables.set(r.as, readColumns(r));
  return tables;
}

/** The positions in `columns` a table is created with (every column unless the plan prunes it). */
function createdPositions(columns: readonly InputColumn[], load: TableLoad | undefined): number[] {
  const out: number[] = [];
  for (let i = 0; i < columns.length; i++) {
    if (load?.rows !== true || load.columns === undefined || load.columns.has(columns[i]!.name)) out.push(i);
  }
  return out;
}

async function createTables(conn: DuckDBConnection, v: Viewport, plan?: LoadPlan): Promise<void> {
  for (const [name, columns] of inputTables(v)) {
    const defs = createdPositions(columns, plan?.get(name)).map((i) => {
      const c = columns[i]!;
      return `${q(c.name)} ${c.type.toString()}`;
    });
    await conn.run(`CREATE TABLE ${q(name)} (${defs.join(", ")})`);
  }
}

/**
 * What each viewport loads (load-plan.ts), for the viewport objects compileViewports checked. Kept
 * here, keyed by the object, rather than in the Viewport value: a viewport built any other way
 * loads every column.
 */
const loadPlans = new WeakMap<Viewport, LoadPlan>();

/**
 * @internal Works out which input columns `v`'s sections can observe (load-plan.ts) and, when some
 * can be left out, checks every section again on tables created without them (the same checks as
 * compileSection). Only a plan that passes is used by runCombine. Call after every section of `v`
 * compiled on the full tables; outside `inScratch`. `planner` is load-plan.ts's (tests replace it).
 */
export async function planViewportLoads(
  box: SqlSandbox,
  v: Viewport,
  planner: typeof planLoads = planLoads,
): Promise<void> {
  try {
    const plan = await checkedPlan(box, v, planner);
    if (plan !== undefined) loadPlans.set(v, plan);
  } catch {
    // A plan only saves work: whatever went wrong here, the viewport loads every column.
  }
}

async function checkedPlan(
  box: SqlSandbox,
  v: Viewport,
  planner: typeof planLoads,
): Promise<LoadPlan | undefined> {
  const conn = box.connection;
  const parses: unknown[] = [];
  for (const section of v.sections) {
    try {
      const r = await conn.runAndReadAll("SELECT json_serialize_sql($1::VARCHAR)", [section.sql]);
      const text = r.getRows()[0]?.[0];
      parses.push(typeof text === "string" ? JSON.parse(text) : undefined);
    } catch {
      return undefined; // DuckDB could not serialise it: everything is loaded
    }
  }
  const tables = new Map<string, string[]>();
  for (const [name, columns] of inputTables(v))
    tables.set(
      name,
      columns.map((c) => c.name),
    );
  // The database's own tables and views (none of ours exist outside inScratch).
  const names = await conn.runAndReadAll(
    "SELECT lower(view_name) FROM duckdb_views() UNION ALL SELECT lower(table_name) FROM duckdb_tables()",
  );
  const catalog = new Set(names.getRows().map((r) => String(r[0])));
  const plan = planner(parses, tables, catalog);
  if (plan === undefined) return undefined;
  let sound = true;
  await box.inScratch(
    v,
    async () => {
      for (const section of v.sections) {
        if ((await compileSection(box, v, section)) !== undefined) {
          sound = false;
          return;
        }
      }
    },
    plan,
  );
  return sound ? plan : undefined;
}

/** @internal The plan runCombine uses for `v` (tests). */
export function viewportLoadPlan(v: Viewport): LoadPlan | undefined {
  return loadPlans.get(v);
}

// ---------------------------------------------------------------------------------------------
// Types and values

/** Which declared column type a DuckDB result type satisfies: integers of any width, floats and
 * decimals as numbers (sum(BIGINT) is HUGEINT and 1.0 * x is DECIMAL in DuckDB). */
function familyOf(t: DuckDBTypeId): ColumnType | undefined {
  switch (t) {
    case DuckDBTypeId.TINYINT:
    case DuckDBTypeId.SMALLINT:
    case DuckDBTypeId.INTEGER:
    case DuckDBTypeId.BIGINT:
    case DuckDBTypeId.UTINYINT:
    case DuckDBTypeId.USMALLINT:
    case DuckDBTypeId.UINTEGER:
    case DuckDBTypeId.UBIGINT:
    case DuckDBTypeId.HUGEINT:
    case DuckDBTypeId.UHUGEINT:
      return "integer";
    case DuckDBTypeId.FLOAT:
    case DuckDBTypeId.DOUBLE:
    case DuckDBTypeId.DECIMAL:
      return "number";
    case DuckDBTypeId.VARCHAR:
      return "string";
    case DuckDBTypeId.DATE:
      return "date";
    case DuckDBTypeId.BOOLEAN:
      return "boolean";
    default:
      return undefined;
  }
}

/** Problem text when the result's columns differ from the declared ones, else undefined. */
function columnMismatch(
  declared: readonly ColumnSpec[],
  names: readonly string[],
  types: readonly DuckDBType[],
): string | undefined {
  const got = names.map((n, i) => `${n} ${types[i]?.toString() ?? "?"}`).join(", ");
  const want = declared.map((c) => `${c.name} ${c.type}`).join(", ");
  if (names.length !== declared.length || names.some((n, i) => n !== declared[i]!.name)) {
    return clipText(`declared columns (${want}) differ from the SQL's result columns (${got})`);
  }
  for (const [i, c] of declared.entries()) {
    const fam = familyOf(types[i]!.typeId);
    if (fam !== c.type) {
      return clipText(`column "${c.name}" is declared ${c.type} but the SQL returns ${types[i]!.toString()}`);
    }
  }
  return undefined;
}

function isoDate(days: number): string {
  const d = new Date(days * MS_PER_DAY);
  return Number.isNaN(d.getTime()) ? String(days) : d.toISOString().slice(0, 10);
}

function integerCell(v: bigint): number | string {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(v)
    : v.toString();
}

function unexpected(family: ColumnType): OrchError {
  return new OrchError("ORCH_ERR_COMBINE", "combine produced a value of an unexpected type", {
    type: family,
  });
}

/**
 * DuckDB value → output cell, one converter per column family (integers: number when safe, else a
 * string of digits; dates: "YYYY-MM-DD"; decimals: numbers).
 */
const CELL_OF: Readonly<Record<ColumnType, (v: DuckDBValue) => Cell>> = {
  integer: (v) => {
    if (v === null) return null;
    if (typeof v === "bigint") return integerCell(v);
    if (typeof v === "number") return v;
    throw unexpected("integer");
  },
  number: (v) => {
    if (v === null) return null;
    if (typeof v === "number") return v;
    if (v instanceof DuckDBDecimalValue) return v.toDouble();
    throw unexpected("number");
  },
  date: (v) => {
    if (v === null) return null;
    if (v instanceof DuckDBDateValue) return isoDate(v.days);
    throw unexpected("date");
  },
  string: (v) => {
    if (v === null) return null;
    if (typeof v === "string") return v;
    throw unexpected("string");
  },
  boolean: (v) => {
    if (v === null) return null;
    if (typeof v === "boolean") return v;
    throw unexpected("boolean");
  },
};

function dateDays(iso: string): number {
  return (
    Date.UTC(Number(iso.slice(0, 4)), Number(iso.slice(5, 7)) - 1, Number(iso.slice(8, 10))) / MS_PER_DAY
  );
}

/**
 * Binds the viewport params a prepared section references (and only those: DuckDB refuses a
 * name the statement does not use). A param without a value (optional, no default) binds NULL.
 */
function bindParams(
  prepared: DuckDBPreparedStatement,
  v: Viewport,
  values: Readonly<Record<string, string | number | boolean>>,
): void {
  for (let i = 1; i <= prepared.parameterCount; i++) {
    const name = prepared.parameterName(i);
    const spec = v.params.find((p) => p.name === name);
    if (!spec) throw new Error(`undeclared parameter $${name}`);
    const value = Object.hasOwn(values, name) ? values[name] : undefined;
    if (value === undefined) {
      prepared.bindNull(i);
      continue;
    }
    switch (spec.type) {
      case "tag":
      case "string":
        prepared.bindVarchar(i, String(value));
        break;
      case "date":
        prepared.bindDate(i, dateValue(dateDays(String(value))));
        break;
      case "integer":
        prepared.bindBigInt(i, BigInt(value as number));
        break;
      case "boolean":
        prepared.bindBoolean(i, value === true);
        break;
    }
  }
}

/** Typed stand-ins for params at compile time: only their types matter on empty tables. */
function sampleParams(v: Viewport): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const p of v.params) {
    out[p.name] = { tag: "region", string: "", date: "2000-01-01", integer: 0, boolean: false }[p.type];
  }
  return out;
}

/** DuckDB messages start with their error class ("Binder Error: ..."): the part that is safe to show. */
function errorClass(e: unknown): string {
  const m = e instanceof Error ? /^([A-Za-z ]{1,40} Error):/.exec(e.message) : null;
  return m ? m[1]! : "Error";
}

function clipText(s: string, max = 600): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

// ---------------------------------------------------------------------------------------------
// Deadline

type Stop = "timeout" | "cancelled";

/**
 * Runs `fn` and interrupts the connection's running query when the deadline passes or the signal
 * fires. DuckDB runs queries off the JS thread, so the timer fires while a query is running.
 */
async function withDeadline<T>(
  conn: DuckDBConnection,
  deadline: number,
  signal: AbortSignal | undefined,
  fn: () => Promise<T>,
): Promise<{ ok: true; value: T } | { ok: false; stop: Stop } | { ok: false; error: unknown }> {
  let stop: Stop | undefined;
  if (signal?.aborted) return { ok: false, stop: "cancelled" };
  const remaining = deadline - performance.now();
  if (remaining <= 0) return { ok: false, stop: "timeout" };
  const timer = setTimeout(() => {
    stop = "timeout";
    conn.interrupt();
  }, remaining);
  const onAbort = () => {
    stop = "cancelled";
    conn.interrupt();
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const value = await fn();
    if (stop) return { ok: false, stop };
    return { ok: true, value };
  } catch (error) {
    if (stop) return { ok: false, stop };
    return { ok: false, error };
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

// ---------------------------------------------------------------------------------------------
// Compile (used by viewports.ts)

/**
 * @internal Checks one section inside `box.inScratch(v, ...)`: a single SELECT, only declared
 * `$params`, runs on empty tables within COMPILE_SECTION_TIMEOUT_MS, returns exactly the declared
 * columns. Returns the problem (DuckDB's message: it quotes only the configuration's own SQL, no
 * data exists yet), or undefined when the section is sound.
 */
export async function compileSection(
  box: SqlSandbox,
  v: Viewport,
  section: ViewportSection,
): Promise<string | undefined> {
  let prepared: DuckDBPreparedStatement;
  try {
    prepared = await box.connection.prepare(section.sql);
  } catch (e) {
    return clipText(`SQL does not compile: ${e instanceof Error ? e.message : String(e)}`);
  }
  try {
    if (prepared.statementType !== StatementType.SELECT) return "SQL must be one SELECT statement";
    const declared = new Set(v.params.map((p) => p.name));
    for (let i = 1; i <= prepared.parameterCount; i++) {
      const name = prepared.parameterName(i);
      if (!declared.has(name)) return clipText(`SQL refers to undeclared parameter $${name}`);
    }
    bindParams(prepared, v, sampleParams(v));
    const outcome = await withDeadline(
      box.connection,
      performance.now() + COMPILE_SECTION_TIMEOUT_MS,
      undefined,
      () => prepared.run(),
    );
    if (!outcome.ok) {
      if ("stop" in outcome) return `SQL runs longer than ${COMPILE_SECTION_TIMEOUT_MS} ms on empty tables`;
      const e = outcome.error;
      return clipText(`SQL fails on empty tables: ${e instanceof Error ? e.message : String(e)}`);
    }
    const result = outcome.value;
    return columnMismatch(section.columns, result.columnNames(), result.columnTypes());
  } finally {
    prepared.destroySync();
  }
}

// ---------------------------------------------------------------------------------------------
// Run

function combineError(message: string, detail: Record<string, string | number>): OrchError {
  return new OrchError("ORCH_ERR_COMBINE", message, detail);
}

interface Batch {
  readonly totebox: string;
  readonly tags: DuckDBMapValue;
  readonly result: DecodedResult;
  /** Per declared column of the read, its index in the answer's columns (= Arrow schema order). */
  readonly index: readonly number[];
}

/** Validates the input's shape and size before any of it reaches DuckDB. */
function checkInput(
  input: CombineInput,
  limits: Readonly<OrchLimits>,
): { batches: Map<string, Batch[]>; tagsOf: Map<string, DuckDBMapValue> } {
  const v = input.viewport;
  const tagsOf = new Map<string, DuckDBMapValue>();
  for (const c of input.coverage) {
    if (typeof c.totebox !== "string" || typeof c.name !== "string" || typeof c.reason !== "string") {
      throw combineError("coverage entry is malformed", {});
    }
    if (tagsOf.has(c.totebox)) throw combineError("coverage lists a Totebox twice", { totebox: c.totebox });
    if (!COVERAGE_STATUSES.has(c.status)) {
      throw combineError("coverage entry has an unknown status", { totebox: c.totebox });
    }
    if (!(typeof c.elapsedMs === "number"))
      throw combineError("coverage entry is malformed", { totebox: c.totebox });
    tagsOf.set(c.totebox, tagMap(c.tags, c.totebox));
  }
  let rows = input.coverage.length;
  const reads = new Map(v.reads.map((r) => [r.as, r]));
  const out = new Map<string, Batch[]>();
  for (const [as, answers] of input.results) {
    const read = reads.get(as);
    if (!read) throw combineError("results name a read the viewport does not have", { read: as });
    const seen = new Set<string>();
    const batches: Batch[] = [];
    for (const a of answers) {
      const tags = tagsOf.get(a.totebox);
      if (tags === undefined) {
        throw combineError("results name a Totebox absent from coverage", { read: as, totebox: a.totebox });
      }
      if (seen.has(a.totebox))
        throw combineError("results list a Totebox twice", { read: as, totebox: a.totebox });
      seen.add(a.totebox);
      const index = columnIndex(read.columns, a.result, as, a.totebox);
      rows += a.result.rowCount;
      batches.push({ totebox: a.totebox, tags, result: a.result, index });
    }
    out.set(as, batches);
  }
  if (rows > limits.maxCombineInputRows) {
    throw new OrchError("ORCH_ERR_COMBINE_LIMIT", "combine input has more rows than allowed", {
      limit: "maxCombineInputRows",
      max: limits.maxCombineInputRows,
      rows,
    });
  }
  return { batches: out, tagsOf };
}

/**
 * Per declared column of a read, its index in an answer's columns, found by name: a Totebox whose
 * owner added a column to a view still answers what we read.
 *
 * This file's per-query work is in module functions and methods, not in closures made per query:
 * V8 keeps a closure's optimised code only as long as a closure of it is alive, so a closure made
 * per query (a `map` callback here, one per answer) was compiled again after most major
 * collections — at the aggregator, once every query or two (seen with `--log-code`).
 */
function columnIndex(
  declared: readonly ColumnSpec[],
  result: DecodedResult,
  read: string,
  totebox: string,
): number[] {
  const have = result.columns;
  const index = new Array<number>(declared.length);
  for (let k = 0; k < declared.length; k++) {
    const c = declared[k]!;
    let i = 0;
    while (i < have.length && have[i]!.name !== c.name) i++;
    if (i === have.length || have[i]!.type !== c.type) {
      throw combineError("an answer's columns differ from the read's declared columns", {
        read,
        totebox,
        column: c.name,
      });
    }
    index[k] = i;
  }
  return index;
}

/**
 * DuckDB MAP values of frozen tag objects, made once: a fan-out's outcomes carry one frozen tags
 * object per registry entry (fanout.ts), so each query would otherwise build the same map per
 * Totebox again. Only frozen objects are remembered: their entries cannot change afterwards.
 */
const tagMaps = new WeakMap<object, DuckDBMapValue>();

function tagMap(tags: Readonly<Record<string, string>>, totebox: string): DuckDBMapValue {
  if (typeof tags !== "object" || tags === null)
    throw combineError("coverage tags are malformed", { totebox });
  const known = tagMaps.get(tags);
  if (known !== undefined) return known;
  const entries = Object.entries(tags);
  for (const [, value] of entries) {
    if (typeof value !== "string") throw combineError("coverage tags are malformed", { totebox });
  }
  const m = mapValue(entries.map(([key, value]) => ({ key, value })));
  if (Object.isFrozen(tags)) tagMaps.set(tags, m);
  return m;
}

/**
 * Appends to a table through data chunks of at most CHUNK_ROWS rows, column by column: a value
 * array per column, no per-row arrays (10,000 answers make 10,000s of rows; this is the hot loop).
 */
class ChunkWriter {
  readonly #types: DuckDBType[];
  readonly #appender: DuckDBAppender;
  #columns: DuckDBValue[][];
  #rows = 0;

  constructor(types: DuckDBType[], appender: DuckDBAppender) {
    this.#types = types;
    this.#appender = appender;
    this.#columns = emptyColumns(types.length);
  }

  /** Room left in the current chunk. */
  get room(): number {
    return CHUNK_ROWS - this.#rows;
  }

  /** The value array of column `i`: push exactly `n` values to each, then call `wrote(n)`. */
  column(i: number): DuckDBValue[] {
    return this.#columns[i]!;
  }

  wrote(n: number): void {
    this.#rows += n;
    if (this.#rows >= CHUNK_ROWS) this.flush();
  }

  flush(): void {
    if (this.#rows === 0) return;
    const chunk = DuckDBDataChunk.create(this.#types);
    chunk.setColumns(this.#columns);
    this.#appender.appendDataChunk(chunk);
    this.#columns = emptyColumns(this.#types.length);
    this.#rows = 0;
  }

  /** Appends what is left and flushes the appender. */
  finish(): void {
    this.flush();
    this.#appender.flushSync();
  }
}

function emptyColumns(n: number): DuckDBValue[][] {
  const columns = new Array<DuckDBValue[]>(n);
  for (let i = 0; i < n; i++) columns[i] = [];
  return columns;
}

/** Toteboxes loaded per event-loop turn (feed). */
const FEED_SLICE = 1024;

/**
 * Loading yields to the event loop every FEED_SLICE Toteboxes: at 10,000 answers one turn of
 * loading held the aggregator (and every other operator's request on it) for most of a second.
 */
class Pacer {
  #fed = 0;

  /** Call once per Totebox loaded; await what it returns, when it returns something. */
  turn(): Promise<void> | undefined {
    return ++this.#fed % FEED_SLICE === 0 ? yieldTurn() : undefined;
  }
}

/** Lets the event loop run other work (I/O, other operators' requests) before going on. */
function yieldTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Thrown by a converter; feed() turns it into ORCH_ERR_COMBINE naming the read, Totebox and column. */
const WRONG_TYPE = Symbol("wrong type");

/**
 * Arrow cell (as apache-arrow's `get` returns it) → DuckDB value, one converter per declared type,
 * chosen once per column rather than switched on per cell.
 */
const ARROW_TO_DUCK: Readonly<Record<ColumnType, (x: unknown) => DuckDBValue>> = {
  integer: (x) => {
    if (x === null || x === undefined) return null;
    if (typeof x === "bigint") return x;
    if (typeof x === "number" && Number.isSafeInteger(x)) return BigInt(x);
    throw WRONG_TYPE;
  },
  number: (x) => {
    if (x === null || x === undefined) return null;
    if (typeof x === "number") return x;
    throw WRONG_TYPE;
  },
  string: (x) => {
    if (x === null || x === undefined) return null;
    if (typeof x === "string") return x;
    throw WRONG_TYPE;
  },
  boolean: (x) => {
    if (x === null || x === undefined) return null;
    if (typeof x === "boolean") return x;
    throw WRONG_TYPE;
  },
  date: (x) => {
    if (x === null || x === undefined) return null;
    // DateDay cells come back as epoch milliseconds (a Date in some Arrow versions).
    const ms = x instanceof Date ? x.getTime() : x;
    if (typeof ms === "number" && Number.isFinite(ms)) return dateValue(Math.floor(ms / MS_PER_DAY));
    throw WRONG_TYPE;
  },
};

async function feed(
  conn: DuckDBConnection,
  input: CombineInput,
  { batches, tagsOf }: ReturnType<typeof checkInput>,
  plan: LoadPlan | undefined,
): Promise<void> {
  const pacer = new Pacer();
  const coverage = plan?.get("coverage");
  if (coverage?.rows !== false) {
    const slots = createdPositions(COVERAGE_COLUMNS, coverage);
    const appender = await conn.createAppender("coverage");
    try {
      const types = slots.map((i) => COVERAGE_COLUMNS[i]!.type);
      await feedCoverage(new ChunkWriter(types, appender), slots, input.coverage, tagsOf, pacer);
    } finally {
      appender.closeSync();
    }
  }
  for (const read of input.viewport.reads) {
    const load = plan?.get(read.as);
    if (load?.rows === false) continue;
    const list = batches.get(read.as);
    if (!list || list.length === 0) continue;
    const columns = readColumns(read);
    // Slot per created column: its position among the read's table columns, so 0 is the
    // Totebox, 1 its tags, and 2 + k the read's declared column k.
    const slots = createdPositions(columns, load);
    const types: DuckDBType[] = [];
    const convert: ((x: unknown) => DuckDBValue)[] = [];
    for (const i of slots) {
      types.push(columns[i]!.type);
      convert.push(i >= 2 ? ARROW_TO_DUCK[read.columns[i - 2]!.type] : ARROW_TO_DUCK.string);
    }
    const appender = await conn.createAppender(read.as);
    try {
      await feedRead(new ChunkWriter(types, appender), { read, list, slots, convert, pacer });
    } finally {
      appender.closeSync();
    }
  }
}

async function feedCoverage(
  w: ChunkWriter,
  slots: readonly number[],
  coverage: CombineInput["coverage"],
  tagsOf: ReadonlyMap<string, DuckDBMapValue>,
  pacer: Pacer,
): Promise<void> {
  for (const c of coverage) {
    const turn = pacer.turn();
    if (turn) await turn;
    for (let j = 0; j < slots.length; j++) {
      // In COVERAGE_COLUMNS order.
      switch (slots[j]) {
        case 0:
          w.column(j).push(c.totebox);
          break;
        case 1:
          w.column(j).push(c.name);
          break;
        case 2:
          w.column(j).push(tagsOf.get(c.totebox)!);
          break;
        case 3:
          w.column(j).push(c.status);
          break;
        case 4:
          w.column(j).push(c.reason);
          break;
        default:
          w.column(j).push(c.elapsedMs);
      }
    }
    w.wrote(1);
  }
  w.finish();
}

interface ReadFeed {
  readonly read: ViewportRead;
  readonly list: readonly Batch[];
  /** Per created column, its position among the read's table columns (see feed). */
  readonly slots: readonly number[];
  /** Per created column, the converter of a declared column's cells (unused for 0 and 1). */
  readonly convert: readonly ((x: unknown) => DuckDBValue)[];
  readonly pacer: Pacer;
}

async function feedRead(w: ChunkWriter, { read, list, slots, convert, pacer }: ReadFeed): Promise<void> {
  const vectors = new Array<readonly Cell[] | undefined>(slots.length);
  for (const b of list) {
    const turn = pacer.turn();
    if (turn) await turn;
    const n = b.result.rowCount;
    if (n === 0) continue;
    // Straight from the received bytes (DecodedResult.column), not through an Arrow table:
    // building 10,000 answers' tables held the aggregator's event loop ~0.5 s per fan-out.
    for (let j = 0; j < slots.length; j++) {
      const i = slots[j]!;
      vectors[j] = i >= 2 ? b.result.column(b.index[i - 2]!) : undefined;
    }
    for (let from = 0; from < n; ) {
      const take = Math.min(n - from, w.room);
      for (let j = 0; j < slots.length; j++) {
        const out = w.column(j);
        const vec = vectors[j];
        if (vec === undefined) {
          const same = slots[j] === 0 ? b.totebox : b.tags;
          for (let r = 0; r < take; r++) out.push(same);
          continue;
        }
        const conv = convert[j]!;
        try {
          for (let r = from; r < from + take; r++) out.push(conv(vec[r]));
        } catch (e) {
          if (e !== WRONG_TYPE) throw e;
          throw combineError("an answer holds a value of the wrong type", {
            read: read.as,
            totebox: b.totebox,
            column: read.columns[slots[j]! - 2]!.name,
          });
        }
      }
      from += take;
      w.wrote(take);
    }
  }
  w.finish();
}

function substituteTitle(
  title: string,
  v: Viewport,
  params: Readonly<Record<string, string | number | boolean>>,
) {
  return title.replace(/\$([a-z][a-z0-9_]{0,62})/g, (whole, name: string) => {
    if (!v.params.some((p) => p.name === name)) return whole;
    return Object.hasOwn(params, name) ? String(params[name]) : "";
  });
}

async function runSection(
  sb: Sandbox,
  input: CombineInput,
  section: ViewportSection,
  deadline: number,
  maxRows: number,
): Promise<CombinedSection> {
  const v = input.viewport;
  const fail = (why: string, e?: unknown) =>
    combineError(`combine section "${section.name}" of viewport "${v.name}" failed: ${why}`, {
      viewport: v.name,
      section: section.name,
      error: errorClass(e),
    });
  const stopped = (stop: Stop): OrchError =>
    stop === "cancelled"
      ? new OrchError("ORCH_ERR_CANCELLED", "combine cancelled", { viewport: v.name, section: section.name })
      : new OrchError("ORCH_ERR_COMBINE_LIMIT", `combine section "${section.name}" ran out of time`, {
          viewport: v.name,
          section: section.name,
          limit: "timeoutMs",
        });

  const conn = sb.connection;
  const outcome = await withDeadline(conn, deadline, input.signal, async () => {
    // Prepared once per kept database holding this viewport's tables (Sandbox); a combine that
    // fails closes the database, and its prepared sections with it.
    let prepared = sb.prepared.get(section);
    if (prepared === undefined) {
      prepared = await conn.prepare(section.sql);
      // Compiled once already; re-checked here because a Viewport object is only a value.
      if (prepared.statementType !== StatementType.SELECT) {
        prepared.destroySync();
        throw new Error("not a SELECT");
      }
      sb.prepared.set(section, prepared);
    }
    bindParams(prepared, v, input.params);
    const result: DuckDBResult = await prepared.stream();
    const mismatch = columnMismatch(section.columns, result.columnNames(), result.columnTypes());
    if (mismatch !== undefined) throw new Error("result columns differ from the declared columns");
    // Families match the declared types (checked just above).
    const convert = section.columns.map((c) => CELL_OF[c.type]);
    const rows: Cell[][] = [];
    for (;;) {
      const chunk = await result.fetchChunk();
      if (!chunk || chunk.rowCount === 0) break;
      const n = chunk.rowCount;
      if (rows.length + n > maxRows) return { tooMany: true as const, rows };
      const base = rows.length;
      for (let r = 0; r < n; r++) rows.push(new Array<Cell>(convert.length));
      convert.forEach((conv, c) => {
        const values = chunk.getColumnValues(c);
        for (let r = 0; r < n; r++) rows[base + r]![c] = conv(values[r]!);
      });
    }
    return { tooMany: false as const, rows };
  });
  if (!outcome.ok) {
    if ("stop" in outcome) throw stopped(outcome.stop);
    if (outcome.error instanceof OrchError) throw outcome.error;
    throw fail("the SQL raised an error", outcome.error);
  }
  if (outcome.value.tooMany) {
    throw new OrchError("ORCH_ERR_COMBINE_LIMIT", `combine section "${section.name}" returns too many rows`, {
      viewport: v.name,
      section: section.name,
      limit: "maxCombineOutputRows",
      max: maxRows,
    });
  }
  return {
    name: section.name,
    title: substituteTitle(section.title, v, input.params),
    columns: section.columns,
    rows: outcome.value.rows,
    chart: section.chart,
  };
}

/**
 * Runs a viewport's combine step over the fleet's answers: loads them into a sandboxed in-memory
 * DuckDB (kept between combines, each combine's own transaction rolled back after it), runs every
 * section in order. Errors: ORCH_ERR_COMBINE
 * (malformed input, a failing section), ORCH_ERR_COMBINE_LIMIT (too many input or output rows,
 * out of time), ORCH_ERR_CANCELLED (the signal fired).
 */
export async function runCombine(input: CombineInput): Promise<CombinedSection[]> {
  const started = performance.now();
  const limits = resolveOrchLimits(input.limits);
  const timeoutMs = input.timeoutMs ?? COMBINE_TIMEOUT_MS;
  if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
    throw new OrchError("ORCH_ERR_INTERNAL", "combine timeout must be a positive number of ms");
  }
  if (input.signal?.aborted) throw new OrchError("ORCH_ERR_CANCELLED", "combine cancelled");
  const checked = checkInput(input, limits);
  const deadline = started + timeoutMs;
  const plan = loadPlans.get(input.viewport);
  return withCombineSandbox(input.viewport, plan, async (sb) => {
    const conn = sb.connection;
    try {
      await feed(conn, input, checked, plan);
    } catch (e) {
      if (e instanceof OrchError) throw e;
      throw combineError("loading the answers into the combine database failed", { error: errorClass(e) });
    }
    const out: CombinedSection[] = [];
    for (const section of input.viewport.sections) {
      out.push(await runSection(sb, input, section, deadline, limits.maxCombineOutputRows));
    }
    return out;
  });
}
