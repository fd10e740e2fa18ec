/**
 * A hostile world for the aggregator, part B: operators (and people pretending to be operators)
 * who present forged, widened, expired, misaddressed or replayed grants, or ask for what their
 * grant does not reach, or send garbage. Every case must be refused with its stable code BEFORE
 * any fan-out, which each case proves from three independent places:
 *
 *   - the aggregator's own log: no "fan-out started" line was written;
 *   - its metrics: orch_fanouts_total unchanged, orch_fanouts_running unchanged, and the refusal
 *     counted under exactly that code in orch_refusals_total;
 *   - the Toteboxes (in-process, so their counters are readable): no view ran, no command ran.
 *
 * Time is a ManualClock handed to the aggregator, so expiry and not-before are checked to the
 * millisecond. It is re-synchronised to the wall clock before each test because the Toteboxes
 * check the aggregator's call capabilities against their own (system) clock.
 */
import { sign as edSign } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { type AggregatorConnection, connectAggregator } from "@os-orchestration/console";
import type {
  FanOutHandleRemote,
  FanOutResult,
  OperatorSessionRemote,
} from "@os-orchestration/orchestration";
import { OrchestrationServer } from "@os-orchestration/orchestration";
import {
  createIdentity,
  decodeUnverified,
  type Identity,
  issueGrant,
  ManualClock,
  rawEd25519PublicKey,
} from "@os-orchestration/psp";
import type { ToteboxServer } from "@os-orchestration/totebox";
import { Encoder, Tag } from "cbor-x";
import fc from "fast-check";
import pino from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import {
  buildEstate,
  ESTATE_AS_OF,
  type Estate,
  fleetYaml,
  type RunningTotebox,
  startToteboxesInProcess,
  writeFleet,
} from "./estate.ts";

const VIEWS = [
  "position",
  "income-summary",
  "occupancy",
  "rent-roll-summary",
  "intercompany",
  "archive-health",
];
const COMMANDS = ["verify-ledger", "snapshot", "set-state", "stage-entry"];

let root: string;
let estate: Estate;
let running: Map<string, RunningTotebox & { server: ToteboxServer }>;
let server: OrchestrationServer;
let configPath: string;
const clock = new ManualClock(Date.now());
const conns: AggregatorConnection[] = [];

/** Keys that are not (or no longer) operators of this aggregator, and a second aggregator. */
let mallory: Identity;
let carol: Identity; // atlas, viewer
let dave: Identity; // atlas, manager; removed from fleet.yaml mid-test
let otherAggregator: Identity;

// ---- the aggregator's log, read as events ------------------------------------------------------

const logLines: Record<string, unknown>[] = [];
const logWaiters = new Set<() => void>();
const logStream = new Writable({
  write(chunk: Buffer, _enc, cb) {
    for (const line of chunk.toString("utf8").split("\n")) {
      if (!line) continue;
      try {
        logLines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not JSON: not ours to read
      }
    }
    // Bounded: only the counts below matter, and they are taken as deltas.
    if (logLines.length > 50_000) logLines.splice(0, 25_000);
    for (const w of [...logWaiters]) w();
    cb();
  },
});
let startedSeen = 0;
let appliedSeen = 0;
const countLines = () => {
  for (const l of logLines.splice(0)) {
    if (l.msg === "fan-out started") startedSeen++;
    if (l.msg === "config applied") appliedSeen++;
  }
};

/** Resolves once the aggregator logs that it applied a config change (count beyond `after`). */
function configApplied(after: number, timeoutMs = 20_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      countLines();
      if (appliedSeen <= after) return;
      logWaiters.delete(check);
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      logWaiters.delete(check);
      reject(new Error("config change not applied in time"));
    }, timeoutMs);
    logWaiters.add(check);
    check();
  });
}

// ---- the estate --------------------------------------------------------------------------------

function fleetWith(operators: { id: string; identity: Identity; tenant: string; role: string }[]): string {
  const doc = parse(fleetYaml(estate, running)) as { operators: Record<string, unknown>[] };
  for (const o of operators) {
    doc.operators.push({
      id: o.id,
      public_key: Buffer.from(rawEd25519PublicKey(o.identity.publicKey)).toString("hex"),
      tenant: o.tenant,
      role: o.role,
    });
  }
  return stringify(doc);
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "os-orch-hostile-"));
  estate = await buildEstate({ root, count: 8 });
  running = await startToteboxesInProcess(estate, pino({ level: "silent" }));
  [mallory, carol, dave, otherAggregator] = await Promise.all([
    createIdentity({ name: "operator:mallory" }),
    createIdentity({ name: "operator:carol" }),
    createIdentity({ name: "operator:dave" }),
    createIdentity({ name: "os-orchestration-elsewhere" }),
  ]);
  configPath = join(root, "fleet.yaml");
  writeFleet(
    configPath,
    fleetWith([
      { id: "carol", identity: carol, tenant: "atlas", role: "viewer" },
      { id: "dave", identity: dave, tenant: "atlas", role: "manager" },
    ]),
  );
  server = await OrchestrationServer.start({
    configPath,
    identity: estate.aggregator,
    clock,
    logger: pino({ level: "info" }, logStream),
    configPollMs: 50,
    http: false,
  });
  await server.pool.settled(30_000);
  expect(server.pool.counts().online).toBe(8);
}, 120_000);

