/**
 * `npm run bench -- pipelining`: does `authorize(grant).view("position").read(cap)` cost one
 * network round trip?
 *
 * A commander talks to ONE simulated Totebox (bench/sim-fleet-worker.ts, run in this process: real
 * PSP server, real TLS, real capability checks and receipt) through a TCP proxy that holds every
 * chunk 50 ms in each direction, so one round trip is ≈ 100 ms and anything that needs more round
 * trips shows up as whole multiples of it. Measured, as medians of a few samples:
 *  - one round trip: `hello()`;
 *  - the chain pipelined: three calls, no await in between (one frame out, one answer);
 *  - the chain awaited call by call: `await authorize(grant)` resolves the session stub (a round
 *    trip), `await session.view(...)` resolves the view stub (another), then `read` (a third).
 * Goal: pipelined ≤ 1.2 round trips.
 */
import net from "node:net";
import {
  connectPsp,
  issueCallCapability,
  issueGrant,
  openCommander,
  rawEd25519PublicKey,
  releaseStub,
  systemClock,
} from "@os-orchestration/psp";
import type { ToteboxRemote, ToteboxSessionRemote, ToteboxViewRemote } from "@os-orchestration/totebox";
import { type BenchRow, median } from "./report.ts";
import {
  BenchError,
  benchIdentity,
  makeSimTrust,
  SimTotebox,
  simHost,
  startSimTotebox,
} from "./sim-fleet-worker.ts";

const DELAY_MS = 50;
const SAMPLES = 7;
/** Bytes a proxy direction may hold while delaying them; beyond, the connection is cut. */
const MAX_HELD_BYTES = 16 * 1024 * 1024;

export interface DelayProxy {
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Forwards `from` to `to`, each chunk `delayMs` after it arrived, in arrival order. One timer per
 * direction, armed for the oldest held chunk: order is kept by the queue, not by timer ordering.
 */
function pipeDelayed(from: net.Socket, to: net.Socket, delayMs: number): void {
  const queue: Array<{ due: number; chunk: Buffer | null }> = [];
  let held = 0;
  let timer: NodeJS.Timeout | undefined;
  const flush = () => {
    timer = undefined;
    const now = performance.now();
    while (queue.length > 0 && queue[0]!.due <= now) {
      const { chunk } = queue.shift()!;
      if (chunk === null) {
        to.end();
        return;
      }
      held -= chunk.length;
      if (!to.destroyed) to.write(chunk);
    }
    arm();
  };
  const arm = () => {
    if (timer !== undefined || queue.length === 0) return;
    timer = setTimeout(flush, Math.max(0, queue[0]!.due - performance.now()));
  };
  from.on("data", (chunk: Buffer) => {
    held += chunk.length;
    if (held > MAX_HELD_BYTES) {
      from.destroy();
      to.destroy();
      return;
    }
    queue.push({ due: performance.now() + delayMs, chunk });
    arm();
  });
  // The end of the stream is delayed like data, so it cannot overtake bytes still held.
  from.on("end", () => {
    queue.push({ due: performance.now() + delayMs, chunk: null });
    arm();
  });
  from.on("close", () => {
    if (timer === undefined && queue.length === 0) to.destroy();
  });
}

/** A TCP proxy on 127.0.0.1 that delays every chunk by `delayMs` in each direction. */
export function startDelayProxy(
  target: { host: string; port: number },
  delayMs = DELAY_MS,
): Promise<DelayProxy> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: target.host, port: target.port });
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    pipeDelayed(client, upstream, delayMs);
    pipeDelayed(upstream, client, delayMs);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      const a = server.address() as net.AddressInfo;
      resolve({
        host: "127.0.0.1",
        port: a.port,
        close: () =>
          new Promise<void>((res) => {
            for (const s of sockets) s.destroy();
            server.close(() => res());
          }),
      });
    });
  });
}

