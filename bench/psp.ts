import tls from "node:tls";
import { RpcTarget } from "capnweb";
import {
  connectPsp,
  createIdentity,
  DIRECT_READ_METHOD,
  decodeDirectReadReply,
  directReadPayload,
  encodeDirectReadBody,
  listenPsp,
  openCommander,
  type PspLink,
  pinOnly,
  serveSubject,
} from "../packages/psp/src/index.ts";
import { type BenchRow, median } from "./report.ts";
import { POSITION_COLUMNS } from "./sim-fleet-worker.ts";

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

// ---------------------------------------------------------------------------------------------
// The protocol's own cost per call, against the same bytes over the same kind of TLS

/** A read's answer as a Totebox gives it: an Arrow stream, a receipt, a few small fields. */
const TAX_ARROW = new Uint8Array(1120).fill(1);
const TAX_RECEIPT = new Uint8Array(290).fill(2);

class TaxSession extends RpcTarget {
  readonly #answer = {
    totebox: "tb-000001",
    view: "position",
    arrow: TAX_ARROW,
    receipt: TAX_RECEIPT,
    rowCount: 1,
    suppressedGroups: 0,
    watermark: "sim:1:1",
  };
  read(_capability: unknown, _view: unknown, _params: unknown) {
    return this.#answer;
  }
}
class TaxMain extends RpcTarget {
  authorize(_grant: unknown) {
    return new TaxSession();
  }
}
interface TaxSessionT {
  read(capability: Uint8Array, view: string, params: Record<string, string>): Promise<{ arrow: unknown }>;
}

/**
 * What PSP itself costs per call, both ends together in one process, with no application work:
 * one `read(capability, view, params)` per link over many links at once (a fan-out's shape),
 * against the same number of bytes each way written and read as raw frames over the same kind of
 * mutual-TLS links. The difference is capnweb, the message codec, the Diode checks, framing and
 * their garbage. The same read as a direct request (psp.md §3.1, what the aggregator sends once a
 * link's session has answered) is measured too. Rounds alternate between the three so that load
 * drifting on a shared machine touches all alike; the median round is reported.
 */
