#!/usr/bin/env node
// Runs the TypeScript CLI through tsx's loader: the repository ships sources, not a build.
// The aggregator writes no file (invariant 1), so tsx's on-disk compile cache is off: the
// sources are compiled in memory at each start (about half a second).
import { register } from "tsx/esm/api";

process.env.TSX_DISABLE_CACHE ??= "1";
register();
await import("../src/cli.ts");
