// The thread registry.ts (parseOffThread) parses a large changed fleet.yaml on, so that the
// aggregator's event loop keeps serving while yaml works. Plain JavaScript because a worker starts
// without its parent's module hooks: it registers tsx's itself, as bin/os-orchestration.js does,
// then runs registry.ts's own parser and posts its reply once.
import { parentPort, workerData } from "node:worker_threads";

// Invariant 1: the aggregator writes no file, tsx's on-disk compile cache included. tsx reads the
// variable when its module is first evaluated, so it is set before tsx is imported (the parent
// also sets it in this thread's environment).
process.env.TSX_DISABLE_CACHE = "1";
const { register } = await import("tsx/esm/api");
register();
const { parseForWorker } = await import("./registry.ts");
parentPort.postMessage(parseForWorker(workerData));
