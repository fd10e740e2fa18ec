/**
 * End-to-end tests of the `os-totebox` binary: real processes on loopback, driven through the CLI
 * (init, demo-data, trust, pair, revoke, state, staged, approve, verify, audit, import) and through
 * PSP as an aggregator holding an operator's grant. One archive and one server are shared by the
 * tests below, which run in order; waits are on events (the `listening` line, a link's `close`,
 * a changed `hello` answer), never on timers.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { sign as edSign, type KeyObject, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import {
  type Clock,
  connectPsp,
  createIdentity,
  decodeResult,
  decodeUnverified,
  type Identity,
  issueCallCapability,
  issueGrant,
  keyIdOfPublicKey,
  openCommander,
  type PspLink,
  pairingProof,
  rawEd25519PublicKey,
  requestHash,
  systemClock,
  verifyConsistency,
  verifyPairingProof,
  verifyReceipt,
} from "@os-orchestration/psp";
import { decode as cborDecode } from "cbor-x";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import type { ToteboxHello, ToteboxRemote, ToteboxSessionRemote } from "./remote-api.ts";
import type { CommandReply, ReadAnswer } from "./subject.ts";

const BIN = fileURLToPath(new URL("../bin/os-totebox.js", import.meta.url));
const TB_ID = "tb-01";
const TENANT = "acme";
const AS_OF = "2026-11-01";
const COMMANDS = ["verify-ledger", "snapshot", "set-state", "stage-entry"];
const GRANT_VIEWS = [
  "position",
  "income-summary",
  "occupancy",
  "rent-roll-summary",
  "intercompany",
  "archive-health",
  "audit",
  // Table names: the grant reaches them, so only the Totebox's policy can refuse them.
  "journal_lines",
  "accounts",
  "peers",
];

// ---------------------------------------------------------------------------------------------
// Processes

const children = new Set<ChildProcess>();
const childEnv: NodeJS.ProcessEnv = {
  ...process.env,
  TOTEBOX_LOG_LEVEL: process.env.TOTEBOX_LOG_LEVEL ?? "warn",
};
delete childEnv.NODE_OPTIONS;

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: childEnv,
    });
    children.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (s: string) => {
      stdout += s;
    });
    child.stderr.setEncoding("utf8").on("data", (s: string) => {
      stderr += s;
    });
    child.on("error", reject);
    child.on("close", (code) => {
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}

async function cliOk(args: readonly string[]): Promise<string> {
  const r = await cli(args);
  if (r.code !== 0) throw new Error(`os-totebox ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

async function cliJson<T>(args: readonly string[]): Promise<T> {
  return JSON.parse(await cliOk(args)) as T;
}

interface Served {
  child: ChildProcess;
  host: string;
  port: number;
  totebox: string;
  deviceId: string;
  stderr: () => string;
}

/** Starts `os-totebox serve` and resolves on its one `listening` line. */
function serve(dir: string): Promise<Served> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, "serve", "--dir", dir, "--port", "0"], {
      stdio: ["ignore", "pipe", "pipe"],
      env: childEnv,
    });
    children.add(child);
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (s: string) => {
      stderr += s;
      if (stderr.length > 64 * 1024) stderr = stderr.slice(-32 * 1024);
    });
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      let msg: { event?: string; host?: string; port?: number; totebox?: string; deviceId?: string };
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if (msg.event !== "listening") return;
      resolve({
        child,
        host: msg.host as string,
        port: msg.port as number,
        totebox: msg.totebox as string,
        deviceId: msg.deviceId as string,
        stderr: () => stderr,
      });
    });
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      children.delete(child);
      reject(new Error(`os-totebox serve exited (${code ?? signal}) before listening: ${stderr}`));
    });
  });
}

async function stop(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  child.kill(signal);
  return exited;
}

// ---------------------------------------------------------------------------------------------
// PSP

type Remote = ToteboxRemote;
type SessionStub = ToteboxSessionRemote;

const links = new Set<PspLink>();

async function connect(who: Identity, at: Served): Promise<{ link: PspLink; tb: Remote }> {
  const link = await connectPsp({
    identity: who,
    role: "commander",
    host: "127.0.0.1",
    port: at.port,
    expect: at.deviceId,
  });
  links.add(link);
  link.on("close", () => links.delete(link));
  return { link, tb: openCommander<ToteboxRemote>(link) };
}

