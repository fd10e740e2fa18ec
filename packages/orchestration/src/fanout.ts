import { createHash, type KeyObject, randomBytes } from "node:crypto";
import {
  type CallInput,
  type CanonicalValue,
  type Cell,
  type Clock,
  type ColumnSpec,
  checkReceipt,
  type DecodedResult,
  DIRECT_READ_METHOD,
  decodeDirectReadReply,
  decodeResult,
  directReadPayload,
  encodeDirectReadBody,
  isPspError,
  issueCallCapabilityBatch,
  type ReplySink,
  requestHash,
  type Scheduler,
  type TimerHandle,
  verifyReceipt,
} from "@os-orchestration/psp";
import type { CommandReply, ReadAnswer, ToteboxSessionRemote } from "@os-orchestration/totebox";
import type pino from "pino";
import { type CombinedSection, coverageOf, runCombine } from "./combine.ts";
import { OrchError } from "./errors.ts";
import type { OrchLimits } from "./limits.ts";
import { errorInfo, type LinkLease, type LinkPool } from "./pool.ts";
import type { ReceiptSampler } from "./receipt-sampler.ts";
import type { ToteboxEntry } from "./registry.ts";
import type { SessionHandle } from "./session-cache.ts";
import type { Viewport } from "./viewports.ts";

/**
 * One fan-out: a question sent to many Toteboxes at once, each answer checked where it lands, and
 * every targeted Totebox accounted for exactly once (invariant 7).
 *
 * Per Totebox, one round trip: `authorize(grant)` and every read (or the command) of the request
 * are pipelined into one batch on its link. The Totebox's answer is checked before it counts:
 * the Arrow decodes to the expected columns, and the receipt is signed by the key pinned for that
 * link and names the very capability, request and bytes we sent. An answer that arrives after its
 * Totebox was settled (timeout, deadline, cancellation) is dropped, never merged.
 */

export type ToteboxStatus = "ok" | "timeout" | "offline" | "denied" | "suppressed" | "error";
export const TOTEBOX_STATUSES: readonly ToteboxStatus[] = [
  "ok",
  "timeout",
  "offline",
  "denied",
  "suppressed",
  "error",
];
export type PartialMode = "warn" | "abort";

/** Requests started per event-loop turn in a fan-out (see FanOut.start). */
const DISPATCH_SLICE = 256;

export interface ReadSpec {
  readonly view: string;
  /** Table name in the combine step (viewports), or the view name. */
  readonly as: string;
  readonly params: Readonly<Record<string, CanonicalValue>>;
  readonly row?: string | undefined;
  /** Expected columns; answers with another schema are refused. */
  readonly columns?: readonly ColumnSpec[] | undefined;
}

export interface CommandSpec {
  readonly name: string;
  readonly args: Readonly<Record<string, CanonicalValue>>;
  readonly idempotencyKey: string;
}

/** A Totebox's answer to one read, exactly as it sent it (receipts pass through untouched). */
export interface PassedAnswer {
  readonly as: string;
  readonly view: string;
  readonly params: Readonly<Record<string, CanonicalValue>>;
  readonly row: string | null;
  readonly capabilityId: Uint8Array;
  readonly arrow: Uint8Array;
  readonly receipt: Uint8Array;
  readonly rowCount: number;
  readonly suppressedGroups: number;
  readonly watermark: string;
}

export interface PassedCommand {
  readonly command: string;
  readonly capabilityId: Uint8Array;
  readonly result: CanonicalValue;
  readonly resultBytes: Uint8Array;
  readonly receipt: Uint8Array;
  readonly replayed: boolean;
}

export interface ToteboxOutcome {
  readonly totebox: string;
  readonly name: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly status: ToteboxStatus;
  /** Stable code of why it is not ok (null when ok). */
  readonly code: string | null;
  /** Human-readable reason; never carries token bytes. */
  readonly reason: string;
  readonly elapsedMs: number;
  readonly answers: readonly PassedAnswer[];
  readonly command: PassedCommand | null;
}

export interface ProgressEvent {
  readonly seq: number;
  readonly totebox: string;
  readonly status: ToteboxStatus;
  readonly code: string | null;
  readonly reason: string;
  readonly elapsedMs: number;
  readonly answered: number;
  readonly targeted: number;
}

export interface FanOutResult {
  readonly id: string;
  readonly kind: "viewport" | "read" | "command";
  readonly name: string;
  readonly params: Readonly<Record<string, CanonicalValue>>;
  readonly mode: PartialMode;
  readonly targeted: number;
  /** Toteboxes that answered (ok or suppressed). */
  readonly answered: number;
  /** True if a Totebox is missing from the answer (its status says why). */
  readonly partial: boolean;
  readonly startedAt: number;
  readonly finishedAt: number;
  readonly outcomes: readonly ToteboxOutcome[];
  readonly sections: readonly CombinedSection[];
  /** Set when the fan-out failed as a whole: abort with a Totebox missing, cancelled, combine failure. */
  readonly error: { readonly code: string; readonly message: string } | null;
}

export interface FanOutPlan {
  readonly kind: "viewport" | "read" | "command";
  readonly name: string;
  readonly params: Readonly<Record<string, CanonicalValue>>;
  readonly targets: readonly ToteboxEntry[];
  readonly reads: readonly ReadSpec[];
  readonly command: CommandSpec | undefined;
  readonly viewport: Viewport | undefined;
  readonly mode: PartialMode;
  readonly toteboxTimeoutMs: number;
  readonly deadlineMs: number;
  /** The operator's grant token, presented to every Totebox as is. */
  readonly grant: Uint8Array;
  /** When the grant ends (ms since the epoch, from its verified `exp`). */
  readonly grantExpiresAt: number;
  readonly tenant: string;
  readonly operator: string;
  /**
   * Keep each Totebox's raw answer and receipt in the result (for consoles that verify). When
   * false they are dropped as soon as checked: a retained result then costs kilobytes, not
   * megabytes, at 1,000 Toteboxes.
   */
  readonly keepAnswers: boolean;
}

