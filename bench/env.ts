/**
 * The benches' settings from the environment, checked: a value out of range ends the run with
 * BENCH_ERR_ARGS rather than measuring something other than what was asked.
 */
import { BenchError } from "./bench-error.ts";

/** An integer setting in lo..hi; `dflt` when unset or empty. */
export function envInt(name: string, dflt: number, lo: number, hi: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return dflt;
  const v = Number(raw);
  if (!Number.isSafeInteger(v) || v < lo || v > hi) {
    throw new BenchError("BENCH_ERR_ARGS", `${name} must be an integer in ${lo}..${hi}`);
  }
  return v;
}

/** Comma-separated fleet sizes, each in 1..max; `dflt` (the same form) when unset. */
export function envSizes(name: string, dflt: string, max: number): number[] {
  const raw = process.env[name] ?? dflt;
  const sizes = raw.split(",").map((s) => Number(s.trim()));
  if (sizes.length === 0 || sizes.some((s) => !Number.isSafeInteger(s) || s < 1 || s > max)) {
    throw new BenchError("BENCH_ERR_ARGS", `${name} must be integers in 1..${max}, comma-separated`);
  }
  return sizes;
}
