import { describe, expect, it } from "vitest";
import { pairedRatio } from "./paired-ratio.ts";
import { xorshift32 } from "./xorshift.ts";

/** Seeded stream in [0, 1) for the test's own data (never Math.random: the test is repeatable). */
function uniform(seed: number): () => number {
  const next = xorshift32(seed);
  return () => next() / 2 ** 32;
}

/** n pairs of a host whose pace drifts from query to query, b ~ pace, a ~ ratio × pace, each with its own noise. */
function pairs(seed: number, n: number, ratio: number, noise: number): { a: number[]; b: number[] } {
  const u = uniform(seed);
  const a: number[] = [];
  const b: number[] = [];
  for (let q = 0; q < n; q++) {
    const pace = 40 + 20 * u(); // the host: both contenders of pair q share it
    b.push(pace * (1 + noise * (u() - 0.5)));
    a.push(ratio * pace * (1 + noise * (u() - 0.5)));
  }
  return { a, b };
}

describe("pairedRatio", () => {
  it("reports the ratio of the totals, not a mean of per-pair ratios", () => {
    const r = pairedRatio([1, 9], [1, 1]);
    expect(r.ratio).toBe(5);
    expect(r.pairs).toBe(2);
    expect(r.lo).toBeLessThanOrEqual(r.ratio);
    expect(r.hi).toBeGreaterThanOrEqual(r.ratio);
  });

  it("collapses to the ratio when every pair has it, however much the host drifts", () => {
    const b = [10, 50, 20, 80, 35, 60, 15];
    const r = pairedRatio(
      b.map((v) => 3 * v),
      b,
    );
    expect(r.ratio).toBeCloseTo(3, 12);
    expect(r.lo).toBeCloseTo(3, 12);
    expect(r.hi).toBeCloseTo(3, 12);
  });

  it("is repeatable for a seed and moves with it", () => {
    const { a, b } = pairs(11, 45, 3.5, 0.6);
    const one = pairedRatio(a, b, { seed: 7 });
    expect(pairedRatio(a, b, { seed: 7 })).toEqual(one);
    const other = pairedRatio(a, b, { seed: 8 });
    expect(other.ratio).toBe(one.ratio);
    expect([other.lo, other.hi]).not.toEqual([one.lo, one.hi]);
  });

  it("widens with noisier pairs", () => {
    const quiet = pairs(3, 45, 2, 0.1);
    const loud = pairs(3, 45, 2, 0.9);
    const q = pairedRatio(quiet.a, quiet.b);
    const l = pairedRatio(loud.a, loud.b);
    expect(l.hi - l.lo).toBeGreaterThan(2 * (q.hi - q.lo));
  });

  it("covers the true ratio about as often as it claims", () => {
    // 200 simulated runs of 45 pairs with a true ratio of 2: a 95% interval should miss it in
    // about 10 of them. Bounds kept loose (a bootstrap percentile interval from 45 pairs is a
    // little narrow), but an interval that ignored the spread, or mixed up a and b, fails.
    let covered = 0;
    const runs = 200;
    for (let s = 1; s <= runs; s++) {
      const { a, b } = pairs(1000 + s, 45, 2, 0.5);
      const r = pairedRatio(a, b, { seed: s, resamples: 500 });
      if (r.lo <= 2 && 2 <= r.hi) covered++;
    }
    expect(covered / runs).toBeGreaterThan(0.85);
    expect(covered / runs).toBeLessThan(0.995);
  });

  it("resamples blocks of consecutive pairs", () => {
    expect(pairedRatio([1, 2, 3, 4, 5, 6, 7, 8], [1, 1, 1, 1, 1, 1, 1, 1]).block).toBe(2);
    expect(pairedRatio([1, 2, 3], [1, 1, 1], { block: 9 }).block).toBe(3);
    // A collection every 10 queries lands in one of them (a spike) and the total carries it:
    // resampled in blocks, a spike stays one per block as in the run.
    const b = Array.from({ length: 40 }, () => 10);
    const a = b.map((_v, q) => (q % 10 === 9 ? 120 : 20));
    const r = pairedRatio(a, b, { block: 10 });
    expect(r.ratio).toBeCloseTo(3, 12);
    expect(r.lo).toBeCloseTo(3, 12);
    expect(r.hi).toBeCloseTo(3, 12);
  });

  it("refuses what would give a meaningless interval", () => {
    expect(() => pairedRatio([1, 2], [1])).toThrow(/unpaired/);
    expect(() => pairedRatio([1], [1])).toThrow(/two pairs/);
    expect(() => pairedRatio([1, Number.NaN], [1, 1])).toThrow(/pair 1/);
    expect(() => pairedRatio([1, -1], [1, 1])).toThrow(/pair 1/);
    expect(() => pairedRatio([1, 1], [0, 0])).toThrow(/total is 0/);
    expect(() => pairedRatio([1, 1], [1, 1], { confidence: 1 })).toThrow(RangeError);
    expect(() => pairedRatio([1, 1], [1, 1], { resamples: 10 })).toThrow(RangeError);
    expect(() => pairedRatio([1, 1], [1, 1], { block: 0 })).toThrow(RangeError);
  });
});