export interface FanOutHooks {
  /** The fan-out passed every check and its requests are about to leave. */
  started?(f: { readonly kind: FanOutPlan["kind"]; readonly targets: number }): void;
  outcome?(o: ToteboxOutcome): void;
  finished?(r: FanOutResult): void;
}

export interface FanOutContext {
  readonly pool: LinkPool;
  readonly signer: KeyObject;
  readonly clock: Clock;
  readonly scheduler: Scheduler;
  readonly limits: Readonly<OrchLimits>;
  readonly logger: pino.Logger;
  readonly hooks?: FanOutHooks;
  /** Which receipt signatures to check; absent: every one. */
  readonly receipts?: ReceiptSampler;
}

/**
 * One read's reply, before its checks: the Arrow stream and the receipt, and the suppressed-group
 * count a capnweb answer states besides its receipt (a direct reply states nothing besides it).
 */
interface ReadReply {
  readonly arrow: Uint8Array;
  readonly receipt: Uint8Array;
  readonly suppressedGroups?: number | undefined;
}

/** A capnweb read answer, shape-checked: it must be a read answer from this Totebox for this view. */
function capnwebReply(reply: unknown, r: ReadSpec, toteboxId: string): ReadReply {
  const a = reply as Partial<ReadAnswer> | null;
  if (
    typeof a !== "object" ||
    a === null ||
    a.totebox !== toteboxId ||
    a.view !== r.view ||
    !(a.arrow instanceof Uint8Array) ||
    !(a.receipt instanceof Uint8Array) ||
    typeof a.watermark !== "string" ||
    !Number.isSafeInteger(a.rowCount) ||
    !Number.isSafeInteger(a.suppressedGroups)
  ) {
    throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", "answer is not a read answer for this request");
  }
  return { arrow: a.arrow, receipt: a.receipt, suppressedGroups: a.suppressedGroups };
}

/** A direct read's reply payload: exactly an Arrow stream and a receipt. */
function directReply(payload: unknown): ReadReply {
  try {
    return decodeDirectReadReply(payload as Uint8Array[]);
  } catch {
    throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", "answer is not a read answer for this request");
  }
}

interface Pending {
  readonly entry: ToteboxEntry;
  /** Its place in the plan's targets: its direct reads' sink tags are `index × reads + read`. */
  readonly index: number;
  readonly started: number;
  settled: boolean;
  session: ToteboxSessionRemote | undefined;
  /** Direct reads in flight, abandoned if this Totebox settles without them. */
  direct: DirectReads | undefined;
  /** Our hold on the link's session for this grant (session-cache.ts); ended once settled. */
  sessionHandle: SessionHandle<ToteboxSessionRemote> | undefined;
  lease: LinkLease | undefined;
  caps: Uint8Array[];
}

/**
 * One Totebox's direct reads while they are in flight (FanOut #sendDirect): what came back so far.
 * Replies reach the fan-out's one sink (psp `requestWith`), so a read waiting on its Totebox holds
 * no promise, closure or task of its own: at 1,000 Toteboxes those were promoted to V8's old
 * generation within a query and collected by full mark-compacts.
 */
interface DirectReads {
  /** Request ids on the lease's link (0: not sent), for abandon. */
  readonly ids: number[];
  /** Each read's reply payload, as it arrives. */
  readonly out: unknown[];
  /** Reads not yet back. */
  left: number;
  /** Reads the Totebox refused as naming no session it holds (TOTEBOX_ERR_SESSION_UNKNOWN). */
  retry: number[] | undefined;
  /** The first read (in read order) that failed otherwise, and why. */
  failedAt: number;
  failure: unknown;
}

/** A count or cursor from a caller, as a whole number ≥ 0 (NaN and negatives are 0). */
function wholeAtLeast0(n: number): number {
  return n > 0 ? Math.floor(n) : 0;
}

const NO_CTIS = new Uint8Array(0);

/** The answers of an outcome that keeps none: one frozen array, not a new one per Totebox. */
const NO_ANSWERS: readonly PassedAnswer[] = Object.freeze([]);

/**
 * Each registry entry's tags as one frozen plain object, made once per entry (a registry reload
 * makes new entries): every outcome of every fan-out carries its Totebox's tags, and copying the
 * registry's null-prototype maps took V8's slow clone path once per Totebox per query. Frozen, so
 * that no holder of one outcome can change another's.
 */
const tagsOfEntry = new WeakMap<ToteboxEntry, Readonly<Record<string, string>>>();

function plainTags(entry: ToteboxEntry): Readonly<Record<string, string>> {
  let t = tagsOfEntry.get(entry);
  if (t === undefined) {
    t = Object.freeze({ ...entry.tags });
    tagsOfEntry.set(entry, t);
  }
  return t;
}

export class FanOut {
  readonly id: string;
  readonly plan: FanOutPlan;
  readonly startedAt: number;
  readonly #ctx: FanOutContext;
  /** Digest of the grant: which cached Totebox session on a link this fan-out may use. */
  readonly #grantKey: string;
  /** SHA-256 of the grant: what a direct read names its session by (psp direct-read.ts). */
  readonly #grantHash: Uint8Array;
  /**
   * What a query holds per Totebox while it runs, kept to slots of arrays rather than objects and
   * maps of its own: all of it lives until the combine, long enough for V8 to copy it at a
   * scavenge and promote it to the old generation at the next (at 1,000 Toteboxes the aggregator
   * promoted ~2.5 KB per Totebox per query, fourteenth round).
   * - `#outcomeAt[i]`: target i's outcome once settled (indexed as plan.targets);
   * - `#arrived`, `#answeredAt`: outcomes in the order they settled and how many had answered by
   *   then, from which `events()` makes the progress events when a console asks (one-call fan-outs
   *   never do): seq k is `#arrived[k - 1]`;
   * - `#decoded[i]`: target i's decoded answers, in plan.reads order, until the combine.
   */
  readonly #outcomeAt: (ToteboxOutcome | undefined)[];
  readonly #arrived: ToteboxOutcome[] = [];
  readonly #answeredAt: number[] = [];
  readonly #pending = new Map<string, Pending>();
  #decoded: (DecodedResult[] | undefined)[];
  readonly #waiters = new Set<() => void>();
  #deadline: TimerHandle | undefined;
  /** Times out every Totebox still pending when their common budget ends. */
  #timeout: TimerHandle | undefined;
  #failure: { code: string; message: string } | null = null;
  #result: FanOutResult | undefined;
  #completing = false;
  #answered = 0;
  readonly done: Promise<FanOutResult>;
  #finish!: (r: FanOutResult) => void;

