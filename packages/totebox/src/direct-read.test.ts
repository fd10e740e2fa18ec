import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  connectPsp,
  createIdentity,
  DIRECT_READ_METHOD,
  decodeDirectReadReply,
  decodeResult,
  decodeUnverified,
  directReadPayload,
  encodeDirectReadBody,
  type Identity,
  type issueCallCapability,
  type issueGrant,
  ManualClock,
  openCommander,
  type PspLimits,
  type PspLink,
  releaseStub,
  requestHash,
  verifyReceipt,
} from "@os-orchestration/psp";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { initArchive, openArchive } from "./archive.ts";
import type { ToteboxRemote } from "./remote-api.ts";
import { ToteboxServer } from "./server.ts";
import { MAX_SESSIONS_PER_LINK } from "./subject.ts";
import { aliceGrant, hubCapability, trustHubAndAlice } from "./test-peers.ts";

/**
 * Direct reads (psp direct-read.ts) at a real Totebox over real TLS: served only under a session
 * this link authorized and still holds, with every check of a capnweb read, audited the same way.
 */

const NOW = Date.parse("2026-11-01T12:00:00Z");
const PARAMS = { as_of: "2026-10-31" };

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error("expected a refusal");
    },
    (e: unknown) => e as { code?: string; message?: string },
  );

/**
 * A Totebox (in-process views) in `root` that trusts a fresh aggregator identity and operator
 * "alice" of tenant acme, started on loopback with `limits`.
 */
async function startTrustingTotebox(root: string, clock: ManualClock, limits?: Partial<PspLimits>) {
  const dir = join(root, "archive");
  await initArchive({ dir, id: "tb-1", kind: "property", name: "Quay House", tags: { region: "west" } });
  const [agg, op] = await Promise.all([createIdentity({ name: "agg" }), createIdentity({ name: "op" })]);
  const a = await openArchive(dir);
  trustHubAndAlice(a.db, agg, op, NOW);
  a.db.close();
  const server = await ToteboxServer.start({
    dir,
    clock,
    viewRunner: "in-process",
    logger: pino({ level: "silent" }),
    ...(limits ? { limits } : {}),
  });
  return { server, agg, op };
}

