/**
 * A hostile world for the aggregator, part B: faults. Toteboxes die in the middle of a fan-out,
 * links are delayed, dropped, reset and blackholed by a TCP proxy (fault-proxy.ts), the aggregator
 * itself is SIGKILLed while twenty operators are querying, and a command is retried through all of
 * it. What must hold (invariant 7, and the Diode's "answers only as replies"):
 *
 *   - every answer lists every targeted Totebox exactly once, ok or with a status and a code;
 *   - an answer is attributed to the Totebox that gave it (its rows are what that Totebox alone
 *     returns, its receipt verifies with that Totebox's key and no other);
 *   - a late answer is dropped, never merged; a link that failed comes back and the next answer
 *     is whole; nothing is lost silently; a command runs once however often it is retried.
 *
 * Faults are made deterministic: a Totebox is "slow" because it is SIGSTOPped or because the
 * proxy holds its bytes, and the test waits on the event that matters (progress events, bytes
 * reaching the proxy, a log line of the aggregator) before striking. Timers exist only inside the
 * proxy, as the delay being injected.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import {
  type AggregatorConnection,
  connectAggregator,
  ResilientSession,
  signGrant,
  verifyAnswers,
} from "@os-orchestration/console";
import {
  type FanOutResult,
  type OperatorSessionRemote,
  OrchestrationServer,
  TOTEBOX_STATUSES,
} from "@os-orchestration/orchestration";
import { type Cell, decodeResult, type Identity, loadIdentity } from "@os-orchestration/psp";
import type { ToteboxServer } from "@os-orchestration/totebox";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import {
  buildEstate,
  ESTATE_AS_OF,
  type Estate,
  fleetYaml,
  type RunningTotebox,
  type ServedProcess,
  startAggregatorProcess,
  startToteboxesInProcess,
  startToteboxProcesses,
  stopAllChildren,
  stopChild,
  writeFleet,
} from "./estate.ts";
import { FaultProxy } from "./fault-proxy.ts";

const VIEWS = [
  "position",
  "income-summary",
  "occupancy",
  "rent-roll-summary",
  "intercompany",
  "archive-health",
];
const PARAMS = { as_of: ESTATE_AS_OF };

const roots: string[] = [];
afterAll(async () => {
  await stopAllChildren();
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

function newRoot(tag: string): string {
  const r = mkdtempSync(join(tmpdir(), `os-orch-faults-${tag}-`));
  roots.push(r);
  return r;
}

const tenantIdsOf = (estate: Estate, tenant: string) =>
  estate.entities.filter((e) => e.tenants.includes(tenant)).map((e) => e.id);

/** Cells as comparable text (64-bit integers arrive as bigint). */
const canon = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `${x}n` : x));

/** The rows a fan-out's combined read attributes to `id`, without the totebox column, sorted. */
function rowsOf(r: FanOutResult, id: string): string[] {
  const s = r.sections[0];
  if (!s) return [];
  return s.rows
    .filter((row) => row[0] === id)
    .map((row) => canon(row.slice(1)))
    .sort();
}

/** The rows inside one outcome's own Arrow answer, in the same shape as rowsOf. */
function answerRows(r: FanOutResult, id: string): string[] {
  const o = r.outcomes.find((x) => x.totebox === id)!;
  expect(o.answers.length).toBe(1);
  const d = decodeResult(o.answers[0]!.arrow);
  return d
    .rows()
    .map((row) => canon(d.columns.map((c) => row[c.name] ?? (null as Cell))))
    .sort();
}

function outcomeOf(r: FanOutResult, id: string) {
  const o = r.outcomes.find((x) => x.totebox === id);
  if (!o) throw new Error(`${id} missing from the answer`);
  return o;
}

/** Every targeted Totebox exactly once, each not-ok one with a status, a code and a reason. */
function expectAccounted(r: FanOutResult, ids: readonly string[]): void {
  expect(r.outcomes.map((o) => o.totebox).sort()).toEqual([...ids].sort());
  expect(r.targeted).toBe(ids.length);
  for (const o of r.outcomes) {
    expect(TOTEBOX_STATUSES).toContain(o.status);
    if (o.status === "ok") {
      expect(o.code).toBeNull();
    } else {
      expect(o.code, o.totebox).toMatch(/^[A-Z]+_(ERR_)?[A-Z0-9_]+$/);
      expect(o.reason.length, o.totebox).toBeGreaterThan(0);
      expect(o.answers).toEqual([]);
    }
  }
  const ok = r.outcomes.filter((o) => o.status === "ok" || o.status === "suppressed").length;
  expect(r.answered).toBe(ok);
  expect(r.partial).toBe(ok < ids.length);
}

