import { describe, expect, it } from "vitest";
import { parseRegistry } from "../packages/orchestration/src/registry.ts";
import { fleetText, measureReloads } from "./registry-reload.ts";

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

  it("measures each reload, in place and on the thread, and checks what each delivered", {
    timeout: 60_000,
  }, async () => {
    for (const offThread of [false, true]) {
      const f = await measureReloads({ n: 50, reloads: 2, offThread });
      expect(f.offThread).toBe(offThread);
      expect(f.wallMs).toHaveLength(2);
      expect(f.worstDelayMs).toHaveLength(2);
      for (const ms of [...f.wallMs, ...f.worstDelayMs]) expect(Number.isFinite(ms) && ms >= 0).toBe(true);
    }
  });
});
