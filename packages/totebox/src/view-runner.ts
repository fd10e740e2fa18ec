/**
 * Runs policy views against the archive: read-only connections, prepared statements cached per
 * view (dropped when the policy is reloaded), typed parameters, row-key filtering, a row limit,
 * the privacy floor, and a time limit.
 *
 * Two modes, one contract (`ViewRunner`):
 *
 * - `createPooledViewRunner` (what the server should use): a small pool of child processes, each
 *   with its own read-only connection. better-sqlite3 is synchronous and exposes no
 *   sqlite3_interrupt or progress handler, so a query can only be stopped by stopping the thread
 *   that runs it. We measured that `worker_threads` cannot do that: `worker.terminate()` waits
 *   until the native sqlite3_step returns (a 90 s recursive CTE kept its worker, and a core, busy
 *   for the full 90 s after terminate). A child process can be SIGKILLed at once. So on timeout
 *   the caller gets TOTEBOX_ERR_VIEW_TIMEOUT immediately, the stuck child is killed, and a fresh
 *   one takes its place. Cost: one IPC round trip per read (tens of microseconds) and ~30 MB of
 *   memory per child.
 * - `createInProcessViewRunner` (tests, tiny archives, CLIs): runs on the calling thread. Its time
 *   limit is checked between rows only, so a query that computes for long before its first row
 *   (an aggregate over a huge CTE) blocks the event loop until SQLite finishes. Never use it where
 *   untrusted callers can pick views with heavy SQL.
 *
 * Cancellation (`ViewRunRequest.signal`): a queued request leaves the queue; a running one is, in
 * pool mode, stopped by SIGKILLing its process (a fresh one takes its place, as on timeout); in
 * in-process mode it cannot be interrupted (the thread is inside SQLite), so it finishes and its
 * answer is dropped. Either way the request rejects with TOTEBOX_ERR_CANCELLED.
 *
 * Integers: statements run with `safeIntegers(true)`, so SQLite's 64-bit integers are never
 * silently rounded. Amounts are integer minor units; an `integer` cell comes back as a `number`
 * when it is a safe integer (|v| < 2^53: 90 trillion in cents) and as a `bigint` beyond that,
 * which the PSP Arrow encoder carries exactly as Int64. Cells are checked against the declared
 * column types: a mismatch is TOTEBOX_ERR_VIEW_RESULT (the policy and the data disagree).
 *
 * Trust boundary: the policy was validated at load (one read-only SELECT) and the parameters by
 * `validateParams`; the connections are opened `readonly` and with `PRAGMA query_only = 1` as a
 * second wall, so even a statement that slipped through could not write.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createRequire } from "node:module";
import Database from "better-sqlite3";
import { ToteboxError } from "./errors.ts";
import { type ColumnType, type ParamValue, type Policy, type ViewSpec, wrapRowKey } from "./policy.ts";

// ---------------------------------------------------------------------------------------------
// Contract

export type Cell = string | number | bigint | boolean | null;

export interface ViewResult {
  readonly columns: readonly { readonly name: string; readonly type: ColumnType }[];
  readonly rows: Cell[][];
  /** Rows removed by the privacy floor (groups smaller than its minimum). */
  readonly suppressedGroups: number;
  /** Rows returned (after suppression). */
  readonly rowCount: number;
}

export interface ViewRunRequest {
  /** The policy the view comes from; its `generation` keys the statement caches. */
  readonly policy: Policy;
  readonly view: string;
  /** The output of `validateParams` for this view. */
  readonly params: Readonly<Record<string, ParamValue>>;
  /** The capability's row key, if it carries one: only rows whose row-key column equals it. */
  readonly rowKey?: string | number | null;
  /** Aborting cancels the request (see the file comment); it then rejects with TOTEBOX_ERR_CANCELLED. */
  readonly signal?: AbortSignal;
  /** Called once, synchronously, when the request leaves the queue and its SQL starts. */
  readonly onStart?: () => void;
}

export interface ViewRunner {
  readonly mode: "pool" | "in-process";
  run(request: ViewRunRequest): Promise<ViewResult>;
  /** Stops the runner; pending requests fail with TOTEBOX_ERR_VIEW_FAILED. */
  close(): Promise<void>;
}