async function keysOf(estate: Estate): Promise<Map<string, Identity>> {
  const keys = new Map<string, Identity>();
  for (const e of estate.entities)
    keys.set(e.id, await loadIdentity(join(estate.toteboxDir(e.id), "identity")));
  return keys;
}

/** pino into memory, so tests can wait on what the aggregator says it did. */
class LogTap {
  readonly lines: Record<string, unknown>[] = [];
  readonly #waiters = new Set<() => void>();
  readonly logger: pino.Logger;

  constructor(level: pino.Level) {
    const stream = new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        for (const line of chunk.toString("utf8").split("\n")) {
          if (!line) continue;
          try {
            this.lines.push(JSON.parse(line) as Record<string, unknown>);
          } catch {
            // not a log record
          }
        }
        for (const w of [...this.#waiters]) w();
        cb();
      },
    });
    this.logger = pino({ level }, stream);
  }

  mark(): number {
    return this.lines.length;
  }

  /** Resolves with the first line at or after `from` that matches. */
  waitFor(
    match: (l: Record<string, unknown>) => boolean,
    from: number,
    timeoutMs = 20_000,
  ): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      let i = from;
      const check = () => {
        for (; i < this.lines.length; i++) {
          const l = this.lines[i]!;
          if (match(l)) {
            cleanup();
            resolve(l);
            return;
          }
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error("log line not seen in time"));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
  }
}

// ------------------------------------------------------------------------------------------------

