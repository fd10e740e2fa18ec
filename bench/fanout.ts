/**
 * `npm run bench -- fanout` (issue 7): is the aggregator's fan-out fast?
 *
 * For each fleet size N (BENCH_FANOUT_SIZES, default "1000,10000") one simulated fleet is started
 * (bench/sim-fleet.ts: real PSP subjects, real TLS, real capability checks and receipts, spread
 * over worker processes) and the contenders below query it, each from its own hub child process so
 * that its CPU time and RSS are its own:
 *
 *  ours   what the aggregator does (packages/orchestration): one persistent PSP link per
 *         Totebox; the operator's grant authorized once per link (the first query pipelines
 *         authorize(grant).read(cap, "position", params), later ones reuse the session:
 *         read(cap, "position", params), one call, one round trip); per query one batch-signed call
 *         capability per Totebox (one signature for all N); every answer's Arrow decoded and its
 *         receipt bound to the request and the link's key, its signature checked on each link's
 *         first answer and one in 32 after (receipt-sampler.ts; the console checks all);
 *         net_value summed per region (a rollup).
 *  floor  the same shape over persistent mutual-TLS links with length-prefixed frames and no
 *         protocol work: a random request as large as ours, a fixed answer as large as ours.
 *  floor-paced  the floor's hub again, whose Toteboxes first do the cryptography every Totebox of
 *         ours must do per answer (floor-pace.ts): the bare transport under the arrival pattern
 *         that work imposes on these shared cores, for the `bound` rows. The goal is judged
 *         against the floor.
 *  usual  HTTPS keep-alive (one socket per Totebox), a JSON body and a JWT signed per request per
 *         Totebox (jose, EdDSA) with claims equivalent to our capability, JSON answers.
 *
 * Every comparison is measured in the same run and reported as a ratio; goals are printed as met
 * or not met, never asserted. The contenders' hubs are held side by side and take their measured
 * queries in turns (HubRun), so that a drift of the host's pace touches every contender alike. Hub drivers are one `HubContender` each (HUB_CONTENDERS), so another
 * contender (the real aggregator) plugs into the same fleet and measurement loop.
 *
 * Environment: BENCH_FANOUT_SIZES ("200" for a quick run), BENCH_FANOUT_QUERIES (default 30),
 * BENCH_FANOUT_WARMUP (default 3), BENCH_FANOUT_CONTENDERS (default
 * "ours,floor,floor-paced,usual,aggregator";
 * also ours-fresh, ours-everysig, ours-noreceipt, and aggregator-b: the aggregator with
 * BENCH_HUB_B_NODE_FLAGS added, for an A/B of hub flags within one run, and run from the checkout
 * at BENCH_HUB_B_TREE if set, for an A/B of code), BENCH_SEED (default 1),
 * BENCH_CPU_PROF_DIR (a V8 CPU profile of every hub and fleet worker process, written there on
 * exit), BENCH_PIN_HUB=1 (each hub alone on core 0, the fleet on the others),
 * BENCH_HUB_NODE_FLAGS (V8 flags for every hub alike; with --perf-basic-prof, `perf record -e
 * cpu-clock -p <hub pid>` gives an on-CPU profile that preemption does not smear). The `bound`
 * rows (machine-bound.ts) say what this machine allows at all.
 */

import { type ChildProcess, spawnSync } from "node:child_process";
import { createHash, type KeyObject, randomBytes, randomInt, webcrypto } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import https from "node:https";
import { availableParallelism, loadavg, cpus as machineCpus } from "node:os";
import { resolve as resolvePath } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import tls from "node:tls";
import { fileURLToPath, pathToFileURL } from "node:url";
import { DEFAULT_ORCH_LIMITS, ReceiptSampler } from "@os-orchestration/orchestration";
import {
  type CallInput,
  checkReceipt,
  connectPsp,
  DIRECT_READ_METHOD,
  decodeDirectReadReply,
  decodeResult,
  directReadPayload,
  encodeDirectReadBody,
  encodeResult,
  type Identity,
  identityFromPem,
  issueCallCapabilityBatch,
  issueGrant,
  keyIdOfRaw,
  openCommander,
  type PspLink,
  publicKeyFromRaw,
  type ReplySink,
  rawEd25519PublicKey,
  releaseStub,
  requestHash,
  systemClock,
} from "@os-orchestration/psp";
import type { ReadAnswer, ToteboxRemote, ToteboxSessionRemote } from "@os-orchestration/totebox";
import { SignJWT } from "jose";
import { type CombineCost, measureCombineCostInChild } from "./combine-cost.ts";
import { envInt, envSizes } from "./env.ts";
import { FLOOR_PLAIN, pacedDepthFor, pacedMarker } from "./floor-pace.ts";
import { aggregatorContender } from "./hub-aggregator.ts";
import { TurnLoopDelay } from "./loop-delay.ts";
import { type CryptoCosts, fanoutLowerBound, measureCryptoCosts } from "./machine-bound.ts";
import { type PairedRatio, pairedRatio } from "./paired-ratio.ts";
import { type BenchRow, fmt, percentile } from "./report.ts";
import { endChild, forkTs, nextMessage, type SimFleet, startSimFleet } from "./sim-fleet.ts";
import {
  BenchError,
  benchIdentity,
  FloorFrameCounter,
  HTTPS_HEALTH_PATH,
  HTTPS_READ_PATH,
  mapLimit,
  NET_VALUE_COLUMN,
  POSITION_COLUMNS,
  REGIONS,
  simExpectedRollup,
  simPosition,
} from "./sim-fleet-worker.ts";

const AS_OF = "2026-10-31";
const TENANT = "bench";
const OPERATOR_ID = "bench-operator";
/** One query may take at most this long before the Toteboxes still missing count as timeouts. */
const QUERY_DEADLINE_MS = 120_000;
/** Concurrent connection attempts while a hub opens its links (bounds the handshake storm). */
const CONNECT_CONCURRENCY = 128;
const MAX_HTTP_ANSWER_BYTES = 64 * 1024;
/**
 * The hub's own link limits (the Toteboxes keep PSP's defaults). With the defaults (ping every
 * 15 s, and only on a link quiet for 15 s; idle cut at 45 s) a link tolerates only ~15-30 s of
 * answer latency: a call in flight does not count as activity. 10,000 simulated Toteboxes on two
 * shared cores answer a fan-out in 10-20 s, and at 10,000 ~70% of links died of
 * PSP_ERR_IDLE_TIMEOUT on the hub's side (measured). Pinging more often and waiting longer is the
 * aggregator's call to make, so the hub makes it here; links lost are still counted and printed.
 * (The other half of that lesson is SEND_SLICE: a blocked hub loop sends no pings either.)
 */
// Releases wait 10 s for the next call, as on the aggregator's own Totebox links (pool.ts).
const HUB_LINK_LIMITS = { pingIntervalMs: 10_000, idleTimeoutMs: 120_000, releaseDelayMs: 10_000 } as const;
/** Calls started per event-loop turn during a fan-out. */
const SEND_SLICE = 256;

// ---------------------------------------------------------------------------------------------
// What a hub is given, and what it measures

/** One Totebox as every contender sees it (addresses of all three servers, pins, key, tags). */
export interface HubTarget {
  id: string;
  tags: Record<string, string>;
  publicKeyRaw: Uint8Array;
  psp: { host: string; port: number; fingerprint: string };
  floor: { host: string; port: number; fingerprint: string };
  https: { host: string; port: number; fingerprint: string; certPem: string };
}

export interface HubContext {
  targets: readonly HubTarget[];
  aggregator: Identity;
  operator: Identity;
  asOf: string;
  /** Sum of net_value per region every correct query must produce. */
  expectedRollup: ReadonlyMap<string, bigint>;
  /** Floor frame sizes (whole frames, header included), measured on ours. */
  floor: { requestBytes: number; answerBytes: number };
  /**
   * Places a helper process of the hub (the aggregator's console) outside the hub's CPU: with
   * BENCH_PIN_HUB, on the fleet's cores, not the hub's core it inherited.
   */
  placeHelper(pid: number | undefined): void;
  /** Counts unhandled rejections a helper process reported, with the hub's own. */
  countUnhandled(n: number): void;
}

export interface QueryOutcome {
  answered: number;
  /** Failures by stable code (timeouts included). */
  errors: Map<string, number>;
  /** Sum of net_value per region; absent for a contender that carries no data (the floor). */
  rollup?: Map<string, bigint>;
}

/** A hub driver. One instance holds one persistent link per Totebox between connect and close. */
export interface HubContender {
  readonly name: string;
  connect(): Promise<void>;
  query(): Promise<QueryOutcome>;
  /** Application bytes sent and received so far over all links (before TLS). */
  traffic?(): { bytesOut: number; bytesIn: number; framesOut?: number; framesIn?: number };
  /** Time spent in named hub-side steps so far, ms (e.g. receipt checks). */
  steps?(): Record<string, number>;
  /** Links that closed while held, with when (performance.now()) and the close code. */
  lostLinks?(): ReadonlyArray<{ atMs: number; code: string }>;
  close(): Promise<void>;
}

export type HubContenderFactory = (ctx: HubContext) => HubContender | Promise<HubContender>;

export interface HubMeasurement {
  contender: string;
  n: number;
  warmup: number;
  queries: number;
  /** Per measured query, ms, sorted ascending. */
  latencyMs: number[];
  /**
   * Hub user + system CPU over the measured queries / (queries × N), µs: from the first measured
   * query to the last, the waits between its turns included.
   */
  cpuUsPerToteboxQuery: number;
  /** The same within its own turns only (measureHub: the truth lies between the two). */
  cpuInTurnsUsPerToteboxQuery: number;
  /**
   * Hub CPU per measured query, µs for all N Toteboxes: from the release of its turn to the
   * release of its next (the last to the end of its turn). Sums to the whole figure; pairs with
   * the other contenders' query of the same index for the ratio's interval (paired-ratio.ts).
   */
  cpuByQueryUs: number[];
  rssBeforeBytes: number;
  rssAfterConnectBytes: number;
  /** (RSS after connecting all − RSS before) / N, KB. */
  rssPerLinkKB: number;
  /**
   * (Highest RSS read just after a measured query − RSS before) / N, KB: the held links plus what
   * the queries keep and what the collector has not yet freed (no collection forced), for the
   * memory a hub's heap settings trade against CPU. Read between queries, not within one: a true
   * peak may be higher.
   */
  rssUnderQueriesPerLinkKB: number;
  connectMs: number;
  /** Application bytes per Totebox per measured query (whole frames / requests). */
  bytesOutPerTotebox: number;
  bytesInPerTotebox: number;
  /** PSP frames per Totebox per measured query (0 for contenders without frames). */
  framesOutPerTotebox: number;
  framesInPerTotebox: number;
  answered: number;
  errors: Record<string, number>;
  rollupMismatches: number;
  /** ms per query spent in each named hub step (over measured queries). */
  stepsMsPerQuery: Record<string, number>;
  /** CPU µs per Totebox per query by thread name ("main", "V8 DefaultWorke", ...), Linux only. */
  cpuUsByThread?: Record<string, number>;
  unhandledRejections: number;
  /** Links lost while held, per phase, and by close code. */
  linksLost: { connect: number; warmup: number; measure: number; codes: Record<string, number> };
  /** Hub event-loop delay, ms: worst while connecting, worst and p99 while measuring. */
  loopDelayMs: { connectMax: number; measureMax: number; measureP99: number };
}

