import {
  connectPsp,
  type Identity,
  isPspError,
  openCommander,
  PspError,
  type PspLimits,
  type PspLink,
  releaseStub,
  type Scheduler,
  type TimerHandle,
} from "@os-orchestration/psp";
import type { ToteboxHello, ToteboxRemote, ToteboxSessionRemote } from "@os-orchestration/totebox";
import type pino from "pino";
import { OrchError } from "./errors.ts";
import type { OrchLimits } from "./limits.ts";
import type { Registry, RegistryDiff, ToteboxEntry } from "./registry.ts";
import { SessionCache, type SessionHandle } from "./session-cache.ts";

/**
 * The aggregator's links to its Toteboxes: one persistent PSP link per active Totebox, the
 * aggregator always the commander (it exports nothing on these links, so no handler of ours is
 * reachable from a Totebox: invariant 5).
 *
 * A link goes connecting → online → (closed) → offline → connecting … with jittered exponential
 * backoff between attempts. Handshakes are bounded by a pool-wide concurrency limit so that a
 * fleet of 10,000 coming back at once is not 10,000 simultaneous TLS handshakes (about 1 ms of
 * CPU each). A registry change replaces only the links whose address or pin changed.
 */

export type LinkHealth = "connecting" | "online" | "offline" | "suspended" | "archived";

export interface ToteboxHealth {
  readonly id: string;
  readonly health: LinkHealth;
  /** ms since the epoch of the last frame received, or null if never. */
  readonly lastContact: number | null;
  readonly lastError: { readonly code: string; readonly message: string } | null;
  readonly attempts: number;
  readonly inFlight: number;
  readonly queued: number;
  /** What the Totebox said about itself in `hello` on the current link. */
  readonly hello: ToteboxHello | null;
}

export interface PoolEvents {
  /** A link changed health (for metrics and logs). */
  health?(id: string, health: LinkHealth, error: { code: string; message: string } | null): void;
  /**
   * A Totebox broke the Diode or the frame rules, or answered with something that does not verify
   * (`cut`); its link was cut. `code` names the rule.
   */
  violation?(id: string, code: string): void;
}

export interface LinkPoolOptions {
  readonly identity: Identity;
  readonly scheduler: Scheduler;
  /** Uniform in [0, 1): backoff jitter. Injected so tests are deterministic. */
  readonly random: () => number;
  readonly limits: Readonly<OrchLimits>;
  readonly pspLimits?: Partial<PspLimits>;
  readonly logger: pino.Logger;
  readonly events?: PoolEvents;
  /** Most TLS handshakes in progress at once. Default 64. */
  readonly maxConcurrentHandshakes?: number;
}

/** A slot on one link, held while calls are outstanding on it. */
/**
 * PSP settings of the aggregator's Totebox links, under any the caller gives. Releases wait up to
 * 10 s for the next call: that outlasts a fan-out over 10,000 Toteboxes on the test machine
 * (~9 s), where at PSP's default 1 s 88% of links sent a frame of releases alone after every
 * query (measured: 1.88 frames out per Totebox per query instead of 1). A Totebox answer is a
 * few KiB, so holding it 10 s longer at the Totebox costs little.
 */
const TOTEBOX_LINK_DEFAULTS: Partial<PspLimits> = Object.freeze({ releaseDelayMs: 10_000 });

export interface LinkLease {
  readonly remote: ToteboxRemote;
  readonly link: PspLink;
  readonly hello: ToteboxHello;
  /**
   * The Totebox session for `grant` on this link (session-cache.ts): the first fan-out that
   * presents a grant authorizes it (pipelined with its reads); later fan-outs presenting the same
   * grant reuse it, so the Totebox verifies the grant's signature once per link instead of once
   * per query. `key` identifies the grant bytes (a digest); `expiresAt` is the grant's end (ms
   * since the epoch), after which the cached session is dropped. End the handle when done.
   */
  session(grant: Uint8Array, key: string, expiresAt: number): SessionHandle<ToteboxSessionRemote>;
  release(): void;
}

interface Waiter {
  resolve(lease: LinkLease): void;
  reject(e: OrchError): void;
  timer: TimerHandle | undefined;
}

/**
 * A call slot on one link. A class rather than an object of closures: a fan-out takes one per
 * Totebox per query. It keeps the link, hello and session cache it was granted on: if the link is
 * replaced meanwhile, the new one starts with an empty cache and this lease still names the old.
 */
