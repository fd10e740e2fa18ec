/**
 * How sure a ratio of two contenders' CPU is, from one run.
 *
 * The fan-out's contenders take their measured queries in turns (fanout.ts, HubRun), so query q
 * of one contender and query q of another ran seconds apart under the same host: a pair. The
 * figure the bench reports is the ratio of their totals, Σa / Σb. How far that figure could move
 * in another run of the same code is estimated here by resampling the pairs (a bootstrap), in
 * blocks of consecutive queries: one query's garbage is often collected during a later one, so
 * neighbouring queries are not independent, and resampling them one by one would understate the
 * spread.
 *
 * Deterministic: the resampling is driven by a seeded xorshift32 stream, so one run's figures
 * always give the same interval.
 */

import { xorshift32 } from "./xorshift.ts";

export interface PairedRatio {
  /** Σa / Σb over every pair. */
  ratio: number;
  /** The interval's bounds (percentile bootstrap), lo ≤ ratio ≤ hi in all but freak samples. */
  lo: number;
  hi: number;
  /** Pairs used, and the length of each resampled block of consecutive pairs. */
  pairs: number;
  block: number;
}

export interface PairedRatioOptions {
  /** Two-sided coverage, e.g. 0.95. */
  confidence?: number;
  /** Bootstrap resamples (default 2,000). */
  resamples?: number;
  /** Consecutive pairs per block (default ⌈n^⅓⌉, the usual rate for a moving-block bootstrap). */
  block?: number;
  seed?: number;
}

/**
 * Σa / Σb and a moving-block bootstrap interval for it. `a[q]` and `b[q]` are the two contenders'
 * measurements of pair q (same unit, b's total > 0). Throws RangeError on unpaired, non-finite or
 * negative input, or fewer than two pairs: an interval from one pair would claim a certainty it
 * does not have.
 */
export function pairedRatio(
  a: readonly number[],
  b: readonly number[],
  opts: PairedRatioOptions = {},
): PairedRatio {
  const n = a.length;
  if (n !== b.length) throw new RangeError(`unpaired: ${n} against ${b.length} measurements`);
  if (n < 2) throw new RangeError("a ratio's interval needs at least two pairs");
  for (let i = 0; i < n; i++) {
    if (!(Number.isFinite(a[i]) && Number.isFinite(b[i]) && a[i]! >= 0 && b[i]! >= 0)) {
      throw new RangeError(`pair ${i} is not two finite non-negative measurements`);
    }
  }
  const confidence = opts.confidence ?? 0.95;
  const resamples = opts.resamples ?? 2000;
  if (!(confidence > 0 && confidence < 1))
    throw new RangeError("confidence must lie strictly between 0 and 1");
  if (!Number.isSafeInteger(resamples) || resamples < 100)
    throw new RangeError("resamples must be a whole number ≥ 100");
  const block = Math.min(n, opts.block ?? Math.ceil(Math.cbrt(n)));
  if (!Number.isSafeInteger(block) || block < 1) throw new RangeError("block must be a whole number ≥ 1");

  const sum = (v: readonly number[]) => v.reduce((s, x) => s + x, 0);
  const sumB = sum(b);
  if (sumB <= 0) throw new RangeError("the baseline's total is 0: no ratio");
  const ratio = sum(a) / sumB;

  // Moving blocks: any run of `block` consecutive pairs may be drawn; blocks are drawn until n
  // pairs are taken (the last one cut short), so every resample has the original's length.
  const starts = n - block + 1;
  const next = xorshift32(opts.seed ?? 1);
  const ratios = new Float64Array(resamples);
  let kept = 0;
  for (let r = 0; r < resamples; r++) {
    let sa = 0;
    let sb = 0;
    for (let taken = 0; taken < n; ) {
      const s = next() % starts;
      for (let j = 0; j < block && taken < n; j++, taken++) {
        sa += a[s + j]!;
        sb += b[s + j]!;
      }
    }
    if (sb > 0) ratios[kept++] = sa / sb; // a resample of only zero baselines has no ratio
  }
  const sorted = ratios.subarray(0, kept).sort();
  const tail = (1 - confidence) / 2;
  const at = (p: number) => (kept === 0 ? ratio : sorted[Math.min(kept - 1, Math.floor(p * kept))]!);
  return { ratio, lo: at(tail), hi: at(1 - tail), pairs: n, block };
}
