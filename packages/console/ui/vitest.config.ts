/**
 * The dashboard's unit tests (pure modules and the API client against a real HTTP server).
 * The root vitest config only includes packages/<pkg>/src; run these with
 *   npx vitest run --config packages/console/ui/vitest.config.ts
 */
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  root: dirname(fileURLToPath(import.meta.url)),
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
    testTimeout: 30_000,
    pool: "forks",
  },
});
