import { describe, expect, it } from "vitest";
import { ManualClock } from "./clock.ts";
import { PspError } from "./errors.ts";
import { DEFAULT_REPLAY_STORE_LIMITS, MemoryReplayStore } from "./replay-store.ts";

const cti = (n: number) => {
  const b = new Uint8Array(16);
  new DataView(b.buffer).setUint32(12, n);
  return b;
};

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PspError);
    return (e as PspError).code;
  }
  return "ok";
}

describe("MemoryReplayStore", () => {
  it("refuses a cti it has seen while the entry is live", () => {
    const clock = new ManualClock(1_000_000);
    const store = new MemoryReplayStore(clock);
    expect(code(() => store.checkAndInsert(cti(1), 1_060_000))).toBe("ok");
    expect(code(() => store.checkAndInsert(cti(1), 1_060_000))).toBe("PSP_ERR_CAP_REPLAYED");
    expect(code(() => store.checkAndInsert(cti(2), 1_060_000))).toBe("ok");
    clock.set(1_059_999);
    expect(code(() => store.checkAndInsert(cti(1), 1_060_000))).toBe("PSP_ERR_CAP_REPLAYED");
  });

  it("forgets entries once their keep-until has passed, and only then", () => {
    const clock = new ManualClock(1_000_000);
    const store = new MemoryReplayStore(clock);
    store.checkAndInsert(cti(1), 1_000_500);
    store.checkAndInsert(cti(2), 1_001_000);
    store.checkAndInsert(cti(3), 1_001_001);
    clock.set(1_000_999);
    expect(store.prune()).toBe(0); // cti(1) is dead but shares a bucket with a live entry
    clock.set(1_001_000);
    expect(store.prune()).toBe(2);
    expect(store.size).toBe(1);
    clock.set(1_002_000);
    expect(store.prune()).toBe(1);
    expect(store.size).toBe(0);
  });

  it("does not store entries that are already dead", () => {
    const clock = new ManualClock(5_000);
    const store = new MemoryReplayStore(clock);
    store.checkAndInsert(cti(1), 4_000);
    expect(store.size).toBe(0);
  });

  it("when full of live entries refuses new ids instead of forgetting old ones", () => {
    const clock = new ManualClock(0);
    const store = new MemoryReplayStore(clock, { maxEntries: 3 });
    for (let i = 0; i < 3; i++) store.checkAndInsert(cti(i), 10_000 + i * 1000);
    expect(code(() => store.checkAndInsert(cti(9), 20_000))).toBe("PSP_ERR_CAP_REPLAY_STORE_FULL");
    // Old ids are still remembered: a replay is still a replay, not a "full".
    expect(code(() => store.checkAndInsert(cti(0), 10_000))).toBe("PSP_ERR_CAP_REPLAYED");
    clock.set(10_000); // the oldest entry expires: room for one
    expect(code(() => store.checkAndInsert(cti(9), 20_000))).toBe("ok");
    expect(code(() => store.checkAndInsert(cti(10), 20_000))).toBe("PSP_ERR_CAP_REPLAY_STORE_FULL");
  });

  it("prunes lazily on insert at most once per interval", () => {
    const clock = new ManualClock(0);
    const store = new MemoryReplayStore(clock, { pruneIntervalMs: 1_000 });
    for (let i = 0; i < 100; i++) store.checkAndInsert(cti(i), 500);
    expect(store.size).toBe(100);
    clock.set(2_000);
    store.checkAndInsert(cti(1000), 60_000);
    expect(store.size).toBe(1);
  });

  it("survives long gaps and a clock stepping backwards", () => {
    const clock = new ManualClock(1e12);
    const store = new MemoryReplayStore(clock);
    store.checkAndInsert(cti(1), 1e12 + 1000);
    clock.set(1e12 + 86_400_000); // a day later: walks buckets, not 86,400 seconds
    expect(store.prune()).toBe(1);
    clock.set(1e12 - 10_000); // stepped back
    store.checkAndInsert(cti(2), 1e12 - 5_000);
    clock.set(1e12);
    expect(store.prune()).toBe(1);
    expect(store.size).toBe(0);
  });

  it("bounds cti length", () => {
    const store = new MemoryReplayStore(new ManualClock(0));
    expect(code(() => store.checkAndInsert(new Uint8Array(0), 1000))).toBe("PSP_ERR_CAP_MALFORMED");
    expect(
      code(() => store.checkAndInsert(new Uint8Array(DEFAULT_REPLAY_STORE_LIMITS.maxCtiBytes + 1), 1000)),
    ).toBe("PSP_ERR_CAP_MALFORMED");
  });

  it("keeps check-and-insert O(1): 100,000 inserts and prunes stay fast", () => {
    const clock = new ManualClock(0);
    const store = new MemoryReplayStore(clock);
    const t = performance.now();
    for (let i = 0; i < 100_000; i++) {
      if (i % 1000 === 0) clock.advance(1000);
      store.checkAndInsert(cti(i), clock.now() + 180_000);
    }
    const ms = performance.now() - t;
    expect(store.size).toBeLessThanOrEqual(100_000);
    expect(ms).toBeLessThan(2_000); // ~1 µs each; generous for a loaded 2-core machine
  });
});
