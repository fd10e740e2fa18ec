/**
 * Builds the operator dashboard into packages/console/ui-dist: static, self-contained files (no CDN,
 * no external font) that `os-console ui` serves at `/`.
 *
 *   npx vite build --config packages/console/ui/vite.config.ts
 *
 * `UI_DEV_FIXTURES=1 npx vite --config packages/console/ui/vite.config.ts` serves /api/* from
 * ./dev-fixtures for development. That middleware exists only on the dev server (`apply: "serve"`)
 * and only with the variable set: a production build never contains it.
 */
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import preact from "@preact/preset-vite";
import { defineConfig, type Plugin } from "vite";

const here = dirname(fileURLToPath(import.meta.url));

function devFixtures(): Plugin {
  return {
    name: "os-console-dev-fixtures",
    apply: "serve",
    async configureServer(server) {
      if (process.env.UI_DEV_FIXTURES !== "1") return;
      const { fixtureMiddleware } = await import("./dev-fixtures/middleware.ts");
      server.middlewares.use(fixtureMiddleware());
    },
  };
}

export default defineConfig({
  root: here,
  // Relative asset URLs: the files work wherever the console server mounts them.
  base: "./",
  plugins: [preact({ devtoolsInProd: false, prefreshEnabled: false }), devFixtures()],
  build: {
    outDir: resolve(here, "../ui-dist"),
    emptyOutDir: true,
    target: "es2022",
    // One small CSS file and a few JS chunks; no inlined data: URLs to keep a strict CSP possible.
    assetsInlineLimit: 0,
    sourcemap: false,
    reportCompressedSize: true,
    chunkSizeWarningLimit: 800,
  },
  server: { host: "127.0.0.1", strictPort: false },
});