export async function benchCallTax(): Promise<BenchRow[]> {
  const LINKS = 200;
  const ROUNDS = 9;
  const CALLS_PER_ROUND = 20; // per link
  const [s, c] = await Promise.all([createIdentity({ name: "tax-s" }), createIdentity({ name: "tax-c" })]);
  const server = await listenPsp({
    identity: s,
    role: "subject",
    host: "127.0.0.1",
    port: 0,
    authorize: pinOnly(c.fingerprint),
    onLink: (l) => {
      serveSubject(l, new TaxMain());
      // The same answer as a direct read's reply (psp.md §3.1): the Arrow stream and the receipt.
      l.serveRequests(async () => [TAX_ARROW, TAX_RECEIPT]);
    },
  });
  const links: PspLink[] = [];
  const sessions: TaxSessionT[] = [];
  for (let i = 0; i < LINKS; i++) {
    const l = await connectPsp({
      identity: c,
      role: "commander",
      host: "127.0.0.1",
      port: server.address.port,
      expect: s.fingerprint,
    });
    links.push(l);
    sessions.push(openCommander<{ authorize(g: Uint8Array): TaxSessionT }>(l).authorize(new Uint8Array(64)));
  }
  const capability = new Uint8Array(560).fill(3);
  const params = { as_of: "2026-10-31" };
  const pspRound = () =>
    Promise.all(
      sessions.map(async (session) => {
        const a = await session.read(capability, "position", params);
        if (!(a.arrow instanceof Uint8Array)) throw new Error("bench: answer has no Arrow bytes");
      }),
    );
  // The same read as a direct request (what the aggregator sends once a link's session has
  // answered): the capability, then the body every link shares.
  const directBody = encodeDirectReadBody({
    grantHash: new Uint8Array(32),
    view: "position",
    params,
    row: null,
  });
  const directRound = () =>
    Promise.all(
      links.map(async (l) => {
        const a = decodeDirectReadReply(
          await l.request(DIRECT_READ_METHOD, directReadPayload(capability, directBody)),
        );
        if (a.arrow.byteLength !== TAX_ARROW.byteLength)
          throw new Error("bench: direct reply has no Arrow bytes");
      }),
    );
  /** Bytes one call of `round` moves each way per link (TLS records aside). */
  const bytesOf = async (round: () => Promise<unknown>) => {
    const b0 = links.reduce((n, l) => n + l.stats.bytesOut, 0);
    const i0 = links.reduce((n, l) => n + l.stats.bytesIn, 0);
    await round();
    return {
      out: Math.round((links.reduce((n, l) => n + l.stats.bytesOut, 0) - b0) / LINKS),
      in: Math.round((links.reduce((n, l) => n + l.stats.bytesIn, 0) - i0) / LINKS),
    };
  };
  for (let i = 0; i < 5; i++) await pspRound(); // warm-up; authorize answered
  for (let i = 0; i < 5; i++) await directRound();
  const pspBytes = await bytesOf(pspRound);
  const directBytes = await bytesOf(directRound);
  // Raw frames of exactly the bytes one PSP call moved each way (TLS records aside).
  const reqBytes = pspBytes.out;
  const ansBytes = pspBytes.in;

  const raw = tls.createServer(
    { key: s.keyPem, cert: s.certPem, minVersion: "TLSv1.3", requestCert: true, rejectUnauthorized: false },
    (sock) => {
      sock.setNoDelay(true);
      sock.on("error", () => sock.destroy()); // a reset at teardown is not the bench's failure
      const answer = Buffer.alloc(ansBytes, 4);
      let got = 0;
      sock.on("data", (d: Buffer) => {
        got += d.byteLength;
        while (got >= reqBytes) {
          got -= reqBytes;
          sock.write(answer);
        }
      });
    },
  );
  await new Promise<void>((r) => raw.listen(0, "127.0.0.1", () => r()));
  const rawPort = (raw.address() as { port: number }).port;
  const sockets = await Promise.all(
    Array.from(
      { length: LINKS },
      () =>
        new Promise<tls.TLSSocket>((resolve, reject) => {
          const sock = tls.connect(
            {
              host: "127.0.0.1",
              port: rawPort,
              key: c.keyPem,
              cert: c.certPem,
              rejectUnauthorized: false,
              minVersion: "TLSv1.3",
            },
            () => {
              sock.setNoDelay(true);
              // From here an error ends in "close", which fails the round that was waiting.
              sock.on("error", () => sock.destroy());
              resolve(sock);
            },
          );
          sock.once("error", reject);
        }),
    ),
  );
  const request = Buffer.alloc(reqBytes, 5);
  const rawRound = () =>
    Promise.all(
      sockets.map(
        (sock) =>
          new Promise<void>((resolve, reject) => {
            let got = 0;
            const done = (e?: Error) => {
              sock.off("data", onData);
              sock.off("close", onClose);
              if (e) reject(e);
              else resolve();
            };
            const onData = (d: Buffer) => {
              got += d.byteLength;
              if (got >= ansBytes) done();
            };
            // A link lost mid-round fails the bench instead of leaving the round waiting forever.
            const onClose = () => done(new Error("bench: a raw TLS link closed mid-round"));
            sock.on("data", onData);
            sock.once("close", onClose);
            sock.write(request);
          }),
      ),
    );
  for (let i = 0; i < 5; i++) await rawRound();

  const cpuPerCall = async (round: () => Promise<unknown>) => {
    const c0 = process.cpuUsage();
    for (let i = 0; i < CALLS_PER_ROUND; i++) await round();
    const d = process.cpuUsage(c0);
    return (d.user + d.system) / (LINKS * CALLS_PER_ROUND);
  };
  const psp: number[] = [];
  const direct: number[] = [];
  const floor: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    psp.push(await cpuPerCall(pspRound));
    direct.push(await cpuPerCall(directRound));
    floor.push(await cpuPerCall(rawRound));
  }
  for (const sock of sockets) sock.destroy();
  await new Promise<void>((r) => raw.close(() => r()));
  for (const l of links) l.close();
  await server.close();
  const pspUs = median(psp);
  const directUs = median(direct);
  const rawUs = median(floor);
  return [
    {
      section: "psp",
      name: `raw frames over mutual TLS, ${reqBytes} B out / ${ansBytes} B back, one per link on ${LINKS} links (CPU per exchange, both ends)`,
      value: rawUs,
      unit: "µs",
      ratio: "baseline",
    },
    {
      section: "psp",
      name: `PSP read(capability, view, params) moving the same bytes (CPU per call, both ends, no application work)`,
      value: pspUs,
      unit: "µs",
      ratio: `${(pspUs / rawUs).toFixed(2)}× raw frames; the protocol's own ${(pspUs - rawUs).toFixed(0)} µs per call`,
    },
    {
      section: "psp",
      name: `PSP direct read (a Request and a Reply frame, ${directBytes.out} B out / ${directBytes.in} B back; CPU per call, both ends)`,
      value: directUs,
      unit: "µs",
      ratio: `${(directUs / rawUs).toFixed(2)}× raw frames, ${(directUs / pspUs).toFixed(2)}× the capnweb read; the protocol's own ${(directUs - rawUs).toFixed(0)} µs per call`,
    },
  ];
}

