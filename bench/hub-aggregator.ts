/**
 * The real aggregator as a fan-out contender: `OrchestrationServer` (registry, link pool, batch-
 * signed capabilities, receipt checks, DuckDB combine) running in the hub process, asked by a
 * console over PSP for a portfolio-shaped viewport: net value by region with a grand total
 * (`GROUP BY ROLLUP`). The simulated Toteboxes serve the `position` view only, so the viewport
 * reads position (the built-in `portfolio` also reads occupancy).
 *
 * The console runs in a process of its own (hub-console.ts), as it does in deployment: hub CPU and
 * RSS are the aggregator's alone. The console's end of the link decodes a result with one outcome
 * per Totebox per query, which is not the aggregator's work.
 *
 * The hub process tunes V8's heap growth as `os-orchestration serve` does at start
 * (heap-growth.ts, DEFAULT_HEAP_GROWTH_PERCENT): the contender is the aggregator as deployed. A
 * `--heap-growing-percent` in BENCH_HUB_NODE_FLAGS stands instead, as node's own flag does for serve.
 */

import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { applyHeapGrowth, OrchestrationServer } from "@os-orchestration/orchestration";
import { rawEd25519PublicKey } from "@os-orchestration/psp";
import pino from "pino";
import { stringify } from "yaml";
import type { HubContender, HubContext, QueryOutcome } from "./fanout.ts";
import type { ConsoleAnswer, ConsoleStart } from "./hub-console.ts";
import { endChild, forkTs, nextMessage } from "./sim-fleet.ts";
import { BenchError } from "./sim-fleet-worker.ts";

const CONSOLE_FILE = fileURLToPath(new URL("./hub-console.ts", import.meta.url));

const REGIONS = ["west", "east", "north", "south"];

export const BENCH_VIEWPORT_NAME = "portfolio-position";

/** The viewport the console asks for (fleet.yaml's shape): net value by region, a grand total. */
export function benchViewport(asOf: string) {
  return {
    description: "Net value by region with a grand total, over the position view",
    reads: [{ view: "position", as: "position", params: { as_of: asOf } }],
    sections: [
      {
        name: "rollup",
        sql: "SELECT tags['region'] AS region, count(*) AS toteboxes, sum(net_value) AS net_value FROM position GROUP BY ROLLUP (1) ORDER BY 1 NULLS LAST",
        columns: { region: "string", toteboxes: "integer", net_value: "integer" },
      },
    ],
  };
}

export function aggregatorContender(ctx: HubContext, name = "aggregator"): HubContender {
  let dir: string | undefined;
  let server: OrchestrationServer | undefined;
  let consoleProc: ChildProcess | undefined;
  const n = ctx.targets.length;
  return {
    name,
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
          viewports: { [BENCH_VIEWPORT_NAME]: benchViewport(ctx.asOf) },
        }),
      );
      applyHeapGrowth(); // as `serve` does: the default, unless BENCH_HUB_NODE_FLAGS gave V8's own flag
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
      consoleProc = forkTs(CONSOLE_FILE);
      ctx.placeHelper(consoleProc.pid);
      // A console that died between queries must fail the next query at once, not crash the hub
      // (a send on a closed channel is an 'error' event) or wait out the query's timeout.
      consoleProc.on("error", () => {});
      const start: ConsoleStart = {
        type: "start",
        host: server.address.host,
        port: server.address.port,
        fingerprint: ctx.aggregator.fingerprint,
        operator: { keyPem: ctx.operator.keyPem, certPem: ctx.operator.certPem },
        operatorId: "bench-operator",
        tenant: "bench",
        toteboxSelectors: REGIONS.map((r) => `region=${r}`),
        viewport: BENCH_VIEWPORT_NAME,
      };
      consoleProc.send(start);
      await nextMessage(
        consoleProc,
        (m) => ((m as { type?: unknown }).type === "ready" ? true : undefined),
        60_000,
        "console start",
      );
    },
    async query(): Promise<QueryOutcome> {
      const c = consoleProc!;
      if (c.exitCode !== null || c.signalCode !== null || !c.connected) {
        throw new BenchError(
          "BENCH_ERR_WORKER",
          `the console process is gone (exit ${c.exitCode}, signal ${c.signalCode})`,
        );
      }
      c.send({ type: "query" });
      const a = await nextMessage(
        c,
        (m) => ((m as { type?: unknown }).type === "answer" ? (m as ConsoleAnswer) : undefined),
        150_000,
        "console query",
      );
      ctx.countUnhandled(a.unhandled);
      return { answered: a.answered, errors: new Map(a.errors), rollup: new Map(a.rollup) };
    },
    async close() {
      if (consoleProc) await endChild(consoleProc);
      await server?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}
