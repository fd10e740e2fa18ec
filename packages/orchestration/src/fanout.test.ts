/**
 * A long-lived link must not accumulate the fan-out's stubs: each `authorize()` session (and each
 * `view()` stub, when reads went through views) is an import the Totebox counts as a call in
 * flight until it is released. With the Totebox's limit lowered to 16, 40 fan-outs in a row over
 * the same link must all answer.
 * The session itself is authorized once per link and grant, and reused (pool.ts, LinkLease.session).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectAggregator, ResilientSession, runFanOut, signGrant } from "@os-orchestration/console";
import {
  type Clock,
  createIdentity,
  decodeUnverified,
  FrameKind,
  type Identity,
  issueGrant,
  ManualClock,
  ManualScheduler,
  type ReplySink,
  rawEd25519PublicKey,
  releaseStub,
} from "@os-orchestration/psp";
import {
  generateDemoData,
  initArchive,
  openArchive,
  ToteboxServer,
  trustPeer,
} from "@os-orchestration/totebox";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FanOut, type FanOutPlan } from "./fanout.ts";
import { DEFAULT_ORCH_LIMITS } from "./limits.ts";
import type { LinkPool } from "./pool.ts";
import type { ToteboxEntry } from "./registry.ts";
import { OrchestrationServer } from "./server.ts";
import type { AggregatorHello } from "./service.ts";

const root = mkdtempSync(join(tmpdir(), "os-orch-fanout-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface Estate {
  server: OrchestrationServer;
  tb: ToteboxServer;
  aggregator: Identity;
  operator: Identity;
}
let estate: Estate;

beforeAll(async () => {
  const silent = pino({ level: "silent" });
  const aggregator = await createIdentity({ name: "agg" });
  const operator = await createIdentity({ name: "op" });
  const dir = join(root, "tb-1");
  await initArchive({ dir, id: "tb-1", kind: "property", name: "One", tags: { region: "west" } });
  const a = await openArchive(dir);
  generateDemoData(a.db, { kind: "property", seed: 1, entityId: "tb-1", asOf: "2026-10-31" });
  trustPeer(a.db, {
    kind: "aggregator",
    label: "hub",
    publicKey: aggregator.publicKey,
    fingerprint: aggregator.fingerprint,
    now: Date.now(),
  });
  trustPeer(a.db, { kind: "operator", label: "op", publicKey: operator.publicKey, now: Date.now() });
  a.db.close();
  const tb = await ToteboxServer.start({
    dir,
    viewRunner: "in-process",
    logger: silent,
    limits: { maxCallsInFlight: 16 },
  });
  const config = join(root, "fleet.yaml");
  writeFileSync(
    config,
    [
      "version: 1",
      "tenants: { t1: {} }",
      "toteboxes:",
      `  - { id: tb-1, address: "127.0.0.1:${tb.address.port}", fingerprint: ${tb.identity.fingerprint}, tags: { region: west }, tenants: [t1] }`,
      "operators:",
      `  - { id: op, public_key: ${Buffer.from(rawEd25519PublicKey(operator.publicKey)).toString("hex")}, tenant: t1, role: viewer }`,
    ].join("\n"),
  );
  const server = await OrchestrationServer.start({
    configPath: config,
    identity: aggregator,
    logger: silent,
    http: false,
  });
  await server.pool.settled(10_000);
  estate = { server, tb, aggregator, operator };
}, 60_000);

afterAll(async () => {
  await estate?.server.close();
  await estate?.tb.close();
});

const connect = () =>
  connectAggregator({
    identity: estate.operator,
    host: estate.server.address.host,
    port: estate.server.address.port,
    fingerprint: estate.aggregator.fingerprint,
  });

/** The test operator's grant to tb-1, for `views`, addressed to the aggregator `hello` names. */
const grantTo = (hello: AggregatorHello, views: string[], clock?: Clock) =>
  signGrant({
    operator: estate.operator,
    operatorId: "op",
    tenant: "t1",
    aggregator: hello,
    toteboxIds: ["tb-1"],
    views,
    actions: ["read"],
    ...(clock ? { clock } : {}),
  });

describe("fan-out over a long-lived link", () => {
  it("releases its stubs: 40 fan-outs in a row under a Totebox limit of 16 calls in flight", async () => {
    const { server, tb } = estate;
    const conn = await connect();
    const grantFor = (views: string[]) => grantTo(conn.hello, views);
    const session = conn.aggregator.authorize(grantFor(["position", "occupancy"]));
    const link = server.pool.linkOf("tb-1");
    for (let i = 0; i < 40; i++) {
      const r = await session.viewport("portfolio", { params: { as_of: "2026-10-31" } });
      expect(r.outcomes[0]!.status, `fan-out ${i}: ${r.outcomes[0]!.code}`).toBe("ok");
    }
    expect(server.pool.linkOf("tb-1")).toBe(link); // the same link throughout
    // One grant, one link: the Totebox authorized the session once (one grant signature
    // verified) and checked a fresh call capability on each of the 80 reads.
    tb.auditLog.flush();
    const audit = tb.auditLog.entries(0, tb.auditLog.size()).map((r) => r.entry);
    expect(audit.filter((e) => e.action === "authorize").map((e) => e.outcome)).toEqual(["ok"]);
    expect(audit.filter((e) => e.action === "read" && e.outcome === "ok")).toHaveLength(80);

    // A new grant is a new session; a read the Totebox refuses drops the cached one, so the
    // next fan-out authorizes afresh instead of reusing a session it may no longer honour.
    const other = conn.aggregator.authorize(grantFor(["no-such-view"]));
    for (let i = 0; i < 2; i++) {
      const r = await other.read("no-such-view", {});
      expect(r.outcomes[0]!.code).toBe("TOTEBOX_ERR_VIEW_UNKNOWN");
    }
    tb.auditLog.flush();
    const after = tb.auditLog.entries(0, tb.auditLog.size()).map((r) => r.entry);
    expect(after.filter((e) => e.action === "authorize")).toHaveLength(3);
    conn.close();
  });
});

