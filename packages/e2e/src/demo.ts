/**
 * `npm start`: a demo estate on loopback, on embedded defaults, with no outside service.
 *
 *   - about 24 Toteboxes with seeded books: 16 buildings in four regions, a holding company and
 *     its subsidiaries (intercompany balances that mostly reconcile), 2 development projects;
 *   - two tenants, each with its own operator, sharing the northern buildings;
 *   - the aggregator (`os-orchestration serve`), paired with every Totebox;
 *   - the console's dashboard (`os-console ui`), whose address is printed last.
 *
 *   npm start                        reuse .demo-estate/ if it exists (starts in seconds)
 *   npm start -- --fresh             start afresh
 *   npm start -- --toteboxes 200     how many Toteboxes (default 24)
 *   npm start -- --port 8080         the dashboard's port (default: any free one)
 *
 * Ctrl-C stops every process it started. The Toteboxes run inside this process (each a real PSP
 * server with its own SQLite archive, key and audit log); the aggregator and the dashboard run as
 * their own processes, as they would in production.
 */
import { rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import {
  buildEstate,
  ensureUiBuilt,
  fleetYaml,
  startAggregatorProcess,
  startConsoleUi,
  startToteboxesInProcess,
  stopAllChildren,
  TENANTS,
  writeConsoleHomes,
  writeFleet,
} from "./estate.ts";

const { values } = parseArgs({
  options: {
    fresh: { type: "boolean" },
    toteboxes: { type: "string" },
    dir: { type: "string" },
    port: { type: "string" },
  },
});
const root = resolve(values.dir ?? ".demo-estate");
const count = Number(values.toteboxes ?? 24);
if (!Number.isInteger(count) || count < 3 || count > 5000) {
  console.error("npm start: --toteboxes must be a whole number from 3 to 5000");
  process.exit(2);
}
const say = (s: string) => process.stderr.write(`${s}\n`);

ensureUiBuilt(say);

if (values.fresh) rmSync(root, { recursive: true, force: true });
const started = performance.now();
// A new estate's books run up to today, so the dashboard's reporting windows (1D, 1W, …) have data.
const estate = await buildEstate({
  root,
  count,
  asOf: new Date().toISOString().slice(0, 10),
  onProgress: say,
});
say(`starting ${estate.entities.length} Toteboxes …`);
const toteboxes = await startToteboxesInProcess(estate, pino({ level: "warn" }, pino.destination(2)));

const config = join(root, "fleet.yaml");
writeFleet(config, fleetYaml(estate, toteboxes));
say("starting the aggregator …");
const aggregator = await startAggregatorProcess({
  config,
  identityDir: join(root, "aggregator", "identity"),
  listen: "127.0.0.1:0",
  http: "127.0.0.1:0",
});
const homes = await writeConsoleHomes(estate, { host: "127.0.0.1", port: aggregator.port });
say("starting the dashboard …");
const ui = await startConsoleUi({
  home: homes.get("atlas")!,
  ...(values.port ? { port: Number(values.port) } : {}),
});

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  say("\nstopping …");
  await stopAllChildren();
  await Promise.all([...toteboxes.values()].map((t) => t.stop()));
  process.exit(0);
};
// `on`, not `once`: Ctrl-C reaches this process twice (from the terminal's process group and
// relayed by the tsx launcher); a second, unhandled SIGINT would kill it mid-stop and orphan
// the aggregator and the dashboard.
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
// If the aggregator or the dashboard dies, the demo is over: say so and stop the rest.
for (const [name, child] of [
  ["aggregator", aggregator.child],
  ["dashboard", ui.child],
] as const) {
  child.once("exit", (code, signal) => {
    if (stopping) return;
    say(`${name} exited (${code ?? signal}); stopping the demo`);
    void stop();
  });
}

const byKind = (k: string) => estate.entities.filter((e) => e.kind === k).length;
const lines = [
  "",
  `os-orchestration demo estate (${((performance.now() - started) / 1000).toFixed(1)} s)`,
  `  ${estate.entities.length} Toteboxes: ${byKind("property")} buildings, ${byKind("company")} companies, ${byKind("project")} projects (archives in ${root}/toteboxes)`,
  ...TENANTS.map(
    (t) =>
      `  tenant ${t.id.padEnd(6)} operator ${t.operator.padEnd(6)} ${estate.entities.filter((e) => e.tenants.includes(t.id)).length} Toteboxes   console home ${homes.get(t.id)}`,
  ),
  `  aggregator   127.0.0.1:${aggregator.port}   metrics ${aggregator.httpUrl}/metrics`,
  "",
  `  try the CLI:  node packages/console/bin/os-console.js viewport portfolio --home ${homes.get("crown")}`,
  `                (after: node packages/console/bin/os-console.js grant --home ${homes.get("crown")})`,
  "",
  "Ctrl-C stops everything.",
  "",
  `Dashboard (tenant atlas): ${ui.url}`,
];
console.log(lines.join("\n"));