export async function benchPipelining(): Promise<BenchRow[]> {
  const seed = 1;
  const [agg, op, tbId] = await Promise.all([
    benchIdentity("aggregator", seed),
    benchIdentity("operator", seed),
    benchIdentity("pipelining-tb", seed),
  ]);
  const trust = await makeSimTrust({
    aggregatorFingerprint: agg.fingerprint,
    aggregatorPublicKeyRaw: rawEd25519PublicKey(agg.publicKey),
    operatorPublicKeyRaw: rawEd25519PublicKey(op.publicKey),
  });
  const tb = new SimTotebox({ seed, index: 0, identity: tbId, trust });
  const running = await startSimTotebox({
    totebox: tb,
    host: simHost(0, 71),
    floorAnswer: () => Buffer.alloc(0),
    serve: { psp: true, floor: false, https: false },
  });
  const proxy = await startDelayProxy({ host: running.descriptor.host, port: running.descriptor.pspPort });
  const link = await connectPsp({
    identity: agg,
    role: "commander",
    host: proxy.host,
    port: proxy.port,
    expect: tbId.fingerprint,
  });
  try {
    const main = openCommander<ToteboxRemote>(link);
    const grant = issueGrant({
      operator: "bench-operator",
      aggregatorId: agg.fingerprint,
      aggregatorKey: agg.publicKey,
      tenant: "bench",
      toteboxIds: [tb.id],
      views: ["position"],
      actions: ["read"],
      signer: op.privateKey,
      clock: systemClock,
    });
    const params = { as_of: "2026-10-31" };
    const cap = () =>
      issueCallCapability({
        grant,
        totebox: tb.id,
        view: "position",
        action: "read",
        clock: systemClock,
        signer: agg.privateKey,
      });
    const time = async (fn: () => Promise<void>) => {
      const t = performance.now();
      await fn();
      return performance.now() - t;
    };
    const checked = (ans: { rowCount?: unknown; totebox?: unknown }) => {
      if (ans.rowCount !== 1 || ans.totebox !== tb.id) {
        throw new BenchError("BENCH_ERR_HUB", "pipelining bench got an unexpected answer");
      }
    };

    const oneTrip = () => time(async () => void (await main.hello()));
    let framesPipelined = 0;
    const pipelined = () => {
      const c = cap();
      const frames0 = link.stats.framesOut;
      return time(async () => {
        const session = main.authorize(grant);
        const view = session.view("position");
        const read = view.read(c, params);
        const ans = await read;
        // Counted when the answer is in (so every request frame has left) and before the
        // releases below: everything the chain needed left in this many frames.
        framesPipelined = Math.max(framesPipelined, link.stats.framesOut - frames0);
        checked(ans);
        releaseStub(view);
        releaseStub(session);
      });
    };
    const sequential = () => {
      const c = cap();
      return time(async () => {
        // Awaiting a stub's promise resolves it: each await below is its own round trip.
        const session = (await (main.authorize(
          grant,
        ) as unknown as Promise<ToteboxSessionRemote>)) as ToteboxSessionRemote;
        const view = (await (session.view(
          "position",
        ) as unknown as Promise<ToteboxViewRemote>)) as ToteboxViewRemote;
        checked(await view.read(c, params));
        releaseStub(view);
        releaseStub(session);
      });
    };

    // Warm-up: TLS is up; JIT and capnweb paths get exercised once.
    await oneTrip();
    await pipelined();
    await sequential();
    const rtt: number[] = [];
    const pip: number[] = [];
    const seq: number[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      rtt.push(await oneTrip());
      pip.push(await pipelined());
      seq.push(await sequential());
    }
    const r = median(rtt);
    const p = median(pip);
    const s = median(seq);
    const section = "pipelining";
    return [
      {
        section,
        name: `one round trip, hello() (proxy ${DELAY_MS} ms each way)`,
        value: r,
        unit: "ms",
        ratio: "1.00 RTT (baseline)",
      },
      {
        section,
        name: "authorize→view→read, pipelined",
        value: p,
        unit: "ms",
        ratio: `${(p / r).toFixed(2)} RTT`,
        goal: `goal ≤ 1.2 RTT: ${p / r <= 1.2 ? "met" : "NOT met"}`,
      },
      {
        section,
        name: "authorize→view→read, one await each",
        value: s,
        unit: "ms",
        ratio: `${(s / r).toFixed(2)} RTT; pipelined saves ${(s / p).toFixed(2)}×`,
      },
      {
        section,
        name: "frames sent for the pipelined chain",
        value: framesPipelined,
        unit: "frames",
      },
    ];
  } finally {
    link.close();
    await proxy.close();
    await running.close();
  }
}