afterAll(async () => {
  for (const c of conns) c.close();
  await server?.close();
  for (const t of running?.values() ?? []) await t.stop();
  rmSync(root, { recursive: true, force: true });
});

beforeEach(() => {
  clock.set(Date.now());
});

const tenantIds = (tenant: string) =>
  estate.entities.filter((e) => e.tenants.includes(tenant)).map((e) => e.id);

async function connect(identity: Identity): Promise<AggregatorConnection> {
  const conn = await connectAggregator({
    identity,
    host: server.address.host,
    port: server.address.port,
    fingerprint: server.identity.fingerprint,
  });
  conns.push(conn);
  return conn;
}

interface GrantSpec {
  readonly signer: Identity;
  readonly operatorId: string;
  readonly tenant: string;
  readonly ids?: readonly string[];
  readonly selectors?: readonly string[];
  readonly views?: readonly string[];
  readonly actions?: readonly string[];
  readonly rows?: readonly string[];
  readonly aggregatorId?: string;
  readonly aggregatorKey?: Uint8Array;
  readonly lifetimeSeconds?: number;
  readonly notBefore?: number;
}

/** A grant as a console would sign it, on the aggregator's (manual) clock. */
function grant(g: GrantSpec): Uint8Array {
  const ids = g.ids ?? [];
  const selectors =
    g.selectors ?? (ids.length === 0 ? ["kind=property", "kind=company", "kind=project"] : []);
  return issueGrant({
    operator: g.operatorId,
    aggregatorId: g.aggregatorId ?? server.identity.fingerprint,
    aggregatorKey: g.aggregatorKey ?? rawEd25519PublicKey(server.identity.publicKey),
    tenant: g.tenant,
    ...(ids.length > 0 ? { toteboxIds: ids } : {}),
    ...(selectors.length > 0 ? { toteboxSelectors: selectors } : {}),
    views: g.views ?? VIEWS,
    actions: g.actions ?? ["read"],
    ...(g.rows ? { rows: g.rows } : {}),
    ...(g.lifetimeSeconds !== undefined ? { lifetimeSeconds: g.lifetimeSeconds } : {}),
    ...(g.notBefore !== undefined ? { notBefore: g.notBefore } : {}),
    signer: g.signer.privateKey,
    clock,
  });
}

const alice = () => estate.operators.get("atlas")!;
const bob = () => estate.operators.get("crown")!;
const aliceGrant = (g: Partial<GrantSpec> = {}) =>
  grant({ signer: alice(), operatorId: "alice", tenant: "atlas", ...g });
const bobGrant = (g: Partial<GrantSpec> = {}) =>
  grant({ signer: bob(), operatorId: "bob", tenant: "crown", ...g });

const readPosition = (s: OperatorSessionRemote, extra: Record<string, unknown> = {}) =>
  s.read("position", { params: { as_of: ESTATE_AS_OF }, ...extra });

// ---- "refused before any fan-out", proven ------------------------------------------------------

interface Counters {
  started: number;
  finished: number;
  running: number;
  views: number;
  commands: number;
  refusals: Map<string, number>;
}

async function counters(): Promise<Counters> {
  countLines();
  const finished = (await server.metrics.fanouts.get()).values.reduce((s, v) => s + v.value, 0);
  const runningNow = (await server.metrics.fanoutsRunning.get()).values.reduce((s, v) => s + v.value, 0);
  const refusals = new Map<string, number>();
  for (const v of (await server.metrics.refusals.get()).values) refusals.set(String(v.labels.code), v.value);
  let views = 0;
  let commands = 0;
  for (const t of running.values()) {
    views += t.server.stats.viewsExecuted;
    commands += t.server.stats.commandsExecuted;
  }
  return { started: startedSeen, finished, running: runningNow, views, commands, refusals };
}

function codeOf(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === "string" ? c : undefined;
}

