import { describe, expect, it } from "vitest";
import { fleetWorkerCount, maxToteboxesPerWorker } from "./sim-fleet.ts";

describe("maxToteboxesPerWorker", () => {
  it("keeps a worker's descriptors under this machine's limit of 20,000 for every hub held at once", () => {
    // Four hubs: the 2,500 a worker always held. Five (the paced floor added): fewer.
    expect(maxToteboxesPerWorker(4)).toBe(2_500);
    expect(maxToteboxesPerWorker(5)).toBe(2_187);
    for (let hubs = 0; hubs <= 12; hubs++) {
      expect(maxToteboxesPerWorker(hubs) * (3 + hubs)).toBeLessThanOrEqual(17_500);
    }
    // 10,000 Toteboxes and five hubs: five workers, not four.
    expect(Math.ceil(10_000 / maxToteboxesPerWorker(5))).toBe(5);
  });

  it("refuses a count of hubs that is not a whole number", () => {
    for (const h of [-1, 1.5, Number.NaN]) {
      expect(() => maxToteboxesPerWorker(h)).toThrow(expect.objectContaining({ code: "BENCH_ERR_ARGS" }));
    }
  });
});

describe("fleetWorkerCount", () => {
  it("gives four workers for the four hubs of old, and more only where a worker would run out", () => {
    expect(fleetWorkerCount(1_000)).toBe(4);
    expect(fleetWorkerCount(10_000)).toBe(4);
    expect(fleetWorkerCount(10_000, 4, 4)).toBe(4);
    expect(fleetWorkerCount(1_000, 4, 5)).toBe(4);
    expect(fleetWorkerCount(10_000, 4, 5)).toBe(5);
    expect(fleetWorkerCount(20_000, 4, 5)).toBe(10);
  });

  it("never gives fewer than two, nor more than there are Toteboxes", () => {
    expect(fleetWorkerCount(1, 4, 4)).toBe(1);
    expect(fleetWorkerCount(3, 1, 4)).toBe(2);
    expect(fleetWorkerCount(100, 1, 4)).toBe(2);
  });
});
