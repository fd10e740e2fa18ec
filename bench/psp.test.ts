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
    const r = interleavedRates(
      [
        (i) => {
          seen[0]!.push(i);
          calls.push("a");
          ns += 10n; // a call of a: 10 ns
        },
        (i) => {
          seen[1]!.push(i);
          calls.push("b");
          // b: 20 ns a call, but 40 in its third round, indices 8-10 (the host slowed down there)
          ns += i >= 8 && i <= 10 ? 40n : 20n;
        },
      ],
      { perRound: 3, rounds: 4, warm: 2, now: () => ns },
    );
    // Single-use inputs are never used twice: 2 warm-up + 4 rounds of 3 indices, each once.
    expect(seen[0]).toEqual([...Array(14).keys()]);
    expect(seen[1]).toEqual([...Array(14).keys()]);
    // Warm-ups first, then a's round, b's round, a's round, ...
    expect(calls.join("")).toBe(`aabb${"aaabbb".repeat(4)}`);
    // Medians of the rounds' rates: a 10^8 calls/s; b 5×10^7 in three rounds, 2.5×10^7 in one.
    expect(r.rates[0]).toBeCloseTo(1e8, -1);
    expect(r.rates[1]).toBeCloseTo(5e7, -1);
    expect(r.ratios[0]).toEqual({ median: 1, low: 1, high: 1 });
    expect(r.ratios[1]!.median).toBeCloseTo(0.5, 9);
    expect(r.ratios[1]!.low).toBeCloseTo(0.25, 9);
    expect(r.ratios[1]!.high).toBeCloseTo(0.5, 9);
  });
});
