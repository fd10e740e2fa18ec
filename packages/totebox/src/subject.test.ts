import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  connectPsp,
  createIdentity,
  DIRECT_READ_METHOD,
  directReadPayload,
  encodeDirectReadBody,
  type Identity,
  issueCallCapability,
  type issueGrant,
  ManualClock,
  openCommander,
  type PspLink,
} from "@os-orchestration/psp";
import fc from "fast-check";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initArchive, openArchive } from "./archive.ts";
import type { ToteboxRemote, ToteboxSessionRemote } from "./remote-api.ts";
import { ToteboxServer } from "./server.ts";
import { CANCEL_LIMITS, ReadCancellations } from "./subject.ts";
import { aliceGrant, hubCapability, trustHubAndAlice } from "./test-peers.ts";
import type { PooledViewRunner } from "./view-runner.ts";

const NOW = Date.parse("2026-11-01T12:00:00Z");

// Counts to a billion before its one row (minutes of SQLite time): only a cancel, or its 60 s
// timeout, stops it. Deterministically "still running" for as long as any test here needs.
const SLOW_VIEW = `
  slow:
    description: Counts to a billion before answering.
    sql: |
      WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)
      SELECT count(*) AS n FROM c
    columns: { n: integer }
    timeout_ms: 60000
`;

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error("expected a refusal");
    },
    (e: unknown) => e as { code?: string },
  );

