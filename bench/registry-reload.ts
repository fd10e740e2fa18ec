/**
 * `npm run bench -- registry`: what a hot reload of fleet.yaml costs the aggregator's event loop.
 *
 * yaml cannot yield, so a reload parsed in place holds the event loop (every operator's queries,
 * every link's frames) for the whole parse; a file of `offThreadBytes` or more is parsed on a
 * worker thread instead (registry.ts, fifteenth round in docs/performance.md). For each fleet size
 * this section writes a fleet.yaml of the fan-out bench's shape, then replaces it with one tag
 * changed, several times, under a watcher that parses in place and under one that parses on the
 * thread, and samples the event loop's delay from the write to the new registry (loop-delay.ts).
 * The baseline, in the same run, is the parse in place.
 *
 * Environment: BENCH_REGISTRY_SIZES (default "1000,10000"; at most 19,000, which fits the 4 MiB
 * registry limit), BENCH_REGISTRY_RELOADS (default 4).
 */
import { createHash } from "node:crypto";
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import {
  loadRegistry,
  type Registry,
  type RegistryParseInfo,
  watchRegistry,
} from "../packages/orchestration/src/registry.ts";
import { BenchError } from "./bench-error.ts";
import { envInt, envSizes } from "./env.ts";
import { TurnLoopDelay } from "./loop-delay.ts";
import { type BenchRow, fmt, median } from "./report.ts";

const REGIONS = ["north", "south", "east", "west"];
/** A reload that takes longer than this failed (the watcher would have reported an error). */
const RELOAD_TIMEOUT_MS = 120_000;
/** The sampler's tick, ms: a reload's worst delay is recorded if it outlasts this. */
export const RELOAD_SAMPLE_MS = 5;
/** Most Toteboxes whose fleet.yaml of this shape (~205 bytes each) fits the 4 MiB limit. */
const MAX_SIZE = 19_000;

/** fleet.yaml text of `n` Toteboxes, the fan-out bench's shape; `mark` changes one tag value. */
export function fleetText(n: number, mark = "north"): string {
  return stringify({
    version: 1,
    tenants: { bench: {} },
    toteboxes: Array.from({ length: n }, (_, i) => ({
      id: `tb-${String(i).padStart(5, "0")}`,
      address: `127.0.0.1:${20_000 + (i % 20_000)}`,
      fingerprint: createHash("sha256").update(String(i)).digest("hex"),
      tags: { region: i === 0 ? mark : REGIONS[i % 4]!, kind: i % 3 === 0 ? "holding" : "property" },
      tenants: ["bench"],
    })),
  });
}

export interface ReloadFigures {
  /** Worst event-loop delay from the file replaced to the new registry, ms, per reload. */
  readonly worstDelayMs: number[];
  /** Wall time from the file replaced to the new registry, ms, per reload. */
  readonly wallMs: number[];
  /** The watcher's own parse time (RegistryParseInfo.ms), per reload. */
  readonly parseMs: number[];
}

/**
 * Reloads `reloads` times under one watcher and samples the loop. `offThread` picks the watcher's
 * threshold: 0 (every change on the thread) or Infinity (every change in place).
 */
