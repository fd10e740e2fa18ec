import { timingSafeEqual } from "node:crypto";
import {
  type CanonicalValue,
  type Clock,
  type Identity,
  issueCallCapability,
  type PspLink,
  rawEd25519PublicKey,
  releaseStub,
  type Scheduler,
  selectorMatches,
  type VerifiedGrant,
  verifyGrant,
} from "@os-orchestration/psp";
import { RpcTarget } from "capnweb";
import type pino from "pino";
import { OrchError } from "./errors.ts";
import {
  FanOut,
  type FanOutHooks,
  type FanOutPlan,
  type FanOutResult,
  type PartialMode,
  type ProgressEvent,
  type ReadSpec,
} from "./fanout.ts";
import type { OrchLimits } from "./limits.ts";
import { errorInfo, type LinkPool, withTimeout } from "./pool.ts";
import type { ReceiptSampler } from "./receipt-sampler.ts";
import { type OperatorEntry, type Registry, selectorsValid, type ToteboxEntry } from "./registry.ts";
import { readParams, resolveViewportParams, type Viewport } from "./viewports.ts";

/**
 * What the aggregator serves to consoles, over PSP, as a *subject*. Every public method of these
 * RpcTargets is remotely callable by the console on the other end of the link (capnweb exposes an
 * RpcTarget's public methods), so state lives in #private fields. Nothing here ever calls the
 * console: answers flow back only as replies (invariant 5).
 *
 *   hello()                    who we are, who the console is to us, the viewports on offer
 *   authorize(grant) → session an operator session bound to one verified grant
 *     session.fleet()          the tenant's Toteboxes and their link health
 *     session.start(request)   a fan-out handle: next(cursor) for live progress, result(), cancel()
 *     session.viewport / read / command(...)   start + result in one round trip
 *     session.audit(totebox, request)          one Totebox's audit log (checkpoint, proofs)
 *
 * Every request is checked against the operator's grant *before* any fan-out: a Totebox, view,
 * row or command outside it is refused here, so nothing is sent anywhere.
 */

export interface ServiceContext {
  readonly identity: Identity;
  readonly clock: Clock;
  readonly scheduler: Scheduler;
  readonly limits: Readonly<OrchLimits>;
  readonly logger: pino.Logger;
  readonly pool: LinkPool;
  /** The live registry and viewports (hot reload swaps them). */
  registry(): Registry;
  viewports(): ReadonlyMap<string, Viewport>;
  readonly hooks: FanOutHooks;
  /** Called on every refusal with its code (metrics). */
  refused(code: string): void;
  /** Running fan-outs per tenant, shared by every console link. */
  readonly running: Map<string, number>;
  /** Which Totebox receipt signatures the aggregator checks itself; absent: every one. */
  readonly receipts?: ReceiptSampler;
}

export interface AggregatorHello {
  readonly protocol: "os-orchestration/1";
  readonly fingerprint: string;
  readonly keyId: string;
  /** Raw 32-byte Ed25519 key: what a grant's aggregatorKey must be. */
  readonly publicKey: Uint8Array;
  readonly operator: { readonly id: string; readonly tenant: string; readonly role: string };
  readonly viewports: readonly ViewportInfo[];
}

export interface ViewportInfo {
  readonly name: string;
  readonly description: string;
  readonly params: readonly { name: string; type: string; default: string | number | boolean | null }[];
  readonly views: readonly string[];
  readonly sections: readonly {
    name: string;
    title: string;
    columns: readonly { name: string; type: string }[];
    chart: { type: string; x?: string; y?: readonly string[] } | null;
  }[];
}

export interface FleetEntry {
  readonly id: string;
  readonly name: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly state: string;
  readonly health: string;
  readonly online: boolean;
  readonly inGrant: boolean;
  readonly lastContact: number | null;
  readonly lastError: { readonly code: string; readonly message: string } | null;
  readonly fingerprint: string;
  readonly views: readonly string[];
}

/** The console's main object: one per console link, bound to the operator that link proved to be. */
export class AggregatorMain extends RpcTarget {
  readonly #ctx: ServiceContext;
  readonly #link: PspLink;
  readonly #operatorKeyId: string;
  readonly #fanouts = { running: 0 };

  constructor(ctx: ServiceContext, link: PspLink) {
    super();
    this.#ctx = ctx;
    this.#link = link;
    this.#operatorKeyId = link.peer.keyId;
  }

