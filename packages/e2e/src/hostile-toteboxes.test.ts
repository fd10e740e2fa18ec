/**
 * A hostile world for the aggregator, part A: Toteboxes that misbehave once a fan-out reaches them.
 *
 * One in-process aggregator links to six real Toteboxes (in-process ToteboxServers over real
 * SQLite) and to hostile ones: scripted PSP subjects on loopback with their own identities, pinned
 * in fleet.yaml like any Totebox (hostile-peers.ts). Each hostile peer answers `hello` correctly,
 * comes online, and breaks one rule when the fan-out arrives. For each: in one fan-out over the
 * real Toteboxes plus the hostile one,
 * - the hostile Totebox is listed exactly once, status `error`, with the code of the rule broken;
 * - its link is cut (that very link object is closed; the pool says offline, with that code);
 * - the violation is counted in orch_diode_violations_total{side="totebox",code};
 * - every real Totebox answered `ok`, its receipts verify with its own key (what a console does),
 *   its link was not touched, and the figures equal those of a fan-out without the hostile peer.
 *
 * Why every status is `error` (not `offline` or `timeout`): in each case the peer is up and
 * talking; what it says is refused. The two slow ones (a frame that never ends, a trickle) are
 * cut by the link's idle timeout while a frame is half received, which the pool records as a
 * broken frame rule, not as a silent peer; the per-Totebox timeout (20 s) is far longer.
 *
 * Reconnect backoff is set to ten minutes so that a cut hostile peer stays offline while the test
 * looks at it; pings every 300 ms keep the real links' 3 s idle timer from firing.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type AggregatorConnection,
  connectAggregator,
  signGrant,
  verifyAnswers,
} from "@os-orchestration/console";
import {
  type FanOutResult,
  type OperatorSessionRemote,
  OrchestrationServer,
} from "@os-orchestration/orchestration";
import {
  connectPsp,
  createIdentity,
  encodeResult,
  type Identity,
  loadIdentity,
  openCommander,
  type PspLink,
} from "@os-orchestration/psp";
import type { ReadAnswer, ToteboxRemote } from "@os-orchestration/totebox";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { encodeFrame, FrameKind } from "../../psp/src/frame-codec.ts";
import {
  buildEstate,
  ESTATE_AS_OF,
  type Estate,
  fleetYaml,
  type RunningTotebox,
  startToteboxesInProcess,
} from "./estate.ts";
import {
  type HostileBehaviour,
  type HostileTotebox,
  hostileHello,
  messagesFrameHeader,
  never,
  type ReadCall,
  type ScriptedWire,
  seededBytes,
  signedAnswer,
  startHostileTotebox,
} from "./hostile-peers.ts";

const IDLE_MS = 3_000;
const PING_MS = 300;
const TENANT = "atlas";
const TAGS = { region: "west", kind: "property", portfolio: "core" };

interface HostileCase {
  readonly id: string;
  readonly rule: string;
  readonly code: string;
  /** What the outcome's reason says (the message of the refusal). */
  readonly reason: RegExp;
  readonly read: (call: ReadCall, wire: ScriptedWire, self: Identity) => unknown;
  /**
   * Answers one fan-out honestly first, so its link's session is authorized and the next fan-out
   * reads it with direct reads (psp.md §3.1): the misbehaviour is on the direct path.
   */
  readonly warm?: boolean;
}

/**
 * The first fan-out (two reads: position and occupancy) gets honest-looking answers: the
 * portfolio's declared columns, one row of nulls, a receipt that verifies. Every later read gets
 * `then`'s answer.
 */
function honestThen(
  toteboxId: string,
  then: (call: ReadCall, self: Identity) => unknown,
): HostileCase["read"] {
  let reads = 0;
  return (call, _wire, self) => {
    if (++reads > 2) return then(call, self);
    const columns = server.viewports.get("portfolio")!.reads.find((r) => r.view === call.view)!.columns!;
    return signedAnswer({
      call,
      toteboxId,
      arrow: encodeResult(columns, [columns.map(() => null)]),
      rowCount: 1,
      signer: self.privateKey,
    });
  };
}

/**
 * A script that takes the wire over acts on the first read only: a portfolio fan-out sends two
 * reads in one frame, and two trickles interleaved would make a malformed frame, not an endless one.
 */
