import { sign as edSign } from "node:crypto";
import {
  BatchRootCache,
  type Clock,
  decodeUnverified,
  type Identity,
  isPspError,
  listenPsp,
  MemoryReplayStore,
  PspError,
  type PspLimits,
  type PspLink,
  type PspServer,
  pairingProof,
  rawEd25519PublicKey,
  type Scheduler,
  serveSubject,
  systemClock,
  systemScheduler,
  type TimerHandle,
  type TrustedOperators,
  type VerifiedCall,
  type VerifiedGrant,
  verifyCallChain,
  verifyPairingProof,
} from "@os-orchestration/psp";
import pino from "pino";
import { type OpenedArchive, openArchive } from "./archive.ts";
import { type AuditEntryInput, AuditLog } from "./audit-log.ts";
import { ToteboxError } from "./errors.ts";
import { type PeerRecord, PeerRegistry, trustPeer } from "./peers.ts";
import { type Policy, PolicyStore } from "./policy.ts";
import { type LifecycleState, readState } from "./runtime-schema.ts";
import type { Db } from "./schema.ts";
import { directReadHandler, ReadCancellations, ToteboxMain } from "./subject.ts";
import {
  createInProcessViewRunner,
  createPooledViewRunner,
  type ViewPoolLimits,
  type ViewRunner,
} from "./view-runner.ts";

export interface ToteboxServerOptions {
  dir: string;
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  clock?: Clock;
  scheduler?: Scheduler;
  /** "pool" (default): queries in killable child processes; "in-process": for tiny archives and tests. */
  viewRunner?: "pool" | "in-process";
  /** Limits of the "pool" runner (children, pending requests, ...); defaults DEFAULT_VIEW_POOL_LIMITS. */
  viewPool?: Partial<ViewPoolLimits>;
  limits?: Partial<PspLimits>;
  /** pino logger; default JSON to stderr at level from TOTEBOX_LOG_LEVEL or "info". */
  logger?: pino.Logger;
  /** How often pairing changes made by the CLI are picked up, in ms. Default 500. */
  peerRefreshMs?: number;
}

export interface ToteboxStats {
  /** Views whose SQL actually ran: only after the capability chain and the policy allowed it. */
  viewsExecuted: number;
  /** Commands actually executed (idempotent replays included: they return the stored answer). */
  commandsExecuted: number;
  diodeViolations: number;
  refusedConnections: number;
  /** Reads stopped by a cancel: dropped from the queue, killed while running, or refused on arrival. */
  readsCancelled: number;
}

/** What the subject's RpcTargets see of the running Totebox. */
export interface ToteboxRuntime {
  readonly dir: string;
  readonly db: Db;
  readonly identity: Identity;
  readonly entity: OpenedArchive["entity"];
  readonly clock: Clock;
  readonly runner: ViewRunner;
  readonly auditLog: AuditLog;
  readonly stats: ToteboxStats;
  readonly trustedOperators: TrustedOperators;
  /** Reads in flight by capability id, and the ids cancelled before their read arrived. */
  readonly reads: ReadCancellations;
  policy(): Policy;
  state(): LifecycleState;
  requireActive(): void;
  verifyCall(
    grant: VerifiedGrant,
    capability: Uint8Array,
    request: { view?: string; command?: string; action: string; row?: string },
  ): VerifiedCall;
  /**
   * Checks a capability presented to cancel its read: the full chain under the session's grant,
   * for the request the capability itself names, but without touching the replay store (the read
   * already consumed that id, or will).
   */
  verifyCancel(grant: VerifiedGrant, capability: Uint8Array): VerifiedCall;
  /**
   * Appends to the audit log; resolves once the entry is committed (group commit). Answer a call
   * only after this resolves: every answered call is in the log before its answer leaves.
   */
  audit(entry: AuditEntryInput): Promise<void>;
  onStateChange(state: LifecycleState): void;
  completePairing(
    link: PspLink,
    proof: Uint8Array,
  ): Promise<{ proof: Uint8Array; totebox: string; deviceId: string; kind: string }>;
  rawKeyHexOfLinkPeer(link: PspLink): string;
}

/**
 * A running Totebox: the archive, its policy, its audit log and a PSP listener in the subject
 * role. Only paired aggregators get a full link; while the owner offers a pairing code, unknown
 * peers get a link on which only `hello` and `pair` do anything.
 */