describe("cancelling a read over PSP (pool runner, one query process)", () => {
  let root: string;
  let server: ToteboxServer;
  let agg: Identity;
  let op: Identity;
  let link: PspLink;
  let api: ToteboxRemote;
  const clock = new ManualClock(NOW);

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "tb-cancel-"));
    const dir = join(root, "archive");
    await initArchive({ dir, id: "tb-1", kind: "property", name: "Quay House", tags: { region: "west" } });
    const policyFile = join(dir, "policy.yaml");
    writeFileSync(policyFile, readFileSync(policyFile, "utf8").replace(/^views:\n/m, `views:${SLOW_VIEW}`));
    [agg, op] = await Promise.all([createIdentity({ name: "agg" }), createIdentity({ name: "op" })]);
    const a = await openArchive(dir);
    trustHubAndAlice(a.db, agg, op, NOW);
    a.db.close();
    server = await ToteboxServer.start({
      dir,
      clock,
      viewRunner: "pool",
      viewPool: { poolSize: 1 },
      logger: pino({ level: "silent" }),
    });
    link = await connectPsp({
      identity: agg,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: server.identity.fingerprint,
    });
    api = openCommander<ToteboxRemote>(link);
  });
  afterAll(async () => {
    link?.close();
    await server?.close();
    rmSync(root, { recursive: true, force: true });
  });

  const pool = () => (server.runner as PooledViewRunner).stats();
  const grantFor = (o: Partial<Parameters<typeof issueGrant>[0]> = {}) =>
    aliceGrant(agg, op, clock, { views: ["position", "slow"], ...o });
  const capFor = (grant: Uint8Array, o: Partial<Parameters<typeof issueCallCapability>[0]> = {}) =>
    hubCapability(agg, grant, clock, { view: "slow", ...o });
  /** Audit entries appended since `from`, for one action. */
  const auditSince = (from: number, action: string) =>
    server.auditLog
      .entries(from, server.auditLog.size() - from)
      .map((r) => r.entry)
      .filter((e) => e.action === action);
  /** A session whose authorize has been answered, so its calls reach the Totebox in order. */
  const openSession = async (g: Uint8Array): Promise<{ s: ToteboxSessionRemote }> => {
    const s = api.authorize(g);
    await s.read(capFor(g, { view: "position" }), "position", { as_of: "2026-10-31" });
    // Wrapped: the session stub is thenable, and an async function would unwrap it.
    return { s };
  };

  it("kills a running read's query process and replaces it; the read rejects CANCELLED", async () => {
    const g = grantFor();
    const { s } = await openSession(g);
    const before = pool();
    const auditFrom = server.auditLog.size();
    const cap = capFor(g);
    const read = refusal(s.read(cap, "slow"));
    // The read is delivered before the cancel (one link, calls in order) and dispatched at once
    // to the only (idle) query process: it is running when the cancel arrives.
    const reply = await s.cancel(cap);
    expect(reply).toEqual({ cancelled: true, state: "running" });
    expect((await read).code).toBe("TOTEBOX_ERR_CANCELLED");
    expect(pool()).toMatchObject({
      cancelled: before.cancelled + 1,
      cancelKilled: before.cancelKilled + 1,
      spawned: before.spawned + 1,
      killed: before.killed,
      children: 1,
      running: 0,
    });
    // The replacement serves the next read.
    const ok = await s.read(capFor(g, { view: "position" }), "position", { as_of: "2026-10-31" });
    expect(ok.rowCount).toBe(1);

    // Both the cancel and the cancelled read are audited, by capability id only.
    const [cancel] = auditSince(auditFrom, "cancel");
    const reads = auditSince(auditFrom, "read");
    expect(cancel).toMatchObject({
      outcome: "ok",
      target: "slow",
      detail: { cancelled: true, state: "running" },
    });
    expect(reads[0]).toMatchObject({ outcome: "TOTEBOX_ERR_CANCELLED", capability: cancel!.capability });
    expect(cancel!.capability).toMatch(/^[0-9a-f]{2,128}$/);
    // The token's bytes are nowhere in the log: its signature (last 64 bytes) least of all.
    const sigHex = Buffer.from(cap.subarray(cap.length - 64)).toString("hex");
    for (const e of [cancel, ...reads]) expect(JSON.stringify(e)).not.toContain(sigHex.slice(0, 32));
    expect(server.stats.readsCancelled).toBeGreaterThanOrEqual(1);
  });

  it("cancel(capability) on the session stops a read that came as a direct read", async () => {
    const g = grantFor();
    const { s } = await openSession(g);
    const cap = capFor(g);
    const body = encodeDirectReadBody({
      grantHash: createHash("sha256").update(g).digest(),
      view: "slow",
      params: {},
      row: null,
    });
    // The direct read leaves at once; the cancel, a capnweb call, at the end of this turn.
    const read = refusal(link.request(DIRECT_READ_METHOD, directReadPayload(cap, body)));
    expect(await s.cancel(cap)).toMatchObject({ cancelled: true });
    expect((await read).code).toBe("TOTEBOX_ERR_CANCELLED");
    // The session serves on, directly too.
    const ok = await link.request(
      DIRECT_READ_METHOD,
      directReadPayload(
        capFor(g, { view: "position" }),
        encodeDirectReadBody({
          grantHash: createHash("sha256").update(g).digest(),
          view: "position",
          params: { as_of: "2026-10-31" },
          row: null,
        }),
      ),
    );
    expect(ok).toHaveLength(2);
  });

  it("drops a queued read without touching the running one's process", async () => {
    const g = grantFor();
    const { s } = await openSession(g);
    const before = pool();
    const running = capFor(g);
    const queued = capFor(g);
    const first = refusal(s.read(running, "slow"));
    const second = refusal(s.read(queued, "slow"));
    expect(await s.cancel(queued)).toEqual({ cancelled: true, state: "queued" });
    expect((await second).code).toBe("TOTEBOX_ERR_CANCELLED");
    expect(pool()).toMatchObject({ cancelKilled: before.cancelKilled, running: 1, queued: 0 });
    expect(await s.cancel(running)).toEqual({ cancelled: true, state: "running" });
    expect((await first).code).toBe("TOTEBOX_ERR_CANCELLED");
    expect(pool()).toMatchObject({
      cancelled: before.cancelled + 2,
      cancelKilled: before.cancelKilled + 1,
      spawned: before.spawned + 1,
    });
  });

  it("a cancel that overtakes its read makes the Totebox refuse that read before any SQL", async () => {
    const g = grantFor();
    const { s } = await openSession(g);
    const cap = capFor(g, { view: "position" });
    expect(await s.cancel(cap)).toEqual({ cancelled: false, state: "unknown" });
    const executed = server.stats.viewsExecuted;
    const spawned = pool().spawned;
    expect((await refusal(s.read(cap, "position", { as_of: "2026-10-31" }))).code).toBe(
      "TOTEBOX_ERR_CANCELLED",
    );
    expect(server.stats.viewsExecuted).toBe(executed);
    expect(pool().spawned).toBe(spawned);
    // Cancelling a read that already answered changes nothing and says so.
    const done = capFor(g, { view: "position" });
    await s.read(done, "position", { as_of: "2026-10-31" });
    expect(await s.cancel(done)).toEqual({ cancelled: false, state: "unknown" });
  });

  it("a forged, misdirected or foreign capability cannot cancel; the read keeps running", async () => {
    const g = grantFor();
    const { s } = await openSession(g);
    const before = pool();
    const auditFrom = server.auditLog.size();
    const cap = capFor(g);
    const read = refusal(s.read(cap, "slow"));

    const forged = cap.slice();
    forged[forged.length - 1]! ^= 0x01; // same cti, signature broken
    expect((await refusal(s.cancel(forged))).code).toBe("PSP_ERR_CAP_SIGNATURE");

    const wide = grantFor({ toteboxIds: ["tb-1", "tb-2"] });
    const elsewhere = capFor(wide, { totebox: "tb-2" });
    expect((await refusal(api.authorize(wide).cancel(elsewhere))).code).toBe("PSP_ERR_CAP_AUDIENCE");

    // A genuine capability, but of another grant than this session's.
    expect((await refusal(s.cancel(capFor(grantFor({ lifetimeSeconds: 1800 }))))).code).toBe(
      "PSP_ERR_CAP_GRANT_MISMATCH",
    );
    expect((await refusal(s.cancel(new Uint8Array([1, 2, 3])))).code).toMatch(/^PSP_ERR_CAP_/);

    expect(pool()).toMatchObject({ running: 1, cancelKilled: before.cancelKilled });
    const refused = auditSince(auditFrom, "cancel");
    expect(refused.map((e) => e.outcome)).toEqual([
      "PSP_ERR_CAP_SIGNATURE",
      "PSP_ERR_CAP_AUDIENCE",
      "PSP_ERR_CAP_GRANT_MISMATCH",
      expect.stringMatching(/^PSP_ERR_CAP_/),
    ]);

    // The owner of the capability still can.
    expect(await s.cancel(cap)).toEqual({ cancelled: true, state: "running" });
    expect((await read).code).toBe("TOTEBOX_ERR_CANCELLED");
  });

  it("only a read can be cancelled", async () => {
    const g = grantFor({ actions: ["read", "verify-ledger"] });
    const { s } = await openSession(g);
    const cmd = issueCallCapability({
      grant: g,
      totebox: "tb-1",
      command: "verify-ledger",
      action: "verify-ledger",
      clock,
      signer: agg.privateKey,
    });
    expect((await refusal(s.cancel(cmd))).code).toBe("TOTEBOX_ERR_PARAM");
  });
});

