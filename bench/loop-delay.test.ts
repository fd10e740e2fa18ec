import { describe, expect, it } from "vitest";
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