class Lease implements LinkLease {
  readonly remote: ToteboxRemote;
  readonly link: PspLink;
  readonly hello: ToteboxHello;
  readonly #sessions: SessionCache<ToteboxSessionRemote>;
  readonly #conn: ToteboxConnection;
  readonly #freed: (c: ToteboxConnection) => void;
  #released = false;

  constructor(c: ToteboxConnection, freed: (c: ToteboxConnection) => void) {
    this.remote = c.remote!;
    this.link = c.link!;
    this.hello = c.hello!;
    this.#sessions = c.sessions;
    this.#conn = c;
    this.#freed = freed;
  }

  session(grant: Uint8Array, key: string, expiresAt: number): SessionHandle<ToteboxSessionRemote> {
    return this.#sessions.acquire(key, () => this.remote.authorize(grant), expiresAt);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#conn.inFlight--;
    this.#freed(this.#conn);
  }
}

class ToteboxConnection {
  entry: ToteboxEntry;
  health: LinkHealth = "offline";
  lastContact: number | null = null;
  lastError: { code: string; message: string } | null = null;
  attempts = 0;
  inFlight = 0;
  hello: ToteboxHello | null = null;
  link: PspLink | undefined;
  remote: ToteboxRemote | undefined;
  /** Authorized sessions on the current link by grant digest (replaced with the link). */
  sessions: SessionCache<ToteboxSessionRemote>;
  retryTimer: TimerHandle | undefined;
  /** Why we cut the current link ourselves (`cut`): reported instead of the bare close. */
  cutReason: { code: string; message: string } | undefined;
  closed = false;
  /** Callers waiting for the link to come up or for a free call slot. */
  readonly waiters: Waiter[] = [];

  constructor(entry: ToteboxEntry, sessions: SessionCache<ToteboxSessionRemote>) {
    this.entry = entry;
    this.sessions = sessions;
  }
}

export class LinkPool {
  readonly #o: LinkPoolOptions;
  readonly #conns = new Map<string, ToteboxConnection>();
  readonly #handshakeQueue: ToteboxConnection[] = [];
  #handshakes = 0;
  #closed = false;

  constructor(options: LinkPoolOptions) {
    this.#o = options;
  }

  /** Brings the pool in line with a registry (first call: connect everything active). */
  apply(registry: Registry, diff?: RegistryDiff): void {
    if (diff === undefined) {
      for (const e of registry.toteboxes) this.#add(e);
      return;
    }
    for (const e of diff.removed) this.#remove(e.id);
    for (const e of diff.added) this.#add(e);
    for (const e of diff.relinked) {
      this.#remove(e.id);
      this.#add(e);
    }
    for (const e of diff.changed) {
      const c = this.#conns.get(e.id);
      if (!c) {
        this.#add(e);
        continue;
      }
      const wasActive = c.entry.state === "active";
      c.entry = e;
      if (wasActive && e.state !== "active") this.#park(c, e.state);
      else if (!wasActive && e.state === "active") {
        c.health = "offline";
        c.attempts = 0;
        this.#queueConnect(c);
      }
    }
  }

  #add(entry: ToteboxEntry): void {
    const c = new ToteboxConnection(entry, this.#newSessions());
    this.#conns.set(entry.id, c);
    if (entry.state === "active") this.#queueConnect(c);
    else c.health = entry.state;
  }