describe("reads after a link's first answer go as direct requests", () => {
  /** From now on: the kinds of the frames the aggregator sends tb-1, and where its audit log was. */
  const watchTb1 = () => {
    const link = estate.server.pool.linkOf("tb-1")!;
    const out: number[] = [];
    const onFrame = (kind: number) => out.push(kind);
    link.on("frame-out", onFrame);
    estate.tb.auditLog.flush();
    return { out, stop: () => link.off("frame-out", onFrame), from: estate.tb.auditLog.size() };
  };

  it("one Request frame per read and no capnweb frame per fan-out; the Totebox audits each read", async () => {
    const { tb } = estate;
    const conn = await connect();
    try {
      const session = conn.aggregator.authorize(grantTo(conn.hello, ["position", "occupancy"]));
      const first = await session.viewport("portfolio", { params: { as_of: "2026-10-31" } });
      expect(first.outcomes[0]!.status).toBe("ok");
      const { out, stop, from } = watchTb1();
      for (let i = 0; i < 3; i++) {
        const r = await session.viewport("portfolio", { params: { as_of: "2026-10-31" } });
        expect(r.outcomes[0]!.status, `fan-out ${i}: ${r.outcomes[0]!.code}`).toBe("ok");
      }
      stop();
      // A portfolio reads two views: two direct requests per fan-out, nothing else (releases of
      // the first fan-out's calls may ride out once, in a Messages frame of their own).
      expect(out.filter((k) => k === FrameKind.Request)).toHaveLength(6);
      expect(out.filter((k) => k === FrameKind.Messages).length).toBeLessThanOrEqual(1);
      tb.auditLog.flush();
      const reads = tb.auditLog.entries(from, tb.auditLog.size() - from).map((r) => r.entry);
      expect(reads.filter((e) => e.action === "read" && e.outcome === "ok")).toHaveLength(6);
      releaseStub(session);
    } finally {
      conn.close();
    }
  });

  it("an audit proof on the same link (its own session under the same grant, then released) leaves direct reads served", async () => {
    const { tb } = estate;
    const conn = await connect();
    try {
      const session = conn.aggregator.authorize(grantTo(conn.hello, ["position", "occupancy", "audit"]));
      const params = { params: { as_of: "2026-10-31" } };
      expect((await session.viewport("portfolio", params)).outcomes[0]!.status).toBe("ok");
      const { out, stop, from } = watchTb1();
      // The aggregator authorizes the same grant again for the proof and releases that session.
      expect(await session.audit("tb-1", { op: "checkpoint" })).toMatchObject({
        checkpoint: expect.anything(),
      });
      const r = await session.viewport("portfolio", params);
      expect(r.outcomes[0]!.status).toBe("ok");
      stop();
      tb.auditLog.flush();
      const entries = tb.auditLog.entries(from, tb.auditLog.size() - from).map((e) => e.entry);
      // One authorize, the proof's; the fan-out after it still read directly, without a fallback.
      expect(entries.filter((e) => e.action === "authorize")).toHaveLength(1);
      expect(entries.filter((e) => e.outcome === "TOTEBOX_ERR_SESSION_UNKNOWN")).toHaveLength(0);
      expect(out.filter((k) => k === FrameKind.Request)).toHaveLength(2);
      releaseStub(session);
    } finally {
      conn.close();
    }
  });
});