/**
 * Runs `attempt`, which must fail with `code`; proves nothing was fanned out and nothing ran at
 * any Totebox, and (unless `counted` is false) that the refusal was counted under that code.
 */
async function refusedBeforeFanOut(
  code: string | RegExp,
  attempt: () => Promise<unknown>,
  options: { counted?: boolean } = {},
): Promise<Error & { code: string }> {
  const before = await counters();
  let error: unknown;
  let value: unknown;
  try {
    value = await attempt();
  } catch (e) {
    error = e;
  }
  expect(error, `expected a refusal, got ${JSON.stringify(value)?.slice(0, 200)}`).toBeDefined();
  const got = codeOf(error);
  if (typeof code === "string") expect(got).toBe(code);
  else expect(got).toMatch(code);
  // Let any work the request might have set off reach the counters (one event-loop turn).
  await new Promise<void>((r) => setImmediate(r));
  const after = await counters();
  expect(after.started).toBe(before.started);
  expect(after.finished).toBe(before.finished);
  expect(after.running).toBe(before.running);
  expect(after.views).toBe(before.views);
  expect(after.commands).toBe(before.commands);
  if (options.counted !== false) {
    expect((after.refusals.get(got!) ?? 0) - (before.refusals.get(got!) ?? 0)).toBe(1);
  }
  return error as Error & { code: string };
}

/** Session objects are pipelined: the refusal of authorize() surfaces on the first call. */
function session(conn: AggregatorConnection, g: Uint8Array): OperatorSessionRemote {
  return conn.aggregator.authorize(g);
}

// ---- token surgery -----------------------------------------------------------------------------

/** The project's signed-object CBOR settings (cose.ts), so re-encoded tokens stay canonical. */
const cbor = new Encoder({
  mapsAsObjects: false,
  useRecords: false,
  tagUint8Array: false,
  structuredClone: false,
  bundleStrings: false,
  pack: false,
  variableMapSize: true,
  useTag259ForMaps: false,
} as ConstructorParameters<typeof Encoder>[0]);

interface Sign1Parts {
  protectedBytes: Uint8Array;
  unprotected: Map<unknown, unknown>;
  payload: Uint8Array;
  signature: Uint8Array;
}

function openSign1(token: Uint8Array): Sign1Parts {
  const tag = cbor.decode(token) as Tag;
  expect(tag).toBeInstanceOf(Tag);
  expect(tag.tag).toBe(18);
  const [protectedBytes, unprotected, payload, signature] = tag.value as [
    Uint8Array,
    Map<unknown, unknown>,
    Uint8Array,
    Uint8Array,
  ];
  return { protectedBytes, unprotected, payload, signature };
}

function sealSign1(p: Sign1Parts): Uint8Array {
  return new Uint8Array(cbor.encode(new Tag([p.protectedBytes, p.unprotected, p.payload, p.signature], 18)));
}

/** Decodes the payload, lets `edit` change the claims map, re-encodes; the signature is kept as is. */
function editClaims(token: Uint8Array, edit: (claims: Map<number, unknown>) => void): Uint8Array {
  const parts = openSign1(token);
  const claims = cbor.decode(parts.payload) as Map<number, unknown>;
  edit(claims);
  return sealSign1({ ...parts, payload: new Uint8Array(cbor.encode(claims)) });
}

// ---- the cases ---------------------------------------------------------------------------------