  #remove(id: string): void {
    const c = this.#conns.get(id);
    if (!c) return;
    this.#conns.delete(id);
    c.closed = true;
    this.#teardown(c, new OrchError("ORCH_ERR_TOTEBOX_OFFLINE", "removed from the registry"));
  }

  /** Suspended or archived in the registry: no link, callers are told why at once. */
  #park(c: ToteboxConnection, state: "suspended" | "archived"): void {
    const code = state === "suspended" ? "ORCH_ERR_TOTEBOX_SUSPENDED" : "ORCH_ERR_TOTEBOX_ARCHIVED";
    this.#teardown(c, new OrchError(code, `Totebox is ${state} in the registry`));
    this.#setHealth(c, state, null);
  }

  #teardown(c: ToteboxConnection, reason: OrchError): void {
    c.retryTimer?.cancel();
    c.retryTimer = undefined;
    const link = c.link;
    c.link = undefined;
    c.remote = undefined;
    c.sessions = this.#newSessions(); // broken with the link: nothing left to release
    c.hello = null;
    link?.close();
    for (const w of c.waiters.splice(0)) {
      w.timer?.cancel();
      w.reject(reason);
    }
  }

  #setHealth(c: ToteboxConnection, h: LinkHealth, err: { code: string; message: string } | null): void {
    if (err) c.lastError = err;
    if (c.health === h) return;
    c.health = h;
    this.#o.events?.health?.(c.entry.id, h, err);
  }

  #queueConnect(c: ToteboxConnection): void {
    if (this.#closed || c.closed || c.entry.state !== "active") return;
    this.#setHealth(c, "connecting", null);
    this.#handshakeQueue.push(c);
    this.#pumpHandshakes();
  }

  #pumpHandshakes(): void {
    const max = this.#o.maxConcurrentHandshakes ?? 64;
    while (this.#handshakes < max && this.#handshakeQueue.length > 0) {
      const c = this.#handshakeQueue.shift()!;
      if (c.closed || this.#closed || c.entry.state !== "active" || c.link) continue;
      this.#handshakes++;
      void this.#connect(c).finally(() => {
        this.#handshakes--;
        this.#pumpHandshakes();
      });
    }
  }

  async #connect(c: ToteboxConnection): Promise<void> {
    const entry = c.entry;
    let link: PspLink | undefined;
    try {
      link = await connectPsp({
        identity: this.#o.identity,
        role: "commander",
        host: entry.host,
        port: entry.port,
        expect: entry.fingerprint,
        scheduler: this.#o.scheduler,
        limits: { ...TOTEBOX_LINK_DEFAULTS, ...this.#o.pspLimits },
      });
      if (c.closed || this.#closed || c.entry !== entry) {
        link.close();
        return;
      }
      const remote = openCommander<ToteboxRemote>(link);
      const hello = await withTimeout(
        remote.hello(),
        this.#o.limits.helloTimeoutMs,
        this.#o.scheduler,
        () => new OrchError("ORCH_ERR_TOTEBOX_TIMEOUT", "Totebox did not answer hello in time"),
      );
      // The pin proves which key answered; the id proves the registry entry is for this archive.
      if (!isHello(hello) || hello.id !== entry.id) {
        throw new OrchError("ORCH_ERR_TOTEBOX_IDENTITY", "Totebox says it is another archive", {
          expected: entry.id,
        });
      }
      if (c.closed || this.#closed || c.entry !== entry) {
        link.close();
        return;
      }
      this.#online(c, link, remote, hello);
    } catch (e) {
      link?.close();
      if (c.closed || this.#closed) return;
      this.#failed(c, errorInfo(e));
    }
  }

  #online(c: ToteboxConnection, link: PspLink, remote: ToteboxRemote, hello: ToteboxHello): void {
    c.link = link;
    c.remote = remote;
    c.sessions = this.#newSessions();
    c.hello = hello;
    c.attempts = 0;
    c.lastContact = this.#o.scheduler.now();
    link.on("frame-in", () => {
      c.lastContact = this.#o.scheduler.now();
    });
    link.on("violation", (err) => {
      this.#o.events?.violation?.(c.entry.id, err.code);
      this.#o.logger.warn({ totebox: c.entry.id, code: err.code }, "Totebox broke the protocol; link cut");
    });
    link.once("close", (err) => {
      if (c.link !== link) return;
      c.link = undefined;
      c.remote = undefined;
      c.sessions = this.#newSessions();
      c.hello = null;
      const cut = c.cutReason;
      c.cutReason = undefined;
      // Diode breaks arrive as `violation` events; breaks of the frame rules only as the close.
      if (!cut && err && frameRuleBroken(err)) {
        this.#o.events?.violation?.(c.entry.id, err.code);
        this.#o.logger.warn(
          { totebox: c.entry.id, code: err.code },
          "Totebox broke the frame rules; link cut",
        );
      }
      if (c.closed || this.#closed || c.entry.state !== "active") return;
      this.#failed(c, cut ?? (err ? { code: err.code, message: err.message } : linkClosed()));
    });
    this.#setHealth(c, "online", null);
    this.#o.logger.info({ totebox: c.entry.id }, "link online");
    this.#grantWaiters(c);
  }

  #failed(c: ToteboxConnection, err: { code: string; message: string }): void {
    this.#setHealth(c, "offline", err);
    // Callers waiting for this link fail fast with the reason rather than waiting out their timeout.
    for (const w of c.waiters.splice(0)) {
      w.timer?.cancel();
      w.reject(
        new OrchError("ORCH_ERR_TOTEBOX_OFFLINE", `Totebox offline: ${err.code}`, { cause: err.code }),
      );
    }
    c.attempts++;
    // Full jitter: uniform in [base, min(max, base·2^attempts)], so a fleet that dropped together
    // does not come back together.
    const { reconnectBaseMs: base, reconnectMaxMs: max } = this.#o.limits;
    const ceiling = Math.min(max, base * 2 ** Math.min(c.attempts, 20));
    const delay = base + Math.floor(this.#o.random() * Math.max(0, ceiling - base));
    this.#o.logger.debug({ totebox: c.entry.id, code: err.code, delay }, "link down; reconnecting");
    c.retryTimer = this.#o.scheduler.after(delay, () => {
      c.retryTimer = undefined;
      this.#queueConnect(c);
    });
  }

  /** A lease was released: its slot may go to a waiter (one function for every lease). */
  readonly #leaseFreed = (c: ToteboxConnection): void => this.#grantWaiters(c);

  #grantWaiters(c: ToteboxConnection): void {
    while (c.waiters.length > 0 && c.remote && c.inFlight < this.#o.limits.maxCallsPerLink) {
      const w = c.waiters.shift()!;
      w.timer?.cancel();
      w.resolve(this.#lease(c));
    }
  }

  #newSessions(): SessionCache<ToteboxSessionRemote> {
    const scheduler = this.#o.scheduler;
    return new SessionCache<ToteboxSessionRemote>(this.#o.limits.maxSessionsPerLink, releaseStub, () =>
      scheduler.now(),
    );
  }

  #lease(c: ToteboxConnection): LinkLease {
    c.inFlight++;
    return new Lease(c, this.#leaseFreed);
  }

  /**
   * A call slot at once when the Totebox's link is up with a slot free; otherwise undefined, and
   * `acquire` waits for one or says why not. A fan-out takes one per Totebox per query: this way
   * without a promise and an event-loop turn each.
   */
  tryAcquire(id: string): LinkLease | undefined {
    const c = this.#conns.get(id);
    if (!c || c.health === "suspended" || c.health === "archived") return undefined;
    return this.#freeSlot(c);
  }

  /** A lease on `c` if its link is up with a call slot free (the caller has checked its state). */
  #freeSlot(c: ToteboxConnection): LinkLease | undefined {
    return c.remote && c.inFlight < this.#o.limits.maxCallsPerLink ? this.#lease(c) : undefined;
  }

  /**
   * A call slot on a Totebox's link. Waits up to `waitMs` for a link that is still connecting or
   * for a free slot; refuses at once when the Totebox is known to be offline, suspended or archived.
   */
  acquire(id: string, waitMs: number): Promise<LinkLease> {
    const c = this.#conns.get(id);
    if (!c) return Promise.reject(new OrchError("ORCH_ERR_TOTEBOX_OFFLINE", "not in the registry"));
    if (c.health === "suspended" || c.health === "archived") {
      const code = c.health === "suspended" ? "ORCH_ERR_TOTEBOX_SUSPENDED" : "ORCH_ERR_TOTEBOX_ARCHIVED";
      return Promise.reject(new OrchError(code, `Totebox is ${c.health} in the registry`));
    }
    const now = this.#freeSlot(c);
    if (now !== undefined) return Promise.resolve(now);
    if (c.health === "offline") {
      const why = c.lastError?.code ?? "not connected";
      return Promise.reject(
        new OrchError("ORCH_ERR_TOTEBOX_OFFLINE", `Totebox offline: ${why}`, { cause: why }),
      );
    }
    return new Promise<LinkLease>((resolve, reject) => {
      const w: Waiter = { resolve, reject, timer: undefined };
      w.timer = this.#o.scheduler.after(waitMs, () => {
        const i = c.waiters.indexOf(w);
        if (i >= 0) c.waiters.splice(i, 1);
        reject(
          c.remote
            ? new OrchError("ORCH_ERR_TOTEBOX_BUSY", "no free call slot on the link in time")
            : new OrchError("ORCH_ERR_TOTEBOX_TIMEOUT", "link did not come up in time"),
        );
      });
      c.waiters.push(w);
    });
  }

  /**
   * Cuts a Totebox's link because it answered with something that does not verify (a receipt
   * signed by another key, an answer replayed from another request, unreadable Arrow): a peer
   * that forges once is not trusted with the calls still queued on that link. The link comes back
   * through the usual backoff; `reason` becomes its last error and is reported as a violation.
   * Does nothing if `link` is no longer the Totebox's current link.
   */
  cut(id: string, link: PspLink, reason: { code: string; message: string }): void {
    const c = this.#conns.get(id);
    if (!c || c.link !== link || link.closed) return;
    c.cutReason = reason;
    this.#o.events?.violation?.(id, reason.code);
    this.#o.logger.warn({ totebox: id, code: reason.code }, "Totebox answered with a forgery; link cut");
    link.close(new PspError("PSP_ERR_LINK_CLOSED", "link cut: the Totebox's answer did not verify"));
  }

  /** The live link of a Totebox (internal: frame-counting tests). */
  linkOf(id: string): PspLink | undefined {
    return this.#conns.get(id)?.link;
  }

  health(id: string): ToteboxHealth | undefined {
    const c = this.#conns.get(id);
    return c && snapshot(c);
  }

  all(): ToteboxHealth[] {
    return [...this.#conns.values()].map(snapshot);
  }

  counts(): Record<LinkHealth, number> {
    const out: Record<LinkHealth, number> = {
      connecting: 0,
      online: 0,
      offline: 0,
      suspended: 0,
      archived: 0,
    };
    for (const c of this.#conns.values()) out[c.health]++;
    return out;
  }

  /** Resolves once no link is still making its first attempt (or at once if none is). */
  async settled(timeoutMs: number): Promise<void> {
    const deadline = this.#o.scheduler.now() + timeoutMs;
    while (this.#o.scheduler.now() < deadline) {
      if (![...this.#conns.values()].some((c) => c.health === "connecting")) return;
      await new Promise<void>((r) => this.#o.scheduler.after(20, r));
    }
  }

  close(): void {
    this.#closed = true;
    this.#handshakeQueue.length = 0;
    for (const c of this.#conns.values()) {
      c.closed = true;
      this.#teardown(c, new OrchError("ORCH_ERR_TOTEBOX_OFFLINE", "aggregator is shutting down"));
    }
    this.#conns.clear();
  }
}

function snapshot(c: ToteboxConnection): ToteboxHealth {
  return {
    id: c.entry.id,
    health: c.health,
    lastContact: c.lastContact,
    lastError: c.lastError,
    attempts: c.attempts,
    inFlight: c.inFlight,
    queued: c.waiters.length,
    hello: c.hello,
  };
}

/**
 * Whether a link closed because the Totebox broke the frame rules, rather than because the
 * network failed or we shut it down. (Our own outgoing frames to a Totebox are a grant and a few
 * capabilities, far below any frame limit, so PSP_ERR_FRAME_TOO_LARGE here is the peer's frame.)
 */
function frameRuleBroken(err: PspError): boolean {
  switch (err.code) {
    case "PSP_ERR_FRAME_TOO_LARGE":
    case "PSP_ERR_FRAME_MALFORMED":
    case "PSP_ERR_FRAME_KIND":
    case "PSP_ERR_MESSAGE_MALFORMED":
      return true;
    case "PSP_ERR_IDLE_TIMEOUT":
      // Bytes kept arriving without completing a frame (a trickle). A peer that merely went
      // silent (crash, network) times out between frames: offline, not hostile.
      return err.detail?.midFrame === true;
    default:
      return false;
  }
}

function linkClosed(): { code: string; message: string } {
  return { code: "PSP_ERR_LINK_CLOSED", message: "link closed" };
}

/** Code and message of a failure, safe to log and to show (PSP messages never carry secrets). */
export function errorInfo(e: unknown): { code: string; message: string } {
  if (e instanceof OrchError || isPspError(e)) return { code: e.code, message: e.message };
  const code = (e as { code?: unknown } | null)?.code;
  const message = (e as { message?: unknown } | null)?.message;
  return {
    code: typeof code === "string" && /^[A-Z][A-Z0-9_]{2,63}$/.test(code) ? code : "ORCH_ERR_INTERNAL",
    message: typeof message === "string" ? message.slice(0, 300) : "unexpected failure",
  };
}

function isHello(v: unknown): v is ToteboxHello {
  const h = v as Partial<ToteboxHello> | null;
  return (
    typeof h === "object" &&
    h !== null &&
    typeof h.id === "string" &&
    typeof h.name === "string" &&
    typeof h.kind === "string" &&
    (h.state === "active" || h.state === "suspended") &&
    Array.isArray(h.views) &&
    // Optional (an older Totebox leaves it out); when present, a short list of u32 methods.
    (h.directMethods === undefined ||
      (Array.isArray(h.directMethods) &&
        h.directMethods.length <= 16 &&
        h.directMethods.every((m) => Number.isInteger(m) && m >= 0 && m <= 0xffff_ffff)))
  );
}

/** Races a promise against a scheduler timer; the loser is ignored. */
export function withTimeout<T>(
  p: Promise<T>,
  ms: number,
  scheduler: Scheduler,
  onTimeout: () => Error,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = scheduler.after(ms, () => reject(onTimeout()));
    p.then(
      (v) => {
        t.cancel();
        resolve(v);
      },
      (e) => {
        t.cancel();
        reject(e);
      },
    );
  });
}
