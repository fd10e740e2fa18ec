import { PspError } from "./errors.ts";
import type { PspLimits } from "./limits.ts";

/**
 * The Diode, enforced on capnweb's wire messages.
 *
 * capnweb is symmetric: either side may call the other. PSP fences it into two roles.
 *
 * - The **commander** only calls. It sends `push` (a call), `pull` (ask for a result), `release`
 *   and `abort`. Nothing it sends may contain something callable: no `export` or `promise` of its
 *   own (which is how capnweb passes a function, an RpcTarget or a local promise), no stream
 *   (`writable`/`readable`/`pipe`, whose far end is callable), no `remap` (whose captures can
 *   export). So the subject never holds anything it could call back.
 * - The **subject** only answers. It sends `resolve` / `reject` for results the commander pulled
 *   (or for promises it itself placed in an earlier answer, which capnweb resolves unasked), and
 *   `abort`. It never sends `push`, `stream`, `pipe` or `pull`, and never a `release` (it can hold
 *   no import of the commander's). It may return objects (`export`), e.g. a session from
 *   `authorize(grant)`: the commander calls those, so calls still flow down.
 *
 * Each side checks what it *receives* against the peer's role and aborts the link with
 * PSP_ERR_DIODE on the first violation. Each side also checks what it *sends*, so a bug of our
 * own is caught before it reaches the wire.
 */
export type PspRole = "commander" | "subject";

export interface DiodeViolation {
  /** Which side broke the rule, as seen by the side reporting it. */
  readonly offender: "peer" | "self";
  readonly rule: string;
  readonly messageType: string;
}

type Expr = unknown;

/** What one walk of an expression checks against, and what it collects. */
interface ExprCheck {
  readonly allowed: ReadonlySet<string>;
  readonly offender: "peer" | "self";
  readonly messageType: string;
  readonly isCommander: boolean;
  /** Push ids a call depends on (pipelining depth). */
  readonly deps?: Set<number>;
  /** Promise ids a subject announces in an answer (answered later without a pull). */
  readonly announcedPromises?: Set<number>;
}

/** Removes `id` from `ids` (order kept); false if it is not there. */
function removeId(ids: number[], id: number): boolean {
  for (let k = 0; k < ids.length; k++) {
    if (ids[k] !== id) continue;
    for (let j = k + 1; j < ids.length; j++) ids[j - 1] = ids[j]!;
    ids.pop();
    return true;
  }
  return false;
}

/** Special forms a commander may use inside call arguments. */
const COMMANDER_ARG_FORMS = new Set([
  "bytes",
  "date",
  "bigint",
  "undefined",
  "inf",
  "-inf",
  "nan",
  "import",
  "pipeline",
]);
/** Special forms a subject may use inside an answer. */
const SUBJECT_ANSWER_FORMS = new Set([
  "bytes",
  "date",
  "bigint",
  "undefined",
  "inf",
  "-inf",
  "nan",
  "error",
  "export",
  "promise",
]);

export class DiodeGuard {
  readonly role: PspRole;
  readonly #limits: Pick<PspLimits, "maxCallsInFlight" | "maxPipelineDepth" | "maxMessageDepth">;

  // Subject state: calls the commander pushed, by export id (1, 2, 3, ... in push order), with the
  // length of the pipelined chain each one ends.
  #nextPeerPushId = 1;
  readonly #livePushes = new Map<number, number>();

  // Commander state: what the subject may answer — results we pulled, and promises the subject
  // announced in an earlier answer (capnweb resolves those without a pull).
  readonly #expectedAnswers = new Set<number>();

  // Direct requests (link.ts `request`, FrameKind.Request / Reply), outside capnweb. Subject: the
  // ids received and not yet answered (they count as calls in flight with the pushes), and the
  // last id seen (ids strictly increase, so an id is never answered twice). Commander: the ids
  // sent and not yet answered, the only replies it accepts.
  //
  // Arrays in increasing id order, not Sets: ids are added in increasing order and at most
  // maxCallsInFlight are open, mostly one or two, answered oldest first; a Set emptied and
  // refilled on every request re-allocates its table each time (as a Map did: link.ts).
  readonly #directIn: number[] = [];
  #lastDirectIn = 0;
  readonly #directOut: number[] = [];

  constructor(
    role: PspRole,
    limits: Pick<PspLimits, "maxCallsInFlight" | "maxPipelineDepth" | "maxMessageDepth">,
  ) {
    this.role = role;
    this.#limits = limits;
  }

