/**
 * The real aggregator as a fan-out contender: `OrchestrationServer` (registry, link pool, batch-
 * signed capabilities, receipt checks, DuckDB combine) running in the hub process, asked by a
 * console over PSP for a portfolio-shaped viewport: net value by region with a grand total
 * (`GROUP BY ROLLUP`). The simulated Toteboxes serve the `position` view only, so the viewport
 * reads position (the built-in `portfolio` also reads occupancy).
 *
 * Hub CPU and RSS here include the console's end of one link (small: one request, one answer of a
 * few rows per query).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type AggregatorConnection, connectAggregator, signGrant } from "@os-orchestration/console";
import { OrchestrationServer } from "@os-orchestration/orchestration";
import { rawEd25519PublicKey } from "@os-orchestration/psp";
import pino from "pino";
import { stringify } from "yaml";
import type { HubContender, HubContext, QueryOutcome } from "./fanout.ts";

const REGIONS = ["west", "east", "north", "south"];

export function aggregatorContender(ctx: HubContext): HubContender {
  let dir: string | undefined;
  let server: OrchestrationServer | undefined;
  let conn: AggregatorConnection | undefined;
  let grant: Uint8Array | undefined;
  const n = ctx.targets.length;
  return {
    name: "aggregator",
    async connect() {
      dir = mkdtempSync(join(tmpdir(), "os-orch-bench-agg-"));
      const config = join(dir, "fleet.yaml");
      writeFileSync(
        config,
        stringify({
          version: 1,
          tenants: { bench: {} },
          toteboxes: ctx.targets.map((t) => ({
            id: t.id,
            address: `${t.psp.host}:${t.psp.port}`,
            fingerprint: t.psp.fingerprint,
            tags: t.tags,
            tenants: ["bench"],
          })),
          operators: [
            {
              id: "bench-operator",
              public_key: Buffer.from(rawEd25519PublicKey(ctx.operator.publicKey)).toString("hex"),
              tenant: "bench",
              role: "viewer",
            },
          ],
          viewports: {
            "portfolio-position": {
              description: "Net value by region with a grand total, over the position view",
              reads: [{ view: "position", as: "position", params: { as_of: ctx.asOf } }],
              sections: [
                {
                  name: "rollup",
                  sql: "SELECT tags['region'] AS region, count(*) AS toteboxes, sum(net_value) AS net_value FROM position GROUP BY ROLLUP (1) ORDER BY 1 NULLS LAST",
                  columns: { region: "string", toteboxes: "integer", net_value: "integer" },
                },
              ],
            },
          },
        }),
      );
      server = await OrchestrationServer.start({
        configPath: config,
        identity: ctx.aggregator,
        logger: pino({ level: "silent" }),
        http: false,
        limits: { maxTargets: Math.max(20_000, n), maxRowsPerTotebox: 10 },
      });
      // Connected means every link online (the pool connects 64 at a time).
      for (;;) {
        const c = server.pool.counts();
        if (c.online >= n) break;
        if (c.connecting === 0 && c.online + c.offline >= n && c.offline > 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      conn = await connectAggregator({
        identity: ctx.operator,
        host: server.address.host,
        port: server.address.port,
        fingerprint: ctx.aggregator.fingerprint,
      });
      grant = signGrant({
        operator: ctx.operator,
        operatorId: "bench-operator",
        tenant: "bench",
        aggregator: conn.hello,
        toteboxSelectors: REGIONS.map((r) => `region=${r}`),
        views: ["position"],
        actions: ["read"],
        lifetimeSeconds: 12 * 3600,
      });
    },
    async query(): Promise<QueryOutcome> {
      const session = conn!.aggregator.authorize(grant!);
      const r = await session.viewport("portfolio-position", {
        timeoutMs: 120_000,
        deadlineMs: 120_000,
        // The bench reads figures, not receipts: the aggregator still verifies every one.
        answers: false,
      });
      const errors = new Map<string, number>();
      for (const o of r.outcomes)
        if (o.status !== "ok") errors.set(o.code ?? o.status, (errors.get(o.code ?? o.status) ?? 0) + 1);
      if (r.error) errors.set(r.error.code, (errors.get(r.error.code) ?? 0) + 1);
      const rollup = new Map<string, bigint>();
      const s = r.sections.find((x) => x.name === "rollup");
      for (const row of s?.rows ?? []) {
        if (row[0] === null) continue; // the grand total
        rollup.set(String(row[0]), BigInt(String(row[2])));
      }
      return { answered: r.answered, errors, rollup };
    },
    async close() {
      conn?.close();
      await server?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}
