import { setFlagsFromString } from "node:v8";

/**
 * How far V8 lets the aggregator's old generation grow past what the last full collection left
 * alive before it collects again, in percent: 50 lets it reach 1.5×. `os-orchestration serve`
 * sets it at start (`--heap-growth`); 0 leaves V8 its own choice.
 *
 * Why the aggregator sets it: V8 sizes the next limit from how fast it thinks collection is
 * against how fast the program allocates, counting only the main thread. The aggregator's fan-out
 * allocates in bursts between waits for answers, so V8 picks its least growth (1.1×) and starts
 * marking once the old generation is within one young generation (~20 MB) of that limit: at
 * 1,000 Toteboxes a full collection every ~3 queries, each marking the ~48 MB that stays alive
 * (links, sockets, sessions) on helper threads (`--trace-incremental-marking`: marking started at
 * 50 MB of a 72 MB limit). Measured in the fan-out bench at 1,000 (tenth round,
 * docs/performance.md): V8's helper threads fell from ~47 to ~35 µs per Totebox per query and
 * the aggregator's CPU by ~7% in four interleaved pairs (50, 100 and 200 read alike in a first
 * comparison; 50 costs the least memory); at 10,000, where V8 already grows the larger heap more,
 * nothing changed. The cost is memory between collections: the heap may reach 1.5× its live size
 * (plus the young generation) before the next full collection, +10 KB per link at the peak under
 * queries at 1,000 (161 against 151 KB). Held-link memory, measured after a full collection, is
 * unchanged.
 */
export const DEFAULT_HEAP_GROWTH_PERCENT = 50;

/** Highest accepted: V8 itself never grows more than 4× (300%) on its own. */
export const MAX_HEAP_GROWTH_PERCENT = 400;

/**
 * Sets V8's heap growing factor for this process to 1 + percent/100 (0: V8 decides). Process
 * wide, so only the aggregator's own entry points call it, never the library on import. V8 reads
 * the flag each time it sets a limit, so it takes effect from the next full collection.
 */
export function setHeapGrowth(percent: number): void {
  if (!Number.isInteger(percent) || percent < 0 || percent > MAX_HEAP_GROWTH_PERCENT) {
    throw new RangeError(`heap growth must be a whole percentage from 0 to ${MAX_HEAP_GROWTH_PERCENT}`);
  }
  setFlagsFromString(`--heap-growing-percent=${percent}`);
}
