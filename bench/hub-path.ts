/**
 * `npm run bench -- hubpath`: the hub's own code per Totebox per query, with no network and no
 * fleet. The fan-out bench (fanout.ts) measures the hub as deployed, but on this machine the hub
 * shares two cores with the simulated fleet, so its CPU profile is smeared by preemption (a
 * sample lands wherever the hub was descheduled) and a change worth a few µs per Totebox is lost
 * in the run-to-run spread. Here the hub runs alone in this process against in-memory sockets:
 * the same calls as fanout.ts's `ours` (slice-signed capabilities, one direct request per
 * Totebox, the receipt's binding checked and its signature sampled, the Arrow answer decoded),
 * with every reply prepared (and its receipt signed) before the clock starts. What is left is
 * exactly the hub's share of the work, measured as this process's CPU time (main thread plus
 * V8's helper threads, as fanout.ts counts it).
 *
 * Every answer arrives whole and 8-aligned in its own chunk, as a TLS socket usually hands it
 * over, so the frame decoder always takes its in-place path here (a frame split across TLS
 * records is copied): a best case for that step.
 *
 * The baseline in the same run, `bare`, is what the floor's hub does per Totebox with the same
 * in-memory sockets: write one request of the same size, take one answer of the same size and
 * read its length prefix. Ours divided by it is the cost of our protocol and checks over the
 * sockets' own; TLS, the kernel and the fleet are absent from both, so this is not the fan-out
 * bench's ratio to its floor (that one has TLS and syscalls on both sides).
 *
 * Env: BENCH_HUBPATH_N (Toteboxes, default 1000), BENCH_HUBPATH_QUERIES (default 30),
 * BENCH_HUBPATH_ROUNDS (interleaved rounds of both contenders, default 3), BENCH_SEED.
 */
import { createHash, generateKeyPairSync, type KeyObject } from "node:crypto";
import { Duplex } from "node:stream";
import { DEFAULT_ORCH_LIMITS, ReceiptSampler } from "@os-orchestration/orchestration";
import {
  type CallInput,
  checkReceipt,
  DIRECT_READ_METHOD,
  decodeDirectReadReply,
  decodeResult,
  directReadPayload,
  encodeDirectReadBody,
  encodeResult,
  FrameKind,
  issueCallCapabilityBatch,
  issueGrant,
  keyIdOfPublicKey,
  PspLink,
  type ReplySink,
  requestHash,
  signReceipt,
  systemClock,
} from "@os-orchestration/psp";
import { type BenchRow, fmt } from "./report.ts";
import { NET_VALUE_COLUMN, POSITION_COLUMNS, simPosition } from "./sim-fleet-worker.ts";
import { xorshift32 } from "./xorshift.ts";

const AS_OF = "2026-10-31";
/** As fanout.ts: capabilities signed per slice of this many Toteboxes, one turn per slice. */
const SEND_SLICE = 256;
/** Replies handed to the hub per event-loop turn, as a burst of sockets becoming readable. */
const DELIVER_BURST = 64;

/** Deterministic bytes from a seed: ctis the prepared receipts can name. */
function seededBytes(seed: number, n: number): Uint8Array {
  const next = xorshift32(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = next() & 0xff;
  return out;
}

/** One frame exactly as frame-codec.ts lays it out (header, padded table, padded segments). */
function frameBytes(kind: number, segments: readonly Uint8Array[]): Buffer {
  const pad8 = (n: number) => (n + 7) & ~7;
  const table = pad8(segments.length * 4);
  let body = table;
  for (const s of segments) body += pad8(s.byteLength);
  const out = Buffer.alloc(8 + body);
  out.writeUInt32BE(body, 0);
  out[4] = 1;
  out[5] = kind;
  out.writeUInt16BE(segments.length, 6);
  let pos = 8 + table;
  segments.forEach((s, i) => {
    out.writeUInt32BE(s.byteLength, 8 + 4 * i);
    out.set(s, pos);
    pos += pad8(s.byteLength);
  });
  return out;
}

/**
 * The in-memory socket: writes are taken and counted, and each write queues the one answer the
 * peer would send for it; queued answers arrive as 'data' a burst per turn, after the writer has
 * yielded, as a network would deliver them.
 */
class MemorySocket extends Duplex {
  answer: Buffer | undefined;
  /** Bytes the hub wrote to this socket, all told. */
  written = 0;
  constructor(private readonly deliver: (s: MemorySocket) => void) {
    super();
  }
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.written += chunk.byteLength;
    this.deliver(this);
    cb();
  }
}

class Deliverer {
  #queue: MemorySocket[] = [];
  #scheduled = false;
  push = (s: MemorySocket): void => {
    this.#queue.push(s);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#run);
    }
  };
  #run = (): void => {
    const burst = this.#queue.splice(0, DELIVER_BURST);
    for (const s of burst) s.emit("data", s.answer!);
    if (this.#queue.length > 0) setImmediate(this.#run);
    else this.#scheduled = false;
  };
}