/** Pool limits, with their defaults. */
export interface ViewPoolLimits {
  /** Child processes running queries. Default 2. */
  readonly poolSize: number;
  /** Requests queued or running at once; more get TOTEBOX_ERR_VIEW_BUSY. Default 64. */
  readonly maxPending: number;
  /** V8 heap limit of each child, MiB (results are built there). Default 256. */
  readonly childHeapMb: number;
  /** How long a child's connection waits on a locked database, ms. Default 1000. */
  readonly busyTimeoutMs: number;
}

export const DEFAULT_VIEW_POOL_LIMITS: ViewPoolLimits = Object.freeze({
  poolSize: 2,
  maxPending: 64,
  childHeapMb: 256,
  busyTimeoutMs: 1000,
});

/** Largest row key accepted from a capability, in characters. */
const MAX_ROW_KEY_LENGTH = 256;

// ---------------------------------------------------------------------------------------------
// Planning (shared by both modes)

/** What one execution needs; plain data, so it can cross to a child process. */
interface Task {
  readonly generation: number;
  /** Statement cache key: view name plus whether the row-key wrapper applies. */
  readonly key: string;
  readonly sql: string;
  readonly bind: Record<string, string | number | null>;
  readonly maxRows: number;
  /** Index of the privacy floor's count column, or -1. */
  readonly floorIndex: number;
  readonly floorMin: number;
}

type Outcome =
  | { ok: true; columns: string[]; rows: unknown[][]; suppressed: number }
  | { ok: false; kind: "rows" | "sqlite" | "timeout"; message: string };

function paramError(view: string, param: string, reason: string): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_PARAM", `parameter "${param}" of view "${view}": ${reason}`, {
    view,
    param,
    reason,
  });
}

function plan(request: ViewRunRequest): { view: ViewSpec; task: Task } {
  const view = request.policy.views.get(request.view);
  if (view === undefined) {
    throw new ToteboxError("TOTEBOX_ERR_VIEW_UNKNOWN", "no such view in the policy", {
      view: String(request.view).slice(0, 64),
    });
  }
  const bind: Record<string, string | number | null> = {};
  const declared = new Set(view.params.map((p) => p.name));
  for (const key of Object.keys(request.params)) {
    if (!declared.has(key)) throw paramError(view.name, key.slice(0, 64), "unknown parameter");
  }
  for (const p of view.params) {
    const v = request.params[p.name];
    // SQLite has no boolean: bind 1 / 0 as its own comparisons produce.
    bind[p.name] = typeof v === "boolean" ? (v ? 1 : 0) : (v ?? null);
  }
  let sql = view.sql;
  let keyed = false;
  const rk = request.rowKey;
  if (rk !== undefined && rk !== null) {
    if (view.rowKey === null) throw paramError(view.name, "row", "this view has no row key");
    const okString = typeof rk === "string" && rk.length <= MAX_ROW_KEY_LENGTH;
    const okNumber = typeof rk === "number" && Number.isSafeInteger(rk);
    if (!okString && !okNumber)
      throw paramError(view.name, "row", "a row key is a short string or a safe integer");
    sql = wrapRowKey(view.sql, view.rowKey);
    bind.__row = rk;
    keyed = true;
  }
  const floorIndex = view.privacyFloor
    ? view.columns.findIndex((c) => c.name === view.privacyFloor!.countColumn)
    : -1;
  return {
    view,
    task: {
      generation: request.policy.generation,
      key: `${view.name}\u0000${keyed ? "row" : "all"}`,
      sql,
      bind,
      maxRows: view.maxRows,
      floorIndex,
      floorMin: view.privacyFloor?.min ?? 0,
    },
  };
}

function resultError(view: string, column: string, reason: string): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_VIEW_RESULT", `view "${view}" column "${column}": ${reason}`, {
    view,
    column,
    reason,
  });
}

const DATE_TEXT = /^\d{4}-\d{2}-\d{2}$/;

