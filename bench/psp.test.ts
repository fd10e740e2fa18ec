/**
 * interleavedRates' bookkeeping and arithmetic on a clock of the test's own (speed is measured in
 * `npm run bench`, never asserted in a test): each function gets every index of its own calls once
 * and in order, the rounds alternate between the functions, and the first is the ratios' baseline.
 */
import { describe, expect, it } from "vitest";
import { interleavedRates } from "./psp.ts";

describe("interleavedRates", () => {
  it("gives each function a running index of its own calls, warm-up first, rounds in turn", () => {
    let ns = 0n;
    const calls: string[] = [];
    const seen: number[][] = [[], []];
    // Indices 0-1 are the warm-up, then rounds of 3: 2-4, 5-7, 8-10, 11-13.
    const fastRound = (i: number) => i >= 8 && i <= 10;
    const r = interleavedRates(
      [
        (i) => {
          seen[0]!.push(i);
          calls.push("a");
          // a: 10 ns a call, 5 in the third round (the host sped up for both there), and 1 µs in
          // the warm-up, which no round may count.
          ns += i < 2 ? 1000n : fastRound(i) ? 5n : 10n;
        },
        (i) => {
          seen[1]!.push(i);
          calls.push("b");
          // b: twice a's cost in every round, so its ratio is 0.5 in each; but 80 ns a call in
          // the last round (b alone slowed down there), where its ratio is 0.125.
          ns += i >= 11 ? 80n : fastRound(i) ? 10n : 20n;
        },
      ],
      { perRound: 3, rounds: 4, warm: 2, now: () => ns },
    );
    // Single-use inputs are never used twice: 2 warm-up + 4 rounds of 3 indices, each once.
    expect(seen[0]).toEqual([...Array(14).keys()]);
    expect(seen[1]).toEqual([...Array(14).keys()]);
    // Warm-ups first, then a's round, b's round, a's round, ...
    expect(calls.join("")).toBe(`aabb${"aaabbb".repeat(4)}`);
    // Medians (upper middle of 4) of the rounds' rates: a 10^8/s (2×10^8 in its fast round),
    // b 5×10^7/s (10^8 fast, 1.25×10^7 slow).
    expect(r.rates[0]).toBeCloseTo(1e8, -1);
    expect(r.rates[1]).toBeCloseTo(5e7, -1);
    // Each round's ratio is against the baseline of that round: the round where both sped up
    // still reads 0.5 (against the median baseline it would read 1.0), and the warm-up's cost is
    // in no round (in a's first it would raise that round's ratio above 0.5).
    expect(r.ratios[0]).toEqual({ median: 1, low: 1, high: 1 });
    expect(r.ratios[1]!.median).toBeCloseTo(0.5, 9);
    expect(r.ratios[1]!.low).toBeCloseTo(0.125, 9);
    expect(r.ratios[1]!.high).toBeCloseTo(0.5, 9);
  });
});