function countError(errors: Map<string, number>, e: unknown): void {
  const c = (e as { code?: unknown })?.code;
  const code = typeof c === "string" && /^[A-Za-z0-9_]{2,64}$/.test(c) ? c : "ERR_UNKNOWN";
  errors.set(code, (errors.get(code) ?? 0) + 1);
}

/**
 * Runs `task(i)` for every Totebox under one query deadline. Tasks that have not settled by then
 * count as BENCH_ERR_TIMEOUT; a late settlement is ignored (the outcome is already reported).
 */
async function fanOut(
  n: number,
  task: (i: number) => Promise<void>,
  errors: Map<string, number>,
): Promise<number> {
  let settled = 0;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  const started: Promise<void>[] = [];
  const all = (async () => {
    for (let i = 0; i < n; i++) {
      // Starting a call is synchronous work (RPC, CBOR, TLS); 10,000 in one go blocked the hub's
      // event loop for 26 s (measured), starving link keep-alives. Yield between slices.
      if (i > 0 && i % SEND_SLICE === 0) await new Promise<void>((r) => setImmediate(r));
      started.push(
        task(i).then(
          () => {
            if (!closed) settled++;
          },
          (e: unknown) => {
            if (!closed) {
              settled++;
              countError(errors, e);
            }
          },
        ),
      );
    }
    await Promise.all(started);
  })();
  const deadline = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, QUERY_DEADLINE_MS);
  });
  await Promise.race([all, deadline]);
  clearTimeout(timer);
  closed = true;
  const missing = n - settled;
  if (missing > 0) errors.set("BENCH_ERR_TIMEOUT", (errors.get("BENCH_ERR_TIMEOUT") ?? 0) + missing);
  return settled;
}

function addTo(rollup: Map<string, bigint>, tags: Record<string, string>, v: bigint): void {
  const region = tags.region ?? "";
  rollup.set(region, (rollup.get(region) ?? 0n) + v);
}

