import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ReceiptSampler } from "./receipt-sampler.ts";

/** Reproduce a property failure with FC_SEED=<logged seed>. */
const fcSeed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", fcSeed);

/** A seeded Park–Miller sequence in [0, 1), standing in for the aggregator's randomness. */
function seeded(seed: number): () => number {
  let x = seed % 2147483647 || 1;
  return () => {
    x = (x * 48271) % 2147483647;
    return (x - 1) / 2147483646;
  };
}

describe("ReceiptSampler", () => {
  it("checks the first answer of every link, then about one in `every`", () => {
    const s = new ReceiptSampler({ every: 32, random: seeded(7) });
    const links = Array.from({ length: 100 }, () => ({}));
    for (const l of links) expect(s.shouldCheck(l)).toBe(true);
    let checked = 0;
    const rounds = 3_200;
    for (let i = 0; i < rounds; i++) if (s.shouldCheck(links[i % links.length]!)) checked++;
    // Expected 100; a binomial(3200, 1/32) stays within ±40 of it for this seed and nearly all others.
    expect(checked).toBeGreaterThan(60);
    expect(checked).toBeLessThan(140);
    expect(s.counts).toEqual({ checked: 100 + checked, forwarded: rounds - checked });
  });

  it("every: 1 checks every answer", () => {
    const s = new ReceiptSampler({ every: 1, random: () => 0.999 });
    const link = {};
    for (let i = 0; i < 50; i++) expect(s.shouldCheck(link)).toBe(true);
  });

  it("a Totebox cannot predict its unchecked answers: which ones are checked follows the randomness only", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 256 }),
        fc.array(fc.double({ min: 0, max: 0.999_999 })),
        (every, draws) => {
          let i = 0;
          const s = new ReceiptSampler({ every, random: () => draws[i++] ?? 0.5 });
          const link = {};
          expect(s.shouldCheck(link)).toBe(true);
          for (const d of draws) expect(s.shouldCheck(link)).toBe(d * every < 1);
        },
      ),
      { seed: fcSeed, numRuns: 200 },
    );
  });

  it("refuses a sampling rate that is not a whole number ≥ 1", () => {
    for (const every of [0, -1, 1.5, Number.NaN]) {
      expect(() => new ReceiptSampler({ every, random: Math.random })).toThrow(RangeError);
    }
  });
});