describe("what a console holds of the aggregator stays bounded", () => {
  const read = { kind: "read", name: "position", params: { as_of: "2026-10-31" }, answers: false } as const;

  it("runFanOut releases each handle; a refusal keeps the link and the session", async () => {
    const { server } = estate;
    const rs = new ResilientSession({
      connect,
      grant: (hello) => grantTo(hello, ["position"]),
    });
    try {
      let afterFirst = 0;
      for (let i = 0; i < 20; i++) {
        const r = await rs.run((s) => runFanOut(s, read));
        expect(r.outcomes[0]!.status, `fan-out ${i}`).toBe("ok");
        // Asked without answers: the outcome carries none (the fan-out dropped them when checked).
        expect(r.outcomes[0]!.answers).toEqual([]);
        if (i === 0) afterFirst = server.consoleExports;
      }
      // The link's main object and the session, plus the last fan-out's handle and result, whose
      // releases wait (up to releaseDelayMs) to ride with the next frame. Constant from the first
      // fan-out on; before the fix it grew by one handle per fan-out.
      expect(afterFirst).toBeLessThanOrEqual(4);
      expect(server.consoleExports).toBe(afterFirst);
      const { conn } = await rs.session();
      await expect(
        rs.run((s) => runFanOut(s, { ...read, targets: ["no-such-totebox"] })),
      ).rejects.toMatchObject({
        code: "ORCH_ERR_TARGET_UNKNOWN",
      });
      // Refused, not broken: the same link and no reconnect (each used to cost a TLS handshake).
      expect((await rs.session()).conn).toBe(conn);
      expect(rs.reconnects).toBe(0);
      expect(server.consoleLinks).toBe(1);
    } finally {
      rs.close();
    }
  });

  it("a handle a console never releases stops pinning its fan-out once it leaves the retained set", async () => {
    const conn = await connect();
    try {
      const session = conn.aggregator.authorize(grantTo(conn.hello, ["position"]));
      const leaked = session.start(read); // held, never released, like a leaky console's
      expect((await leaked.result()).outcomes[0]!.status).toBe("ok");
      // Still retained: it answers.
      expect((await leaked.result()).outcomes).toHaveLength(1);
      for (let i = 0; i < DEFAULT_ORCH_LIMITS.maxRetainedFanouts; i++) await runFanOut(session, read);
      // Pushed out of the session's retained set by newer fan-outs: the handle no longer holds it.
      await expect(leaked.result()).rejects.toMatchObject({ code: "ORCH_ERR_FANOUT_UNKNOWN" });
      releaseStub(leaked);
    } finally {
      conn.close();
    }
  });

  it("a one-call fan-out's result is its reply, so it counts as fetched: newer fan-outs push it out at once", async () => {
    const conn = await connect();
    try {
      const session = conn.aggregator.authorize(grantTo(conn.hello, ["position"]));
      const first = await session.read("position", { params: read.params, answers: false });
      expect(first.outcomes[0]!.status).toBe("ok");
      // Retained while it is among the newest (asking for a handle fetches nothing).
      const handle = session.fanout(first.id);
      expect(await handle.id()).toBe(first.id);
      releaseStub(handle);
      for (let i = 0; i < DEFAULT_ORCH_LIMITS.maxRetainedFanouts; i++) {
        await session.read("position", { params: read.params, answers: false });
      }
      // Pushed out, not kept for the grace time of a result nobody has fetched (60 s).
      const gone = session.fanout(first.id);
      await expect(gone.id()).rejects.toMatchObject({ code: "ORCH_ERR_FANOUT_UNKNOWN" });
    } finally {
      conn.close();
    }
  });

  it("a finished fan-out nobody has fetched outlives newer ones (grace time); next() and cancel() answer after", async () => {
    const { server } = estate;
    const finished = async () => (await server.metrics.fanouts.get()).values.reduce((n, v) => n + v.value, 0);
    const conn = await connect();
    try {
      const session = conn.aggregator.authorize(grantTo(conn.hello, ["position"]));
      const before = await finished();
      const unread = session.start(read);
      await unread.id();
      // Wait (on the aggregator's own count, not a timer) until it has finished, unread.
      for (let i = 0; i < 10_000 && (await finished()) === before; i++)
        await new Promise((r) => setImmediate(r));
      expect(await finished()).toBe(before + 1);
      for (let i = 0; i <= DEFAULT_ORCH_LIMITS.maxRetainedFanouts; i++) await runFanOut(session, read);
      // Five newer fan-outs, a cap of 4, and still there: finished less than
      // unfetchedResultGraceMs (60 s) ago and never fetched.
      expect((await unread.result()).outcomes[0]!.status).toBe("ok");
      expect(await unread.cancel()).toEqual({ cancelled: false });
      // Fetched now, so the next fan-out pushes it out.
      await runFanOut(session, read);
      await expect(unread.next(0, 0)).rejects.toMatchObject({ code: "ORCH_ERR_FANOUT_UNKNOWN" });
      // Nothing left to stop is an answer, not an error.
      expect(await unread.cancel()).toEqual({ cancelled: false });
      releaseStub(unread);
    } finally {
      conn.close();
    }
  });

  it("a refused grant (expired) is thrown, and the next call authorizes a fresh grant on the same link", async () => {
    const { server } = estate;
    let grants = 0;
    // The first grant was signed two days ago (8 h lifetime): the aggregator refuses it.
    const twoDaysAgo = new ManualClock(Date.now() - 2 * 86_400_000);
    const rs = new ResilientSession({
      connect,
      grant: (hello) => grantTo(hello, ["position"], ++grants === 1 ? twoDaysAgo : undefined),
    });
    try {
      await expect(rs.run((s) => runFanOut(s, read))).rejects.toMatchObject({ code: "PSP_ERR_CAP_EXPIRED" });
      const { conn } = await rs.session();
      expect(grants).toBe(2); // re-authorized with a freshly signed grant...
      const r = await rs.run((s) => runFanOut(s, read));
      expect(r.outcomes[0]!.status).toBe("ok");
      expect((await rs.session()).conn).toBe(conn); // ...on the same link, no reconnect
      expect(rs.reconnects).toBe(0);
      expect(server.consoleLinks).toBe(1);
    } finally {
      rs.close();
    }
  });
});

/** The recording pools' clock start: far from the real clock, so nothing real can leak in. */
const T0 = Date.UTC(2030, 0, 1);