describe("forged grants", () => {
  it("a grant signed by a key that is not a registered operator's", async () => {
    const conn = await connect(alice());
    // Mallory signs a perfectly shaped grant with her own key.
    const own = grant({ signer: mallory, operatorId: "alice", tenant: "atlas" });
    await refusedBeforeFanOut("PSP_ERR_CAP_ISSUER", () => readPosition(session(conn, own)));
    // Mallory takes alice's genuine grant (kid and iss are alice's) and signs it herself.
    const genuine = aliceGrant();
    const parts = openSign1(genuine);
    const sigStructure = cbor.encode(["Signature1", parts.protectedBytes, new Uint8Array(0), parts.payload]);
    const forged = sealSign1({
      ...parts,
      signature: new Uint8Array(edSign(null, sigStructure, mallory.privateKey)),
    });
    expect(forged.byteLength).toBe(genuine.byteLength);
    await refusedBeforeFanOut("PSP_ERR_CAP_SIGNATURE", () => readPosition(session(conn, forged)));
    // Re-encoding an untouched grant gives back the same bytes: the surgery itself is faithful.
    expect(Buffer.from(sealSign1(parts)).equals(Buffer.from(genuine))).toBe(true);
  });

  it("a genuine grant with bytes flipped in its signature, or truncated, or not a grant at all", async () => {
    const conn = await connect(alice());
    const genuine = aliceGrant();
    for (const at of [genuine.byteLength - 1, genuine.byteLength - 33, genuine.byteLength - 64]) {
      const flipped = new Uint8Array(genuine);
      flipped[at]! ^= 0x01;
      await refusedBeforeFanOut("PSP_ERR_CAP_SIGNATURE", () => readPosition(session(conn, flipped)));
    }
    await refusedBeforeFanOut("PSP_ERR_CAP_MALFORMED", () =>
      readPosition(session(conn, genuine.subarray(0, genuine.byteLength - 10))),
    );
    await refusedBeforeFanOut("PSP_ERR_CAP_MALFORMED", () =>
      readPosition(session(conn, new Uint8Array(64).fill(0xa5))),
    );
    // Not bytes at all.
    const bad = conn.aggregator as unknown as { authorize(g: unknown): OperatorSessionRemote };
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () =>
      readPosition(bad.authorize("a grant, honest")),
    );
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () => readPosition(bad.authorize({ grant: 1 })));
  });

  it("a grant widened after signing (a Totebox, a view, a tenant added) does not verify", async () => {
    const conn = await connect(alice());
    const narrow = aliceGrant({ ids: ["prop-001"], views: ["position"] });
    const s = session(conn, narrow);
    // The narrow grant itself works, and reaches exactly what it names.
    const ok = await readPosition(s);
    expect(ok.outcomes.map((o) => o.totebox)).toEqual(["prop-001"]);

    const widenings: [string, (m: Map<number, unknown>) => void][] = [
      ["a Totebox id", (m) => (m.get(-3) as string[]).push("prop-002")],
      ["a view", (m) => (m.get(-5) as string[]).push("occupancy")],
      ["a command", (m) => (m.get(-6) as string[]).push("set-state")],
      ["another tenant", (m) => m.set(-2, "crown")],
      ["a later expiry", (m) => m.set(4, (m.get(4) as number) + 3600)],
    ];
    for (const [what, edit] of widenings) {
      const widened = editClaims(narrow, edit);
      expect(widened, what).not.toEqual(narrow);
      // The edit is visible to anyone who decodes without verifying: it is the signature that fails.
      expect(() => decodeUnverified(widened), what).not.toThrow();
      await refusedBeforeFanOut("PSP_ERR_CAP_SIGNATURE", () =>
        readPosition(session(conn, widened), { targets: ["prop-002"] }),
      );
    }
  });
});

describe("grants outside their time window", () => {
  it("expired: refused from exp + 60 s skew on, to the millisecond; also mid-session", async () => {
    const conn = await connect(alice());
    const g = aliceGrant({ lifetimeSeconds: 300 });
    const { exp } = decodeUnverified(g).claims;
    const s = session(conn, g);
    expect((await s.fleet()).length).toBe(tenantIds("atlas").length);
    clock.set(exp * 1000 + 60_000 - 1);
    expect((await s.fleet()).length).toBe(tenantIds("atlas").length);
    clock.set(exp * 1000 + 60_000);
    // The same session: the grant is re-checked on every request, not only at authorize.
    await refusedBeforeFanOut("PSP_ERR_CAP_EXPIRED", () => readPosition(s));
    // A replay of the expired grant on a fresh session.
    await refusedBeforeFanOut("PSP_ERR_CAP_EXPIRED", () => readPosition(session(conn, g)));
  });

  it("not yet valid: refused until nbf - 60 s skew", async () => {
    const conn = await connect(alice());
    const now = Math.floor(clock.now() / 1000);
    const g = aliceGrant({ notBefore: now + 600, lifetimeSeconds: 600 });
    await refusedBeforeFanOut("PSP_ERR_CAP_NOT_YET_VALID", () => readPosition(session(conn, g)));
    clock.set((now + 600) * 1000 - 60_001);
    await refusedBeforeFanOut("PSP_ERR_CAP_NOT_YET_VALID", () => session(conn, g).fleet());
    clock.set((now + 600) * 1000 - 60_000);
    expect((await session(conn, g).fleet()).length).toBe(tenantIds("atlas").length);
  });
});

describe("grants addressed elsewhere", () => {
  it("audience of another aggregator, or delegating to another aggregator's key", async () => {
    const conn = await connect(alice());
    const otherAud = aliceGrant({ aggregatorId: otherAggregator.fingerprint });
    await refusedBeforeFanOut("PSP_ERR_CAP_AUDIENCE", () => readPosition(session(conn, otherAud)));
    const otherKey = aliceGrant({ aggregatorKey: rawEd25519PublicKey(otherAggregator.publicKey) });
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () => readPosition(session(conn, otherKey)));
  });
});

