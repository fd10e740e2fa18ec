/**
 * The link pool against real Toteboxes (in-process ToteboxServers, real TLS on loopback): links
 * come up and report health, a wrong pin or a Totebox claiming another id never comes online,
 * reconnect follows the jittered backoff (driven by a manual scheduler), calls per link are
 * bounded, and registry changes replace only the links that must change.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createIdentity, type Identity, ManualScheduler, rawEd25519PublicKey } from "@os-orchestration/psp";
import { initArchive, openArchive, ToteboxServer, trustPeer } from "@os-orchestration/totebox";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrchError } from "./errors.ts";
import { resolveOrchLimits } from "./limits.ts";
import { type LinkHealth, LinkPool } from "./pool.ts";
import { diffRegistry, parseRegistry, type Registry } from "./registry.ts";

const silent = pino({ level: "silent" });
let root: string;
let aggregator: Identity;
const servers: ToteboxServer[] = [];

async function totebox(id: string): Promise<ToteboxServer> {
  const dir = join(root, id);
  await initArchive({ dir, id, kind: "property", name: id, tags: { region: "west" } });
  const a = await openArchive(dir);
  trustPeer(a.db, {
    kind: "aggregator",
    label: "hub",
    publicKey: aggregator.publicKey,
    fingerprint: aggregator.fingerprint,
    now: Date.now(),
  });
  a.db.close();
  const s = await ToteboxServer.start({ dir, viewRunner: "in-process", logger: silent });
  servers.push(s);
  return s;
}

function registry(
  entries: { id: string; port: number; fingerprint: string; state?: string; tags?: string }[],
): Registry {
  const op = Buffer.from(rawEd25519PublicKey(aggregator.publicKey)).toString("hex");
  return parseRegistry(
    [
      "version: 1",
      "tenants: { t1: {} }",
      "toteboxes:",
      ...entries.map(
        (e) =>
          `  - { id: ${e.id}, address: "127.0.0.1:${e.port}", fingerprint: ${e.fingerprint}, state: ${e.state ?? "active"}, tags: { region: ${e.tags ?? "west"} }, tenants: [t1] }`,
      ),
      "operators:",
      `  - { id: op, public_key: ${op}, tenant: t1, role: viewer }`,
    ].join("\n"),
  );
}

/** Resolves when the pool has reported `health` for `id` `times` times (event-driven, no polling). */
function healthOf(
  events: { id: string; h: LinkHealth }[],
  waiters: Set<() => void>,
  id: string,
  h: LinkHealth,
  times = 1,
): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (events.filter((e) => e.id === id && e.h === h).length >= times) {
        waiters.delete(check);
        resolve();
      }
    };
    waiters.add(check);
    check();
  });
}

function makePool(
  overrides: Partial<Parameters<typeof resolveOrchLimits>[0]> = {},
  scheduler?: ManualScheduler,
) {
  const events: { id: string; h: LinkHealth }[] = [];
  const waiters = new Set<() => void>();
  let draws = 0;
  const pool = new LinkPool({
    identity: aggregator,
    scheduler: scheduler ?? {
      now: () => Date.now(),
      after: (ms, fn) => {
        const t = setTimeout(fn, ms);
        return { cancel: () => clearTimeout(t) };
      },
    },
    // Deterministic jitter: the same sequence every run.
    random: () => [0.25, 0.5, 0.75][draws++ % 3]!,
    limits: resolveOrchLimits(overrides),
    logger: silent,
    events: {
      health: (id, h) => {
        events.push({ id, h });
        for (const w of [...waiters]) w();
      },
    },
  });
  return {
    pool,
    events,
    waiters,
    until: (id: string, h: LinkHealth, times = 1) => healthOf(events, waiters, id, h, times),
  };
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "os-orch-pool-"));
  aggregator = await createIdentity({ name: "pool-test-aggregator" });
}, 60_000);

afterAll(async () => {
  for (const s of servers) await s.close();
  rmSync(root, { recursive: true, force: true });
});

