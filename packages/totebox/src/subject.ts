import {
  CAPABILITY_LIMITS,
  type CanonicalValue,
  DIRECT_READ_METHOD,
  type DirectReadRequest,
  type DirectRequestHandler,
  decodeDirectReadRequest,
  decodeUnverified,
  encodeDirectReadReply,
  encodeResult,
  isPspError,
  PspError,
  type PspLink,
  requestHash,
  signReceipt,
  type VerifiedCall,
  type VerifiedGrant,
  verifyGrant,
} from "@os-orchestration/psp";
import { RpcTarget } from "capnweb";
import { COMMAND_DESCRIPTIONS, COMMAND_NAMES, runCommand, watermark } from "./commands.ts";
import { ToteboxError } from "./errors.ts";
import { canRead, canRun, type Policy, validateParams, viewCatalogue } from "./policy.ts";
import type { ToteboxRuntime } from "./server.ts";
import type { ViewResult } from "./view-runner.ts";

/**
 * What a Totebox serves over PSP, as a subject. Every public method here is remotely callable
 * (capnweb exposes an RpcTarget's public methods), so state and helpers live in #private fields.
 *
 * Order of checks for every read and command, enforced here and counted by the runtime's stats:
 *   lifecycle state → the capability chain (operator → grant → aggregator → capability → request)
 *   → the owner's policy → parameter validation → only then SQL or the command.
 * Every outcome, refusals included, is appended to the audit log, and a call is answered only once
 * its entry is committed (`rt.audit` resolves after the group commit that holds it).
 *
 * Cancellation: `cancel(capability)` stops the read that capability authorised (see
 * ReadCancellations), so an aggregator whose operator gave up, or whose per-Totebox timeout fired,
 * does not leave the Totebox computing an answer nobody will read.
 */

export interface ReadAnswer {
  readonly totebox: string;
  readonly view: string;
  /** Arrow IPC stream; arrives 8-aligned at the commander (zero-copy decode). */
  readonly arrow: Uint8Array;
  /** COSE_Sign1 receipt over the answer, signed by this Totebox. */
  readonly receipt: Uint8Array;
  readonly rowCount: number;
  readonly suppressedGroups: number;
  readonly watermark: string;
}

export interface CommandReply {
  readonly totebox: string;
  readonly command: string;
  readonly result: CanonicalValue;
  readonly resultBytes: Uint8Array;
  readonly receipt: Uint8Array;
  readonly replayed: boolean;
}

export interface CancelReply {
  /** True if a read was stopped by this cancel. */
  readonly cancelled: boolean;
  /**
   * Where the read was: running (its SQL had started), queued (waiting for the view runner), or
   * unknown (already answered, or not arrived yet: it will then be refused on arrival).
   */
  readonly state: "running" | "queued" | "unknown";
}

/** Bounds of the cancellation bookkeeping. */
export const CANCEL_LIMITS = Object.freeze({
  /**
   * Capability ids remembered as cancelled before their read arrived. Beyond it the oldest is
   * forgotten: only verified capabilities get here, so only a paired aggregator can fill it, and
   * what it then loses is the protection of its own earlier cancels against a late read.
   */
  maxRemembered: 10_000,
});

interface ReadInFlight {
  readonly controller: AbortController;
  started: boolean;
}

/**
 * The Totebox's reads in flight, by capability id (lowercase hex), and the ids cancelled before
 * their read arrived. A read registers after its capability chain verified and deregisters once
 * its SQL settled: from then on its answer is being signed and audited, and a cancel finds it
 * "unknown" (the answer the aggregator will drop costs nothing more to finish).
 *
 * Race handled: the aggregator may send cancel while its read is still on the wire (pipelined
 * behind other calls, or on a congested link). The cancel then finds no read, remembers the id
 * until the capability could no longer verify anyway (exp + skew), and the read is refused with
 * TOTEBOX_ERR_CANCELLED on arrival, before any SQL.
 */
export class ReadCancellations {
  readonly #inFlight = new Map<string, ReadInFlight>();
  /** cti hex → remember until (ms since the epoch); Map order = insertion order = eviction order. */
  readonly #cancelled = new Map<string, number>();
  readonly #max: number;