describe("30% of the Toteboxes killed in the middle of a fan-out", () => {
  let estate: Estate;
  let procs: Map<string, RunningTotebox>;
  let server: OrchestrationServer;
  let conn: AggregatorConnection;
  let keys: Map<string, Identity>;

  beforeAll(async () => {
    const root = newRoot("kill");
    estate = await buildEstate({ root, count: 10 });
    procs = await startToteboxProcesses(estate, undefined, { concurrency: 4 });
    keys = await keysOf(estate);
    const configPath = join(root, "fleet.yaml");
    writeFleet(configPath, fleetYaml(estate, procs));
    server = await OrchestrationServer.start({
      configPath,
      identity: estate.aggregator,
      logger: pino({ level: "silent" }),
      random: () => 0.5,
      http: false,
    });
    await server.pool.settled(30_000);
    conn = await connectAggregator({
      identity: estate.operators.get("atlas")!,
      host: server.address.host,
      port: server.address.port,
      fingerprint: server.identity.fingerprint,
    });
  }, 150_000);

  afterAll(async () => {
    conn?.close();
    await server?.close();
  });

  it("every Totebox exactly once: killed ones offline, the held one timeout, the rest ok and their own", async () => {
    const ids = tenantIdsOf(estate, "atlas");
    expect(ids.length).toBe(10);
    expect(server.pool.counts().online).toBe(10);
    const s = conn.aggregator.authorize(
      signGrant({
        operator: estate.operators.get("atlas")!,
        operatorId: "alice",
        tenant: "atlas",
        aggregator: conn.hello,
        toteboxSelectors: ["kind=property", "kind=company", "kind=project"],
        views: VIEWS,
        actions: ["read"],
      }),
    );
    // What each Totebox answers on its own: the reference for attribution.
    const alone = new Map<string, string[]>();
    for (const id of ids) {
      const r = await s.read("position", { targets: [id], params: PARAMS });
      expect(r.outcomes[0]!.status).toBe("ok");
      alone.set(id, rowsOf(r, id));
    }
    // Not every Totebox has the same position: attribution is actually being tested.
    expect(new Set([...alone.values()].map((v) => v.join("|"))).size).toBeGreaterThan(1);

    const held = "prop-002";
    const killed = ["prop-004", "co-001", "proj-001"];
    // Stopped before the fan-out, so none of them can answer before it is killed: a stopped
    // process accepts the request bytes and says nothing.
    for (const id of [held, ...killed]) process.kill(procs.get(id)!.pid!, "SIGSTOP");
    let r: FanOutResult;
    try {
      const handle = s.start({ kind: "read", name: "position", params: PARAMS, timeoutMs: 8_000 });
      // Wait, through live progress, until every Totebox still running has answered.
      let cursor = 0;
      let answered = 0;
      const seen: string[] = [];
      while (answered < ids.length - 4) {
        const page = await handle.next(cursor, 5_000);
        cursor = page.cursor;
        answered = page.answered;
        seen.push(...page.events.map((e) => e.totebox));
        expect(page.done).toBe(false);
      }
      expect(seen.sort()).toEqual(ids.filter((id) => id !== held && !killed.includes(id)).sort());
      // 30% of the estate dies while the fan-out is open.
      await Promise.all(killed.map((id) => procs.get(id)!.kill()));
      r = await handle.result();
    } finally {
      process.kill(procs.get(held)!.pid!, "SIGCONT");
    }

    console.log(
      `killed mid-fan-out: ${r.outcomes.map((o) => `${o.totebox}=${o.status}${o.code ? `(${o.code}, ${o.elapsedMs} ms)` : ""}`).join(" ")}`,
    );
    expectAccounted(r, ids);
    expect(r.error).toBeNull();
    for (const id of killed) {
      const o = outcomeOf(r, id);
      // The kernel closes a killed process's sockets at once: the link closes under the call.
      expect(o, id).toMatchObject({ status: "offline", code: "PSP_ERR_LINK_CLOSED" });
      // Killed, not timed out: they were reported well before the per-Totebox timeout.
      expect(o.elapsedMs).toBeLessThan(8_000);
    }
    expect(outcomeOf(r, held)).toMatchObject({ status: "timeout", code: "ORCH_ERR_TOTEBOX_TIMEOUT" });
    const ok = r.outcomes.filter((o) => o.status === "ok").map((o) => o.totebox);
    expect(ok.sort()).toEqual(ids.filter((id) => id !== held && !killed.includes(id)).sort());
    expect(r.answered).toBe(6);

    for (const id of ok) {
      // Its rows in the combined answer, and inside its own Arrow bytes, are exactly its own.
      expect(rowsOf(r, id), id).toEqual(alone.get(id));
      expect(answerRows(r, id), id).toEqual(alone.get(id));
    }
    // Nothing in the combined answer from a Totebox that did not answer.
    const attributed = new Set(r.sections[0]!.rows.map((row) => String(row[0])));
    for (const id of attributed) expect(ok).toContain(id);
    // Each receipt verifies with its own Totebox's key, and with no other Totebox's.
    const own = verifyAnswers(r, (id) => keys.get(id)?.publicKey);
    expect(own.map((c) => [c.totebox, c.verified]).sort()).toEqual(ok.map((id) => [id, true]).sort());
    const shifted = (id: string) => ids[(ids.indexOf(id) + 1) % ids.length]!;
    const swapped = verifyAnswers(r, (id) => keys.get(shifted(id))?.publicKey);
    expect(swapped.every((c) => !c.verified && c.code === "PSP_ERR_RECEIPT_SIGNATURE")).toBe(true);
  }, 90_000);
});

// ------------------------------------------------------------------------------------------------