  constructor(plan: FanOutPlan, ctx: FanOutContext) {
    this.id = randomBytes(8).toString("hex");
    this.plan = plan;
    this.#grantHash = createHash("sha256").update(plan.grant).digest();
    this.#grantKey = Buffer.from(this.#grantHash).toString("base64");
    this.#ctx = ctx;
    this.#allDirect = new Array<boolean>(plan.reads.length).fill(true);
    this.#noneDirect = new Array<boolean>(plan.reads.length).fill(false);
    this.#outcomeAt = new Array(plan.targets.length);
    this.#decoded = new Array(plan.targets.length);
    this.startedAt = ctx.clock.now();
    this.done = new Promise((r) => {
      this.#finish = r;
    });
  }

  /** Toteboxes that answered (ok or suppressed) so far. */
  get answered(): number {
    return this.#answered;
  }

  get finished(): boolean {
    return this.#result !== undefined;
  }

  /** When it finished (ms, on the context's clock); undefined while it runs. */
  get finishedAt(): number | undefined {
    return this.#result?.finishedAt;
  }

  /** Progress events after `cursor` (exclusive); `done` once the result is ready. */
  events(cursor: number, max: number): { events: ProgressEvent[]; cursor: number; done: boolean } {
    const arrived = this.#arrived;
    // Whole numbers within [0, length]: a fractional cursor or count reads as its floor, a NaN or
    // negative one as 0, never as an index no event has (limits.ts refuses such a maxEventsPerPoll;
    // service.ts passes only a whole cursor, but this is public).
    const from = Math.min(wholeAtLeast0(cursor), arrived.length);
    const to = Math.min(arrived.length, from + wholeAtLeast0(max));
    const targeted = this.plan.targets.length;
    const events: ProgressEvent[] = new Array(to - from);
    for (let k = from; k < to; k++) {
      const o = arrived[k]!;
      events[k - from] = {
        seq: k + 1,
        totebox: o.totebox,
        status: o.status,
        code: o.code,
        reason: o.reason,
        elapsedMs: o.elapsedMs,
        answered: this.#answeredAt[k]!,
        targeted,
      };
    }
    return { events, cursor: to, done: this.finished && to >= arrived.length };
  }

