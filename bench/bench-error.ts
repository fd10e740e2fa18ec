/**
 * The benches' one error class. Its own module so that every bench module can throw it without
 * importing the fleet worker (sim-fleet-worker.ts re-exports it for the modules that always have).
 */
export type BenchErrorCode =
  | "BENCH_ERR_ARGS"
  | "BENCH_ERR_IDENTITY"
  | "BENCH_ERR_IPC"
  | "BENCH_ERR_WORKER"
  | "BENCH_ERR_LISTEN"
  | "BENCH_ERR_TIMEOUT"
  | "BENCH_ERR_HUB"
  | "BENCH_ERR_RELOAD";

/** A stable code, and a message without key or token bytes. */
export class BenchError extends Error {
  override readonly name = "BenchError";
  readonly code: BenchErrorCode;
  constructor(code: BenchErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