describe("LinkPool", () => {
  it("brings links online with the Totebox's hello, and bounds calls per link", async () => {
    const a = await totebox("tb-a");
    const { pool, until } = makePool({ maxCallsPerLink: 2 });
    pool.apply(registry([{ id: "tb-a", port: a.address.port, fingerprint: a.identity.fingerprint }]));
    await until("tb-a", "online");
    const h = pool.health("tb-a")!;
    expect(h.hello?.id).toBe("tb-a");
    expect(h.lastContact).not.toBeNull();

    const l1 = await pool.acquire("tb-a", 1_000);
    // A slot at once, without a promise, while one is free; it counts like any other.
    const l2 = pool.tryAcquire("tb-a")!;
    expect(l2.hello.id).toBe("tb-a");
    expect(pool.health("tb-a")!.inFlight).toBe(2);
    // None left: tryAcquire says so rather than wait; nor for a Totebox it does not know.
    expect(pool.tryAcquire("tb-a")).toBeUndefined();
    expect(pool.tryAcquire("tb-nope")).toBeUndefined();
    expect(pool.health("tb-a")!.inFlight).toBe(2);
    // A third call waits for a slot …
    const third = pool.acquire("tb-a", 60_000);
    expect(pool.health("tb-a")!.queued).toBe(1);
    l1.release();
    const l3 = await third;
    expect(pool.health("tb-a")!.inFlight).toBe(2);
    // … and gives up with TOTEBOX_BUSY when none frees in time.
    await expect(pool.acquire("tb-a", 10)).rejects.toMatchObject({ code: "ORCH_ERR_TOTEBOX_BUSY" });
    l2.release();
    l3.release();
    l3.release(); // releasing twice frees one slot only
    expect(pool.health("tb-a")!.inFlight).toBe(0);
    pool.close();
  });

  it("a wrong pin never comes online; reconnects follow the jittered backoff", async () => {
    const b = await totebox("tb-b");
    const scheduler = new ManualScheduler(Date.now());
    const { pool, until } = makePool({ reconnectBaseMs: 1_000, reconnectMaxMs: 8_000 }, scheduler);
    const wrong = "ab".repeat(32);
    pool.apply(registry([{ id: "tb-b", port: b.address.port, fingerprint: wrong }]));
    await until("tb-b", "offline");
    expect(pool.health("tb-b")!.lastError?.code).toBe("PSP_ERR_PEER_PIN");
    expect(pool.health("tb-b")!.attempts).toBe(1);
    await expect(pool.acquire("tb-b", 1_000)).rejects.toMatchObject({ code: "ORCH_ERR_TOTEBOX_OFFLINE" });
    expect(pool.tryAcquire("tb-b")).toBeUndefined();
    // Attempt 1 failed: the next one is due after base + 0.25 × (min(max, base·2) − base) = 1250 ms.
    scheduler.advance(1_249);
    expect(pool.health("tb-b")!.health).toBe("offline");
    scheduler.advance(1);
    expect(pool.health("tb-b")!.health).toBe("connecting");
    await until("tb-b", "offline", 2);
    expect(pool.health("tb-b")!.attempts).toBe(2);
    pool.close();
  });

  it("a Totebox that answers hello with another id is refused", async () => {
    const c = await totebox("tb-c");
    const { pool, events, waiters } = makePool();
    pool.apply(registry([{ id: "tb-impostor", port: c.address.port, fingerprint: c.identity.fingerprint }]));
    await healthOf(events, waiters, "tb-impostor", "offline");
    expect(pool.health("tb-impostor")!.lastError?.code).toBe("ORCH_ERR_TOTEBOX_IDENTITY");
    pool.close();
  });

  it("registry changes: retagging keeps the link, a new pin replaces it, suspension closes it", async () => {
    const d = await totebox("tb-d");
    const { pool, until } = makePool();
    const base = { id: "tb-d", port: d.address.port, fingerprint: d.identity.fingerprint };
    const r1 = registry([base]);
    pool.apply(r1);
    await until("tb-d", "online");
    const link = pool.linkOf("tb-d");
    expect(link).toBeDefined();

    const r2 = registry([{ ...base, tags: "east" }]);
    const d2 = diffRegistry(r1, r2);
    expect(d2.changed.map((e) => e.id)).toEqual(["tb-d"]);
    pool.apply(r2, d2);
    expect(pool.linkOf("tb-d")).toBe(link); // same live link

    const r3 = registry([{ ...base, tags: "east", state: "suspended" }]);
    pool.apply(r3, diffRegistry(r2, r3));
    expect(link!.closed).toBe(true);
    expect(pool.health("tb-d")!.health).toBe("suspended");
    await expect(pool.acquire("tb-d", 1_000)).rejects.toSatisfy(
      (e: unknown) => e instanceof OrchError && e.code === "ORCH_ERR_TOTEBOX_SUSPENDED",
    );
    expect(pool.tryAcquire("tb-d")).toBeUndefined();

    const r4 = registry([{ ...base, tags: "east" }]);
    pool.apply(r4, diffRegistry(r3, r4));
    await until("tb-d", "online");
    const relinked = pool.linkOf("tb-d");
    expect(relinked).not.toBe(link);
    pool.close();
  });
});
