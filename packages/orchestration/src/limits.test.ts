import { describe, expect, it } from "vitest";
import { DEFAULT_ORCH_LIMITS, resolveOrchLimits } from "./limits.ts";

describe("resolveOrchLimits", () => {
  it("returns the defaults, or the defaults with the overrides, frozen", () => {
    expect(resolveOrchLimits()).toBe(DEFAULT_ORCH_LIMITS);
    const l = resolveOrchLimits({ maxEventsPerPoll: 10 });
    expect(l.maxEventsPerPoll).toBe(10);
    expect(l.maxRetainedFanouts).toBe(DEFAULT_ORCH_LIMITS.maxRetainedFanouts);
    expect(Object.isFrozen(l)).toBe(true);
  });

  it.each([
    ["receiptSignatureEvery", 0],
    ["receiptSignatureEvery", 1.5],
    ["unfetchedResultGraceMs", -1],
    ["unfetchedResultGraceMs", Number.NaN],
    ["maxSessionsPerLink", -1],
    ["maxSessionsPerLink", 0.5],
    ["maxEventsPerPoll", 0],
    ["maxEventsPerPoll", 2.5],
    ["maxEventsPerPoll", Number.NaN],
  ] as const)("refuses %s = %s", (name, value) => {
    expect(() => resolveOrchLimits({ [name]: value })).toThrow(RangeError);
  });
});
