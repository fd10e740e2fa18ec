import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { SessionCache } from "./session-cache.ts";

/** A cache of named fake stubs that records which were opened and released. */
function harness(max: number) {
  const opened: string[] = [];
  const released: string[] = [];
  let n = 0;
  const clock = { now: 1_000_000 };
  const cache = new SessionCache<string>(
    max,
    (s) => released.push(s),
    () => clock.now,
  );
  const acquire = (key: string, expiresAt?: number) =>
    cache.acquire(
      key,
      () => {
        const s = `${key}#${++n}`;
        opened.push(s);
        return s;
      },
      expiresAt,
    );
  return { cache, acquire, opened, released, clock };
}

/** Reproduce a property failure with FC_SEED=<logged seed>. */
const fcSeed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("session-cache fast-check seed", fcSeed);

describe("SessionCache", () => {
  it("evicts exactly the least recently used session, whatever the order of acquires (against a model)", () => {
    // The cache skips the Map's delete-and-set when the key is already the most recent one; this
    // checks that shortcut never changes which session is evicted.
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.record({ key: fc.constantFrom("a", "b", "c", "d", "e"), forget: fc.boolean() }), {
          maxLength: 60,
        }),
        (max, steps) => {
          const h = harness(max);
          // The model: keys from least to most recently used, and each cached key's stub.
          let order: string[] = [];
          const stubs = new Map<string, string>();
          for (const { key, forget } of steps) {
            const handle = h.acquire(key);
            const known = stubs.get(key);
            if (known !== undefined) expect(handle.stub).toBe(known);
            else stubs.set(key, handle.stub);
            order = [...order.filter((k) => k !== key), key];
            while (order.length > max) stubs.delete(order.shift()!);
            handle.end(forget);
            if (forget) {
              order = order.filter((k) => k !== key);
              stubs.delete(key);
            }
            expect(h.cache.size).toBe(order.length);
          }
          // Every session opened and no longer cached was released, exactly once.
          const cached = new Set(stubs.values());
          expect([...h.released].sort()).toEqual(h.opened.filter((s) => !cached.has(s)).sort());
        },
      ),
      { seed: fcSeed, numRuns: 300 },
    );
  });

  it("reuses one session per key: authorized once, released only when evicted", () => {
    const h = harness(2);
    const a1 = h.acquire("a");
    a1.end(false);
    const a2 = h.acquire("a");
    expect(a2.stub).toBe(a1.stub);
    a2.end(false);
    h.acquire("b").end(false);
    expect(h.released).toEqual([]);
    // A third key evicts the least recently used ("a").
    h.acquire("c").end(false);
    expect(h.released).toEqual(["a#1"]);
    expect(h.cache.size).toBe(2);
    expect(h.acquire("a").stub).toBe("a#4"); // authorized afresh
  });

  it("an evicted session still in use is released only when its last holder ends", () => {
    const h = harness(1);
    const a = h.acquire("a");
    const b = h.acquire("b"); // evicts "a" while a fan-out still holds it
    expect(h.released).toEqual([]);
    a.end(false);
    expect(h.released).toEqual(["a#1"]);
    b.end(false);
    expect(h.released).toEqual(["a#1"]); // "b" stays cached
  });

  it("a failure forgets the session for later fan-outs but leaves current holders intact", () => {
    const h = harness(4);
    const first = h.acquire("g");
    const second = h.acquire("g");
    expect(second.stub).toBe(first.stub);
    first.end(true); // e.g. the Totebox refused this fan-out's read
    expect(h.released).toEqual([]); // the other fan-out can still cancel through it
    const third = h.acquire("g");
    expect(third.stub).not.toBe(first.stub); // no later fan-out reuses it
    second.end(false);
    expect(h.released).toEqual(["g#1"]);
    third.end(false);
    expect(h.released).toEqual(["g#1"]);
  });

  it("ending a handle twice counts once", () => {
    const h = harness(0);
    const a = h.acquire("a");
    const b = h.acquire("a"); // max 0: nothing is shared
    expect(b.stub).not.toBe(a.stub);
    a.end(false);
    a.end(false);
    expect(h.released).toEqual(["a#1"]);
    b.end(true);
    expect(h.released).toEqual(["a#1", "a#2"]);
  });

  it("refuses a size that is not a whole number ≥ 0", () => {
    for (const max of [-1, 1.5, Number.NaN])
      expect(() => new SessionCache(max, () => {})).toThrow(RangeError);
  });

  it("a session whose grant has ended leaves at the next acquire, not when evicted (injected clock)", () => {
    const h = harness(4);
    const old = h.acquire("old", 1_000_500);
    old.end(false);
    const held = h.acquire("held", 1_000_500); // ends at the same time, but a fan-out still holds it
    h.acquire("live", 2_000_000).end(false);
    h.clock.now = 1_000_499;
    h.acquire("live", 2_000_000).end(false);
    expect(h.released).toEqual([]); // not yet: the window is still open
    h.clock.now = 1_000_500;
    h.acquire("live", 2_000_000).end(false);
    expect(h.released).toEqual(["old#1"]); // left at once: nobody holds it
    expect(h.cache.size).toBe(1);
    held.end(false);
    expect(h.released).toEqual(["old#1", "held#2"]); // released by its last holder
    // A fan-out presenting the ended grant again (within the aggregator's clock skew) gets a fresh
    // session that is not cached: released as soon as its holder ends it.
    const again = h.acquire("old", 1_000_500);
    expect(again.stub).toBe("old#4");
    expect(h.cache.size).toBe(1);
    again.end(false);
    expect(h.released).toEqual(["old#1", "held#2", "old#4"]);
  });
});
