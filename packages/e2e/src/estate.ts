/**
 * A demo estate on loopback: the Toteboxes of a property manager and a holding company, the
 * identities of the aggregator and of one operator per tenant, and the fleet.yaml that ties them
 * together. Used by `npm start`, the end-to-end tests and the console's browser tests, so that all
 * three look at the same kind of estate.
 *
 * Layout under the estate root:
 *   toteboxes/<id>/      one archive per entity (os-totebox layout)
 *   aggregator/identity/ the aggregator's key and certificate
 *   consoles/<tenant>/   each tenant's operator console home (os-console layout: identity, console.json)
 *   fleet.yaml           written once the Toteboxes' ports are known
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import {
  type Identity,
  loadIdentity,
  loadOrCreateIdentity,
  rawEd25519PublicKey,
} from "@os-orchestration/psp";
import {
  type EntityKind,
  generateDemoData,
  initArchive,
  openArchive,
  ToteboxServer,
  trustPeer,
} from "@os-orchestration/totebox";
import type pino from "pino";
import { stringify } from "yaml";

export const ESTATE_AS_OF = "2026-10-31";
export const ESTATE_SEED = 2026;
const REGIONS = ["west", "east", "north", "south"] as const;

export interface EstateEntity {
  readonly id: string;
  readonly kind: EntityKind;
  readonly name: string;
  readonly tags: Readonly<Record<string, string>>;
  /** Tenants that may see this Totebox. */
  readonly tenants: readonly string[];
}

export interface EstateTenant {
  readonly id: string;
  readonly name: string;
  readonly operator: string;
}

/**
 * Atlas, the family office, oversees the whole estate; Crown, the holding company, sees its own
 * companies and the northern buildings it co-owns. They share those ten Toteboxes.
 */
export const TENANTS: readonly EstateTenant[] = [
  { id: "atlas", name: "Atlas Family Office", operator: "alice" },
  { id: "crown", name: "Crown Holdings", operator: "bob" },
];

const BUILDINGS = [
  "Harbour House",
  "Elm Court",
  "Granary Wharf",
  "Cedar Point",
  "Foundry Lofts",
  "Linden Row",
  "Maple Yard",
  "Quayside",
  "Riverside Mill",
  "Station Square",
  "The Arcade",
  "Union Works",
  "Victoria Place",
  "Willow Gardens",
  "York Terrace",
  "Zenith Tower",
];
const COMPANIES = [
  "Crown Holdings",
  "Crown Logistics",
  "Crown Retail",
  "Crown Energy",
  "Crown Finance",
  "Crown Services",
];
const PROJECTS = ["Northgate Development", "Southbank Development"];

/**
 * About 2/3 property buildings, 1/4 companies (one holding and its subsidiaries) and the rest
 * development projects: 24 gives 16 buildings, 6 companies and 2 projects.
 */
export function planEstate(count: number): EstateEntity[] {
  if (!Number.isInteger(count) || count < 3 || count > 5000) throw new RangeError("count must be 3..5000");
  const companies = Math.max(2, Math.round((count * 6) / 24));
  const projects = Math.max(1, Math.round((count * 2) / 24));
  const properties = count - companies - projects;
  const out: EstateEntity[] = [];
  for (let i = 0; i < properties; i++) {
    const region = REGIONS[i % REGIONS.length]!;
    const base = BUILDINGS[i % BUILDINGS.length]!;
    out.push({
      id: `prop-${String(i + 1).padStart(3, "0")}`,
      kind: "property",
      name: i < BUILDINGS.length ? base : `${base} ${Math.floor(i / BUILDINGS.length) + 1}`,
      tags: { region, kind: "property", portfolio: i % 3 === 2 ? "value-add" : "core" },
      // Crown co-owns the northern buildings: both tenants see them.
      tenants: region === "north" ? ["atlas", "crown"] : ["atlas"],
    });
  }
  for (let i = 0; i < companies; i++) {
    const base = COMPANIES[i % COMPANIES.length]!;
    out.push({
      id: `co-${String(i + 1).padStart(3, "0")}`,
      kind: "company",
      name: i < COMPANIES.length ? base : `${base} ${Math.floor(i / COMPANIES.length) + 1}`,
      tags: { region: REGIONS[(i + 1) % REGIONS.length]!, kind: "company", portfolio: "holding" },
      tenants: ["atlas", "crown"],
    });
  }
  for (let i = 0; i < projects; i++) {
    const base = PROJECTS[i % PROJECTS.length]!;
    out.push({
      id: `proj-${String(i + 1).padStart(3, "0")}`,
      kind: "project",
      name: i < PROJECTS.length ? base : `${base} ${Math.floor(i / PROJECTS.length) + 1}`,
      tags: { region: i % 2 === 0 ? "north" : "south", kind: "project", portfolio: "development" },
      tenants: ["atlas"],
    });
  }
  return out;
}