interface Fleet {
  n: number;
  ids: string[];
  keys: KeyObject[];
  privs: KeyObject[];
  tags: Record<string, string>[];
}

function makeFleet(n: number): Fleet {
  const ids: string[] = [];
  const keys: KeyObject[] = [];
  const privs: KeyObject[] = [];
  const tags: Record<string, string>[] = [];
  for (let i = 0; i < n; i++) {
    const kp = generateKeyPairSync("ed25519");
    ids.push(`tb-${String(i).padStart(5, "0")}`);
    keys.push(kp.publicKey);
    privs.push(kp.privateKey);
    tags.push({ region: `r${i % 4}` });
  }
  return { n, ids, keys, privs, tags };
}

interface Contender {
  name: string;
  /** Prepares query q's answers (untimed), then runs it (timed by the caller). */
  prepare(q: number): void;
  run(q: number): Promise<void>;
  /** Bytes per Totebox of all its requests so far, and of one answer (the floor's sizes). */
  sizes?(): { request: number; answer: number };
}

/** fanout.ts's `ours`, direct path, on in-memory sockets. */
function ours(fleet: Fleet, seed: number): Contender {
  const { n, ids, keys, privs } = fleet;
  const agg = generateKeyPairSync("ed25519");
  const op = generateKeyPairSync("ed25519");
  const grant = issueGrant({
    operator: "bench-operator",
    aggregatorId: "a".repeat(64),
    aggregatorKey: agg.publicKey,
    tenant: "bench",
    toteboxSelectors: ["region=r0", "region=r1", "region=r2", "region=r3"],
    views: ["position"],
    actions: ["read"],
    lifetimeSeconds: 6 * 3600,
    signer: op.privateKey,
    clock: systemClock,
  });
  const params = { as_of: AS_OF };
  const body = encodeDirectReadBody({
    grantHash: createHash("sha256").update(grant).digest(),
    view: "position",
    params,
    row: null,
  });
  const reqHash = requestHash({ view: "position", params });
  const deliverer = new Deliverer();
  const sockets: MemorySocket[] = [];
  const links: PspLink[] = [];
  for (let i = 0; i < n; i++) {
    const s = new MemorySocket(deliverer.push);
    sockets.push(s);
    links.push(
      new PspLink({
        role: "commander",
        socket: s,
        peer: { fingerprint: "f".repeat(64), keyId: keyIdOfPublicKey(keys[i]!), label: ids[i]! },
        limits: { pingIntervalMs: 600_000, idleTimeoutMs: 600_000, releaseDelayMs: 10_000 },
      }),
    );
  }
  const sampler = new ReceiptSampler({
    every: DEFAULT_ORCH_LIMITS.receiptSignatureEvery,
    random: (() => {
      const next = xorshift32(seed);
      return () => next() / 2 ** 32;
    })(),
  });
  let ctis: Uint8Array = new Uint8Array(0);
  let queries = 0;
  return {
    name: "ours",
    sizes() {
      let out = 0;
      let answers = 0;
      for (const s of sockets) {
        out += s.written;
        answers += s.answer!.byteLength;
      }
      return { request: Math.round(out / (n * queries)), answer: Math.round(answers / n) };
    },
    prepare(q) {
      ctis = seededBytes(seed * 1000 + q + 1, 16 * n);
      for (let i = 0; i < n; i++) {
        const row = simPosition(seed, i, AS_OF);
        const arrow = encodeResult(POSITION_COLUMNS, [
          POSITION_COLUMNS.map((c) => row[c.name as keyof typeof row]),
        ]);
        const receipt = signReceipt({
          capabilityId: ctis.subarray(16 * i, 16 * i + 16),
          view: "position",
          requestHash: reqHash,
          rowCount: 1,
          suppressedGroups: 0,
          watermark: "w1",
          arrowBytes: arrow,
          subjectId: ids[i]!,
          clock: systemClock,
          signer: privs[i]!,
        });
        const head = new Uint8Array(8);
        new DataView(head.buffer).setUint32(0, q + 1); // the link's q+1-th request; status 0 (ok)
        sockets[i]!.answer = frameBytes(FrameKind.Reply, [head, arrow, receipt]);
      }
    },
    async run() {
      queries++;
      const ctiOf = (i: number) => ctis.subarray(16 * i, 16 * i + 16);
      let sum = 0n;
      let left = n;
      let failure: unknown;
      let finish!: () => void;
      const done = new Promise<void>((r) => {
        finish = r;
      });
      // As fanout.ts's ours and the aggregator (#onDirect): one sink, tagged by Totebox.
      const sink: ReplySink = {
        reply(i, payload) {
          try {
            const a = decodeDirectReadReply(payload);
            checkReceipt({
              token: a.receipt,
              subjectPublicKey: keys[i]!,
              expect: {
                arrowBytes: a.arrow,
                capabilityId: ctiOf(i),
                requestHash: reqHash,
                subjectId: ids[i]!,
              },
              checkSignature: sampler.shouldCheck(links[i]!),
            });
            const r = decodeResult(a.arrow, POSITION_COLUMNS);
            const cell = r.rowCount === 1 ? r.column(NET_VALUE_COLUMN)[0] : undefined;
            sum += typeof cell === "bigint" ? cell : BigInt(cell as number);
          } catch (e) {
            failure ??= e;
          }
          if (--left === 0) finish();
        },
        fail(_i, e) {
          failure ??= e;
          if (--left === 0) finish();
        },
      };
      for (let from = 0; from < n; from += SEND_SLICE) {
        if (from > 0) await new Promise<void>((r) => setImmediate(r));
        const to = Math.min(n, from + SEND_SLICE);
        const inputs: CallInput[] = new Array(to - from);
        for (let i = from; i < to; i++) {
          inputs[i - from] = {
            grant,
            totebox: ids[i]!,
            view: "position",
            action: "read",
            clock: systemClock,
            cti: ctiOf(i),
          };
        }
        const caps = issueCallCapabilityBatch(inputs, agg.privateKey);
        for (let i = from; i < to; i++) {
          links[i]!.requestWith(DIRECT_READ_METHOD, directReadPayload(caps[i - from]!, body), sink, i);
        }
      }
      await done;
      if (failure !== undefined) throw failure;
      if (sum === 0n) throw new Error("hubpath: every answer summed to zero");
    },
  };
}