describe("direct reads at a real Totebox", () => {
  let root: string;
  let server: ToteboxServer;
  let agg: Identity;
  let op: Identity;
  const clock = new ManualClock(NOW);
  const links: PspLink[] = [];

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "tb-direct-"));
    ({ server, agg, op } = await startTrustingTotebox(root, clock));
  });
  afterAll(async () => {
    for (const l of links) l.close();
    await server?.close();
    rmSync(root, { recursive: true, force: true });
  });

  /** A fresh link from the aggregator; releases leave at once so a test can wait for them. */
  const connect = async () => {
    const link = await connectPsp({
      identity: agg,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: server.identity.fingerprint,
      limits: { releaseDelayMs: 0 },
    });
    links.push(link);
    return { link, api: openCommander<ToteboxRemote>(link) };
  };
  const grantFor = (o: Partial<Parameters<typeof issueGrant>[0]> = {}) =>
    aliceGrant(agg, op, clock, { views: ["position", "income-summary"], ...o });
  const capFor = (grant: Uint8Array, o: Partial<Parameters<typeof issueCallCapability>[0]> = {}) =>
    hubCapability(agg, grant, clock, o);
  /** The same capability with the last byte of its signature flipped. */
  const forged = (cap: Uint8Array) => {
    const f = new Uint8Array(cap);
    f[f.length - 1]! ^= 1;
    return f;
  };
  /** A fresh link whose session under a fresh grant has answered one capnweb read. */
  const authorized = async () => {
    const { link, api } = await connect();
    const g = grantFor();
    const session = api.authorize(g);
    await session.read(capFor(g), "position", PARAMS);
    return { link, api, g, session };
  };
  const hashOf = (g: Uint8Array) => createHash("sha256").update(g).digest();
  const body = (g: Uint8Array, view = "position", params: Record<string, string> = PARAMS) =>
    encodeDirectReadBody({ grantHash: hashOf(g), view, params, row: null });
  const direct = (link: PspLink, cap: Uint8Array, b: Uint8Array) =>
    link.request(DIRECT_READ_METHOD, directReadPayload(cap, b)).then(decodeDirectReadReply);
  const auditSince = (from: number) =>
    server.auditLog
      .entries(from, server.auditLog.size() - from)
      .map((r) => r.entry)
      .filter((e) => e.action === "read");

  it("is refused before the link authorized the grant, and served after, with a receipt bound to it", async () => {
    const { link, api } = await connect();
    const g = grantFor();
    const early = await refusal(direct(link, capFor(g), body(g)));
    expect(early.code).toBe("TOTEBOX_ERR_SESSION_UNKNOWN");

    const session = api.authorize(g);
    const viaCapnweb = (await session.read(capFor(g), "position", PARAMS)) as { arrow: Uint8Array };
    const cap = capFor(g);
    const from = server.auditLog.size();
    const reply = await direct(link, cap, body(g));
    expect(reply.arrow.byteOffset % 8).toBe(0); // zero-copy Arrow at the commander
    const claims = verifyReceipt({
      token: reply.receipt,
      subjectPublicKey: server.identity.publicKey,
      expect: {
        arrowBytes: reply.arrow,
        capabilityId: decodeUnverified(cap).claims.cti,
        requestHash: requestHash({ view: "position", params: PARAMS }),
        subjectId: "tb-1",
      },
    });
    const r = decodeResult(reply.arrow);
    expect(r.rowCount).toBe(claims.rowCount);
    expect(r.rows()).toEqual(decodeResult(viaCapnweb.arrow).rows());
    // Audited like any read: who, which capability, the outcome.
    const entries = auditSince(from);
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({
      operator: decodeUnverified(g).claims.iss,
      tenant: "acme",
      target: "position",
      outcome: "ok",
      capability: Buffer.from(decodeUnverified(cap).claims.cti).toString("hex"),
    });
    releaseStub(session);
  });

  it("every check of a capnweb read applies: replay, audience, scope, grant, signer; each refusal audited", async () => {
    const { link, g, session } = await authorized();
    const otherGrant = grantFor({ views: ["position"] });
    const cap = capFor(g);
    await direct(link, cap, body(g));
    const cases: Array<[string, Uint8Array, Uint8Array, string]> = [
      ["the same capability again", cap, body(g), "PSP_ERR_CAP_REPLAYED"],
      ["a capability for another Totebox", capFor(g, { totebox: "tb-2" }), body(g), "PSP_ERR_CAP_AUDIENCE"],
      ["a capability for another view", capFor(g, { view: "income-summary" }), body(g), "PSP_ERR_CAP_SCOPE"],
      ["a capability under another grant", capFor(otherGrant), body(g), "PSP_ERR_CAP_GRANT_MISMATCH"],
      ["a capability with a forged signature", forged(capFor(g)), body(g), "PSP_ERR_CAP_SIGNATURE"],
      [
        "a view the grant does not name",
        capFor(g, { view: "ledger" }),
        body(g, "ledger"),
        "PSP_ERR_CAP_SCOPE",
      ],
    ];
    for (const [what, c, b, code] of cases) {
      const from = server.auditLog.size();
      const e = await refusal(direct(link, c, b));
      expect({ what, code: e.code }).toEqual({ what, code });
      expect(auditSince(from).map((x) => x.outcome)).toEqual([code]);
    }
    expect(link.closed).toBe(false);
    releaseStub(session);
  });

  it("a session the commander released, or one authorized on another link, serves no direct read", async () => {
    const a = await connect();
    const b = await connect();
    const g = grantFor();
    const session = a.api.authorize(g);
    await session.read(capFor(g), "position", PARAMS);
    // Held on link a only.
    expect((await refusal(direct(b.link, capFor(g), body(g)))).code).toBe("TOTEBOX_ERR_SESSION_UNKNOWN");
    await direct(a.link, capFor(g), body(g));
    // Released: the release travels in hello's frame, ahead of its call.
    releaseStub(session);
    await a.api.hello();
    expect((await refusal(direct(a.link, capFor(g), body(g)))).code).toBe("TOTEBOX_ERR_SESSION_UNKNOWN");
    // Authorized again: served again.
    const again = a.api.authorize(g);
    await again.read(capFor(g), "position", PARAMS);
    await direct(a.link, capFor(g), body(g));
    releaseStub(again);
  });

  it("a malformed request or an unknown method is refused with a code; the link keeps serving", async () => {
    const { link, g, session } = await authorized();
    const short = encodeDirectReadBody({
      grantHash: hashOf(g).subarray(0, 31),
      view: "position",
      params: PARAMS,
      row: null,
    });
    expect((await refusal(direct(link, capFor(g), short))).code).toBe("PSP_ERR_MESSAGE_MALFORMED");
    expect((await refusal(link.request(DIRECT_READ_METHOD, [capFor(g)]))).code).toBe(
      "PSP_ERR_MESSAGE_MALFORMED",
    );
    expect((await refusal(link.request(DIRECT_READ_METHOD, [new Uint8Array(0), body(g)]))).code).toBe(
      "PSP_ERR_MESSAGE_MALFORMED",
    );
    expect((await refusal(link.request(99, directReadPayload(capFor(g), body(g))))).code).toBe(
      "PSP_ERR_METHOD_UNKNOWN",
    );
    const reply = await direct(link, capFor(g), body(g));
    expect(reply.receipt.byteLength).toBeGreaterThan(0);
    releaseStub(session);
  });

  it("several sessions under one grant: releasing one leaves the others serving", async () => {
    const { link, api } = await connect();
    const g = grantFor();
    const a = api.authorize(g);
    await a.read(capFor(g), "position", PARAMS);
    const b = api.authorize(g);
    await b.read(capFor(g), "position", PARAMS);
    releaseStub(b);
    await api.hello(); // the release travels in hello's frame, ahead of its call
    await direct(link, capFor(g), body(g)); // a still holds the grant's session
    releaseStub(a);
    await api.hello();
    expect((await refusal(direct(link, capFor(g), body(g)))).code).toBe("TOTEBOX_ERR_SESSION_UNKNOWN");
  });

  it("refusals before any session is found are audited too: unknown session, malformed request, unknown method", async () => {
    const { link } = await connect();
    const g = grantFor();
    const cap = capFor(g);
    const from = server.auditLog.size();
    await refusal(direct(link, cap, body(g)));
    await refusal(link.request(DIRECT_READ_METHOD, [cap]));
    await refusal(link.request(42, [cap, body(g)]));
    server.auditLog.flush();
    const entries = auditSince(from);
    expect(entries.map((e) => e.outcome)).toEqual([
      "TOTEBOX_ERR_SESSION_UNKNOWN",
      "PSP_ERR_MESSAGE_MALFORMED",
      "PSP_ERR_METHOD_UNKNOWN",
    ]);
    // What is known of the first: its view and capability id (never the token's bytes).
    expect(entries[0]).toMatchObject({
      peer: agg.fingerprint,
      target: "position",
      capability: Buffer.from(decodeUnverified(cap).claims.cti).toString("hex"),
    });
    const sigHex = Buffer.from(cap.subarray(cap.length - 64)).toString("hex");
    for (const e of entries) expect(JSON.stringify(e)).not.toContain(sigHex.slice(0, 32));
  });

  it("an expired capability and a suspended Totebox are refused as over capnweb", async () => {
    const { link, g, session } = await authorized();
    const old = capFor(g);
    clock.advance(10 * 60_000); // past the capability's lifetime (and the skew), within the grant's
    expect((await refusal(direct(link, old, body(g)))).code).toBe("PSP_ERR_CAP_EXPIRED");
    server.onStateChange("suspended");
    try {
      expect((await refusal(direct(link, capFor(g), body(g)))).code).toBe("TOTEBOX_ERR_SUSPENDED");
    } finally {
      server.onStateChange("active");
    }
    await direct(link, capFor(g), body(g));
    releaseStub(session);
  });

  it("a refusal the session's read audits is audited once (a capability that does not even decode)", async () => {
    const { link, g, session } = await authorized();
    const from = server.auditLog.size();
    expect((await refusal(direct(link, new Uint8Array([1, 2, 3]), body(g)))).code).toBe(
      "PSP_ERR_CAP_MALFORMED",
    );
    server.auditLog.flush();
    expect(auditSince(from).map((e) => e.outcome)).toEqual(["PSP_ERR_CAP_MALFORMED"]);
    releaseStub(session);
  });

  it("a link holds at most MAX_SESSIONS_PER_LINK sessions; the next authorize is refused and audited", async () => {
    const { link, api } = await connect();
    const g = grantFor();
    const held = [];
    for (let i = 0; i < MAX_SESSIONS_PER_LINK; i++) {
      const s = api.authorize(g);
      held.push(s);
      await s.read(capFor(g), "position", PARAMS);
    }
    const from = server.auditLog.size();
    const extra = api.authorize(g);
    expect((await refusal(extra.read(capFor(g), "position", PARAMS))).code).toBe("TOTEBOX_ERR_SESSION_LIMIT");
    server.auditLog.flush();
    expect(
      server.auditLog
        .entries(from, server.auditLog.size() - from)
        .map((r) => r.entry)
        .filter((e) => e.action === "authorize")
        .map((e) => e.outcome),
    ).toEqual(["TOTEBOX_ERR_SESSION_LIMIT"]);
    // Releasing one makes room again.
    releaseStub(extra);
    releaseStub(held.pop());
    await api.hello();
    const again = api.authorize(g);
    await again.read(capFor(g), "position", PARAMS);
    await direct(link, capFor(g), body(g));
    for (const s of [...held, again]) releaseStub(s);
  });
});

