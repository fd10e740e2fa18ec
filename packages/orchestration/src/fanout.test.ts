/**
 * A long-lived link must not accumulate the fan-out's pipelined stubs: each `authorize()` session
 * and `view()` stub is an import the Totebox counts as a call in flight until it is released. With
 * the Totebox's limit lowered to 16, 40 fan-outs in a row over the same link must all answer.
 * The session itself is authorized once per link and grant, and reused (pool.ts, LinkLease.session).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectAggregator, signGrant } from "@os-orchestration/console";
import { createIdentity, rawEd25519PublicKey } from "@os-orchestration/psp";
import {
  generateDemoData,
  initArchive,
  openArchive,
  ToteboxServer,
  trustPeer,
} from "@os-orchestration/totebox";
import pino from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { OrchestrationServer } from "./server.ts";

const root = mkdtempSync(join(tmpdir(), "os-orch-fanout-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("fan-out over a long-lived link", () => {
  it("releases its stubs: 40 fan-outs in a row under a Totebox limit of 16 calls in flight", async () => {
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
    try {
      await server.pool.settled(10_000);
      const conn = await connectAggregator({
        identity: operator,
        host: server.address.host,
        port: server.address.port,
        fingerprint: aggregator.fingerprint,
      });
      const grantFor = (views: string[]) =>
        signGrant({
          operator,
          operatorId: "op",
          tenant: "t1",
          aggregator: conn.hello,
          toteboxIds: ["tb-1"],
          views,
          actions: ["read"],
        });
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
    } finally {
      await server.close();
      await tb.close();
    }
  });
});