/** Totebox entries the recording pools below hand out leases for (never dialled). */
const targets = (n: number): ToteboxEntry[] =>
  Array.from({ length: n }, (_, i) => ({
    id: `tb-${i}`,
    name: `tb-${i}`,
    host: "127.0.0.1",
    port: 1,
    fingerprint: "00".repeat(32),
    tags: { region: "west" },
    state: "active",
    tenants: ["t1"],
    line: i + 1,
  }));

/** An aggregator identity, and an operator's 600 s grant to it over `views` for region=west. */
async function grantOver(views: readonly string[], clock: ManualClock) {
  const [agg, op] = await Promise.all([createIdentity({ name: "agg-r" }), createIdentity({ name: "op-r" })]);
  const grant = issueGrant({
    operator: "op",
    aggregatorId: agg.fingerprint,
    aggregatorKey: agg.publicKey,
    tenant: "t1",
    toteboxSelectors: ["region=west"],
    views: [...views],
    actions: ["read"],
    lifetimeSeconds: 600,
    signer: op.privateKey,
    clock,
  });
  return { agg, grant };
}

/** A read fan-out of `views` over `n` recorded Toteboxes through `pool`; no timer of it ever fires. */
function recordedFanOut(args: {
  n: number;
  views: readonly string[];
  grant: Uint8Array;
  agg: Identity;
  clock: ManualClock;
  pool: LinkPool;
  scheduler?: ManualScheduler;
  /** A row every read names (row-scoped capabilities). */
  row?: string;
  toteboxTimeoutMs?: number;
  deadlineMs?: number;
}): FanOut {
  const plan: FanOutPlan = {
    kind: "read",
    name: "position",
    params: {},
    targets: targets(args.n),
    reads: args.views.map((v) => ({ view: v, as: v, params: {}, ...(args.row ? { row: args.row } : {}) })),
    command: undefined,
    viewport: undefined,
    mode: "warn",
    toteboxTimeoutMs: args.toteboxTimeoutMs ?? 60_000,
    deadlineMs: args.deadlineMs ?? 60_000,
    grant: args.grant,
    grantExpiresAt: T0 + 600_000,
    tenant: "t1",
    operator: "op",
    keepAnswers: false,
  };
  return new FanOut(plan, {
    pool: args.pool,
    signer: args.agg.privateKey,
    clock: args.clock,
    scheduler: args.scheduler ?? new ManualScheduler(T0),
    limits: DEFAULT_ORCH_LIMITS,
    logger: pino({ level: "silent" }),
  });
}

/**
 * Capabilities are batch-signed per dispatch slice, as each slice leaves (fanout.ts, start()).
 * A pool that hands out a recording session (every read refused) shows what each Totebox got.
 */
