/**
 * `npm start`: a small demo estate on loopback, on embedded defaults, with no outside service.
 *
 * Until the aggregator and console land (issues 4–6), this brings up the Toteboxes of a demo
 * estate as real PSP servers, then plays the part of a hub for one question — "what is each
 * entity's position?" — with a real operator grant, batch-signed call capabilities, one pipelined
 * round trip per Totebox and a receipt check on every answer. It keeps the Toteboxes serving until
 * Ctrl-C.
 *
 *   npm start                      reuse .demo-estate/ if it exists
 *   npm start -- --fresh           start afresh
 *   npm start -- --toteboxes 12    how many Toteboxes (default 8)
 */
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  connectPsp,
  decodeResult,
  issueCallCapabilityBatch,
  issueGrant,
  loadOrCreateIdentity,
  openCommander,
  systemClock,
  verifyReceipt,
} from "@os-orchestration/psp";
import {
  type EntityKind,
  generateDemoData,
  initArchive,
  openArchive,
  type ToteboxRemote,
  ToteboxServer,
  trustPeer,
} from "@os-orchestration/totebox";
import pino from "pino";

const { values } = parseArgs({
  options: { fresh: { type: "boolean" }, toteboxes: { type: "string" }, dir: { type: "string" } },
});
const root = resolve(values.dir ?? ".demo-estate");
const count = Math.max(1, Math.min(200, Number(values.toteboxes ?? 8)));
const AS_OF = "2026-10-31";
const SEED = 2026;

const REGIONS = ["west", "east", "north", "south"];
function plan(i: number): { id: string; kind: EntityKind; name: string; tags: Record<string, string> } {
  const kinds: EntityKind[] = [
    "property",
    "property",
    "property",
    "company",
    "property",
    "company",
    "project",
    "property",
  ];
  const kind = kinds[i % kinds.length]!;
  const id = `${kind.slice(0, 4)}-${String(i + 1).padStart(3, "0")}`;
  return {
    id,
    kind,
    name: `${kind[0]!.toUpperCase()}${kind.slice(1)} ${i + 1}`,
    tags: { region: REGIONS[i % 4]!, kind },
  };
}

if (values.fresh) rmSync(root, { recursive: true, force: true });
mkdirSync(root, { recursive: true });
const operator = await loadOrCreateIdentity(join(root, "operator"), "operator");
const hub = await loadOrCreateIdentity(join(root, "hub"), "hub");

const entities = Array.from({ length: count }, (_, i) => plan(i));
const companies = entities.filter((e) => e.kind === "company").map((e) => ({ entityId: e.id, name: e.name }));
for (const e of entities) {
  const dir = join(root, "toteboxes", e.id);
  if (existsSync(join(dir, "archive.db"))) continue;
  process.stderr.write(`creating ${e.id} (${e.kind}) …\n`);
  await initArchive({ dir, ...e });
  const a = await openArchive(dir);
  generateDemoData(a.db, {
    kind: e.kind,
    seed: SEED,
    entityId: e.id,
    asOf: AS_OF,
    peers: e.kind === "company" ? companies.filter((c) => c.entityId !== e.id) : [],
  });
  trustPeer(a.db, {
    kind: "aggregator",
    label: "demo-hub",
    publicKey: hub.publicKey,
    fingerprint: hub.fingerprint,
    now: Date.now(),
  });
  trustPeer(a.db, {
    kind: "operator",
    label: "demo-operator",
    publicKey: operator.publicKey,
    now: Date.now(),
  });
  a.db.close();
}

const logger = pino({ level: "warn" });
const servers = await Promise.all(
  entities.map((e) =>
    ToteboxServer.start({ dir: join(root, "toteboxes", e.id), viewRunner: "in-process", logger }),
  ),
);

// One question over the whole estate, the way the hub asks it.
const grant = issueGrant({
  operator: "demo-operator",
  aggregatorId: hub.fingerprint,
  aggregatorKey: hub.publicKey,
  tenant: "demo",
  toteboxSelectors: REGIONS.map((r) => `region=${r}`),
  views: ["position"],
  actions: ["read"],
  signer: operator.privateKey,
  clock: systemClock,
});
const caps = issueCallCapabilityBatch(
  servers.map((s) => ({ grant, totebox: s.entity.id, view: "position", action: "read", clock: systemClock })),
  hub.privateKey,
);
const started = performance.now();
const rows = await Promise.all(
  servers.map(async (s, i) => {
    const link = await connectPsp({
      identity: hub,
      role: "commander",
      host: "127.0.0.1",
      port: s.address.port,
      expect: s.identity.fingerprint,
    });
    try {
      const tb = openCommander<ToteboxRemote>(link);
      const ans = await tb.authorize(grant).view("position").read(caps[i]!, { as_of: AS_OF });
      verifyReceipt({
        token: ans.receipt,
        subjectPublicKey: s.identity.publicKey,
        expect: { arrowBytes: ans.arrow },
      });
      const p: Record<string, unknown> = decodeResult(ans.arrow).rows()[0] ?? {};
      const row: Record<string, unknown> = {
        totebox: s.entity.id,
        kind: s.entity.kind,
        region: s.entity.tags.region ?? "",
        ...p,
        verified: "yes",
      };
      return row;
    } finally {
      link.close();
    }
  }),
);
const ms = performance.now() - started;
const money = (v: unknown) =>
  typeof v === "number" ? (v / 100).toLocaleString("en-US", { maximumFractionDigits: 0 }) : String(v);
console.log(
  `\nPosition of the estate as of ${AS_OF} (${rows.length} Toteboxes, ${ms.toFixed(0)} ms, every receipt verified)\n`,
);
console.log(
  ["totebox", "kind", "region", "cash", "assets", "debt", "net value", "verified"]
    .map((h) => h.padEnd(14))
    .join(""),
);
let total = 0;
for (const r of rows) {
  total += Number(r.net_value ?? 0);
  console.log(
    [
      r.totebox,
      r.kind,
      r.region,
      money(r.cash),
      money(r.assets),
      money(r.debt),
      money(r.net_value),
      r.verified,
    ]
      .map((c) => String(c).padEnd(14))
      .join(""),
  );
}
console.log(`\nestate net value ${money(total)} USD`);
console.log(
  `\nToteboxes serving PSP on ${servers.map((s) => s.address.port).join(", ")} (127.0.0.1). Ctrl-C stops them.`,
);
const stop = async () => {
  await Promise.all(servers.map((s) => s.close()));
  process.exit(0);
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
