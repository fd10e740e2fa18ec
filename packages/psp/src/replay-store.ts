import type { Clock } from "./clock.ts";
import { PspError } from "./errors.ts";

/**
 * Remembers the `cti` of every call capability a Totebox accepted, until that capability could no
 * longer pass the expiry check anyway (its `exp` plus the verifier's skew). Presenting the same
 * capability twice inside that window is a replay.
 *
 * Design:
 * - Membership is a `Map` from the cti's hex to its keep-until time: check-and-insert is one
 *   lookup and one insert, O(1).
 * - Expiry is tracked in one-second buckets (`Map<second, hex[]>`; bucket s holds keep-until times
 *   in ((s-1)·1000, s·1000] ms), so pruning drops whole expired
 *   buckets without sorting or a heap: insert O(1), pruning amortised O(1) per entry. Pruning runs
 *   lazily at most once per `pruneIntervalMs` on insert, always when the store is full, and on
 *   demand (`prune()`), so no timer keeps a process alive.
 * - The store is bounded (`maxEntries`). An entry is only ever dropped after it expired: forgetting
 *   a live cti early would re-open the replay window. When the store is full of live entries a new
 *   capability is refused with PSP_ERR_CAP_REPLAY_STORE_FULL (fail closed); the operator sees a
 *   typed, countable error and can raise the limit, and the flood ages out within one capability
 *   lifetime (≤ 120 s + skew).
 */

export interface ReplayStore {
  /**
   * Throws PSP_ERR_CAP_REPLAYED if `cti` is remembered and still live, PSP_ERR_CAP_REPLAY_STORE_FULL
   * if it cannot be remembered; otherwise remembers it until `keepUntilMs` (ms since epoch).
   */
  checkAndInsert(cti: Uint8Array, keepUntilMs: number): void;
}

export interface ReplayStoreLimits {
  /** Live entries kept at most; beyond this, new capabilities are refused (never forgotten). */
  readonly maxEntries: number;
  /** Longest cti accepted, in bytes (bounds memory per entry). */
  readonly maxCtiBytes: number;
  /** Minimum time between two lazy prunes run from `checkAndInsert`. */
  readonly pruneIntervalMs: number;
}

/**
 * Defaults sized for one Totebox: 100,000 live capabilities is ~800 calls/s sustained over a full
 * 120 s lifetime plus 60 s skew; each entry costs roughly 150 bytes of heap.
 */
export const DEFAULT_REPLAY_STORE_LIMITS: ReplayStoreLimits = Object.freeze({
  maxEntries: 100_000,
  maxCtiBytes: 64,
  pruneIntervalMs: 1_000,
});

export class MemoryReplayStore implements ReplayStore {
  readonly limits: ReplayStoreLimits;
  readonly #clock: Clock;
  /** cti hex → keep-until (ms since epoch). */
  readonly #entries = new Map<string, number>();
  /** ceil(keep-until / 1000) → cti hexes whose keep-until falls in that second. */
  readonly #buckets = new Map<number, string[]>();
  /** Every bucket below this one has been pruned. */
  #pruneCursor = Number.NEGATIVE_INFINITY;
  #lastPruneMs = Number.NEGATIVE_INFINITY;

  constructor(clock: Clock, limits: Partial<ReplayStoreLimits> = {}) {
    this.#clock = clock;
    this.limits = Object.freeze({ ...DEFAULT_REPLAY_STORE_LIMITS, ...limits });
    if (!Number.isSafeInteger(this.limits.maxEntries) || this.limits.maxEntries < 1) {
      throw new RangeError("replay store maxEntries must be a positive integer");
    }
  }

  /** Live and not-yet-pruned entries. */
  get size(): number {
    return this.#entries.size;
  }

  checkAndInsert(cti: Uint8Array, keepUntilMs: number): void {
    if (!(cti instanceof Uint8Array) || cti.byteLength === 0 || cti.byteLength > this.limits.maxCtiBytes) {
      throw new PspError("PSP_ERR_CAP_MALFORMED", "capability id (cti) length out of bounds", {
        limit: this.limits.maxCtiBytes,
      });
    }
    if (!Number.isFinite(keepUntilMs)) throw new RangeError("keepUntilMs must be finite");
    const now = this.#clock.now();
    if (now - this.#lastPruneMs >= this.limits.pruneIntervalMs) this.prune();
    const key = Buffer.from(cti.buffer, cti.byteOffset, cti.byteLength).toString("hex");
    const known = this.#entries.get(key);
    if (known !== undefined && known > now) {
      throw new PspError("PSP_ERR_CAP_REPLAYED", "capability id was already presented");
    }
    // Nothing to remember for an already-dead entry: the expiry check refuses it on any replay.
    if (keepUntilMs <= now) return;
    if (known === undefined && this.#entries.size >= this.limits.maxEntries) {
      this.prune();
      if (this.#entries.size >= this.limits.maxEntries) {
        throw new PspError("PSP_ERR_CAP_REPLAY_STORE_FULL", "replay store is full of live capability ids", {
          limit: this.limits.maxEntries,
        });
      }
    }
    this.#entries.set(key, keepUntilMs);
    const second = Math.ceil(keepUntilMs / 1000);
    // Only after the clock stepped backwards can a bucket land below the cursor: pull it back.
    if (second < this.#pruneCursor) this.#pruneCursor = second;
    const bucket = this.#buckets.get(second);
    if (bucket === undefined) this.#buckets.set(second, [key]);
    else bucket.push(key);
  }

  /** Drops every entry whose keep-until has passed. Returns how many were dropped. */
  prune(): number {
    const now = this.#clock.now();
    this.#lastPruneMs = now;
    // Bucket s holds keep-until times <= s·1000, so every bucket s <= floor(now / 1000) is dead.
    const limit = Math.floor(now / 1000) + 1;
    let dropped = 0;
    if (limit - this.#pruneCursor <= this.#buckets.size) {
      for (let s = this.#pruneCursor; s < limit; s++) dropped += this.#dropBucket(s);
    } else {
      // Long gap since the last prune: walking the buckets is cheaper than walking the seconds.
      for (const s of [...this.#buckets.keys()]) if (s < limit) dropped += this.#dropBucket(s);
    }
    this.#pruneCursor = Math.max(this.#pruneCursor, limit);
    return dropped;
  }

  /** Drops the dead entries of one second's bucket; returns how many. (A method, not a closure
   * made per prune: see message-codec.ts on closures under tsx.) */
  #dropBucket(second: number): number {
    const bucket = this.#buckets.get(second);
    if (bucket === undefined) return 0;
    this.#buckets.delete(second);
    let dropped = 0;
    for (const key of bucket) {
      const until = this.#entries.get(key);
      // A key re-inserted later (after it expired) lives in a newer bucket: leave it.
      if (until !== undefined && Math.ceil(until / 1000) === second) {
        this.#entries.delete(key);
        dropped++;
      }
    }
    return dropped;
  }
}