describe("links delayed, dropped, reset and blackholed by a proxy", () => {
  let estate: Estate;
  let running: Map<string, RunningTotebox & { server: ToteboxServer }>;
  let server: OrchestrationServer;
  let conn: AggregatorConnection;
  let session: OperatorSessionRemote;
  let ids: string[];
  const proxies = new Map<string, FaultProxy>();
  const alone = new Map<string, string[]>();
  const tap = new LogTap("debug");

  const read = (timeoutMs: number) => session.read("position", { params: PARAMS, timeoutMs });
  const onlineAfter = (id: string, mark: number) =>
    tap.waitFor((l) => l.msg === "link online" && l.totebox === id, mark);

  /** A fan-out in which every Totebox answered, each with exactly its own rows. */
  function expectWhole(r: FanOutResult): void {
    expectAccounted(r, ids);
    expect(r.partial).toBe(false);
    for (const id of ids) expect(rowsOf(r, id), id).toEqual(alone.get(id));
  }

  beforeAll(async () => {
    const root = newRoot("proxy");
    estate = await buildEstate({ root, count: 6 });
    ids = tenantIdsOf(estate, "atlas");
    running = await startToteboxesInProcess(estate, pino({ level: "silent" }));
    // Four of the six behind a proxy each; the other two direct.
    const addresses = new Map<string, { host: string; port: number; fingerprint: string }>();
    for (const [id, t] of running) {
      let address = { host: t.host, port: t.port };
      if (["prop-001", "prop-002", "prop-003", "co-001"].includes(id)) {
        const p = await FaultProxy.start({ host: t.host, port: t.port });
        proxies.set(id, p);
        address = p.address;
      }
      addresses.set(id, { ...address, fingerprint: t.fingerprint });
    }
    const configPath = join(root, "fleet.yaml");
    writeFleet(configPath, fleetYaml(estate, addresses));
    server = await OrchestrationServer.start({
      configPath,
      identity: estate.aggregator,
      logger: tap.logger,
      // Deterministic backoff: every reconnect attempt after 100 ms.
      random: () => 0,
      limits: { reconnectBaseMs: 100, reconnectMaxMs: 400 },
      toteboxLinkLimits: { handshakeTimeoutMs: 1_500 },
      http: false,
    });
    await server.pool.settled(30_000);
    expect(server.pool.counts().online).toBe(6);
    conn = await connectAggregator({
      identity: estate.operators.get("atlas")!,
      host: server.address.host,
      port: server.address.port,
      fingerprint: server.identity.fingerprint,
    });
    session = conn.aggregator.authorize(
      signGrant({
        operator: estate.operators.get("atlas")!,
        operatorId: "alice",
        tenant: "atlas",
        aggregator: conn.hello,
        toteboxSelectors: ["kind=property", "kind=company", "kind=project"],
        views: VIEWS,
        actions: ["read"],
      }),
    );
    for (const id of ids) {
      const r = await session.read("position", { targets: [id], params: PARAMS });
      alone.set(id, rowsOf(r, id));
    }
  }, 120_000);

  afterAll(async () => {
    conn?.close();
    await server?.close();
    for (const p of proxies.values()) await p.close();
    for (const t of running?.values() ?? []) await t.stop();
  });

  it("a delayed link answers, slower, and its answer is its own", async () => {
    const p = proxies.get("prop-001")!;
    p.setDelay(250);
    try {
      const r = await read(10_000);
      expectWhole(r);
      // One chunk up and at least one down, each held 250 ms (timers may fire a tick early).
      expect(outcomeOf(r, "prop-001").elapsedMs).toBeGreaterThanOrEqual(490);
    } finally {
      p.setDelay(0);
    }
  });

  it("delayed past the per-Totebox timeout: timeout; the late answer is dropped; the next fan-out is clean", async () => {
    const p = proxies.get("prop-001")!;
    p.setDelay(2_500);
    const handle = session.start({ kind: "read", name: "position", params: PARAMS, timeoutMs: 1_000 });
    const r = await handle.result();
    const downAtResult = p.stats.bytesDownOut;
    expectAccounted(r, ids);
    expect(outcomeOf(r, "prop-001")).toMatchObject({ status: "timeout", code: "ORCH_ERR_TOTEBOX_TIMEOUT" });
    expect(r.answered).toBe(ids.length - 1);
    expect(rowsOf(r, "prop-001")).toEqual([]);
    // Let the late answer (and the reply to our cancel) arrive at the aggregator.
    await p.waitFor((s) => s.bytesDownOut > downAtResult && s.queued === 0, 30_000);
    p.setDelay(0);
    // The finished fan-out is unchanged: still a timeout, one event per Totebox, no late rows.
    const again = await session.fanout(r.id).result();
    expect(canon(again)).toBe(canon(r));
    const events = await handle.next(0, 0);
    expect(events.events.map((e) => e.totebox).sort()).toEqual([...ids].sort());
    expect(events.done).toBe(true);
    // The late answer did not upset the link: it is still the same, online one.
    expect(server.pool.health("prop-001")?.health).toBe("online");
    expectWhole(await read(10_000));
  }, 60_000);

  for (const fault of ["drop", "reset"] as const) {
    const id = fault === "drop" ? "prop-002" : "prop-003";
    it(`a link ${fault === "drop" ? "dropped" : "reset"} mid-fan-out: offline with the link's reason; the pool reconnects; the next fan-out is whole`, async () => {
      const p = proxies.get(id)!;
      p.holdDown(true);
      const downBefore = p.stats.bytesDownIn;
      const mark = tap.mark();
      const handle = session.start({ kind: "read", name: "position", params: PARAMS, timeoutMs: 20_000 });
      // The Totebox has answered; its answer sits in the proxy. Now the link fails.
      await p.waitFor((s) => s.bytesDownIn > downBefore);
      expect(fault === "drop" ? p.drop() : p.reset()).toBe(1);
      p.holdDown(false);
      const r = await handle.result();
      expectAccounted(r, ids);
      const o = outcomeOf(r, id);
      expect(o.status).toBe("offline");
      expect(o.code).toBe("PSP_ERR_LINK_CLOSED");
      expect(o.elapsedMs).toBeLessThan(20_000);
      expect(r.answered).toBe(ids.length - 1);
      // Reconnect with backoff, then a whole answer again.
      await onlineAfter(id, mark);
      expect(p.stats.accepted).toBeGreaterThanOrEqual(2);
      expectWhole(await read(10_000));
    }, 60_000);
  }

  it("a blackholed Totebox: the handshake times out and says so; it heals when the path returns", async () => {
    const id = "co-001";
    const p = proxies.get(id)!;
    p.setMode("blackhole");
    const mark = tap.mark();
    const accepted = p.stats.accepted;
    expect(p.reset()).toBe(1);
    // The pool's next attempt goes into the blackhole and gives up after the handshake timeout.
    await tap.waitFor(
      (l) => l.msg === "link down; reconnecting" && l.totebox === id && l.code === "PSP_ERR_TLS_TIMEOUT",
      mark,
    );
    expect(p.stats.accepted).toBeGreaterThan(accepted);
    // The ClientHello went in; nothing came out.
    expect(p.stats.bytesUpIn).toBeGreaterThan(0);
    const r = await read(5_000);
    expectAccounted(r, ids);
    const o = outcomeOf(r, id);
    expect(o.status).toBe("offline");
    expect(o.code).toBe("ORCH_ERR_TOTEBOX_OFFLINE");
    expect(o.reason).toContain("PSP_ERR_TLS_TIMEOUT");
    for (const other of ids.filter((x) => x !== id)) expect(outcomeOf(r, other).status).toBe("ok");
    const fleet = await session.fleet();
    const entry = fleet.find((e) => e.id === id)!;
    expect(entry.online).toBe(false);
    expect(entry.lastError?.code).toBe("PSP_ERR_TLS_TIMEOUT");

    const healed = tap.mark();
    p.setMode("forward");
    await onlineAfter(id, healed);
    expectWhole(await read(10_000));
  }, 60_000);
});

