import { mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** One measured figure. `ratio` compares it with a baseline measured in the same run. */
export interface BenchRow {
  section: string;
  name: string;
  value: number;
  unit: string;
  /** e.g. "0.42× raw Ed25519" — always against a baseline from this same run. */
  ratio?: string;
  /** Where a goal exists: e.g. "goal ≤ 1.2 RTT: met". */
  goal?: string;
  /**
   * For a ratio measured over paired queries (paired-ratio.ts): how precisely this run measured
   * it, as numbers for the JSON (the printed ratio says it in words).
   */
  interval?: { ratio: number; lo: number; hi: number; confidence: number; pairs: number };
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return Math.round(n).toLocaleString("en-US");
  if (Math.abs(n) >= 1) return n.toFixed(2);
  return n.toPrecision(3);
}

export function printTable(rows: BenchRow[]): void {
  const cols = ["section", "name", "value", "unit", "ratio", "goal"] as const;
  const cells = rows.map((r) => [r.section, r.name, fmt(r.value), r.unit, r.ratio ?? "", r.goal ?? ""]);
  const widths = cols.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i]!.length)));
  const line = (vals: readonly string[]) => vals.map((v, i) => v.padEnd(widths[i]!)).join("  ");
  console.log(line(cols));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const c of cells) console.log(line(c));
}

export function writeResults(rows: BenchRow[], name: string): string {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "results");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(
    file,
    // The machine's cores (not this process's affinity, which a pinned run narrows).
    JSON.stringify(
      { when: new Date().toISOString(), node: process.version, cpus: cpus().length, rows },
      null,
      2,
    ),
  );
  return file;
}

/** The median of a sample (the upper of the middle two when even), without reordering it. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  return [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
}

/** Median and percentiles of a sample, in the sample's unit. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}
