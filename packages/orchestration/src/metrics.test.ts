import fc from "fast-check";
import { Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { TOTEBOX_STATUSES, type ToteboxStatus } from "./fanout.ts";
import { OrchMetrics } from "./metrics.ts";

/** Reproduce a property failure with FC_SEED=<logged seed>. */
const fcSeed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", fcSeed);

/** The lines of one metric family in a Prometheus scrape. */
function family(text: string, name: string): string {
  return text
    .split("\n")
    .filter(
      (l) =>
        l === `# HELP ${name}` ||
        l.startsWith(`# HELP ${name} `) ||
        l.startsWith(`# TYPE ${name} `) ||
        l.startsWith(`${name}_`) ||
        l.startsWith(`${name}{`) ||
        l.startsWith(`${name} `),
    )
    .join("\n");
}

/** prom-client's own histogram with the aggregator's per-Totebox buckets: the reference. */
function reference(): { registry: Registry; histogram: Histogram<"status"> } {
  const registry = new Registry();
  const histogram = new Histogram({
    name: "orch_totebox_answer_duration_seconds",
    help: "Per-Totebox answer latency within fan-outs",
    labelNames: ["status"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
    registers: [registry],
  });
  return { registry, histogram };
}

const observation = fc.record({
  status: fc.constantFrom<ToteboxStatus>(...TOTEBOX_STATUSES),
  // Bucket bounds exactly, values between and beyond them, and zero.
  seconds: fc.oneof(
    fc.constantFrom(0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
    fc.double({ min: 0, max: 60, noNaN: true }),
  ),
});

describe("per-Totebox answer metrics", () => {
  it("scrape exactly as prom-client's own Histogram and Counter fed the same outcomes", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(observation, { maxLength: 200 }), async (obs) => {
        const m = new OrchMetrics();
        const ref = reference();
        const counts = new Map<string, number>();
        for (const o of obs) {
          m.toteboxAnswered(o.status, o.seconds);
          ref.histogram.observe({ status: o.status }, o.seconds);
          counts.set(o.status, (counts.get(o.status) ?? 0) + 1);
        }
        const ours = await m.registry.metrics();
        const theirs = await ref.registry.metrics();
        const name = "orch_totebox_answer_duration_seconds";
        expect(family(ours, name)).toBe(family(theirs, name));
        expect(family(ours, name)).toContain(`# TYPE ${name} histogram`);
        // The status counter is the histogram's counts, in the same order.
        const counter = family(ours, "orch_totebox_status_total")
          .split("\n")
          .filter((l) => !l.startsWith("#"));
        expect(counter).toEqual([...counts].map(([s, n]) => `orch_totebox_status_total{status="${s}"} ${n}`));
        // And the JSON form (labels merged) agrees with prom-client's too.
        const oursJson = (await m.registry.getMetricsAsJSON()).find((x) => x.name === name);
        const theirsJson = (await ref.registry.getMetricsAsJSON()).find((x) => x.name === name);
        // (prom-client's _sum and _count values carry `exemplar: undefined`: no field, once serialised.)
        expect(JSON.parse(JSON.stringify(oursJson))).toEqual(JSON.parse(JSON.stringify(theirsJson)));
      }),
      { seed: fcSeed, numRuns: 60 },
    );
  });

  it("reports the totals again after the registry's metrics are reset", async () => {
    const m = new OrchMetrics();
    m.toteboxAnswered("ok", 0.002);
    await m.registry.metrics();
    m.registry.resetMetrics();
    m.toteboxAnswered("ok", 0.003);
    // The histogram is the aggregator's own record (reset too); the counter follows it.
    const text = await m.registry.metrics();
    expect(text).toContain('orch_totebox_status_total{status="ok"} 1');
    expect(text).toContain('orch_totebox_answer_duration_seconds_count{status="ok"} 1');
  });

  it("keeps counting across scrapes: a scrape reports the total, not what came since the last", async () => {
    const m = new OrchMetrics();
    m.toteboxAnswered("ok", 0.002);
    m.toteboxAnswered("timeout", 7);
    await m.registry.metrics();
    m.toteboxAnswered("ok", 0.2);
    const text = await m.registry.metrics();
    expect(text).toContain('orch_totebox_status_total{status="ok"} 2');
    expect(text).toContain('orch_totebox_status_total{status="timeout"} 1');
    expect(text).toContain('orch_totebox_answer_duration_seconds_bucket{le="0.0025",status="ok"} 1');
    expect(text).toContain('orch_totebox_answer_duration_seconds_bucket{le="0.25",status="ok"} 2');
    expect(text).toContain('orch_totebox_answer_duration_seconds_bucket{le="5",status="timeout"} 0');
    expect(text).toContain('orch_totebox_answer_duration_seconds_bucket{le="+Inf",status="timeout"} 1');
    expect(text).toContain('orch_totebox_answer_duration_seconds_count{status="ok"} 2');
  });

  it("refuses a status outside the fixed set (stricter than prom-client) and a value that is not a number", () => {
    const m = new OrchMetrics();
    expect(() => m.toteboxAnswered("lost" as ToteboxStatus, 1)).toThrow(RangeError);
    expect(() => m.toteboxAnswered("ok", Number.NaN)).toThrow(TypeError);
    expect(() => m.toteboxAnswered("ok", Number.POSITIVE_INFINITY)).toThrow(TypeError);
  });
});