function sameRollup(a: ReadonlyMap<string, bigint>, b: ReadonlyMap<string, bigint>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// ours (direct)

/**
 * How "ours" runs. The default is the aggregator's way; the variants (opt-in through
 * BENCH_FANOUT_CONTENDERS) change one piece of per-query work, to show what it costs:
 * - ours-fresh (holdSession false): authorize(grant) again on every query, every link;
 * - ours-everysig (checkEverySignature): every receipt's Ed25519 signature checked at the hub;
 * - ours-noreceipt (verifyReceipts false): receipts forwarded with no check at all;
 * - ours-capnweb (directReads false): every read a capnweb call on the held session, as before
 *   direct reads (psp direct-read.ts).
 */
interface OursVariant {
  name: string;
  holdSession: boolean;
  /**
   * Once a link's session has answered a capnweb read, read by direct requests naming it, as the
   * aggregator does (fanout.ts). Default true; only with holdSession.
   */
  directReads?: boolean;
  verifyReceipts: boolean;
  /** Check every receipt's signature at the hub, not the aggregator's sample. */
  checkEverySignature?: boolean;
}

function oursDirect(
  ctx: HubContext,
  variant: OursVariant = { name: "ours", holdSession: true, verifyReceipts: true },
): HubContender {
  const targets = ctx.targets;
  const n = targets.length;
  const agg = ctx.aggregator;
  const params = { as_of: ctx.asOf };
  const links: PspLink[] = [];
  const mains: ToteboxRemote[] = [];
  // Totebox keys made once: verifying with a KeyObject is what keeps receipts cheap.
  const keys: KeyObject[] = targets.map((t) => publicKeyFromRaw(t.publicKeyRaw));
  const ids = targets.map((t) => t.id);
  let grant: Uint8Array | undefined;
  const steps = { "capability batch signing": 0, "receipt verify + Arrow decode": 0 };
  const lost: Array<{ atMs: number; code: string }> = [];
  let closing = false;
  const sessions: ToteboxSessionRemote[] = [];
  // Direct reads (as fanout.ts): per link, whether its held session has answered once.
  const direct = variant.holdSession && variant.directReads !== false;
  const authorized: boolean[] = new Array(n).fill(false);
  let directBody: Uint8Array | undefined;
  const sampler = new ReceiptSampler({
    every: DEFAULT_ORCH_LIMITS.receiptSignatureEvery,
    random: () => randomInt(0, 2 ** 31) / 2 ** 31,
  });

  const checkAnswer = (
    ans: unknown,
    i: number,
    cti: Uint8Array,
    reqHash: Uint8Array,
    direct: boolean,
  ): bigint => {
    const a = ans as Partial<ReadAnswer> | null;
    if (
      !a ||
      typeof a !== "object" ||
      // A direct reply is the Arrow stream and the receipt alone: the receipt binds the rest.
      (!direct && (a.totebox !== ids[i] || a.view !== "position")) ||
      !(a.arrow instanceof Uint8Array) ||
      !(a.receipt instanceof Uint8Array)
    ) {
      throw new BenchError("BENCH_ERR_HUB", "answer does not have the ReadAnswer shape");
    }
    if (variant.verifyReceipts) {
      // As the aggregator does (packages/orchestration/src/receipt-sampler.ts): every receipt's
      // binding to this request and this link's key; its signature on the link's first answer
      // and on one in RECEIPT_SIGNATURE_EVERY at random after that.
      checkReceipt({
        token: a.receipt,
        subjectPublicKey: keys[i]!,
        expect: { arrowBytes: a.arrow, capabilityId: cti, requestHash: reqHash, subjectId: ids[i]! },
        checkSignature: variant.checkEverySignature || sampler.shouldCheck(links[i]!),
      });
    }
    const r = decodeResult(a.arrow, POSITION_COLUMNS);
    // As the aggregator's combine reads an answer: the one column it sums, straight from the
    // received bytes (a number for a safe integer, a bigint beyond 2^53).
    const cell: unknown = r.rowCount === 1 ? r.column(NET_VALUE_COLUMN)[0] : undefined;
    const v = typeof cell === "number" && Number.isSafeInteger(cell) ? BigInt(cell) : cell;
    if (typeof v !== "bigint") throw new BenchError("BENCH_ERR_HUB", "answer has no net_value row");
    return v;
  };

  return {
    name: variant.name,
    async connect() {
      // One grant for the whole session (the operator's console would sign it), reaching the
      // Toteboxes by tag: a grant lists at most 256 ids, and a fleet is addressed by tags anyway.
      grant = issueGrant({
        operator: OPERATOR_ID,
        aggregatorId: agg.fingerprint,
        aggregatorKey: agg.publicKey,
        tenant: TENANT,
        toteboxSelectors: REGIONS.map((r) => `region=${r}`),
        views: ["position"],
        actions: ["read"],
        lifetimeSeconds: 6 * 3600,
        signer: ctx.operator.privateKey,
        clock: systemClock,
      });
      const opened = await mapLimit(targets, CONNECT_CONCURRENCY, async (t) => {
        const l = await connectPsp({
          identity: agg,
          role: "commander",
          host: t.psp.host,
          port: t.psp.port,
          expect: t.psp.fingerprint,
          limits: HUB_LINK_LIMITS,
        });
        l.once("close", (e) => {
          if (!closing) lost.push({ atMs: performance.now(), code: e?.code ?? "PSP_LINK_CLOSED_CLEANLY" });
        });
        return l;
      });
      for (const l of opened) {
        links.push(l);
        const main = openCommander<ToteboxRemote>(l);
        mains.push(main);
        // Pipelined like everything else: the session resolves with the first query.
        if (variant.holdSession) sessions.push(main.authorize(grant));
      }
      directBody = encodeDirectReadBody({
        grantHash: createHash("sha256").update(grant).digest(),
        view: "position",
        params,
        row: null,
      });
    },
    async query() {
      const g = grant!;
      const errors = new Map<string, number>();
      const rollup = new Map<string, bigint>();
      // Steps are timed by wall clock around synchronous code on the hub's main thread. That is
      // an upper bound on their CPU, not a measure of it: with the fleet on the same cores the hub
      // is preempted inside a step, and a GC pause that lands there counts too (the receipt check
      // plus Arrow decode reads ~95-125 µs per answer here, ~17 µs warmed in isolation). The rows
      // say so. (process.cpuUsage is no better: it also charges the GC helper threads.)
      const t0 = performance.now();
      const ctis = randomBytes(16 * n);
      const ctiOf = (i: number) => ctis.subarray(16 * i, 16 * i + 16);
      const reqHash = requestHash({ view: "position", params });
      steps["capability batch signing"] += performance.now() - t0;
      // As the aggregator does (fanout.ts): a Totebox settles once, its outcome counted then; one
      // deadline for the query, after which a late settlement is ignored.
      let settled = 0;
      let answered = 0;
      let closed = false;
      let finish!: () => void;
      const done = new Promise<void>((r) => {
        finish = r;
      });
      const settle = () => {
        if (!closed && ++settled === n) finish();
      };
      const failed = (e: unknown) => {
        if (closed) return;
        countError(errors, e);
        settle();
      };
      const check = (ans: unknown, i: number, direct: boolean) => {
        const s0 = performance.now();
        const v = checkAnswer(ans, i, ctiOf(i), reqHash, direct);
        steps["receipt verify + Arrow decode"] += performance.now() - s0;
        addTo(rollup, targets[i]!.tags, v);
        answered++;
      };
      // Direct reads answer here, as the aggregator's do (fanout.ts #onDirect): one sink for the
      // query, tagged with the Totebox's index, so a read in flight holds no promise of its own.
      const sink: ReplySink = {
        reply(i, payload) {
          if (closed) return;
          try {
            check(decodeDirectReadReply(payload), i, true);
            settle();
          } catch (e) {
            failed(e);
          }
        },
        fail: (_i, e) => failed(e),
      };
      // A Totebox whose link has not answered a capnweb read yet (the first query), or every one
      // in the variants without direct reads: the session's read(capability, view, params).
      const viaCapnweb = async (i: number, cap: Uint8Array) => {
        const session = variant.holdSession ? sessions[i]! : mains[i]!.authorize(g);
        try {
          const ans: unknown = await session.read(cap, "position", params);
          if (direct) authorized[i] = true;
          if (!closed) check(ans, i, false);
        } finally {
          // A fresh session is an import the Totebox counts as a call in flight: release it.
          if (!variant.holdSession) releaseStub(session);
        }
      };
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, QUERY_DEADLINE_MS);
      });
      for (let from = 0; from < n; from += SEND_SLICE) {
        // Starting a call is synchronous work (CBOR, signing, TLS); yield between slices, as
        // fanOut() does for the other contenders and the aggregator per DISPATCH_SLICE.
        if (from > 0) await new Promise<void>((r) => setImmediate(r));
        const to = Math.min(n, from + SEND_SLICE);
        // As the aggregator does (fanout.ts): one Ed25519 signature per slice, signed as the slice
        // leaves; each capability still names one Totebox.
        const s0 = performance.now();
        const inputs: CallInput[] = new Array(to - from);
        for (let i = from; i < to; i++) {
          inputs[i - from] = {
            grant: g,
            totebox: ids[i]!,
            view: "position",
            action: "read",
            clock: systemClock,
            cti: ctiOf(i),
          };
        }
        let caps: Uint8Array[];
        try {
          caps = issueCallCapabilityBatch(inputs, agg.privateKey);
        } catch (e) {
          // As the aggregator: the rest are denied with the signing error.
          for (let i = from; i < n; i++) failed(e);
          break;
        }
        steps["capability batch signing"] += performance.now() - s0;
        for (let i = from; i < to; i++) {
          const cap = caps[i - from]!;
          if (direct && authorized[i]) {
            // One frame out, one round trip, the reply to the sink.
            try {
              links[i]!.requestWith(DIRECT_READ_METHOD, directReadPayload(cap, directBody!), sink, i);
            } catch (e) {
              failed(e);
            }
          } else viaCapnweb(i, cap).then(settle, failed);
        }
      }
      await Promise.race([done, deadline]);
      clearTimeout(timer);
      closed = true;
      if (settled < n) errors.set("BENCH_ERR_TIMEOUT", (errors.get("BENCH_ERR_TIMEOUT") ?? 0) + n - settled);
      return { answered, errors, rollup };
    },
    traffic() {
      let bytesOut = 0;
      let bytesIn = 0;
      let framesOut = 0;
      let framesIn = 0;
      for (const l of links) {
        bytesOut += l.stats.bytesOut;
        bytesIn += l.stats.bytesIn;
        framesOut += l.stats.framesOut;
        framesIn += l.stats.framesIn;
      }
      return { bytesOut, bytesIn, framesOut, framesIn };
    },
    steps: () => ({ ...steps }),
    lostLinks: () => lost,
    async close() {
      closing = true;
      for (const s of sessions) releaseStub(s);
      for (const l of links) l.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// floor

function pinned(socket: tls.TLSSocket, fingerprint: string): boolean {
  const cert = socket.getPeerX509Certificate();
  return !!cert && cert.fingerprint256.replace(/:/g, "").toLowerCase() === fingerprint;
}

/**
 * The floor; `paced`, the paced floor (floor-pace.ts): the same hub, whose every request asks its
 * Totebox for the cryptography a Totebox of ours must do before answering, with an inclusion path
 * of ⌊log2 N⌋ hashes (one batch for the whole fan-out, as the hub's bound takes it).
 */
function floorTls(ctx: HubContext, paced = false): HubContender {
  const targets = ctx.targets;
  const n = targets.length;
  const marker = paced ? pacedMarker(pacedDepthFor(n)) : FLOOR_PLAIN;
  // One client context per identity, as PSP does (building one costs ~1 ms).
  const secureContext = tls.createSecureContext({
    key: ctx.aggregator.keyPem,
    cert: ctx.aggregator.certPem,
    minVersion: "TLSv1.3",
    maxVersion: "TLSv1.3",
  });
  const sockets: tls.TLSSocket[] = [];
  const reqPayload = Math.max(0, ctx.floor.requestBytes - 4);
  if (paced && reqPayload === 0) {
    throw new BenchError("BENCH_ERR_ARGS", "a paced floor request needs a payload to carry its marker");
  }
  let onAnswer: () => void = () => {};
  let bytesOut = 0;
  let bytesIn = 0;

  const open = (t: HubTarget) =>
    new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({
        host: t.floor.host,
        port: t.floor.port,
        secureContext,
        rejectUnauthorized: false,
        minVersion: "TLSv1.3",
        maxVersion: "TLSv1.3",
      });
      s.setNoDelay(true);
      s.once("error", reject);
      s.once("secureConnect", () => {
        if (!pinned(s, t.floor.fingerprint)) {
          s.destroy();
          reject(new BenchError("BENCH_ERR_HUB", "floor server does not match its pin"));
          return;
        }
        s.off("error", reject);
        const counter = new FloorFrameCounter();
        s.on("data", (chunk: Buffer) => {
          bytesIn += chunk.length;
          let k: number;
          try {
            k = counter.push(chunk);
          } catch {
            s.destroy();
            return;
          }
          for (let j = 0; j < k; j++) onAnswer();
        });
        s.on("error", () => s.destroy());
        resolve(s);
      });
    });

  return {
    name: paced ? "floor-paced" : "floor",
    async connect() {
      sockets.push(...(await mapLimit(targets, CONNECT_CONCURRENCY, open)));
    },
    async query() {
      const errors = new Map<string, number>();
      const rnd = randomBytes(n * reqPayload);
      let answered = 0;
      const done = new Promise<void>((resolve) => {
        onAnswer = () => {
          if (++answered === n) resolve();
        };
      });
      for (let i = 0; i < n; i++) {
        // Same slicing as the other contenders' fan-out.
        if (i > 0 && i % SEND_SLICE === 0) await new Promise<void>((r) => setImmediate(r));
        const frame = Buffer.allocUnsafe(4 + reqPayload);
        frame.writeUInt32BE(reqPayload, 0);
        rnd.copy(frame, 4, i * reqPayload, (i + 1) * reqPayload);
        if (reqPayload > 0) frame[4] = marker;
        sockets[i]!.write(frame);
        bytesOut += frame.length;
      }
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([done, new Promise((r) => (timer = setTimeout(r, QUERY_DEADLINE_MS)))]);
      clearTimeout(timer);
      if (answered < n) errors.set("BENCH_ERR_TIMEOUT", n - answered);
      onAnswer = () => {};
      return { answered, errors };
    },
    traffic: () => ({ bytesOut, bytesIn }),
    async close() {
      for (const s of sockets) s.destroy();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// usual way: HTTPS keep-alive + JSON + a JWT per request per Totebox

function usualHttps(ctx: HubContext): HubContender {
  const targets = ctx.targets;
  const n = targets.length;
  const aggKeyId = keyIdOfRaw(rawEd25519PublicKey(ctx.aggregator.publicKey));
  // maxSockets is per host:port, and every Totebox is its own host: one keep-alive socket each.
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1, scheduling: "lifo" });
  let jwtKey: webcrypto.CryptoKey | undefined;
  const body = JSON.stringify({ as_of: ctx.asOf });
  const bodyLength = Buffer.byteLength(body);
  let bytesOut = 0;
  let bytesIn = 0;

  const request = (t: HubTarget, method: "GET" | "POST", path: string, token?: string) =>
    new Promise<unknown>((resolve, reject) => {
      const headers: Record<string, string | number> = {};
      if (token !== undefined) {
        headers.authorization = `Bearer ${token}`;
        headers["content-type"] = "application/json";
        headers["content-length"] = bodyLength;
      }
      const req = https.request(
        {
          agent,
          host: t.https.host,
          port: t.https.port,
          method,
          path,
          headers,
          // The Totebox's own certificate is the only CA; the pin replaces the host-name check.
          ca: t.https.certPem,
          checkServerIdentity: (_host, cert) =>
            cert.fingerprint256.replace(/:/g, "").toLowerCase() === t.https.fingerprint
              ? undefined
              : new BenchError("BENCH_ERR_HUB", "HTTPS server does not match its pin"),
          minVersion: "TLSv1.3",
        },
        (res: IncomingMessage) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on("data", (c: Buffer) => {
            size += c.length;
            if (size > MAX_HTTP_ANSWER_BYTES) {
              res.destroy(new BenchError("BENCH_ERR_HUB", "HTTP answer too large"));
              return;
            }
            chunks.push(c);
          });
          res.on("error", reject);
          res.on("end", () => {
            bytesIn += size;
            if (res.statusCode !== 200) {
              reject(new BenchError("BENCH_ERR_HUB", `HTTP status ${res.statusCode}`));
              return;
            }
            try {
              resolve(JSON.parse(Buffer.concat(chunks, size).toString("utf8")));
            } catch (e) {
              reject(e);
            }
          });
        },
      );
      req.on("error", reject);
      if (token !== undefined) {
        bytesOut += bodyLength + token.length;
        req.end(body);
      } else req.end();
    });

  return {
    name: "usual",
    async connect() {
      const der = ctx.aggregator.privateKey.export({ format: "der", type: "pkcs8" });
      jwtKey = await webcrypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
      // Opens the one keep-alive socket per Totebox.
      await mapLimit(targets, CONNECT_CONCURRENCY, (t) => request(t, "GET", HTTPS_HEALTH_PATH));
    },
    async query() {
      const key = jwtKey!;
      const errors = new Map<string, number>();
      const rollup = new Map<string, bigint>();
      const jtis = randomBytes(16 * n).toString("hex");
      const now = Math.floor(Date.now() / 1000);
      let answered = 0;
      await fanOut(
        n,
        async (i) => {
          const t = targets[i]!;
          const token = await new SignJWT({ view: "position", action: "read", tenant: TENANT })
            .setProtectedHeader({ alg: "EdDSA" })
            .setIssuer(aggKeyId)
            .setSubject(OPERATOR_ID)
            .setAudience(t.id)
            .setIssuedAt(now)
            .setNotBefore(now)
            .setExpirationTime(now + 60)
            .setJti(jtis.slice(32 * i, 32 * i + 32))
            .sign(key);
          const ans = (await request(t, "POST", HTTPS_READ_PATH, token)) as {
            totebox?: unknown;
            rows?: unknown;
          } | null;
          const row =
            Array.isArray(ans?.rows) && ans.rows.length === 1 ? (ans.rows[0] as unknown) : undefined;
          const net = (row as { net_value?: unknown } | undefined)?.net_value;
          if (ans?.totebox !== t.id || typeof net !== "number" || !Number.isSafeInteger(net)) {
            throw new BenchError("BENCH_ERR_HUB", "HTTP answer does not have the expected shape");
          }
          addTo(rollup, t.tags, BigInt(net));
          answered++;
        },
        errors,
      );
      return { answered, errors, rollup };
    },
    traffic: () => ({ bytesOut, bytesIn }),
    async close() {
      agent.destroy();
    },
  };
}

/** The contenders by name. */
export const HUB_CONTENDERS: Record<string, HubContenderFactory> = {
  // The product: OrchestrationServer + a console asking for a portfolio-shaped viewport.
  aggregator: (ctx) => aggregatorContender(ctx),
  // The aggregator again, whose hub alone also gets BENCH_HUB_B_NODE_FLAGS: an A/B of Node or V8
  // settings within one run, in turns with the aggregator, with its own interval (rowsFor).
  "aggregator-b": (ctx) => aggregatorContender(ctx, "aggregator-b"),
  ours: (ctx) => oursDirect(ctx),
  "ours-fresh": (ctx) => oursDirect(ctx, { name: "ours-fresh", holdSession: false, verifyReceipts: true }),
  "ours-everysig": (ctx) =>
    oursDirect(ctx, {
      name: "ours-everysig",
      holdSession: true,
      verifyReceipts: true,
      checkEverySignature: true,
    }),
  "ours-noreceipt": (ctx) =>
    oursDirect(ctx, { name: "ours-noreceipt", holdSession: true, verifyReceipts: false }),
  "ours-capnweb": (ctx) =>
    oursDirect(ctx, { name: "ours-capnweb", holdSession: true, directReads: false, verifyReceipts: true }),
  floor: (ctx) => floorTls(ctx),
  "floor-paced": (ctx) => floorTls(ctx, true),
  usual: usualHttps,
};

// ---------------------------------------------------------------------------------------------
// The measurement loop (runs inside a hub child process)

/**
 * CPU time of this process by thread, from /proc (Linux; undefined elsewhere), in µs. The main
 * thread runs our code, TLS and the event loop; V8's helpers ("V8 DefaultWorke") mark and sweep
 * concurrently; libuv's pool does file and some crypto work. process.cpuUsage() counts them all.
 */
