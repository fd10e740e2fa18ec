/**
 * Timers behind an interface so that tests drive time by hand instead of sleeping.
 * Every time-based behaviour of a link (idle timeout, ping, handshake deadline) goes through it.
 */
export interface TimerHandle {
  cancel(): void;
}

export interface Scheduler {
  /** Milliseconds since the epoch. */
  now(): number;
  /**
   * Milliseconds on a clock that only moves forward, for measuring intervals (idle, ping).
   * Absent: intervals are measured with now().
   */
  monotonicNow?(): number;
  /** Runs `fn` once after `ms` milliseconds unless cancelled. */
  after(ms: number, fn: () => void): TimerHandle;
}

/** A cancellable Node timer (a class, not a closure per timer: one is armed per call and link). */
class NodeTimer implements TimerHandle {
  readonly #t: NodeJS.Timeout;
  constructor(t: NodeJS.Timeout) {
    this.#t = t;
  }
  cancel(): void {
    clearTimeout(this.#t);
  }
}

export const systemScheduler: Scheduler = {
  now: () => Date.now(),
  monotonicNow: () => performance.now(),
  after(ms, fn) {
    const t = setTimeout(fn, ms);
    // A pending link timer must never keep a process alive on its own.
    t.unref();
    return new NodeTimer(t);
  },
};

/** A scheduler whose time only moves when a test calls `advance`. */
export class ManualScheduler implements Scheduler {
  #now: number;
  #seq = 0;
  readonly #timers = new Map<number, { at: number; fn: () => void }>();

  constructor(startMs = 1_700_000_000_000) {
    this.#now = startMs;
  }

  now(): number {
    return this.#now;
  }

  after(ms: number, fn: () => void): TimerHandle {
    const id = ++this.#seq;
    this.#timers.set(id, { at: this.#now + ms, fn });
    return { cancel: () => this.#timers.delete(id) };
  }

  /** Moves time forward, firing due timers in time order. */
  advance(ms: number): void {
    const target = this.#now + ms;
    for (;;) {
      let nextId = -1;
      let nextAt = Number.POSITIVE_INFINITY;
      for (const [id, t] of this.#timers) {
        if (t.at <= target && t.at < nextAt) {
          nextAt = t.at;
          nextId = id;
        }
      }
      if (nextId < 0) break;
      const t = this.#timers.get(nextId)!;
      this.#timers.delete(nextId);
      this.#now = Math.max(this.#now, t.at);
      t.fn();
    }
    this.#now = target;
  }

  get pending(): number {
    return this.#timers.size;
  }
}