/** The os-console home of a tenant's operator inside an estate. */
export function consoleHomeOf(root: string, tenant: string): string {
  return join(root, "consoles", tenant);
}

export interface Estate {
  readonly root: string;
  readonly entities: readonly EstateEntity[];
  readonly aggregator: Identity;
  /** Operator identity per tenant id. */
  readonly operators: ReadonlyMap<string, Identity>;
  toteboxDir(id: string): string;
}

/**
 * Creates what is missing of an estate under `root` (archives, identities) and returns it. An
 * archive that already exists is reused as is: a second `npm start` starts in seconds.
 */
export async function buildEstate(options: {
  root: string;
  count: number;
  seed?: number;
  asOf?: string;
  scale?: number;
  onProgress?: (message: string) => void;
}): Promise<Estate> {
  const { root } = options;
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const aggregator = await loadOrCreateIdentity(join(root, "aggregator", "identity"), "os-orchestration");
  const operators = new Map<string, Identity>();
  for (const t of TENANTS) {
    // Each tenant's operator console keeps its key in its own home (os-console layout).
    operators.set(
      t.id,
      await loadOrCreateIdentity(join(consoleHomeOf(root, t.id), "identity"), `operator:${t.operator}`),
    );
  }
  const entities = planEstate(options.count);
  const companies = entities
    .filter((e) => e.kind === "company")
    .map((e) => ({ entityId: e.id, name: e.name }));
  const toteboxDir = (id: string) => join(root, "toteboxes", id);
  for (const e of entities) {
    const dir = toteboxDir(e.id);
    if (existsSync(join(dir, "archive.db"))) continue;
    options.onProgress?.(`creating ${e.id} (${e.name})`);
    await initArchive({ dir, id: e.id, kind: e.kind, name: e.name, tags: { ...e.tags } });
    const a = await openArchive(dir);
    try {
      generateDemoData(a.db, {
        kind: e.kind,
        seed: options.seed ?? ESTATE_SEED,
        entityId: e.id,
        asOf: options.asOf ?? ESTATE_AS_OF,
        ...(options.scale !== undefined ? { scale: options.scale } : {}),
        peers: e.kind === "company" ? companies.filter((c) => c.entityId !== e.id) : [],
      });
      const now = Date.now();
      // What pairing would record: the aggregator by certificate, each operator of a tenant that
      // may see this Totebox by key, limited to that tenant.
      trustPeer(a.db, {
        kind: "aggregator",
        label: "estate-aggregator",
        publicKey: aggregator.publicKey,
        fingerprint: aggregator.fingerprint,
        now,
      });
      for (const t of TENANTS) {
        if (!e.tenants.includes(t.id)) continue;
        trustPeer(a.db, {
          kind: "operator",
          label: t.operator,
          publicKey: operators.get(t.id)!.publicKey,
          tenants: [t.id],
          now,
        });
      }
    } finally {
      a.db.close();
    }
  }
  return { root, entities, aggregator, operators, toteboxDir };
}

export interface RunningTotebox {
  readonly id: string;
  readonly host: string;
  readonly port: number;
  readonly fingerprint: string;
  /** Stops the Totebox (SIGTERM for a process). */
  stop(): Promise<void>;
  /** SIGKILL for a process; the same as stop in-process. */
  kill(): Promise<void>;
  readonly pid: number | undefined;
}

const TOTEBOX_BIN = fileURLToPath(new URL("../../totebox/bin/os-totebox.js", import.meta.url));
const ORCH_BIN = fileURLToPath(new URL("../../orchestration/bin/os-orchestration.js", import.meta.url));
const CONSOLE_BIN = fileURLToPath(new URL("../../console/bin/os-console.js", import.meta.url));