/** The floor's hub on the same in-memory sockets: a length-prefixed request and answer. */
function bare(fleet: Fleet, requestBytes: number, answerBytes: number): Contender {
  const { n } = fleet;
  const deliverer = new Deliverer();
  const sockets: MemorySocket[] = [];
  let onAnswer: () => void = () => {};
  for (let i = 0; i < n; i++) {
    const s = new MemorySocket(deliverer.push);
    const answer = Buffer.alloc(answerBytes, 1);
    answer.writeUInt32BE(answerBytes - 4, 0);
    s.answer = answer;
    s.on("data", (chunk: Buffer) => {
      if (chunk.readUInt32BE(0) + 4 === chunk.byteLength) onAnswer();
    });
    sockets.push(s);
  }
  return {
    name: "bare",
    prepare() {},
    async run() {
      let left = n;
      const done = new Promise<void>((r) => {
        onAnswer = () => {
          if (--left === 0) r();
        };
      });
      for (let from = 0; from < n; from += SEND_SLICE) {
        if (from > 0) await new Promise<void>((r) => setImmediate(r));
        for (let i = from; i < Math.min(n, from + SEND_SLICE); i++) {
          const req = Buffer.allocUnsafe(requestBytes);
          req.writeUInt32BE(requestBytes - 4, 0);
          sockets[i]!.write(req);
        }
      }
      await done;
    },
  };
}

function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

export async function benchHubPath(): Promise<BenchRow[]> {
  const n = Number(process.env.BENCH_HUBPATH_N ?? 1000);
  const queries = Number(process.env.BENCH_HUBPATH_QUERIES ?? 30);
  const rounds = Number(process.env.BENCH_HUBPATH_ROUNDS ?? 3);
  const seed = Number(process.env.BENCH_SEED ?? 1);
  const fleet = makeFleet(n);
  const o = ours(fleet, seed);
  // The bare hub's frames are ours' sizes, measured on ours' first query.
  let q = 0;
  o.prepare(q);
  await o.run(q++);
  const { request, answer } = o.sizes!();
  const b = bare(fleet, request, answer);
  for (let w = 0; w < 3; w++) {
    o.prepare(q);
    await o.run(q++);
    await b.run(0);
  }
  const per: Record<string, number[]> = { ours: [], bare: [] };
  for (let r = 0; r < rounds; r++) {
    for (const c of [o, b]) {
      let cpu = 0;
      for (let k = 0; k < queries; k++) {
        c.prepare(q);
        const c0 = cpuMicros();
        await c.run(q);
        cpu += cpuMicros() - c0;
        if (c === o) q++;
      }
      per[c.name]!.push(cpu / (queries * n));
    }
  }
  const best = (xs: number[]) => Math.min(...xs);
  const rows: BenchRow[] = [
    {
      section: "hubpath",
      name: `bare N=${fmt(n)}: hub CPU per Totebox per query (in-memory sockets; rounds ${per.bare!.map((x) => x.toFixed(1)).join(", ")})`,
      value: best(per.bare!),
      unit: "µs",
      ratio: "baseline",
    },
    {
      section: "hubpath",
      name: `ours N=${fmt(n)}: hub CPU per Totebox per query (in-memory sockets; rounds ${per.ours!.map((x) => x.toFixed(1)).join(", ")})`,
      value: best(per.ours!),
      unit: "µs",
      ratio: `${(best(per.ours!) / best(per.bare!)).toFixed(2)}× bare (+${(best(per.ours!) - best(per.bare!)).toFixed(1)} µs)`,
    },
  ];
  return rows;
}