function onFirstRead(script: (wire: ScriptedWire) => void): HostileCase["read"] {
  const done = new WeakSet<ScriptedWire>();
  return (_call, wire) => {
    if (!done.has(wire)) {
      done.add(wire);
      script(wire);
    }
    return never();
  };
}

/** A well-formed one-row Arrow answer (its content never matters: something else is wrong). */
const ONE_ROW = () => encodeResult([{ name: "cash", type: "integer" }], [[1]]);

let root: string;
let estate: Estate;
let real: Map<string, RunningTotebox>;
let backing: Map<string, RunningTotebox>;
let server: OrchestrationServer;
let conn: AggregatorConnection;
let session: OperatorSessionRemote;
let upstreamLink: PspLink;
let proxy: HostileTotebox;
let baseline: FanOutResult;
const keys = new Map<string, Identity>();
const hostiles = new Map<string, HostileTotebox>();
/** The tenant's real Toteboxes reached directly; one more of them sits behind the replaying proxy. */
let realTargets: string[];
let proxied: string;

/** Key of a real Totebox, read from its own identity folder (what pairing told the console). */
const keyOf = (id: string) => keys.get(id)?.publicKey;

/** The 8-byte head of a direct request or reply: the id, then the method or status (u32 BE). */
function directHead(id: number, word: number): Uint8Array {
  const h = new Uint8Array(8);
  new DataView(h.buffer).setUint32(0, id);
  new DataView(h.buffer).setUint32(4, word);
  return h;
}

const CASES: readonly HostileCase[] = [
  {
    id: "evil-push",
    rule: "sends a call (push) toward the aggregator",
    code: "PSP_ERR_DIODE",
    reason: /a subject never calls/,
    read: onFirstRead((wire) => {
      wire.takeOver();
      wire.sendMessages([["push", ["pipeline", 0, ["fleet"], []]]]);
    }),
  },
  {
    id: "evil-pull",
    rule: "sends a pull toward the aggregator",
    code: "PSP_ERR_DIODE",
    reason: /a subject never pulls/,
    read: onFirstRead((wire) => {
      wire.takeOver();
      wire.sendMessages([["pull", 1]]);
    }),
  },
  {
    id: "evil-request",
    rule: "sends a direct request toward the aggregator",
    code: "PSP_ERR_DIODE",
    reason: /a subject never calls/,
    read: onFirstRead((wire) => {
      wire.takeOver();
      for (const p of encodeFrame(FrameKind.Request, [directHead(1, 1)])) wire.sendRaw(p);
    }),
  },
  {
    id: "evil-reply",
    rule: "sends a direct reply to a request never made",
    code: "PSP_ERR_DIODE",
    reason: /never asked/,
    read: onFirstRead((wire) => {
      wire.takeOver();
      for (const p of encodeFrame(FrameKind.Reply, [directHead(4242, 0), ONE_ROW()])) wire.sendRaw(p);
    }),
  },
  {
    id: "evil-unasked",
    rule: "answers a call it was never sent",
    code: "PSP_ERR_DIODE",
    reason: /never asked/,
    read: onFirstRead((wire) => {
      wire.takeOver();
      wire.sendMessages([["resolve", 4242, "forged answer"]]);
    }),
  },
  {
    id: "evil-twice",
    rule: "answers a call twice",
    code: "PSP_ERR_DIODE",
    reason: /never asked/,
    read: (call, wire, self) => {
      wire.duplicateNextResolve();
      return signedAnswer({
        call,
        toteboxId: "evil-twice",
        arrow: ONE_ROW(),
        rowCount: 1,
        signer: self.privateKey,
      });
    },
  },
  {
    id: "evil-huge",
    rule: "sends a frame larger than the limit (header announces 64 MiB)",
    code: "PSP_ERR_FRAME_TOO_LARGE",
    reason: /maximum frame size/,
    read: onFirstRead((wire) => {
      wire.takeOver();
      wire.sendRaw(messagesFrameHeader(64 * 1024 * 1024));
    }),
  },
  {
    id: "evil-endless",
    rule: "announces a 2 MiB frame, then trickles 1 KiB every 50 ms forever",
    code: "PSP_ERR_IDLE_TIMEOUT",
    reason: /idle timeout/,
    read: onFirstRead((wire) => {
      wire.takeOver();
      wire.sendRaw(messagesFrameHeader(2 * 1024 * 1024));
      wire.trickle({ chunkBytes: 1024, everyMs: 50 });
    }),
  },
  {
    id: "evil-trickle",
    rule: "trickles 3 bytes every 100 ms, never completing a frame",
    code: "PSP_ERR_IDLE_TIMEOUT",
    reason: /idle timeout/,
    read: onFirstRead((wire) => {
      wire.takeOver();
      wire.trickle({ prefix: messagesFrameHeader(64 * 1024), chunkBytes: 3, everyMs: 100 });
    }),
  },
  {
    id: "evil-direct",
    rule: "answers a direct read with something that is not a read answer",
    code: "ORCH_ERR_TOTEBOX_ANSWER",
    reason: /not a read answer/,
    warm: true,
    read: honestThen("evil-direct", () => ({ totebox: "evil-direct", note: "not an answer" })),
  },
  {
    id: "evil-direct-garbage",
    rule: "answers a direct read with random bytes as Arrow under a receipt that verifies",
    code: "ORCH_ERR_TOTEBOX_ANSWER",
    reason: /unreadable result/,
    warm: true,
    read: honestThen("evil-direct-garbage", (c, self) =>
      signedAnswer({
        call: c,
        toteboxId: "evil-direct-garbage",
        arrow: seededBytes(`garbage:${c.view}`, 4096),
        rowCount: 1,
        signer: self.privateKey,
      }),
    ),
  },
  {
    id: "evil-garbage",
    rule: "returns random bytes as Arrow under a receipt that verifies",
    code: "ORCH_ERR_TOTEBOX_ANSWER",
    reason: /unreadable result/,
    read: (call, _wire, self) =>
      signedAnswer({
        call,
        toteboxId: "evil-garbage",
        arrow: seededBytes(`garbage:${call.view}`, 4096),
        rowCount: 1,
        signer: self.privateKey,
      }),
  },
  {
    id: "evil-wrongkey",
    rule: "signs its receipt with another identity's key (a real Totebox's)",
    code: "PSP_ERR_RECEIPT_SIGNATURE",
    reason: /signed by another key/,
    read: (call) =>
      signedAnswer({
        call,
        toteboxId: "evil-wrongkey",
        arrow: ONE_ROW(),
        rowCount: 1,
        signer: keys.get(realTargets[0]!)!.privateKey,
      }),
  },
  {
    id: "evil-badsig",
    rule: "names its own key in the receipt but sends a signature that does not verify",
    code: "PSP_ERR_RECEIPT_SIGNATURE",
    reason: /signature does not verify/,
    // Caught by the first-answer rule: the aggregator checks the signature of the first answer on
    // every link (receipt-sampler.ts), whatever its random sample says.
    read: (call, _wire, self) =>
      withBadSignature(
        signedAnswer({
          call,
          toteboxId: "evil-badsig",
          arrow: ONE_ROW(),
          rowCount: 1,
          signer: self.privateKey,
        }),
      ),
  },
];

