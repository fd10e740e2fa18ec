import { describe, expect, it } from "vitest";
import type { ContenderRun, HubMeasurement } from "./fanout.ts";
import { mergeRuns, pairedRatios, roundQueries } from "./rounds.ts";

function measurement(over: Partial<HubMeasurement>): HubMeasurement {
  return {
    contender: "aggregator",
    n: 1000,
    warmup: 3,
    queries: 15,
    latencyMs: [100],
    cpuUsPerToteboxQuery: 100,
    rssBeforeBytes: 0,
    rssAfterConnectBytes: 0,
    rssPerLinkKB: 60,
    rssUnderQueriesPerLinkKB: 150,
    connectMs: 1000,
    bytesOutPerTotebox: 900,
    bytesInPerTotebox: 1500,
    framesOutPerTotebox: 1,
    framesInPerTotebox: 1,
    answered: 15_000,
    errors: {},
    rollupMismatches: 0,
    stepsMsPerQuery: {},
    cpuUsByThread: { main: 80, node: 20 },
    unhandledRejections: 0,
    linksLost: { connect: 0, warmup: 0, measure: 0, codes: {} },
    loopDelayMs: { connectMax: 10, measureMax: 20, measureP99: 15 },
    ...over,
  };
}

const run = (m: Partial<HubMeasurement>, fleet = 400, failed = 0): ContenderRun => ({
  m: measurement(m),
  fleetCpuUsPerAnswer: fleet,
  fleetLinksFailed: failed,
});

describe("fan-out bench rounds", () => {
  it("splits the queries over the rounds, every query in exactly one", () => {
    for (const [total, rounds] of [
      [45, 3],
      [30, 4],
      [7, 7],
      [31, 1],
    ] as const) {
      const each = Array.from({ length: rounds }, (_, r) => roundQueries(total, rounds, r));
      expect(each.reduce((a, b) => a + b, 0)).toBe(total);
      expect(Math.max(...each) - Math.min(...each)).toBeLessThanOrEqual(1);
    }
  });

  it("folds rounds into one run: CPU weighted by queries, memory averaged, counts summed, worst kept", () => {
    const merged = mergeRuns([
      run(
        {
          queries: 10,
          cpuUsPerToteboxQuery: 100,
          latencyMs: [3, 1],
          rssPerLinkKB: 50,
          answered: 10_000,
          errors: { A: 1 },
          loopDelayMs: { connectMax: 5, measureMax: 40, measureP99: 9 },
          cpuUsByThread: { main: 90, node: 10 },
        },
        300,
        1,
      ),
      run(
        {
          queries: 30,
          cpuUsPerToteboxQuery: 200,
          latencyMs: [2],
          rssPerLinkKB: 70,
          rssUnderQueriesPerLinkKB: 190,
          answered: 30_000,
          errors: { A: 2, B: 1 },
          cpuUsByThread: { main: 150, node: 50 },
        },
        500,
        2,
      ),
    ]);
    expect(merged.m.queries).toBe(40);
    expect(merged.m.cpuUsPerToteboxQuery).toBeCloseTo((100 * 10 + 200 * 30) / 40, 9);
    expect(merged.m.latencyMs).toEqual([1, 2, 3]);
    expect(merged.m.rssPerLinkKB).toBe(60);
    expect(merged.m.rssUnderQueriesPerLinkKB).toBe(190);
    expect(merged.m.answered).toBe(40_000);
    expect(merged.m.errors).toEqual({ A: 3, B: 1 });
    expect(merged.m.loopDelayMs.measureMax).toBe(40);
    expect(merged.m.cpuUsByThread).toEqual({
      main: (90 * 10 + 150 * 30) / 40,
      node: (10 * 10 + 50 * 30) / 40,
    });
    expect(merged.fleetCpuUsPerAnswer).toBeCloseTo((300 * 10_000 + 500 * 30_000) / 40_000, 9);
    expect(merged.fleetLinksFailed).toBe(3);
  });

  it("judges each round against its own floor, and takes the median", () => {
    // Round 2's host was twice as slow for both: pooled, it would weigh in; paired, it cancels.
    const agg = [
      run({ cpuUsPerToteboxQuery: 120 }),
      run({ cpuUsPerToteboxQuery: 240 }),
      run({ cpuUsPerToteboxQuery: 150 }),
    ];
    const floor = [
      run({ cpuUsPerToteboxQuery: 40 }),
      run({ cpuUsPerToteboxQuery: 80 }),
      run({ cpuUsPerToteboxQuery: 30 }),
    ];
    const p = pairedRatios(agg, floor);
    expect(p.each).toEqual([3, 3, 5]);
    expect(p.median).toBe(3);
    expect(pairedRatios(agg.slice(0, 2), floor.slice(0, 2)).median).toBe(3);
    expect(pairedRatios([agg[0]!, agg[2]!], [floor[0]!, floor[2]!]).median).toBe(4);
  });
});