describe("replayed grants", () => {
  it("operator B presenting operator A's grant on B's own link", async () => {
    const aliceConn = await connect(alice());
    const bobConn = await connect(bob());
    const a = aliceGrant();
    expect((await readPosition(session(aliceConn, a))).partial).toBe(false);
    await refusedBeforeFanOut("ORCH_ERR_GRANT_OPERATOR", () => readPosition(session(bobConn, a)));
    // Same tenant, other operator: still bound to its signer's link.
    const daveConn = await connect(dave);
    await refusedBeforeFanOut("ORCH_ERR_GRANT_OPERATOR", () => readPosition(session(daveConn, a)));
  });

  it("a key that is no operator at all cannot even get a link", async () => {
    const before = await counters();
    const err = await connectAggregator({
      identity: mallory,
      host: server.address.host,
      port: server.address.port,
      fingerprint: server.identity.fingerprint,
    }).then(
      (c) => {
        c.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(codeOf(err)).toMatch(/^PSP_ERR_/);
    const after = await counters();
    expect(after.refusals.get("PSP_ERR_PEER_UNKNOWN") ?? 0).toBe(
      (before.refusals.get("PSP_ERR_PEER_UNKNOWN") ?? 0) + 1,
    );
    expect(after.started).toBe(before.started);
  });

  it("a grant of an operator removed from fleet.yaml: its link is cut, its grant is no longer trusted", async () => {
    const daveConn = await connect(dave);
    const aliceConn = await connect(alice());
    const d = grant({ signer: dave, operatorId: "dave", tenant: "atlas" });
    const daveSession = session(daveConn, d);
    expect((await daveSession.fleet()).length).toBe(tenantIds("atlas").length);
    countLines();
    const applied = appliedSeen;
    writeFleet(configPath, fleetWith([{ id: "carol", identity: carol, tenant: "atlas", role: "viewer" }]));
    await configApplied(applied);
    // Dave's live session: the link was closed when the config was applied.
    await refusedBeforeFanOut(
      /^(PSP_ERR_LINK_CLOSED|ORCH_ERR_OPERATOR_UNKNOWN)$/,
      () => readPosition(daveSession),
      {
        counted: false,
      },
    );
    expect(daveConn.link.closed).toBe(true);
    // Dave reconnecting: refused at the door.
    const again = await connectAggregator({
      identity: dave,
      host: server.address.host,
      port: server.address.port,
      fingerprint: server.identity.fingerprint,
    }).then(
      (c) => {
        c.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(codeOf(again)).toMatch(/^PSP_ERR_/);
    // Dave's grant replayed by someone still on the registry: its signer is no longer trusted.
    await refusedBeforeFanOut("PSP_ERR_CAP_ISSUER", () => readPosition(session(aliceConn, d)));
  });
});

describe("tenants", () => {
  it("a grant for a tenant its operator is not in", async () => {
    const conn = await connect(alice());
    const g = grant({ signer: alice(), operatorId: "alice", tenant: "crown" });
    await refusedBeforeFanOut("ORCH_ERR_GRANT_TENANT", () => readPosition(session(conn, g)));
    const bobConn = await connect(bob());
    const h = grant({ signer: bob(), operatorId: "bob", tenant: "atlas" });
    await refusedBeforeFanOut("ORCH_ERR_GRANT_TENANT", () => readPosition(session(bobConn, h)));
  });
});

describe("requests outside the grant, the tenant or the role", () => {
  it("Toteboxes outside the grant; outside the tenant exactly like ids that do not exist", async () => {
    const aliceConn = await connect(alice());
    const narrow = session(aliceConn, aliceGrant({ ids: ["prop-001"] }));
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () => readPosition(narrow, { targets: ["prop-002"] }));
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () =>
      readPosition(narrow, { targets: ["prop-001", "prop-002"] }),
    );
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () => narrow.audit("prop-002", {}));

    const bobConn = await connect(bob());
    const s = session(bobConn, bobGrant({ views: [...VIEWS, "audit"] }));
    const atlasOnly = tenantIds("atlas").find((id) => !tenantIds("crown").includes(id))!;
    const foreign = await refusedBeforeFanOut("ORCH_ERR_TARGET_UNKNOWN", () =>
      readPosition(s, { targets: [atlasOnly] }),
    );
    const missing = await refusedBeforeFanOut("ORCH_ERR_TARGET_UNKNOWN", () =>
      readPosition(s, { targets: ["prop-999"] }),
    );
    // Indistinguishable: same code, same message; the detail echoes only what was asked.
    expect(foreign.message).toBe(missing.message);
    const detailOf = (e: unknown) => (e as { detail?: Record<string, unknown> }).detail ?? {};
    expect(Object.keys(detailOf(foreign))).toEqual(Object.keys(detailOf(missing)));
    expect(detailOf(foreign).target).toBe(atlasOnly);
    await refusedBeforeFanOut("ORCH_ERR_TARGET_UNKNOWN", () => s.audit(atlasOnly, {}));
    // A selector is a filter inside the tenant: it selects nothing of the other tenant's.
    await refusedBeforeFanOut("ORCH_ERR_NO_TARGETS", () => readPosition(s, { targets: ["kind=project"] }));
  });

  it("views, commands and rows outside the grant", async () => {
    const conn = await connect(alice());
    const positionOnly = session(conn, aliceGrant({ views: ["position"] }));
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () => positionOnly.read("occupancy"));
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () =>
      positionOnly.viewport("portfolio", { params: { as_of: ESTATE_AS_OF } }),
    );
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () =>
      positionOnly.command("verify-ledger", { idempotencyKey: "hostile-1" }),
    );
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () => positionOnly.audit("prop-001", {}));
    const someCommands = session(conn, aliceGrant({ actions: ["read", "verify-ledger"] }));
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () =>
      someCommands.command("set-state", { idempotencyKey: "hostile-2", args: { state: "suspended" } }),
    );
    const rows = session(conn, aliceGrant({ views: ["position"], rows: ["r-1"] }));
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () => readPosition(rows));
    await refusedBeforeFanOut("ORCH_ERR_OUT_OF_GRANT", () => readPosition(rows, { row: "r-2" }));
  });

  it("a viewer running a command; a command without an idempotency key", async () => {
    const conn = await connect(carol);
    const g = grant({ signer: carol, operatorId: "carol", tenant: "atlas", actions: ["read", ...COMMANDS] });
    const s = session(conn, g);
    expect((await s.fleet()).length).toBe(tenantIds("atlas").length);
    await refusedBeforeFanOut("ORCH_ERR_ROLE", () =>
      s.command("verify-ledger", { idempotencyKey: "viewer-1" }),
    );
    await refusedBeforeFanOut("ORCH_ERR_ROLE", () =>
      s.command("set-state", { idempotencyKey: "viewer-2", args: { state: "suspended" } }),
    );
    const manager = session(await connect(alice()), aliceGrant({ actions: ["read", ...COMMANDS] }));
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () => manager.command("verify-ledger", {}));
  });

  it("malformed requests: unknown fields, huge strings, wrong types, too many targets", async () => {
    const conn = await connect(alice());
    const s = session(conn, aliceGrant());
    const start = (r: unknown) =>
      (s as unknown as { start(r: unknown): FanOutHandleRemote }).start(r).result() as Promise<FanOutResult>;
    const base = { kind: "read", name: "position", params: { as_of: ESTATE_AS_OF } };
    const huge = "x".repeat(1024 * 1024);
    const cases: [string, unknown][] = [
      ["not a mapping", "read position please"],
      ["a list", [base]],
      ["null", null],
      ["unknown field", { ...base, sql: "SELECT * FROM journal_lines" }],
      ["huge name", { ...base, name: huge }],
      ["huge unknown field name", { ...base, [huge.slice(0, 100_000)]: 1 }],
      ["huge param value", { ...base, params: { as_of: huge } }],
      ["huge target", { ...base, targets: [huge.slice(0, 10_000)] }],
      ["huge row", { ...base, row: huge.slice(0, 1000) }],
      ["huge idempotency key", { ...base, kind: "command", name: "verify-ledger", idempotencyKey: huge }],
      [
        "too many params",
        { ...base, params: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`p${i}`, i])) },
      ],
      ["nested param", { ...base, params: { as_of: { $gt: "" } } }],
      ["non-finite param", { ...base, params: { as_of: Number.POSITIVE_INFINITY } }],
      ["kind wrong type", { ...base, kind: 5 }],
      ["kind unknown", { ...base, kind: "exec" }],
      ["name with SQL", { ...base, name: "position; DROP TABLE x" }],
      ["targets not a list", { ...base, targets: "prop-001" }],
      ["targets empty", { ...base, targets: [] }],
      ["target not a string", { ...base, targets: [1] }],
      ["too many targets", { ...base, targets: Array.from({ length: 1001 }, (_, i) => `prop-${i}`) }],
      ["timeout a string", { ...base, timeoutMs: "100" }],
      ["timeout zero", { ...base, timeoutMs: 0 }],
      ["timeout fractional", { ...base, timeoutMs: 1.5 }],
      ["deadline too long", { ...base, deadlineMs: 3_600_001 }],
      ["mode unknown", { ...base, mode: "best-effort" }],
      ["answers a string", { ...base, answers: "yes" }],
      ["params a list", { ...base, params: ["2026-10-31"] }],
      ["params bytes", { ...base, params: new Uint8Array(4) }],
      [
        // Command arguments may be nested plain data (a staged entry has lines), but bounded.
        "args nested too deep",
        {
          ...base,
          kind: "command",
          name: "verify-ledger",
          idempotencyKey: "k",
          args: { a: [[[[[[[[1]]]]]]]] },
        },
      ],
      [
        "args too large",
        {
          ...base,
          kind: "command",
          name: "verify-ledger",
          idempotencyKey: "k",
          args: { lines: Array.from({ length: 5000 }, (_, i) => i) },
        },
      ],
    ];
    for (const [what, request] of cases) {
      const e = await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () => start(request));
      expect(e.message.length, what).toBeLessThan(300);
    }
    // The convenience calls validate the same way.
    const loose = s as unknown as { read(v: unknown, o?: unknown): Promise<FanOutResult> };
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () => loose.read(42));
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () => loose.read("position", { evil: true }));
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () => loose.read("position", "options"));
    const auditor = session(conn, aliceGrant({ views: [...VIEWS, "audit"] })) as unknown as {
      audit(t: unknown, r: unknown): Promise<unknown>;
    };
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () => auditor.audit(["prop-001"], {}));
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () => auditor.audit("prop-001", "everything"));
    await refusedBeforeFanOut("ORCH_ERR_REQUEST_INVALID", () =>
      auditor.audit("prop-001", { from: { $gt: 0 } }),
    );
  });

  it("bad selectors, unknown viewports, unknown fan-outs", async () => {
    const conn = await connect(alice());
    const s = session(conn, aliceGrant());
    for (const sel of ["region=", "=west", "region=west,,kind=property", "region=west,"]) {
      await refusedBeforeFanOut("ORCH_ERR_SELECTOR_INVALID", () => readPosition(s, { targets: [sel] }));
    }
    await refusedBeforeFanOut("ORCH_ERR_VIEWPORT_UNKNOWN", () => s.viewport("steal-everything"));
    await refusedBeforeFanOut("ORCH_ERR_FANOUT_UNKNOWN", () => s.fanout("0123456789abcdef").result());
  });
});