/** Children started by this module, stopped by `stopAllChildren` (and on process exit). */
const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

export interface ServedProcess {
  readonly child: ChildProcess;
  readonly listening: Record<string, unknown>;
  stderr(): string;
}

/** Spawns one of our binaries and resolves on its `{"event":"listening"}` line. */
export function spawnServing(
  bin: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
  cwd?: string,
): Promise<ServedProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      ...(cwd ? { cwd } : {}),
      env: { ...process.env, TOTEBOX_LOG_LEVEL: "warn", ORCH_LOG_LEVEL: "warn", ...env },
    });
    children.add(child);
    let stderr = "";
    child.stderr!.setEncoding("utf8").on("data", (s: string) => {
      stderr += s;
      if (stderr.length > 256 * 1024) stderr = stderr.slice(-128 * 1024);
    });
    let ready = false;
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (ready) return;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if (msg.event !== "listening") return;
      ready = true;
      resolve({ child, listening: msg, stderr: () => stderr });
    });
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      children.delete(child);
      if (!ready)
        reject(new Error(`${bin} exited (${code ?? signal}) before listening: ${stderr.slice(-4000)}`));
    });
  });
}

export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill(signal);
  await exited;
}

export async function stopAllChildren(): Promise<void> {
  await Promise.all([...children].map((c) => stopChild(c, "SIGKILL")));
}

/** Starts Toteboxes as real `os-totebox serve` processes (a few at a time: 2 cores here). */
export async function startToteboxProcesses(
  estate: Estate,
  ids: readonly string[] = estate.entities.map((e) => e.id),
  options: { concurrency?: number; ports?: ReadonlyMap<string, number> } = {},
): Promise<Map<string, RunningTotebox>> {
  const out = new Map<string, RunningTotebox>();
  const queue = [...ids];
  const worker = async () => {
    for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
      const port = options.ports?.get(id) ?? 0;
      const served = await spawnServing(TOTEBOX_BIN, [
        "serve",
        "--dir",
        estate.toteboxDir(id),
        "--port",
        String(port),
      ]);
      const l = served.listening;
      out.set(id, {
        id,
        host: String(l.host),
        port: Number(l.port),
        fingerprint: String(l.deviceId),
        pid: served.child.pid,
        stop: () => stopChild(served.child, "SIGTERM"),
        kill: () => stopChild(served.child, "SIGKILL"),
      });
    }
  };
  await Promise.all(Array.from({ length: options.concurrency ?? 6 }, worker));
  return out;
}

/** Starts Toteboxes inside this process (fast; for the demo and in-process tests). */
export async function startToteboxesInProcess(
  estate: Estate,
  logger: pino.Logger,
  ids: readonly string[] = estate.entities.map((e) => e.id),
  options: { ports?: ReadonlyMap<string, number> } = {},
): Promise<Map<string, RunningTotebox & { server: ToteboxServer }>> {
  const out = new Map<string, RunningTotebox & { server: ToteboxServer }>();
  for (const id of ids) {
    const server = await ToteboxServer.start({
      dir: estate.toteboxDir(id),
      viewRunner: "in-process",
      logger,
      port: options.ports?.get(id) ?? 0,
    });
    out.set(id, {
      id,
      host: server.address.host,
      port: server.address.port,
      fingerprint: server.identity.fingerprint,
      pid: undefined,
      server,
      stop: () => server.close(),
      kill: () => server.close(),
    });
  }
  return out;
}

/** The fleet.yaml of an estate whose Toteboxes listen where `running` says. */
export function fleetYaml(
  estate: Estate,
  running: ReadonlyMap<string, { host: string; port: number; fingerprint: string }>,
  extra: { listen?: { host: string; port: number }; http?: { host: string; port: number } } = {},
): string {
  const doc = {
    version: 1,
    ...(extra.listen || extra.http
      ? {
          aggregator: {
            ...(extra.listen ? { listen: extra.listen } : {}),
            ...(extra.http ? { http: extra.http } : {}),
          },
        }
      : {}),
    tenants: Object.fromEntries(TENANTS.map((t) => [t.id, { name: t.name }])),
    toteboxes: estate.entities.map((e) => {
      const r = running.get(e.id);
      if (!r) throw new Error(`no address for ${e.id}`);
      return {
        id: e.id,
        name: e.name,
        address: `${r.host}:${r.port}`,
        fingerprint: r.fingerprint,
        tags: { ...e.tags },
        state: "active",
        tenants: [...e.tenants],
      };
    }),
    operators: TENANTS.map((t) => ({
      id: t.operator,
      public_key: Buffer.from(rawEd25519PublicKey(estate.operators.get(t.id)!.publicKey)).toString("hex"),
      tenant: t.id,
      role: "manager",
    })),
  };
  return `# os-orchestration fleet: generated for the demo estate in ${estate.root}\n${stringify(doc)}`;
}

