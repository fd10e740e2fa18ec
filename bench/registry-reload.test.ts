import { describe, expect, it } from "vitest";
import { parseRegistry } from "../packages/orchestration/src/registry.ts";
import { fleetText, measureReloads, RELOAD_SAMPLE_MS } from "./registry-reload.ts";

/** Relative precision of a histogram of 3 significant figures. */
const HISTOGRAM_PRECISION = 1e-3;

describe("bench registry: reloads under a watcher", () => {
  it("writes a valid fleet of the fan-out bench's shape, one tag marked", () => {
    const r = parseRegistry(fleetText(8, "north-7"), { limits: { maxTargets: 20_000 } });
    expect(r.toteboxes).toHaveLength(8);
    expect(r.toteboxes.map((t) => t.tags.region)).toEqual([
      "north-7",
      "south",
      "east",
      "west",
      "north",
      "south",
      "east",
      "west",
    ]);
    expect(new Set(r.toteboxes.map((t) => t.fingerprint)).size).toBe(8);
  });

  it("records each reload's worst delay within its wall time, and an in-place parse in it", {
    timeout: 60_000,
  }, async () => {
    for (const offThread of [false, true]) {
      // 400 Toteboxes (~80 KB): a parse in place of tens of ms, well above the sampler's tick.
      const f = await measureReloads({ n: 400, reloads: 2, offThread, timeoutMs: 25_000 });
      expect(f.wallMs).toHaveLength(2);
      expect(f.worstDelayMs).toHaveLength(2);
      for (let i = 0; i < 2; i++) {
        // The sampler runs from the file replaced to the new registry, inside the wall time. Its
        // histogram (Node's createHistogram: 3 significant figures) reads a value back as the top
        // of its bucket, up to 1 part in 1,000 above what was recorded.
        expect(f.worstDelayMs[i]!).toBeLessThanOrEqual(f.wallMs[i]! * (1 + HISTOGRAM_PRECISION));
        // In place the parse is one synchronous stretch that ends in the turn the sampler stops
        // in, so the worst delay holds all of it (once it outlasts a tick, which stop() needs).
        if (!offThread && f.parseMs[i]! >= RELOAD_SAMPLE_MS) {
          expect(f.worstDelayMs[i]!).toBeGreaterThanOrEqual(f.parseMs[i]!);
        }
      }
      // On the thread the parse is not on the loop: its time (the thread's start included) is
      // far above the loop's worst delay.
      if (offThread) expect(Math.min(...f.parseMs)).toBeGreaterThan(Math.max(...f.worstDelayMs));
    }
  });
});