export class ToteboxServer implements ToteboxRuntime {
  readonly dir: string;
  readonly db: Db;
  readonly identity: Identity;
  readonly entity: OpenedArchive["entity"];
  readonly clock: Clock;
  readonly runner: ViewRunner;
  readonly auditLog: AuditLog;
  readonly stats: ToteboxStats = {
    viewsExecuted: 0,
    commandsExecuted: 0,
    diodeViolations: 0,
    refusedConnections: 0,
    readsCancelled: 0,
  };
  readonly log: pino.Logger;
  readonly trustedOperators: TrustedOperators;
  readonly reads: ReadCancellations;

  readonly #policy: PolicyStore;
  readonly #peers: PeerRegistry;
  readonly #replay: MemoryReplayStore;
  /** Batch roots this Totebox has verified: several capabilities of one fan-out, one Ed25519 check. */
  readonly #batchRoots = new BatchRootCache();
  readonly #scheduler: Scheduler;
  #psp: PspServer | undefined;
  #state: LifecycleState;
  #refreshTimer: TimerHandle | undefined;
  #closed = false;

  private constructor(archive: OpenedArchive, options: ToteboxServerOptions) {
    this.dir = archive.paths.dir;
    this.db = archive.db;
    this.identity = archive.identity;
    this.entity = archive.entity;
    this.clock = options.clock ?? systemClock;
    this.#scheduler = options.scheduler ?? systemScheduler;
    this.log =
      options.logger ??
      pino(
        { level: process.env.TOTEBOX_LOG_LEVEL ?? "info", base: { totebox: archive.entity.id } },
        pino.destination(2),
      );
    this.#policy = new PolicyStore({ file: archive.paths.policy, db: archive.db });
    this.#policy.on("reload", (r: { ok: boolean; error?: Error }) => {
      if (r.ok) this.log.info({ digest: this.#policy.current.digest }, "policy reloaded");
      else this.log.error({ err: r.error?.message }, "policy change refused; keeping the previous policy");
    });
    this.runner =
      options.viewRunner === "in-process"
        ? createInProcessViewRunner(archive.paths.db)
        : createPooledViewRunner(archive.paths.db, options.viewPool ? { limits: options.viewPool } : {});
    this.auditLog = new AuditLog(archive.db, {
      sign: (body) => edSign(null, body, archive.identity.privateKey),
      origin: `os-totebox/${archive.entity.id}`,
      now: () => this.clock.now(),
    });
    this.#replay = new MemoryReplayStore(this.clock);
    this.reads = new ReadCancellations();
    this.#peers = new PeerRegistry(archive.db, (p) => this.#onRevoked(p));
    this.trustedOperators = (keyId) => {
      const p = this.#peers.operator(keyId);
      return p
        ? { publicKey: p.publicKey, ...(p.tenants.length > 0 ? { tenants: p.tenants } : {}) }
        : undefined;
    };
    this.#state = readState(archive.db);
  }

  static async start(options: ToteboxServerOptions): Promise<ToteboxServer> {
    const archive = await openArchive(options.dir);
    const server = new ToteboxServer(archive, options);
    try {
      server.#policy.watch();
      server.#psp = await listenPsp({
        identity: archive.identity,
        role: "subject",
        host: options.host ?? "127.0.0.1",
        port: options.port ?? 0,
        ...(options.limits ? { limits: options.limits } : {}),
        scheduler: server.#scheduler,
        authorize: (peer) => {
          server.#peers.refresh();
          const agg = server.#peers.aggregator(peer.fingerprint);
          if (agg) return { ok: true, label: `aggregator:${agg.label}` };
          if (server.#openOffers().length > 0) return { ok: true, label: "pairing" };
          return {
            ok: false,
            code: "PSP_ERR_PEER_UNKNOWN",
            reason: "certificate is not paired with this Totebox",
          };
        },
        onRefused: (e) => {
          server.stats.refusedConnections++;
          server.log.warn(
            { code: e.code, reason: e.reason, remote: e.remote, fingerprint: e.fingerprint },
            "connection refused",
          );
        },
        onLink: (link) => server.#onLink(link),
      });
      server.#armRefresh(options.peerRefreshMs ?? 500);
      server.log.info(
        { address: server.address, deviceId: archive.identity.fingerprint, state: server.#state },
        "os-totebox serving",
      );
      return server;
    } catch (e) {
      await server.close();
      throw e;
    }
  }

