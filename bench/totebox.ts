import { existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import {
  connectPsp,
  createIdentity,
  type Identity,
  issueCallCapabilityBatch,
  issueGrant,
  openCommander,
  systemClock,
} from "../packages/psp/src/index.ts";
import type { ToteboxRemote } from "../packages/totebox/src/index.ts";
import {
  generateDemoData,
  initArchive,
  openArchive,
  ToteboxServer,
  trustPeer,
} from "../packages/totebox/src/index.ts";
import { parsePolicy, validateParams } from "../packages/totebox/src/policy.ts";
import { createInProcessViewRunner } from "../packages/totebox/src/view-runner.ts";
import { type BenchRow, percentile } from "./report.ts";

const AS_OF = "2026-10-31";

/** An archive of at least `lines` journal lines, made once and cached in the temp folder. */
async function bigArchive(
  lines: number,
): Promise<{ dir: string; lines: number; buildSeconds: number | null }> {
  // A property archive holds about 6,800 journal lines per unit of scale.
  const scale = Math.ceil(lines / 6_800);
  const dir = join(tmpdir(), `os-orchestration-bench-${scale}`, "archive");
  if (existsSync(join(dir, "archive.db"))) {
    const a = await openArchive(dir);
    const n = (a.db.prepare("SELECT count(*) AS n FROM journal_lines").get() as { n: number }).n;
    a.db.close();
    if (n >= lines) return { dir, lines: n, buildSeconds: null };
  }
  mkdirSync(join(dir, ".."), { recursive: true });
  const t = performance.now();
  await initArchive({
    dir,
    id: "bench-prop",
    kind: "property",
    name: "Bench Tower",
    tags: { region: "west" },
  });
  const a = await openArchive(dir);
  let n = 0;
  try {
    const s = generateDemoData(a.db, {
      kind: "property",
      seed: 1,
      scale,
      entityId: "bench-prop",
      asOf: AS_OF,
    });
    n = s.lines;
  } finally {
    a.db.close();
  }
  return { dir, lines: n, buildSeconds: (performance.now() - t) / 1000 };
}

export async function benchTotebox(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const target = Number(process.env.BENCH_JOURNAL_LINES ?? 1_000_000);
  const { dir, lines, buildSeconds } = await bigArchive(target);
  if (buildSeconds !== null) {
    rows.push({
      section: "totebox",
      name: `demo-data for ${lines.toLocaleString("en-US")} lines`,
      value: buildSeconds,
      unit: "s",
    });
  }

  // The position view alone, over the big journal.
  const a = await openArchive(dir);
  const { readFileSync } = await import("node:fs");
  const policy = parsePolicy(readFileSync(join(dir, "policy.yaml"), "utf8"), { db: a.db });
  a.db.close();
  const runner = createInProcessViewRunner(join(dir, "archive.db"));
  const view = policy.views.get("position")!;
  const params = validateParams(view, { as_of: AS_OF });
  for (let i = 0; i < 5; i++) await runner.run({ policy, view: "position", params });
  const times: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t = performance.now();
    await runner.run({ policy, view: "position", params });
    times.push(performance.now() - t);
  }
  times.sort((x, y) => x - y);
  // Baseline in the same run: the same figures computed the obvious way, by scanning every
  // journal line (what the view avoids by reading the per-day totals the ledger maintains).
  const { default: Database } = await import("better-sqlite3");
  const raw = new Database(join(dir, "archive.db"), { readonly: true });
  const scan = raw.prepare(
    `SELECT sum(CASE WHEN a.subtype = 'cash' THEN l.amount END) AS cash,
            sum(CASE WHEN a.class = 'asset' THEN l.amount END) AS assets,
            -sum(CASE WHEN a.class = 'liability' THEN l.amount END) AS liabilities
       FROM journal_lines l JOIN journal_tx t ON t.seq = l.tx_seq JOIN accounts a ON a.code = l.account
      WHERE t.date <= ?`,
  );
  const base: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    scan.get(AS_OF);
    base.push(performance.now() - t);
  }
  raw.close();
  base.sort((x, y) => x - y);
  await runner.close();
  const p50 = percentile(times, 50);
  rows.push({
    section: "totebox",
    name: `position view, ${lines.toLocaleString("en-US")} lines, p50`,
    value: p50,
    unit: "ms",
    ratio: `${(percentile(base, 50) / p50).toFixed(0)}× faster than scanning every line`,
    goal: `p50 < 50 ms: ${p50 < 50 ? "met" : "NOT met"}`,
  });
  rows.push({
    section: "totebox",
    name: `position view, ${lines.toLocaleString("en-US")} lines, p99`,
    value: percentile(times, 99),
    unit: "ms",
  });

  // Full reads through PSP on one link: capability chain, policy, view, Arrow, receipt, audit.
  const [agg, op] = await Promise.all([createIdentity({ name: "agg" }), createIdentity({ name: "op" })]);
  const arch = await openArchive(dir);
  trustPeer(arch.db, {
    kind: "aggregator",
    label: "bench",
    publicKey: agg.publicKey,
    fingerprint: agg.fingerprint,
    now: Date.now(),
  });
  trustPeer(arch.db, { kind: "operator", label: "bench-op", publicKey: op.publicKey, now: Date.now() });
  arch.db.close();
  const configs: { runner: "in-process" | "pool"; inFlight: number; reads: number }[] = [
    { runner: "in-process", inFlight: 8, reads: 600 },
    { runner: "in-process", inFlight: 100, reads: 1000 },
    { runner: "pool", inFlight: 8, reads: 600 },
    { runner: "pool", inFlight: 100, reads: 1000 },
  ];
  for (const c of configs) {
    const r = await pspReads(dir, agg, op, c.runner, c.inFlight, c.reads);
    rows.push({
      section: "totebox",
      name: `position reads/s over PSP, one link, ${c.runner} runner (${c.inFlight} in flight)`,
      value: r.readsPerSecond,
      unit: "reads/s",
      ratio:
        `${r.cores.toFixed(2)} cores busy in this process (both ends${c.runner === "pool" ? ", not the query processes" : ""}); ` +
        `${(r.reads / r.commits).toFixed(1)} audit entries per commit${r.refused ? `; refused: ${r.refused}` : ""}`,
    });
  }
  return rows;
}