/** The answer with the last byte of its receipt (the end of the Ed25519 signature) flipped. */
function withBadSignature(a: ReadAnswer): ReadAnswer {
  const receipt = Uint8Array.from(a.receipt);
  receipt[receipt.length - 1]! ^= 1;
  return { ...a, receipt };
}

/**
 * The replaying proxy: presents the proxied Totebox's own identity (a compromised host holding its
 * key: a replay signed by any other key would already fail the signature check), forwards every
 * call to the real Totebox over the aggregator's identity (which that Totebox trusts), and from the
 * second fan-out on answers each view with the first answer it captured.
 */
function replayingProxy(upstream: ToteboxRemote): HostileBehaviour {
  const captured = new Map<string, unknown>();
  return {
    hello: () => upstream.hello(),
    async read(call) {
      const old = captured.get(call.view);
      if (old !== undefined) return old;
      const answer = await upstream
        .authorize(call.grant)
        .view(call.view)
        .read(call.capability, { ...call.params }, call.row);
      captured.set(call.view, answer);
      return answer;
    },
  };
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "os-orch-hostile-"));
  // Seven archives: six served directly, one only through the replaying proxy.
  estate = await buildEstate({ root, count: 7 });
  const silent = pino({ level: "silent" });
  const tenantProps = estate.entities.filter((e) => e.kind === "property" && e.tenants.includes(TENANT));
  proxied = tenantProps.at(-1)!.id;
  const direct = estate.entities.map((e) => e.id).filter((id) => id !== proxied);
  real = await startToteboxesInProcess(estate, silent, direct);
  backing = await startToteboxesInProcess(estate, silent, [proxied]);
  realTargets = estate.entities
    .filter((e) => e.tenants.includes(TENANT) && e.id !== proxied)
    .map((e) => e.id);
  for (const e of estate.entities)
    keys.set(e.id, await loadIdentity(join(estate.toteboxDir(e.id), "identity")));

  const b = backing.get(proxied)!;
  upstreamLink = await connectPsp({
    identity: estate.aggregator,
    role: "commander",
    host: b.host,
    port: b.port,
    expect: b.fingerprint,
  });
  proxy = await startHostileTotebox({
    identity: keys.get(proxied)!,
    behaviour: replayingProxy(openCommander<ToteboxRemote>(upstreamLink)),
  });
  for (const c of CASES) {
    const identity = await createIdentity({ name: c.id });
    hostiles.set(
      c.id,
      await startHostileTotebox({
        identity,
        behaviour: {
          hello: () => hostileHello(c.id, identity, TAGS),
          read: (call, wire) => c.read(call, wire, identity),
        },
      }),
    );
  }

  const addresses = new Map<string, { host: string; port: number; fingerprint: string }>(real);
  addresses.set(proxied, { host: proxy.host, port: proxy.port, fingerprint: proxy.fingerprint });
  const fleet = parse(fleetYaml(estate, addresses)) as { toteboxes: Record<string, unknown>[] };
  for (const [id, h] of hostiles) {
    fleet.toteboxes.push({
      id,
      name: `Hostile ${id}`,
      address: `${h.host}:${h.port}`,
      fingerprint: h.fingerprint,
      tags: TAGS,
      state: "active",
      tenants: [TENANT],
    });
  }
  const configPath = join(root, "fleet.yaml");
  writeFileSync(configPath, stringify(fleet), { mode: 0o600 });

  server = await OrchestrationServer.start({
    configPath,
    identity: estate.aggregator,
    logger: silent,
    http: false,
    configPollMs: 60_000,
    random: () => 0,
    limits: { reconnectBaseMs: 600_000, reconnectMaxMs: 600_000 },
    toteboxLinkLimits: { idleTimeoutMs: IDLE_MS, pingIntervalMs: PING_MS },
  });
  await server.pool.settled(30_000);

  const operator = estate.operators.get(TENANT)!;
  conn = await connectAggregator({
    identity: operator,
    host: server.address.host,
    port: server.address.port,
    fingerprint: server.identity.fingerprint,
  });
  const grant = signGrant({
    operator,
    operatorId: "alice",
    tenant: TENANT,
    aggregator: conn.hello,
    toteboxSelectors: ["kind=property", "kind=company", "kind=project"],
    views: ["position", "occupancy"],
    actions: ["read"],
  });
  session = conn.aggregator.authorize(grant);
}, 180_000);

