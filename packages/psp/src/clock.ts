/**
 * Time as every verifier in this package sees it: injected, never read from `Date.now()` directly,
 * so tests (and golden vectors) can pin "now" and replay stores, capabilities and receipts agree on
 * one notion of time.
 *
 * Units: milliseconds since the Unix epoch. CWT claims (exp, nbf, iat) are in whole seconds; the
 * conversion happens at the claim boundary, not here.
 */
export interface Clock {
  /** Milliseconds since 1970-01-01T00:00:00Z. */
  now(): number;
}

/** The wall clock. */
export const systemClock: Clock = Object.freeze({ now: () => Date.now() });

/** A clock that only moves when told to. For tests and vector generation. */
export class ManualClock implements Clock {
  #nowMs: number;

  constructor(startMs = 0) {
    ManualClock.#check(startMs);
    this.#nowMs = startMs;
  }

  now(): number {
    return this.#nowMs;
  }

  /** Jumps to an absolute time (ms since epoch). Going backwards is allowed: clocks do. */
  set(ms: number): void {
    ManualClock.#check(ms);
    this.#nowMs = ms;
  }

  /** Moves forward (or backward, with a negative delta) by `deltaMs`. Returns the new time. */
  advance(deltaMs: number): number {
    const next = this.#nowMs + deltaMs;
    ManualClock.#check(next);
    this.#nowMs = next;
    return next;
  }

  static #check(ms: number): void {
    if (!Number.isFinite(ms)) throw new RangeError("ManualClock time must be a finite number of ms");
  }
}
