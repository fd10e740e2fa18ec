import type { KeyObject } from "node:crypto";
import type {
  AggregatorHello,
  AggregatorRemote,
  FanOutPage,
  FanOutRequest,
  FanOutResult,
  OperatorSessionRemote,
} from "@os-orchestration/orchestration";
import {
  type Clock,
  connectPsp,
  decodeResult,
  type Identity,
  issueGrant,
  openCommander,
  type PspLimits,
  type PspLink,
  releaseStub,
  requestHash,
  systemClock,
  verifyReceipt,
} from "@os-orchestration/psp";
import { ConsoleError } from "./errors.ts";

/**
 * The console's end of the aggregator link. The console is the commander: it exports nothing to
 * the aggregator, so the aggregator has nothing of ours to call (invariant 5). The operator's
 * private key stays in this process; the aggregator only ever sees grants it signs.
 */
export interface AggregatorConnection {
  readonly link: PspLink;
  readonly aggregator: AggregatorRemote;
  readonly hello: AggregatorHello;
  close(): void;
}

/** Console links receive whole fan-out answers (receipts of every Totebox): allow larger frames. */
export const CONSOLE_LINK_LIMITS: Partial<PspLimits> = { maxFrameBytes: 64 * 1024 * 1024, maxSegments: 1024 };

export async function connectAggregator(options: {
  identity: Identity;
  host: string;
  port: number;
  /** The aggregator's pinned certificate fingerprint (its device id). */
  fingerprint: string;
  limits?: Partial<PspLimits>;
}): Promise<AggregatorConnection> {
  const link = await connectPsp({
    identity: options.identity,
    role: "commander",
    host: options.host,
    port: options.port,
    expect: options.fingerprint,
    limits: { ...CONSOLE_LINK_LIMITS, ...options.limits },
  });
  const aggregator = openCommander<AggregatorRemote>(link);
  let hello: AggregatorHello;
  try {
    hello = await aggregator.hello();
  } catch (e) {
    link.close();
    throw e;
  }
  if (hello.fingerprint !== link.peer.fingerprint) {
    link.close();
    throw new ConsoleError("CONSOLE_ERR_AGGREGATOR", "the aggregator's hello does not match its certificate");
  }
  return { link, aggregator, hello, close: () => link.close() };
}

export interface GrantOptions {
  readonly operator: Identity;
  readonly operatorId: string;
  readonly tenant: string;
  /** The aggregator the grant delegates to: its fingerprint and raw public key (from hello). */
  readonly aggregator: { readonly fingerprint: string; readonly publicKey: Uint8Array };
  readonly toteboxIds?: readonly string[];
  readonly toteboxSelectors?: readonly string[];
  readonly views: readonly string[];
  readonly actions: readonly string[];
  readonly lifetimeSeconds?: number;
  readonly clock?: Clock;
}

/** Signs a time-boxed grant for a session (the operator key never leaves this process). */
export function signGrant(o: GrantOptions): Uint8Array {
  return issueGrant({
    operator: o.operatorId,
    aggregatorId: o.aggregator.fingerprint,
    aggregatorKey: o.aggregator.publicKey,
    tenant: o.tenant,
    ...(o.toteboxIds ? { toteboxIds: o.toteboxIds } : {}),
    ...(o.toteboxSelectors ? { toteboxSelectors: o.toteboxSelectors } : {}),
    views: o.views,
    actions: o.actions,
    ...(o.lifetimeSeconds !== undefined ? { lifetimeSeconds: o.lifetimeSeconds } : {}),
    signer: o.operator.privateKey,
    clock: o.clock ?? systemClock,
  });
}

/**
 * Starts a fan-out and follows it: `onProgress` gets every page of live progress (long polls on
 * the handle: the console asks, the aggregator answers), and the result comes back through the
 * same pipelined handle.
 */
export async function runFanOut(
  session: OperatorSessionRemote,
  request: FanOutRequest,
  onProgress?: (page: FanOutPage) => void,
): Promise<FanOutResult> {
  const handle = session.start(request);
  try {
    const result = handle.result();
    if (onProgress) {
      let cursor = 0;
      for (;;) {
        const page = await handle.next(cursor, 2_000);
        cursor = page.cursor;
        onProgress(page);
        if (page.done) break;
      }
    }
    return await result;
  } finally {
    // The handle is an object the aggregator exports to us: until we release it, the aggregator
    // counts it as held by this link (orch_console_exports). Found by the soak, where 50 consoles
    // that never released their handles grew the aggregator's heap by about 1 MiB a second.
    releaseStub(handle);
  }
}

export interface AnswerCheck {
  readonly totebox: string;
  /** True when every answer of this Totebox carries a receipt its own key signed over these bytes. */
  readonly verified: boolean;
  readonly code: string | null;
}

/**
 * Checks each Totebox's contribution with the Totebox's own key: the receipt must be signed by it,
 * over exactly the Arrow bytes passed through, for the request the aggregator says it sent. A
 * Totebox whose key the console does not know is reported unverified (not failed).
 */