/**
 * Capability signing and chain verification against raw Ed25519 in the same run, followed by the
 * per-answer result and receipt rows (benchResultCodec, benchReceipts), which run.ts's "psp"
 * section reaches through here.
 */
export async function benchCapabilities(): Promise<BenchRow[]> {
  return [...(await benchCapabilityChains()), ...(await benchReceipts()), ...(await benchResultCodec())];
}

async function benchCapabilityChains(): Promise<BenchRow[]> {
  const { sign, verify } = await import("node:crypto");
  const psp = await import("../packages/psp/src/index.ts");
  const [op, agg] = await Promise.all([
    psp.createIdentity({ name: "op" }),
    psp.createIdentity({ name: "agg" }),
  ]);
  const clock = psp.systemClock;
  const msg = new Uint8Array(200).fill(7);
  const sig = sign(null, msg, agg.privateKey);

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
  const issueOne = () =>
    psp.issueCallCapability({
      grant,
      totebox: "tb",
      view: "position",
      action: "read",
      clock,
      signer: agg.privateKey,
    });
  const BATCH = 1000;
  const batchInputs = Array.from({ length: BATCH }, () => ({
    grant,
    totebox: "tb",
    view: "position",
    action: "read",
    clock,
  }));
  // A fan-out signs one batch per query: the best of 7 batches after 3 to warm up, as the hub
  // runs it (a single cold batch measured the JIT more than the code).
  let batchRate = 0;
  for (let round = 0; round < 10; round++) {
    const batchT = process.hrtime.bigint();
    psp.issueCallCapabilityBatch(batchInputs, agg.privateKey);
    const r = BATCH / (Number(process.hrtime.bigint() - batchT) / 1e9);
    if (round >= 3) batchRate = Math.max(batchRate, r);
  }

  const trusted = (keyId: string) => (keyId === op.keyId ? { publicKey: op.publicKey } : undefined);
  const verifiedGrant = psp.verifyGrant({
    grant,
    trustedOperators: trusted,
    aggregatorId: agg.fingerprint,
    clock,
  });
  // Capabilities are single-use (each verifier's replay store refuses a second check), so every
  // call of a verifier below gets a capability of its own: CHAIN_WARM + ROUNDS × PER_ROUND of them.
  const uses = CHAIN_WARM + CHAIN_ROUNDS * CHAIN_PER_ROUND;
  const caps = Array.from({ length: uses }, issueOne);
  // Batches of BATCH as a fan-out signs them, as many as the batch verifier uses: each of its
  // checks recomputes the root from the path and verifies the root's signature.
  const verifyBatches: Uint8Array[] = [];
  while (verifyBatches.length < uses) {
    verifyBatches.push(...psp.issueCallCapabilityBatch(batchInputs, agg.privateKey));
  }
  // For the root cache, one batch of all its uses: its root is verified once, in the warm-up, so
  // every round measures the cached path alike (with batches of BATCH, a round of CHAIN_PER_ROUND
  // that crossed into a new batch paid one more signature check than the round beside it).
  const cachedBatch = psp.issueCallCapabilityBatch(
    Array.from({ length: uses }, () => batchInputs[0]!),
    agg.privateKey,
  );
  type BatchRoots = InstanceType<typeof psp.BatchRootCache>;
  /** One verifier (one Totebox "tb"): its own replay store and, optionally, its own root cache. */
  const verifier = (batchRoots?: BatchRoots) => {
    const replayStore = new psp.MemoryReplayStore(clock, { maxEntries: 1_000_000 });
    return (cap: Uint8Array) =>
      psp.verifyCallChain({
        grant: verifiedGrant,
        capability: cap,
        trustedOperators: trusted,
        aggregatorId: agg.fingerprint,
        totebox: { id: "tb", tags: {} },
        request: { view: "position", action: "read" },
        clock,
        replayStore,
        ...(batchRoots ? { batchRoots } : {}),
      });
  };
  const chainCheck = verifier();
  // Each capability of a batch, as a Totebox receives it: its own root recomputed from its path,
  // and the root's signature verified; then the same with the verifier's BatchRootCache, which
  // only helps a Totebox given several capabilities of one batch (two views in one fan-out).
  const batchCheck = verifier(undefined);
  const batchCheckCached = verifier(new psp.BatchRootCache());
  // Each against its primitive in interleaved rounds (the primitive, then each of ours, round after
  // round): this machine's pace drifts by half within a section, and a baseline timed a second
  // apart from what it anchors read the batch verifier at 0.62× and 0.84× in two runs of one commit.
  // (The batch signing rate above is not interleaved: the best batch, against the median raw sign.)
  const signs = interleavedRates([() => sign(null, msg, agg.privateKey), () => issueOne()], {
    perRound: 1000,
    rounds: CHAIN_ROUNDS,
    warm: CHAIN_WARM,
  });
  const verifies = interleavedRates(
    [
      () => verify(null, msg, agg.publicKey, sig),
      (i) => chainCheck(caps[i]!),
      (i) => batchCheck(verifyBatches[i]!),
      (i) => batchCheckCached(cachedBatch[i]!),
    ],
    { perRound: CHAIN_PER_ROUND, rounds: CHAIN_ROUNDS, warm: CHAIN_WARM },
  );
  const against = (r: InterleavedRates, j: number, what: string) =>
    `${r.ratios[j]!.median.toFixed(2)}× ${what} (${r.ratios[j]!.low.toFixed(2)}-${r.ratios[j]!.high.toFixed(2)}× over ${CHAIN_ROUNDS} interleaved rounds)`;
  const rawSign = signs.rates[0]!;
  return [
    { section: "psp", name: "raw Ed25519 sign", value: rawSign, unit: "ops/s", ratio: "baseline" },
    {
      section: "psp",
      name: "raw Ed25519 verify",
      value: verifies.rates[0]!,
      unit: "ops/s",
      ratio: "baseline",
    },
    {
      section: "psp",
      name: "call capability sign (one each)",
      value: signs.rates[1]!,
      unit: "caps/s",
      ratio: against(signs, 1, "raw sign"),
    },
    {
      section: "psp",
      name: `call capability sign (batch of ${BATCH})`,
      value: batchRate,
      unit: "caps/s",
      ratio: `${times(batchRate, rawSign, "raw sign")} (best batch, against the median raw sign)`,
    },
    {
      section: "psp",
      name: "capability chain verify (grant cached)",
      value: verifies.rates[1]!,
      unit: "verifies/s",
      ratio: against(verifies, 1, "raw verify"),
    },
    {
      section: "psp",
      name: "batch capability chain verify",
      value: verifies.rates[2]!,
      unit: "verifies/s",
      ratio: against(verifies, 2, "raw verify"),
    },
    {
      section: "psp",
      name: "batch capability chain verify, root cached (many capabilities of one batch, one verifier)",
      value: verifies.rates[3]!,
      unit: "verifies/s",
      ratio: against(verifies, 3, "raw verify"),
    },
  ];
}