  /** Calls currently open on this link (subject side): capnweb pushes and direct requests. */
  get callsInFlight(): number {
    return this.#livePushes.size + this.#directIn.length;
  }

  /** Direct requests sent and not yet answered (commander side), abandoned ones included. */
  get directOutstanding(): number {
    return this.#directOut.length;
  }

  /** A direct request arrived (subject side; at a commander it breaks the Diode). */
  requestIn(id: number): void {
    if (this.role === "commander") throw violation("peer", "a subject never calls", "request");
    if (id <= this.#lastDirectIn) throw malformed("direct request ids must strictly increase");
    this.#checkCapacity();
    this.#lastDirectIn = id;
    this.#directIn.push(id);
  }

  /** We are about to answer a direct request (subject side). */
  replyOut(id: number): void {
    if (this.role === "commander") throw violation("self", "a commander never answers", "reply");
    if (!removeId(this.#directIn, id)) throw violation("self", "reply to a request never received", "reply");
  }

  /** We are about to send a direct request (commander side). */
  requestOut(id: number): void {
    if (this.role === "subject") throw violation("self", "a subject never calls", "request");
    this.#directOut.push(id);
  }

  /** A reply arrived (commander side; at a subject it breaks the Diode). */
  replyIn(id: number): void {
    if (this.role === "subject") {
      throw violation("peer", "a commander never answers: the subject asked it nothing", "reply");
    }
    if (!removeId(this.#directOut, id)) {
      throw violation("peer", "answer to something that was never asked", "reply");
    }
  }

  #checkCapacity(): void {
    if (this.callsInFlight >= this.#limits.maxCallsInFlight) {
      throw new PspError("PSP_ERR_CALLS_IN_FLIGHT", "too many calls in flight on this link", {
        limit: this.#limits.maxCallsInFlight,
      });
    }
  }

  /** Checks one message from the peer. Throws PspError; the link owner aborts on any throw. */
  inspectIncoming(msg: unknown): void {
    const m = asMessage(msg);
    if (this.role === "subject") this.#incomingAtSubject(m);
    else this.#incomingAtCommander(m);
  }

  /** Checks one message we are about to send. */
  inspectOutgoing(msg: unknown): void {
    const m = asMessage(msg);
    if (this.role === "commander") {
      switch (m.type) {
        case "push":
          this.#checkExpr(
            m.body[0],
            { allowed: COMMANDER_ARG_FORMS, offender: "self", messageType: "push", isCommander: true },
            0,
          );
          return;
        case "pull":
          if (typeof m.body[0] === "number") this.#expectedAnswers.add(m.body[0]);
          return;
        case "release":
        case "abort":
          return;
        default:
          throw violation("self", `a commander never sends ${m.type}`, m.type);
      }
    }
    switch (m.type) {
      case "resolve":
      case "reject":
        this.#checkExpr(
          m.body[1],
          { allowed: SUBJECT_ANSWER_FORMS, offender: "self", messageType: m.type, isCommander: false },
          0,
        );
        return;
      case "abort":
        return;
      default:
        throw violation("self", `a subject never sends ${m.type}`, m.type);
    }
  }

  #incomingAtSubject(m: Message): void {
    switch (m.type) {
      case "push": {
        const expr = m.body[0];
        if (!Array.isArray(expr) || expr[0] !== "pipeline") {
          throw violation("peer", "a push must be a call or property get (pipeline)", "push");
        }
        const deps = new Set<number>();
        this.#checkExpr(
          expr,
          { allowed: COMMANDER_ARG_FORMS, offender: "peer", messageType: "push", isCommander: true, deps },
          0,
        );
        let depth = 1;
        for (const id of deps) depth = Math.max(depth, (this.#livePushes.get(id) ?? 0) + 1);
        if (depth > this.#limits.maxPipelineDepth) {
          throw new PspError("PSP_ERR_PIPELINE_DEPTH", "pipelined chain exceeds the maximum depth", {
            depth,
            limit: this.#limits.maxPipelineDepth,
          });
        }
        this.#checkCapacity();
        this.#livePushes.set(this.#nextPeerPushId++, depth);
        return;
      }
      case "pull": {
        if (typeof m.body[0] !== "number") throw malformed("pull needs a numeric id");
        return;
      }
      case "release": {
        const [id, count] = m.body;
        if (typeof id !== "number" || typeof count !== "number")
          throw malformed("release needs id and count");
        this.#livePushes.delete(id);
        return;
      }
      case "abort":
        return;
      case "resolve":
      case "reject":
        throw violation("peer", "a commander never answers: the subject asked it nothing", m.type);
      default:
        throw violation("peer", `a commander never sends ${m.type}`, m.type);
    }
  }

  #incomingAtCommander(m: Message): void {
    switch (m.type) {
      case "resolve":
      case "reject": {
        const id = m.body[0];
        if (typeof id !== "number") throw malformed(`${m.type} needs a numeric id`);
        if (!this.#expectedAnswers.delete(id)) {
          throw violation("peer", "answer to something that was never asked", m.type);
        }
        const announced = new Set<number>();
        this.#checkExpr(
          m.body[1],
          {
            allowed: SUBJECT_ANSWER_FORMS,
            offender: "peer",
            messageType: m.type,
            isCommander: false,
            announcedPromises: announced,
          },
          0,
        );
        for (const p of announced) this.#expectedAnswers.add(p);
        return;
      }
      case "abort":
        return;
      case "push":
      case "stream":
      case "pipe":
        throw violation("peer", "a subject never calls", m.type);
      case "pull":
        throw violation("peer", "a subject never pulls", m.type);
      case "release":
        throw violation("peer", "a subject holds nothing of the commander's to release", m.type);
      default:
        throw violation("peer", `unknown message ${m.type}`, m.type);
    }
  }

  /**
   * Walks a capnweb expression. Arrays whose first element is a string are special forms; `[[...]]`
   * is an escaped literal array. `deps` collects the push ids a call depends on (pipelining);
   * `announcedPromises` collects promise ids a subject places in an answer.
   */
  #checkExpr(expr: Expr, ctx: ExprCheck, depth: number): void {
    const { allowed, offender, messageType, isCommander, deps, announcedPromises } = ctx;
    if (depth > this.#limits.maxMessageDepth) throw malformed("expression too deep");
    if (Array.isArray(expr)) {
      if (expr.length === 1 && Array.isArray(expr[0])) {
        for (const e of expr[0]) {
          this.#checkExpr(e, ctx, depth + 1);
        }
        return;
      }
      const form = expr[0];
      if (typeof form !== "string") throw malformed("array expression without a form");
      if (!allowed.has(form)) {
        const what = isCommander
          ? `a commander may not pass "${form}" (callables, promises and streams of its own are forbidden)`
          : `a subject may not answer with "${form}"`;
        throw violation(offender, what, messageType);
      }
      switch (form) {
        case "pipeline":
        case "import": {
          const id = expr[1];
          if (typeof id !== "number") throw malformed(`${form} needs a numeric id`);
          if (deps && id > 0) deps.add(id);
          // ["pipeline", id, path, args]: args is a bare list of argument expressions (not an
          // escaped literal array). Each is checked with the same rules.
          if (expr.length > 3) {
            const args = expr[3];
            if (!Array.isArray(args)) throw malformed("call arguments must be a list");
            for (const a of args) {
              this.#checkExpr(a, ctx, depth + 1);
            }
          }
          return;
        }
        case "promise":
          if (typeof expr[1] !== "number") throw malformed("promise needs a numeric id");
          announcedPromises?.add(expr[1]);
          return;
        case "error":
          // ["error", type, message, stack?, props?]: props are data.
          if (expr.length >= 5) {
            this.#checkExpr(expr[4], ctx, depth + 1);
          }
          return;
        default:
          return;
      }
    }
    if (expr !== null && typeof expr === "object" && !(expr instanceof Uint8Array)) {
      for (const v of Object.values(expr)) {
        this.#checkExpr(v, ctx, depth + 1);
      }
    }
  }
}

interface Message {
  type: string;
  body: unknown[];
}

function asMessage(msg: unknown): Message {
  if (!Array.isArray(msg) || typeof msg[0] !== "string")
    throw malformed("a message is an array led by its type");
  return { type: msg[0], body: msg.slice(1) };
}

function malformed(why: string): PspError {
  return new PspError("PSP_ERR_MESSAGE_MALFORMED", why);
}

function violation(offender: "peer" | "self", rule: string, messageType: string): PspError {
  return new PspError("PSP_ERR_DIODE", `Diode violation by ${offender}: ${rule}`, {
    offender,
    rule,
    messageType,
  });
}
