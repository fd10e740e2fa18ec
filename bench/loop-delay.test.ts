import { afterEach, describe, expect, it, vi } from "vitest";
import { TurnLoopDelay } from "./loop-delay.ts";

/** A clock the test moves by hand. */
function clock() {
  let t = 0;
  return { now: () => t, set: (ms: number) => (t = ms) };
}

describe("TurnLoopDelay", () => {
  it("records the time from tick to tick, in its own turns only", () => {
    const c = clock();
    const d = new TurnLoopDelay(10, c.now);
    d.start(false);
    for (const t of [10, 20, 35]) {
      c.set(t);
      d.tick();
    }
    d.stop();
    // A 2 s wait for the other contenders: no tick while stopped, and none measured across it.
    c.set(1_000);
    d.tick();
    c.set(2_035);
    d.start(false);
    c.set(2_045);
    d.tick();
    d.stop();
    // HDR histograms keep 3 significant digits: compare to 0.05 ms.
    expect(d.histogram.count).toBe(4);
    expect(d.maxMs).toBeCloseTo(15, 1);
    expect(d.histogram.min / 1e6).toBeCloseTo(10, 1);
  });

  it("reads zero before any tick, and refuses a resolution under 1 ms", () => {
    const d = new TurnLoopDelay(10, () => 0);
    expect(d.maxMs).toBe(0);
    expect(d.percentileMs(99)).toBe(0);
    expect(() => new TurnLoopDelay(0)).toThrow(RangeError);
  });

  it("starts once however often it is started", () => {
    const c = clock();
    const d = new TurnLoopDelay(10, c.now);
    d.start(false);
    c.set(5);
    d.start(false); // must not move the last tick to 5
    c.set(12);
    d.tick();
    d.stop();
    expect(d.maxMs).toBeCloseTo(12, 1);
  });
});

describe("TurnLoopDelay at the end of a turn", () => {
  // The turn's last stretch after a tick at 10 ms: recorded if it outlasts the 10 ms resolution
  // (250 ms of work before the turn ends, with no tick in it), not if shorter.
  it.each([
    { endAt: 260, count: 2, max: 250 },
    { endAt: 14, count: 1, max: 10 },
  ])("a turn ending at $endAt ms records $count delays, the worst $max ms", ({ endAt, count, max }) => {
    const c = clock();
    const d = new TurnLoopDelay(10, c.now);
    d.start(false);
    c.set(10);
    d.tick();
    c.set(endAt);
    d.stop();
    expect(d.histogram.count).toBe(count);
    expect(d.maxMs).toBeCloseTo(max, 0);
  });
});

describe("TurnLoopDelay's timer", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("ticks every resolution while started, and not at all once stopped", () => {
    vi.useFakeTimers();
    let t = 0;
    const d = new TurnLoopDelay(10, () => t);
    d.start();
    for (let i = 0; i < 5; i++) {
      t += 10;
      vi.advanceTimersByTime(10);
    }
    expect(d.histogram.count).toBe(5);
    d.stop();
    t += 1_000;
    vi.advanceTimersByTime(1_000);
    expect(d.histogram.count).toBe(5);
    expect(vi.getTimerCount()).toBe(0);
  });
});