export function verifyAnswers(
  result: FanOutResult,
  keyOf: (toteboxId: string) => KeyObject | undefined,
): AnswerCheck[] {
  const out: AnswerCheck[] = [];
  for (const o of result.outcomes) {
    if (o.status !== "ok" && o.status !== "suppressed") continue;
    const key = keyOf(o.totebox);
    if (!key) {
      out.push({ totebox: o.totebox, verified: false, code: "CONSOLE_ERR_UNKNOWN_TOTEBOX" });
      continue;
    }
    try {
      if (o.answers.length === 0 && !o.command)
        throw new ConsoleError("CONSOLE_ERR_RECEIPT", "answer carried no receipts");
      for (const a of o.answers) {
        const claims = verifyReceipt({
          token: a.receipt,
          subjectPublicKey: key,
          expect: {
            arrowBytes: a.arrow,
            capabilityId: a.capabilityId,
            requestHash: requestHash({
              view: a.view,
              params: { ...a.params },
              ...(a.row !== null ? { row: a.row } : {}),
            }),
            subjectId: o.totebox,
          },
        });
        if (decodeResult(a.arrow).rowCount !== claims.rowCount) {
          throw new ConsoleError("CONSOLE_ERR_RECEIPT", "row count differs from the receipt");
        }
      }
      if (o.command) {
        verifyReceipt({
          token: o.command.receipt,
          subjectPublicKey: key,
          expect: { arrowBytes: o.command.resultBytes, subjectId: o.totebox },
        });
      }
      out.push({ totebox: o.totebox, verified: true, code: null });
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      out.push({
        totebox: o.totebox,
        verified: false,
        code: typeof code === "string" ? code : "CONSOLE_ERR_RECEIPT",
      });
    }
  }
  return out;
}

/** Refusals that concern the session's grant itself: worth a new session with a fresh grant. */
function isGrantFailure(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" && (code.startsWith("PSP_ERR_CAP_") || code.startsWith("ORCH_ERR_GRANT_"));
}

/** Failures after which a fresh link (and a re-authorized session) is worth a try. */
const LINK_FAILURES = new Set([
  "PSP_ERR_LINK_CLOSED",
  "PSP_ERR_TLS_HANDSHAKE",
  "PSP_ERR_TLS_TIMEOUT",
  "PSP_ERR_IDLE_TIMEOUT",
  "PSP_ERR_SEND_BUFFER",
]);

export function isLinkFailure(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string") return LINK_FAILURES.has(code);
  // capnweb rejects calls on a dead session with a plain Error.
  return e instanceof Error && /disconnected|closed|ECONNREFUSED|ECONNRESET/i.test(e.message);
}

/**
 * An operator session that survives the aggregator going away: the aggregator keeps no state, so
 * after a restart a new link and the same (still valid) grant give the same session back. Calls
 * that fail because the link died are retried on a new link, with jittered backoff, for up to
 * `retryForMs`. A refusal that concerns the grant (expired, revoked) is thrown, and the next call
 * authorizes a new session with a freshly signed grant; any other failure is the caller's, and
 * the link and session stay.
 */
export class ResilientSession {
  readonly #connect: () => Promise<AggregatorConnection>;
  readonly #grant: (hello: AggregatorHello) => Uint8Array;
  readonly #retryForMs: number;
  readonly #random: () => number;
  #conn: AggregatorConnection | undefined;
  #session: OperatorSessionRemote | undefined;
  /** How many times a new link was made after the first. */
  reconnects = 0;

  constructor(options: {
    connect: () => Promise<AggregatorConnection>;
    grant: (hello: AggregatorHello) => Uint8Array;
    /** How long to keep retrying a call whose link failed, ms. Default 30 000 (an aggregator restart). */
    retryForMs?: number;
    random?: () => number;
  }) {
    this.#connect = options.connect;
    this.#grant = options.grant;
    this.#retryForMs = options.retryForMs ?? 30_000;
    this.#random = options.random ?? Math.random;
  }

  async session(): Promise<{ conn: AggregatorConnection; session: OperatorSessionRemote }> {
    if (!this.#conn || this.#conn.link.closed) {
      this.#conn?.close();
      // The old session (if any) died with its link: nothing to release.
      this.#session = undefined;
      const conn = await this.#connect();
      conn.link.once("close", () => {
        if (this.#conn === conn) this.#session = undefined;
      });
      this.#conn = conn;
    }
    this.#session ??= this.#conn.aggregator.authorize(this.#grant(this.#conn.hello));
    return { conn: this.#conn, session: this.#session };
  }

  async run<T>(fn: (session: OperatorSessionRemote) => Promise<T>): Promise<T> {
    const until = Date.now() + this.#retryForMs;
    for (let i = 0; ; i++) {
      if (i > 0) {
        this.reconnects++;
        // Jittered exponential backoff, capped at 2 s, inside the retry window.
        const delay = Math.min(2_000, 50 * 2 ** Math.min(i, 6)) * (0.5 + this.#random() / 2);
        await new Promise((r) => setTimeout(r, delay));
      }
      // What this attempt used: a concurrent caller may have replaced either meanwhile, and only
      // what failed here may be dropped.
      let used: { conn: AggregatorConnection; session: OperatorSessionRemote } | undefined;
      try {
        used = await this.session();
        return await fn(used.session);
      } catch (e) {
        if (isLinkFailure(e)) {
          if (!used || this.#conn === used.conn) {
            this.#conn?.close();
            this.#session = undefined;
          }
          if (Date.now() < until) continue;
        } else if (isGrantFailure(e) && used && this.#session === used.session) {
          // The session's grant no longer holds (it expired, or the registry changed): the next
          // call authorizes a new session with a freshly signed grant, on the same link.
          this.#dropSession();
        }
        // Anything else (a busy tenant, a bad request) is the caller's, and the link and session
        // stay: reconnecting on every refusal cost a TLS handshake per refusal under load.
        throw e;
      }
    }
  }

  #dropSession(): void {
    if (this.#session) releaseStub(this.#session);
    this.#session = undefined;
  }

  close(): void {
    this.#conn?.close();
    this.#conn = undefined;
    this.#session = undefined;
  }
}