describe("capabilities signed per dispatch slice", () => {
  interface RunOptions {
    /** Views read from each Totebox (default: position). */
    readonly views?: readonly string[];
    /** Called after each read a Totebox receives, with the count so far. */
    readonly onRead?: (seen: number, clock: ManualClock, f: FanOut) => void;
    /** Moves the clock this far before the fan-out starts. */
    readonly startAfterMs?: number;
    readonly row?: string;
    /** This Totebox's lease throws when asked for its session (a broken session cache). */
    readonly brokenSession?: string;
  }

  async function run(n: number, opts: RunOptions = {}) {
    const views = opts.views ?? ["position"];
    const clock = new ManualClock(T0);
    const { agg, grant } = await grantOver(views, clock);
    const seen: Uint8Array[] = [];
    let f: FanOut | undefined;
    const session = {
      read(cap: Uint8Array) {
        seen.push(cap);
        opts.onRead?.(seen.length, clock, f!);
        return Promise.reject(Object.assign(new Error("refused"), { code: "TOTEBOX_ERR_POLICY_DENIED" }));
      },
    };
    const lease = { session: () => ({ stub: session, end() {} }), release() {} };
    let brokenReleased = 0;
    const broken = {
      session: () => {
        throw new Error("session cache broken");
      },
      release: () => brokenReleased++,
    };
    const leaseOf = (id: string) => (id === opts.brokenSession ? broken : lease);
    const pool = {
      acquire: async (id: string) => leaseOf(id),
      tryAcquire: (id: string) => leaseOf(id),
      health: () => undefined,
      cut() {},
    } as unknown as LinkPool;
    // No timer fires: every Totebox refuses at once.
    f = recordedFanOut({ n, views, grant, agg, clock, pool, ...(opts.row ? { row: opts.row } : {}) });
    if (opts.startAfterMs) clock.advance(opts.startAfterMs);
    f.start();
    return { result: await f.done, seen, brokenReleased: () => brokenReleased };
  }

  it("600 Toteboxes: batches of 256, 256 and 88, each capability for its own Totebox", async () => {
    const { result, seen } = await run(600);
    expect(seen).toHaveLength(600);
    const sizes = new Map<number, number>();
    seen.forEach((cap, i) => {
      const u = decodeUnverified(cap);
      expect(u.claims.aud).toBe(`tb-${i}`);
      expect(u.batch!.index).toBe(i % 256);
      sizes.set(u.batch!.size, (sizes.get(u.batch!.size) ?? 0) + 1);
    });
    expect([...sizes].sort((a, b) => a[0] - b[0])).toEqual([
      [88, 88],
      [256, 512],
    ]);
    // Every Totebox is reported exactly once (each refused the read here).
    expect(result.outcomes.map((o) => o.totebox)).toEqual(targets(600).map((t) => t.id));
  });

  it("a grant that runs out between slices: the sent slice stands, the rest are denied with the reason", async () => {
    // The grant (600 s) is past its end by the time the second slice is signed.
    const { result, seen } = await run(300, {
      onRead: (count, clock) => {
        if (count === 256) clock.advance(601_000);
      },
    });
    expect(seen).toHaveLength(256);
    const denied = result.outcomes.slice(256);
    expect(denied).toHaveLength(44);
    for (const o of denied) {
      expect(o.status).toBe("denied");
      expect(o.code).toBe("PSP_ERR_CAP_EXPIRED");
    }
    expect(result.outcomes.slice(0, 256).every((o) => o.code !== "PSP_ERR_CAP_EXPIRED")).toBe(true);
    expect(result.error).toBeNull();
  });
  it("a grant already out when the first slice is signed fails the whole fan-out with its reason", async () => {
    const { result, seen } = await run(300, { startAfterMs: 601_000 });
    expect(seen).toHaveLength(0);
    expect(result.outcomes).toHaveLength(300);
    expect(result.outcomes.every((o) => o.status === "denied" && o.code === "PSP_ERR_CAP_EXPIRED")).toBe(
      true,
    );
    expect(result.error?.code).toBe("PSP_ERR_CAP_EXPIRED");
  });

  it("two reads per Totebox: both in its slice's batch, in order, each naming that Totebox and view", async () => {
    const { result, seen } = await run(300, { views: ["position", "ledger"] });
    expect(seen).toHaveLength(600);
    seen.forEach((cap, k) => {
      const u = decodeUnverified(cap);
      const i = k >> 1; // Totebox i's two reads are sent together, position first
      expect(u.claims.aud).toBe(`tb-${i}`);
      expect(u.claims.kind === "call" && u.claims.view).toBe(k % 2 === 0 ? "position" : "ledger");
      expect(u.batch!.size).toBe(i < 256 ? 512 : 88);
      expect(u.batch!.index).toBe(k % 512);
    });
    expect(result.outcomes).toHaveLength(300);
  });

  it("a read naming a row: every capability carries that row, and one without carries none", async () => {
    const { seen } = await run(3, { views: ["position", "ledger"], row: "unit-7" });
    expect(seen).toHaveLength(6);
    for (const cap of seen) {
      const c = decodeUnverified(cap).claims;
      expect(c.kind === "call" && c.row).toBe("unit-7");
    }
    const plain = await run(2);
    for (const cap of plain.seen) {
      const c = decodeUnverified(cap).claims;
      expect(c.kind === "call" && c.row).toBeUndefined();
    }
  });

  it("a Totebox whose session cannot be had is settled with the error; the rest of its slice is still sent", async () => {
    const ids = targets(300).map((t) => t.id);
    const { result, seen, brokenReleased } = await run(300, { brokenSession: ids[100]! });
    // Started in the dispatch loop itself (its link is up): the throw stays with that Totebox.
    expect(seen).toHaveLength(299);
    expect(result.outcomes.map((o) => o.totebox)).toEqual(ids);
    expect(result.outcomes[100]!.status).toBe("error");
    expect(result.outcomes.filter((o) => o.status === "error")).toHaveLength(1);
    expect(brokenReleased()).toBe(1); // its call slot is given back
  });

  it("cancelled in the middle of a slice: no later Totebox of that slice is started", async () => {
    const { result, seen } = await run(600, {
      onRead: (count, _clock, f) => {
        if (count === 100) f.cancel();
      },
    });
    expect(seen).toHaveLength(100);
    expect(result.outcomes.slice(100).every((o) => o.code === "ORCH_ERR_CANCELLED")).toBe(true);
  });

  it("cancelled between slices: the next slice is never signed nor sent, and every Totebox is reported once", async () => {
    const { result, seen } = await run(600, {
      onRead: (count, _clock, f) => {
        if (count === 256) f.cancel();
      },
    });
    expect(seen).toHaveLength(256);
    expect(result.outcomes.map((o) => o.totebox)).toEqual(targets(600).map((t) => t.id));
    expect(result.outcomes.slice(256).every((o) => o.code === "ORCH_ERR_CANCELLED")).toBe(true);
    expect(result.error?.code).toBe("ORCH_ERR_CANCELLED");
  });
});

/**
 * Every Totebox's budget starts when the fan-out does, so one timer times out all that are still
 * pending (fanout.ts start()). Here even-numbered Toteboxes refuse at once and odd ones never
 * answer, on a scheduler the test moves by hand.
 */