/** Checks the raw rows against the declared columns and converts cells to their JS types. */
function shape(view: ViewSpec, outcome: Outcome): ViewResult {
  if (!outcome.ok) {
    if (outcome.kind === "rows") {
      throw new ToteboxError(
        "TOTEBOX_ERR_VIEW_ROWS",
        `view "${view.name}" returns more than ${view.maxRows} rows`,
        {
          view: view.name,
          maxRows: view.maxRows,
        },
      );
    }
    if (outcome.kind === "timeout") throw timeoutError(view);
    throw new ToteboxError("TOTEBOX_ERR_VIEW_FAILED", `view "${view.name}" failed to run`, {
      view: view.name,
      reason: outcome.message.slice(0, 200),
    });
  }
  const want = view.columns.map((c) => c.name);
  if (outcome.columns.length !== want.length || outcome.columns.some((n, i) => n !== want[i])) {
    throw resultError(view.name, "*", "the statement's columns no longer match the policy");
  }
  const types = view.columns.map((c) => c.type);
  const rows = outcome.rows.map((raw) =>
    raw.map((v, i): Cell => {
      if (v === null) return null;
      const name = want[i]!;
      switch (types[i]!) {
        case "integer":
          if (typeof v === "bigint") {
            return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
              ? Number(v)
              : v;
          }
          if (typeof v === "number" && Number.isInteger(v)) return v;
          throw resultError(view.name, name, "holds a non-integer value");
        case "number":
          if (typeof v === "bigint" || typeof v === "number") return Number(v);
          throw resultError(view.name, name, "holds a non-numeric value");
        case "string":
          if (typeof v === "string") return v;
          throw resultError(view.name, name, "holds a non-text value");
        case "date":
          if (typeof v === "string" && DATE_TEXT.test(v)) return v;
          throw resultError(view.name, name, "holds a value that is not a YYYY-MM-DD date");
        case "boolean":
          if (v === 0n || v === 0) return false;
          if (v === 1n || v === 1) return true;
          throw resultError(view.name, name, "holds a value that is not 0 or 1");
      }
      throw resultError(view.name, name, "has an unknown type");
    }),
  );
  return {
    columns: view.columns.map((c) => ({ name: c.name, type: c.type })),
    rows,
    suppressedGroups: outcome.suppressed,
    rowCount: rows.length,
  };
}

function cancelledError(view: ViewSpec): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_CANCELLED", `view "${view.name}" was cancelled`, { view: view.name });
}

function timeoutError(view: ViewSpec): ToteboxError {
  return new ToteboxError(
    "TOTEBOX_ERR_VIEW_TIMEOUT",
    `view "${view.name}" ran longer than ${view.timeoutMs} ms`,
    {
      view: view.name,
      timeoutMs: view.timeoutMs,
    },
  );
}

// ---------------------------------------------------------------------------------------------
// In-process mode

interface CachedStatement {
  readonly sql: string;
  readonly stmt: Database.Statement;
}

/**
 * The execution loop, in TypeScript. CHILD_SOURCE below holds the same loop for the pool's child
 * processes; both are exercised by the same tests (view-runner.test.ts runs every case in both
 * modes), which is what keeps them in step.
 */
function execute(
  db: Database.Database,
  cache: Map<string, CachedStatement>,
  task: Task,
  deadline: number,
): Outcome {
  let cached = cache.get(task.key);
  if (cached === undefined || cached.sql !== task.sql) {
    const stmt = db.prepare(task.sql);
    stmt.raw(true);
    stmt.safeIntegers(true);
    cached = { sql: task.sql, stmt };
    cache.set(task.key, cached);
  }
  const columns = cached.stmt.columns().map((c) => c.name);
  const rows: unknown[][] = [];
  let suppressed = 0;
  for (const row of cached.stmt.iterate(task.bind) as IterableIterator<unknown[]>) {
    if (performance.now() > deadline) return { ok: false, kind: "timeout", message: "time limit" };
    if (task.floorIndex >= 0) {
      const n = row[task.floorIndex];
      if (n === null || n === undefined || Number(n) < task.floorMin) {
        suppressed++;
        continue;
      }
    }
    if (rows.length >= task.maxRows) return { ok: false, kind: "rows", message: "row limit" };
    rows.push(row);
  }
  return { ok: true, columns, rows, suppressed };
}

export interface InProcessViewRunnerOptions {
  /** How long the connection waits on a locked database, ms. Default 1000. */
  readonly busyTimeoutMs?: number;
}