afterAll(async () => {
  conn?.close();
  await server?.close();
  for (const h of hostiles.values()) await h.close();
  await proxy?.close();
  upstreamLink?.close();
  for (const t of [...(real?.values() ?? []), ...(backing?.values() ?? [])]) await t.stop();
  rmSync(root, { recursive: true, force: true });
});

function portfolio(targets: readonly string[]): Promise<FanOutResult> {
  return session.viewport("portfolio", {
    targets,
    params: { as_of: ESTATE_AS_OF },
    timeoutMs: 20_000,
    deadlineMs: 30_000,
  });
}

function rollup(r: FanOutResult) {
  const s = r.sections.find((x) => x.name === "rollup");
  if (!s) throw new Error("no rollup section");
  return s.rows;
}

function outcomeOf(r: FanOutResult, id: string) {
  const o = r.outcomes.filter((x) => x.totebox === id);
  expect(o).toHaveLength(1);
  return o[0]!;
}

/** Violations counted for Toteboxes under `code`. */
async function violations(code: string): Promise<number> {
  const m = await server.metrics.diodeViolations.get();
  return m.values
    .filter((v) => v.labels.side === "totebox" && v.labels.code === code)
    .reduce((s, v) => s + v.value, 0);
}

/** Every real Totebox answered ok, its receipts verify under its own key, the figures are the baseline's. */
function expectRealUnharmed(r: FanOutResult): void {
  for (const id of realTargets) expect(outcomeOf(r, id)).toMatchObject({ status: "ok", code: null });
  const checks = verifyAnswers(r, keyOf);
  expect(checks.map((c) => c.totebox).sort()).toEqual([...realTargets].sort());
  expect(checks.every((c) => c.verified)).toBe(true);
  expect(rollup(r)).toEqual(rollup(baseline));
}