/**
 * Writes each tenant's console.json: the pinned aggregator and the keys of the tenant's Toteboxes,
 * which is what `os-console pair` and `os-console pair-totebox` would have recorded.
 */
export async function writeConsoleHomes(
  estate: Estate,
  aggregator: { host: string; port: number },
): Promise<Map<string, string>> {
  const homes = new Map<string, string>();
  const keys = new Map<string, { fingerprint: string; publicKey: string }>();
  for (const e of estate.entities) {
    const id = await loadIdentity(join(estate.toteboxDir(e.id), "identity"));
    keys.set(e.id, {
      fingerprint: id.fingerprint,
      publicKey: Buffer.from(rawEd25519PublicKey(id.publicKey)).toString("hex"),
    });
  }
  for (const t of TENANTS) {
    const home = consoleHomeOf(estate.root, t.id);
    const config = {
      operator: { id: t.operator, tenant: t.id, role: "manager" },
      aggregator: { ...aggregator, fingerprint: estate.aggregator.fingerprint },
      toteboxes: Object.fromEntries(
        estate.entities.filter((e) => e.tenants.includes(t.id)).map((e) => [e.id, keys.get(e.id)!]),
      ),
    };
    writeFileSync(join(home, "console.json"), `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
    homes.set(t.id, home);
  }
  return homes;
}

export function writeFleet(path: string, yaml: string): void {
  writeFileSync(path, yaml, { mode: 0o600 });
}

/** Starts `os-orchestration serve` as a process. */
export async function startAggregatorProcess(options: {
  config: string;
  identityDir: string;
  listen?: string;
  http?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}): Promise<ServedProcess & { port: number; httpUrl: string | null }> {
  const args = ["serve", "--config", options.config, "--identity", options.identityDir];
  if (options.listen) args.push("--listen", options.listen);
  if (options.http) args.push("--http", options.http);
  const served = await spawnServing(ORCH_BIN, args, options.env ?? {}, options.cwd);
  return {
    ...served,
    port: Number(served.listening.port),
    httpUrl: (served.listening.http as string | null) ?? null,
  };
}

const REPO = fileURLToPath(new URL("../../../", import.meta.url));

/** Builds the dashboard (Vite) if it is missing or older than its sources. */
export function ensureUiBuilt(say: (s: string) => void = () => {}): void {
  const src = join(REPO, "packages", "console", "ui");
  const dist = join(REPO, "packages", "console", "ui-dist", "index.html");
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((m, e) => {
      const p = join(dir, e.name);
      return Math.max(m, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
    }, 0);
  if (existsSync(dist) && newest(src) <= statSync(dist).mtimeMs) return;
  say("building the dashboard …");
  execFileSync(
    process.execPath,
    [
      join(REPO, "node_modules", "vite", "bin", "vite.js"),
      "build",
      "--config",
      join(src, "vite.config.ts"),
      "--logLevel",
      "warn",
    ],
    { stdio: ["ignore", "ignore", "inherit"], cwd: REPO },
  );
}

/** Starts `os-console ui` for a console home; resolves with the printed dashboard address. */
export async function startConsoleUi(options: {
  home: string;
  port?: number;
}): Promise<ServedProcess & { url: string }> {
  const served = await spawnServing(CONSOLE_BIN, [
    "ui",
    "--home",
    options.home,
    "--port",
    String(options.port ?? 0),
  ]);
  return { ...served, url: String(served.listening.url) };
}

/**
 * Polls a condition that no event announces (a config file reloaded in another process, a row in a
 * Totebox's own database), with a deadline. Where an event exists, tests wait on the event instead.
 */
export async function waitFor(cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 25));
  }
}

export { CONSOLE_BIN, ORCH_BIN, TOTEBOX_BIN };