interface Refusal {
  code?: string;
  message: string;
  detail?: Record<string, unknown>;
}

async function refusal(p: PromiseLike<unknown>): Promise<Refusal> {
  try {
    await p;
  } catch (e) {
    return e as Refusal;
  }
  throw new Error("expected the call to be refused, but it succeeded");
}

/** Waits, without timers, until `hello` answers something `done` accepts. */
async function untilHello(
  tb: Remote,
  done: (h: ToteboxHello) => boolean,
  what: string,
): Promise<ToteboxHello> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const h = await tb.hello();
    if (done(h)) return h;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const ctiOf = (token: Uint8Array) => hex(decodeUnverified(token).claims.cti);

function cborBstr(b: Uint8Array): Buffer {
  const n = b.byteLength;
  const head =
    n < 24
      ? Buffer.from([0x40 + n])
      : n < 256
        ? Buffer.from([0x58, n])
        : Buffer.from([0x59, n >> 8, n & 0xff]);
  return Buffer.concat([head, Buffer.from(b)]);
}

/** COSE Sig_structure for a COSE_Sign1 token (RFC 9052 §4.4) with empty external AAD. */
function sigStructure(token: Uint8Array): Buffer {
  const decoded = cborDecode(Buffer.from(token)) as unknown;
  const arr = (Array.isArray(decoded) ? decoded : (decoded as { value: unknown[] }).value) as Uint8Array[];
  const [protectedBytes, , payload] = arr;
  return Buffer.concat([
    Buffer.from([0x84, 0x6a]),
    Buffer.from("Signature1"),
    cborBstr(protectedBytes as Uint8Array),
    Buffer.from([0x40]),
    cborBstr(payload as Uint8Array),
  ]);
}

/** Replaces a token's Ed25519 signature (its last 64 bytes) with one made by `key`. */
function resign(token: Uint8Array, key: KeyObject): Buffer {
  const t = Buffer.from(token);
  if (t[t.length - 66] !== 0x58 || t[t.length - 65] !== 0x40) throw new Error("not a single-signer token");
  return Buffer.concat([t.subarray(0, t.length - 64), edSign(null, sigStructure(t), key)]);
}

function atomicWrite(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

// ---------------------------------------------------------------------------------------------
// Shared fixture

let root: string;
let dir: string;
let server: Served;
let agg: Identity;
let alice: Identity;
let grant: Uint8Array;
let tb: Remote;
let aggLink: PspLink;
let session: SessionStub;
let tbKey: KeyObject;
let basePolicy: string;
let initOut: { entity: { id: string; kind: string }; deviceId: string };
let demoOut: { transactions: number; lines: number; units: number };

function cap(
  o: {
    view?: string;
    command?: string;
    grant?: Uint8Array;
    totebox?: string;
    clock?: Clock;
    signer?: KeyObject;
  } = {},
): Uint8Array {
  const target = o.command
    ? { command: o.command, action: o.command }
    : { view: o.view ?? "position", action: "read" };
  return issueCallCapability({
    grant: o.grant ?? grant,
    totebox: o.totebox ?? TB_ID,
    ...target,
    clock: o.clock ?? systemClock,
    signer: o.signer ?? agg.privateKey,
  });
}

function read(view: string, params: Record<string, unknown> = {}): Promise<ReadAnswer> {
  return session.read(cap({ view }), view, params);
}

async function rowsOf(view: string, params: Record<string, unknown> = {}) {
  return decodeResult((await read(view, params)).arrow).rows();
}

async function openSession(at: Served): Promise<void> {
  const c = await connect(agg, at);
  tb = c.tb;
  aggLink = c.link;
  // Awaited once so a refused grant fails here; the awaited value is the session's stub.
  session = (await tb.authorize(grant)) as SessionStub;
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "os-totebox-cli-"));
  dir = join(root, "archive");
  [agg, alice] = await Promise.all([createIdentity({ name: "hub" }), createIdentity({ name: "alice" })]);
  initOut = await cliJson([
    "init",
    "--dir",
    dir,
    "--id",
    TB_ID,
    "--kind",
    "property",
    "--name",
    "Harbour View",
    "--tag",
    "region=west",
    "--json",
  ]);
  const certFile = join(root, "hub.crt");
  writeFileSync(certFile, agg.certPem);
  const [demo, id] = await Promise.all([
    cliJson<typeof demoOut>(["demo-data", "--dir", dir, "--seed", "7", "--as-of", AS_OF, "--json"]),
    cliJson<{ certPem: string }>(["id", "--dir", dir, "--json"]),
    cliOk(["trust", "--dir", dir, "--as", "aggregator", "--label", "hub", "--cert", certFile]),
    cliOk([
      "trust",
      "--dir",
      dir,
      "--as",
      "operator",
      "--label",
      "alice",
      "--public-key",
      rawEd25519PublicKey(alice.publicKey).toString("hex"),
      "--tenant",
      TENANT,
    ]),
  ]);
  demoOut = demo;
  tbKey = new X509Certificate(id.certPem).publicKey;
  basePolicy = readFileSync(join(dir, "policy.yaml"), "utf8");

  server = await serve(dir);
  grant = issueGrant({
    operator: "alice",
    aggregatorId: agg.fingerprint,
    aggregatorKey: agg.publicKey,
    tenant: TENANT,
    toteboxIds: [TB_ID],
    views: GRANT_VIEWS,
    actions: ["read", ...COMMANDS],
    signer: alice.privateKey,
    clock: systemClock,
  });
  await openSession(server);
});