describe("an answer too large for the Totebox's frames", () => {
  it("is refused before it is signed or audited as served, over either path", async () => {
    const root2 = mkdtempSync(join(tmpdir(), "tb-direct-big-"));
    try {
      const clock = new ManualClock(NOW);
      // Frames of at most 16 KiB + 64 B: any answer over 64 bytes cannot leave.
      const { server, agg, op } = await startTrustingTotebox(root2, clock, { maxFrameBytes: 16 * 1024 + 64 });
      const link = await connectPsp({
        identity: agg,
        role: "commander",
        host: "127.0.0.1",
        port: server.address.port,
        expect: server.identity.fingerprint,
      });
      try {
        const g = aliceGrant(agg, op, clock);
        const cap = () => hubCapability(agg, g, clock);
        const api = openCommander<ToteboxRemote>(link);
        const session = api.authorize(g);
        const from = server.auditLog.size();
        expect((await refusal(session.read(cap(), "position", PARAMS))).code).toBe(
          "TOTEBOX_ERR_ANSWER_TOO_LARGE",
        );
        server.auditLog.flush();
        const reads = server.auditLog
          .entries(from, server.auditLog.size() - from)
          .map((r) => r.entry)
          .filter((e) => e.action === "read");
        expect(reads.map((e) => e.outcome)).toEqual(["TOTEBOX_ERR_ANSWER_TOO_LARGE"]);
        expect(link.closed).toBe(false);
      } finally {
        link.close();
        await server.close();
      }
    } finally {
      rmSync(root2, { recursive: true, force: true });
    }
  });
});
