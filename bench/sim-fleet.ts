/**
 * A simulated fleet of Toteboxes spread over worker processes (bench/sim-fleet-worker.ts).
 *
 * Each simulated Totebox is a real PSP subject server with real TLS, real capability checks and
 * real receipts, many per process; the same workers serve the floor and usual-way baselines per
 * Totebox. Worker and hub children are tracked here and killed when this process exits or is
 * interrupted (Ctrl-C), and each child exits on its own when its IPC channel to us closes.
 */
import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import {
  BenchError,
  emptySimStats,
  MAX_SIM_TOTEBOXES,
  type SimToteboxDescriptor,
  type SimToteboxStats,
  type WorkerReply,
} from "./sim-fleet-worker.ts";

export { BenchError, type BenchErrorCode } from "./sim-fleet-worker.ts";

export interface SimFleetOptions {
  count: number;
  /**
   * Worker processes. Default 4; raised so that no worker needs more file descriptors than
   * FD_BUDGET_PER_WORKER allows for `hubs` (2,500 Toteboxes a worker with 4 hubs).
   */
  workers?: number;
  /** Hubs that hold a link to every Totebox at once (the fan-out bench's contenders). Default 4. */
  hubs?: number;
  aggregator: { fingerprint: string; publicKeyRaw: Uint8Array };
  operator: { publicKeyRaw: Uint8Array };
  /** Every operator each Totebox trusts (paired); `operator` is always trusted too. */
  operators?: ReadonlyArray<{ publicKeyRaw: Uint8Array }>;
  seed: number;
  /** Second octet of the loopback addresses (127.<base>.x.y). Default 70. */
  hostBase?: number;
  /** Startup progress, for a long first run (identity generation). */
  onProgress?: (message: string) => void;
  /** Longest wait for all workers to be ready, ms. Default 20 minutes (first run at 10,000). */
  startTimeoutMs?: number;
}

export interface SimFleetTotebox {
  index: number;
  id: string;
  host: string;
  port: number;
  fingerprint: string;
  publicKeyRaw: Uint8Array;
  tags: Record<string, string>;
}

export interface SimFleetEndpoint {
  host: string;
  port: number;
  fingerprint: string;
}

export interface SimFleetHttpsEndpoint extends SimFleetEndpoint {
  url: string;
  /** The Totebox's certificate: the usual way trusts it as its only CA. */
  certPem: string;
}

export interface SimFleetWorkerStats {
  stats: SimToteboxStats;
  /** Sum over workers of user + system CPU since they started, µs. */
  cpuMicros: number;
  rssBytes: number;
}

export interface SimFleet {
  /** Indexed by Totebox index; `floor[i]` and `https[i]` belong to `toteboxes[i]`. */
  toteboxes: SimFleetTotebox[];
  floor: SimFleetEndpoint[];
  https: SimFleetHttpsEndpoint[];
  workerPids: number[];
  /** Sets the size of the floor's fixed answer frame (payload bytes). */
  setFloorAnswerBytes(bytes: number): Promise<void>;
  /** Counters and CPU of all workers (for Totebox-side cost per answer). */
  stats(): Promise<SimFleetWorkerStats>;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Child processes: tracked and killed on exit, Ctrl-C and termination

const children = new Set<ChildProcess>();
let cleanupInstalled = false;

function killAll(): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }
}

function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on("exit", killAll);
  const signals: Array<[NodeJS.Signals, number]> = [
    ["SIGINT", 130],
    ["SIGTERM", 143],
    ["SIGHUP", 129],
  ];
  for (const [sig, code] of signals) {
    process.once(sig, () => {
      killAll();
      process.exit(code);
    });
  }
}

/** Registers a child so it is killed when this process ends, however it ends. */
export function trackChild(child: ChildProcess): void {
  installCleanup();
  children.add(child);
  child.once("exit", () => children.delete(child));
}

/**
 * Forks a TypeScript module as a child process with tsx loaded (as packages/totebox/bin does with
 * tsx's register()), an IPC channel using structured clone (so Uint8Array crosses intact), and the
 * given extra node flags.
 */