  /** Resolves when there is news after `cursor` or after `waitMs`. */
  waitForNews(cursor: number, waitMs: number): Promise<void> {
    if (cursor < this.#arrived.length || this.finished) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const wake = () => {
        t.cancel();
        this.#waiters.delete(wake);
        resolve();
      };
      const t = this.#ctx.scheduler.after(waitMs, wake);
      this.#waiters.add(wake);
    });
  }

  #notify(): void {
    if (this.#waiters.size === 0) return; // once per Totebox: no copy when nobody waits
    for (const w of [...this.#waiters]) w();
  }

  /** Sends the request to every target; resolves `done` when every target is settled. */
  start(): void {
    const { plan } = this;
    const ctx = this.#ctx;
    const lifetimeSeconds = Math.min(120, Math.ceil(plan.deadlineMs / 1000) + 30);
    // A capability per Totebox per read, each naming exactly one Totebox, one view (or command)
    // and this grant, batch-signed over a Merkle root: one signature per dispatch slice, signed as
    // the slice leaves. Signing all 10,000 up front held the event loop for ~0.3-1.3 s (and the
    // garbage it made for longer) before the first request could leave; per slice it is a few
    // milliseconds a turn, the first Toteboxes start at once, and each inclusion path is at most
    // log2(DISPATCH_SLICE × reads per Totebox) hashes (8 for one read, not 14 at 10,000) for every
    // Totebox to check. The cost is one more Ed25519 signature per slice at the aggregator (~0.2 µs
    // per Totebox). A Totebox's reads are all in one slice, so it still sees one root per fan-out.
    ctx.hooks?.started?.({ kind: plan.kind, targets: plan.targets.length });
    const per = plan.command ? 1 : plan.reads.length;
    // Capability ids drawn once for the whole fan-out; kept to check each receipt names its own.
    this.#ctiPool = randomBytes(16 * per * plan.targets.length);
    this.#deadline = ctx.scheduler.after(plan.deadlineMs, () => this.#onDeadline());
    // Every target is pending (and timed) from the start; the requests themselves leave in slices
    // of DISPATCH_SLICE per event-loop turn, so that 10,000 Toteboxes never block the loop long
    // enough for link keep-alives (and other operators' answers) to starve.
    const budget = Math.max(1, Math.min(plan.toteboxTimeoutMs, plan.deadlineMs));
    const started = ctx.clock.now();
    // Loops in methods, not callbacks made here: V8 keeps a closure's optimised code only while a
    // closure of it is alive, so per-Totebox work in a closure made per fan-out was compiled
    // again after most major collections (seen at the aggregator with `--log-code`).
    const all: Pending[] = new Array(plan.targets.length);
    for (let i = 0; i < all.length; i++) {
      const entry = plan.targets[i]!;
      const p: Pending = {
        entry,
        index: i,
        started,
        settled: false,
        session: undefined,
        direct: undefined,
        sessionHandle: undefined,
        lease: undefined,
        caps: [],
      };
      this.#pending.set(entry.id, p);
      all[i] = p;
    }
    this.#all = all;
    this.#dispatching = { budget, per, lifetimeSeconds };
    // Every Totebox's budget starts now, so one timer times them all out: a timer per Totebox was
    // a timer object, a closure and a cancel per Totebox per query, for the same instant.
    this.#timeout = ctx.scheduler.after(budget, () => {
      for (const p of [...this.#pending.values()]) {
        this.#settle(p, "timeout", "ORCH_ERR_TOTEBOX_TIMEOUT", `no answer within ${budget} ms`);
      }
    });
    this.#dispatch(0);
    if (plan.targets.length === 0) void this.#complete();
  }

  /** What #dispatch needs of start(): the per-Totebox budget, calls per Totebox, capability lifetime. */
  #dispatching = { budget: 0, per: 0, lifetimeSeconds: 0 };

  /**
   * Capability ids, 16 random bytes per call, target i's k-th at `16 × (i × per + k)`: drawn once
   * per fan-out, and viewed when a capability is made or a receipt checked rather than kept as a
   * view per Totebox for the whole query (fourteenth round).
   */
  #ctiPool: Uint8Array = NO_CTIS;

  /**
   * Target `p`'s k-th capability id, a view of #ctiPool made where it is used: copied into the
   * capability, compared with the receipt's, and kept only in a checked answer the console asked
   * to keep (PassedAnswer.capabilityId), which then holds the pool as it held its view before.
   */
  #cti(p: Pending, k: number): Uint8Array {
    const at = 16 * (p.index * this.#dispatching.per + k);
    return this.#ctiPool.subarray(at, at + 16);
  }

  static #dispatchLater(f: FanOut, from: number): void {
    f.#dispatch(from);
  }

  /** Signs and sends the requests of targets [from, from + DISPATCH_SLICE), then schedules the next slice. */
  #dispatch(from: number): void {
    // Cancelled, past its deadline, or every target settled (#complete empties #all): nothing
    // left to send.
    if (this.finished || this.#completing) return;
    const all = this.#all;
    const { budget, per } = this.#dispatching;
    const slice: Pending[] = [];
    const inputs: CallInput[] = [];
    for (let i = from; i < Math.min(from + DISPATCH_SLICE, all.length); i++) {
      const p = all[i]!;
      if (p.settled) continue; // cancelled, or past the deadline, before its turn
      slice.push(p);
      this.#pushInputs(p, inputs);
    }
    if (slice.length > 0) {
      let caps: Uint8Array[];
      try {
        caps = issueCallCapabilityBatch(inputs, this.#ctx.signer);
      } catch (e) {
        // The grant's window no longer covers a call (it expired between check and signing).
        // On the first slice, nothing was dispatched yet: the whole fan-out fails with that
        // reason. Otherwise what was dispatched stands, and every target not yet dispatched is
        // denied with it (partial, never silent).
        const info = errorInfo(e);
        if (from === 0) this.#failure = info;
        for (const p of all.slice(from)) this.#settle(p, "denied", info.code, info.message);
        return;
      }
      for (let j = 0; j < slice.length; j++) slice[j]!.caps = caps.slice(j * per, j * per + per);
      for (const p of slice) this.#start(p, budget);
    }
    if (from + DISPATCH_SLICE < all.length) setImmediate(FanOut.#dispatchLater, this, from + DISPATCH_SLICE);
  }

  /** Appends target `p`'s capability inputs to `out`, in the order its calls use them. */
  #pushInputs(p: Pending, out: CallInput[]): void {
    const { plan } = this;
    const { lifetimeSeconds } = this.#dispatching;
    const clock = this.#ctx.clock;
    if (plan.command) {
      out.push({
        grant: plan.grant,
        totebox: p.entry.id,
        command: plan.command.name,
        action: plan.command.name,
        cti: this.#cti(p, 0),
        lifetimeSeconds,
        clock,
      });
      return;
    }
    // One literal shape, `row` undefined when the read names none (capability.ts treats an
    // undefined row as absent): a spread of a conditional object took V8's slow clone path,
    // per Totebox per read.
    for (let k = 0; k < plan.reads.length; k++) {
      const r = plan.reads[k]!;
      out.push({
        grant: plan.grant,
        totebox: p.entry.id,
        view: r.view,
        action: "read",
        row: r.row,
        cti: this.#cti(p, k),
        lifetimeSeconds,
        clock,
      });
    }
  }

  /**
   * Starts target `p`: at once on a link that is up with a call slot free (no promise and no turn
   * per Totebox), otherwise once the pool has one for it, or says why not.
   */
  #start(p: Pending, budget: number): void {
    if (p.settled) return;
    const lease = this.#ctx.pool.tryAcquire(p.entry.id);
    if (lease === undefined) void this.#ask(p, budget);
    else this.#askOn(p, lease);
  }

  async #ask(p: Pending, budget: number): Promise<void> {
    let lease: LinkLease;
    try {
      lease = await this.#ctx.pool.acquire(p.entry.id, budget);
    } catch (e) {
      const info = errorInfo(e);
      this.#settle(p, statusOf(info.code), info.code, info.message);
      return;
    }
    if (p.settled) {
      lease.release();
      return;
    }
    this.#askOn(p, lease);
  }

  /** Sends target `p`'s request on `lease`: direct reads, or a capnweb call (#askCapnweb). */
  #askOn(p: Pending, lease: LinkLease): void {
    const { plan } = this;
    p.lease = lease;
    let handle: SessionHandle<ToteboxSessionRemote>;
    try {
      handle = lease.session(plan.grant, this.#grantKey, plan.grantExpiresAt);
    } catch (e) {
      // Called from a dispatch loop: one Totebox's failure must not stop the others' requests.
      this.#fail(p, lease, e, false);
      return;
    }
    p.session = handle.stub;
    p.sessionHandle = handle;
    // Direct reads (psp direct-read.ts) once this link's session has answered, and only to a
    // Totebox that announced them in hello (an older one would cut the link on the frame). Their
    // replies come to #onDirect; nothing here waits for them.
    if (
      !plan.command &&
      plan.reads.length > 0 &&
      handle.authorized &&
      lease.hello.directMethods?.includes(DIRECT_READ_METHOD) === true
    ) {
      this.#sendDirect(p, lease);
      return;
    }
    void this.#askCapnweb(p, lease, handle);
  }

  async #askCapnweb(
    p: Pending,
    lease: LinkLease,
    handle: SessionHandle<ToteboxSessionRemote>,
  ): Promise<void> {
    const { plan } = this;
    const session = handle.stub;
    // Set once the Totebox's reply is in hand: a failure from then on is a failure of its answer.
    let checking = false;
    try {
      if (plan.command) {
        const c = plan.command;
        const reply = (await session.command(p.caps[0]!, c.name, { ...c.args }, c.idempotencyKey)) as unknown;
        if (p.settled) return;
        checking = true;
        const checked = checkCommandReply(reply, p.entry.id, c, this.#cti(p, 0), lease);
        this.#settle(p, "ok", null, "", NO_ANSWERS, checked);
      } else {
        const raw = await this.#readCapnweb(p, session);
        // Answered: the Totebox authorized the session and holds it. Later reads on it go direct.
        handle.confirm();
        if (p.settled) return;
        checking = true;
        this.#checkReads(p, lease, raw, this.#noneDirect);
      }
    } catch (e) {
      this.#fail(p, lease, e, checking);
    }
  }

  /**
   * Settles `p` with what went wrong. A forged answer (one that fails its checks once in hand,
   * `checking`) also cuts the link.
   */
  #fail(p: Pending, lease: LinkLease, e: unknown, checking: boolean): void {
    let info = errorInfo(e);
    if (checking && isForgedAnswer(e)) this.#ctx.pool.cut(p.entry.id, lease.link, info);
    // A link torn down because the registry suspended or archived the Totebox mid-query says
    // only "link closed": report the reason the operator can act on.
    const h = this.#ctx.pool.health(p.entry.id)?.health;
    if (h === "suspended" || h === "archived") {
      info = {
        code: h === "suspended" ? "ORCH_ERR_TOTEBOX_SUSPENDED" : "ORCH_ERR_TOTEBOX_ARCHIVED",
        message: `Totebox was ${h} in the registry while the query ran`,
      };
    }
    this.#settle(p, statusOf(info.code), info.code, info.message);
  }

  /**
   * Checks every reply of this Totebox (`raw[i]` for read i, a direct reply where `viaDirect[i]`)
   * and settles it. Throws what a reply fails on: the caller settles with it as a forged answer.
   */
  #checkReads(p: Pending, lease: LinkLease, raw: readonly unknown[], viaDirect: readonly boolean[]): void {
    const { plan } = this;
    const answers: PassedAnswer[] = [];
    const decoded: DecodedResult[] = new Array(plan.reads.length);
    let suppressed = 0;
    let rows = 0;
    // Every reply is read (refused if malformed) before any is checked, as before.
    const replies: ReadReply[] = new Array(raw.length);
    for (let i = 0; i < raw.length; i++) {
      replies[i] = viaDirect[i] ? directReply(raw[i]) : capnwebReply(raw[i], plan.reads[i]!, p.entry.id);
    }
    for (let i = 0; i < plan.reads.length; i++) {
      const r = plan.reads[i]!;
      const { answer, result } = this.#checkRead(replies[i]!, r, this.#cti(p, i), p.entry.id, lease);
      answers.push(answer);
      decoded[i] = result;
      suppressed += answer.suppressedGroups;
      rows += answer.rowCount;
    }
    this.#decoded[p.index] = decoded;
    // A Totebox whose every group fell under the owner's privacy floor answered, but with nothing.
    if (rows === 0 && suppressed > 0) {
      this.#settle(
        p,
        "suppressed",
        "TOTEBOX_PRIVACY_FLOOR",
        `${suppressed} group(s) below the owner's privacy floor`,
        answers,
      );
    } else this.#settle(p, "ok", null, suppressed > 0 ? `${suppressed} group(s) suppressed` : "", answers);
  }

  /**
   * Every read of this Totebox as capnweb calls on the session stub, in the same microtask: one
   * frame out, one round trip (pipelined behind `authorize` on a new session). The session's own
   * read(capability, view, …) rather than view(name).read(…): one call per read instead of two,
   * and no view stub for the Totebox to hold and us to release.
   */
  async #readCapnweb(p: Pending, session: ToteboxSessionRemote): Promise<unknown[]> {
    return Promise.all(this.plan.reads.map((_, i) => this.#capnwebRead(p, session, i)));
  }

  /** Read `i` of this Totebox as one capnweb call on `session`. */
  #capnwebRead(p: Pending, session: ToteboxSessionRemote, i: number): Promise<unknown> {
    const r = this.plan.reads[i]!;
    return session.read(p.caps[i]!, r.view, { ...r.params }, r.row) as Promise<unknown>;
  }

  /** Which reads came back direct, for #checkReads: all of them, or none (made once per fan-out). */
  readonly #allDirect: readonly boolean[];
  readonly #noneDirect: readonly boolean[];

  /** Every target, by its place in the plan (direct reads' tags name it). */
  #all: readonly Pending[] = [];

  /** Where every direct read of this fan-out replies: tag = target index × reads + read. */
  readonly #directSink: ReplySink = {
    reply: (tag, payload) => this.#onDirect(tag, payload, undefined),
    fail: (tag, error) => this.#onDirect(tag, undefined, error),
  };

  /**
   * Every read of this Totebox as direct reads (psp direct-read.ts) under the session the link
   * already authorized: one frame per read, no capnweb objects on either side. The reply is the
   * Arrow stream and the receipt alone; everything else is a claim of the receipt. Replies go to
   * #onDirect; a read the link refuses at once (closed, too many unanswered) fails the same way.
   */
  #sendDirect(p: Pending, lease: LinkLease): void {
    const reads = this.plan.reads;
    const n = reads.length;
    const d: DirectReads = {
      ids: new Array<number>(n).fill(0),
      out: new Array<unknown>(n),
      left: n,
      retry: undefined,
      failedAt: n,
      failure: undefined,
    };
    // Set before the first send: abandon on settle (#cancelAtTotebox) reaches every read sent.
    p.direct = d;
    const link = lease.link;
    for (let k = 0; k < n; k++) {
      try {
        const payload = directReadPayload(p.caps[k]!, this.#directBodyOf(reads[k]!));
        d.ids[k] = link.requestWith(DIRECT_READ_METHOD, payload, this.#directSink, p.index * n + k);
      } catch (e) {
        this.#onDirect(p.index * n + k, undefined, e);
      }
    }
  }

  /** A direct read's reply or failure (the link's sink); the Totebox is checked once all are in. */
  #onDirect(tag: number, payload: Uint8Array[] | undefined, error: unknown): void {
    const n = this.plan.reads.length;
    const p = this.#all[Math.floor(tag / n)];
    const d = p?.direct;
    if (!p || !d) return; // settled, and its reads abandoned
    const k = tag % n;
    if (payload !== undefined) d.out[k] = payload;
    else if (errorInfo(error).code === "TOTEBOX_ERR_SESSION_UNKNOWN") {
      d.retry ??= [];
      d.retry.push(k);
    } else if (k < d.failedAt) {
      d.failedAt = k;
      d.failure = error;
    }
    if (--d.left > 0) return;
    p.direct = undefined;
    const lease = p.lease;
    if (p.settled || !lease) return;
    if (d.failedAt < n) {
      this.#fail(p, lease, d.failure, false);
      return;
    }
    if (d.retry !== undefined) {
      void this.#retryOverCapnweb(p, lease, d);
      return;
    }
    try {
      this.#checkReads(p, lease, d.out, this.#allDirect);
    } catch (e) {
      this.#fail(p, lease, e, true);
    }
  }

  /**
   * The Totebox holds no session under this grant on this link although ours is held (it
   * restarted its session table, or is not the software we think). Authorize again, once, over
   * capnweb, and send only the refused reads: their capabilities are unused (a read naming no
   * session is refused before any check), the others' were consumed by their answers.
   */
  async #retryOverCapnweb(p: Pending, lease: LinkLease, d: DirectReads): Promise<void> {
    const retry = d.retry!.sort((a, b) => a - b);
    const viaDirect: boolean[] = new Array(this.plan.reads.length).fill(true);
    let checking = false;
    try {
      p.sessionHandle?.end(true);
      const again = lease.session(this.plan.grant, this.#grantKey, this.plan.grantExpiresAt);
      p.sessionHandle = again;
      p.session = again.stub;
      const answers = await Promise.all(retry.map((i) => this.#capnwebRead(p, again.stub, i)));
      again.confirm();
      retry.forEach((i, k) => {
        d.out[i] = answers[k];
        viaDirect[i] = false;
      });
      if (p.settled) return;
      checking = true;
      this.#checkReads(p, lease, d.out, viaDirect);
    } catch (e) {
      this.#fail(p, lease, e, checking);
    }
  }

  /** The shared segment of this fan-out's direct reads: the same bytes to every Totebox. */
  readonly #directBodies = new Map<ReadSpec, Uint8Array>();
  #directBodyOf(r: ReadSpec): Uint8Array {
    let b = this.#directBodies.get(r);
    if (!b) {
      b = encodeDirectReadBody({
        grantHash: this.#grantHash,
        view: r.view,
        params: r.params,
        row: r.row ?? null,
      });
      this.#directBodies.set(r, b);
    }
    return b;
  }

  #checkRead(
    a: ReadReply,
    r: ReadSpec,
    capabilityId: Uint8Array,
    toteboxId: string,
    lease: LinkLease,
  ): { answer: PassedAnswer; result: DecodedResult } {
    if (a.arrow.byteLength > this.#ctx.limits.maxAnswerBytes) {
      throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", "answer is larger than the limit", {
        limit: this.#ctx.limits.maxAnswerBytes,
      });
    }
    const publicKey = lease.link.peer.publicKey;
    if (!publicKey) throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", "link has no peer key");
    // The receipt must be bound to these bytes, this capability and this request under the key
    // pinned for this link: an old answer replayed, or one meant for another request, is refused.
    // Its signature is checked on a sample (receipt-sampler.ts); the console checks every one.
    // checkReceipt: verifyReceipt's checks, reading the expected fields in place (we keep only
    // the counts and watermark; the console parses every receipt it verifies).
    const claims = checkReceipt({
      token: a.receipt,
      subjectPublicKey: publicKey,
      checkSignature: this.#ctx.receipts?.shouldCheck(lease.link) ?? true,
      expect: {
        arrowBytes: a.arrow,
        capabilityId,
        requestHash: this.#requestHashOf(r),
        subjectId: toteboxId,
      },
    });
    let result: DecodedResult;
    try {
      result = decodeResult(a.arrow, r.columns);
    } catch (e) {
      throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", `unreadable result: ${errorInfo(e).code}`);
    }
    if (
      result.rowCount !== claims.rowCount ||
      (a.suppressedGroups !== undefined && claims.suppressedGroups !== a.suppressedGroups)
    ) {
      throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", "row counts disagree with the receipt");
    }
    if (result.rowCount > this.#ctx.limits.maxRowsPerTotebox) {
      throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", "more rows than one Totebox may send", {
        limit: this.#ctx.limits.maxRowsPerTotebox,
      });
    }
    return {
      answer: {
        as: r.as,
        view: r.view,
        params: r.params,
        row: r.row ?? null,
        capabilityId,
        arrow: a.arrow,
        receipt: a.receipt,
        rowCount: claims.rowCount,
        suppressedGroups: claims.suppressedGroups,
        watermark: claims.watermark,
      },
      result,
    };
  }

  /** The same request goes to every Totebox: hash it once per read, not once per answer. */
  readonly #requestHashes = new Map<ReadSpec, Uint8Array>();
  #requestHashOf(r: ReadSpec): Uint8Array {
    let h = this.#requestHashes.get(r);
    if (!h) {
      h = requestHash({
        view: r.view,
        params: { ...r.params },
        ...(r.row !== undefined ? { row: r.row } : {}),
      });
      this.#requestHashes.set(r, h);
    }
    return h;
  }

  #settle(
    p: Pending,
    status: ToteboxStatus,
    code: string | null,
    reason: string,
    answers: readonly PassedAnswer[] = NO_ANSWERS,
    command: PassedCommand | null = null,
  ): void {
    if (p.settled) return; // a late answer: dropped, never merged
    p.settled = true;
    if (status !== "ok" && status !== "suppressed") {
      this.#decoded[p.index] = undefined;
      this.#cancelAtTotebox(p);
    }
    // A cached session stays for the next fan-out, unless something went wrong on it.
    // A refusal or failed call may concern the session itself (the Totebox no longer honours the
    // grant): no later fan-out reuses it. A timeout, a cancel or a lost link says nothing about it.
    p.sessionHandle?.end(status === "denied" || status === "error");
    p.sessionHandle = undefined;
    p.session = undefined;
    p.lease?.release();
    this.#pending.delete(p.entry.id);
    // Checked answers the console did not ask for are dropped at once, not held to the end.
    const keep = this.plan.keepAnswers;
    this.#record(p.index, {
      totebox: p.entry.id,
      name: p.entry.name,
      tags: plainTags(p.entry),
      status,
      code,
      reason,
      elapsedMs: this.#ctx.clock.now() - p.started,
      answers: keep ? answers : NO_ANSWERS,
      command: keep ? command : null,
    });
    if (this.#pending.size === 0) void this.#complete();
  }

  /** Tells a Totebox to stop work we no longer want (timeout, deadline, cancel). Best effort. */
  #cancelAtTotebox(p: Pending): void {
    const s = p.session;
    if (!s || !p.lease) return;
    const d = p.direct;
    if (d) {
      // Cleared first: the abandoned reads' failures (at once, from the link) find nothing to do.
      p.direct = undefined;
      for (const id of d.ids) if (id > 0) p.lease.link.abandon(id);
    }
    for (const cap of p.caps) {
      try {
        void Promise.resolve(s.cancel(cap)).catch(() => {});
      } catch {
        // the link may already be gone: nothing left to stop
      }
    }
  }

  /** Records target `index`'s outcome (its first only). */
  #record(index: number, o: ToteboxOutcome): void {
    if (this.#outcomeAt[index] !== undefined) return;
    this.#outcomeAt[index] = o;
    // Counted here, not by a walk over every outcome: each outcome's progress event carries the
    // count, and the walk made a fan-out's bookkeeping quadratic (5×10^7 steps at 10,000 Toteboxes).
    if (o.status === "ok" || o.status === "suppressed") this.#answered++;
    this.#arrived.push(o);
    this.#answeredAt.push(this.#answered);
    this.#ctx.hooks?.outcome?.(o);
    this.#notify();
  }

  #onDeadline(): void {
    for (const p of [...this.#pending.values()]) {
      this.#settle(
        p,
        "timeout",
        "ORCH_ERR_DEADLINE",
        `overall deadline of ${this.plan.deadlineMs} ms reached`,
      );
    }
  }

  /** Cancels the fan-out: pending Toteboxes are told to stop and reported as cancelled. */
  cancel(): void {
    if (this.finished || this.#failure) return;
    this.#failure = { code: "ORCH_ERR_CANCELLED", message: "cancelled by the operator" };
    for (const p of [...this.#pending.values()]) {
      this.#settle(p, "error", "ORCH_ERR_CANCELLED", "fan-out cancelled before this Totebox answered");
    }
  }

  async #complete(): Promise<void> {
    if (this.#result || this.#completing) return;
    this.#completing = true;
    // Every target is settled: nothing may reach them through the direct sink any more, and a
    // retained fan-out must not keep their leases (links, sessions) and capabilities alive.
    this.#all = [];
    // Nor its capability ids: a retained result keeps only the views its kept answers hold.
    this.#ctiPool = NO_CTIS;
    this.#deadline?.cancel();
    this.#timeout?.cancel();
    const { plan } = this;
    // Every target exactly once, in the order they were targeted.
    // #settle already dropped the answers of a fan-out that does not keep them.
    const outcomes: ToteboxOutcome[] = new Array(plan.targets.length);
    for (let i = 0; i < outcomes.length; i++) outcomes[i] = this.#outcomeAt[i]!;
    const answered = this.#answered; // every target is recorded exactly once by now
    const partial = answered < outcomes.length;
    let error = this.#failure;
    if (!error && partial && plan.mode === "abort") {
      const missing = outcomes.length - answered;
      error = {
        code: "ORCH_ERR_PARTIAL",
        message: `${missing} of ${outcomes.length} Toteboxes did not answer`,
      };
    }
    let sections: CombinedSection[] = [];
    if (!error && plan.kind !== "command") {
      try {
        sections = await this.#combine(outcomes);
      } catch (e) {
        error = errorInfo(e);
      }
    }
    this.#decoded = []; // nothing outlives the query (invariant 1)
    const result: FanOutResult = {
      id: this.id,
      kind: plan.kind,
      name: plan.name,
      params: plan.params,
      mode: plan.mode,
      targeted: outcomes.length,
      answered,
      partial,
      startedAt: this.startedAt,
      finishedAt: this.#ctx.clock.now(),
      outcomes,
      sections,
      error,
    };
    this.#result = result;
    this.#ctx.hooks?.finished?.(result);
    this.#notify();
    this.#finish(result);
  }

  async #combine(outcomes: readonly ToteboxOutcome[]): Promise<CombinedSection[]> {
    const { plan } = this;
    const results = new Map<
      string,
      { totebox: string; tags: Readonly<Record<string, string>>; result: DecodedResult }[]
    >();
    const lists = plan.reads.map((r) => {
      const list: { totebox: string; tags: Readonly<Record<string, string>>; result: DecodedResult }[] = [];
      results.set(r.as, list);
      return list;
    });
    // outcomes[i] is target i's (#complete), as #decoded[i] is.
    for (let i = 0; i < outcomes.length; i++) {
      const d = this.#decoded[i];
      if (d === undefined) continue;
      const o = outcomes[i]!;
      for (let k = 0; k < d.length; k++) lists[k]!.push({ totebox: o.totebox, tags: o.tags, result: d[k]! });
    }
    if (plan.viewport) {
      return runCombine({
        viewport: plan.viewport,
        params: plan.params as Record<string, string | number | boolean>,
        results,
        coverage: coverageOf(outcomes),
        limits: this.#ctx.limits,
      });
    }
    // A plain read: the union of the answers, each row tagged with its Totebox.
    const r = plan.reads[0]!;
    const parts = results.get(r.as) ?? [];
    const columns: ColumnSpec[] = [
      { name: "totebox", type: "string" },
      ...(parts[0]?.result.columns ?? r.columns ?? []),
    ];
    const rows: Cell[][] = [];
    for (const part of parts) {
      for (const row of part.result.rows()) {
        if (rows.length >= this.#ctx.limits.maxCombineOutputRows) {
          throw new OrchError("ORCH_ERR_COMBINE_LIMIT", "more rows than one answer may carry", {
            limit: this.#ctx.limits.maxCombineOutputRows,
          });
        }
        rows.push([part.totebox, ...columns.slice(1).map((c) => row[c.name] ?? null)]);
      }
    }
    return [{ name: r.view, title: r.view, columns, rows, chart: undefined }];
  }

  result(): FanOutResult | undefined {
    return this.#result;
  }
}