  constructor(maxRemembered: number = CANCEL_LIMITS.maxRemembered) {
    if (!Number.isSafeInteger(maxRemembered) || maxRemembered < 1) {
      throw new RangeError("maxRemembered must be a positive integer");
    }
    this.#max = maxRemembered;
  }

  /** Registers a verified read; throws TOTEBOX_ERR_CANCELLED if its cancel came first. */
  begin(cti: string, nowMs: number): { readonly signal: AbortSignal; readonly onStart: () => void } {
    const until = this.#cancelled.get(cti);
    if (until !== undefined) {
      this.#cancelled.delete(cti);
      if (until >= nowMs) {
        throw new ToteboxError("TOTEBOX_ERR_CANCELLED", "this read was cancelled before it arrived");
      }
    }
    const flight: ReadInFlight = { controller: new AbortController(), started: false };
    this.#inFlight.set(cti, flight);
    return {
      signal: flight.controller.signal,
      onStart: () => {
        flight.started = true;
      },
    };
  }

  /** The read's SQL settled (answered, failed or cancelled): it can no longer be cancelled. */
  end(cti: string): void {
    this.#inFlight.delete(cti);
  }

  /** Cancels the read with this id, or remembers the id until `keepUntilMs` if no read has it. */
  cancel(cti: string, keepUntilMs: number, nowMs: number): CancelReply {
    const flight = this.#inFlight.get(cti);
    if (flight !== undefined) {
      this.#inFlight.delete(cti);
      const state = flight.started ? "running" : "queued";
      flight.controller.abort();
      return { cancelled: true, state };
    }
    if (keepUntilMs >= nowMs) {
      this.#cancelled.delete(cti); // re-inserted at the end: a repeated cancel is the newest
      this.#cancelled.set(cti, keepUntilMs);
      for (const [old, until] of this.#cancelled) {
        if (this.#cancelled.size <= this.#max && until >= nowMs) break;
        this.#cancelled.delete(old);
      }
    }
    return { cancelled: false, state: "unknown" };
  }

  /** Reads registered and not settled. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** Ids remembered as cancelled (expired ones included until evicted). */
  get remembered(): number {
    return this.#cancelled.size;
  }
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

function ctiHex(capability: unknown): string | null {
  if (!(capability instanceof Uint8Array)) return null;
  try {
    return Buffer.from(decodeUnverified(capability).claims.cti).toString("hex").slice(0, 128);
  } catch {
    return null;
  }
}

function codeOf(e: unknown): string {
  const c = (e as { code?: unknown })?.code;
  return typeof c === "string" && /^[A-Z][A-Z0-9_]{2,63}$/.test(c) ? c : "TOTEBOX_ERR_INTERNAL";
}

function asBytes(v: unknown, what: string): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new PspError("PSP_ERR_CAP_MALFORMED", `${what} must be bytes`);
  return v;
}

/**
 * The audit log is not a view (no SQL, so the policy cannot declare it, and a rule's list of
 * views may name only declared views): a rule whose views are "*" covers it, as the default
 * policy says. A view the owner named "audit" would be checked like any other view.
 */
function canReadAudit(policy: Policy, tenant: string, operator: string): boolean {
  if (canRead(policy, { tenant, operator, view: "audit" })) return true;
  const op = operator.toLowerCase();
  const inList = (list: "*" | readonly string[], v: string) => list === "*" || list.includes(v);
  return policy.access.some((r) => r.views === "*" && inList(r.tenants, tenant) && inList(r.operators, op));
}

export class ToteboxMain extends RpcTarget {
  readonly #rt: ToteboxRuntime;
  readonly #link: PspLink;
  readonly #pairingOnly: boolean;

  constructor(rt: ToteboxRuntime, link: PspLink, pairingOnly: boolean) {
    super();
    this.#rt = rt;
    this.#link = link;
    this.#pairingOnly = pairingOnly;
  }