describe("one timer for every Totebox's budget", () => {
  async function run(opts: { n: number; toteboxTimeoutMs: number; deadlineMs: number }) {
    const clock = new ManualClock(T0);
    const scheduler = new ManualScheduler(T0);
    const { agg, grant } = await grantOver(["position"], clock);
    const pool = {
      // Never a slot at once: every Totebox goes through acquire().
      tryAcquire: () => undefined,
      acquire: async (id: string) => ({
        session: () => ({
          stub: {
            read: () =>
              Number(id.slice(3)) % 2 === 0
                ? Promise.reject(Object.assign(new Error("refused"), { code: "TOTEBOX_ERR_POLICY_DENIED" }))
                : new Promise(() => {}),
            cancel: () => Promise.resolve(),
          },
          authorized: false,
          confirm() {},
          end() {},
        }),
        link: { abandon() {} },
        hello: {},
        release() {},
      }),
      health: () => undefined,
      cut() {},
    } as unknown as LinkPool;
    const f = recordedFanOut({
      ...opts,
      views: ["position"],
      grant,
      agg,
      clock,
      pool,
      scheduler,
    });
    f.start();
    // Let every Totebox be asked and the refusals settle.
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    return { f, scheduler };
  }

  it("times out exactly the Toteboxes still pending when the budget ends, and nothing fires after", async () => {
    const { f, scheduler } = await run({ n: 6, toteboxTimeoutMs: 5_000, deadlineMs: 60_000 });
    expect(f.events(0, 100).events.map((e) => e.totebox)).toEqual(["tb-0", "tb-2", "tb-4"]);
    scheduler.advance(4_999);
    expect(f.finished).toBe(false);
    scheduler.advance(1);
    const r = await f.done;
    expect(r.outcomes.map((o) => [o.totebox, o.status, o.code])).toEqual([
      ["tb-0", "denied", "TOTEBOX_ERR_POLICY_DENIED"],
      ["tb-1", "timeout", "ORCH_ERR_TOTEBOX_TIMEOUT"],
      ["tb-2", "denied", "TOTEBOX_ERR_POLICY_DENIED"],
      ["tb-3", "timeout", "ORCH_ERR_TOTEBOX_TIMEOUT"],
      ["tb-4", "denied", "TOTEBOX_ERR_POLICY_DENIED"],
      ["tb-5", "timeout", "ORCH_ERR_TOTEBOX_TIMEOUT"],
    ]);
    // Each outcome carries its Totebox's tags as a frozen plain object.
    expect(r.outcomes[0]!.tags).toEqual({ region: "west" });
    expect(Object.isFrozen(r.outcomes[0]!.tags)).toBe(true);
    expect(Object.getPrototypeOf(r.outcomes[0]!.tags)).toBe(Object.prototype);
    // Every progress event counts the Toteboxes that answered: none did.
    expect(f.events(0, 100).events.map((e) => e.answered)).toEqual([0, 0, 0, 0, 0, 0]);
    // Paged: from a cursor, at most `max`, in the order they settled; done once all are read.
    const page = f.events(2, 3);
    expect(page.events.map((e) => [e.seq, e.totebox, e.status, e.targeted])).toEqual([
      [3, "tb-4", "denied", 6],
      [4, "tb-1", "timeout", 6],
      [5, "tb-3", "timeout", 6],
    ]);
    expect([page.cursor, page.done]).toEqual([5, false]);
    expect(f.events(5, 100)).toMatchObject({ cursor: 6, done: true });
    expect(f.events(9, 100)).toEqual({ events: [], cursor: 6, done: true });
    expect(f.events(0, 0)).toEqual({ events: [], cursor: 0, done: false });
    // A cursor or count that is no whole number is read as its floor, or 0 (NaN, negative).
    expect(f.events(1.7, 1.9).events.map((e) => e.seq)).toEqual([2]);
    expect(f.events(Number.NaN, 2).events.map((e) => e.seq)).toEqual([1, 2]);
    expect(f.events(-3, Number.NaN)).toEqual({ events: [], cursor: 0, done: false });
    expect(f.events(4, -1)).toEqual({ events: [], cursor: 4, done: false });
    expect(f.events(4, Number.POSITIVE_INFINITY)).toMatchObject({ cursor: 6, done: true });
    expect(f.answered).toBe(0);
    // Both timers (budget and deadline) are gone with the fan-out.
    expect(scheduler.pending).toBe(0);
  });

  it("a fan-out settled before its budget ends leaves no timer behind", async () => {
    const { f, scheduler } = await run({ n: 1, toteboxTimeoutMs: 5_000, deadlineMs: 60_000 });
    expect((await f.done).outcomes.map((o) => o.status)).toEqual(["denied"]);
    expect(scheduler.pending).toBe(0);
  });

  it("a deadline equal to the budget wins: the Toteboxes are reported as cut by the deadline", async () => {
    const { f, scheduler } = await run({ n: 4, toteboxTimeoutMs: 5_000, deadlineMs: 5_000 });
    scheduler.advance(5_000);
    const r = await f.done;
    expect(r.outcomes.filter((o) => o.status === "timeout").map((o) => o.code)).toEqual([
      "ORCH_ERR_DEADLINE",
      "ORCH_ERR_DEADLINE",
    ]);
    expect(scheduler.pending).toBe(0);
  });
});

/**
 * Which way each read goes (fanout.ts #ask, #sendDirect, #onDirect): a pool whose link records direct requests and whose
 * session stub records capnweb reads, both refusing or answering as the test says.
 */