  get address(): { host: string; port: number } {
    if (!this.#psp) throw new ToteboxError("TOTEBOX_ERR_ARCHIVE", "server not listening");
    return this.#psp.address;
  }

  get links(): ReadonlySet<PspLink> {
    return this.#psp?.links ?? new Set();
  }

  policy(): Policy {
    return this.#policy.current;
  }

  state(): LifecycleState {
    return this.#state;
  }

  requireActive(): void {
    if (this.#state !== "active") {
      throw new ToteboxError("TOTEBOX_ERR_SUSPENDED", "this Totebox is suspended and answers only hello");
    }
  }

  onStateChange(state: LifecycleState): void {
    this.#state = state;
    this.log.info({ state }, "lifecycle state changed");
  }

  verifyCall(
    grant: VerifiedGrant,
    capability: Uint8Array,
    request: { view?: string; command?: string; action: string; row?: string },
  ): VerifiedCall {
    // Pick up revocations committed by the CLI before trusting anything.
    this.#peers.refresh();
    return verifyCallChain({
      grant,
      capability,
      trustedOperators: this.trustedOperators,
      aggregatorId: grant.claims.aud,
      totebox: { id: this.entity.id, tags: this.entity.tags },
      request,
      clock: this.clock,
      replayStore: this.#replay,
      batchRoots: this.#batchRoots,
    });
  }

  verifyCancel(grant: VerifiedGrant, capability: Uint8Array): VerifiedCall {
    this.#peers.refresh();
    // The request is what the capability names; the chain check below proves those claims were
    // signed by the grant's aggregator for this Totebox, so nothing here trusts unverified bytes.
    const claims = decodeUnverified(capability).claims;
    if (claims.kind !== "call") throw new PspError("PSP_ERR_CAP_MALFORMED", "not a call capability");
    return verifyCallChain({
      grant,
      capability,
      trustedOperators: this.trustedOperators,
      aggregatorId: grant.claims.aud,
      totebox: { id: this.entity.id, tags: this.entity.tags },
      request: {
        action: claims.action,
        ...(claims.view !== undefined ? { view: claims.view } : {}),
        ...(claims.command !== undefined ? { command: claims.command } : {}),
        ...(claims.row !== undefined ? { row: claims.row } : {}),
      },
      clock: this.clock,
      // A throwaway store: a cancel neither consults nor burns the id its read consumed.
      replayStore: new MemoryReplayStore(this.clock, { maxEntries: 1 }),
      batchRoots: this.#batchRoots,
    });
  }

  async audit(entry: AuditEntryInput): Promise<void> {
    try {
      await this.auditLog.appendQueued(entry);
    } catch (e) {
      // The audit log refusing an entry is a bug worth shouting about, never a reason to answer.
      this.log.error({ err: (e as Error).message, action: entry.action }, "audit append failed");
      throw e;
    }
  }

  /** For events that answer no call (revocations, Diode cuts): logged, never thrown at a caller. */
  #auditEvent(entry: AuditEntryInput): void {
    this.audit(entry).catch(() => undefined);
  }

  rawKeyHexOfLinkPeer(link: PspLink): string {
    const pk = link.peer.publicKey;
    return pk ? rawEd25519PublicKey(pk).toString("hex") : "";
  }

  async completePairing(link: PspLink, proof: Uint8Array) {
    const offers = this.#openOffers();
    const now = this.clock.now();
    const audit = (outcome: string, target: string | null): Promise<void> =>
      this.audit({
        peer: link.peer.fingerprint,
        operator: null,
        tenant: null,
        action: "pair",
        target,
        capability: null,
        outcome,
      });
    if (link.peer.label !== "pairing" || offers.length === 0 || !link.peer.publicKey) {
      await audit("TOTEBOX_ERR_PAIRING", null);
      throw new ToteboxError("TOTEBOX_ERR_PAIRING", "no pairing code is on offer for this link");
    }
    for (const offer of offers) {
      const input = {
        code: offer.code,
        initiatorFingerprint: link.peer.fingerprint,
        responderFingerprint: this.identity.fingerprint,
      };
      if (!verifyPairingProof({ ...input, side: "initiator" }, proof)) continue;
      const peer = trustPeer(this.db, {
        kind: offer.kind,
        label: offer.label,
        publicKey: link.peer.publicKey,
        fingerprint: link.peer.fingerprint,
        tenants: JSON.parse(offer.tenants) as string[],
        roles: JSON.parse(offer.roles) as string[],
        now,
      });
      this.db
        .prepare("UPDATE pairing_offers SET used_at = ?, outcome = 'paired' WHERE code = ?")
        .run(now, offer.code);
      this.#peers.afterLocalWrite();
      await audit("ok", `${peer.kind}:${peer.label}`);
      this.log.info({ kind: peer.kind, label: peer.label, fingerprint: link.peer.fingerprint }, "paired");
      return {
        proof: pairingProof({ ...input, side: "responder" }),
        totebox: this.entity.id,
        deviceId: this.identity.fingerprint,
        kind: peer.kind,
      };
    }
    // A wrong proof burns every open code: guessing gets one try per code the owner printed.
    this.db
      .prepare("UPDATE pairing_offers SET used_at = ?, outcome = 'burned' WHERE used_at IS NULL")
      .run(now);
    await audit("TOTEBOX_ERR_PAIRING", null);
    this.log.warn({ fingerprint: link.peer.fingerprint }, "wrong pairing proof: open codes burned");
    // Close the link once this refusal has been sent (the answer leaves when the prover pulls it,
    // usually in its next frame): closing it now would leave the prover a bare closed link
    // instead of TOTEBOX_ERR_PAIRING. A clean close flushes what was written; a prover that never
    // pulls is cut by the idle timeout, and this link can no longer pair or authorize anyway.
    link.once("frame-out", () => setImmediate(() => link.close()));
    throw new ToteboxError("TOTEBOX_ERR_PAIRING", "pairing proof refused; the code is no longer valid");
  }

