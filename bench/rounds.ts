/**
 * The fan-out bench's rounds (BENCH_FANOUT_ROUNDS, fanout.ts): how the measured queries are split,
 * how a contender's rounds are folded into one run, and each round's hub CPU against its floor.
 */
import type { ContenderRun, HubMeasurement } from "./fanout.ts";

/** Queries of round `r` (0-based) of `rounds`: the total split as evenly as it goes. */
export function roundQueries(total: number, rounds: number, r: number): number {
  return Math.floor(total / rounds) + (r < total % rounds ? 1 : 0);
}

/**
 * One contender's rounds as one run: latencies pooled; per-query and per-Totebox figures weighted
 * by each round's queries; per-link memory (links held afresh each round) averaged, its highest
 * reading after a query the highest of any round; counts summed; worst event-loop delays the worst.
 */
export function mergeRuns(runs: readonly ContenderRun[]): ContenderRun {
  if (runs.length === 1) return runs[0]!;
  const ms = runs.map((r) => r.m);
  const queries = ms.reduce((s, m) => s + m.queries, 0);
  const byQueries = (f: (m: HubMeasurement) => number) =>
    ms.reduce((s, m) => s + f(m) * m.queries, 0) / queries;
  const mean = (f: (m: HubMeasurement) => number) => ms.reduce((s, m) => s + f(m), 0) / ms.length;
  const sumCounts = (f: (m: HubMeasurement) => Record<string, number>) => {
    const out: Record<string, number> = {};
    for (const m of ms) for (const [k, v] of Object.entries(f(m))) out[k] = (out[k] ?? 0) + v;
    return out;
  };
  const weighted = (f: (m: HubMeasurement) => Record<string, number> | undefined) => {
    const out: Record<string, number> = {};
    for (const m of ms)
      for (const [k, v] of Object.entries(f(m) ?? {})) out[k] = (out[k] ?? 0) + (v * m.queries) / queries;
    return out;
  };
  const answered = ms.reduce((s, m) => s + m.answered, 0);
  const first = ms[0]!;
  const m: HubMeasurement = {
    contender: first.contender,
    n: first.n,
    warmup: first.warmup,
    queries,
    latencyMs: ms.flatMap((x) => x.latencyMs).sort((a, b) => a - b),
    cpuUsPerToteboxQuery: byQueries((x) => x.cpuUsPerToteboxQuery),
    rssBeforeBytes: mean((x) => x.rssBeforeBytes),
    rssAfterConnectBytes: mean((x) => x.rssAfterConnectBytes),
    rssPerLinkKB: mean((x) => x.rssPerLinkKB),
    rssUnderQueriesPerLinkKB: Math.max(...ms.map((x) => x.rssUnderQueriesPerLinkKB)),
    connectMs: mean((x) => x.connectMs),
    bytesOutPerTotebox: byQueries((x) => x.bytesOutPerTotebox),
    bytesInPerTotebox: byQueries((x) => x.bytesInPerTotebox),
    framesOutPerTotebox: byQueries((x) => x.framesOutPerTotebox),
    framesInPerTotebox: byQueries((x) => x.framesInPerTotebox),
    answered,
    errors: sumCounts((x) => x.errors),
    rollupMismatches: ms.reduce((s, x) => s + x.rollupMismatches, 0),
    stepsMsPerQuery: weighted((x) => x.stepsMsPerQuery),
    ...(ms.every((x) => x.cpuUsByThread) ? { cpuUsByThread: weighted((x) => x.cpuUsByThread) } : {}),
    unhandledRejections: ms.reduce((s, x) => s + x.unhandledRejections, 0),
    linksLost: {
      connect: ms.reduce((s, x) => s + x.linksLost.connect, 0),
      warmup: ms.reduce((s, x) => s + x.linksLost.warmup, 0),
      measure: ms.reduce((s, x) => s + x.linksLost.measure, 0),
      codes: sumCounts((x) => x.linksLost.codes),
    },
    loopDelayMs: {
      connectMax: Math.max(...ms.map((x) => x.loopDelayMs.connectMax)),
      measureMax: Math.max(...ms.map((x) => x.loopDelayMs.measureMax)),
      measureP99: Math.max(...ms.map((x) => x.loopDelayMs.measureP99)),
    },
  };
  return {
    m,
    // Fleet CPU per answer over all rounds: each round's total is its per-answer figure × answers.
    fleetCpuUsPerAnswer:
      runs.reduce((s, r) => s + r.fleetCpuUsPerAnswer * Math.max(1, r.m.answered), 0) / Math.max(1, answered),
    fleetLinksFailed: runs.reduce((s, r) => s + r.fleetLinksFailed, 0),
  };
}

/**
 * A contender's hub CPU against the floor's, round by round (each against the floor of its own
 * round), and their median: the figure the ≤ 2× goal is judged on.
 */
export function pairedRatios(
  c: readonly ContenderRun[],
  floor: readonly ContenderRun[],
): { each: number[]; median: number } {
  const each = c.map((r, i) => r.m.cpuUsPerToteboxQuery / floor[i]!.m.cpuUsPerToteboxQuery);
  const sorted = [...each].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { each, median };
}