describe("random requests", () => {
  it("are accepted or refused with a typed code; never an internal error, never a crash", async () => {
    const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
    console.log(`hostile-operators fast-check seed: ${seed} (FC_SEED=${seed} to replay)`);
    const ids = tenantIds("atlas");
    const g = aliceGrant({ views: VIEWS, actions: ["read"] });
    let conn = await connect(alice());
    let s = session(conn, g);
    let relinks = 0;

    // What a console built on capnweb can send: plain data, plus the types capnweb itself carries
    // (dates, bigints), which the aggregator must refuse as wrong types.
    const anything = fc.anything({ withBigInt: true, withDate: true, maxDepth: 4 });
    const scalar = fc.oneof(
      fc.string({ maxLength: 12 }),
      fc.integer(),
      fc.double(),
      fc.boolean(),
      fc.constant(null),
      fc.constant(ESTATE_AS_OF),
    );
    const fields: Record<string, fc.Arbitrary<unknown>> = {
      kind: fc.constantFrom("viewport", "read", "command", "exec", ""),
      name: fc.constantFrom(
        "position",
        "occupancy",
        "portfolio",
        "executive-summary",
        "reconciliation",
        "verify-ledger",
        "audit",
        "nope",
        "Position",
      ),
      targets: fc.array(
        fc.oneof(fc.constantFrom(...ids, "prop-999", "co-001", "region=west", "kind=", "=x"), fc.string()),
        { maxLength: 4 },
      ),
      params: fc.dictionary(fc.constantFrom("as_of", "group_by", "from", "to", "limit", "x"), scalar, {
        maxKeys: 3,
        noNullPrototype: true,
      }),
      mode: fc.constantFrom("warn", "abort", "x"),
      timeoutMs: fc.oneof(fc.integer({ min: -5, max: 4_000_000 }), fc.double(), fc.constant(2_000)),
      deadlineMs: fc.oneof(fc.integer({ min: -5, max: 4_000_000 }), fc.constant(5_000)),
      row: fc.oneof(fc.string({ maxLength: 20 }), fc.integer()),
      args: fc.dictionary(fc.string({ maxLength: 6 }), scalar, { maxKeys: 3, noNullPrototype: true }),
      idempotencyKey: fc.oneof(fc.string({ maxLength: 20 }), fc.integer()),
      answers: fc.oneof(fc.boolean(), fc.string({ maxLength: 3 })),
      sql: fc.constant("SELECT 1"),
    };
    const record = fc.record(
      Object.fromEntries(
        Object.entries(fields).map(([k, a]) => [k, fc.oneof({ weight: 4, arbitrary: a }, anything)]),
      ),
      { requiredKeys: [], noNullPrototype: true },
    );
    // Close to what a real console sends, so that a good share is accepted and fanned out.
    const wellFormed = fc
      .tuple(
        fc.oneof(
          fc.record({
            kind: fc.constant("read"),
            name: fc.constantFrom("position", "occupancy", "archive-health"),
          }),
          fc.record({
            kind: fc.constant("viewport"),
            name: fc.constantFrom("portfolio", "executive-summary"),
          }),
        ),
        fc.record(
          {
            targets: fc.subarray([...ids, "region=west", "kind=company"], { minLength: 1 }),
            params: fc.oneof(
              fc.constant({ as_of: ESTATE_AS_OF }),
              fc.dictionary(fc.constantFrom("as_of", "group_by", "x"), scalar, {
                maxKeys: 2,
                noNullPrototype: true,
              }),
            ),
            mode: fc.constantFrom("warn", "abort"),
            timeoutMs: fc.integer({ min: 1, max: 5_000 }),
            deadlineMs: fc.integer({ min: 1, max: 10_000 }),
            answers: fc.boolean(),
          },
          { requiredKeys: [], noNullPrototype: true },
        ),
      )
      .map(([what, rest]) => ({ ...rest, ...what }));
    const request = fc.oneof(
      { weight: 1, arbitrary: anything },
      { weight: 2, arbitrary: record },
      { weight: 4, arbitrary: wellFormed },
    );
    const call = fc.oneof(
      fc.record({ via: fc.constant("start" as const), request }),
      fc.record({ via: fc.constant("read" as const), view: fc.oneof(fields.name!, anything), request }),
    );

    const outcomes = { accepted: 0, refused: new Map<string, number>() };
    await fc.assert(
      fc.asyncProperty(call, async (c) => {
        if (conn.link.closed) {
          conn = await connect(alice());
          s = session(conn, g);
          relinks++;
        }
        const loose = s as unknown as {
          start(r: unknown): FanOutHandleRemote;
          read(v: unknown, o?: unknown): Promise<FanOutResult>;
        };
        let result: FanOutResult | undefined;
        try {
          result =
            c.via === "start" ? await loose.start(c.request).result() : await loose.read(c.view, c.request);
        } catch (e) {
          const code = codeOf(e);
          expect(code, String((e as Error).message)).toMatch(/^(ORCH|PSP)_ERR_[A-Z0-9_]+$/);
          expect(code).not.toMatch(/INTERNAL/);
          outcomes.refused.set(code!, (outcomes.refused.get(code!) ?? 0) + 1);
          (await import("node:fs")).appendFileSync(
            "/tmp/dbg.txt",
            `R ${code} ${(e as Error).message} ${fc.stringify(c).slice(0, 300)}\n`,
          );
          return;
        }
        outcomes.accepted++;
        // An accepted request is answered in full: every target once, every status typed.
        expect(new Set(result.outcomes.map((o) => o.totebox)).size).toBe(result.targeted);
        for (const o of result.outcomes) {
          expect(ids).toContain(o.totebox);
          if (o.status !== "ok") expect(o.code).toMatch(/^(ORCH|PSP|TOTEBOX)_ERR_|^TOTEBOX_PRIVACY_FLOOR$/);
          expect(o.code ?? "").not.toMatch(/INTERNAL/);
        }
        if (result.error) expect(result.error.code).toMatch(/^(ORCH|PSP|TOTEBOX)_ERR_(?!INTERNAL)/);
      }),
      { seed, numRuns: 200 },
    );
    console.log(
      `random requests: ${outcomes.accepted} accepted, refused ${JSON.stringify(Object.fromEntries(outcomes.refused))}, ${relinks} relinks`,
    );
    // Still serving: a good request from a fresh console gets a whole answer.
    const fresh = session(await connect(alice()), g);
    const r = await readPosition(fresh);
    expect(r.partial).toBe(false);
    expect(r.outcomes.map((o) => o.totebox).sort()).toEqual([...ids].sort());
    expect(server.pool.counts().online).toBe(8);
  });
});
