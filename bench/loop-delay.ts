/**
 * The event loop's delay, sampled only while a hub is measuring its own turn.
 *
 * Node's monitorEventLoopDelay records the time between two of its timer's ticks. Disabled while
 * a hub waits for the other contenders' turns and enabled again after, its first tick records the
 * whole wait as one delay (checked: a 1.5 s wait read as a 1,515 ms delay), so since the turns
 * (eleventh round) the "worst while measuring" rows printed the longest wait, 2-34 s. Its
 * histogram cannot be merged across fresh monitors either (`add` takes only a recordable one).
 * This sampler records the same quantity, the time from one tick to the next (so a quiet loop
 * reads about the resolution, as Node's does), and a new start is never measured against the
 * last tick before a stop.
 */
import { createHistogram, type RecordableHistogram } from "node:perf_hooks";

export class TurnLoopDelay {
  readonly histogram: RecordableHistogram = createHistogram();
  readonly #resolutionMs: number;
  readonly #now: () => number;
  #timer: ReturnType<typeof setInterval> | undefined;
  /** When the last tick (or the start) was, ms; undefined while stopped. */
  #prev: number | undefined;

  constructor(resolutionMs = 10, now: () => number = () => performance.now()) {
    if (!(resolutionMs >= 1)) throw new RangeError("resolutionMs must be at least 1");
    this.#resolutionMs = resolutionMs;
    this.#now = now;
  }

  /** Starts sampling (a no-op if started). `timer: false` leaves ticking to the caller (tests). */
  start(timer = true): void {
    if (this.#prev !== undefined) return;
    this.#prev = this.#now();
    if (timer) {
      this.#timer = setInterval(() => this.tick(), this.#resolutionMs);
      this.#timer.unref();
    }
  }

  /** Records the time since the last tick or the start; ignored while stopped. */
  tick(): void {
    if (this.#prev === undefined) return;
    const now = this.#now();
    // In ns, as Node's histograms: at least 1 (record() refuses 0).
    this.histogram.record(Math.max(1, Math.round((now - this.#prev) * 1e6)));
    this.#prev = now;
  }

  /**
   * Stops sampling; the time until the next start is not a delay of this loop's. The stretch
   * since the last tick is recorded if it already outlasts the resolution: a turn often ends in
   * the same run of the loop as its longest stretch (the last answers, the combine), before any
   * tick could land in it.
   */
  stop(): void {
    if (this.#prev !== undefined && this.#now() - this.#prev >= this.#resolutionMs) this.tick();
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#prev = undefined;
  }

  /** Worst delay recorded, ms (0 if none). */
  get maxMs(): number {
    return this.histogram.count === 0 ? 0 : this.histogram.max / 1e6;
  }

  /** A percentile of the delays recorded, ms (0 if none). */
  percentileMs(p: number): number {
    return this.histogram.count === 0 ? 0 : this.histogram.percentile(p) / 1e6;
  }
}