/** `reads` position reads through one PSP link with `inFlight` outstanding at a time. */
async function pspReads(
  dir: string,
  agg: Identity,
  op: Identity,
  runner: "in-process" | "pool",
  inFlight: number,
  reads: number,
): Promise<{ readsPerSecond: number; cores: number; reads: number; commits: number; refused: string }> {
  const server = await ToteboxServer.start({
    dir,
    viewRunner: runner,
    // Room for every read in flight: this measures throughput, not the refusal of excess work.
    viewPool: { maxPending: Math.max(64, inFlight) },
    logger: pino({ level: "silent" }),
  });
  const link = await connectPsp({
    identity: agg,
    role: "commander",
    host: "127.0.0.1",
    port: server.address.port,
    expect: server.identity.fingerprint,
  });
  try {
    const tb = openCommander<ToteboxRemote>(link);
    const grant = issueGrant({
      operator: "bench-op",
      aggregatorId: agg.fingerprint,
      aggregatorKey: agg.publicKey,
      tenant: "bench",
      toteboxIds: ["bench-prop"],
      views: ["archive-health", "position"],
      actions: ["read"],
      signer: op.privateKey,
      clock: systemClock,
    });
    const session = tb.authorize(grant);
    const warm = 50;
    const caps = issueCallCapabilityBatch(
      Array.from({ length: reads + warm }, () => ({
        grant,
        totebox: "bench-prop",
        view: "position",
        action: "read",
        clock: systemClock,
      })),
      agg.privateKey,
    );
    for (let i = 0; i < warm; i++) await session.read(caps[i]!, "position", { as_of: AS_OF });
    const commits0 = server.auditLog.commits;
    const cpu0 = process.cpuUsage();
    const t = performance.now();
    let next = warm;
    // A refusal (a view timing out while queued behind 100 others on a loaded machine) is counted,
    // not fatal: the figure is answered reads per second.
    const refused = new Map<string, number>();
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < reads + warm) {
          await session.read(caps[next++]!, "position", { as_of: AS_OF }).catch((e: unknown) => {
            const code = String((e as { code?: unknown }).code ?? "error");
            refused.set(code, (refused.get(code) ?? 0) + 1);
          });
        }
      }),
    );
    const secs = (performance.now() - t) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const failed = [...refused.values()].reduce((a, b) => a + b, 0);
    return {
      readsPerSecond: (reads - failed) / secs,
      cores: (cpu.user + cpu.system) / 1e6 / secs,
      reads,
      commits: Math.max(1, server.auditLog.commits - commits0),
      refused: [...refused].map(([code, n]) => `${n} ${code}`).join(", "),
    };
  } finally {
    link.close();
    await server.close();
  }
}
