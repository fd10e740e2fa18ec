// The thread registry.ts (parseOffThread) parses a large changed fleet.yaml on, so that the
// aggregator's event loop keeps serving while yaml works. Plain JavaScript because a worker starts
// without its parent's module hooks: it registers tsx's itself, as bin/os-orchestration.js does,
// then runs registry.ts's own parser and posts its reply once.
import { parentPort, workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

// Invariant 1: the aggregator writes no file, tsx's on-disk compile cache included.
process.env.TSX_DISABLE_CACHE = "1";
register();
const { parseForWorker } = await import("./registry.ts");
parentPort.postMessage(parseForWorker(workerData));