/** See the file comment: for tests and tiny archives; the time limit is checked between rows only. */
export function createInProcessViewRunner(
  dbFile: string,
  options: InProcessViewRunnerOptions = {},
): ViewRunner {
  let db: Database.Database | undefined = openReadOnly(
    dbFile,
    options.busyTimeoutMs ?? DEFAULT_VIEW_POOL_LIMITS.busyTimeoutMs,
  );
  const cache = new Map<string, CachedStatement>();
  let generation = -1;
  return {
    mode: "in-process",
    async run(request) {
      const { view, task } = plan(request);
      if (db === undefined) throw closedError();
      if (request.signal?.aborted) throw cancelledError(view);
      request.onStart?.();
      if (task.generation !== generation) {
        cache.clear();
        generation = task.generation;
      }
      let outcome: Outcome;
      try {
        outcome = execute(db, cache, task, performance.now() + view.timeoutMs);
      } catch (e) {
        outcome = { ok: false, kind: "sqlite", message: e instanceof Error ? e.message : String(e) };
      }
      // The query could not be interrupted; a cancel that arrived meanwhile drops its answer.
      if (request.signal?.aborted) throw cancelledError(view);
      return shape(view, outcome);
    },
    async close() {
      db?.close();
      db = undefined;
      cache.clear();
    },
  };
}

function openReadOnly(dbFile: string, busyTimeoutMs: number): Database.Database {
  let db: Database.Database;
  try {
    db = new Database(dbFile, { readonly: true, fileMustExist: true, timeout: busyTimeoutMs });
  } catch (e) {
    throw new ToteboxError(
      "TOTEBOX_ERR_VIEW_FAILED",
      "cannot open the archive read-only",
      { reason: "open" },
      { cause: e },
    );
  }
  db.pragma("query_only = 1");
  return db;
}

function closedError(): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_VIEW_FAILED", "the view runner is closed", { reason: "closed" });
}

// ---------------------------------------------------------------------------------------------
// Pool mode

/**
 * The child's program (CommonJS, evaluated with `node -e`): the same loop as `execute` above.
 * Kept as plain JavaScript because it runs outside any TypeScript loader.
 */
const CHILD_SOURCE = `
"use strict";
let db = null;
let openError = null;
let generation = -1;
const cache = new Map();
function execute(task) {
  let cached = cache.get(task.key);
  if (cached === undefined || cached.sql !== task.sql) {
    const stmt = db.prepare(task.sql);
    stmt.raw(true);
    stmt.safeIntegers(true);
    cached = { sql: task.sql, stmt };
    cache.set(task.key, cached);
  }
  const columns = cached.stmt.columns().map((c) => c.name);
  const rows = [];
  let suppressed = 0;
  for (const row of cached.stmt.iterate(task.bind)) {
    if (task.floorIndex >= 0) {
      const n = row[task.floorIndex];
      if (n === null || n === undefined || Number(n) < task.floorMin) { suppressed++; continue; }
    }
    if (rows.length >= task.maxRows) return { ok: false, kind: "rows", message: "row limit" };
    rows.push(row);
  }
  return { ok: true, columns, rows, suppressed };
}
process.on("message", (msg) => {
  if (msg.type === "init") {
    try {
      const Database = require(msg.sqliteModule);
      db = new Database(msg.file, { readonly: true, fileMustExist: true, timeout: msg.busyTimeoutMs });
      db.pragma("query_only = 1");
    } catch (e) {
      openError = "cannot open the archive read-only: " + (e && e.message ? e.message : String(e));
    }
    return;
  }
  if (msg.type !== "run") return;
  let reply;
  try {
    if (db === null) throw new Error(openError || "not initialised");
    if (msg.task.generation !== generation) { cache.clear(); generation = msg.task.generation; }
    reply = execute(msg.task);
  } catch (e) {
    reply = { ok: false, kind: "sqlite", message: e && e.message ? e.message : String(e) };
  }
  reply.id = msg.id;
  process.send(reply);
});
process.on("disconnect", () => process.exit(0));
`;

interface Pending {
  readonly id: number;
  readonly view: ViewSpec;
  readonly task: Task;
  readonly resolve: (r: ViewResult) => void;
  readonly reject: (e: unknown) => void;
  readonly timer: NodeJS.Timeout;
  readonly onStart: (() => void) | undefined;
  slot: Slot | undefined;
}

interface Slot {
  readonly child: ChildProcess;
  running: Pending | undefined;
  dead: boolean;
}