// ------------------------------------------------------------------------------------------------

describe("the aggregator SIGKILLed and restarted under load; a command retried through it all", () => {
  let root: string;
  let estate: Estate;
  let running: Map<string, RunningTotebox & { server: ToteboxServer }>;
  let keys: Map<string, Identity>;
  const proxies = new Map<string, FaultProxy>();
  let config: string;
  let identityDir: string;
  let agg: ServedProcess & { port: number };
  const sessions: ResilientSession[] = [];

  const startAggregator = async (port: number) => {
    agg = await startAggregatorProcess({ config, identityDir, listen: `127.0.0.1:${port}`, http: "off" });
    return agg.port;
  };

  function resilient(tenant: "atlas" | "crown", actions: string[] = ["read"]): ResilientSession {
    const identity = estate.operators.get(tenant)!;
    const rs = new ResilientSession({
      connect: () =>
        connectAggregator({
          identity,
          host: "127.0.0.1",
          port: agg.port,
          fingerprint: estate.aggregator.fingerprint,
        }),
      grant: (hello) =>
        signGrant({
          operator: identity,
          operatorId: tenant === "atlas" ? "alice" : "bob",
          tenant,
          aggregator: hello,
          toteboxSelectors: ["kind=property", "kind=company", "kind=project"],
          views: VIEWS,
          actions,
        }),
      // Long enough a retry window to outlast a restart on this loaded machine.
      retryForMs: 60_000,
      random: () => 0.5,
    });
    sessions.push(rs);
    return rs;
  }

  /** Waits until the aggregator reports every Totebox of the tenant online (after a restart). */
  async function allOnline(rs: ResilientSession, timeoutMs = 30_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const fleet = await rs.run((s) => s.fleet());
      if (fleet.every((e) => e.online)) return;
      if (Date.now() > until) throw new Error("links did not come back in time");
      // Polling the aggregator's own report: it is a separate process with no event to wait on.
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  beforeAll(async () => {
    root = newRoot("restart");
    estate = await buildEstate({ root, count: 8 });
    running = await startToteboxesInProcess(estate, pino({ level: "silent" }));
    keys = await keysOf(estate);
    const addresses = new Map<string, { host: string; port: number; fingerprint: string }>();
    for (const [id, t] of running) {
      const p = await FaultProxy.start({ host: t.host, port: t.port });
      proxies.set(id, p);
      addresses.set(id, { ...p.address, fingerprint: t.fingerprint });
    }
    // Room for ten operators of a tenant querying at once.
    const doc = parse(fleetYaml(estate, addresses)) as { tenants: Record<string, Record<string, unknown>> };
    for (const t of Object.values(doc.tenants)) t.max_concurrent_fanouts = 32;
    config = join(root, "fleet.yaml");
    writeFleet(config, stringify(doc));
    identityDir = join(root, "aggregator", "identity");
    await startAggregator(0);
  }, 120_000);

  afterAll(async () => {
    for (const s of sessions) s.close();
    if (agg) await stopChild(agg.child, "SIGKILL");
    for (const p of proxies.values()) await p.close();
    for (const t of running?.values() ?? []) await t.stop();
  });

  it("20 operators querying through a SIGKILL and restart: every answer complete or explicitly partial, none lost", async () => {
    const port = agg.port;
    const ops = Array.from({ length: 20 }, (_, i) => ({
      tenant: (i % 2 === 0 ? "atlas" : "crown") as "atlas" | "crown",
      rs: undefined as ResilientSession | undefined,
    }));
    for (const o of ops) o.rs = resilient(o.tenant);
    await allOnline(ops[0]!.rs!);

    const ITERATIONS = 4;
    type Entry = { op: number; i: number; result?: FanOutResult; error?: { code: string; message: string } };
    const log: Entry[] = [];
    let completed = 0;
    let strike!: () => void;
    const strikeNow = new Promise<void>((r) => {
      strike = r;
    });
    const loops = ops.map(async (o, op) => {
      for (let i = 0; i < ITERATIONS; i++) {
        const entry: Entry = { op, i };
        try {
          entry.result = await o.rs!.run((s) =>
            i % 2 === 0
              ? s.viewport("portfolio", { params: PARAMS, timeoutMs: 10_000 })
              : s.read("position", { params: PARAMS, timeoutMs: 10_000 }),
          );
        } catch (e) {
          const code = (e as { code?: unknown }).code;
          entry.error = {
            code: typeof code === "string" ? code : "UNTYPED",
            message: String((e as Error).message),
          };
        }
        log.push(entry);
        if (++completed === 20) strike();
      }
    });
    // A quarter of the way in, with every operator mid-loop, the aggregator dies.
    await strikeNow;
    await stopChild(agg.child, "SIGKILL");
    const killedAt = completed;
    await startAggregator(port);
    expect(agg.port).toBe(port);
    await Promise.all(loops);

    expect(killedAt).toBeLessThan(20 * ITERATIONS);
    // No answer lost silently: every iteration of every operator ended in a result or a typed error.
    expect(log.length).toBe(20 * ITERATIONS);
    for (let op = 0; op < 20; op++) {
      expect(
        log
          .filter((e) => e.op === op)
          .map((e) => e.i)
          .sort(),
      ).toEqual([0, 1, 2, 3]);
    }
    const errors = log.filter((e) => e.error);
    for (const e of errors) expect(e.error!.code).toMatch(/^(ORCH|PSP)_ERR_[A-Z0-9_]+$/);
    let partial = 0;
    for (const e of log.filter((x) => x.result)) {
      const r = e.result!;
      // Exactly its own tenant's Toteboxes, each once; anything missing is named with status and code.
      expectAccounted(r, tenantIdsOf(estate, ops[e.op]!.tenant));
      if (r.partial) partial++;
      else expect(r.outcomes.every((o) => o.status === "ok")).toBe(true);
    }
    console.log(
      `restart under load: ${log.length} answers, ${partial} partial, ${errors.length} typed errors (${[
        ...new Set(errors.map((e) => e.error!.code)),
      ].join(", ")}), ${sessions.reduce((s, x) => s + x.reconnects, 0)} reconnects`,
    );
    expect(sessions.reduce((s, x) => s + x.reconnects, 0)).toBeGreaterThan(0);

    // Afterwards every operator gets a complete answer again.
    const after = await Promise.all(
      ops.map((o) => o.rs!.run((s) => s.viewport("portfolio", { params: PARAMS, timeoutMs: 10_000 }))),
    );
    after.forEach((r, i) => {
      expectAccounted(r, tenantIdsOf(estate, ops[i]!.tenant));
      expect(r.partial).toBe(false);
      expect(r.error).toBeNull();
    });
  }, 90_000);

  it("a command retried across the restart and a proxy reset runs once at each Totebox", async () => {
    const KEY = "faults-verify-ledger-2026-11-26";
    const rs = resilient("crown", ["read", "verify-ledger"]);
    const ids = tenantIdsOf(estate, "crown");
    await allOnline(rs);
    const stored = (id: string) =>
      running
        .get(id)!
        .server.db.prepare("SELECT receipt FROM command_receipts WHERE idempotency_key = ?")
        .all(KEY) as { receipt: Uint8Array }[];
    const command = () =>
      rs.run((s) =>
        s.command("verify-ledger", { idempotencyKey: KEY, timeoutMs: 30_000, deadlineMs: 60_000 }),
      );
    for (const id of ids) expect(stored(id)).toEqual([]);

    // 1. The command reaches every Totebox and runs; the answers are held in the proxies; the
    //    aggregator dies before hearing them. The console's call fails with the link and is retried.
    const down = new Map(ids.map((id) => [id, proxies.get(id)!.stats.bytesDownIn]));
    for (const id of ids) proxies.get(id)!.holdDown(true);
    const first = command();
    // Its reply reaching the proxy (re-checked on every byte, so a ping's pong cannot pass for it).
    await Promise.all(
      ids.map((id) =>
        proxies.get(id)!.waitFor((s) => s.bytesDownIn > down.get(id)! && stored(id).length === 1),
      ),
    );
    const port = agg.port;
    await stopChild(agg.child, "SIGKILL");
    for (const id of ids) proxies.get(id)!.holdDown(false);
    await startAggregator(port);
    const afterRestart = await first;
    expectAccounted(afterRestart, ids);
    for (const o of afterRestart.outcomes) {
      expect(o.status, `${o.totebox}: ${o.code} ${o.reason}`).toBe("ok");
      expect(o.command?.replayed).toBe(true);
    }

    // 2. Again, and this time the links to the Toteboxes are reset under the held answers.
    for (const id of ids) down.set(id, proxies.get(id)!.stats.bytesDownIn);
    for (const id of ids) proxies.get(id)!.holdDown(true);
    const second = command();
    await Promise.all(ids.map((id) => proxies.get(id)!.waitFor((s) => s.bytesDownIn > down.get(id)!)));
    for (const id of ids) expect(proxies.get(id)!.reset()).toBe(1);
    for (const id of ids) proxies.get(id)!.holdDown(false);
    const cut = await second;
    expectAccounted(cut, ids);
    for (const o of cut.outcomes) expect(o).toMatchObject({ status: "offline", code: "PSP_ERR_LINK_CLOSED" });

    // 3. The operator retries once the links are back.
    await allOnline(rs);
    const third = await command();
    expectAccounted(third, ids);
    expect(third.partial).toBe(false);

    for (const id of ids) {
      // Ran once: one stored run, and every answer is that run's receipt, replayed.
      const rows = stored(id);
      expect(rows.length).toBe(1);
      const a = outcomeOf(afterRestart, id).command!;
      const c = outcomeOf(third, id).command!;
      expect(c.replayed).toBe(true);
      // The Totebox stores [result, receipt] of the first run; every replay hands back that receipt.
      expect(Buffer.from(c.receipt).equals(Buffer.from(a.receipt))).toBe(true);
      expect(Buffer.from(rows[0]!.receipt).includes(Buffer.from(a.receipt))).toBe(true);
      expect(Buffer.from(c.resultBytes).equals(Buffer.from(a.resultBytes))).toBe(true);
    }
    expect(verifyAnswers(third, (id) => keys.get(id)?.publicKey).every((x) => x.verified)).toBe(true);
  }, 90_000);
});