describe("ReadCancellations", () => {
  const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
  console.log("fast-check seed", seed);

  it("refuses a read whose cancel came first, until the capability's expiry", () => {
    const r = new ReadCancellations();
    expect(r.cancel("aa", 2_000, 1_000)).toEqual({ cancelled: false, state: "unknown" });
    expect(() => r.begin("aa", 1_500)).toThrow(expect.objectContaining({ code: "TOTEBOX_ERR_CANCELLED" }));
    // Remembered once: the id was consumed by that refusal.
    expect(r.remembered).toBe(0);
    r.cancel("bb", 2_000, 1_000);
    const late = r.begin("bb", 2_001); // past expiry the capability itself no longer verifies
    expect(late.signal.aborted).toBe(false);
    // A cancel for a capability already expired is not remembered at all.
    r.cancel("cc", 999, 1_000);
    expect(r.remembered).toBe(0);
  });

  it("aborts a registered read and reports whether it had started", () => {
    const r = new ReadCancellations();
    const q = r.begin("01", 0);
    const run = r.begin("02", 0);
    run.onStart();
    expect(r.inFlight).toBe(2);
    expect(r.cancel("01", 10, 0)).toEqual({ cancelled: true, state: "queued" });
    expect(r.cancel("02", 10, 0)).toEqual({ cancelled: true, state: "running" });
    expect(q.signal.aborted && run.signal.aborted).toBe(true);
    expect(r.inFlight).toBe(0);
    const done = r.begin("03", 0);
    r.end("03");
    expect(r.cancel("03", 10, 0)).toEqual({ cancelled: false, state: "unknown" });
    expect(done.signal.aborted).toBe(false);
  });

  it("stays bounded, forgetting the oldest cancels first (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 200 }),
        (max, ids) => {
          const r = new ReadCancellations(max);
          for (const id of ids) r.cancel(id.toString(16).padStart(2, "0"), 1_000, 0);
          expect(r.remembered).toBeLessThanOrEqual(max);
          // The most recent `max` distinct ids are exactly the ones still refused.
          const recent: string[] = [];
          for (const id of [...ids].reverse()) {
            const h = id.toString(16).padStart(2, "0");
            if (!recent.includes(h)) recent.push(h);
          }
          const kept = new Set(recent.slice(0, max));
          for (const h of new Set(recent)) {
            const refused = (() => {
              try {
                r.begin(h, 0);
                return false;
              } catch {
                return true;
              }
            })();
            expect(refused).toBe(kept.has(h));
          }
        },
      ),
      { seed },
    );
    expect(CANCEL_LIMITS.maxRemembered).toBe(10_000);
  });
});
