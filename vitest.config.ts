import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // Every package's tests, and the dashboard's own (pure modules, API client over real HTTP).
    include: ["packages/*/src/**/*.test.ts", "packages/console/ui/src/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    reporters: ["default"],
  },
});
