import { RpcTarget } from "capnweb";
import {
  connectPsp,
  createIdentity,
  listenPsp,
  openCommander,
  serveSubject,
} from "../packages/psp/src/index.ts";
import type { BenchRow } from "./report.ts";

class Api extends RpcTarget {
  ping(n: number) {
    return n;
  }
  self() {
    return this;
  }
}
interface ApiT {
  ping(n: number): number;
  self(): ApiT;
}

/** Round trips per second over one real TLS link: sequential calls, then pipelined batches. */
export async function benchRoundTrips(): Promise<BenchRow[]> {
  const [s, c] = await Promise.all([createIdentity({ name: "s" }), createIdentity({ name: "c" })]);
  const server = await listenPsp({
    identity: s,
    role: "subject",
    authorize: () => ({ ok: true, label: "c" }),
    onLink: (l) => serveSubject(l, new Api()),
    limits: { maxCallsInFlight: 1024 },
  });
  const link = await connectPsp({
    identity: c,
    role: "commander",
    host: "127.0.0.1",
    port: server.address.port,
    expect: s.fingerprint,
  });
  const api = openCommander<ApiT>(link);
  for (let i = 0; i < 500; i++) await api.ping(i); // warm-up

  const N = 3000;
  let t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await api.ping(i);
  const seqSec = Number(process.hrtime.bigint() - t) / 1e9;
  const sequential = N / seqSec;

  const BATCH = 100;
  t = process.hrtime.bigint();
  for (let i = 0; i < N / BATCH; i++) {
    await Promise.all(Array.from({ length: BATCH }, (_, j) => api.ping(j)));
  }
  const pipSec = Number(process.hrtime.bigint() - t) / 1e9;
  const pipelined = N / pipSec;
  link.close();
  await server.close();
  return [
    { section: "psp", name: "calls/s, one link, sequential", value: sequential, unit: "calls/s" },
    {
      section: "psp",
      name: `calls/s, one link, ${BATCH} in flight`,
      value: pipelined,
      unit: "calls/s",
      ratio: `${(pipelined / sequential).toFixed(1)}× sequential`,
    },
  ];
}

/** Capability signing and chain verification against raw Ed25519 in the same run. */
export async function benchCapabilities(): Promise<BenchRow[]> {
  const { sign, verify } = await import("node:crypto");
  const psp = await import("../packages/psp/src/index.ts");
  const [op, agg] = await Promise.all([
    psp.createIdentity({ name: "op" }),
    psp.createIdentity({ name: "agg" }),
  ]);
  const clock = psp.systemClock;
  const msg = new Uint8Array(200).fill(7);
  const N = 4000;
  // fn gets a running index across warm-up and measurement, so single-use tokens are never reused.
  const rate = (fn: (i: number) => void, n = N) => {
    let k = 0;
    for (let i = 0; i < 200; i++) fn(k++); // warm-up
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn(k++);
    return n / (Number(process.hrtime.bigint() - t) / 1e9);
  };
  const sig = sign(null, msg, agg.privateKey);
  const rawSign = rate(() => sign(null, msg, agg.privateKey));
  const rawVerify = rate(() => verify(null, msg, agg.publicKey, sig));

  const grant = psp.issueGrant({
    operator: "op",
    aggregatorId: agg.fingerprint,
    aggregatorKey: agg.publicKey,
    tenant: "t",
    toteboxIds: ["tb"],
    views: ["position"],
    actions: ["read"],
    signer: op.privateKey,
    clock,
  });
  const issue = rate(() =>
    psp.issueCallCapability({
      grant,
      totebox: "tb",
      view: "position",
      action: "read",
      clock,
      signer: agg.privateKey,
    }),
  );
  const batchT = process.hrtime.bigint();
  const BATCH = 1000;
  const batchCaps = psp.issueCallCapabilityBatch(
    Array.from({ length: BATCH }, () => ({ grant, totebox: "tb", view: "position", action: "read", clock })),
    agg.privateKey,
  );
  const batchRate = BATCH / (Number(process.hrtime.bigint() - batchT) / 1e9);

  const trusted = (keyId: string) => (keyId === op.keyId ? { publicKey: op.publicKey } : undefined);
  const verifiedGrant = psp.verifyGrant({
    grant,
    trustedOperators: trusted,
    aggregatorId: agg.fingerprint,
    clock,
  });
  const caps = Array.from({ length: N + 200 }, () =>
    psp.issueCallCapability({
      grant,
      totebox: "tb",
      view: "position",
      action: "read",
      clock,
      signer: agg.privateKey,
    }),
  );
  const replayStore = new psp.MemoryReplayStore(clock, { maxEntries: 1_000_000 });
  const chainCheck = (cap: Uint8Array) =>
    psp.verifyCallChain({
      grant: verifiedGrant,
      capability: cap,
      trustedOperators: trusted,
      aggregatorId: agg.fingerprint,
      totebox: { id: "tb", tags: {} },
      request: { view: "position", action: "read" },
      clock,
      replayStore,
    });
  const verifyRate = rate((i) => chainCheck(caps[i]!), N);
  const batchReplay = new psp.MemoryReplayStore(clock, { maxEntries: 1_000_000 });
  const batchVerify = rate(
    (i) =>
      psp.verifyCallChain({
        grant: verifiedGrant,
        capability: batchCaps[i % BATCH]!,
        trustedOperators: trusted,
        aggregatorId: agg.fingerprint,
        totebox: { id: "tb", tags: {} },
        request: { view: "position", action: "read" },
        clock,
        replayStore: batchReplay,
      }),
    BATCH - 200,
  );
  return [
    { section: "psp", name: "raw Ed25519 sign", value: rawSign, unit: "ops/s", ratio: "baseline" },
    { section: "psp", name: "raw Ed25519 verify", value: rawVerify, unit: "ops/s", ratio: "baseline" },
    {
      section: "psp",
      name: "call capability sign (one each)",
      value: issue,
      unit: "caps/s",
      ratio: `${(issue / rawSign).toFixed(2)}× raw sign`,
    },
    {
      section: "psp",
      name: `call capability sign (batch of ${BATCH})`,
      value: batchRate,
      unit: "caps/s",
      ratio: `${(batchRate / rawSign).toFixed(2)}× raw sign`,
    },
    {
      section: "psp",
      name: "capability chain verify (grant cached)",
      value: verifyRate,
      unit: "verifies/s",
      ratio: `${(verifyRate / rawVerify).toFixed(2)}× raw verify`,
    },
    {
      section: "psp",
      name: "batch capability chain verify",
      value: batchVerify,
      unit: "verifies/s",
      ratio: `${(batchVerify / rawVerify).toFixed(2)}× raw verify`,
    },
  ];
}