describe("hostile Toteboxes are cut off; the real ones keep answering", () => {
  it("comes online like any Totebox, then a baseline over the real Toteboxes verifies", async () => {
    const counts = server.pool.counts();
    expect(counts.online).toBe(real.size + 1 + CASES.length);
    for (const id of hostiles.keys()) expect(server.pool.health(id)?.hello?.id).toBe(id);
    baseline = await portfolio(realTargets);
    expect(baseline.partial).toBe(false);
    expect(baseline.outcomes.map((o) => o.totebox).sort()).toEqual([...realTargets].sort());
    const checks = verifyAnswers(baseline, keyOf);
    expect(checks.filter((c) => c.verified)).toHaveLength(realTargets.length);
    const total = rollup(baseline).find((row) => row[0] === "total");
    expect(Number(total?.[4])).toBe(realTargets.length);
  });

  it.each(CASES)("$id: $rule → error $code", async (c) => {
    const hostile = hostiles.get(c.id)!;
    const link = server.pool.linkOf(c.id);
    expect(link?.closed).toBe(false);
    const realLinks = new Map(realTargets.map((id) => [id, server.pool.linkOf(id)!]));
    const before = await violations(c.code);
    const targets = [...realTargets, c.id];

    if (c.warm) {
      // An honest fan-out first: its answers go over capnweb and authorize the link's session.
      const w = await portfolio(targets);
      expect(outcomeOf(w, c.id).status).toBe("ok");
      expect(server.pool.linkOf(c.id)).toBe(link);
    }
    const r = await portfolio(targets);

    expect(r.outcomes.map((o) => o.totebox).sort()).toEqual([...targets].sort());
    expect(r.targeted).toBe(targets.length);
    expect(hostile.reads).toBeGreaterThan(0); // the fan-out did reach it
    if (c.warm) expect(hostile.directReads).toBe(2); // ...with two direct reads
    const o = outcomeOf(r, c.id);
    expect(o).toMatchObject({ status: "error", code: c.code, answers: [] });
    expect(o.reason).toMatch(c.reason);
    expect(r.partial).toBe(true);
    expect(r.error).toBeNull(); // warn mode: what arrived is returned
    expect(r.answered).toBe(realTargets.length);
    // Its link is cut, and the pool knows why.
    expect(link?.closed).toBe(true);
    const h = server.pool.health(c.id)!;
    expect(h.health).toBe("offline");
    expect(h.lastError?.code).toBe(c.code);
    expect(await violations(c.code)).toBe(before + 1);
    // Nothing of it reached the real Toteboxes' links or their figures.
    for (const [id, l] of realLinks) {
      expect(server.pool.linkOf(id)).toBe(l);
      expect(l.closed).toBe(false);
    }
    expectRealUnharmed(r);
  });

  it("replays an old answer (a proxy in front of a real Totebox, holding its key) → error PSP_ERR_RECEIPT_MISMATCH", async () => {
    const targets = [...realTargets, proxied];
    // First fan-out: the proxy forwards, the answer is genuine and verifies.
    const first = await portfolio(targets);
    expect(outcomeOf(first, proxied)).toMatchObject({ status: "ok" });
    expect(verifyAnswers(first, keyOf).every((c) => c.verified)).toBe(true);
    const readsBefore = proxy.reads;
    const link = server.pool.linkOf(proxied);
    const before = await violations("PSP_ERR_RECEIPT_MISMATCH");

    // Second fan-out: the proxy answers each view with the first answer, byte for byte.
    const r = await portfolio(targets);
    expect(proxy.reads).toBe(readsBefore + 2);
    const o = outcomeOf(r, proxied);
    expect(o).toMatchObject({ status: "error", code: "PSP_ERR_RECEIPT_MISMATCH", answers: [] });
    expect(o.reason).toMatch(/capabilityId/);
    expect(link?.closed).toBe(true);
    expect(server.pool.health(proxied)).toMatchObject({
      health: "offline",
      lastError: { code: "PSP_ERR_RECEIPT_MISMATCH" },
    });
    expect(await violations("PSP_ERR_RECEIPT_MISMATCH")).toBe(before + 1);
    expectRealUnharmed(r);
  });

  it("afterwards every real link is still up and the estate answers as before", async () => {
    for (const id of real.keys()) expect(server.pool.health(id)?.health).toBe("online");
    for (const id of [...hostiles.keys(), proxied]) expect(server.pool.health(id)?.health).toBe("offline");
    const r = await portfolio(realTargets);
    expect(r.partial).toBe(false);
    expectRealUnharmed(r);
  });
});