function threadCpuMicros(): Map<string, number> | undefined {
  try {
    const out = new Map<string, number>();
    for (const tid of readdirSync("/proc/self/task")) {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, "utf8");
      // pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
      const close = stat.lastIndexOf(")");
      const fields = stat.slice(close + 2).split(" ");
      const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14, 15)
      const name = tid === String(process.pid) ? "main" : stat.slice(stat.indexOf("(") + 1, close);
      out.set(name, (out.get(name) ?? 0) + (ticks * 1e6) / CLOCK_TICKS_PER_SECOND);
    }
    return out;
  } catch {
    return undefined;
  }
}

/** USER_HZ: 100 on every Linux build Node supports. */
const CLOCK_TICKS_PER_SECOND = 100;

function gcNow(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) {
    gc();
    gc();
  }
}

/** What a hub tells the parent at its barriers: its latest warm-up query's traffic per Totebox. */
export interface BarrierInfo {
  readonly bytesOutPerTotebox: number;
  readonly bytesInPerTotebox: number;
}

/**
 * Connects, warms up, then measures `queries` fan-outs. `barrier` is awaited right before the
 * measured queries ("start"), before each later one ("query 1", "query 2", …) and right after the
 * last ("end"): the parent holds each until it is this hub's turn, so that the contenders' queries
 * interleave, and samples the fleet's CPU around each turn.
 */