export function forkTs(file: string, args: string[] = [], nodeFlags: string[] = []): ChildProcess {
  // BENCH_CPU_PROF_DIR: every hub and worker process writes a V8 CPU profile there on exit
  // (NODE_OPTIONS refuses --cpu-prof), for profile-guided work on the hot paths.
  const prof = process.env.BENCH_CPU_PROF_DIR;
  const profFlags = prof ? ["--cpu-prof", `--cpu-prof-dir=${prof}`] : [];
  const child = fork(file, args, {
    execArgv: ["--import", "tsx", ...nodeFlags, ...profFlags],
    serialization: "advanced",
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  trackChild(child);
  return child;
}

/** Waits for the next message matching `accept`; rejects if the child exits or reports an error. */
export function nextMessage<T>(
  child: ChildProcess,
  accept: (m: unknown) => T | undefined,
  timeoutMs: number,
  what: string,
  onOther?: (m: unknown) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer);
      child.off("message", onMessage);
      child.off("exit", onExit);
    };
    const onMessage = (m: unknown) => {
      const err = m as { type?: unknown; code?: unknown; message?: unknown };
      if (err && err.type === "error") {
        cleanup();
        reject(
          new BenchError(
            "BENCH_ERR_WORKER",
            `${what}: child reported ${String(err.code)}: ${String(err.message)}`,
          ),
        );
        return;
      }
      let v: T | undefined;
      try {
        v = accept(m);
      } catch (e) {
        cleanup();
        reject(e);
        return;
      }
      if (v !== undefined) {
        cleanup();
        resolve(v);
      } else onOther?.(m);
    };
    const onExit = (code: number | null, signal: string | null) => {
      cleanup();
      reject(new BenchError("BENCH_ERR_WORKER", `${what}: child exited (code ${code}, signal ${signal})`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new BenchError("BENCH_ERR_TIMEOUT", `${what}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("message", onMessage);
    child.once("exit", onExit);
  });
}

/** Ends a child: asks politely over IPC, then kills it by its pid if it has not exited in time. */
export async function endChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    if (child.connected) child.send({ type: "close" });
  } catch {
    // Channel already gone: the kill below covers it.
  }
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------------------------

const WORKER_FILE = fileURLToPath(new URL("./sim-fleet-worker.ts", import.meta.url));
/**
 * Descriptors a worker may spend on its Toteboxes: 3 listeners per Totebox plus a live connection
 * from each hub held side by side (4 hubs: 2,500 × 7 = 17,500), under this machine's ulimit -n of
 * 20,000 (hard) with room for the rest (IPC, stdio, the runtime's own). With 5 hubs a worker
 * holding 2,500 ran out (EMFILE at 10,000, thirteenth round).
 */
const FD_BUDGET_PER_WORKER = 17_500;

/** The most Toteboxes one worker may hold when `hubs` hubs link to each. */
export function maxToteboxesPerWorker(hubs: number): number {
  if (!Number.isSafeInteger(hubs) || hubs < 0)
    throw new BenchError("BENCH_ERR_ARGS", "hubs must be a whole number");
  return Math.floor(FD_BUDGET_PER_WORKER / (3 + hubs));
}

function isDescriptor(v: unknown): v is SimToteboxDescriptor {
  const d = v as Partial<SimToteboxDescriptor> | null;
  return (
    !!d &&
    typeof d.index === "number" &&
    typeof d.id === "string" &&
    typeof d.host === "string" &&
    typeof d.fingerprint === "string" &&
    d.publicKeyRaw instanceof Uint8Array &&
    typeof d.certPem === "string" &&
    typeof d.pspPort === "number" &&
    typeof d.floorPort === "number" &&
    typeof d.httpsPort === "number" &&
    !!d.tags &&
    typeof d.tags === "object"
  );
}

/**
 * How many worker processes a fleet of `count` gets: `workers` (default 4, at least 2), raised
 * so that none holds more than maxToteboxesPerWorker(`hubs`, default 4), and never more than
 * `count`.
 */
export function fleetWorkerCount(count: number, workers = 4, hubs = 4): number {
  return Math.min(count, Math.max(2, workers, Math.ceil(count / maxToteboxesPerWorker(hubs))));
}

export async function startSimFleet(options: SimFleetOptions): Promise<SimFleet> {
  const { count, seed } = options;
  if (!Number.isSafeInteger(count) || count < 1 || count > MAX_SIM_TOTEBOXES) {
    throw new BenchError("BENCH_ERR_ARGS", `count must be 1..${MAX_SIM_TOTEBOXES}`);
  }
  const workerCount = fleetWorkerCount(count, options.workers, options.hubs);
  const timeoutMs = options.startTimeoutMs ?? 20 * 60_000;
  const progress = new Map<number, string>();
  const workers: ChildProcess[] = [];
  const close = async () => {
    await Promise.all(workers.map((w) => endChild(w)));
  };
  try {
    const parts = await Promise.all(
      Array.from({ length: workerCount }, async (_, w) => {
        const from = Math.floor((count * w) / workerCount);
        const to = Math.floor((count * (w + 1)) / workerCount);
        const child = forkTs(WORKER_FILE, [], ["--max-old-space-size=4096"]);
        workers.push(child);
        child.send({
          type: "start",
          seed,
          from,
          to,
          floorAnswerBytes: 0,
          hostBase: options.hostBase ?? 70,
          trust: {
            aggregatorFingerprint: options.aggregator.fingerprint,
            aggregatorPublicKeyRaw: options.aggregator.publicKeyRaw,
            operatorPublicKeyRaw: options.operator.publicKeyRaw,
            ...(options.operators
              ? { moreOperatorPublicKeysRaw: options.operators.map((o) => o.publicKeyRaw) }
              : {}),
          },
        });
        const ready = await nextMessage(
          child,
          (m) => {
            const r = m as WorkerReply;
            if (r?.type !== "ready" || !Array.isArray(r.toteboxes)) return undefined;
            if (!r.toteboxes.every(isDescriptor) || r.toteboxes.length !== to - from) {
              throw new BenchError("BENCH_ERR_IPC", "worker sent malformed Totebox descriptors");
            }
            return r.toteboxes;
          },
          timeoutMs,
          `fleet worker ${w}`,
          (m) => {
            const r = m as WorkerReply;
            if (r?.type === "progress" && options.onProgress) {
              progress.set(w, `${r.phase} ${r.done}/${r.total}`);
              options.onProgress(`fleet of ${count}: ${[...progress.values()].join(" | ")}`);
            }
          },
        );
        return ready;
      }),
    );
    const all = parts.flat().sort((a, b) => a.index - b.index);
    const pids = workers.map((w) => w.pid ?? -1);
    return {
      toteboxes: all.map((d) => ({
        index: d.index,
        id: d.id,
        host: d.host,
        port: d.pspPort,
        fingerprint: d.fingerprint,
        publicKeyRaw: d.publicKeyRaw,
        tags: d.tags,
      })),
      floor: all.map((d) => ({ host: d.host, port: d.floorPort, fingerprint: d.fingerprint })),
      https: all.map((d) => ({
        url: `https://${d.host}:${d.httpsPort}`,
        host: d.host,
        port: d.httpsPort,
        fingerprint: d.fingerprint,
        certPem: d.certPem,
      })),
      workerPids: pids,
      async setFloorAnswerBytes(bytes: number) {
        await Promise.all(
          workers.map((w) => {
            const ok = nextMessage(
              w,
              (m) => ((m as WorkerReply)?.type === "floor-ok" ? true : undefined),
              30_000,
              "floor answer size",
            );
            w.send({ type: "floor", answerBytes: bytes });
            return ok;
          }),
        );
      },
      async stats() {
        const all = await Promise.all(
          workers.map((w) => {
            const got = nextMessage(
              w,
              (m) => {
                const r = m as WorkerReply;
                return r?.type === "stats" ? r : undefined;
              },
              30_000,
              "worker stats",
            );
            w.send({ type: "stats" });
            return got;
          }),
        );
        const stats: SimToteboxStats = emptySimStats();
        let cpuMicros = 0;
        let rssBytes = 0;
        for (const s of all) {
          for (const k of Object.keys(stats) as (keyof SimToteboxStats)[]) stats[k] += s.stats[k];
          cpuMicros += s.cpuMicros;
          rssBytes += s.rssBytes;
        }
        return { stats, cpuMicros, rssBytes };
      },
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}