export async function measureReloads(o: {
  n: number;
  reloads: number;
  offThread: boolean;
  /** Per reload (default 120 s). */
  timeoutMs?: number;
}): Promise<ReloadFigures> {
  const dir = mkdtempSync(join(tmpdir(), "os-orch-bench-registry-"));
  const path = join(dir, "fleet.yaml");
  const limits = { maxTargets: Math.max(20_000, o.n) };
  try {
    writeFileSync(path, fleetText(o.n));
    // Every text made before the first reload: making one is megabytes of garbage that would
    // otherwise be collected inside a measured reload.
    const texts = Array.from({ length: o.reloads }, (_, k) => fleetText(o.n, `north-${k}`));
    const initial = await loadRegistry(path, { limits });
    let wake: ((r: { next: Registry; info: RegistryParseInfo } | Error) => void) | undefined;
    const watcher = watchRegistry({
      path,
      initial,
      limits,
      pollMs: 50,
      offThreadBytes: o.offThread ? 0 : Number.POSITIVE_INFINITY,
      onChange: (next, _diff, info) => wake?.({ next, info }),
      onError: (e) =>
        wake?.(new BenchError("BENCH_ERR_RELOAD", `registry reload refused: ${e.code} ${e.message}`)),
    });
    const figures: ReloadFigures = { worstDelayMs: [], wallMs: [], parseMs: [] };
    try {
      for (let k = 0; k < o.reloads; k++) {
        const loop = new TurnLoopDelay(RELOAD_SAMPLE_MS);
        let timeout: NodeJS.Timeout | undefined;
        // A ref'd handle while waiting (the watcher's own timers are unref'd).
        const changed = new Promise<{ next: Registry; info: RegistryParseInfo } | Error>((resolve) => {
          wake = resolve;
          timeout = setTimeout(
            () => resolve(new BenchError("BENCH_ERR_TIMEOUT", "registry reload timed out")),
            o.timeoutMs ?? RELOAD_TIMEOUT_MS,
          );
        });
        let got: { next: Registry; info: RegistryParseInfo } | Error;
        let wallMs: number;
        try {
          // As an editor saves: a new file renamed over the old one. Nothing of the watcher's can
          // run before the sampler starts: this is one synchronous stretch.
          writeFileSync(`${path}.tmp`, texts[k]!);
          renameSync(`${path}.tmp`, path);
          const started = performance.now();
          loop.start();
          got = await changed;
          // The delay of the turn that delivered the registry is recorded by stop(): it runs in
          // that same turn (onChange resolved `changed`; this continuation is its microtask).
          loop.stop();
          wallMs = performance.now() - started;
        } finally {
          loop.stop();
          clearTimeout(timeout);
        }
        if (got instanceof Error) throw got;
        if (got.next.toteboxes[0]?.tags.region !== `north-${k}` || got.info.offThread !== o.offThread) {
          throw new BenchError("BENCH_ERR_RELOAD", "registry reload delivered another registry");
        }
        figures.wallMs.push(wallMs);
        figures.worstDelayMs.push(loop.maxMs);
        figures.parseMs.push(got.info.ms);
      }
    } finally {
      watcher.close();
    }
    return figures;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchRegistryReload(): Promise<BenchRow[]> {
  const sizes = envSizes("BENCH_REGISTRY_SIZES", "1000,10000", MAX_SIZE);
  const reloads = envInt("BENCH_REGISTRY_RELOADS", 4, 1, 100);
  const rows: BenchRow[] = [];
  for (const n of sizes) {
    const label = `registry N=${n.toLocaleString("en-US")}`;
    const bytes = Buffer.byteLength(fleetText(n));
    // In turns, so that a slow phase of the host weighs on both alike.
    const inPlace: ReloadFigures[] = [];
    const onThread: ReloadFigures[] = [];
    for (let turn = 0; turn < 2; turn++) {
      console.error(`bench registry: N=${n}, turn ${turn + 1}/2`);
      inPlace.push(await measureReloads({ n, reloads, offThread: false }));
      onThread.push(await measureReloads({ n, reloads, offThread: true }));
    }
    const delayIn = median(inPlace.flatMap((f) => f.worstDelayMs));
    const delayOff = median(onThread.flatMap((f) => f.worstDelayMs));
    const wallIn = median(inPlace.flatMap((f) => f.wallMs));
    const wallOff = median(onThread.flatMap((f) => f.wallMs));
    const count = 2 * reloads;
    rows.push(
      {
        section: "registry",
        name: `${label}: reload parsed in place, worst event-loop delay (median of ${count})`,
        value: delayIn,
        unit: "ms",
        ratio: `baseline; ${fmt(bytes / 1e6)} MB of fleet.yaml, new registry after ${fmt(wallIn)} ms`,
      },
      {
        section: "registry",
        name: `${label}: reload parsed on a worker thread, worst event-loop delay (median of ${count})`,
        value: delayOff,
        unit: "ms",
        ratio: `${fmt(delayOff / delayIn)}× in place; new registry after ${fmt(wallOff)} ms (${fmt(wallOff / wallIn)}× in place)`,
      },
    );
  }
  return rows;
}