export async function measureHub(
  contender: HubContender,
  ctx: HubContext,
  opts: { warmup: number; queries: number; barrier?: (name: string, info?: BarrierInfo) => Promise<void> },
): Promise<HubMeasurement> {
  const n = ctx.targets.length;
  const progress = (s: string) => process.stderr.write(`\r  hub ${contender.name} N=${n}: ${s}`.padEnd(70));
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  gcNow();
  const rssBefore = process.memoryUsage.rss();
  let t = performance.now();
  const tConnect = t;
  progress("connecting");
  await contender.connect();
  const connectMs = performance.now() - t;
  const connectLoopMax = loop.max / 1e6;
  // Read once, here: off for the rest (it would wake this hub every 10 ms through the warm-ups and
  // the wait for the others to start, minutes at 10,000).
  loop.disable();
  gcNow();
  const rssAfter = process.memoryUsage.rss();

  let warm: BarrierInfo | undefined;
  for (let i = 0; i < opts.warmup; i++) {
    // Held before the last warm-up query until every contender has started, so that each warms
    // up again right before the measured turns: a hub started first would otherwise wait through
    // every later one's connecting (at 10,000, minutes: past an HTTPS keep-alive, for one).
    if (i === opts.warmup - 1) await opts.barrier?.("warm", warm);
    progress(`warm-up ${i + 1}/${opts.warmup}`);
    const before = contender.traffic?.();
    await contender.query();
    const after = contender.traffic?.();
    if (before && after) {
      warm = {
        bytesOutPerTotebox: (after.bytesOut - before.bytesOut) / n,
        bytesInPerTotebox: (after.bytesIn - before.bytesIn) / n,
      };
    }
  }
  const tWarm = performance.now();
  gcNow();
  // While measuring, only within our own turns (loop-delay.ts: the monitor above, disabled across
  // a wait, would record the wait).
  const turnLoop = new TurnLoopDelay(10);
  const errors = new Map<string, number>();
  let answered = 0;
  let mismatches = 0;
  const latency: number[] = [];
  await opts.barrier?.("start", warm);
  turnLoop.start();
  const traffic0 = contender.traffic?.() ?? { bytesOut: 0, bytesIn: 0 };
  const steps0 = contender.steps?.() ?? {};
  const cpu0 = process.cpuUsage();
  const threads0 = threadCpuMicros();
  let rssPeak = 0;
  // CPU within our own turns only (from our release to our next barrier): it misses what our
  // queries leave for later (the collector, DuckDB), as the whole figure may include what only
  // waiting causes (keep-alive pings on links idle past their interval). The truth lies between.
  let inTurns = 0;
  let turnCpu = cpu0;
  const cpuByQuery: number[] = [];
  let counted = 0; // µs of this hub's CPU since cpu0 already in cpuByQuery
  try {
    for (let q = 0; q < opts.queries; q++) {
      // Between two of our queries, the other contenders take their turns. Our CPU counts across
      // those waits too: whatever this process does then (its collector finishing what our last
      // query left, its links' keep-alives) is its own work.
      if (q > 0) {
        const u = process.cpuUsage(turnCpu);
        inTurns += u.user + u.system;
        // The loop-delay sampler wakes this process every 10 ms: off while others take their turns
        // (measured at 200 Toteboxes, the floor's idle hub spent ~4 ms a second on it).
        turnLoop.stop();
        await opts.barrier?.(`query ${q}`);
        turnLoop.start();
        turnCpu = process.cpuUsage();
        const used = turnCpu.user + turnCpu.system - (cpu0.user + cpu0.system);
        cpuByQuery.push(used - counted);
        counted = used;
      }
      progress(`query ${q + 1}/${opts.queries}${q > 0 ? ` (last ${fmt(latency[q - 1]!)} ms)` : ""}`);
      t = performance.now();
      const out = await contender.query();
      latency.push(performance.now() - t);
      rssPeak = Math.max(rssPeak, process.memoryUsage.rss());
      answered += out.answered;
      for (const [k, v] of out.errors) errors.set(k, (errors.get(k) ?? 0) + v);
      if (out.rollup && !sameRollup(out.rollup, ctx.expectedRollup)) mismatches++;
    }
  } finally {
    // On every path, an error included: no sampler timer left running.
    turnLoop.stop();
  }
  const cpu = process.cpuUsage(cpu0);
  const lastTurn = process.cpuUsage(turnCpu);
  inTurns += lastTurn.user + lastTurn.system;
  cpuByQuery.push(cpu.user + cpu.system - counted);
  const threads1 = threadCpuMicros();
  const tMeasure = performance.now();
  const steps1 = contender.steps?.() ?? {};
  const traffic1 = contender.traffic?.() ?? { bytesOut: 0, bytesIn: 0 };
  await opts.barrier?.("end");
  await contender.close();
  const per = opts.queries * n;
  const linksLost = { connect: 0, warmup: 0, measure: 0, codes: {} as Record<string, number> };
  for (const l of contender.lostLinks?.() ?? []) {
    if (l.atMs > tMeasure) continue;
    if (l.atMs <= tConnect + connectMs) linksLost.connect++;
    else if (l.atMs <= tWarm) linksLost.warmup++;
    else linksLost.measure++;
    linksLost.codes[l.code] = (linksLost.codes[l.code] ?? 0) + 1;
  }
  const stepsMsPerQuery: Record<string, number> = {};
  for (const k of Object.keys(steps1))
    stepsMsPerQuery[k] = ((steps1[k] ?? 0) - (steps0[k] ?? 0)) / opts.queries;
  return {
    contender: contender.name,
    n,
    warmup: opts.warmup,
    queries: opts.queries,
    latencyMs: latency.sort((a, b) => a - b),
    cpuUsPerToteboxQuery: (cpu.user + cpu.system) / per,
    cpuInTurnsUsPerToteboxQuery: inTurns / per,
    cpuByQueryUs: cpuByQuery,
    rssBeforeBytes: rssBefore,
    rssAfterConnectBytes: rssAfter,
    rssPerLinkKB: (rssAfter - rssBefore) / n / 1024,
    rssUnderQueriesPerLinkKB: (rssPeak - rssBefore) / n / 1024,
    connectMs,
    bytesOutPerTotebox: (traffic1.bytesOut - traffic0.bytesOut) / per,
    bytesInPerTotebox: (traffic1.bytesIn - traffic0.bytesIn) / per,
    framesOutPerTotebox: ((traffic1.framesOut ?? 0) - (traffic0.framesOut ?? 0)) / per,
    framesInPerTotebox: ((traffic1.framesIn ?? 0) - (traffic0.framesIn ?? 0)) / per,
    answered,
    errors: Object.fromEntries(errors),
    rollupMismatches: mismatches,
    stepsMsPerQuery,
    ...(threads0 && threads1
      ? {
          cpuUsByThread: Object.fromEntries(
            [...threads1].map(([name, us]) => [name, (us - (threads0.get(name) ?? 0)) / per]),
          ),
        }
      : {}),
    unhandledRejections: 0,
    linksLost,
    loopDelayMs: {
      connectMax: connectLoopMax,
      measureMax: turnLoop.maxMs,
      measureP99: turnLoop.percentileMs(99),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Hub child process: IPC protocol with the parent

interface HubRunRequest {
  type: "run";
  contender: string;
  targets: HubTarget[];
  aggregator: { keyPem: string; certPem: string };
  operator: { keyPem: string; certPem: string };
  asOf: string;
  expectedRollup: Record<string, string>;
  floor: { requestBytes: number; answerBytes: number };
  warmup: number;
  queries: number;
}

function parseHubRequest(m: unknown): HubRunRequest {
  const bad = () => new BenchError("BENCH_ERR_IPC", "malformed hub request");
  const r = m as Partial<HubRunRequest> | null;
  if (
    r?.type !== "run" ||
    typeof r.contender !== "string" ||
    !Object.hasOwn(HUB_CONTENDERS, r.contender) ||
    !Array.isArray(r.targets) ||
    r.targets.length === 0 ||
    !r.aggregator ||
    typeof r.aggregator.keyPem !== "string" ||
    typeof r.aggregator.certPem !== "string" ||
    !r.operator ||
    typeof r.operator.keyPem !== "string" ||
    typeof r.operator.certPem !== "string" ||
    typeof r.asOf !== "string" ||
    !r.expectedRollup ||
    !r.floor ||
    !Number.isSafeInteger(r.floor.requestBytes) ||
    !Number.isSafeInteger(r.floor.answerBytes) ||
    !Number.isSafeInteger(r.warmup) ||
    !Number.isSafeInteger(r.queries) ||
    (r.queries ?? 0) < 1
  ) {
    throw bad();
  }
  for (const t of r.targets) {
    if (
      !t ||
      typeof t.id !== "string" ||
      !(t.publicKeyRaw instanceof Uint8Array) ||
      typeof t.psp?.host !== "string" ||
      typeof t.floor?.host !== "string" ||
      typeof t.https?.certPem !== "string"
    ) {
      throw bad();
    }
  }
  return r as HubRunRequest;
}

async function hubMain(): Promise<void> {
  process.on("disconnect", () => process.exit(0));
  let unhandled = 0;
  // A link dropping mid-run can reject a pipelined promise nobody awaits; count it, keep going.
  process.on("unhandledRejection", () => {
    unhandled++;
  });
  const pendingBarriers = new Map<string, () => void>();
  process.on("message", (m: unknown) => {
    const b = m as { type?: unknown; name?: unknown } | null;
    if (b?.type === "barrier-ok" && typeof b.name === "string") pendingBarriers.get(b.name)?.();
    if (b?.type === "close") process.exit(0);
  });
  const req = await new Promise<HubRunRequest>((resolve, reject) => {
    process.once("message", (m: unknown) => {
      try {
        resolve(parseHubRequest(m));
      } catch (e) {
        reject(e);
      }
    });
  });
  const ctx: HubContext = {
    targets: req.targets,
    aggregator: identityFromPem("aggregator", req.aggregator.keyPem, req.aggregator.certPem),
    operator: identityFromPem("operator", req.operator.keyPem, req.operator.certPem),
    asOf: req.asOf,
    expectedRollup: new Map(Object.entries(req.expectedRollup).map(([k, v]) => [k, BigInt(v)])),
    floor: req.floor,
    placeHelper: (pid) => {
      if (PIN_HUB) pinTo([pid], `1-${machineCpus().length - 1}`);
    },
    countUnhandled: (n) => {
      unhandled += n;
    },
  };
  const contender = await HUB_CONTENDERS[req.contender]!(ctx);
  const barrier = (name: string, info?: BarrierInfo) =>
    new Promise<void>((resolve) => {
      pendingBarriers.set(name, resolve);
      process.send?.({ type: "barrier", name, ...(info ? { info } : {}) });
    });
  const m = await measureHub(contender, ctx, { warmup: req.warmup, queries: req.queries, barrier });
  m.unhandledRejections = unhandled;
  process.send?.({ type: "result", measurement: m });
}

// ---------------------------------------------------------------------------------------------
// The parent: fleet, hub children, rows

const FANOUT_FILE = fileURLToPath(import.meta.url);

/**
 * BENCH_PIN_HUB=1: the hub children on core 0 (held side by side, one measuring at a time), the
 * fleet's workers (and this parent) on the other cores, with `taskset`. Unpinned, the hub shares both cores with the whole fleet and its CPU
 * time per Totebox includes what that sharing costs it (cache refills after every switch), more so
 * for a contender whose fleet works harder: ours pays more of it than the floor. Pinned, each
 * hub's CPU time is what it would be on a machine of its own, as an aggregator runs; the fleet
 * then has one core fewer, so latencies rise for every contender alike.
 */
const PIN_HUB = process.env.BENCH_PIN_HUB === "1";
/** The machine's cores, read before any pinning (availableParallelism follows this process's affinity). */
const CORES = availableParallelism();

/** BENCH_HUB_NODE_FLAGS: more Node/V8 flags for every hub child alike (e.g. GC settings). */
const HUB_NODE_FLAGS = flagsFrom("BENCH_HUB_NODE_FLAGS");
/** BENCH_HUB_B_NODE_FLAGS: flags for the `aggregator-b` hub alone, after those above (an A/B). */
const HUB_B_NODE_FLAGS = flagsFrom("BENCH_HUB_B_NODE_FLAGS");
/**
 * BENCH_HUB_B_TREE: another checkout (its dependencies installed) whose `bench/fanout.ts` runs the
 * `aggregator-b` hub, with that checkout's packages: an A/B of two versions of the code, query by
 * query in one run, against the same fleet. The hub's messages are this file's, so the other
 * checkout must be close enough to speak them (a version of the same bench).
 */
const HUB_B_TREE = process.env.BENCH_HUB_B_TREE;
const HUB_B_FILE = HUB_B_TREE ? resolvePath(HUB_B_TREE, "bench", "fanout.ts") : FANOUT_FILE;

function flagsFrom(env: string): string[] {
  return (process.env[env] ?? "").split(/\s+/).filter((f) => f !== "");
}

/** Pins every thread of each process to `cpus` (taskset -a), or throws: a pinned run half-pinned would mislead. */
function pinTo(pids: readonly (number | undefined)[], cpus: string): void {
  for (const pid of pids) {
    // -a: every thread of the process (V8's and libuv's helpers included).
    // The machine's cores, not availableParallelism(): in a pinned hub that is its one core.
    const r =
      pid === undefined || machineCpus().length < 2
        ? undefined
        : spawnSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { stdio: "ignore" });
    if (r?.status !== 0) {
      throw new BenchError(
        "BENCH_ERR_ARGS",
        "BENCH_PIN_HUB=1 needs taskset (util-linux) and 2 or more cores",
      );
    }
  }
}

interface ContenderRun {
  m: HubMeasurement;
  /** Fleet (all workers) CPU per answered Totebox over the measured queries, µs. */
  fleetCpuUsPerAnswer: number;
  /** PSP links the simulated Toteboxes saw end with an error during this contender's turns (any hub's). */
  fleetLinksFailed: number;
  /** Floor requests the Toteboxes answered after the required work during its measured turns (floor-pace.ts). */
  fleetPacedAnswers: number;
}

/**
 * One contender's hub child, held for a whole size: it connects and warms up to its last warm-up
 * query (`start`), runs that query when every contender has started (`prime`), then its measured
 * queries one turn at a time (`turn`; measureHub's barriers), its turns interleaved with the
 * other contenders' (benchFanout). The fleet's CPU and failed links are sampled around each turn:
 * what the fleet does during a contender's turn is charged to it, including what the other held
 * hubs' links cost the fleet meanwhile (keep-alives, little) and what the turn before left.
 */
class HubRun {
  readonly contender: string;
  /** Traffic per Totebox of the hub's warm-up query before its last (none with < 2 warm-ups). */
  readonly warmTraffic: BarrierInfo | undefined;
  readonly #child: ChildProcess;
  readonly #fleet: SimFleet;
  /** The barrier the child is held at, and what it told us there. */
  #held: { name: string; info: BarrierInfo | undefined };
  #fleetCpu = 0;
  #linksFailed = 0;
  #floorPaced = 0;

  private constructor(
    contender: string,
    child: ChildProcess,
    fleet: SimFleet,
    held: { name: string; info: BarrierInfo | undefined },
  ) {
    this.contender = contender;
    this.#child = child;
    this.#fleet = fleet;
    this.#held = held;
    this.warmTraffic = held.info;
    // A send to a hub that died while held reports on 'error': counted in #alive(), never thrown
    // as an unhandled event.
    child.on("error", () => {});
  }

  /** Forks the hub and waits until it has connected and warmed up. */
  static async start(
    fleet: SimFleet,
    base: Omit<HubRunRequest, "type" | "contender">,
    contender: string,
  ): Promise<HubRun> {
    const child = forkTs(
      contender === "aggregator-b" ? HUB_B_FILE : FANOUT_FILE,
      ["--hub"],
      [
        "--expose-gc",
        "--max-old-space-size=4096",
        ...HUB_NODE_FLAGS,
        ...(contender === "aggregator-b" ? HUB_B_NODE_FLAGS : []),
      ],
    );
    try {
      if (PIN_HUB) pinTo([child.pid], "0");
      const ready = HubRun.#barrier(child, `hub ${contender} connecting`, 60 * 60_000);
      child.send({ type: "run", contender, ...base });
      return new HubRun(contender, child, fleet, await ready);
    } catch (e) {
      await endChild(child);
      throw e;
    }
  }

  /** Its last warm-up query, run now (when every contender has started): held at "start" after. */
  async prime(): Promise<void> {
    if (this.#held.name === "warm") await this.#advance("warm-up");
  }

  /** One measured query: released from its barrier, then held at the next. */
  async turn(): Promise<void> {
    this.#alive();
    const s0 = await this.#fleet.stats();
    await this.#advance("query");
    const s1 = await this.#fleet.stats();
    this.#fleetCpu += s1.cpuMicros - s0.cpuMicros;
    this.#linksFailed += s1.stats.linksFailed - s0.stats.linksFailed;
    this.#floorPaced += s1.stats.floorPaced - s0.stats.floorPaced;
  }

  /** Releases the hub from its last barrier and returns what it measured. */
  async finish(): Promise<ContenderRun> {
    if (this.#held.name !== "end") {
      throw new BenchError("BENCH_ERR_IPC", `hub ${this.contender} finished at ${this.#held.name}`);
    }
    this.#alive();
    const result = nextMessage(
      this.#child,
      (msg) => {
        const r = msg as { type?: unknown; measurement?: unknown } | null;
        return r?.type === "result" ? (r.measurement as HubMeasurement) : undefined;
      },
      10 * 60_000,
      `hub ${this.contender} result`,
    );
    this.#child.send({ type: "barrier-ok", name: "end" });
    const m = await result;
    return {
      m,
      fleetCpuUsPerAnswer: this.#fleetCpu / Math.max(1, m.answered),
      fleetLinksFailed: this.#linksFailed,
      fleetPacedAnswers: this.#floorPaced,
    };
  }

  end(): Promise<void> {
    return endChild(this.#child);
  }

  /** Releases the hub from the barrier it is held at, and waits until it is held at the next. */
  async #advance(what: string): Promise<void> {
    this.#alive();
    const next = HubRun.#barrier(this.#child, `hub ${this.contender} ${what}`, 30 * 60_000);
    this.#child.send({ type: "barrier-ok", name: this.#held.name });
    this.#held = await next;
  }

  /** Throws if the hub died while held: nothing would ever answer the next wait. */
  #alive(): void {
    const c = this.#child;
    if (c.exitCode !== null || c.signalCode !== null || !c.connected) {
      throw new BenchError(
        "BENCH_ERR_WORKER",
        `hub ${this.contender} is gone (exit ${c.exitCode}, signal ${c.signalCode})`,
      );
    }
  }

  static #barrier(
    child: ChildProcess,
    what: string,
    timeoutMs: number,
  ): Promise<{ name: string; info: BarrierInfo | undefined }> {
    return nextMessage(
      child,
      (msg) => {
        const b = msg as { type?: unknown; name?: unknown; info?: unknown } | null;
        if (b?.type !== "barrier" || typeof b.name !== "string") return undefined;
        const info = b.info as Partial<BarrierInfo> | undefined;
        return {
          name: b.name,
          info:
            typeof info?.bytesOutPerTotebox === "number" && typeof info.bytesInPerTotebox === "number"
              ? { bytesOutPerTotebox: info.bytesOutPerTotebox, bytesInPerTotebox: info.bytesInPerTotebox }
              : undefined,
        };
      },
      timeoutMs,
      what,
    );
  }
}

/**
 * A hub's CPU within its own turns only, against the floor's (measureHub): the whole figure may
 * include keep-alives that only the waits between turns cause (at 10,000 a round of turns outlasts
 * a link's ping interval); this one misses what a query leaves to run after its turn.
 */
function inTurnsRow(who: string, m: HubMeasurement, floor: HubMeasurement | undefined): BenchRow {
  return {
    section: "fanout",
    name: `${who}: of which within its own turns`,
    value: m.cpuInTurnsUsPerToteboxQuery,
    unit: "µs",
    ratio:
      floor === m
        ? "baseline"
        : floor
          ? `${(m.cpuInTurnsUsPerToteboxQuery / floor.cpuInTurnsUsPerToteboxQuery).toFixed(2)}× the floor's within its turns`
          : "no floor in this run",
  };
}

/** Where a hub's CPU went by thread: the main thread (our code, TLS, the loop) and the rest. */
function threadRows(who: string, m: HubMeasurement): BenchRow[] {
  const t = m.cpuUsByThread;
  if (!t) return [];
  const main = t.main ?? 0;
  const others = Object.entries(t)
    .filter(([k, v]) => k !== "main" && v >= 0.5)
    .sort((a, b) => b[1] - a[1]);
  return [
    {
      section: "fanout",
      name: `${who}: of which on the main thread`,
      value: main,
      unit: "µs",
      ratio: `others: ${others.map(([k, v]) => `${k.trim()} ${fmt(v)} µs`).join(", ") || "none"}`,
    },
  ];
}

function goal(met: boolean, text: string): string {
  return `${text}: ${met ? "met" : "NOT met"}`;
}

/**
 * How precisely this run measured the ratio of two hubs' CPU: the interval from their paired
 * queries (paired-ratio.ts), in blocks of whole rounds of turns (`hubs` contenders), or undefined
 * with too few queries to say.
 */
function cpuInterval(m: HubMeasurement, base: HubMeasurement, hubs: number): PairedRatio | undefined {
  try {
    return pairedRatio(m.cpuByQueryUs, base.cpuByQueryUs, { period: hubs });
  } catch {
    // pairedRatio's refusals (RangeError): fewer than MIN_PAIRS queries, or a round of turns
    // longer than half of them. No interval then; the figure stands.
    return undefined;
  }
}

function describeInterval(r: PairedRatio): string {
  return `${Math.round(r.confidence * 100)}% interval ${r.lo.toFixed(2)}-${r.hi.toFixed(2)}× over ${r.pairs} paired queries`;
}

/**
 * A hub's CPU against the floor's, the ratio of their totals (as every figure here), with how
 * precisely this run measured it (cpuInterval; another run may differ by more). The goal is judged
 * on the ratio; where the interval reaches across 2×, the verdict says it is within the run's spread.
 */
function cpuVsFloor(
  m: HubMeasurement,
  floor: HubMeasurement,
  hubs: number,
): Pick<BenchRow, "ratio" | "goal" | "interval"> {
  const point = m.cpuUsPerToteboxQuery / floor.cpuUsPerToteboxQuery;
  const met = point <= 2;
  const r = cpuInterval(m, floor, hubs);
  let doubt = "";
  if (r && met && r.hi > 2) doubt = ` (within this run's spread: up to ${r.hi.toFixed(2)}×)`;
  if (r && !met && r.lo <= 2) doubt = ` (within this run's spread: down to ${r.lo.toFixed(2)}×)`;
  return {
    ratio: `${point.toFixed(2)}× floor${r ? ` (${describeInterval(r)})` : ""}`,
    goal: `${goal(met, "goal ≤ 2× floor")}${doubt}`,
    ...(r ? { interval: intervalOf(r) } : {}),
  };
}

/**
 * A hub's CPU against another's, query by query, with how precisely this run measured the ratio
 * (cpuInterval): the aggregator-b A/B against the aggregator, and each contender against the
 * paced floor (floor-pace.ts), for reading where the CPU goes. `note` says what the row is for.
 */
function cpuAgainstRow(a: {
  who: string;
  m: HubMeasurement;
  base: HubMeasurement;
  baseName: string;
  hubs: number;
  note: string;
}): BenchRow {
  const r = cpuInterval(a.m, a.base, a.hubs);
  return {
    section: "fanout",
    name: `${a.who}: hub CPU against ${a.baseName}`,
    value: a.m.cpuUsPerToteboxQuery / a.base.cpuUsPerToteboxQuery,
    unit: "×",
    ratio: `${r ? `${describeInterval(r)}; ` : ""}${a.note}`,
    ...(r ? { interval: intervalOf(r) } : {}),
  };
}

/** A contender against the paced floor: for reading only, the goal is judged against the floor. */
function vsPacedRow(who: string, m: HubMeasurement, paced: HubMeasurement, hubs: number): BenchRow {
  return cpuAgainstRow({
    who,
    m,
    base: paced,
    baseName: "the paced floor's",
    hubs,
    note: "for reading only: the goal is judged against the floor",
  });
}

/**
 * Whether every answer of the paced floor's measured queries waited for the required work. At
 * least as many paced answers as answers: a request that timed out may still be answered (and
 * counted) after its query, so the count may exceed the answers, never fall short of them.
 */
function pacingHeld(paced: ContenderRun): boolean {
  return paced.fleetPacedAnswers >= paced.m.answered && paced.m.answered > 0;
}

/**
 * The paced floor's rows: the same bare transport as the floor, its answers spread out by the
 * cryptography every Totebox of ours must do first. Its fleet CPU per answer is set beside the
 * floor's plus that cryptography timed with the fleet idle, and the Toteboxes' own count of paced
 * answers beside its answers, so a reader sees the work was done.
 */
function pacedFloorRows(
  n: number,
  paced: ContenderRun,
  floor: ContenderRun | undefined,
  hubs: number,
  costs: CryptoCosts,
): BenchRow[] {
  const section = "fanout";
  const at = `N=${n.toLocaleString("en-US")}`;
  const m = paced.m;
  const p50 = percentile(m.latencyMs, 50);
  const r = floor ? cpuInterval(m, floor.m, hubs) : undefined;
  // machine-bound.ts's Totebox term for one batch over the fleet (B = N), as the requests ask.
  const required = fanoutLowerBound({
    n,
    cores: CORES,
    costs,
    floorHubUs: 0,
    floorFleetUs: 0,
    receiptSignatureEvery: DEFAULT_ORCH_LIMITS.receiptSignatureEvery,
  }).hub.toteboxCryptoUs;
  return [
    {
      section,
      name: `floor-paced ${at}: answers that waited for the required work`,
      value: m.answered === 0 ? 0 : paced.fleetPacedAnswers / m.answered,
      unit: "of answers",
      ratio: `${paced.fleetPacedAnswers.toLocaleString("en-US")} counted by the Toteboxes, ${m.answered.toLocaleString("en-US")} answered`,
      goal: pacingHeld(paced)
        ? "paced"
        : `NOT PACED: its rows below do not measure the paced floor${Object.keys(m.errors).length > 0 ? " (or its queries had errors: see its error row)" : ""}`,
    },
    {
      section,
      name: `floor-paced ${at}: latency p50`,
      value: p50,
      unit: "ms",
      ...(floor ? { ratio: `${(p50 / percentile(floor.m.latencyMs, 50)).toFixed(2)}× floor` } : {}),
    },
    {
      section,
      name: `floor-paced ${at}: hub CPU per Totebox per query`,
      value: m.cpuUsPerToteboxQuery,
      unit: "µs",
      ...(floor
        ? {
            ratio: `${(m.cpuUsPerToteboxQuery / floor.m.cpuUsPerToteboxQuery).toFixed(2)}× floor${r ? ` (${describeInterval(r)})` : ""}: the floor's hub, its answers at the pace of the Toteboxes' required work`,
          }
        : {}),
      ...(r ? { interval: intervalOf(r) } : {}),
    },
    inTurnsRow(`floor-paced ${at}`, m, floor?.m),
    ...threadRows(`floor-paced ${at}`, m),
    {
      section,
      name: `floor-paced ${at}: fleet CPU per answer (Toteboxes' side)`,
      value: paced.fleetCpuUsPerAnswer,
      unit: "µs",
      ratio: `${floor ? `the floor's ${fmt(floor.fleetCpuUsPerAnswer)} µs + ` : ""}${fmt(required)} µs of required cryptography (fleet idle; a path of ${pacedDepthFor(n)})`,
    },
  ];
}

function intervalOf(r: PairedRatio): NonNullable<BenchRow["interval"]> {
  return { ratio: r.ratio, lo: r.lo, hi: r.hi, confidence: r.confidence, pairs: r.pairs };
}

function rowsFor(
  n: number,
  runs: Map<string, ContenderRun>,
  load: [number, number],
  costs: CryptoCosts,
  combine: CombineCost | undefined,
): BenchRow[] {
  const section = "fanout";
  const rows: BenchRow[] = [
    {
      section,
      name: `N=${n.toLocaleString("en-US")}: machine load average (1 min) before / after`,
      value: load[0],
      unit: "runnable",
      ratio: PIN_HUB
        ? `${load[1].toFixed(2)} after; each hub alone on core 0, the fleet on the other ${CORES - 1}`
        : `${load[1].toFixed(2)} after; ${CORES} cores shared by each hub and the whole fleet`,
    },
  ];
  const ours = runs.get("ours");
  const floor = runs.get("floor");
  const paced = runs.get("floor-paced");
  const usual = runs.get("usual");
  const p50 = (r: ContenderRun) => percentile(r.m.latencyMs, 50);
  const p99 = (r: ContenderRun) => percentile(r.m.latencyMs, 99);
  const x = (a: number, b: number) => `${(a / b).toFixed(2)}×`;
  const at = `N=${n.toLocaleString("en-US")}`;
  for (const [name, r] of runs) {
    const errs = Object.entries(r.m.errors);
    const ll = r.m.linksLost;
    if (r.fleetLinksFailed > 0) {
      rows.push({
        section,
        name: `${name} ${at}: links the Toteboxes saw fail`,
        value: r.fleetLinksFailed,
        unit: "links",
      });
    }
    if (ll.connect + ll.warmup + ll.measure > 0) {
      rows.push({
        section,
        name: `${name} ${at}: links lost while held`,
        value: ll.connect + ll.warmup + ll.measure,
        unit: "links",
        ratio: `connect ${ll.connect}, warm-up ${ll.warmup}, measure ${ll.measure}; ${Object.entries(ll.codes)
          .map(([k, v]) => `${k}=${v}`)
          .join(" ")}`,
      });
    }
    rows.push({
      section,
      name: `${name} ${at}: hub event-loop delay, worst while connecting`,
      value: r.m.loopDelayMs.connectMax,
      unit: "ms",
      ratio: `measuring: worst ${fmt(r.m.loopDelayMs.measureMax)} ms, p99 ${fmt(r.m.loopDelayMs.measureP99)} ms`,
    });
    if (errs.length > 0 || r.m.rollupMismatches > 0 || r.m.unhandledRejections > 0) {
      rows.push({
        section,
        name: `${name} ${at}: failures`,
        value: errs.reduce((s, [, v]) => s + v, 0) + r.m.rollupMismatches,
        unit: "count",
        ratio: `${errs.map(([k, v]) => `${k}=${v}`).join(" ")} mismatched rollups=${r.m.rollupMismatches} unhandled=${r.m.unhandledRejections}`,
      });
    }
  }
  if (ours) {
    const m = ours.m;
    rows.push({
      section,
      name: `ours ${at}: latency p50`,
      value: p50(ours),
      unit: "ms",
      ...(floor ? { ratio: `${x(p50(ours), p50(floor))} floor` } : {}),
      goal:
        n >= 10_000 ? goal(p50(ours) < 1000, "goal < 1 s at 10,000") : `goal < 1 s at 10,000 (here ${at})`,
    });
    rows.push({
      section,
      name: `ours ${at}: latency p99`,
      value: p99(ours),
      unit: "ms",
      ...(floor ? { ratio: `${x(p99(ours), p99(floor))} floor` } : {}),
    });
    rows.push({
      section,
      name: `ours ${at}: hub CPU per Totebox per query`,
      value: m.cpuUsPerToteboxQuery,
      unit: "µs",
      ...(floor ? cpuVsFloor(m, floor.m, runs.size) : {}),
    });
    if (paced && pacingHeld(paced)) rows.push(vsPacedRow(`ours ${at}`, m, paced.m, runs.size));
    for (const [step, ms] of Object.entries(m.stepsMsPerQuery)) {
      rows.push({
        section,
        name: `ours ${at}: of which ${step} (wall time, at most)`,
        value: (ms * 1000) / n,
        unit: "µs",
        ratio: `≤ ${((ms * 1000) / n / m.cpuUsPerToteboxQuery).toFixed(2)} of hub CPU; includes preemption and GC pauses`,
      });
    }
    rows.push(inTurnsRow(`ours ${at}`, m, floor?.m), ...threadRows(`ours ${at}`, m));
    rows.push({
      section,
      name: `ours ${at}: hub RSS per held link`,
      value: m.rssPerLinkKB,
      unit: "KB",
      ...(floor ? { ratio: `${x(m.rssPerLinkKB, floor.m.rssPerLinkKB)} floor` } : {}),
      goal:
        n >= 10_000
          ? goal(m.rssPerLinkKB <= 100, "goal ≤ 100 KB at 10,000")
          : `${goal(m.rssPerLinkKB <= 100, "goal ≤ 100 KB")} (stated at 10,000)`,
    });
    rows.push({
      section,
      name: `ours ${at}: hub RSS per link after queries (highest)`,
      value: m.rssUnderQueriesPerLinkKB,
      unit: "KB",
    });
    rows.push({
      section,
      name: `ours ${at}: bytes per Totebox per query out / in`,
      value: m.bytesOutPerTotebox,
      unit: "B out",
      ratio: `${fmt(m.bytesInPerTotebox)} B in; frames ${fmt(m.framesOutPerTotebox)} out / ${fmt(m.framesInPerTotebox)} in`,
    });
    rows.push({
      section,
      name: `ours ${at}: fleet CPU per answer (Toteboxes' side)`,
      value: ours.fleetCpuUsPerAnswer,
      unit: "µs",
      ...(floor ? { ratio: `${x(ours.fleetCpuUsPerAnswer, floor.fleetCpuUsPerAnswer)} floor` } : {}),
    });
    rows.push({
      section,
      name: `ours ${at}: hub CPU per query (the hub's serial share)`,
      value: (m.cpuUsPerToteboxQuery * n) / 1000,
      unit: "ms",
      ratio: `${((m.cpuUsPerToteboxQuery * n) / 1000 / p50(ours)).toFixed(2)} of p50`,
    });
    rows.push({ section, name: `ours ${at}: connect all links`, value: m.connectMs, unit: "ms" });
  }
  if (floor) {
    const m = floor.m;
    rows.push({
      section,
      name: `floor ${at}: latency p50`,
      value: p50(floor),
      unit: "ms",
      ratio: "baseline",
    });
    rows.push({
      section,
      name: `floor ${at}: latency p99`,
      value: p99(floor),
      unit: "ms",
      ratio: "baseline",
    });
    rows.push({
      section,
      name: `floor ${at}: hub CPU per Totebox per query`,
      value: m.cpuUsPerToteboxQuery,
      unit: "µs",
      ratio: "baseline",
    });
    rows.push(inTurnsRow(`floor ${at}`, m, m), ...threadRows(`floor ${at}`, m));
    rows.push({ section, name: `floor ${at}: hub RSS per held link`, value: m.rssPerLinkKB, unit: "KB" });
    rows.push({
      section,
      name: `floor ${at}: hub RSS per link after queries (highest)`,
      value: m.rssUnderQueriesPerLinkKB,
      unit: "KB",
    });
    rows.push({
      section,
      name: `floor ${at}: fleet CPU per answer (Toteboxes' side)`,
      value: floor.fleetCpuUsPerAnswer,
      unit: "µs",
      // A plain floor request never asks for the paced floor's work: a count here is a broken
      // marker, or the paced floor's late answers to requests that timed out.
      ...(floor.fleetPacedAnswers > 0
        ? {
            goal: `CHECK: ${floor.fleetPacedAnswers} paced answers counted in its turns (a broken marker, or the paced floor's late answers)`,
          }
        : {}),
    });
  }
  if (paced) rows.push(...pacedFloorRows(n, paced, floor, runs.size, costs));
  if (usual) {
    const m = usual.m;
    rows.push({
      section,
      name: `usual ${at}: latency p50`,
      value: p50(usual),
      unit: "ms",
      ...(ours
        ? {
            ratio: `${x(p50(usual), p50(ours))} ours`,
            goal:
              n === 1000
                ? goal(p50(usual) >= 3 * p50(ours), "goal usual ≥ 3× slower at 1,000")
                : `${goal(p50(usual) >= 3 * p50(ours), "goal usual ≥ 3× slower")} (stated at 1,000)`,
          }
        : {}),
    });
    rows.push({
      section,
      name: `usual ${at}: latency p99`,
      value: p99(usual),
      unit: "ms",
      ...(ours ? { ratio: `${x(p99(usual), p99(ours))} ours` } : {}),
    });
    rows.push({
      section,
      name: `usual ${at}: hub CPU per Totebox per query`,
      value: m.cpuUsPerToteboxQuery,
      unit: "µs",
      ...(ours ? { ratio: `${x(m.cpuUsPerToteboxQuery, ours.m.cpuUsPerToteboxQuery)} ours` } : {}),
    });
    rows.push({ section, name: `usual ${at}: hub RSS per held link`, value: m.rssPerLinkKB, unit: "KB" });
    rows.push({
      section,
      name: `usual ${at}: fleet CPU per answer (Toteboxes' side)`,
      value: usual.fleetCpuUsPerAnswer,
      unit: "µs",
      ...(ours ? { ratio: `${x(usual.fleetCpuUsPerAnswer, ours.fleetCpuUsPerAnswer)} ours` } : {}),
    });
  }
  // Any other contender (variants of ours, or one added later): the same figures, against ours
  // and the floor.
  for (const [name, r] of runs) {
    if (name === "ours" || name === "floor" || name === "floor-paced" || name === "usual") continue;
    const vs = (a: number, b: ContenderRun | undefined, f: (c: ContenderRun) => number) =>
      b ? `${x(a, f(b))} ${b.m.contender}` : "";
    const both = (a: number, f: (c: ContenderRun) => number) =>
      [vs(a, ours, f), vs(a, floor, f)].filter((v) => v !== "").join(", ");
    rows.push({
      section,
      name: `${name} ${at}: latency p50`,
      value: p50(r),
      unit: "ms",
      ratio: both(p50(r), p50),
    });
    rows.push({
      section,
      name: `${name} ${at}: latency p99`,
      value: p99(r),
      unit: "ms",
      ratio: both(p99(r), p99),
    });
    const vsFloor = floor ? cpuVsFloor(r.m, floor.m, runs.size) : undefined;
    rows.push({
      section,
      name: `${name} ${at}: hub CPU per Totebox per query`,
      value: r.m.cpuUsPerToteboxQuery,
      unit: "µs",
      ratio: [vs(r.m.cpuUsPerToteboxQuery, ours, (c) => c.m.cpuUsPerToteboxQuery), vsFloor?.ratio ?? ""]
        .filter((v) => v !== "")
        .join(", "),
      ...(vsFloor?.goal ? { goal: vsFloor.goal } : {}),
      ...(vsFloor?.interval ? { interval: vsFloor.interval } : {}),
    });
    if (paced && pacingHeld(paced)) rows.push(vsPacedRow(`${name} ${at}`, r.m, paced.m, runs.size));
    // By thread, as for ours and the floor (the aggregator's others include DuckDB's threads).
    rows.push(inTurnsRow(`${name} ${at}`, r.m, floor?.m), ...threadRows(`${name} ${at}`, r.m));
    rows.push({ section, name: `${name} ${at}: hub RSS per held link`, value: r.m.rssPerLinkKB, unit: "KB" });
    rows.push({
      section,
      name: `${name} ${at}: hub RSS per link after queries (highest)`,
      value: r.m.rssUnderQueriesPerLinkKB,
      unit: "KB",
    });
    rows.push({
      section,
      name: `${name} ${at}: fleet CPU per answer (Toteboxes' side)`,
      value: r.fleetCpuUsPerAnswer,
      unit: "µs",
      ratio: both(r.fleetCpuUsPerAnswer, (c) => c.fleetCpuUsPerAnswer),
    });
  }
  // The A/B: aggregator-b (BENCH_HUB_B_NODE_FLAGS) against the aggregator, query by query.
  const agg = runs.get("aggregator");
  const aggB = runs.get("aggregator-b");
  if (agg && aggB) {
    rows.push(
      cpuAgainstRow({
        who: `aggregator-b ${at}`,
        m: aggB.m,
        base: agg.m,
        baseName: "the aggregator's",
        hubs: runs.size,
        note: abNote(),
      }),
    );
  }
  if (floor)
    rows.push(
      ...boundRows(n, costs, { floor, paced, ours, usual, aggregator: runs.get("aggregator") }, combine),
    );
  return rows;
}

/** What aggregator-b differs in: its flags, its code, or nothing (an A/A). */
function abNote(): string {
  const what = [
    ...(HUB_B_NODE_FLAGS.length > 0 ? [`b's flags: ${HUB_B_NODE_FLAGS.join(" ")}`] : []),
    ...(HUB_B_TREE ? [`b's code: ${HUB_B_TREE}`] : []),
  ];
  return what.join("; ") || "b is the same code with no flags (an A/A: the interval is the run's own spread)";
}

function withinReach(leastUs: number, floorUs: number): string {
  return leastUs <= 2 * floorUs ? "goal ≤ 2× floor: within reach here" : "goal ≤ 2× floor: out of reach here";
}

/**
 * What this machine allows at all (machine-bound.ts): the least hub CPU and the least latency any
 * implementation of ours could reach here, from the floor measured in this run plus the
 * cryptography the protocol requires, timed with the fleet idle. A goal beyond that bound is out
 * of reach on this machine, whatever the code; the rows say so rather than leave it to a reader.
 */
function boundRows(
  n: number,
  costs: CryptoCosts,
  runs: {
    floor: ContenderRun;
    paced: ContenderRun | undefined;
    ours: ContenderRun | undefined;
    usual: ContenderRun | undefined;
    aggregator: ContenderRun | undefined;
  },
  combine: CombineCost | undefined,
): BenchRow[] {
  const section = "fanout";
  const at = `N=${n.toLocaleString("en-US")}`;
  const cores = CORES;
  const bound = fanoutLowerBound({
    n,
    cores,
    costs,
    floorHubUs: runs.floor.m.cpuUsPerToteboxQuery,
    floorFleetUs: runs.floor.fleetCpuUsPerAnswer,
    receiptSignatureEvery: DEFAULT_ORCH_LIMITS.receiptSignatureEvery,
    ...(PIN_HUB ? { hubCores: 1 } : {}),
  });
  const floorHub = runs.floor.m.cpuUsPerToteboxQuery;
  const b = bound.hub;
  const l = bound.latency;
  const rows: BenchRow[] = [
    {
      section,
      name: `bound ${at}: Ed25519 verify / sign, SHA-256 answer / node (fleet idle)`,
      value: costs.ed25519VerifyUs,
      unit: "µs",
      ratio: `sign ${fmt(costs.ed25519SignUs)} µs; SHA-256 ${fmt(costs.sha256AnswerUs)} µs (${costs.answerBytes} B) / ${fmt(costs.sha256NodeUs)} µs (64 B)`,
    },
    {
      section,
      name: `bound ${at}: least hub CPU per Totebox per query`,
      value: b.hubUs,
      unit: "µs",
      ratio: `${(b.hubUs / floorHub).toFixed(2)}× floor: the floor + ${fmt(b.hubCryptoUs)} µs of required hashing and signatures`,
      goal: withinReach(b.hubUs, floorHub),
    },
    {
      section,
      name: `bound ${at}: least latency of any fan-out of ours`,
      value: l.latencyMs,
      unit: "ms",
      ratio: `${
        PIN_HUB
          ? `the slower side on its own cores: hub ${n.toLocaleString("en-US")} × ${fmt(l.hubUs)} µs on 1, fleet ${n.toLocaleString("en-US")} × ${fmt(l.fleetUs)} µs on ${cores - 1}`
          : `${n.toLocaleString("en-US")} × ${fmt(l.hubUs + l.fleetUs)} µs / ${cores} cores (floor hub + fleet, + ${fmt(l.hubCryptoUs)} µs hub and ${fmt(l.toteboxCryptoUs)} µs Totebox cryptography)`
      }; batches of ${l.batch.toLocaleString("en-US")}`,
      ...(n >= 10_000
        ? {
            goal: `goal p50 < 1 s: ${l.latencyMs < 1000 ? "within reach here" : "out of reach on this machine"}`,
          }
        : {}),
    },
  ];
  // The same sum with the transport measured as the paced floor (floor-pace.ts): what a hub that
  // reads each answer as it arrives pays, at the least pace a Totebox of ours can answer. Not a
  // bound (a hub that gathered answers before reading them could pay less), so no verdict.
  const pacedLeast =
    runs.paced && pacingHeld(runs.paced) ? runs.paced.m.cpuUsPerToteboxQuery + b.hubCryptoUs : undefined;
  if (pacedLeast !== undefined) {
    rows.push({
      section,
      name: `bound ${at}: estimate, the paced floor's hub + the required hub cryptography`,
      value: pacedLeast,
      unit: "µs",
      ratio: `${(pacedLeast / floorHub).toFixed(2)}× floor: the paced floor + ${fmt(b.hubCryptoUs)} µs of required hashing and signatures; for reading, no verdict`,
    });
  }
  if (runs.aggregator && combine) {
    // The aggregator does all that, and combines: its least is that bound plus its combine.
    const least = b.hubUs + combine.perToteboxUs;
    rows.push(
      {
        section,
        name: `bound ${at}: the aggregator's combine alone (DuckDB, fleet idle)`,
        value: combine.perToteboxUs,
        unit: "µs",
        ratio: `${(combine.perToteboxUs / floorHub).toFixed(2)}× floor; ${fmt(combine.fixedMs)} ms of it per combine whatever its size`,
      },
      {
        section,
        name: `bound ${at}: least hub CPU per Totebox for the aggregator`,
        value: least,
        unit: "µs",
        ratio: `${(least / floorHub).toFixed(2)}× floor: the least above + its combine`,
        goal: withinReach(least, floorHub),
      },
    );
    if (pacedLeast !== undefined) {
      const leastPaced = pacedLeast + combine.perToteboxUs;
      rows.push({
        section,
        name: `bound ${at}: estimate for the aggregator, the paced floor's hub + cryptography + its combine`,
        value: leastPaced,
        unit: "µs",
        ratio: `${(leastPaced / floorHub).toFixed(2)}× floor: the estimate above + its combine; for reading, no verdict`,
      });
    }
  }
  if (runs.ours) {
    const p50 = percentile(runs.ours.m.latencyMs, 50);
    rows.push({
      section,
      name: `bound ${at}: ours' p50 over that least latency`,
      value: p50 / l.latencyMs,
      unit: "×",
      ratio: "the part of the latency our code could still remove is what lies above 1×",
    });
  }
  if (runs.usual) {
    const most = percentile(runs.usual.m.latencyMs, 50) / l.latencyMs;
    rows.push({
      section,
      name: `bound ${at}: the usual way's p50 over that least latency`,
      value: most,
      unit: "×",
      ratio: "the most the usual way could ever lag ours on this machine",
      ...(n === 1000
        ? {
            goal: `goal usual ≥ 3× slower: ${most >= 3 ? "within reach here" : "out of reach on this machine"}`,
          }
        : {}),
    });
  }
  return rows;
}

export async function benchFanout(): Promise<BenchRow[]> {
  const sizes = envSizes("BENCH_FANOUT_SIZES", "1000,10000", 20_000);
  const queries = envInt("BENCH_FANOUT_QUERIES", 30, 1, 10_000);
  const warmup = envInt("BENCH_FANOUT_WARMUP", 3, 0, 1_000);
  const seed = envInt("BENCH_SEED", 1, 0, 0xffffffff);
  const wanted = (process.env.BENCH_FANOUT_CONTENDERS ?? "ours,floor,floor-paced,usual,aggregator")
    .split(",")
    .map((s) => s.trim());
  for (const w of wanted) {
    if (!Object.hasOwn(HUB_CONTENDERS, w)) throw new BenchError("BENCH_ERR_ARGS", `unknown contender ${w}`);
  }
  const log = (s: string) => process.stderr.write(`\r${s.padEnd(100).slice(0, 160)}`);
  const [aggregator, operator] = await Promise.all([
    benchIdentity("aggregator", seed),
    benchIdentity("operator", seed),
  ]);
  const rows: BenchRow[] = [];
  for (const n of sizes) {
    let t = performance.now();
    const fleet = await startSimFleet({
      count: n,
      seed,
      hubs: new Set(wanted).size,
      aggregator: {
        fingerprint: aggregator.fingerprint,
        publicKeyRaw: rawEd25519PublicKey(aggregator.publicKey),
      },
      operator: { publicKeyRaw: rawEd25519PublicKey(operator.publicKey) },
      onProgress: log,
    });
    const upS = ((performance.now() - t) / 1000).toFixed(1);
    log(`bench fanout: fleet of ${n} up in ${upS} s on ${fleet.workerPids.length} workers`);
    process.stderr.write("\n");
    try {
      if (PIN_HUB) pinTo([process.pid, ...fleet.workerPids], `1-${CORES - 1}`);
      const expected = simExpectedRollup(seed, n, AS_OF);
      const base: Omit<HubRunRequest, "type" | "contender"> = {
        targets: fleet.toteboxes.map((tb, i) => ({
          id: tb.id,
          tags: tb.tags,
          publicKeyRaw: tb.publicKeyRaw,
          psp: { host: tb.host, port: tb.port, fingerprint: tb.fingerprint },
          floor: fleet.floor[i]!,
          https: {
            host: fleet.https[i]!.host,
            port: fleet.https[i]!.port,
            fingerprint: fleet.https[i]!.fingerprint,
            certPem: fleet.https[i]!.certPem,
          },
        })),
        aggregator: { keyPem: aggregator.keyPem, certPem: aggregator.certPem },
        operator: { keyPem: operator.keyPem, certPem: operator.certPem },
        asOf: AS_OF,
        expectedRollup: Object.fromEntries([...expected].map(([k, v]) => [k, v.toString()])),
        // Until ours has been measured, the floor uses the sizes ours measured in an earlier run
        // (2026-11-27, this seed and as-of date: 711 and 1,432 bytes per Totebox per query).
        floor: { requestBytes: 711, answerBytes: 1432 },
        warmup,
        queries,
      };
      // Timed now, with the fleet up and idle: the machine's best figures (machine-bound.ts).
      const row = simPosition(seed, 0, AS_OF);
      const answer = encodeResult(POSITION_COLUMNS, [
        POSITION_COLUMNS.map((c) => row[c.name as keyof typeof row]),
      ]);
      const costs = measureCryptoCosts(answer.byteLength);
      // The aggregator's combine alone, with the fleet idle (combine-cost.ts): a cost neither the
      // floor nor ours has, added to the least the aggregator could reach (boundRows).
      const combine = wanted.includes("aggregator")
        ? await measureCombineCostInChild(n, seed, AS_OF, [
            "--expose-gc",
            "--max-old-space-size=4096",
            ...HUB_NODE_FLAGS,
          ])
        : undefined;
      const runs = new Map<string, ContenderRun>();
      const loadBefore = loadavg()[0]!;
      // Every contender's hub is started (connected, warmed up) one after another, then their
      // measured queries are taken in turns (ours, the floor, the usual way, then the others in the
      // order asked; the order rotates by one each query). Why: this host's pace drifts by up to 2× within minutes, and not alike for
      // every contender. Run one after the other, the floor read 22.7 and 33.4 µs per Totebox two
      // minutes apart while the aggregator read 97 and 102 µs (eleventh round): their ratio said
      // 4.29× or 3.06×. In turns, every contender meets the same host, query by query.
      const hubs: HubRun[] = [];
      try {
        for (const name of [
          "ours",
          "floor",
          "usual",
          ...wanted.filter((w) => !["ours", "floor", "usual"].includes(w)),
        ]) {
          if (!wanted.includes(name)) continue;
          // The floor's sizes, set for whichever of the two floors starts first (the paced one
          // alone would otherwise ask with a stale size and be answered with an empty frame).
          if (name === "floor" || (name === "floor-paced" && !wanted.includes("floor"))) {
            // The same request and answer sizes as ours (its warm-up query before the last), when
            // it runs; without it, or with fewer than 2 warm-ups, the sizes of an earlier run.
            const o = hubs.find((h) => h.contender === "ours")?.warmTraffic;
            if (o) {
              base.floor = {
                requestBytes: Math.round(o.bytesOutPerTotebox),
                answerBytes: Math.round(o.bytesInPerTotebox),
              };
            } else {
              process.stderr.write(
                `bench fanout: the floor takes an earlier run's sizes, ${base.floor.requestBytes} B out and ${base.floor.answerBytes} B in (${wanted.includes("ours") ? "warm-up < 2" : "ours not run"})\n`,
              );
            }
            // The answer frame is 4 header bytes plus the payload: the whole frame matches ours.
            await fleet.setFloorAnswerBytes(Math.max(0, base.floor.answerBytes - 4));
          }
          t = performance.now();
          process.stderr.write(`bench fanout: N=${n} ${name}: connecting and warming up …\n`);
          hubs.push(await HubRun.start(fleet, base, name));
          log(`bench fanout: N=${n} ${name} ready in ${((performance.now() - t) / 1000).toFixed(1)} s`);
          process.stderr.write("\n");
        }
        for (const h of hubs) await h.prime();
        t = performance.now();
        for (let q = 0; q < queries; q++) {
          // The order turns with each query, so that no contender always follows the same one
          // (and inherits what its turn left running: collectors, DuckDB, the fleet's backlog).
          for (let k = 0; k < hubs.length; k++) await hubs[(q + k) % hubs.length]!.turn();
          log(`bench fanout: N=${n} query ${q + 1}/${queries} done by every contender`);
        }
        log(`bench fanout: N=${n} measured in ${((performance.now() - t) / 1000).toFixed(1)} s`);
        process.stderr.write("\n");
        for (const h of hubs) runs.set(h.contender, await h.finish());
      } finally {
        await Promise.all(hubs.map((h) => h.end()));
      }
      rows.push(...rowsFor(n, runs, [loadBefore, loadavg()[0]!], costs, combine));
    } finally {
      await fleet.close();
      // This process back on every core: what runs after (another size, another section) and
      // everything it forks would otherwise inherit the fleet's cores.
      if (PIN_HUB) pinTo([process.pid], `0-${CORES - 1}`);
    }
  }
  return rows;
}

if (
  process.argv.includes("--hub") &&
  process.argv[1] &&
  import.meta.url === pathToFileURL(process.argv[1]).href
) {
  hubMain().catch((e: unknown) => {
    process.send?.({
      type: "error",
      code: (e as { code?: unknown })?.code ?? "BENCH_ERR_HUB",
      message: (e as Error)?.message ?? "hub failed",
    });
    process.exitCode = 1;
  });
}