describe("receipt signatures: the aggregator checks a sample, the console checks every one", () => {
  it("a Totebox that corrupts its signatures after an honest first fan-out: forwarded by a sampling aggregator, refused by the console", async () => {
    // A proxy holding a real Totebox's key (a compromised host) in front of that Totebox, known
    // only to a second aggregator whose sample never falls after each link's first answer.
    const target = realTargets[0]!;
    const rt = real.get(target)!;
    const up = await connectPsp({
      identity: estate.aggregator,
      role: "commander",
      host: rt.host,
      port: rt.port,
      expect: rt.fingerprint,
    });
    const upstream = openCommander<ToteboxRemote>(up);
    let reads = 0;
    const forger = await startHostileTotebox({
      identity: keys.get(target)!,
      behaviour: {
        hello: () => upstream.hello(),
        async read(call) {
          const a = (await upstream
            .authorize(call.grant)
            .view(call.view)
            .read(call.capability, { ...call.params }, call.row)) as ReadAnswer;
          reads++;
          return reads <= 2 ? a : withBadSignature(a); // a portfolio is two reads per Totebox
        },
      },
    });
    const addresses = new Map<string, { host: string; port: number; fingerprint: string }>([
      ...real,
      ...backing,
    ]);
    addresses.set(target, forger);
    const fleet = parse(fleetYaml(estate, addresses)) as {
      toteboxes: Array<{ id: string }>;
    };
    fleet.toteboxes = fleet.toteboxes.filter((t) => t.id === target);
    const configPath = join(root, "fleet-sampling.yaml");
    writeFileSync(configPath, stringify(fleet), { mode: 0o600 });
    const sampling = await OrchestrationServer.start({
      configPath,
      identity: estate.aggregator,
      logger: pino({ level: "silent" }),
      http: false,
      configPollMs: 60_000,
      receiptRandom: () => 0.999, // 0.999 × 32 ≥ 1: no answer after a link's first is checked here
    });
    const operator = estate.operators.get(TENANT)!;
    const c = await connectAggregator({
      identity: operator,
      host: sampling.address.host,
      port: sampling.address.port,
      fingerprint: sampling.identity.fingerprint,
    });
    try {
      await sampling.pool.settled(30_000);
      const s = c.aggregator.authorize(
        signGrant({
          operator,
          operatorId: "alice",
          tenant: TENANT,
          aggregator: c.hello,
          toteboxIds: [target],
          views: ["position", "occupancy"],
          actions: ["read"],
        }),
      );
      const ask = () =>
        s.viewport("portfolio", { targets: [target], params: { as_of: ESTATE_AS_OF }, timeoutMs: 20_000 });
      const first = await ask();
      expect(outcomeOf(first, target)).toMatchObject({ status: "ok" });
      expect(verifyAnswers(first, keyOf).every((x) => x.verified)).toBe(true);

      const second = await ask();
      expect(reads).toBe(4);
      // Bound to this request and this key, so the aggregator forwarded it unchecked...
      expect(outcomeOf(second, target)).toMatchObject({ status: "ok" });
      expect(sampling.pool.linkOf(target)?.closed).toBe(false);
      // ...and the console, which checks every signature, refuses both answers.
      const checks = verifyAnswers(second, keyOf);
      expect(checks.length).toBeGreaterThan(0);
      expect(checks.every((x) => !x.verified && x.code === "PSP_ERR_RECEIPT_SIGNATURE")).toBe(true);
      const counts = await sampling.metrics.receiptSignatures.get();
      const by = Object.fromEntries(counts.values.map((v) => [v.labels.check, v.value]));
      expect(by).toEqual({ checked: 1, forwarded: 3 });
    } finally {
      c.close();
      await sampling.close();
      await forger.close();
      up.close();
    }
  });
});