  /** Closes every live link of a peer (called when the CLI revokes or unpairs it). */
  #onRevoked(peer: PeerRecord): void {
    if (peer.kind === "aggregator" && peer.fingerprint) {
      const n =
        this.#psp?.closePeer(peer.fingerprint, new PspError("PSP_ERR_LINK_CLOSED", "aggregator unpaired")) ??
        0;
      this.log.info({ label: peer.label, closed: n }, "aggregator revoked: links closed");
    } else {
      // Operator sessions fail their next call: verifyCallChain re-checks operator trust each time.
      this.log.info({ label: peer.label }, "operator revoked: its grants are refused from now on");
    }
    this.#auditEvent({
      peer: "local",
      operator: peer.kind === "operator" ? peer.keyId : null,
      tenant: null,
      action: "revoke",
      target: `${peer.kind}:${peer.label}`,
      capability: null,
      outcome: "ok",
    });
  }

  #openOffers() {
    return this.db
      .prepare<
        [number],
        { code: string; kind: "aggregator" | "operator"; label: string; tenants: string; roles: string }
      >(
        "SELECT code, kind, label, tenants, roles FROM pairing_offers WHERE used_at IS NULL AND expires_at > ?",
      )
      .all(this.clock.now());
  }

  #onLink(link: PspLink): void {
    const pairingOnly = link.peer.label === "pairing";
    link.on("violation", (err) => {
      this.stats.diodeViolations++;
      this.log.warn({ peer: link.peer.label, rule: err.detail?.rule }, "Diode violation: link cut");
      this.#auditEvent({
        peer: link.peer.fingerprint,
        operator: null,
        tenant: null,
        action: "diode",
        target: null,
        capability: null,
        outcome: "PSP_ERR_DIODE",
        detail: { rule: String(err.detail?.rule ?? "").slice(0, 200) },
      });
    });
    link.on("close", (err) => {
      if (err && err.code !== "PSP_ERR_LINK_CLOSED")
        this.log.info({ peer: link.peer.label, code: err.code }, "link closed");
    });
    serveSubject(link, new ToteboxMain(this, link, pairingOnly));
    // Direct reads (psp direct-read.ts) only under sessions authorized on this link: a
    // pairing-only link authorizes none, so every direct read there is refused.
    link.serveRequests(directReadHandler(this, link));
  }

  #armRefresh(ms: number): void {
    this.#refreshTimer = this.#scheduler.after(ms, () => {
      if (this.#closed) return;
      try {
        this.#peers.refresh();
        const s = readState(this.db);
        if (s !== this.#state) this.onStateChange(s);
      } catch (e) {
        this.log.error({ err: (e as Error).message }, "peer refresh failed");
      }
      this.#armRefresh(ms);
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#refreshTimer?.cancel();
    this.#policy.close();
    await this.#psp?.close();
    await this.runner.close();
    // Entries still queued (answers that will never leave) are committed, never dropped; a
    // failed commit rejects them, and audit() has logged that.
    this.auditLog.flush();
    this.db.close();
  }
}

export function isRefusal(e: unknown): boolean {
  return isPspError(e) || e instanceof ToteboxError;
}