/** Warm-up calls of each function, then rounds of calls per function, for the chains above. */
const CHAIN_WARM = 200;
const CHAIN_ROUNDS = 10;
/** Calls per function per round (a round of one verifier: ~10-100 ms here). */
const CHAIN_PER_ROUND = 500;

export interface InterleavedRates {
  /** Median calls per second of each function over the rounds. */
  readonly rates: number[];
  /** Per function, its rate over the first's within each round: median, lowest, highest. */
  readonly ratios: { median: number; low: number; high: number }[];
}

/**
 * Calls per second of each function in interleaved rounds (a, b, c, a, b, c, ...) after a warm-up
 * of each, and each function's rate over the first's, round by round. `fn` gets a running index of
 * its own calls (warm-up included), so that single-use inputs are never used twice. `now` is the
 * clock in ns (process.hrtime.bigint; a test's own).
 */
export function interleavedRates(
  fns: readonly ((i: number) => unknown)[],
  opts: { perRound: number; rounds: number; warm: number; now?: () => bigint },
): InterleavedRates {
  const now = opts.now ?? process.hrtime.bigint;
  const next = fns.map(() => 0);
  for (let j = 0; j < fns.length; j++) for (let i = 0; i < opts.warm; i++) fns[j]!(next[j]!++);
  const rates = fns.map(() => [] as number[]);
  for (let r = 0; r < opts.rounds; r++) {
    for (let j = 0; j < fns.length; j++) {
      const fn = fns[j]!;
      const t = now();
      for (let i = 0; i < opts.perRound; i++) fn(next[j]!++);
      rates[j]!.push(opts.perRound / (Number(now() - t) / 1e9));
    }
  }
  return {
    rates: rates.map(median),
    ratios: rates.map((rs) => {
      const ratios = rs.map((x, r) => x / rates[0]![r]!);
      return { median: median(ratios), low: Math.min(...ratios), high: Math.max(...ratios) };
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// Per-answer costs: Arrow results and receipts, each against a baseline measured in this run.

/** µs per call of one timed round of ~`ms`. */
function round(fn: () => unknown, ms: number): number {
  let n = 0;
  const t0 = process.hrtime.bigint();
  let t = t0;
  while (Number(t - t0) < ms * 1e6) {
    for (let i = 0; i < 20; i++) fn();
    n += 20;
    t = process.hrtime.bigint();
  }
  return Number(t - t0) / 1e3 / n;
}

/**
 * Median µs per call of each function, measured in interleaved rounds (a, b, c, a, b, c, ...)
 * after a warm-up: on a shared machine the load drifts, and interleaving keeps each ratio between
 * rounds taken under the same conditions.
 */
function microseconds(fns: readonly (() => unknown)[], ms = 100, rounds = 7): number[] {
  for (const fn of fns) for (let i = 0; i < 200; i++) fn();
  const samples = fns.map(() => [] as number[]);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < fns.length; i++) samples[i]!.push(round(fns[i]!, ms));
  }
  return samples.map(median);
}

const times = (x: number, base: number, what: string) => `${(x / base).toFixed(2)}× ${what}`;

/** The view the fan-out bench's simulated Toteboxes answer: one row of eight columns. */
const POSITION = POSITION_COLUMNS;
const POSITION_ROW = ["2026-11-01", "EUR", 1_250_000, 5_000_000, 1_200_000, 3_800_000, 400_000, 3_400_000];

/**
 * encodeResult / decodeResult for one 8-column row and for 1,000 rows. Baselines: JSON of the same
 * rows, and Arrow's own builders, writer and reader (vectorFromArray + tableToIPC, tableFromIPC +
 * getters: how results were encoded and decoded before).
 */
export async function benchResultCodec(): Promise<BenchRow[]> {
  const arrow = await import("apache-arrow");
  const psp = await import("../packages/psp/src/index.ts");
  const types = {
    string: () => new arrow.Utf8(),
    integer: () => new arrow.Int64(),
    number: () => new arrow.Float64(),
    date: () => new arrow.DateDay(),
    boolean: () => new arrow.Bool(),
  } as const;
  const builderValue = (t: keyof typeof types, v: unknown) =>
    v === null || v === undefined
      ? null
      : t === "integer"
        ? BigInt(v as number)
        : t === "date"
          ? new Date(Date.parse(`${v}T00:00:00Z`))
          : v;
  const viaBuilders = (rows: readonly (readonly unknown[])[]) => {
    const vectors: Record<string, InstanceType<typeof arrow.Vector>> = {};
    POSITION.forEach((c, i) => {
      vectors[c.name] = arrow.vectorFromArray(
        rows.map((r) => builderValue(c.type, r[i])),
        types[c.type](),
      );
    });
    return arrow.tableToIPC(new arrow.Table(vectors as never), "stream");
  };
  const viaReader = (bytes: Uint8Array) => {
    const t = arrow.tableFromIPC(bytes);
    const out: Record<string, unknown>[] = [];
    for (let r = 0; r < t.numRows; r++) {
      const row: Record<string, unknown> = {};
      t.schema.fields.forEach((f, i) => {
        row[f.name] = t.getChildAt(i)!.get(r);
      });
      out.push(row);
    }
    return out;
  };
  const rows: BenchRow[] = [];
  for (const n of [1, 1000]) {
    const data =
      n === 1
        ? [POSITION_ROW]
        : Array.from({ length: n }, (_, i) => ["2026-11-01", `EUR${i % 7}`, i, 2 * i, 3 * i, i, null, 7 * i]);
    const label = n === 1 ? "1 row × 8 columns" : `${n.toLocaleString("en-US")} rows × 8 columns`;
    const bytes = psp.encodeResult(POSITION, data);
    const objects = data.map((r) => Object.fromEntries(POSITION.map((c, i) => [c.name, r[i]])));
    const jsonObjects = JSON.stringify(objects);
    const ms = n === 1 ? 100 : 250;
    const [enc, encBuilders, encJson] = microseconds(
      [() => psp.encodeResult(POSITION, data), () => viaBuilders(data), () => JSON.stringify(data)],
      ms,
    ) as [number, number, number];
    const [dec, decTable, decReader, decJson] = microseconds(
      [
        () => psp.decodeResult(bytes, POSITION).rows(),
        () => psp.decodeResult(bytes, POSITION).table.getChildAt(7)!.get(0),
        () => viaReader(bytes),
        () => JSON.parse(jsonObjects),
      ],
      ms,
    ) as [number, number, number, number];
    rows.push(
      {
        section: "psp",
        name: `encodeResult, ${label}`,
        value: enc,
        unit: "µs",
        ratio: `${times(encBuilders, enc, "faster than Arrow builders")} (${encBuilders.toFixed(1)} µs); ${times(enc, encJson, "JSON.stringify")}`,
        goal: `≥ 5× faster than Arrow builders: ${encBuilders / enc >= 5 ? "met" : "NOT met"}`,
      },
      {
        section: "psp",
        name: `decodeResult + rows(), ${label}`,
        value: dec,
        unit: "µs",
        ratio: `${times(decReader, dec, "faster than tableFromIPC + get()")} (${decReader.toFixed(1)} µs); ${times(dec, decJson, "JSON.parse")}`,
        goal: `≥ 2× faster than tableFromIPC + get(): ${decReader / dec >= 2 ? "met" : "NOT met"}`,
      },
      {
        section: "psp",
        name: `decodeResult + table.get (one cell), ${label}`,
        value: decTable,
        unit: "µs",
        ratio: times(decTable, decJson, "JSON.parse"),
      },
    );
  }
  return rows;
}

/** signReceipt / verifyReceipt for a one-row answer against raw Ed25519 sign / verify. */
export async function benchReceipts(): Promise<BenchRow[]> {
  const { sign, verify, createPublicKey } = await import("node:crypto");
  const psp = await import("../packages/psp/src/index.ts");
  const subject = await psp.createIdentity({ name: "tb-bench" });
  const arrowBytes = psp.encodeResult(POSITION, [POSITION_ROW]);
  const reqHash = psp.requestHash({ view: "position", params: { asOf: "2026-11-01", currency: "EUR" } });
  const input = {
    capabilityId: new Uint8Array(16).fill(7),
    view: "position",
    requestHash: reqHash,
    rowCount: 1,
    suppressedGroups: 0,
    watermark: "journal:9f3c2a@1207",
    arrowBytes,
    subjectId: "tb-bench",
    clock: psp.systemClock,
    signer: subject.privateKey,
  };
  const token = psp.signReceipt(input);
  const publicKey = createPublicKey(subject.privateKey);
  const expect = {
    arrowBytes,
    capabilityId: input.capabilityId,
    requestHash: reqHash,
    subjectId: "tb-bench",
  };
  // The raw baselines sign and verify a message of the size a receipt's Sig_structure has.
  const msg = new Uint8Array(token.byteLength).fill(7);
  const sig = sign(null, msg, subject.privateKey);
  const [rawSign, signUs, rawVerify, verifyUs, reqHashUs] = microseconds([
    () => sign(null, msg, subject.privateKey),
    () => psp.signReceipt(input),
    () => verify(null, msg, publicKey, sig),
    () => psp.verifyReceipt({ token, subjectPublicKey: publicKey, expect }),
    () => psp.requestHash({ view: "position", params: { asOf: "2026-11-01", currency: "EUR" } }),
  ]) as [number, number, number, number, number];
  return [
    {
      section: "psp",
      name: "raw Ed25519 sign (receipt-sized)",
      value: rawSign,
      unit: "µs",
      ratio: "baseline",
    },
    {
      section: "psp",
      name: "raw Ed25519 verify (receipt-sized)",
      value: rawVerify,
      unit: "µs",
      ratio: "baseline",
    },
    {
      section: "psp",
      name: "signReceipt (arrow digest included)",
      value: signUs,
      unit: "µs",
      ratio: times(signUs, rawSign, "raw sign"),
    },
    {
      section: "psp",
      name: "verifyReceipt (all expectations, arrow digest included)",
      value: verifyUs,
      unit: "µs",
      ratio: times(verifyUs, rawVerify, "raw verify"),
      goal: `≤ 1.5× raw verify: ${verifyUs / rawVerify <= 1.5 ? "met" : "NOT met"}`,
    },
    { section: "psp", name: "requestHash (view + 2 params)", value: reqHashUs, unit: "µs" },
    ...(await benchDigests(arrowBytes)),
  ];
}

/**
 * PSP's SHA-256 (psp sha256.ts, here through `arrowDigest`): the digest read as a binary string
 * into a 32-byte array on V8's heap, against node:crypto's one-shot hash returning a Buffer (a
 * fresh off-heap backing store per digest) viewed as a Uint8Array, as PSP's Merkle code hashed
 * before (its receipts also copied the digest, which cost more). 65 bytes is a Merkle node's
 * input; the answer is the position row's Arrow stream. Process CPU per digest (main thread and
 * V8's helper threads, so the collector's share of each is in its figure), interleaved rounds.
 */
async function benchDigests(answer: Uint8Array): Promise<BenchRow[]> {
  const { hash } = await import("node:crypto");
  const psp = await import("../packages/psp/src/index.ts");
  const cpuRound = (fn: () => unknown, n: number): number => {
    const c0 = process.cpuUsage();
    for (let i = 0; i < n; i++) fn();
    const c = process.cpuUsage(c0);
    return (c.user + c.system) / n;
  };
  const rows: BenchRow[] = [];
  for (const input of [new Uint8Array(65).fill(1), answer]) {
    // As batch-proof.ts did: a plain view of the Buffer digest, no copy (receipt.ts copied it).
    const viaBuffer = () => {
      const d = hash("sha256", input, "buffer");
      return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    };
    const ours = () => psp.arrowDigest(input);
    for (let i = 0; i < 20_000; i++) {
      viaBuffer();
      ours();
    }
    const base: number[] = [];
    const mine: number[] = [];
    for (let r = 0; r < 7; r++) {
      base.push(cpuRound(viaBuffer, 50_000));
      mine.push(cpuRound(ours, 50_000));
    }
    const b = median(base);
    const m = median(mine);
    rows.push(
      {
        section: "psp",
        name: `SHA-256 of ${input.byteLength} B, node:crypto hash() to a Buffer (CPU per digest)`,
        value: b,
        unit: "µs",
        ratio: "baseline",
      },
      {
        section: "psp",
        name: `SHA-256 of ${input.byteLength} B, psp (digest as a binary string, on V8's heap)`,
        value: m,
        unit: "µs",
        ratio: times(m, b, "Buffer digest"),
      },
    );
  }
  return rows;
}
