/**
 * Authorized Totebox sessions of one link, kept for reuse by later fan-outs that present the same
 * grant (pool.ts, LinkLease.session). One cache per link object: a replaced link starts empty, and
 * the stubs of a dead link die with it.
 *
 * Why reuse is safe: the Totebox verified the grant's signature when it authorized the session
 * and still re-checks the grant's window and its operator's trust, and verifies a fresh call
 * capability, on every read; the aggregator re-verifies the grant on every request before any
 * fan-out. What reuse saves: one grant signature verification per Totebox per query (about a
 * third of a simulated Totebox's CPU per answer, measured).
 *
 * A session is shared by every fan-out presenting that grant at once, so it is released at the
 * Totebox only when it has left the cache (evicted as least recently used, or forgotten after a
 * failure that may concern it) *and* no fan-out still holds it: releasing it earlier would turn
 * the other holders' cancel() calls into no-ops.
 */
export interface SessionHandle<S> {
  readonly stub: S;
  /**
   * Whether a call on this session has already succeeded, which proves the Totebox authorized it
   * and still holds it: later reads may then go as direct reads (psp direct-read.ts) naming the
   * grant, instead of capnweb calls on the stub.
   */
  readonly authorized: boolean;
  /** A call on the session succeeded: mark it authorized for every holder. */
  confirm(): void;
  /**
   * The holder is done with the session. `forget`: what happened may concern the session itself
   * (the Totebox refused or failed the call), so no later fan-out reuses it.
   */
  end(forget: boolean): void;
}

interface Entry<S> {
  readonly stub: S;
  /** When the grant behind the session ends (ms since the epoch): the Totebox refuses it after. */
  readonly expiresAt: number;
  users: number;
  cached: boolean;
  authorized: boolean;
}

export class SessionCache<S> {
  readonly #max: number;
  readonly #release: (stub: S) => void;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry<S>>();
  /** The key acquired last while cached: the most recently used entry, already last in the Map. */
  #last: string | undefined;

  /**
   * @param max sessions kept (least recently used leave first); 0 keeps none, and each handle's
   *   session is released as soon as its holder ends it.
   * @param release releases a stub at the Totebox (releaseStub).
   * @param now the wall clock (ms since the epoch) that grant expiries are compared against.
   */
  constructor(max: number, release: (stub: S) => void, now: () => number = Date.now) {
    if (!Number.isInteger(max) || max < 0)
      throw new RangeError("maxSessionsPerLink must be a whole number ≥ 0");
    this.#max = max;
    this.#release = release;
    this.#now = now;
  }

  /** Sessions currently cached (in use or not). */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * The cached session for `key`, or a new one from `open()`. `expiresAt` (ms since the epoch) is
   * when the grant behind it ends: from then on the Totebox refuses every read on that session,
   * so it leaves the cache at the next acquire instead of holding a slot (and the Totebox's
   * memory) until it is evicted as least recently used.
   */
  acquire(key: string, open: () => S, expiresAt = Number.POSITIVE_INFINITY): SessionHandle<S> {
    this.#dropExpired();
    let entry = this.#entries.get(key);
    if (entry) {
      // Refresh recency (Map order is insertion order) only when it changes anything: a fan-out
      // acquires on every link per query, and a delete and set each time leaves a hole in the
      // Map's table that it must later compact (an allocation per link per query).
      if (this.#entries.size > 1 && this.#last !== key) {
        this.#entries.delete(key);
        this.#entries.set(key, entry);
      }
    } else {
      // A grant already past its end (the aggregator accepts it within its clock skew) is not
      // cached: every later acquire would only drop it again.
      entry = {
        stub: open(),
        expiresAt,
        users: 0,
        cached: this.#max > 0 && expiresAt > this.#now(),
        authorized: false,
      };
      if (entry.cached) {
        this.#entries.set(key, entry);
        for (const [k, old] of this.#entries) {
          if (this.#entries.size <= this.#max) break;
          this.#drop(k, old);
        }
      }
    }
    if (entry.cached) this.#last = key;
    entry.users++;
    return new Handle(this.#endHold, key, entry);
  }

  /** What `handle.end(forget)` does: one function for every handle of this cache. */
  readonly #endHold = (key: string, e: Entry<S>, forget: boolean): void => {
    e.users--;
    if (forget && e.cached && this.#entries.get(key) === e) this.#drop(key, e);
    else if (!e.cached && e.users === 0) this.#release(e.stub);
  };

  #dropExpired(): void {
    if (this.#entries.size === 0) return;
    const now = this.#now();
    for (const [k, e] of this.#entries) if (e.expiresAt <= now) this.#drop(k, e);
  }

  #drop(key: string, e: Entry<S>): void {
    this.#entries.delete(key);
    if (this.#last === key) this.#last = undefined;
    e.cached = false;
    if (e.users === 0) this.#release(e.stub);
  }
}

/**
 * One holder's hold on a cached session: a class rather than an object of closures, since a
 * fan-out makes one per Totebox per query.
 */
class Handle<S> implements SessionHandle<S> {
  readonly #endHold: (key: string, e: Entry<S>, forget: boolean) => void;
  readonly #key: string;
  readonly #entry: Entry<S>;
  #ended = false;

  constructor(endHold: (key: string, e: Entry<S>, forget: boolean) => void, key: string, entry: Entry<S>) {
    this.#endHold = endHold;
    this.#key = key;
    this.#entry = entry;
  }

  get stub(): S {
    return this.#entry.stub;
  }

  get authorized(): boolean {
    return this.#entry.authorized;
  }

  confirm(): void {
    this.#entry.authorized = true;
  }

  end(forget: boolean): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#endHold(this.#key, this.#entry, forget);
  }
}
