/**
 * `npm run bench`: every comparison is measured in this same run, on this machine, and reported as
 * a ratio. Prints a table and writes the same rows as JSON under bench/results/. Never fails the
 * test suite: goals are reported, not asserted.
 *
 *   npm run bench                 all sections
 *   npm run bench -- psp          one section
 *   BENCH_FANOUT_SIZES=1000 npm run bench -- fanout    fan-out at one fleet size (bench/fanout.ts)
 *   npm run bench -- hubpath      the hub's own code per Totebox, no network (bench/hub-path.ts)
 *   npm run bench -- registry     a fleet.yaml reload's event-loop delay (bench/registry-reload.ts)
 */
import { benchFanout } from "./fanout.ts";
import { benchHubPath } from "./hub-path.ts";
import { benchPipelining } from "./pipelining.ts";
import { benchCallTax, benchCapabilities, benchRoundTrips } from "./psp.ts";
import { benchRegistryReload } from "./registry-reload.ts";
import { type BenchRow, printTable, writeResults } from "./report.ts";
import { benchTotebox } from "./totebox.ts";

const sections: Record<string, () => Promise<BenchRow[]>> = {
  psp: async () => [...(await benchCapabilities()), ...(await benchRoundTrips()), ...(await benchCallTax())],
  totebox: benchTotebox,
  fanout: benchFanout,
  pipelining: benchPipelining,
  hubpath: benchHubPath,
  registry: benchRegistryReload,
};

const wanted = process.argv.slice(2).filter((a) => !a.startsWith("-"));
const rows: BenchRow[] = [];
for (const [name, run] of Object.entries(sections)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  console.error(`bench: ${name} …`);
  rows.push(...(await run()));
}
printTable(rows);
console.log(`\nresults: ${writeResults(rows, "bench")}`);
