/**
 * How sure a ratio of two contenders' CPU is, within one run.
 *
 * The fan-out's contenders take their measured queries in turns (fanout.ts, HubRun), so query q
 * of one contender and query q of another ran seconds apart under the same host: a pair. The
 * figure the bench reports is the ratio of their totals, Σa / Σb. How precisely this run measured
 * it is estimated here by resampling the pairs (a bootstrap), in blocks of consecutive queries:
 * one query's garbage is often collected during a later one, so neighbouring queries are not
 * independent, and resampling them one by one would understate the spread.
 *
 * What it is not: the spread between two runs. A second run's ratio differs from this one by
 * about √2 times this interval's half-width, and more where the host changed between the runs
 * in a way the turns do not cancel. Read the interval as the least spread to expect.
 *
 * Blocks are circular (a block may wrap from the last query to the first), so every query is
 * drawn equally often, and can be made a whole number of periods long: the turns' order rotates
 * by one each query, so every H-th query of a hub (H hubs) waits through more of the others'
 * turns than the rest, a pattern a block of H keeps whole.
 *
 * Deterministic: the resampling is driven by a seeded xorshift32 stream, so one run's figures
 * always give the same interval.
 */

import { xorshift32 } from "./xorshift.ts";

export interface PairedRatio {
  /** Σa / Σb over every pair. */
  ratio: number;
  /** The interval's bounds (percentile bootstrap). */
  lo: number;
  hi: number;
  /** Its nominal two-sided coverage, e.g. 0.95. */
  confidence: number;
  /** Pairs used, and the length of each resampled block of consecutive pairs. */
  pairs: number;
  block: number;
}

export interface PairedRatioOptions {
  /** Nominal two-sided coverage (default 0.95). */
  confidence?: number;
  /** Bootstrap resamples (default 2,000). */
  resamples?: number;
  /** Consecutive pairs per block (default ⌈n^⅓⌉, the usual rate for a block bootstrap). */
  block?: number;
  /** The block is rounded up to a whole number of these (default 1): the measurements' period. */
  period?: number;
  seed?: number;
}

/** Fewest pairs for an interval: fewer say too little about the spread to print one. */
export const MIN_PAIRS = 10;

/**
 * Σa / Σb and a circular block bootstrap interval for it. `a[q]` and `b[q]` are the two
 * contenders' measurements of pair q (same unit, b's total > 0). Throws RangeError on unpaired,
 * non-finite or negative input, fewer than MIN_PAIRS pairs, or a block longer than half of them:
 * resampling then barely moves the total, and the interval would claim a certainty the run does
 * not have.
 */
export function pairedRatio(
  a: readonly number[],
  b: readonly number[],
  opts: PairedRatioOptions = {},
): PairedRatio {
  const n = a.length;
  if (n !== b.length) throw new RangeError(`unpaired: ${n} against ${b.length} measurements`);
  if (n < MIN_PAIRS) throw new RangeError(`a ratio's interval needs at least ${MIN_PAIRS} pairs, not ${n}`);
  for (let i = 0; i < n; i++) {
    if (!(Number.isFinite(a[i]) && Number.isFinite(b[i]) && a[i]! >= 0 && b[i]! >= 0)) {
      throw new RangeError(`pair ${i} is not two finite non-negative measurements`);
    }
  }
  const confidence = opts.confidence ?? 0.95;
  const resamples = opts.resamples ?? 2000;
  const period = opts.period ?? 1;
  if (!(confidence > 0 && confidence < 1))
    throw new RangeError("confidence must lie strictly between 0 and 1");
  if (!Number.isSafeInteger(resamples) || resamples < 100)
    throw new RangeError("resamples must be a whole number ≥ 100");
  if (!Number.isSafeInteger(period) || period < 1) throw new RangeError("period must be a whole number ≥ 1");
  const wanted = opts.block ?? Math.ceil(Math.cbrt(n));
  if (!Number.isSafeInteger(wanted) || wanted < 1) throw new RangeError("block must be a whole number ≥ 1");
  const block = Math.ceil(wanted / period) * period;
  if (2 * block > n) throw new RangeError(`a block of ${block} leaves too few blocks in ${n} pairs`);

  const sum = (v: readonly number[]) => v.reduce((s, x) => s + x, 0);
  const sumB = sum(b);
  if (sumB <= 0) throw new RangeError("the baseline's total is 0: no ratio");
  const ratio = sum(a) / sumB;

  // Blocks are drawn until n pairs are taken (the last one cut short), so every resample has the
  // original's length.
  const next = xorshift32(opts.seed ?? 1);
  const ratios = new Float64Array(resamples);
  let kept = 0;
  for (let r = 0; r < resamples; r++) {
    let sa = 0;
    let sb = 0;
    for (let taken = 0; taken < n; ) {
      const s = next() % n;
      for (let j = 0; j < block && taken < n; j++, taken++) {
        sa += a[(s + j) % n]!;
        sb += b[(s + j) % n]!;
      }
    }
    // A resample of only zero baselines has an infinite ratio if a is not zero too (kept, so
    // that the upper bound is not biased low); with both zero it has none.
    if (sb > 0) ratios[kept++] = sa / sb;
    else if (sa > 0) ratios[kept++] = Number.POSITIVE_INFINITY;
  }
  if (kept === 0) throw new RangeError("no resample had a ratio");
  const sorted = ratios.subarray(0, kept).sort();
  // As many resamples below lo as above hi.
  const cut = Math.floor(((1 - confidence) / 2) * kept);
  return { ratio, lo: sorted[cut]!, hi: sorted[kept - 1 - cut]!, confidence, pairs: n, block };
}