  /** Identity and the view catalogue: metadata only, never SQL or records. */
  hello() {
    const rt = this.#rt;
    const policy = rt.policy();
    return {
      protocol: "psp/1",
      // Direct requests this Totebox serves (psp.md §3.1): an aggregator sends them only to a
      // Totebox that announces them, so an older Totebox keeps getting capnweb calls.
      directMethods: DIRECT_METHODS,
      id: rt.entity.id,
      name: rt.entity.name,
      kind: rt.entity.kind,
      currency: rt.entity.currency,
      tags: rt.entity.tags,
      deviceId: rt.identity.fingerprint,
      keyId: rt.identity.keyId,
      state: rt.state(),
      policyDigest: policy.digest,
      views: viewCatalogue(policy),
      commands: COMMAND_NAMES.map((n) => ({ name: n, description: COMMAND_DESCRIPTIONS[n] })),
    };
  }

  /** The pairing ceremony's answer. Only on a link opened while a pairing code is offered. */
  pair(proof: unknown) {
    return this.#rt.completePairing(this.#link, asBytes(proof, "proof"));
  }

  /**
   * Opens an operator session under an operator-signed grant to the aggregator on this link.
   * Async only to await the audit commit: calls pipelined on the session wait for it, in order.
   */
  async authorize(grant: unknown): Promise<ToteboxSession> {
    const rt = this.#rt;
    const bytes = asBytes(grant, "grant");
    const audit = (outcome: string, g?: VerifiedGrant) =>
      rt.audit({
        peer: this.#link.peer.fingerprint,
        operator: g?.claims.iss ?? null,
        tenant: g?.claims.tenant ?? null,
        action: "authorize",
        target: null,
        capability: null,
        outcome,
      });
    try {
      if (this.#pairingOnly) throw new PspError("PSP_ERR_PEER_UNKNOWN", "this link is only for pairing");
      rt.requireActive();
      const verified = verifyGrant({
        grant: bytes,
        trustedOperators: rt.trustedOperators,
        aggregatorId: this.#link.peer.fingerprint,
        clock: rt.clock,
      });
      // The grant names the aggregator key that may sign calls: it must be the key of the
      // aggregator on this very link, or a grant could be replayed through another aggregator.
      if (Buffer.from(verified.claims.aggregatorKey).toString("hex") !== rt.rawKeyHexOfLinkPeer(this.#link)) {
        throw new PspError(
          "PSP_ERR_CAP_GRANT_MISMATCH",
          "grant names another aggregator key than this link's",
        );
      }
      if (sessionsHeld(this.#link) >= MAX_SESSIONS_PER_LINK) {
        throw new ToteboxError(
          "TOTEBOX_ERR_SESSION_LIMIT",
          "this link holds as many sessions as it may: release some first",
          { limit: MAX_SESSIONS_PER_LINK },
        );
      }
      await audit("ok", verified);
      const session = new ToteboxSession(rt, this.#link, verified);
      holdSession(this.#link, hex(verified.hash), session);
      return session;
    } catch (e) {
      await audit(codeOf(e));
      throw e;
    }
  }
}

/**
 * The sessions authorized on each link and still held by its commander, by the hex SHA-256 of
 * their grant: what a direct read names (psp direct-read.ts). A session joins its grant's set when
 * `authorize` succeeds and leaves it when the commander releases it (capnweb then disposes it);
 * the map goes with the link. Several sessions may share a grant (an aggregator authorizes the
 * same grant again for an audit proof, say): releasing one leaves the others serving. A link holds
 * at most MAX_SESSIONS_PER_LINK, each the answer to an audited `authorize`.
 */
const sessionsByLink = new WeakMap<PspLink, Map<string, Set<ToteboxSession>>>();

/**
 * Most sessions one link may hold at once. An aggregator holds a few per link (its cache keeps
 * `maxSessionsPerLink`, 4 by default, plus one briefly per audit proof); a commander past this
 * is refused further `authorize` calls (audited) until it releases some.
 */
export const MAX_SESSIONS_PER_LINK = 64;

function sessionsHeld(link: PspLink): number {
  let n = 0;
  const m = sessionsByLink.get(link);
  if (m) for (const set of m.values()) n += set.size;
  return n;
}

function holdSession(link: PspLink, key: string, session: ToteboxSession): void {
  let m = sessionsByLink.get(link);
  if (!m) {
    m = new Map();
    sessionsByLink.set(link, m);
  }
  let set = m.get(key);
  if (!set) {
    set = new Set();
    m.set(key, set);
  }
  set.add(session);
}

function dropSession(link: PspLink, key: string, session: ToteboxSession): void {
  const m = sessionsByLink.get(link);
  const set = m?.get(key);
  if (!set) return;
  set.delete(session);
  if (set.size === 0) m!.delete(key);
}

function heldSession(link: PspLink, key: string): ToteboxSession | undefined {
  const set = sessionsByLink.get(link)?.get(key);
  if (!set) return undefined;
  for (const s of set) return s; // any of them: every one is a session under this very grant
  return undefined;
}

/** The direct request methods a Totebox serves, as `hello` announces them. */
export const DIRECT_METHODS: readonly number[] = Object.freeze([DIRECT_READ_METHOD]);

/**
 * Serves direct reads on `link` (PspLink.serveRequests): a read under a session this link's
 * commander authorized and still holds, named by its grant's hash, answered by that session's
 * own `read`, so every check of a capnweb read applies unchanged, audit included. A read naming no
 * such session, a malformed one, or another method is refused with its code (audited too, with
 * what is known of it); the link stays up.
 */
export function directReadHandler(rt: ToteboxRuntime, link: PspLink): DirectRequestHandler {
  return async (method, payload) => {
    let req: DirectReadRequest | undefined;
    // Set once the session's own read runs: from then on it audits every outcome itself.
    let reached = false;
    try {
      if (method !== DIRECT_READ_METHOD) {
        throw new PspError("PSP_ERR_METHOD_UNKNOWN", "unknown direct request method", { method });
      }
      req = decodeDirectReadRequest(payload);
      const session = heldSession(link, hex(req.grantHash));
      if (!session) {
        throw new ToteboxError(
          "TOTEBOX_ERR_SESSION_UNKNOWN",
          "no session under this grant is open on this link: authorize first",
        );
      }
      reached = true;
      const answer = await session.read(req.capability, req.view, req.params, req.row ?? undefined);
      return encodeDirectReadReply(answer);
    } catch (e) {
      if (!reached) {
        // What is known of a refusal before any session: decoded here only, not on every read.
        await rt.audit({
          peer: link.peer.fingerprint,
          operator: null,
          tenant: null,
          action: "read",
          target: req ? req.view.slice(0, 64) : null,
          capability: req ? ctiHex(req.capability) : null,
          outcome: codeOf(e),
        });
      }
      throw e;
    }
  };
}

export class ToteboxSession extends RpcTarget {
  readonly #rt: ToteboxRuntime;
  readonly #link: PspLink;
  readonly #grant: VerifiedGrant;

  constructor(rt: ToteboxRuntime, link: PspLink, grant: VerifiedGrant) {
    super();
    this.#rt = rt;
    this.#link = link;
    this.#grant = grant;
  }

  /** capnweb calls this once the commander has released every reference to the session. */
  [Symbol.dispose](): void {
    dropSession(this.#link, hex(this.#grant.hash), this);
  }

  /** A handle on one view, for the pipelined chain authorize(grant).view(name).read(cap). */
  view(name: unknown): ToteboxView {
    if (typeof name !== "string" || name.length > 128)
      throw new ToteboxError("TOTEBOX_ERR_VIEW_UNKNOWN", "bad view name");
    return new ToteboxView(this, name);
  }

  /** Reads one view. `row` selects one row key, if the capability names one. */
  read(capability: unknown, view: unknown, params?: unknown, row?: unknown): Promise<ReadAnswer> {
    return readView(this.#rt, this.#link, this.#grant, { capability, view, params, row });
  }

  /** Runs a named command. Idempotent by key; receipted. */
  async command(
    capability: unknown,
    name: unknown,
    args: unknown,
    idempotencyKey: unknown,
  ): Promise<CommandReply> {
    const rt = this.#rt;
    const cap = asBytes(capability, "capability");
    let call: VerifiedCall | undefined;
    const target = typeof name === "string" ? name.slice(0, 64) : null;
    try {
      if (typeof name !== "string")
        throw new ToteboxError("TOTEBOX_ERR_COMMAND_UNKNOWN", "command name must be a string");
      rt.requireActive();
      call = rt.verifyCall(this.#grant, cap, { command: name, action: name });
      if (!canRun(rt.policy(), { tenant: call.grant.tenant, operator: call.grant.iss, command: name })) {
        throw new ToteboxError(
          "TOTEBOX_ERR_POLICY_DENIED",
          "the owner's policy does not let this operator run this command",
        );
      }
      rt.stats.commandsExecuted++;
      const answer = await runCommand(
        {
          db: rt.db,
          dir: rt.dir,
          entityId: rt.entity.id,
          clock: rt.clock,
          signer: rt.identity.privateKey,
          operator: call.grant.iss,
          capabilityId: call.capability.cti,
          onStateChange: (s) => rt.onStateChange(s),
        },
        name,
        args,
        typeof idempotencyKey === "string" ? idempotencyKey : "",
      );
      await rt.audit({
        peer: this.#link.peer.fingerprint,
        operator: call.grant.iss,
        tenant: call.grant.tenant,
        action: "command",
        target,
        capability: Buffer.from(call.capability.cti).toString("hex"),
        outcome: "ok",
        detail: { replayed: answer.replayed },
      });
      return { totebox: rt.entity.id, ...answer };
    } catch (e) {
      await rt.audit({
        peer: this.#link.peer.fingerprint,
        operator: call?.grant.iss ?? this.#grant.claims.iss,
        tenant: this.#grant.claims.tenant,
        action: "command",
        target,
        capability: ctiHex(cap),
        outcome: codeOf(e),
      });
      throw e;
    }
  }

  /**
   * The audit log's proofs, served as ordinary reads: the capability must name view "audit" with
   * action "read". `op` is checkpoint | consistency | inclusion | entries.
   */
  async audit(capability: unknown, request: unknown): Promise<unknown> {
    const rt = this.#rt;
    const cap = asBytes(capability, "capability");
    try {
      rt.requireActive();
      const call = rt.verifyCall(this.#grant, cap, { view: "audit", action: "read" });
      if (!canReadAudit(rt.policy(), call.grant.tenant, call.grant.iss)) {
        throw new ToteboxError(
          "TOTEBOX_ERR_POLICY_DENIED",
          "the owner's policy does not expose the audit log to this operator",
        );
      }
      const r = (request ?? {}) as Record<string, unknown>;
      const num = (k: string) => {
        const v = r[k];
        if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
          throw new ToteboxError("TOTEBOX_ERR_PARAM", `${k} must be a non-negative integer`, { param: k });
        }
        return v;
      };
      let out: unknown;
      switch (r.op) {
        case "checkpoint":
          out = { checkpoint: rt.auditLog.checkpoint() };
          break;
        case "consistency":
          out = {
            checkpoint: rt.auditLog.checkpoint(),
            proof: rt.auditLog.consistencyProof(num("oldSize"), num("newSize")),
          };
          break;
        case "inclusion":
          out = { proof: rt.auditLog.inclusionProof(num("index"), num("treeSize")) };
          break;
        case "entries":
          out = { entries: rt.auditLog.entries(num("from"), Math.min(num("count"), 1000)) };
          break;
        default:
          throw new ToteboxError(
            "TOTEBOX_ERR_PARAM",
            "op must be checkpoint, consistency, inclusion or entries",
            { param: "op" },
          );
      }
      await rt.audit({
        peer: this.#link.peer.fingerprint,
        operator: call.grant.iss,
        tenant: call.grant.tenant,
        action: "audit",
        target: String(r.op),
        capability: Buffer.from(call.capability.cti).toString("hex"),
        outcome: "ok",
      });
      return out;
    } catch (e) {
      await rt.audit({
        peer: this.#link.peer.fingerprint,
        operator: this.#grant.claims.iss,
        tenant: this.#grant.claims.tenant,
        action: "audit",
        target: null,
        capability: ctiHex(cap),
        outcome: codeOf(e),
      });
      throw e;
    }
  }

  /**
   * Cancels a read of this session's grant. `capability` is that read's own call capability:
   * holding it is the authority to cancel it. Its whole chain is verified under this session's
   * grant, for the view request it names, without touching the replay store; the Totebox must be
   * active. The cancelled read rejects with TOTEBOX_ERR_CANCELLED. Audited as action "cancel"
   * (capability id only).
   */
  async cancel(capability: unknown): Promise<CancelReply> {
    const rt = this.#rt;
    const cap = asBytes(capability, "capability");
    let target: string | null = null;
    try {
      rt.requireActive();
      const call = rt.verifyCancel(this.#grant, cap);
      if (call.capability.view === undefined || call.capability.action !== "read") {
        throw new ToteboxError("TOTEBOX_ERR_PARAM", "only a read can be cancelled", { param: "capability" });
      }
      target = call.capability.view;
      const cti = hex(call.capability.cti);
      const keepUntil = call.capability.exp * 1000 + CAPABILITY_LIMITS.defaultSkewMs;
      const reply = rt.reads.cancel(cti, keepUntil, rt.clock.now());
      if (reply.cancelled) rt.stats.readsCancelled++;
      await rt.audit({
        peer: this.#link.peer.fingerprint,
        operator: call.grant.iss,
        tenant: call.grant.tenant,
        action: "cancel",
        target,
        capability: cti,
        outcome: "ok",
        detail: { cancelled: reply.cancelled, state: reply.state },
      });
      return reply;
    } catch (e) {
      await rt.audit({
        peer: this.#link.peer.fingerprint,
        operator: this.#grant.claims.iss,
        tenant: this.#grant.claims.tenant,
        action: "cancel",
        target,
        capability: ctiHex(cap),
        outcome: codeOf(e),
      });
      throw e;
    }
  }

  /** @internal used by ToteboxView; not reachable remotely because it needs a private field. */
  static readVia(s: ToteboxSession, req: ReadRequestInput): Promise<ReadAnswer> {
    return readView(s.#rt, s.#link, s.#grant, req);
  }
}

export class ToteboxView extends RpcTarget {
  readonly #session: ToteboxSession;
  readonly #name: string;
  constructor(session: ToteboxSession, name: string) {
    super();
    this.#session = session;
    this.#name = name;
  }
  read(capability: unknown, params?: unknown, row?: unknown): Promise<ReadAnswer> {
    return ToteboxSession.readVia(this.#session, { capability, view: this.#name, params, row });
  }
}

interface ReadRequestInput {
  capability: unknown;
  view: unknown;
  params: unknown;
  row: unknown;
}

async function readView(
  rt: ToteboxRuntime,
  link: PspLink,
  grant: VerifiedGrant,
  req: ReadRequestInput,
): Promise<ReadAnswer> {
  const cap = asBytes(req.capability, "capability");
  const viewName = typeof req.view === "string" ? req.view.slice(0, 128) : "";
  let call: VerifiedCall | undefined;
  try {
    if (typeof req.view !== "string")
      throw new ToteboxError("TOTEBOX_ERR_VIEW_UNKNOWN", "view name must be a string");
    if (req.row !== undefined && req.row !== null && typeof req.row !== "string") {
      throw new ToteboxError("TOTEBOX_ERR_PARAM", "row key must be a string", { param: "row" });
    }
    const row = typeof req.row === "string" ? req.row : undefined;
    rt.requireActive();
    // 1. The whole capability chain, before anything else.
    call = rt.verifyCall(grant, cap, {
      view: viewName,
      action: "read",
      ...(row !== undefined ? { row } : {}),
    });
    const cti = hex(call.capability.cti);
    // Cancellable from here until its SQL settles; refused here if its cancel overtook it.
    let flight: ReturnType<ReadCancellations["begin"]>;
    try {
      flight = rt.reads.begin(cti, rt.clock.now());
    } catch (e) {
      rt.stats.readsCancelled++;
      throw e;
    }
    let result: ViewResult;
    try {
      result = await runPolicedView(rt, call, viewName, row, req.params, flight);
    } finally {
      rt.reads.end(cti);
    }
    const rawParams = (req.params ?? {}) as Record<string, unknown>;
    const arrow = encodeResult(result.columns, result.rows);
    // An answer this link could not carry is refused here, before it is signed, counted or
    // audited as served (the receipt, the envelope and the frame need well under 16 KiB).
    if (arrow.byteLength + 16 * 1024 > link.limits.maxFrameBytes) {
      throw new ToteboxError(
        "TOTEBOX_ERR_ANSWER_TOO_LARGE",
        "the answer is larger than one frame may carry",
        {
          view: viewName,
          bytes: arrow.byteLength,
          limit: link.limits.maxFrameBytes,
        },
      );
    }
    const wm = watermark(rt.db);
    const receipt = signReceipt({
      capabilityId: call.capability.cti,
      view: viewName,
      requestHash: requestHash({
        view: viewName,
        params: rawParams as Record<string, CanonicalValue>,
        ...(row !== undefined ? { row } : {}),
      }),
      rowCount: result.rowCount,
      suppressedGroups: result.suppressedGroups,
      watermark: wm,
      arrowBytes: arrow,
      subjectId: rt.entity.id,
      clock: rt.clock,
      signer: rt.identity.privateKey,
    });
    await rt.audit({
      peer: link.peer.fingerprint,
      operator: call.grant.iss,
      tenant: call.grant.tenant,
      action: "read",
      target: viewName,
      capability: cti,
      outcome: "ok",
      rows: result.rowCount,
      detail: { suppressed: result.suppressedGroups },
    });
    return {
      totebox: rt.entity.id,
      view: viewName,
      arrow,
      receipt,
      rowCount: result.rowCount,
      suppressedGroups: result.suppressedGroups,
      watermark: wm,
    };
  } catch (e) {
    await rt.audit({
      peer: link.peer.fingerprint,
      operator: call?.grant.iss ?? grant.claims.iss,
      tenant: grant.claims.tenant,
      action: "read",
      target: viewName || null,
      capability: ctiHex(cap),
      outcome: codeOf(e),
    });
    if (isPspError(e) || e instanceof ToteboxError) throw e;
    throw new ToteboxError("TOTEBOX_ERR_INTERNAL", "internal error", {}, { cause: e });
  }
}

/** Steps 2–4 of a read: the owner's policy, the parameters, then the SQL (cancellable). */
function runPolicedView(
  rt: ToteboxRuntime,
  call: VerifiedCall,
  viewName: string,
  row: string | undefined,
  rawParamsInput: unknown,
  flight: { readonly signal: AbortSignal; readonly onStart: () => void },
): Promise<ViewResult> {
  // 2. The owner's policy.
  const policy = rt.policy();
  const view = policy.views.get(viewName);
  if (!view) throw new ToteboxError("TOTEBOX_ERR_VIEW_UNKNOWN", "no such view", { view: viewName });
  if (!canRead(policy, { tenant: call.grant.tenant, operator: call.grant.iss, view: viewName })) {
    throw new ToteboxError(
      "TOTEBOX_ERR_POLICY_DENIED",
      "the owner's policy does not let this operator read this view",
    );
  }
  if (row !== undefined && !view.rowKey) {
    throw new ToteboxError("TOTEBOX_ERR_PARAM", "this view has no row key", { param: "row" });
  }
  // 3. Parameters, typed and bounded.
  const rawParams = (rawParamsInput ?? {}) as Record<string, unknown>;
  const params = validateParams(view, rawParams, { now: () => rt.clock.now() });
  // 4. Only now: SQL.
  rt.stats.viewsExecuted++;
  return rt.runner.run({
    policy,
    view: viewName,
    params,
    ...(row !== undefined ? { rowKey: row } : {}),
    signal: flight.signal,
    onStart: flight.onStart,
  });
}