function checkCommandReply(
  reply: unknown,
  toteboxId: string,
  c: CommandSpec,
  capabilityId: Uint8Array,
  lease: LinkLease,
): PassedCommand {
  const a = reply as Partial<CommandReply> | null;
  if (
    typeof a !== "object" ||
    a === null ||
    a.totebox !== toteboxId ||
    a.command !== c.name ||
    !(a.resultBytes instanceof Uint8Array) ||
    !(a.receipt instanceof Uint8Array) ||
    typeof a.replayed !== "boolean"
  ) {
    throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", "answer is not a command reply for this request");
  }
  const publicKey = lease.link.peer.publicKey;
  if (!publicKey) throw new OrchError("ORCH_ERR_TOTEBOX_ANSWER", "link has no peer key");
  // A replayed command answers with the receipt of its first run (other capability id): check the
  // signer and the result bytes, and the capability only for a first run.
  verifyReceipt({
    token: a.receipt,
    subjectPublicKey: publicKey,
    expect: {
      arrowBytes: a.resultBytes,
      requestHash: requestHash({ command: c.name, params: { ...c.args } }),
      subjectId: toteboxId,
      ...(a.replayed ? {} : { capabilityId }),
    },
  });
  return {
    command: c.name,
    capabilityId,
    result: (a.result ?? null) as CanonicalValue,
    resultBytes: a.resultBytes,
    receipt: a.receipt,
    replayed: a.replayed,
  };
}