afterAll(async () => {
  for (const l of links) l.close();
  await Promise.all([...children].map((c) => stop(c)));
  rmSync(root, { recursive: true, force: true });
});

describe("os-totebox on loopback", () => {
  it("init + demo-data + serve: hello returns identity, views and commands, and no SQL", async () => {
    expect(initOut.entity).toMatchObject({ id: TB_ID, kind: "property" });
    expect(demoOut.lines).toBeGreaterThan(1000);
    expect(demoOut.units).toBeGreaterThan(0);
    expect(server).toMatchObject({ host: "127.0.0.1", totebox: TB_ID, deviceId: initOut.deviceId });
    expect(server.port).toBeGreaterThan(0);

    const hello = await tb.hello();
    expect(hello).toMatchObject({ id: TB_ID, kind: "property", state: "active", deviceId: initOut.deviceId });
    expect(hello.views.map((v) => v.name).sort()).toEqual(
      [
        "archive-health",
        "income-summary",
        "intercompany",
        "occupancy",
        "position",
        "rent-roll-summary",
      ].sort(),
    );
    expect(hello.commands.map((c) => c.name).sort()).toEqual([...COMMANDS].sort());
    const position = hello.views.find((v) => v.name === "position");
    expect(position?.columns.map((c) => c.name)).toContain("cash");
    expect(position?.params.map((p) => p.name)).toEqual(["as_of"]);

    const text = JSON.stringify(hello);
    const policy = parseYaml(basePolicy) as { views: Record<string, { sql: string }> };
    for (const [name, v] of Object.entries(policy.views)) {
      expect(text, `SQL of ${name}`).not.toContain(v.sql.trim());
      for (const line of v.sql.split("\n").map((l) => l.trim())) {
        if (line.length > 20) expect(text, `SQL of ${name}`).not.toContain(line);
      }
    }
    expect(text).not.toMatch(/\bSELECT\b|\bWHERE\b|\bJOIN\b|journal_daily_totals|journal_lines|:as_of/);
  });

  it("no raw table can be read without a view; SQL in a parameter is only a bound value", async () => {
    for (const table of ["journal_lines", "accounts", "peers"]) {
      const e = await refusal(session.read(cap({ view: table }), table, {}));
      expect(e.code, table).toBe("TOTEBOX_ERR_VIEW_UNKNOWN");
      const viaView = await refusal(session.view(table).read(cap({ view: table }), {}));
      expect(viaView.code, table).toBe("TOTEBOX_ERR_VIEW_UNKNOWN");
    }
    const injected = await refusal(read("position", { as_of: "2026-01-01' OR 1=1 --" }));
    expect(injected.code).toBe("TOTEBOX_ERR_PARAM");
    expect(injected.detail?.param).toBe("as_of");
    // The same view with a proper date answers (the pipelined chain: one round trip).
    const ans = await tb
      .authorize(grant)
      .view("position")
      .read(cap({ view: "position" }), { as_of: AS_OF });
    const rows = decodeResult(ans.arrow).rows();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ currency: "USD" });
  });

  it("the privacy floor holds and suppressed groups agree with the signed receipt", async () => {
    const policy = parseYaml(basePolicy) as {
      views: Record<string, { privacy_floor: { count_column: string; min: number } }>;
    };
    const floor = policy.views["rent-roll-summary"]!.privacy_floor;
    expect(floor).toEqual({ count_column: "leased_units", min: 3 });
    let totalGroups: number | undefined;
    let suppressedSeen = 0;
    let keptSeen = 0;
    // Before any lease (all groups under the floor), mid-history (mixed) and today (none).
    for (const asOf of ["2014-01-01", "2021-06-01", "2022-03-01", AS_OF]) {
      const params = { as_of: asOf };
      const c = cap({ view: "rent-roll-summary" });
      const ans = await session.read(c, "rent-roll-summary", params);
      const rows = decodeResult(ans.arrow).rows();
      for (const r of rows) {
        expect(
          Number(r[floor.count_column]),
          `${asOf} ${r.property_id}/${r.unit_type}`,
        ).toBeGreaterThanOrEqual(floor.min);
      }
      const receipt = verifyReceipt({
        token: ans.receipt,
        subjectPublicKey: tbKey,
        expect: {
          arrowBytes: ans.arrow,
          capabilityId: decodeUnverified(c).claims.cti,
          requestHash: requestHash({ view: "rent-roll-summary", params }),
          subjectId: TB_ID,
        },
      });
      expect(receipt.suppressedGroups).toBe(ans.suppressedGroups);
      expect(receipt.rowCount).toBe(rows.length);
      expect(ans.rowCount).toBe(rows.length);
      // Units exist whatever the date: every group is either returned or counted as suppressed.
      totalGroups ??= rows.length + ans.suppressedGroups;
      expect(rows.length + ans.suppressedGroups).toBe(totalGroups);
      suppressedSeen += ans.suppressedGroups;
      keptSeen += rows.length;
    }
    expect(suppressedSeen).toBeGreaterThan(0);
    expect(keptSeen).toBeGreaterThan(0);
  });

  it("each operator sees only its views: a policy change is picked up live", async () => {
    const before = (await tb.hello()).policyDigest;
    const aliceKeyId = keyIdOfPublicKey(alice.publicKey);
    const restricted = basePolicy.replace(
      /^access:[\s\S]*$/m,
      `access:\n  - tenants: "*"\n    operators: ["${aliceKeyId}"]\n    views: [position]\n    commands: "*"\n`,
    );
    expect(restricted).not.toBe(basePolicy);
    atomicWrite(join(dir, "policy.yaml"), restricted);
    try {
      await untilHello(tb, (h) => h.policyDigest !== before, "the restricted policy");
      const denied = await refusal(read("income-summary", { as_of: AS_OF }));
      expect(denied.code).toBe("TOTEBOX_ERR_POLICY_DENIED");
      const occupancy = await refusal(read("occupancy", { as_of: AS_OF }));
      expect(occupancy.code).toBe("TOTEBOX_ERR_POLICY_DENIED");
      const audit = await refusal(session.audit(cap({ view: "audit" }), { op: "checkpoint" }));
      expect(audit.code).toBe("TOTEBOX_ERR_POLICY_DENIED");
      expect(await rowsOf("position", { as_of: AS_OF })).toHaveLength(1);
    } finally {
      atomicWrite(join(dir, "policy.yaml"), basePolicy);
      await untilHello(tb, (h) => h.policyDigest === before, "the restored policy");
    }
    expect(await rowsOf("income-summary", { as_of: AS_OF })).toHaveLength(6);
  });

  it("bad parameters get a clear error naming the parameter", async () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ["position", { as_of: AS_OF, currency: "EUR" }, "currency"],
      ["position", { as_of: "2026-02-30" }, "as_of"],
      ["position", { as_of: 20261101 }, "as_of"],
      ["income-summary", { as_of: true }, "as_of"],
      ["archive-health", { limit: 5 }, "limit"],
    ];
    for (const [view, params, param] of cases) {
      const e = await refusal(read(view, params));
      expect(e.code, JSON.stringify(params)).toBe("TOTEBOX_ERR_PARAM");
      expect(e.detail?.param, JSON.stringify(params)).toBe(param);
      expect(e.message).toContain(param);
    }
  });

  it("forged, expired, replayed, widened and misdirected capabilities are refused and audited", async () => {
    const stranger = await createIdentity({ name: "stranger" });
    const presented: Uint8Array[] = [];
    const expectRefused = async (token: Uint8Array, view: string, code: string, s: SessionStub = session) => {
      presented.push(token);
      const e = await refusal(s.read(token, view, { as_of: AS_OF }));
      expect(e.code, code).toBe(code);
      return ctiOf(token);
    };
    const want: [string, string][] = [];

    // Forged: the aggregator's claims and key id, signed by a stranger's key.
    const genuine = cap({ view: "position" });
    // Sanity: our Sig_structure is the one the aggregator signed (Ed25519 is deterministic).
    expect(resign(genuine, agg.privateKey).equals(Buffer.from(genuine))).toBe(true);
    want.push([
      await expectRefused(resign(genuine, stranger.privateKey), "position", "PSP_ERR_CAP_SIGNATURE"),
      "PSP_ERR_CAP_SIGNATURE",
    ]);
    // Forged the other way: a stranger signs under its own key id.
    const strangerGrant = issueGrant({
      operator: "alice",
      aggregatorId: agg.fingerprint,
      aggregatorKey: stranger.publicKey,
      tenant: TENANT,
      toteboxIds: [TB_ID],
      views: ["position"],
      actions: ["read"],
      signer: alice.privateKey,
      clock: systemClock,
    });
    const strangerCap = cap({ view: "position", grant: strangerGrant, signer: stranger.privateKey });
    want.push([
      await expectRefused(strangerCap, "position", "PSP_ERR_CAP_GRANT_MISMATCH"),
      "PSP_ERR_CAP_GRANT_MISMATCH",
    ]);

    // Expired: a grant still valid now, but a capability issued two hours ago (60 s lifetime).
    const pastMs = Date.now() - 2 * 3600_000;
    const past: Clock = { now: () => pastMs };
    const longGrant = issueGrant({
      operator: "alice",
      aggregatorId: agg.fingerprint,
      aggregatorKey: agg.publicKey,
      tenant: TENANT,
      toteboxIds: [TB_ID],
      views: ["position"],
      actions: ["read"],
      lifetimeSeconds: 12 * 3600,
      signer: alice.privateKey,
      clock: past,
    });
    const longSession = (await tb.authorize(longGrant)) as SessionStub;
    const expired = cap({ view: "position", grant: longGrant, clock: past });
    want.push([
      await expectRefused(expired, "position", "PSP_ERR_CAP_EXPIRED", longSession),
      "PSP_ERR_CAP_EXPIRED",
    ]);

    // Replayed: the same capability twice.
    const once = cap({ view: "position" });
    await session.read(once, "position", { as_of: AS_OF });
    want.push([await expectRefused(once, "position", "PSP_ERR_CAP_REPLAYED"), "PSP_ERR_CAP_REPLAYED"]);

    // Widened: a grant for position only, a capability for income-summary under it.
    const narrowGrant = issueGrant({
      operator: "alice",
      aggregatorId: agg.fingerprint,
      aggregatorKey: agg.publicKey,
      tenant: TENANT,
      toteboxIds: [TB_ID],
      views: ["position"],
      actions: ["read"],
      signer: alice.privateKey,
      clock: systemClock,
    });
    const narrowSession = (await tb.authorize(narrowGrant)) as SessionStub;
    const widened = cap({ view: "income-summary", grant: narrowGrant });
    want.push([
      await expectRefused(widened, "income-summary", "PSP_ERR_CAP_SCOPE", narrowSession),
      "PSP_ERR_CAP_SCOPE",
    ]);
    // Widened the other way: a capability for position presented to read income-summary.
    const otherView = cap({ view: "position" });
    want.push([await expectRefused(otherView, "income-summary", "PSP_ERR_CAP_SCOPE"), "PSP_ERR_CAP_SCOPE"]);

    // Misdirected: a capability for another Totebox.
    const misdirected = cap({ view: "position", totebox: "tb-99" });
    want.push([await expectRefused(misdirected, "position", "PSP_ERR_CAP_AUDIENCE"), "PSP_ERR_CAP_AUDIENCE"]);

    // The audit log, read by the owner's CLI while the server runs.
    const out = await cliOk(["audit", "--dir", dir, "--entries", "0:1000"]);
    const log = JSON.parse(out) as {
      entries: { index: number; entry: { action: string; capability: string | null; outcome: string } }[];
    };
    for (const [cti, code] of want) {
      expect(
        log.entries.some(
          (e) => e.entry.action === "read" && e.entry.capability === cti && e.entry.outcome === code,
        ),
        `${code} for ${cti}`,
      ).toBe(true);
    }
    for (const token of presented) {
      const t = Buffer.from(token);
      for (const enc of ["hex", "base64", "base64url"] as const) {
        expect(out).not.toContain(t.toString(enc));
        expect(out).not.toContain(t.subarray(t.length - 64).toString(enc)); // the signature alone
      }
    }
  });

  it("a suspended Totebox answers only hello until the owner activates it", async () => {
    const r = await session.command(
      cap({ command: "set-state" }),
      "set-state",
      { state: "suspended" },
      "suspend-1",
    );
    expect(r.result).toMatchObject({ state: "suspended" });
    const hello = await tb.hello();
    expect(hello.state).toBe("suspended");
    for (const view of ["position", "archive-health"]) {
      expect((await refusal(read(view))).code).toBe("TOTEBOX_ERR_SUSPENDED");
    }
    expect(
      (await refusal(session.command(cap({ command: "verify-ledger" }), "verify-ledger", {}, "v-susp"))).code,
    ).toBe("TOTEBOX_ERR_SUSPENDED");
    expect((await refusal(session.audit(cap({ view: "audit" }), { op: "checkpoint" }))).code).toBe(
      "TOTEBOX_ERR_SUSPENDED",
    );
    expect((await refusal(tb.authorize(grant))).code).toBe("TOTEBOX_ERR_SUSPENDED");

    expect((await cliOk(["state", "--dir", dir, "active"])).trim()).toBe("active");
    await untilHello(tb, (h) => h.state === "active", "the server to pick up the active state");
    expect(await rowsOf("position", { as_of: AS_OF })).toHaveLength(1);
  });

  it("commands: verify-ledger, staged entries approved by the owner, idempotency", async () => {
    const verified = await session.command(
      cap({ command: "verify-ledger" }),
      "verify-ledger",
      {},
      "verify-1",
    );
    expect(verified.result).toMatchObject({ ok: true });
    expect(verified.replayed).toBe(false);
    verifyReceipt({
      token: verified.receipt,
      subjectPublicKey: tbKey,
      expect: { arrowBytes: verified.resultBytes },
    });

    const entry = (id: string, amount: number) => ({
      entry: {
        id,
        date: AS_OF,
        memo: "bank fee correction",
        lines: [
          { account: "7100", amount },
          { account: "1000", amount: -amount },
        ],
      },
    });
    const staged = await session.command(
      cap({ command: "stage-entry" }),
      "stage-entry",
      entry("adj-1", 1250),
      "stage-1",
    );
    const stagedId = (staged.result as { staged: string }).staged;
    expect(staged.result).toMatchObject({ status: "pending" });
    const listed = await cliJson<{ id: string; status: string }[]>(["staged", "--dir", dir, "--json"]);
    expect(listed).toContainEqual(expect.objectContaining({ id: stagedId, status: "pending" }));
    const healthBefore = (await rowsOf("archive-health"))[0]!;

    const applied = await cliJson<{ seq: number }>(["approve", "--dir", dir, stagedId, "--json"]);
    expect(applied.seq).toBe(Number(healthBefore.last_seq) + 1);
    const verify = await cliJson<{ chain: { ok: boolean; entries: number } }>([
      "verify",
      "--dir",
      dir,
      "--json",
    ]);
    expect(verify.chain).toMatchObject({ ok: true, entries: Number(healthBefore.entries) + 1 });

    // The same key and arguments: the stored answer, byte for byte.
    const again = await session.command(
      cap({ command: "stage-entry" }),
      "stage-entry",
      entry("adj-1", 1250),
      "stage-1",
    );
    expect(again.replayed).toBe(true);
    expect(Buffer.from(again.receipt).equals(Buffer.from(staged.receipt))).toBe(true);
    expect(Buffer.from(again.resultBytes).equals(Buffer.from(staged.resultBytes))).toBe(true);
    // The same key with other arguments: refused.
    const conflict = await refusal(
      session.command(cap({ command: "stage-entry" }), "stage-entry", entry("adj-1", 999), "stage-1"),
    );
    expect(conflict.code).toBe("TOTEBOX_ERR_IDEMPOTENCY_CONFLICT");

    // 100 concurrent calls with one fresh key, each with its own capability: one run.
    const pendingBefore = Number((await rowsOf("archive-health"))[0]!.pending_staged_entries);
    // All 100 in one event-loop turn: the link splits them into frames the receiver accepts.
    const calls: Promise<CommandReply>[] = [];
    for (let i = 0; i < 100; i++) {
      calls.push(
        session.command(
          cap({ command: "stage-entry" }),
          "stage-entry",
          entry("adj-2", 700),
          "stage-concurrent",
        ),
      );
    }
    const replies = await Promise.all(calls);
    expect(replies.filter((r) => !r.replayed)).toHaveLength(1);
    expect(new Set(replies.map((r) => hex(r.receipt))).size).toBe(1);
    const pendingAfter = Number((await rowsOf("archive-health"))[0]!.pending_staged_entries);
    expect(pendingAfter).toBe(pendingBefore + 1);
  });

  it("pairing ceremony: a proven code pairs, a wrong proof burns the code, revoke closes the link", async () => {
    const offer = await cliJson<{ deviceId: string; code: string }>([
      "pair",
      "--dir",
      dir,
      "--as",
      "aggregator",
      "--label",
      "hub2",
      "--json",
    ]);
    expect(offer.deviceId).toBe(server.deviceId);
    expect(offer.code).toMatch(/^[0-9A-Z]{4}-?[0-9A-Z]{4}$/);

    const me = await createIdentity({ name: "hub2" });
    const first = await connect(me, { ...server, deviceId: offer.deviceId });
    const proofInput = {
      code: offer.code,
      initiatorFingerprint: me.fingerprint,
      responderFingerprint: offer.deviceId,
    };
    const paired = await first.tb.pair(pairingProof({ ...proofInput, side: "initiator" }));
    expect(paired).toMatchObject({ totebox: TB_ID, deviceId: server.deviceId, kind: "aggregator" });
    expect(verifyPairingProof({ ...proofInput, side: "responder" }, paired.proof)).toBe(true);
    first.link.close();

    const hub2 = await connect(me, server);
    const hub2Grant = issueGrant({
      operator: "alice",
      aggregatorId: me.fingerprint,
      aggregatorKey: me.publicKey,
      tenant: TENANT,
      toteboxIds: [TB_ID],
      views: ["position"],
      actions: ["read"],
      signer: alice.privateKey,
      clock: systemClock,
    });
    const hub2Cap = issueCallCapability({
      grant: hub2Grant,
      totebox: TB_ID,
      view: "position",
      action: "read",
      clock: systemClock,
      signer: me.privateKey,
    });
    const ans = await hub2.tb.authorize(hub2Grant).view("position").read(hub2Cap, { as_of: AS_OF });
    expect(decodeResult(ans.arrow).rows()).toHaveLength(1);

    // A wrong proof: refused, and the code is burned.
    const offer3 = await cliJson<{ code: string }>([
      "pair",
      "--dir",
      dir,
      "--as",
      "aggregator",
      "--label",
      "hub3",
      "--json",
    ]);
    const intruder = await createIdentity({ name: "hub3" });
    const guess = await connect(intruder, server);
    const wrong = pairingProof({
      code: offer3.code === "AAAA-AAAA" ? "BBBB-BBBB" : "AAAA-AAAA",
      initiatorFingerprint: intruder.fingerprint,
      responderFingerprint: server.deviceId,
      side: "initiator",
    });
    expect((await refusal(guess.tb.pair(wrong))).code).toBe("TOTEBOX_ERR_PAIRING");
    // The right proof now comes too late: no code is on offer, so the intruder is not even let in.
    const late = await refusal(
      (async () => {
        const again = await connect(intruder, server);
        return again.tb.pair(
          pairingProof({
            code: offer3.code,
            initiatorFingerprint: intruder.fingerprint,
            responderFingerprint: server.deviceId,
            side: "initiator",
          }),
        );
      })(),
    );
    // The server refuses the TLS link (PSP_ERR_PEER_UNKNOWN, logged there); in TLS 1.3 the client
    // only sees its link close.
    expect(late.code).toMatch(/^(PSP_ERR_PEER_UNKNOWN|PSP_ERR_LINK_CLOSED)$/);

    // Revoking hub2 closes its live link at once (the server polls for CLI changes).
    const closed = new Promise<void>((resolve) => hub2.link.once("close", () => resolve()));
    await cliOk(["revoke", "--dir", dir, "hub2"]);
    await closed;
    expect(hub2.link.closed).toBe(true);
    // The first aggregator is untouched.
    expect(await rowsOf("position", { as_of: AS_OF })).toHaveLength(1);
  });

  it("a restarted Totebox has lost nothing, and its audit log only grew consistently", async () => {
    const position = await read("position", { as_of: AS_OF });
    const health = await read("archive-health");
    type Audit = { checkpoint: { treeSize: number; rootHash: string } };
    const oldAudit = await cliJson<Audit>(["audit", "--dir", dir]);
    const oldSize = oldAudit.checkpoint.treeSize;
    const oldRoot = Buffer.from(oldAudit.checkpoint.rootHash, "hex");
    expect(oldSize).toBeGreaterThan(0);

    const closed = new Promise<void>((resolve) => aggLink.once("close", () => resolve()));
    expect(await stop(server.child, "SIGTERM")).toBe(0);
    await closed;

    server = await serve(dir);
    expect(server.deviceId).toBe(initOut.deviceId);
    await openSession(server);

    const position2 = await read("position", { as_of: AS_OF });
    const health2 = await read("archive-health");
    expect(decodeResult(position2.arrow).rows()).toEqual(decodeResult(position.arrow).rows());
    expect(decodeResult(health2.arrow).rows()).toEqual(decodeResult(health.arrow).rows());
    expect(position2.watermark).toBe(position.watermark);

    const cp = (await session.audit(cap({ view: "audit" }), { op: "checkpoint" })) as {
      checkpoint: { treeSize: number; rootHash: Uint8Array };
    };
    expect(cp.checkpoint.treeSize).toBeGreaterThan(oldSize);
    const answer = (await session.audit(cap({ view: "audit" }), {
      op: "consistency",
      oldSize,
      newSize: cp.checkpoint.treeSize,
    })) as { proof: { oldSize: number; newSize: number; proof: Uint8Array[] } };
    expect(answer.proof).toMatchObject({ oldSize, newSize: cp.checkpoint.treeSize });
    const { proof } = answer.proof;
    verifyConsistency(oldSize, cp.checkpoint.treeSize, proof, oldRoot, cp.checkpoint.rootHash);
    // A different old root does not verify: the proof binds the history the owner's CLI saw.
    const badRoot = Buffer.from(oldRoot);
    badRoot[0] = (badRoot[0] as number) ^ 1;
    expect(() =>
      verifyConsistency(oldSize, cp.checkpoint.treeSize, proof, badRoot, cp.checkpoint.rootHash),
    ).toThrow(/Merkle proof refused/);
  });

  it("import of a CSV with one bad row reports its line and applies nothing", async () => {
    const before = (await rowsOf("archive-health"))[0]!;
    const file = join(root, "journal.csv");
    writeFileSync(
      file,
      [
        "tx_id,date,account,amount,counterparty,memo",
        "imp-1,2026-11-02,7100,500,,fee",
        "imp-1,2026-11-02,1000,-500,,fee",
        "imp-2,2026-11-02,7100,12x,,typo",
        "imp-2,2026-11-02,1000,-300,,typo",
        "",
      ].join("\n"),
    );
    const r = await cli(["import", "--dir", dir, "--kind", "journal", file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("TOTEBOX_ERR_IMPORT_ROW");
    expect(r.stderr).toMatch(/line 4\b/);
    expect(r.stderr).toContain('"line":4');
    const after = (await rowsOf("archive-health"))[0]!;
    expect(after.entries).toBe(before.entries);
    expect(after.lines).toBe(before.lines);
    expect(after.head_hash).toBe(before.head_hash);
  });
});
