import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  connectPsp,
  createIdentity,
  type Identity,
  issueCallCapability,
  type issueGrant,
  ManualClock,
  openCommander,
  type PspLink,
} from "@os-orchestration/psp";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initArchive, openArchive } from "./archive.ts";
import { generateDemoData } from "./demo-data.ts";
import { ToteboxServer } from "./server.ts";
import { aliceGrant, hubCapability, trustHubAndAlice } from "./test-peers.ts";

// In-process server: lets the test read the runtime's counters, which is how we prove that no
// SQL and no command runs before the capability chain and the owner's policy both allow it.
const NOW = Date.parse("2026-11-01T12:00:00Z");

interface Api {
  hello(): Promise<{ id: string; state: string }>;
  authorize(grant: Uint8Array): Session;
}
interface Session {
  read(cap: Uint8Array, view: string, params?: unknown, row?: string): Promise<{ rowCount: number }>;
  command(cap: Uint8Array, name: string, args: unknown, key: string): Promise<unknown>;
}

describe("a Totebox runs nothing before the capability chain and its policy allow it", () => {
  let root: string;
  let server: ToteboxServer;
  let agg: Identity;
  let op: Identity;
  let stranger: Identity;
  let link: PspLink;
  let api: Api;
  const clock = new ManualClock(NOW);

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "tb-server-"));
    const dir = join(root, "archive");
    await initArchive({ dir, id: "tb-1", kind: "property", name: "Quay House", tags: { region: "west" } });
    [agg, op, stranger] = await Promise.all([
      createIdentity({ name: "agg" }),
      createIdentity({ name: "op" }),
      createIdentity({ name: "stranger" }),
    ]);
    const a = await openArchive(dir);
    generateDemoData(a.db, { kind: "property", seed: 3, entityId: "tb-1", asOf: "2026-10-31" });
    trustHubAndAlice(a.db, agg, op, NOW);
    a.db.close();
    server = await ToteboxServer.start({
      dir,
      clock,
      viewRunner: "in-process",
      logger: pino({ level: "silent" }),
    });
    link = await connectPsp({
      identity: agg,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: server.identity.fingerprint,
    });
    api = openCommander<Api>(link) as unknown as Api;
  });
  afterAll(async () => {
    link?.close();
    await server?.close();
    rmSync(root, { recursive: true, force: true });
  });

  const grantFor = (o: Partial<Parameters<typeof issueGrant>[0]> = {}) =>
    aliceGrant(agg, op, clock, {
      views: ["position", "occupancy"],
      actions: ["read", "verify-ledger"],
      ...o,
    });
  const capFor = (grant: Uint8Array, o: Partial<Parameters<typeof issueCallCapability>[0]> = {}) =>
    hubCapability(agg, grant, clock, o);

  it("a valid chain runs exactly one query", async () => {
    const before = server.stats.viewsExecuted;
    const g = grantFor();
    const r = await api.authorize(g).read(capFor(g), "position", { as_of: "2026-10-31" });
    expect(r.rowCount).toBe(1);
    expect(server.stats.viewsExecuted).toBe(before + 1);
  });

  it.each([
    [
      "forged (signature altered)",
      () => {
        const g = grantFor();
        const cap = capFor(g).slice();
        cap[cap.length - 1]! ^= 0x01;
        return { g, cap };
      },
      /PSP_ERR_CAP_SIGNATURE/,
    ],
    [
      "expired",
      () => {
        const g = grantFor({ lifetimeSeconds: 3600, notBefore: NOW / 1000 - 7200 });
        return { g, cap: capFor(grantFor(), {}) };
      },
      /PSP_ERR_CAP_(EXPIRED|GRANT_MISMATCH)/,
    ],
    [
      "misdirected (for another Totebox)",
      () => {
        const g = grantFor({ toteboxIds: ["tb-1", "tb-2"] });
        return { g, cap: capFor(g, { totebox: "tb-2" }) };
      },
      /PSP_ERR_CAP_AUDIENCE/,
    ],
    [
      "widened (a view outside the grant)",
      () => {
        const g = grantFor();
        const wide = grantFor({ views: ["position", "occupancy", "intercompany"] });
        return { g, cap: capFor(wide, { view: "intercompany" }) };
      },
      /PSP_ERR_CAP_(GRANT_MISMATCH|SCOPE)/,
    ],
  ])("refuses a %s capability before any SQL", async (_name, make, code) => {
    const before = server.stats.viewsExecuted;
    const { g, cap } = make();
    const err = (await api
      .authorize(g)
      .read(cap as Uint8Array, "position")
      .then(
        () => undefined,
        (e: unknown) => e,
      )) as { code?: string } | undefined;
    expect(err?.code).toMatch(code);
    expect(server.stats.viewsExecuted).toBe(before);
  });

  it("refuses a replayed capability before any SQL", async () => {
    const g = grantFor();
    const cap = capFor(g);
    const s = api.authorize(g);
    await s.read(cap, "position");
    const before = server.stats.viewsExecuted;
    await expect(s.read(cap, "position")).rejects.toMatchObject({ code: "PSP_ERR_CAP_REPLAYED" });
    expect(server.stats.viewsExecuted).toBe(before);
  });

  it("refuses a request that differs from what the capability names", async () => {
    const g = grantFor();
    const before = server.stats.viewsExecuted;
    await expect(api.authorize(g).read(capFor(g), "occupancy")).rejects.toMatchObject({
      code: "PSP_ERR_CAP_SCOPE",
    });
    expect(server.stats.viewsExecuted).toBe(before);
  });

  it("refuses an expired grant once the clock passes its end, mid-session", async () => {
    const g = grantFor({ lifetimeSeconds: 600 });
    const s = api.authorize(g);
    await s.read(capFor(g), "position");
    clock.advance(601_000 + 60_000);
    const before = server.stats.viewsExecuted;
    await expect(s.read(capFor(grantFor()), "position")).rejects.toMatchObject({
      code: "PSP_ERR_CAP_EXPIRED",
    });
    await expect(s.read(new Uint8Array(10), "position")).rejects.toMatchObject({
      code: expect.stringMatching(/PSP_ERR_CAP_/),
    });
    expect(server.stats.viewsExecuted).toBe(before);
  });

  it("refuses a command outside the grant before running it, and runs one inside it", async () => {
    const g = grantFor();
    const before = server.stats.commandsExecuted;
    const snap = issueCallCapability({
      grant: g,
      totebox: "tb-1",
      command: "snapshot",
      action: "snapshot",
      clock,
      signer: agg.privateKey,
    }).valueOf();
    await expect(api.authorize(g).command(snap as Uint8Array, "snapshot", {}, "k-1")).rejects.toMatchObject({
      code: "PSP_ERR_CAP_SCOPE",
    });
    expect(server.stats.commandsExecuted).toBe(before);
    const v = issueCallCapability({
      grant: g,
      totebox: "tb-1",
      command: "verify-ledger",
      action: "verify-ledger",
      clock,
      signer: agg.privateKey,
    });
    const r = (await api.authorize(g).command(v, "verify-ledger", {}, "k-2")) as { result: { ok: boolean } };
    expect(r.result.ok).toBe(true);
    expect(server.stats.commandsExecuted).toBe(before + 1);
  });

  it("a grant for another aggregator key is refused at authorize", async () => {
    const g = grantFor({ aggregatorKey: stranger.publicKey });
    const s = api.authorize(g);
    await expect(s.read(new Uint8Array(1), "position")).rejects.toMatchObject({
      code: "PSP_ERR_CAP_GRANT_MISMATCH",
    });
  });
});