export interface PooledViewRunnerOptions {
  readonly limits?: Partial<ViewPoolLimits>;
}

/** Counters for tests and /metrics. */
export interface ViewPoolStats {
  readonly children: number;
  readonly running: number;
  readonly queued: number;
  /** Children killed because a query ran out of time. */
  readonly killed: number;
  /** Children spawned since the start (replacements included). */
  readonly spawned: number;
  /** Requests cancelled through their signal, queued or running. */
  readonly cancelled: number;
  /** Children killed because the query they were running was cancelled (each one replaced). */
  readonly cancelKilled: number;
}

export interface PooledViewRunner extends ViewRunner {
  stats(): ViewPoolStats;
}

/** See the file comment: the mode for the server. Queries run in child processes, killable on timeout. */
export function createPooledViewRunner(
  dbFile: string,
  options: PooledViewRunnerOptions = {},
): PooledViewRunner {
  const limits: ViewPoolLimits = { ...DEFAULT_VIEW_POOL_LIMITS, ...options.limits };
  if (!Number.isSafeInteger(limits.poolSize) || limits.poolSize < 1) {
    throw new ToteboxError("TOTEBOX_ERR_VIEW_FAILED", "pool size must be at least 1", { reason: "config" });
  }
  // Resolved here so the child loads exactly the better-sqlite3 build this package uses.
  const sqliteModule = createRequire(import.meta.url).resolve("better-sqlite3");
  const slots: Slot[] = [];
  const queue: Pending[] = [];
  let closed = false;
  let nextId = 1;
  let killed = 0;
  let spawned = 0;
  let cancelled = 0;
  let cancelKilled = 0;
  // Children that exited on their own since the last good reply: past MAX_CRASHES the pool stops
  // respawning (a child that cannot start must not become a fork loop) until the next request.
  let crashes = 0;
  const MAX_CRASHES = 5;

  const childEnv = { ...process.env };
  // The parent may run under a TypeScript loader (tsx, vitest); the child is plain JavaScript.
  delete childEnv.NODE_OPTIONS;

  function spawnSlot(): void {
    const child = spawn(
      process.execPath,
      [`--max-old-space-size=${limits.childHeapMb}`, "-e", CHILD_SOURCE],
      {
        stdio: ["ignore", "ignore", "inherit", "ipc"],
        serialization: "advanced", // bigint cells survive the trip
        env: childEnv,
      },
    );
    spawned++;
    const slot: Slot = { child, running: undefined, dead: false };
    // An idle pool must not keep the process alive; a running request holds its own timer.
    child.unref();
    child.channel?.unref();
    child.on("message", (msg: Outcome & { id: number }) => {
      const p = slot.running;
      if (p === undefined || p.id !== msg.id) return; // a reply for a request already timed out
      slot.running = undefined;
      clearTimeout(p.timer);
      crashes = 0;
      try {
        p.resolve(shape(p.view, msg));
      } catch (e) {
        p.reject(e);
      }
      dispatch();
    });
    const onGone = () => {
      if (slot.dead) return;
      slot.dead = true;
      const i = slots.indexOf(slot);
      if (i >= 0) slots.splice(i, 1);
      const p = slot.running;
      slot.running = undefined;
      if (p) {
        clearTimeout(p.timer);
        p.reject(
          new ToteboxError(
            "TOTEBOX_ERR_VIEW_FAILED",
            `view "${p.view.name}" failed: its query process exited`,
            {
              view: p.view.name,
              reason: "process exited",
            },
          ),
        );
      }
      if (closed) return;
      crashes++;
      if (crashes <= MAX_CRASHES) {
        spawnSlot();
        dispatch();
      } else if (slots.length === 0) {
        for (const q of queue.splice(0)) {
          clearTimeout(q.timer);
          q.reject(
            new ToteboxError("TOTEBOX_ERR_VIEW_FAILED", "the query processes keep exiting", {
              view: q.view.name,
              reason: "process exited",
            }),
          );
        }
      }
    };
    child.on("exit", onGone);
    child.on("error", onGone);
    slots.push(slot);
    send(slot, { type: "init", file: dbFile, sqliteModule, busyTimeoutMs: limits.busyTimeoutMs });
  }

  /** Sends to a child; a closed channel is the child going away (its exit event follows). */
  function send(slot: Slot, message: unknown): void {
    try {
      slot.child.send(message as object, (err) => {
        if (err) slot.child.kill("SIGKILL");
      });
    } catch {
      slot.child.kill("SIGKILL");
    }
  }

  function kill(slot: Slot): void {
    slot.dead = true;
    const i = slots.indexOf(slot);
    if (i >= 0) slots.splice(i, 1);
    slot.child.kill("SIGKILL");
  }

  function dispatch(): void {
    const started: Pending[] = [];
    for (const slot of slots) {
      if (queue.length === 0) break;
      if (slot.running !== undefined || slot.dead) continue;
      const p = queue.shift()!;
      p.slot = slot;
      slot.running = p;
      send(slot, { type: "run", id: p.id, task: p.task });
      started.push(p);
    }
    // After the loop: a callback may cancel its request, which kills and replaces a slot.
    for (const p of started) p.onStart?.();
  }

  for (let i = 0; i < limits.poolSize; i++) spawnSlot();

  // A child stuck in SQLite does not notice its parent leaving (it only reads its IPC channel
  // between queries), so kill the children when this process exits. A parent killed by SIGKILL
  // cannot do this: a stuck child then runs until its query ends.
  const onExit = () => {
    for (const slot of [...slots]) kill(slot);
  };
  process.once("exit", onExit);

  return {
    mode: "pool",
    run(request) {
      return new Promise<ViewResult>((resolve, reject) => {
        const { view, task } = plan(request);
        if (closed) throw closedError();
        if (slots.length === 0) {
          // Every child crashed and respawning stopped: try once more for this request.
          crashes = 0;
          spawnSlot();
        }
        const inFlight = queue.length + slots.filter((s) => s.running !== undefined).length;
        if (inFlight >= limits.maxPending) {
          throw new ToteboxError("TOTEBOX_ERR_VIEW_BUSY", "too many view requests in progress", {
            maxPending: limits.maxPending,
          });
        }
        const signal = request.signal;
        if (signal?.aborted) throw cancelledError(view);
        const id = nextId++;
        /**
         * Takes the request out of the pool wherever it is: out of the queue, or off its child,
         * which is killed (it may be stuck inside SQLite) and replaced. False if it had settled.
         */
        const withdraw = (): boolean => {
          const qi = queue.indexOf(pending);
          if (qi >= 0) {
            queue.splice(qi, 1);
            return true;
          }
          const slot = pending.slot;
          if (slot === undefined || slot.running !== pending) return false;
          slot.running = undefined;
          kill(slot);
          if (!closed) spawnSlot();
          return true;
        };
        // The limit covers waiting in the queue too: the caller's deadline is what matters.
        const timer = setTimeout(() => {
          if (pending.slot !== undefined && pending.slot.running === pending) killed++;
          withdraw();
          pending.reject(timeoutError(view));
          dispatch();
        }, view.timeoutMs);
        const onAbort = () => {
          const running = pending.slot !== undefined && pending.slot.running === pending;
          if (!withdraw()) return;
          cancelled++;
          if (running) cancelKilled++;
          clearTimeout(timer);
          pending.reject(cancelledError(view));
          dispatch();
        };
        // Every way out of the pool goes through these two, so the listener never outlives the request.
        const detach = () => signal?.removeEventListener("abort", onAbort);
        const pending: Pending = {
          id,
          view,
          task,
          resolve: (r) => {
            detach();
            resolve(r);
          },
          reject: (e) => {
            detach();
            reject(e);
          },
          timer,
          onStart: request.onStart,
          slot: undefined,
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        queue.push(pending);
        dispatch();
      });
    },
    async close() {
      closed = true;
      process.removeListener("exit", onExit);
      const pendings = [
        ...queue,
        ...slots.map((s) => s.running).filter((p): p is Pending => p !== undefined),
      ];
      queue.length = 0;
      for (const slot of [...slots]) {
        slot.running = undefined;
        kill(slot);
      }
      for (const p of pendings) {
        clearTimeout(p.timer);
        p.reject(closedError());
      }
    },
    stats() {
      return {
        children: slots.length,
        running: slots.filter((s) => s.running !== undefined).length,
        queued: queue.length,
        killed,
        spawned,
        cancelled,
        cancelKilled,
      };
    },
  };
}
