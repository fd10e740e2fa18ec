import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import type { FanOutRequest, FanOutResult } from "@os-orchestration/orchestration";
import {
  type ColumnSpec,
  connectPsp,
  decodeUnverified,
  type Endpoint,
  formatDeviceId,
  normalizeFingerprint,
  openCommander,
  pairingProof,
  parseEndpoint,
  rawEd25519PublicKey,
  systemClock,
  verifyPairingProof,
} from "@os-orchestration/psp";
import type { AuditCheckpoint, AuditConsistencyProof, ToteboxRemote } from "@os-orchestration/totebox";
import { type AggregatorConnection, connectAggregator, runFanOut, signGrant } from "./client.ts";
import { ConsoleError } from "./errors.ts";
import { csv, fromJson, ProgressBar, table, toJson } from "./format.ts";
import { ConsoleHome, defaultHome } from "./home.ts";
import { startUiServer } from "./ui-server.ts";
import { type Verification, verifyAuditGrowth, verifyResult } from "./verify.ts";

const USAGE = `os-console — the operator's terminal (Aggregate mode)

  os-console keys init                         create the operator key (stays on this machine)
  os-console keys show                         print the public key to register or pair
  os-console pair --address HOST:PORT --device-id ID --code CODE [--aggregator HOST:PORT]
      pair with an aggregator (its owner ran os-orchestration pair-operator)
  os-console pair-totebox --address HOST:PORT --device-id ID --code CODE
      pair with a Totebox as its operator (its owner ran os-totebox pair --as operator)
  os-console grant [--ttl-seconds 3600] [--targets SEL,...] [--views V,...] [--actions A,...]
      sign a time-boxed grant for the aggregator; later commands use it
  os-console fleet                             the tenant's Toteboxes and their links
  os-console read VIEW [--targets SEL]... [--param k=v]... [--row KEY]
  os-console viewport NAME [--param k=v]... [--targets SEL]...
  os-console command NAME --targets SEL --idempotency-key K [--arg k=v]...
  os-console audit verify TOTEBOX              check its audit log only grew since the last check
  os-console receipts verify FILE              verify an answer saved with --save
  os-console ui [--port 0]                     the web dashboard on 127.0.0.1

Common: --home DIR (default $OS_CONSOLE_HOME or ~/.os-console), --json, --csv, --save FILE,
        --mode warn|abort, --timeout MS, --deadline MS
Exit codes: 0 ok; 1 refused or failed; 2 usage; 3 partial answer under --mode abort;
            4 an answer whose receipts or figures do not verify.`;

const EXIT = { ok: 0, failed: 1, usage: 2, partial: 3, unverified: 4 } as const;

const argv = process.argv.slice(2);
const command = argv[0];
const rest = argv.slice(1);

const COMMON = {
  home: { type: "string" },
  json: { type: "boolean" },
  csv: { type: "boolean" },
  save: { type: "string" },
  mode: { type: "string" },
  timeout: { type: "string" },
  deadline: { type: "string" },
  targets: { type: "string", multiple: true },
  param: { type: "string", multiple: true },
  arg: { type: "string", multiple: true },
  row: { type: "string" },
  "idempotency-key": { type: "string" },
  address: { type: "string" },
  "device-id": { type: "string" },
  code: { type: "string" },
  aggregator: { type: "string" },
  "ttl-seconds": { type: "string" },
  views: { type: "string" },
  actions: { type: "string" },
  port: { type: "string" },
  host: { type: "string" },
} as const;

function usage(msg?: string): never {
  if (msg) console.error(`os-console: ${msg}`);
  console.error(USAGE);
  process.exit(EXIT.usage);
}

const { values, positionals } = (() => {
  try {
    return parseArgs({ args: rest, options: COMMON, allowPositionals: true });
  } catch (e) {
    usage((e as Error).message);
  }
})();
const home = new ConsoleHome(resolve(values.home ?? defaultHome()));

