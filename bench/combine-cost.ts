/**
 * What the aggregator's combine costs on this machine, alone: `runCombine` (its DuckDB sandbox,
 * the bench's viewport) over N Toteboxes' decoded answers, timed with the fleet idle, as this
 * process's CPU (the collector's and DuckDB's threads included) per Totebox. Neither the floor nor
 * ours combines anything, so the `bound` rows (fanout.ts) add this to the least hub CPU any
 * implementation could reach when they judge the aggregator.
 *
 * The combine has a fixed part per query (a transaction, the input tables created, an appender, the
 * section's SQL parsed and planned, the rollback: ~6 ms here, eleventh round) and a part per row
 * (~4 µs: decoded cells into DuckDB vectors, tags as a MAP); so per Totebox it weighs most at the
 * smallest sizes. Both are printed.
 *
 * Timed in a process of its own started as the aggregator's hub is (the same node flags, its heap
 * growth applied as `serve` does), not in the bench's parent, whose heap holds the whole fleet's
 * descriptors and whose collector would be tuned otherwise.
 */
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  applyHeapGrowth,
  compileViewports,
  coverageOf,
  runCombine,
  type Viewport,
} from "@os-orchestration/orchestration";
import { type DecodedResult, decodeResult, encodeResult } from "@os-orchestration/psp";
import { BENCH_VIEWPORT_NAME, benchViewport } from "./hub-aggregator.ts";
import { endChild, forkTs, nextMessage } from "./sim-fleet.ts";
import { POSITION_COLUMNS, simPosition, simTags } from "./sim-fleet-worker.ts";

export interface CombineCost {
  /** Process CPU per Totebox of one combine over N answers, µs (mean of the timed combines). */
  readonly perToteboxUs: number;
  /** Process CPU of one combine over 10 answers, ms: the part a combine pays whatever its size. */
  readonly fixedMs: number;
}

/** The combine's input for `n` Toteboxes, as the aggregator builds it from `n` answers. */
function inputFor(v: Viewport, n: number, seed: number, asOf: string) {
  const results: { totebox: string; tags: Readonly<Record<string, string>>; result: DecodedResult }[] = [];
  const outcomes = [];
  for (let i = 0; i < n; i++) {
    const row = simPosition(seed, i, asOf);
    const arrow = encodeResult(POSITION_COLUMNS, [
      POSITION_COLUMNS.map((c) => row[c.name as keyof typeof row]),
    ]);
    // Frozen, as fanout.ts hands the combine one frozen tags object per registry entry.
    const tags = Object.freeze({ ...simTags(seed, i) });
    const totebox = `tb-${i}`;
    results.push({ totebox, tags, result: decodeResult(arrow, POSITION_COLUMNS) });
    outcomes.push({
      totebox,
      name: totebox,
      tags,
      status: "ok" as const,
      code: null,
      reason: "",
      elapsedMs: 1,
    });
  }
  return {
    viewport: v,
    params: {},
    results: new Map([["position", results]]),
    coverage: coverageOf(outcomes),
  };
}

/** Mean process CPU (µs) of `runs` combines over `n` answers, after `warm` untimed ones. */
async function cpuPerCombineUs(
  v: Viewport,
  n: number,
  runs: number,
  seed: number,
  asOf: string,
): Promise<number> {
  const warm = 3;
  // Inputs made beforehand: decoding is not the combine's work (the aggregator decodes each answer
  // as it checks it).
  const inputs = Array.from({ length: warm + runs }, () => inputFor(v, n, seed, asOf));
  for (let i = 0; i < warm; i++) await runCombine(inputs[i]!);
  const c0 = process.cpuUsage();
  for (let i = warm; i < warm + runs; i++) await runCombine(inputs[i]!);
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / runs;
}

export async function measureCombineCost(n: number, seed: number, asOf: string): Promise<CombineCost> {
  const v = (
    await compileViewports([
      { name: BENCH_VIEWPORT_NAME, definition: benchViewport(asOf), line: 1, column: 1 },
    ])
  ).get(BENCH_VIEWPORT_NAME)!;
  // ~0.3 s of combining at each size (~10 ms per combine at 1,000 here, ~45 ms at 10,000).
  const runs = Math.max(5, Math.min(40, Math.round(30_000 / n)));
  const perToteboxUs = (await cpuPerCombineUs(v, n, runs, seed, asOf)) / n;
  const fixedMs = (await cpuPerCombineUs(v, 10, 40, seed, asOf)) / 1000;
  return { perToteboxUs, fixedMs };
}

const FILE = fileURLToPath(import.meta.url);

/** measureCombineCost in a child process started with `nodeFlags` (the hubs' flags). */
export async function measureCombineCostInChild(
  n: number,
  seed: number,
  asOf: string,
  nodeFlags: readonly string[],
): Promise<CombineCost> {
  const child = forkTs(FILE, ["--combine-cost"], [...nodeFlags]);
  try {
    const result = nextMessage(
      child,
      (m) => {
        const r = m as { type?: unknown; cost?: CombineCost } | null;
        return r?.type === "combine-cost" && r.cost ? r.cost : undefined;
      },
      10 * 60_000,
      "combine cost",
    );
    child.send({ type: "measure", n, seed, asOf });
    return await result;
  } finally {
    await endChild(child);
  }
}

if (
  process.argv.includes("--combine-cost") &&
  process.argv[1] &&
  import.meta.url === pathToFileURL(process.argv[1]).href
) {
  process.on("disconnect", () => process.exit(0));
  process.on("message", (raw: unknown) => {
    const m = raw as { type?: unknown; n?: unknown; seed?: unknown; asOf?: unknown } | null;
    if (m?.type === "close") process.exit(0);
    if (
      m?.type !== "measure" ||
      typeof m.n !== "number" ||
      typeof m.seed !== "number" ||
      typeof m.asOf !== "string"
    )
      return;
    applyHeapGrowth(); // as the aggregator's hub and `serve` do
    measureCombineCost(m.n, m.seed, m.asOf).then(
      (cost) => process.send?.({ type: "combine-cost", cost }),
      (e: unknown) =>
        process.send?.({
          type: "error",
          code: "BENCH_ERR_WORKER",
          message: (e as Error)?.message ?? "failed",
        }),
    );
  });
}
