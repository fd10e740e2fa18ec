/**
 * Limits the aggregator enforces on what it receives from consoles and Toteboxes. Every one is a
 * local decision with a documented default; a request that breaks one is refused with a typed
 * OrchError and every other operator keeps being served.
 */
export interface OrchLimits {
  /** Largest fleet.yaml accepted, in bytes. Default 4 MiB. */
  readonly maxConfigBytes: number;
  /** Most Toteboxes in one registry. Default 100 000. */
  readonly maxToteboxes: number;
  /** Most Toteboxes one fan-out may target. Default 20 000. */
  readonly maxTargets: number;
  /** Fan-outs one tenant may have running at once (across all its operators). Default 8. */
  readonly maxConcurrentFanoutsPerTenant: number;
  /** Fan-outs one operator link may have running at once. Default 4. */
  readonly maxConcurrentFanoutsPerOperator: number;
  /** Calls the aggregator keeps open on one Totebox link at once; more wait their turn. Default 32. */
  readonly maxCallsPerLink: number;
  /** Per-Totebox timeout when the request names none, in ms. Default 5 000. */
  readonly defaultToteboxTimeoutMs: number;
  /** Overall deadline when the request names none, in ms. Default 15 000. */
  readonly defaultDeadlineMs: number;
  /** Longest deadline a request may ask for, in ms. Default 120 000. */
  readonly maxDeadlineMs: number;
  /** Largest Arrow answer accepted from one Totebox for one read, in bytes. Default 2 MiB. */
  readonly maxAnswerBytes: number;
  /** Most rows accepted from one Totebox for one read. Default 10 000. */
  readonly maxRowsPerTotebox: number;
  /** Most rows fed into one combine step (all Toteboxes together). Default 2 000 000. */
  readonly maxCombineInputRows: number;
  /** Most rows a combine step may return. Default 50 000. */
  readonly maxCombineOutputRows: number;
  /** Finished fan-outs an operator session keeps for `result()`/`next()`, oldest dropped. Default 4. */
  readonly maxRetainedFanouts: number;
  /**
   * How long a finished fan-out whose result nobody has fetched yet is kept even beyond
   * `maxRetainedFanouts`, in ms: a console that asks for the result just after finishing (another
   * fan-out of the same session started meanwhile) still gets it. Default 60 000.
   */
  readonly unfetchedResultGraceMs: number;
  /** Most progress events one `next()` returns. Default 4 096. */
  readonly maxEventsPerPoll: number;
  /** Longest a `next()` waits for news before answering with none, in ms. Default 10 000. */
  readonly maxPollWaitMs: number;
  /** Console links held at once. Default 1 024. */
  readonly maxConsoleLinks: number;
  /** Reconnect backoff to a Totebox: first delay, in ms. Default 250. */
  readonly reconnectBaseMs: number;
  /** Reconnect backoff cap, in ms. Default 30 000. */
  readonly reconnectMaxMs: number;
  /** Time for a Totebox to answer `hello` after the TLS handshake, in ms. Default 5 000. */
  readonly helloTimeoutMs: number;
  /**
   * Receipt signatures checked here: the first answer on each Totebox link, then one in this many
   * at random; 1 checks every one. Every receipt's binding to its request is checked regardless,
   * and the console verifies every signature (why: receipt-sampler.ts). Default 32.
   */
  readonly receiptSignatureEvery: number;
  /**
   * Authorized Totebox sessions kept per link for reuse by later fan-outs presenting the same
   * grant (pool.ts, LinkLease.session); 0 authorizes afresh every time. Default 4.
   */
  readonly maxSessionsPerLink: number;
}

export const DEFAULT_ORCH_LIMITS: Readonly<OrchLimits> = Object.freeze({
  maxConfigBytes: 4 * 1024 * 1024,
  maxToteboxes: 100_000,
  maxTargets: 20_000,
  maxConcurrentFanoutsPerTenant: 8,
  maxConcurrentFanoutsPerOperator: 4,
  maxCallsPerLink: 32,
  defaultToteboxTimeoutMs: 5_000,
  defaultDeadlineMs: 15_000,
  maxDeadlineMs: 120_000,
  maxAnswerBytes: 2 * 1024 * 1024,
  maxRowsPerTotebox: 10_000,
  maxCombineInputRows: 2_000_000,
  maxCombineOutputRows: 50_000,
  maxRetainedFanouts: 4,
  unfetchedResultGraceMs: 60_000,
  maxEventsPerPoll: 4_096,
  maxPollWaitMs: 10_000,
  maxConsoleLinks: 1_024,
  reconnectBaseMs: 250,
  reconnectMaxMs: 30_000,
  helloTimeoutMs: 5_000,
  receiptSignatureEvery: 32,
  maxSessionsPerLink: 4,
});

export function resolveOrchLimits(overrides?: Partial<OrchLimits>): Readonly<OrchLimits> {
  if (!overrides) return DEFAULT_ORCH_LIMITS;
  const l = Object.freeze({ ...DEFAULT_ORCH_LIMITS, ...overrides });
  if (!Number.isInteger(l.receiptSignatureEvery) || l.receiptSignatureEvery < 1) {
    throw new RangeError("receiptSignatureEvery must be a whole number ≥ 1");
  }
  if (!Number.isInteger(l.unfetchedResultGraceMs) || l.unfetchedResultGraceMs < 0) {
    throw new RangeError("unfetchedResultGraceMs must be a whole number of ms ≥ 0");
  }
  if (!Number.isInteger(l.maxSessionsPerLink) || l.maxSessionsPerLink < 0) {
    throw new RangeError("maxSessionsPerLink must be a whole number ≥ 0");
  }
  if (!Number.isInteger(l.maxEventsPerPoll) || l.maxEventsPerPoll < 1) {
    throw new RangeError("maxEventsPerPoll must be a whole number ≥ 1");
  }
  return l;
}
