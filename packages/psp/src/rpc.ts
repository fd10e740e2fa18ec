import { RpcSession, type RpcTarget } from "capnweb";
import type { PspLink } from "./link.ts";

/**
 * capnweb sessions over PSP links.
 *
 * capnweb serializes an Error with its own enumerable properties and its `cause`. Across a trust
 * boundary that would leak internals (SQL text, file paths, stack frames), so every error that
 * leaves a process is rewritten to carry only a stable `code`, its message and a flat `detail`.
 */
const CODE = /^[A-Z]+_ERR_[A-Z0-9_]+$/;

export function sanitizeOutgoingError(error: Error): Error {
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && CODE.test(code)) {
    const out = new Error(error.message) as Error & { code: string; detail?: unknown };
    out.name = "PspRemoteError";
    out.code = code;
    const detail = (error as { detail?: unknown }).detail;
    if (detail && typeof detail === "object") out.detail = flatDetail(detail as Record<string, unknown>);
    out.stack = "";
    return out;
  }
  if (process.env.PSP_DEBUG) console.error("PSP internal error:", error);
  const out = new Error("internal error") as Error & { code: string };
  out.name = "PspRemoteError";
  out.code = "PSP_ERR_INTERNAL";
  out.stack = "";
  return out;
}

function flatDetail(d: Record<string, unknown>): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(d)) {
    if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") out[k] = v;
  }
  return out;
}

const sessionOptions = (link: PspLink) => ({
  onSendError: sanitizeOutgoingError,
  limits: { maxDepth: link.limits.maxMessageDepth },
});

/**
 * The commander's end: returns the stub of the subject's main object, typed as the caller's
 * description `T` of the remote API. Describe methods that return remote objects as returning
 * them directly (so calls pipeline: `tb.authorize(g).view(v).read(c)`), and data as promises.
 */
export function openCommander<T extends object>(link: PspLink): T {
  // No local main: a commander exports nothing, so the subject has nothing to call.
  // biome-ignore lint/suspicious/noExplicitAny: capnweb's RpcCompatible<T> cannot be expressed for a generic T.
  const session = new RpcSession<any>(link, undefined, sessionOptions(link));
  return session.getRemoteMain() as unknown as T;
}

/** A served link's capnweb tables, for operations: what the commander holds of ours. */
export interface SubjectSession {
  /**
   * `exports`: our objects the commander holds stubs to (the main object included) and has not
   * released yet. Each pins its object in our memory, so a count that only grows is a commander
   * that forgets to release.
   */
  stats(): { imports: number; exports: number };
}

/** The subject's end: serves `main` to the commander on this link. */
export function serveSubject(link: PspLink, main: RpcTarget): SubjectSession {
  const session = new RpcSession(link, main, sessionOptions(link));
  return { stats: () => session.getStats() };
}

/**
 * Releases a capnweb stub or pipelined promise: the peer frees the import (a subject counts it as
 * a call in flight until then). Safe on anything; a stub already broken with its link is ignored.
 *
 * capnweb disposes a pipelined promise that was never pulled by aborting it with a new Error. That
 * Error goes nowhere, yet capturing its stack cost ~4% of the aggregator's CPU per fan-out at
 * 1,000 Toteboxes (profiled), so it is built without one. Dispose is synchronous and the limit
 * is restored when it returns; an error created during it (the link's own close path, should the
 * release fail to send) also has no stack, which costs nothing but a stack in a log.
 */
export function releaseStub(stub: unknown): void {
  if (stub === null || (typeof stub !== "object" && typeof stub !== "function")) return;
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    (stub as { [Symbol.dispose]?: () => void })[Symbol.dispose]?.();
  } catch {
    // Already broken with its link: nothing left to release.
  } finally {
    Error.stackTraceLimit = limit;
  }
}
