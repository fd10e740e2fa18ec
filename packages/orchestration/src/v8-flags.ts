import { setFlagsFromString } from "node:v8";

/**
 * V8 settings for a process that runs fan-outs (the aggregator). Call once, at start, before the
 * first fan-out.
 *
 * `--no-allocation-site-pretenuring`: V8 watches each allocation site and, when most of what it
 * allocates survives a young-generation collection, starts allocating that site's objects straight
 * in the old generation. A fan-out's per-Totebox objects (a request's promise and its entry in the
 * link's table, the task waiting on it, the capability, the answer) live for the length of one
 * query, a few hundred milliseconds: long enough to be pretenured, short enough to die soon after.
 * Pretenured, they fill the old generation and bring on a full mark-compact every few queries,
 * marking every held link again. Measured at 1,000 Toteboxes (`npm run bench -- fanout`, 05:22,
 * one run each, the same commit): the hub's CPU per Totebox fell 173 → 126 µs, of which V8's
 * helper threads (concurrent marking) 38 → 17 µs.
 *
 * Process-wide, and harmless to everything else the process does: the young generation still
 * collects what dies young, and long-lived objects are still promoted by surviving.
 */
export function applyFanOutV8Flags(): void {
  setFlagsFromString("--no-allocation-site-pretenuring");
}
