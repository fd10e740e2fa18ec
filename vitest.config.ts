import { defineConfig } from "vitest/config";

/**
 * Two groups, run one after the other:
 * - unit: every package's own tests and the dashboard's (pure modules, API client over real
 *   HTTP), and the bench's own (its statistics, the paced floor's framing and work, its loop-delay
 *   sampler, the psp section's interleaved rounds), files in parallel;
 * - e2e: cross-package tests that start fleets of real processes (Toteboxes, the aggregator, the
 *   dashboard, Chromium), one file at a time: on a 2-core machine two such fleets at once would
 *   turn their timeouts (idle links, per-Totebox deadlines) into a measure of CPU contention.
 */
export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    reporters: ["default"],
    projects: [
      {
        test: {
          name: "unit",
          include: [
            "packages/*/src/**/*.test.ts",
            "packages/console/ui/src/**/*.test.ts",
            "bench/**/*.test.ts",
          ],
          exclude: ["packages/e2e/**", "**/node_modules/**"],
          testTimeout: 60_000,
          hookTimeout: 60_000,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: "e2e",
          include: ["packages/e2e/src/**/*.test.ts"],
          testTimeout: 60_000,
          hookTimeout: 60_000,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