  hello(): AggregatorHello {
    const op = currentOperator(this.#ctx, this.#operatorKeyId);
    return {
      protocol: "os-orchestration/1",
      fingerprint: this.#ctx.identity.fingerprint,
      keyId: this.#ctx.identity.keyId,
      publicKey: rawEd25519PublicKey(this.#ctx.identity.publicKey),
      operator: { id: op.id, tenant: op.tenant, role: op.role },
      viewports: [...this.#ctx.viewports().values()].map(viewportInfo),
    };
  }

  /**
   * The tenant's Toteboxes as the registry lists them, before any grant: what an operator needs
   * to see to decide what to delegate. Registry metadata only; no Totebox is asked anything.
   */
  fleet(): FleetEntry[] {
    const op = currentOperator(this.#ctx, this.#operatorKeyId);
    return fleetOf(this.#ctx, op.tenant, undefined);
  }

  authorize(grant: unknown): OperatorSession {
    const g = checkGrant(this.#ctx, this.#operatorKeyId, grant);
    this.#ctx.logger.info(
      { operator: g.operator.id, tenant: g.operator.tenant, peer: this.#link.peer.fingerprint },
      "operator session authorized",
    );
    return new OperatorSession(this.#ctx, this.#operatorKeyId, g.token, this.#fanouts);
  }
}

interface CheckedGrant {
  readonly token: Uint8Array;
  readonly verified: VerifiedGrant;
  readonly operator: OperatorEntry;
}

function currentOperator(ctx: ServiceContext, keyId: string): OperatorEntry {
  // Re-read on every call: an operator removed from the registry loses access at once.
  const op = ctx.registry().operatorByKeyId.get(keyId);
  if (!op) throw refuse(ctx, new OrchError("ORCH_ERR_OPERATOR_UNKNOWN", "operator is not in the registry"));
  return op;
}

function fleetOf(ctx: ServiceContext, tenant: string, grant: VerifiedGrant | undefined): FleetEntry[] {
  const reach = grant === undefined ? undefined : new GrantReach(grant);
  return ctx
    .registry()
    .toteboxes.filter((e) => e.tenants.includes(tenant))
    .map((e) => {
      const h = ctx.pool.health(e.id);
      return {
        id: e.id,
        name: e.name,
        // A fresh plain object: registry maps may be null-prototype, which capnweb refuses.
        tags: { ...e.tags },
        state: e.state,
        health: h?.health ?? "offline",
        online: h?.health === "online",
        inGrant: reach?.has(e) === true,
        lastContact: h?.lastContact ?? null,
        lastError: h?.lastError ? { ...h.lastError } : null,
        fingerprint: e.fingerprint,
        views: h?.hello?.views.map((v) => v.name) ?? [],
      };
    });
}

function refuse(ctx: ServiceContext, e: OrchError): OrchError {
  ctx.refused(e.code);
  return e;
}

/**
 * The grant is checked in full on every request, not only at authorize: it may have expired, or
 * the operator may have been removed or moved to another tenant since.
 */
function checkGrant(ctx: ServiceContext, keyId: string, grant: unknown): CheckedGrant {
  if (!(grant instanceof Uint8Array)) {
    throw refuse(ctx, new OrchError("ORCH_ERR_REQUEST_INVALID", "grant must be bytes"));
  }
  const op = currentOperator(ctx, keyId);
  const reg = ctx.registry();
  let verified: VerifiedGrant;
  try {
    verified = verifyGrant({
      grant,
      // Any registered operator's signature verifies, so that a grant of *another* operator gets
      // its own precise refusal below rather than a generic "untrusted issuer".
      trustedOperators: (kid) => {
        const o = reg.operatorByKeyId.get(kid);
        return o && { publicKey: o.publicKey };
      },
      aggregatorId: ctx.identity.fingerprint,
      clock: ctx.clock,
    });
  } catch (e) {
    ctx.refused(errorInfo(e).code);
    throw e;
  }
  const c = verified.claims;
  if (c.iss !== op.keyId) {
    throw refuse(
      ctx,
      new OrchError("ORCH_ERR_GRANT_OPERATOR", "grant was signed by another operator than this console's"),
    );
  }
  if (c.tenant !== op.tenant) {
    throw refuse(ctx, new OrchError("ORCH_ERR_GRANT_TENANT", "grant names a tenant this operator is not in"));
  }
  const ours = rawEd25519PublicKey(ctx.identity.publicKey);
  if (c.aggregatorKey.byteLength !== ours.byteLength || !timingSafeEqual(c.aggregatorKey, ours)) {
    throw refuse(ctx, new OrchError("ORCH_ERR_OUT_OF_GRANT", "grant delegates to another aggregator key"));
  }
  return { token: grant, verified, operator: op };
}

interface StartRequest {
  kind: "viewport" | "read" | "command";
  name: string;
  targets: string[] | undefined;
  params: Record<string, CanonicalValue>;
  mode: PartialMode;
  timeoutMs: number | undefined;
  deadlineMs: number | undefined;
  row: string | undefined;
  args: Record<string, CanonicalValue>;
  idempotencyKey: string | undefined;
  answers: boolean;
}

const REQUEST_KEYS = new Set([
  "kind",
  "name",
  "targets",
  "params",
  "mode",
  "timeoutMs",
  "deadlineMs",
  "row",
  "args",
  "idempotencyKey",
  "answers",
]);

function invalid(message: string, field: string): OrchError {
  return new OrchError("ORCH_ERR_REQUEST_INVALID", message, { field });
}

function plainRecord(v: unknown, field: string): Record<string, CanonicalValue> {
  if (v === undefined) return {};
  if (typeof v !== "object" || v === null || Array.isArray(v) || v instanceof Uint8Array) {
    throw invalid(`${field} must be a mapping`, field);
  }
  const out: Record<string, CanonicalValue> = {};
  const entries = Object.entries(v);
  if (entries.length > 64) throw invalid(`${field} has too many entries`, field);
  for (const [k, val] of entries) {
    if (k.length > 64) throw invalid(`${field} key is too long`, field);
    if (
      val === null ||
      typeof val === "boolean" ||
      (typeof val === "number" && Number.isFinite(val)) ||
      (typeof val === "string" && val.length <= 4096)
    ) {
      out[k] = val;
    } else throw invalid(`${field}.${k} must be a scalar`, field);
  }
  return out;
}

/** Limits on a command's arguments: a journal entry for stage-entry is the largest expected. */
const ARGS_LIMITS = { maxDepth: 6, maxNodes: 4096, maxString: 4096, maxKeys: 256 } as const;

/**
 * A command's arguments: JSON-like plain data (a staged journal entry has lines, each a mapping),
 * bounded in depth, size and string length. The Totebox validates the meaning.
 */
function commandArgs(v: unknown): Record<string, CanonicalValue> {
  if (v === undefined) return {};
  let nodes = 0;
  const walk = (x: unknown, depth: number): CanonicalValue => {
    if (++nodes > ARGS_LIMITS.maxNodes) throw invalid("args are too large", "args");
    if (depth > ARGS_LIMITS.maxDepth) throw invalid("args nest too deep", "args");
    if (x === null || typeof x === "boolean") return x;
    if (typeof x === "number") {
      if (!Number.isFinite(x)) throw invalid("args numbers must be finite", "args");
      return x;
    }
    if (typeof x === "string") {
      if (x.length > ARGS_LIMITS.maxString) throw invalid("an args string is too long", "args");
      return x;
    }
    if (Array.isArray(x)) return x.map((e) => walk(e, depth + 1));
    if (
      typeof x === "object" &&
      !(x instanceof Uint8Array) &&
      Object.getPrototypeOf(x) === Object.prototype
    ) {
      const entries = Object.entries(x as Record<string, unknown>);
      if (entries.length > ARGS_LIMITS.maxKeys) throw invalid("an args mapping has too many keys", "args");
      const out: Record<string, CanonicalValue> = {};
      for (const [k, e] of entries) {
        if (k.length > 64) throw invalid("an args key is too long", "args");
        out[k] = walk(e, depth + 1);
      }
      return out;
    }
    throw invalid("args must be plain data", "args");
  };
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw invalid("args must be a mapping", "args");
  return walk(v, 0) as Record<string, CanonicalValue>;
}

/** Validates what a console sent: plain data only, every field typed and bounded. */
export function parseStartRequest(raw: unknown): StartRequest {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw invalid("request must be a mapping", "request");
  }
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r))
    if (!REQUEST_KEYS.has(k)) throw invalid(`unknown field ${k.slice(0, 40)}`, k.slice(0, 40));
  if (r.kind !== "viewport" && r.kind !== "read" && r.kind !== "command") {
    throw invalid("kind must be viewport, read or command", "kind");
  }
  if (typeof r.name !== "string" || !/^[a-z][a-z0-9_-]{0,63}$/.test(r.name))
    throw invalid("bad name", "name");
  let targets: string[] | undefined;
  if (r.targets !== undefined) {
    if (!Array.isArray(r.targets) || r.targets.length > 1000 || r.targets.length === 0) {
      throw invalid("targets must be a non-empty list of at most 1000 ids or selectors", "targets");
    }
    targets = r.targets.map((t) => {
      if (typeof t !== "string" || t.length === 0 || t.length > 512) throw invalid("bad target", "targets");
      return t;
    });
  }
  const mode = r.mode ?? "warn";
  if (mode !== "warn" && mode !== "abort") throw invalid("mode must be warn or abort", "mode");
  const ms = (v: unknown, field: string) => {
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 3_600_000)
      throw invalid(`bad ${field}`, field);
    return v;
  };
  if (r.row !== undefined && (typeof r.row !== "string" || r.row.length > 256))
    throw invalid("bad row", "row");
  if (
    r.idempotencyKey !== undefined &&
    (typeof r.idempotencyKey !== "string" || !/^[\x21-\x7e]{1,128}$/.test(r.idempotencyKey))
  ) {
    throw invalid("idempotencyKey must be 1 to 128 printable characters", "idempotencyKey");
  }
  if (r.answers !== undefined && typeof r.answers !== "boolean")
    throw invalid("answers must be a boolean", "answers");
  return {
    kind: r.kind,
    name: r.name,
    targets,
    params: plainRecord(r.params, "params"),
    mode,
    timeoutMs: ms(r.timeoutMs, "timeoutMs"),
    deadlineMs: ms(r.deadlineMs, "deadlineMs"),
    row: r.row as string | undefined,
    args: commandArgs(r.args),
    idempotencyKey: r.idempotencyKey as string | undefined,
    answers: r.answers ?? true,
  };
}

/** An operator's session: one verified grant, checked again on every request. */
export class OperatorSession extends RpcTarget {
  readonly #ctx: ServiceContext;
  readonly #keyId: string;
  readonly #grant: Uint8Array;
  readonly #link: { running: number };
  readonly #fanouts = new Map<string, FanOut>();

  constructor(ctx: ServiceContext, keyId: string, grant: Uint8Array, link: { running: number }) {
    super();
    this.#ctx = ctx;
    this.#keyId = keyId;
    this.#grant = grant;
    this.#link = link;
  }

  #checked(): CheckedGrant {
    return checkGrant(this.#ctx, this.#keyId, this.#grant);
  }

  /** The tenant's Toteboxes (never another tenant's) with their link health. */
  fleet(): FleetEntry[] {
    const g = this.#checked();
    return fleetOf(this.#ctx, g.operator.tenant, g.verified);
  }

  viewports(): ViewportInfo[] {
    this.#checked();
    return [...this.#ctx.viewports().values()].map(viewportInfo);
  }

  /** Starts a fan-out and returns its handle at once (pipeline `.result()` for one round trip). */
  start(request: unknown): FanOutHandle {
    const f = this.#plan(request);
    return new FanOutHandle(this.#ctx, this.#fanouts, f);
  }

  viewport(name: unknown, options?: unknown): Promise<FanOutResult> {
    return this.#run({ ...this.#options(options), kind: "viewport", name });
  }

  read(view: unknown, options?: unknown): Promise<FanOutResult> {
    return this.#run({ ...this.#options(options), kind: "read", name: view });
  }

  command(name: unknown, options?: unknown): Promise<FanOutResult> {
    return this.#run({ ...this.#options(options), kind: "command", name });
  }

  /** Options of the one-call forms; a refusal here is counted like any other. */
  #options(options: unknown): Record<string, unknown> {
    try {
      return asOptions(options);
    } catch (e) {
      if (e instanceof OrchError) this.#ctx.refused(e.code);
      throw e;
    }
  }

  async #run(request: unknown): Promise<FanOutResult> {
    const f = this.#plan(request);
    // Sent as it is: Totebox answers are in it only if the request asked (plan.keepAnswers; a
    // fan-out that does not keep them drops each as soon as it is checked).
    const result = await f.done;
    // Delivered in the reply itself, so fetched: the next fan-outs push it out of the retained
    // set at once. Unmarked, every one-call fan-out stayed for unfetchedResultGraceMs (60 s) with
    // all its outcomes and events: at 3 queries a second over 1,000 Toteboxes, ~180 of them.
    fetched.add(f);
    return result;
  }

  /** One Totebox's audit log: checkpoint, consistency or inclusion proof, entries. */
  async audit(totebox: unknown, request: unknown): Promise<unknown> {
    const g = this.#checked();
    if (typeof totebox !== "string") throw refuse(this.#ctx, invalid("totebox must be an id", "totebox"));
    const entry = this.#ctx.registry().toteboxById.get(totebox);
    if (!entry?.tenants.includes(g.operator.tenant)) {
      throw refuse(this.#ctx, new OrchError("ORCH_ERR_TARGET_UNKNOWN", "no such Totebox in this tenant"));
    }
    if (!inGrant(g.verified, entry)) {
      throw refuse(
        this.#ctx,
        new OrchError("ORCH_ERR_OUT_OF_GRANT", "the grant does not reach this Totebox"),
      );
    }
    if (!g.verified.claims.views.includes("audit") || !g.verified.claims.actions.includes("read")) {
      throw refuse(
        this.#ctx,
        new OrchError("ORCH_ERR_OUT_OF_GRANT", "the grant does not include the audit log"),
      );
    }
    let req: Record<string, CanonicalValue>;
    try {
      req = plainRecord(request, "request");
    } catch (e) {
      if (e instanceof OrchError) this.#ctx.refused(e.code);
      throw e;
    }
    const cap = issueCallCapability({
      grant: this.#grant,
      totebox: entry.id,
      view: "audit",
      action: "read",
      clock: this.#ctx.clock,
      signer: this.#ctx.identity.privateKey,
    });
    const timeout = this.#ctx.limits.defaultToteboxTimeoutMs;
    const lease = await this.#ctx.pool.acquire(entry.id, timeout);
    const session = lease.remote.authorize(this.#grant);
    try {
      return await withTimeout(
        session.audit(cap, req),
        timeout,
        this.#ctx.scheduler,
        () => new OrchError("ORCH_ERR_TOTEBOX_TIMEOUT", "Totebox did not answer in time"),
      );
    } finally {
      lease.release();
      releaseStub(session);
    }
  }

  /** Every check that can refuse a request runs here, before anything is sent to any Totebox. */
  #plan(raw: unknown): FanOut {
    const ctx = this.#ctx;
    let req: StartRequest;
    try {
      req = parseStartRequest(raw);
    } catch (e) {
      if (e instanceof OrchError) ctx.refused(e.code);
      throw e;
    }
    const g = this.#checked();
    const claims = g.verified.claims;
    const op = g.operator;
    let reads: ReadSpec[] = [];
    let viewport: Viewport | undefined;
    let params: Record<string, CanonicalValue> = {};
    let defaultTargets: readonly string[] = [];
    if (req.kind === "viewport") {
      viewport = ctx.viewports().get(req.name);
      if (!viewport)
        throw refuse(ctx, new OrchError("ORCH_ERR_VIEWPORT_UNKNOWN", "no such viewport", { name: req.name }));
      try {
        params = { ...resolveViewportParams(viewport, req.params, today(ctx.clock)) };
      } catch (e) {
        if (e instanceof OrchError) ctx.refused(e.code);
        throw e;
      }
      const resolved = params as Record<string, string | number | boolean>;
      reads = viewport.reads.map((r) => ({
        view: r.view,
        as: r.as,
        params: readParams(r, resolved),
        columns: r.columns,
      }));
      defaultTargets = viewport.targets;
    } else if (req.kind === "read") {
      params = req.params;
      reads = [{ view: req.name, as: req.name, params: req.params, row: req.row }];
    } else {
      if (op.role !== "manager") {
        throw refuse(ctx, new OrchError("ORCH_ERR_ROLE", "only a manager may run commands"));
      }
      if (!req.idempotencyKey)
        throw refuse(ctx, invalid("a command needs an idempotency key", "idempotencyKey"));
      if (!claims.actions.includes(req.name)) {
        throw refuse(
          ctx,
          new OrchError("ORCH_ERR_OUT_OF_GRANT", "the grant does not include this command", {
            command: req.name,
          }),
        );
      }
      params = req.args;
    }
    for (const r of reads) {
      if (!claims.views.includes(r.view) || !claims.actions.includes("read")) {
        throw refuse(
          ctx,
          new OrchError("ORCH_ERR_OUT_OF_GRANT", "the grant does not include this view", { view: r.view }),
        );
      }
      if (claims.rows !== undefined && (r.row === undefined || !claims.rows.includes(r.row))) {
        throw refuse(
          ctx,
          new OrchError("ORCH_ERR_OUT_OF_GRANT", "the grant is limited to other rows", { view: r.view }),
        );
      }
    }
    const targets = this.#targets(
      g,
      req.targets ?? (defaultTargets.length > 0 ? [...defaultTargets] : undefined),
    );

    // Fairness: a tenant (all its operators together) and a single console link each have a cap
    // on fan-outs in progress; beyond it the request is refused at once, never queued behind others.
    const tenantMax =
      ctx.registry().tenants.get(op.tenant)?.maxConcurrentFanouts ?? ctx.limits.maxConcurrentFanoutsPerTenant;
    const running = ctx.running.get(op.tenant) ?? 0;
    if (running >= tenantMax || this.#link.running >= ctx.limits.maxConcurrentFanoutsPerOperator) {
      throw refuse(
        ctx,
        new OrchError("ORCH_ERR_TENANT_BUSY", "too many fan-outs in progress; retry shortly", {
          limit: tenantMax,
        }),
      );
    }
    const deadlineMs = Math.min(req.deadlineMs ?? ctx.limits.defaultDeadlineMs, ctx.limits.maxDeadlineMs);
    const plan: FanOutPlan = {
      kind: req.kind,
      name: req.name,
      params,
      targets,
      reads,
      command:
        req.kind === "command"
          ? { name: req.name, args: req.args, idempotencyKey: req.idempotencyKey! }
          : undefined,
      viewport,
      mode: req.mode,
      toteboxTimeoutMs: Math.min(req.timeoutMs ?? ctx.limits.defaultToteboxTimeoutMs, deadlineMs),
      deadlineMs,
      grant: this.#grant,
      grantExpiresAt: g.verified.claims.exp * 1000,
      tenant: op.tenant,
      operator: op.id,
      keepAnswers: req.answers,
    };
    const f = new FanOut(plan, {
      pool: ctx.pool,
      signer: ctx.identity.privateKey,
      clock: ctx.clock,
      scheduler: ctx.scheduler,
      limits: ctx.limits,
      logger: ctx.logger,
      hooks: ctx.hooks,
      ...(ctx.receipts ? { receipts: ctx.receipts } : {}),
    });
    ctx.running.set(op.tenant, running + 1);
    this.#link.running++;
    void f.done.then(() => {
      ctx.running.set(op.tenant, (ctx.running.get(op.tenant) ?? 1) - 1);
      this.#link.running--;
    });
    this.#retain(f);
    ctx.logger.info(
      {
        fanout: f.id,
        operator: op.id,
        tenant: op.tenant,
        kind: req.kind,
        name: req.name,
        targets: targets.length,
      },
      "fan-out started",
    );
    f.start();
    return f;
  }

  #retain(f: FanOut): void {
    this.#fanouts.set(f.id, f);
    // Beyond maxRetainedFanouts the oldest finished fan-outs leave, except one whose result was
    // never fetched and that finished less than unfetchedResultGraceMs ago: its console may be
    // about to ask. The set can then exceed the cap, by at most what finished in the grace time.
    const now = this.#ctx.clock.now();
    const grace = this.#ctx.limits.unfetchedResultGraceMs;
    for (const [id, x] of this.#fanouts) {
      if (this.#fanouts.size <= this.#ctx.limits.maxRetainedFanouts) break;
      const finishedAt = x.finishedAt;
      if (finishedAt === undefined) continue; // still running
      if (fetched.has(x) || now - finishedAt >= grace) this.#fanouts.delete(id);
    }
  }

  /** Resolves targets inside the operator's tenant and grant; refuses what reaches outside. */
  #targets(g: CheckedGrant, asked: readonly string[] | undefined): ToteboxEntry[] {
    const ctx = this.#ctx;
    const reg = ctx.registry();
    const tenant = g.operator.tenant;
    const chosen = new Set<string>();
    const reach = new GrantReach(g.verified);
    if (asked === undefined) {
      for (const e of reg.toteboxes) {
        if (e.tenants.includes(tenant) && e.state !== "archived" && reach.has(e)) chosen.add(e.id);
      }
    } else {
      for (const t of asked) {
        if (t.includes("=")) {
          if (!selectorsValid(t))
            throw refuse(
              ctx,
              new OrchError("ORCH_ERR_SELECTOR_INVALID", "bad selector", { selector: t.slice(0, 80) }),
            );
          // A selector is a filter: it reaches only what the tenant and the grant already reach.
          for (const e of reg.toteboxes) {
            if (
              e.tenants.includes(tenant) &&
              e.state !== "archived" &&
              selectorMatches(t, e.tags) &&
              reach.has(e)
            ) {
              chosen.add(e.id);
            }
          }
        } else {
          const e = reg.toteboxById.get(t);
          // Another tenant's Totebox is reported exactly like one that does not exist.
          if (!e?.tenants.includes(tenant)) {
            throw refuse(
              ctx,
              new OrchError("ORCH_ERR_TARGET_UNKNOWN", "no such Totebox in this tenant", {
                target: t.slice(0, 80),
              }),
            );
          }
          if (!reach.has(e)) {
            throw refuse(
              ctx,
              new OrchError("ORCH_ERR_OUT_OF_GRANT", "the grant does not reach this Totebox", {
                target: e.id,
              }),
            );
          }
          chosen.add(e.id);
        }
      }
    }
    if (chosen.size === 0) throw refuse(ctx, new OrchError("ORCH_ERR_NO_TARGETS", "no Totebox matches"));
    if (chosen.size > ctx.limits.maxTargets) {
      throw refuse(
        ctx,
        new OrchError("ORCH_ERR_TOO_MANY_TARGETS", "too many Toteboxes for one fan-out", {
          limit: ctx.limits.maxTargets,
        }),
      );
    }
    // In registry order (a loop, not a closure made per fan-out: see GrantReach).
    const targets: ToteboxEntry[] = [];
    for (const e of reg.toteboxes) if (chosen.has(e.id)) targets.push(e);
    return targets;
  }

  /** A fan-out started earlier on this session (e.g. to poll it from a second request). */
  fanout(id: unknown): FanOutHandle {
    const f = typeof id === "string" ? this.#fanouts.get(id) : undefined;
    if (!f)
      throw refuse(this.#ctx, new OrchError("ORCH_ERR_FANOUT_UNKNOWN", "no such fan-out on this session"));
    return new FanOutHandle(this.#ctx, this.#fanouts, f);
  }
}

/** Fan-outs whose result a console has fetched (result(), or next() reporting done). */
const fetched = new WeakSet<FanOut>();

/**
 * A running or finished fan-out, as the console sees it.
 *
 * The handle is exported on the console's link and lives as long as the console holds it: a
 * console that never releases its handles (a bug, or hostile) would otherwise pin every fan-out
 * it ever ran, 1,000 outcomes each. So a handle holds its fan-out strongly only while it runs;
 * once finished, the fan-out is found through the session's retained set (its last
 * maxRetainedFanouts, plus any finished within unfetchedResultGraceMs whose result nobody has
 * fetched yet), and a handle whose fan-out has left that set answers ORCH_ERR_FANOUT_UNKNOWN.
 * Found by the soak: the aggregator's JS heap grew ~1 MiB a second.
 */
export class FanOutHandle extends RpcTarget {
  readonly #ctx: ServiceContext;
  /** The session's retained set, weakly: a handle outliving its session pins nothing of it. */
  readonly #retained: WeakRef<ReadonlyMap<string, FanOut>>;
  readonly #id: string;
  #running: FanOut | undefined;

  constructor(ctx: ServiceContext, retained: ReadonlyMap<string, FanOut>, f: FanOut) {
    super();
    this.#ctx = ctx;
    this.#retained = new WeakRef(retained);
    this.#id = f.id;
    if (!f.finished) {
      this.#running = f;
      void f.done.then(() => {
        this.#running = undefined;
      });
    }
  }

  /** The fan-out, while it runs or is retained by its session; undefined once it has left. */
  #lookup(): FanOut | undefined {
    return this.#running ?? this.#retained.deref()?.get(this.#id);
  }

  #fanout(): FanOut {
    const f = this.#lookup();
    if (f === undefined) {
      throw refuse(
        this.#ctx,
        new OrchError("ORCH_ERR_FANOUT_UNKNOWN", "this fan-out is no longer retained; start it again"),
      );
    }
    return f;
  }

  id(): string {
    return this.#id;
  }

  /**
   * Live progress by long poll: the console asks for events after `cursor` and the answer comes
   * when there are some (or after `waitMs`). Calls flow down only; the aggregator never pushes.
   */
  async next(
    cursor: unknown,
    waitMs?: unknown,
  ): Promise<{
    events: ProgressEvent[];
    cursor: number;
    done: boolean;
    answered: number;
    targeted: number;
  }> {
    const f = this.#fanout();
    const c = typeof cursor === "number" && Number.isInteger(cursor) && cursor >= 0 ? cursor : 0;
    const max = this.#ctx.limits.maxPollWaitMs;
    const w =
      typeof waitMs === "number" && Number.isFinite(waitMs) ? Math.max(0, Math.min(waitMs, max)) : max;
    await f.waitForNews(c, w);
    const page = f.events(c, this.#ctx.limits.maxEventsPerPoll);
    if (page.done) fetched.add(f);
    return { ...page, answered: f.answered, targeted: f.plan.targets.length };
  }

  async result(): Promise<FanOutResult> {
    const f = this.#fanout();
    const r = await f.done;
    fetched.add(f);
    return r;
  }

  /** Stops a running fan-out; one that has finished (retained or not) has nothing to stop. */
  cancel(): { cancelled: boolean } {
    const f = this.#lookup();
    if (f === undefined || f.finished) return { cancelled: false };
    f.cancel();
    return { cancelled: true };
  }
}

function asOptions(options: unknown): Record<string, unknown> {
  if (options === undefined || options === null) return {};
  if (typeof options !== "object" || Array.isArray(options))
    throw invalid("options must be a mapping", "options");
  const o = { ...(options as Record<string, unknown>) };
  delete o.kind;
  delete o.name;
  return o;
}

/** Whether the grant reaches one Totebox (for many at once, GrantReach). */
export function inGrant(g: VerifiedGrant, e: ToteboxEntry): boolean {
  const c = g.claims;
  return c.toteboxIds.includes(e.id) || c.toteboxSelectors.some((s) => selectorMatches(s, e.tags));
}

/**
 * Whether a Totebox is one the grant reaches, for many Toteboxes at once: the grant's ids (up to
 * 256) put in a set once, rather than the list scanned for each of up to 10,000 registry entries
 * (2.5 million string comparisons per fan-out). A snapshot of the grant as it is now.
 *
 * An object with a method rather than a closure made per fan-out: V8 keeps a closure's optimised
 * code only while a closure of it is alive, and this one, called per registry entry, was compiled
 * again after most major collections at the aggregator.
 */
export class GrantReach {
  readonly #ids: ReadonlySet<string>;
  readonly #selectors: readonly string[];

  constructor(g: VerifiedGrant) {
    this.#ids = new Set(g.claims.toteboxIds);
    this.#selectors = [...g.claims.toteboxSelectors];
  }

  has(e: ToteboxEntry): boolean {
    if (this.#ids.has(e.id)) return true;
    for (const s of this.#selectors) if (selectorMatches(s, e.tags)) return true;
    return false;
  }
}

function today(clock: Clock): string {
  return new Date(clock.now()).toISOString().slice(0, 10);
}

function viewportInfo(v: Viewport): ViewportInfo {
  return {
    name: v.name,
    description: v.description,
    params: v.params.map((p) => ({ name: p.name, type: p.type, default: p.default ?? null })),
    views: [...new Set(v.reads.map((r) => r.view))],
    sections: v.sections.map((s) => ({
      name: s.name,
      title: s.title,
      columns: s.columns.map((c) => ({ name: c.name, type: c.type })),
      chart: s.chart
        ? {
            type: s.chart.type,
            ...(s.chart.x ? { x: s.chart.x } : {}),
            ...(s.chart.y ? { y: s.chart.y } : {}),
          }
        : null,
    })),
  };
}
