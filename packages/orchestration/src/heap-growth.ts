import { setFlagsFromString } from "node:v8";

/**
 * How far V8 lets the aggregator's old generation grow past what the last full collection left
 * alive before it collects again, in percent: 100 lets it double. `os-orchestration serve` sets
 * it at start (`--heap-growth`); 0 leaves V8 its own choice.
 *
 * Why the aggregator sets it: V8 sizes the next limit from its own estimate of how fast
 * collection is against how fast the program allocates, both on the main thread, and takes at
 * least the live size plus 8 MB, plus room for one young generation. The aggregator allocates in
 * bursts between waits for answers, and V8 chose a small growth: at 1,000 Toteboxes a limit of 72
 * MB over the ~48 MB that stays alive (links, sockets, sessions), with marking started once only
 * ~21 MB was left below it (`--trace-incremental-marking`: at 50 MB), so a full collection every
 * ~3 queries, each marking all of those 48 MB on helper threads. Measured in the fan-out bench
 * (tenth round, docs/performance.md), interleaved:
 * - 50 against V8's own choice, at 1,000: V8's helper threads ~47 → ~35 µs per Totebox per query,
 *   the aggregator's CPU −6% (four pairs); at 10,000 no change.
 * - 100 against 50, at 1,000: helper threads ~32 → ~25 µs, CPU −10% (145 → 130 µs, three pairs);
 *   at 10,000, 3.61× the floor against 3.87× (one pair).
 * The cost is memory between collections: the heap may reach twice its live size (plus the young
 * generation) before the next full collection. The highest RSS read after a query was 176-182 KB
 * per link at 1,000 against 153-160 KB at 50, and 90 KB at 10,000 either way. Held-link memory,
 * measured after a full collection, is unchanged.
 *
 * V8 applies this factor in place of its own, including the slower growth it picks when memory
 * runs short: on such a host, set a lower value or 0.
 */
export const DEFAULT_HEAP_GROWTH_PERCENT = 100;

/** Highest accepted: 4×, the most V8 ever grows the heap on its own. */
export const MAX_HEAP_GROWTH_PERCENT = 300;

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

/**
 * Whether Node was started with V8's own `--heap-growing-percent` (on its command line or in
 * NODE_OPTIONS): an operator's explicit flag is then left as given rather than replaced by the
 * default (an explicit `--heap-growth` still wins).
 */
export function heapGrowthGivenToNode(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string | undefined = process.env.NODE_OPTIONS,
): boolean {
  const names = /^--heap[-_]growing[-_]percent(=|$)/;
  return execArgv.some((a) => names.test(a)) || (nodeOptions ?? "").split(/\s+/).some((a) => names.test(a));
}

/**
 * What `serve` (and the bench's aggregator hub, as `serve`) does at start: `percent` when given,
 * otherwise the default, unless node was started with V8's own flag, which then stands.
 */
export function applyHeapGrowth(percent?: number): void {
  if (percent !== undefined) setHeapGrowth(percent);
  else if (!heapGrowthGivenToNode()) setHeapGrowth(DEFAULT_HEAP_GROWTH_PERCENT);
}
