#!/usr/bin/env node
// Runs the TypeScript CLI through tsx's loader: the repository ships sources, not a build.
// The aggregator writes no file (invariant 1), so tsx's on-disk compile cache is off: the
// sources are compiled in memory at each start (about half a second). tsx reads the variable when
// its module is first evaluated, so it is set before tsx is imported.
process.env.TSX_DISABLE_CACHE ??= "1";
const { register } = await import("tsx/esm/api");
register();
await import("../src/cli.ts");