function need(v: string | undefined, name: string): string {
  if (!v) usage(`missing --${name}`);
  return v;
}

function hostPort(v: string, what: string): Endpoint {
  const p = parseEndpoint(v);
  if (!p.ok) usage(`${what}: ${p.reason}`);
  return { host: p.host, port: p.port };
}

/** k=v pairs; numbers and booleans typed, everything else a string. */
function pairs(list: readonly string[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const p of list ?? []) {
    const i = p.indexOf("=");
    if (i < 1) usage(`${p} is not key=value`);
    const v = p.slice(i + 1);
    out[p.slice(0, i)] =
      /^-?\d+$/.test(v) && Number.isSafeInteger(Number(v))
        ? Number(v)
        : v === "true"
          ? true
          : v === "false"
            ? false
            : v;
  }
  return out;
}

function ms(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) usage(`--${name} must be a positive number of milliseconds`);
  return n;
}

async function connect(): Promise<AggregatorConnection> {
  const cfg = home.config();
  if (!cfg.aggregator) {
    throw new ConsoleError("CONSOLE_ERR_CONFIG", "not paired with an aggregator: run os-console pair");
  }
  return connectAggregator({ identity: await home.identity(), ...cfg.aggregator });
}

function grantOrFail(): Uint8Array {
  const g = home.liveGrant(systemClock.now());
  if (!g) throw new ConsoleError("CONSOLE_ERR_KEYS", "no live grant: run os-console grant");
  return g;
}

function printSections(r: FanOutResult, extraColumns?: ColumnSpec[]): void {
  for (const s of r.sections) {
    const cols = extraColumns ?? s.columns;
    if (values.json) continue;
    if (values.csv) console.log(csv(cols, s.rows));
    else {
      console.log(`\n${s.title || s.name}`);
      console.log(table(cols, s.rows));
    }
  }
}

/** Runs a fan-out with a progress bar, prints, verifies; returns the exit code. */
async function fanOut(request: FanOutRequest): Promise<number> {
  const conn = await connect();
  try {
    const session = conn.aggregator.authorize(grantOrFail());
    const bar = new ProgressBar();
    const r = await runFanOut(session, request, (p) => bar.update(p.answered, p.targeted, request.name));
    bar.done();
    const v = await verifyResult(r, (id) => home.toteboxKeys().get(id));
    if (values.save) writeFileSync(values.save, toJson(r), { mode: 0o600 });
    if (values.json) console.log(toJson({ ...r, verification: v }));
    else printSections(r);
    // Never silently partial: every missing Totebox is named, with its reason, on stderr.
    const missing = r.outcomes.filter((o) => o.status !== "ok");
    if (missing.length > 0) {
      console.error(`\n${r.answered} of ${r.targeted} Toteboxes answered:`);
      for (const o of missing)
        console.error(`  ${o.totebox.padEnd(12)} ${o.status.padEnd(10)} ${o.code ?? ""} ${o.reason}`);
    }
    if (!values.json) {
      const mark = v.verified
        ? "verified"
        : `NOT verified (receipts: ${v.receipts}, recomputed: ${v.recomputed})`;
      console.error(
        `\n${r.kind} ${r.name}: ${r.answered}/${r.targeted} answered in ${r.finishedAt - r.startedAt} ms; ${mark}`,
      );
    }
    if (r.error) {
      console.error(`os-console: ${r.error.code}: ${r.error.message}`);
      return r.error.code === "ORCH_ERR_PARTIAL" ? EXIT.partial : EXIT.failed;
    }
    return failedVerification(v) ? EXIT.unverified : EXIT.ok;
  } finally {
    conn.close();
  }
}

/**
 * A verification that failed, as opposed to one that could not be made: a receipt that does not
 * verify, or recomputed figures that differ. A Totebox whose key this console does not know is
 * reported unverified on stderr but does not fail the command.
 */