describe("direct or capnweb, and the fallback", () => {
  interface Script {
    readonly views: readonly string[];
    /** What hello announced. */
    readonly directMethods?: readonly number[];
    /**
     * The direct reply for read i: "unknown" refuses it with TOTEBOX_ERR_SESSION_UNKNOWN,
     * "denied" with TOTEBOX_ERR_POLICY_DENIED, "answered" replies (with bytes no check accepts),
     * "hang" never replies (and the fan-out is cancelled once every read has been sent).
     */
    readonly direct: (i: number) => "unknown" | "denied" | "answered" | "hang";
    /** What a capnweb read gets: refused by policy (default), or an answer no check accepts. */
    readonly capnweb?: "denied" | "answered";
  }
  /** `startAtOnce`: the pool has a free slot at once (tryAcquire), as for a link that is up. */
  async function run(script: Script, startAtOnce = false) {
    const clock = new ManualClock(T0);
    const { agg, grant } = await grantOver(script.views, clock);
    const direct: string[] = [];
    const viaCapnweb: string[] = [];
    const ended: boolean[] = [];
    let handles = 0;
    let confirmed = 0;
    const hexOf = (b: Uint8Array) => Buffer.from(b).toString("hex");
    const refuse = (code: string) => Promise.reject(Object.assign(new Error(code), { code }));
    const session = {
      read(cap: Uint8Array) {
        viaCapnweb.push(hexOf(cap));
        if (script.capnweb === "answered") return Promise.resolve({ totebox: "tb-0", note: "not an answer" });
        return refuse("TOTEBOX_ERR_POLICY_DENIED");
      },
    };
    const abandoned: number[] = [];
    let f: FanOut | undefined;
    // As psp's link: requestWith returns the request's id and calls the sink later, once; abandon
    // fails an open request at once.
    const open = new Map<number, { sink: ReplySink; tag: number }>();
    const link = {
      requestWith(_method: number, payload: Uint8Array[], sink: ReplySink, tag: number) {
        const i = direct.length;
        direct.push(hexOf(payload[0]!));
        const how = script.direct(i);
        const id = 100 + i;
        open.set(id, { sink, tag });
        const settle = (then: (s: ReplySink, t: number) => void) =>
          queueMicrotask(() => {
            const o = open.get(id);
            if (!o) return;
            open.delete(id);
            then(o.sink, o.tag);
          });
        // Once every read is sent, a Totebox with a hanging read is cancelled.
        const hangs = script.views.some((_, k) => script.direct(k) === "hang");
        if (hangs && direct.length === script.views.length) queueMicrotask(() => f!.cancel());
        if (how === "answered") settle((s, t) => s.reply(t, [new Uint8Array(8), new Uint8Array(8)]));
        else if (how !== "hang") {
          const code = how === "unknown" ? "TOTEBOX_ERR_SESSION_UNKNOWN" : "TOTEBOX_ERR_POLICY_DENIED";
          settle((s, t) => s.fail(t, Object.assign(new Error(code), { code })));
        }
        return id;
      },
      abandon(id: number) {
        abandoned.push(id);
        const o = open.get(id);
        if (!o) return;
        open.delete(id);
        o.sink.fail(o.tag, Object.assign(new Error("abandoned"), { code: "PSP_ERR_ABANDONED" }));
      },
    };
    const lease = {
      link,
      hello: { directMethods: script.directMethods },
      // The first handle is a session the pool believes authorized; any later one a fresh one.
      session: () => {
        const authorized = handles++ === 0;
        return {
          stub: session,
          authorized,
          confirm: () => {
            confirmed++;
          },
          end: (forget: boolean) => ended.push(forget),
        };
      },
      release() {},
    };
    let waited = 0;
    const pool = {
      acquire: async () => {
        waited++;
        return lease;
      },
      tryAcquire: () => (startAtOnce ? lease : undefined),
      health: () => undefined,
      cut() {},
    } as unknown as LinkPool;
    f = recordedFanOut({ n: 1, views: script.views, grant, agg, clock, pool });
    f.start();
    const result = await f.done;
    // The path asked for is the path taken.
    expect(waited).toBe(startAtOnce ? 0 : 1);
    return { result, direct, viaCapnweb, ended, handles, confirmed, abandoned };
  }

  const runAs = (startAtOnce: boolean, script: Script) => run(script, startAtOnce);
  // Each case both ways a Totebox starts: after waiting on acquire(), and at once in the dispatch
  // loop (tryAcquire), as every Totebox whose link is up does in production.
  for (const startAtOnce of [false, true]) {
    describe(startAtOnce ? "started at once" : "started after acquire()", () => {
      it("a session the Totebox no longer holds: authorized again once, the same capability sent over capnweb", async () => {
        const r = await runAs(startAtOnce, {
          views: ["position"],
          directMethods: [1],
          direct: () => "unknown",
        });
        expect(r.direct).toHaveLength(1);
        expect(r.viaCapnweb).toEqual(r.direct);
        expect(r.handles).toBe(2);
        // The stale session is forgotten at once; the fresh one, refused, is forgotten when settled.
        expect(r.ended).toEqual([true, true]);
        expect(r.result.outcomes[0]).toMatchObject({ status: "denied", code: "TOTEBOX_ERR_POLICY_DENIED" });
      });

      it("only the reads refused for want of a session are sent again; a read the Totebox answered is not", async () => {
        // Read 0 reached a session (here: refused by policy, so the fan-out reports that); read 1 did not.
        const r = await runAs(startAtOnce, {
          views: ["position", "ledger"],
          directMethods: [1],
          direct: (i) => (i === 0 ? "denied" : "unknown"),
        });
        expect(r.direct).toHaveLength(2);
        expect(r.viaCapnweb).toEqual([]); // read 0's refusal is the answer: nothing is resent
        expect(r.result.outcomes[0]).toMatchObject({ status: "denied", code: "TOTEBOX_ERR_POLICY_DENIED" });
        const r2 = await runAs(startAtOnce, {
          views: ["position", "ledger"],
          directMethods: [1],
          direct: () => "unknown",
        });
        expect(r2.viaCapnweb).toEqual(r2.direct); // both refused for want of a session: both resent, once
        // Read 0 answered directly, read 1 refused for want of a session: only read 1 goes again,
        // over capnweb on a fresh session, which its answer confirms.
        const r3 = await runAs(startAtOnce, {
          views: ["position", "ledger"],
          directMethods: [1],
          direct: (i) => (i === 0 ? "answered" : "unknown"),
          capnweb: "answered",
        });
        expect(r3.direct).toHaveLength(2);
        expect(r3.viaCapnweb).toEqual([r3.direct[1]]);
        expect(r3.handles).toBe(2);
        expect(r3.confirmed).toBe(1);
        // Both answers were then checked, each by its own path's rules, and refused (cut as forged).
        expect(r3.result.outcomes[0]).toMatchObject({ status: "error" });
      });

      it("a read refused while an earlier one still hangs waits for it; the Totebox is cancelled whole", async () => {
        // Read 1 is refused at once, read 0 never answers: the refusal waits for read 0.
        const r = await runAs(startAtOnce, {
          views: ["position", "ledger"],
          directMethods: [1],
          direct: (i) => (i === 0 ? "hang" : "denied"),
        });
        expect(r.direct).toHaveLength(2);
        expect(r.result.outcomes[0]).toMatchObject({ code: "ORCH_ERR_CANCELLED" });
        expect(r.abandoned).toEqual([100, 101]);
      });

      it("a Totebox settled without its answers (here: cancelled) has its direct reads abandoned at the link", async () => {
        const r = await runAs(startAtOnce, {
          views: ["position", "ledger"],
          directMethods: [1],
          direct: () => "hang",
        });
        expect(r.direct).toHaveLength(2);
        expect(r.abandoned).toEqual([100, 101]);
        expect(r.result.outcomes[0]).toMatchObject({ code: "ORCH_ERR_CANCELLED" });
      });
    });
  }

  it("direct replies reach their own Totebox in any order; each reports its first refusal in read order", async () => {
    const clock = new ManualClock(T0);
    const views = ["position", "ledger"];
    const { agg, grant } = await grantOver(views, clock);
    // Who each request is for, read from its capability (not from the tag the fan-out chose).
    const sent: Array<{ sink: ReplySink; tag: number; aud: string; view: string }> = [];
    const link = {
      requestWith(_method: number, payload: Uint8Array[], sink: ReplySink, tag: number) {
        const c = decodeUnverified(payload[0]!).claims;
        sent.push({ sink, tag, aud: c.aud, view: c.kind === "call" ? (c.view ?? "") : "" });
        return sent.length;
      },
      abandon() {},
    };
    const session = { read: () => Promise.reject(new Error("no capnweb read expected")) };
    const lease = {
      link,
      hello: { directMethods: [1] },
      session: () => ({ stub: session, authorized: true, confirm() {}, end() {} }),
      release() {},
    };
    const pool = {
      acquire: async () => lease,
      tryAcquire: () => lease,
      health: () => undefined,
      cut() {},
    } as unknown as LinkPool;
    const f = recordedFanOut({ n: 3, views, grant, agg, clock, pool });
    f.start();
    while (sent.length < 6) await new Promise((r) => setImmediate(r));
    // Not in the order sent, and not the same order for every Totebox: tb-0 and tb-2 have their
    // ledger read refused first, tb-1 its position read. Read order decides, not arrival.
    const order = [
      "tb-0 ledger",
      "tb-1 position",
      "tb-2 ledger",
      "tb-1 ledger",
      "tb-0 position",
      "tb-2 position",
    ];
    const byName = new Map(sent.map((x) => [`${x.aud} ${x.view}`, x]));
    for (const name of order) {
      const x = byName.get(name)!;
      // Each refusal says which Totebox and read it was (its message is the outcome's reason).
      x.sink.fail(x.tag, Object.assign(new Error(name), { code: "TOTEBOX_ERR_POLICY_DENIED" }));
    }
    const r = await f.done;
    expect(r.outcomes.map((o) => [o.totebox, o.code, o.reason])).toEqual([
      ["tb-0", "TOTEBOX_ERR_POLICY_DENIED", "tb-0 position"],
      ["tb-1", "TOTEBOX_ERR_POLICY_DENIED", "tb-1 position"],
      ["tb-2", "TOTEBOX_ERR_POLICY_DENIED", "tb-2 position"],
    ]);
  });

  it("a Totebox that did not announce direct reads in hello is read over capnweb only", async () => {
    for (const directMethods of [undefined, [], [7]]) {
      const r = await run({
        views: ["position"],
        ...(directMethods ? { directMethods } : {}),
        direct: () => "denied",
      });
      expect(r.direct).toEqual([]);
      expect(r.viaCapnweb).toHaveLength(1);
    }
  });
});