/**
 * An answer refused for what the Totebox said — malformed, unreadable, or a receipt that is not
 * its signature over this request — as opposed to one refused by one of our size limits (those
 * carry `detail.limit`: an honest Totebox can exceed them).
 */
function isForgedAnswer(e: unknown): boolean {
  if (e instanceof OrchError) return e.code === "ORCH_ERR_TOTEBOX_ANSWER" && e.detail?.limit === undefined;
  return isPspError(e, "PSP_ERR_RECEIPT_SIGNATURE") || isPspError(e, "PSP_ERR_RECEIPT_MISMATCH");
}

/** How a failure code reads as a Totebox status. */
export function statusOf(code: string): ToteboxStatus {
  switch (code) {
    case "ORCH_ERR_TOTEBOX_OFFLINE":
    case "ORCH_ERR_TOTEBOX_SUSPENDED":
    case "ORCH_ERR_TOTEBOX_ARCHIVED":
    case "PSP_ERR_LINK_CLOSED":
    case "PSP_ERR_TLS_HANDSHAKE":
    case "PSP_ERR_TLS_TIMEOUT":
      return "offline";
    case "ORCH_ERR_TOTEBOX_TIMEOUT":
    case "ORCH_ERR_TOTEBOX_BUSY":
    case "ORCH_ERR_DEADLINE":
    case "TOTEBOX_ERR_VIEW_TIMEOUT":
    case "TOTEBOX_ERR_VIEW_BUSY":
      return "timeout";
    case "TOTEBOX_ERR_POLICY_DENIED":
    case "TOTEBOX_ERR_SUSPENDED":
    case "TOTEBOX_ERR_VIEW_UNKNOWN":
    case "TOTEBOX_ERR_COMMAND_UNKNOWN":
      return "denied";
    default:
      return code.startsWith("PSP_ERR_CAP_") ? "denied" : "error";
  }
}