function failedVerification(v: Verification): boolean {
  return (
    v.recomputed === false || v.toteboxes.some((c) => !c.verified && c.code !== "CONSOLE_ERR_UNKNOWN_TOTEBOX")
  );
}

function requestOptions(): Omit<FanOutRequest, "kind" | "name"> {
  const mode = values.mode ?? "warn";
  if (mode !== "warn" && mode !== "abort") usage("--mode must be warn or abort");
  const targets = values.targets?.flatMap((t) => t.split(/\s+/)).filter(Boolean);
  return {
    ...(targets && targets.length > 0 ? { targets } : {}),
    params: pairs(values.param),
    mode,
    ...(values.timeout ? { timeoutMs: ms(values.timeout, "timeout")! } : {}),
    ...(values.deadline ? { deadlineMs: ms(values.deadline, "deadline")! } : {}),
  };
}

async function main(): Promise<number> {
  switch (command) {
    case "keys": {
      const sub = positionals[0];
      const id =
        sub === "init"
          ? await home.createIdentity()
          : sub === "show"
            ? await home.identity()
            : usage("keys init|show");
      const info = {
        publicKey: Buffer.from(rawEd25519PublicKey(id.publicKey)).toString("hex"),
        keyId: id.keyId,
        deviceId: formatDeviceId(id.fingerprint),
        home: home.dir,
      };
      if (values.json) console.log(JSON.stringify(info));
      else
        console.log(
          `operator key in ${home.dir}\n  public key  ${info.publicKey}\n  key id      ${info.keyId}\n  device ID   ${info.deviceId}`,
        );
      return EXIT.ok;
    }
    case "pair": {
      const identity = await home.identity();
      const at = hostPort(need(values.address, "address"), "--address");
      const fingerprint = normalizeFingerprint(need(values["device-id"], "device-id"));
      const code = need(values.code, "code");
      const link = await connectPsp({ identity, role: "commander", ...at, expect: fingerprint });
      try {
        const remote = openCommander<{
          pair(p: Uint8Array): Promise<{ proof: Uint8Array; operator: string; tenant: string; role: string }>;
        }>(link);
        const input = { code, initiatorFingerprint: identity.fingerprint, responderFingerprint: fingerprint };
        const ans = await remote.pair(pairingProof({ ...input, side: "initiator" }));
        if (!verifyPairingProof({ ...input, side: "responder" }, ans.proof)) {
          throw new ConsoleError(
            "CONSOLE_ERR_AGGREGATOR",
            "the aggregator's pairing proof does not match the code",
          );
        }
        const serving = values.aggregator ? hostPort(values.aggregator, "--aggregator") : at;
        home.update((c) => {
          c.operator = { id: ans.operator, tenant: ans.tenant, role: ans.role };
          c.aggregator = { ...serving, fingerprint };
        });
        console.log(
          `paired with aggregator ${formatDeviceId(fingerprint)} as ${ans.operator} (tenant ${ans.tenant}, ${ans.role})`,
        );
      } finally {
        link.close();
      }
      return EXIT.ok;
    }
    case "pair-totebox": {
      const identity = await home.identity();
      const at = hostPort(need(values.address, "address"), "--address");
      const fingerprint = normalizeFingerprint(need(values["device-id"], "device-id"));
      const code = need(values.code, "code");
      const link = await connectPsp({ identity, role: "commander", ...at, expect: fingerprint });
      try {
        const tb = openCommander<ToteboxRemote>(link);
        const input = { code, initiatorFingerprint: identity.fingerprint, responderFingerprint: fingerprint };
        const ans = await tb.pair(pairingProof({ ...input, side: "initiator" }));
        if (!verifyPairingProof({ ...input, side: "responder" }, ans.proof)) {
          throw new ConsoleError(
            "CONSOLE_ERR_AGGREGATOR",
            "the Totebox's pairing proof does not match the code",
          );
        }
        const key = link.peer.publicKey;
        if (!key) throw new ConsoleError("CONSOLE_ERR_AGGREGATOR", "the Totebox presented no Ed25519 key");
        // The key that signs this Totebox's receipts and checkpoints, learnt over the pinned link.
        home.update((c) => {
          c.toteboxes[ans.totebox] = {
            fingerprint,
            publicKey: Buffer.from(rawEd25519PublicKey(key)).toString("hex"),
          };
        });
        console.log(
          `paired with Totebox ${ans.totebox} (${formatDeviceId(fingerprint)}); its receipts can now be verified`,
        );
      } finally {
        link.close();
      }
      return EXIT.ok;
    }
    case "grant": {
      const cfg = home.config();
      if (!cfg.operator)
        throw new ConsoleError("CONSOLE_ERR_CONFIG", "not paired with an aggregator: run os-console pair");
      const conn = await connect();
      try {
        const ttl = values["ttl-seconds"] ? Number(values["ttl-seconds"]) : 3600;
        if (!Number.isInteger(ttl) || ttl < 60 || ttl > 12 * 3600) usage("--ttl-seconds must be 60..43200");
        const targets = (values.targets ?? []).flatMap((t) => t.split(/\s+/)).filter(Boolean);
        const views = values.views?.split(",") ?? [
          ...new Set([
            ...conn.hello.viewports.flatMap((v) => v.views),
            "position",
            "income-summary",
            "occupancy",
            "rent-roll-summary",
            "intercompany",
            "archive-health",
            "audit",
          ]),
        ];
        const actions = values.actions?.split(",") ?? ["read"];
        const fleet = targets.length > 0 ? [] : await conn.aggregator.fleet();
        const grant = signGrant({
          operator: await home.identity(),
          operatorId: cfg.operator.id,
          tenant: cfg.operator.tenant,
          aggregator: conn.hello,
          // Default: every Totebox of the tenant, by id (a selector would also reach Toteboxes
          // added later; ids keep the grant to what the operator saw when signing).
          toteboxIds: targets.length > 0 ? targets.filter((t) => !t.includes("=")) : fleet.map((e) => e.id),
          toteboxSelectors: targets.filter((t) => t.includes("=")),
          views,
          actions,
          lifetimeSeconds: ttl,
        });
        home.saveGrant(grant);
        const c = decodeUnverified(grant).claims;
        console.log(
          `grant signed for ${cfg.operator.id}@${cfg.operator.tenant} until ${new Date(c.exp * 1000).toISOString()}`,
        );
      } finally {
        conn.close();
      }
      return EXIT.ok;
    }
    case "fleet": {
      const conn = await connect();
      try {
        const fleet = await conn.aggregator.authorize(grantOrFail()).fleet();
        if (values.json) {
          console.log(toJson(fleet));
          return EXIT.ok;
        }
        const cols: ColumnSpec[] = ["id", "tags", "state", "online", "last_contact", "last_error"].map(
          (name) => ({ name, type: "string" }),
        );
        const rows = fleet.map((e) => [
          e.id,
          Object.entries(e.tags)
            .map(([k, v]) => `${k}=${v}`)
            .join(","),
          e.state,
          e.online ? "yes" : "no",
          e.lastContact ? new Date(e.lastContact).toISOString() : "never",
          e.lastError ? `${e.lastError.code}` : "",
        ]);
        console.log(values.csv ? csv(cols, rows) : table(cols, rows));
      } finally {
        conn.close();
      }
      return EXIT.ok;
    }
    case "read": {
      const view = positionals[0] ?? usage("read VIEW");
      return fanOut({
        kind: "read",
        name: view,
        ...requestOptions(),
        ...(values.row ? { row: values.row } : {}),
      });
    }
    case "viewport": {
      const name = positionals[0] ?? usage("viewport NAME");
      return fanOut({ kind: "viewport", name, ...requestOptions() });
    }
    case "command": {
      const name = positionals[0] ?? usage("command NAME");
      if (!values.targets) usage("command needs --targets");
      return fanOut({
        kind: "command",
        name,
        ...requestOptions(),
        params: {},
        args: pairs(values.arg),
        idempotencyKey: need(values["idempotency-key"], "idempotency-key"),
      });
    }
    case "audit": {
      if (positionals[0] !== "verify" || !positionals[1]) usage("audit verify TOTEBOX");
      const id = positionals[1];
      const key = home.toteboxKeys().get(id);
      if (!key)
        throw new ConsoleError(
          "CONSOLE_ERR_UNKNOWN_TOTEBOX",
          `no key for ${id}: pair with it first (os-console pair-totebox)`,
        );
      const conn = await connect();
      try {
        const session = conn.aggregator.authorize(grantOrFail());
        const now = (await session.audit(id, { op: "checkpoint" })) as { checkpoint: AuditCheckpoint };
        const previous = home.checkpoint(id);
        let proof: readonly Uint8Array[] | null = null;
        if (previous && previous.treeSize > 0) {
          const c = (await session.audit(id, {
            op: "consistency",
            oldSize: previous.treeSize,
            newSize: now.checkpoint.treeSize,
          })) as { proof: AuditConsistencyProof };
          proof = c.proof.proof;
        }
        verifyAuditGrowth({
          key,
          checkpoint: now.checkpoint,
          previous: previous && previous.treeSize > 0 ? previous : null,
          proof,
        });
        home.saveCheckpoint(id, {
          treeSize: now.checkpoint.treeSize,
          rootHash: Buffer.from(now.checkpoint.rootHash).toString("hex"),
          time: now.checkpoint.time,
        });
        console.log(
          previous
            ? `audit log of ${id}: grew from ${previous.treeSize} to ${now.checkpoint.treeSize} entries, consistent`
            : `audit log of ${id}: ${now.checkpoint.treeSize} entries; checkpoint stored (first check)`,
        );
      } finally {
        conn.close();
      }
      return EXIT.ok;
    }
    case "receipts": {
      if (positionals[0] !== "verify" || !positionals[1]) usage("receipts verify FILE");
      const r = fromJson(readFileSync(positionals[1], "utf8")) as FanOutResult;
      const v = await verifyResult(r, (id) => home.toteboxKeys().get(id));
      if (values.json) console.log(toJson(v));
      else {
        for (const c of v.toteboxes)
          console.log(`${c.totebox.padEnd(12)} ${c.verified ? "verified" : `NOT verified (${c.code})`}`);
        console.log(
          `receipts: ${v.receipts}; figures recomputed: ${v.recomputed === null ? "n/a" : v.recomputed ? "equal" : "DIFFERENT"}`,
        );
      }
      return failedVerification(v) ? EXIT.unverified : EXIT.ok;
    }
    case "ui": {
      const cfg = home.config();
      if (!cfg.aggregator || !cfg.operator)
        throw new ConsoleError("CONSOLE_ERR_CONFIG", "not paired: run os-console pair");
      const ui = await startUiServer({
        home,
        host: values.host ?? "127.0.0.1",
        port: values.port ? Number(values.port) : 0,
      });
      console.log(JSON.stringify({ event: "listening", url: ui.url, port: ui.port }));
      console.error(`\nos-console dashboard: ${ui.url}\n`);
      const stop = async () => {
        await ui.close();
        process.exit(0);
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      return -1;
    }
    default:
      usage(command ? `unknown command ${command}` : undefined);
  }
}

/** Exits once stdout and stderr have drained: a large --json answer piped to another program
 * must not be cut off by process.exit. */
function exitAfterFlush(code: number): void {
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write("", done);
  process.stderr.write("", done);
}

main().then(
  (code) => {
    if (code >= 0) exitAfterFlush(code);
  },
  (e: unknown) => {
    const err = e as { code?: string; message?: string };
    console.error(`os-console: ${err.code ?? "error"}: ${err.message ?? String(e)}`);
    exitAfterFlush(EXIT.failed);
  },
);
