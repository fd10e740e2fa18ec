/**
 * The dashboard's state, outside any component so a fan-out keeps running (and its progress keeps
 * arriving) while the operator moves between pages. Pages read it; the App re-renders on change.
 *
 * Runs are keyed by the page slot they fill ("executive-summary", "portfolio", ...): the latest run
 * of each slot is what that page shows and what the Coverage page can inspect.
 */
import type {
  Api,
  FanOutPage,
  FanOutRequest,
  FleetEntry,
  Problem,
  ProgressEvent,
  Session,
  UiResult,
} from "./api.ts";
import { toProblem } from "./errors.ts";

/** Arrivals kept per run for the live list (the full per-Totebox answer is in the result). */
export const MAX_ARRIVALS = 2_000;

export type RunPhase = "starting" | "running" | "done" | "failed";

export interface Run {
  readonly key: string;
  readonly label: string;
  readonly request: FanOutRequest;
  /** Increases per start of this key: answers for an older generation are dropped. */
  readonly gen: number;
  readonly id: string | null;
  readonly phase: RunPhase;
  readonly answered: number;
  /** Null until the first progress page says how many were targeted. */
  readonly targeted: number | null;
  /** The latest arrivals (at most MAX_ARRIVALS), oldest first. */
  readonly arrivals: readonly ProgressEvent[];
  readonly arrivalsSeen: number;
  readonly result: UiResult | null;
  /** Transport-level failure (the fan-out's own error, if any, is result.error). */
  readonly error: Problem | null;
  readonly cancelling: boolean;
  readonly startedAt: number;
  readonly finishedAt: number | null;
}

export interface Load<T> {
  readonly phase: "loading" | "done" | "failed";
  readonly data: T | null;
  readonly error: Problem | null;
}

export interface DrillPair {
  readonly entityA: string;
  readonly nameA: string;
  readonly entityB: string;
  readonly nameB: string;
  readonly asOf: string | null;
}

export const DRILL_KEYS = { a: "drill-a", b: "drill-b" } as const;

export interface StoreOptions {
  readonly api: Api;
  /** Epoch ms; injected so tests are deterministic. */
  readonly now?: () => number;
  /** Coalesces progress-only notifications (a 10,000-Totebox fan-out sends many pages). */
  readonly defer?: (fn: () => void) => void;
}

export function isSettled(run: Run | undefined): boolean {
  return run !== undefined && (run.phase === "done" || run.phase === "failed");
}

export class Store {
  readonly #api: Api;
  readonly #now: () => number;
  readonly #defer: (fn: () => void) => void;
  readonly #runs = new Map<string, Run>();
  readonly #aborts = new Map<string, AbortController>();
  readonly #listeners = new Set<() => void>();
  #gen = 0;
  #deferred = false;
  #version = 0;
  session: Load<Session> | null = null;
  fleet: Load<FleetEntry[]> | null = null;
  drill: DrillPair | null = null;

  constructor(options: StoreOptions) {
    this.#api = options.api;
    this.#now = options.now ?? (() => Date.now());
    this.#defer = options.defer ?? ((fn) => setTimeout(fn, 50));
  }

  /** Changes on every state change: components compare it to know they are stale. */
  get version(): number {
    return this.#version;
  }

  subscribe(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  run(key: string): Run | undefined {
    return this.#runs.get(key);
  }

  /** Every page's latest run, most recently started first. */
  runs(): Run[] {
    return [...this.#runs.values()].sort((a, b) => b.startedAt - a.startedAt || b.gen - a.gen);
  }

  /** Phase changes notify at once, so `data-ready` flips in the same tick as the change. */
  #notify(): void {
    this.#version++;
    for (const fn of [...this.#listeners]) fn();
  }

  #notifySoon(): void {
    if (this.#deferred) return;
    this.#deferred = true;
    this.#defer(() => {
      this.#deferred = false;
      this.#notify();
    });
  }

  async loadSession(): Promise<void> {
    this.session = { phase: "loading", data: this.session?.data ?? null, error: null };
    this.#notify();
    try {
      this.session = { phase: "done", data: await this.#api.session(), error: null };
    } catch (e) {
      this.session = { phase: "failed", data: null, error: toProblem(e) };
    }
    this.#notify();
  }

  async loadFleet(): Promise<void> {
    this.fleet = { phase: "loading", data: this.fleet?.data ?? null, error: null };
    this.#notify();
    try {
      this.fleet = { phase: "done", data: await this.#api.fleet(), error: null };
    } catch (e) {
      this.fleet = { phase: "failed", data: null, error: toProblem(e) };
    }
    this.#notify();
  }

  #update(key: string, gen: number, patch: Partial<Run>, soon = false): Run | undefined {
    const cur = this.#runs.get(key);
    if (!cur || cur.gen !== gen) return undefined;
    const next = { ...cur, ...patch };
    this.#runs.set(key, next);
    if (soon) this.#notifySoon();
    else this.#notify();
    return next;
  }

  /**
   * Starts a fan-out in slot `key`, replacing (and cancelling) whatever ran there. Resolves when
   * it settles; never rejects (failures land in the run's `error`).
   */
  async start(key: string, label: string, request: FanOutRequest): Promise<Run> {
    const previous = this.#runs.get(key);
    if (previous && !isSettled(previous)) this.#abandon(previous);
    const gen = ++this.#gen;
    const abort = new AbortController();
    this.#aborts.set(key, abort);
    const run: Run = {
      key,
      label,
      request,
      gen,
      id: null,
      phase: "starting",
      answered: 0,
      targeted: null,
      arrivals: [],
      arrivalsSeen: 0,
      result: null,
      error: null,
      cancelling: false,
      startedAt: this.#now(),
      finishedAt: null,
    };
    this.#runs.set(key, run);
    this.#notify();
    let lastSeq = -1;
    try {
      const { id } = await this.#api.start(request);
      const started = this.#update(key, gen, { id, phase: "running" });
      if (!started) {
        // Replaced while the start was in flight: the server's fan-out is nobody's now.
        this.#api.cancel(id).catch(() => {});
        return run;
      }
      if (started.cancelling) this.#api.cancel(id).catch(() => {});
      const onPage = (p: FanOutPage) => {
        const cur = this.#runs.get(key);
        if (!cur || cur.gen !== gen) return;
        // Sequence numbers only grow: a replayed page (stream re-read) adds nothing twice.
        const fresh = p.events.filter((e) => e.seq > lastSeq);
        for (const e of fresh) lastSeq = Math.max(lastSeq, e.seq);
        const arrivals = fresh.length === 0 ? cur.arrivals : [...cur.arrivals, ...fresh].slice(-MAX_ARRIVALS);
        this.#update(
          key,
          gen,
          {
            answered: Math.max(cur.answered, p.answered),
            targeted: p.targeted,
            arrivals,
            arrivalsSeen: cur.arrivalsSeen + fresh.length,
          },
          true,
        );
      };
      const result = await this.#api.follow(id, onPage, abort.signal);
      return (
        this.#update(key, gen, {
          phase: "done",
          result,
          answered: result.answered,
          targeted: result.targeted,
          cancelling: false,
          finishedAt: this.#now(),
        }) ?? run
      );
    } catch (e) {
      return (
        this.#update(key, gen, {
          phase: "failed",
          error: toProblem(e),
          cancelling: false,
          finishedAt: this.#now(),
        }) ?? run
      );
    } finally {
      if (this.#aborts.get(key) === abort) this.#aborts.delete(key);
    }
  }

  /** Asks the server to cancel; the run settles when the server's result (cancelled) arrives. */
  async cancel(key: string): Promise<void> {
    const run = this.#runs.get(key);
    if (!run || isSettled(run) || run.cancelling) return;
    this.#update(key, run.gen, { cancelling: true });
    if (run.id === null) return; // start() cancels as soon as it learns the id
    try {
      await this.#api.cancel(run.id);
    } catch (e) {
      this.#update(key, run.gen, { cancelling: false, error: toProblem(e) });
    }
  }

  #abandon(run: Run): void {
    this.#aborts.get(run.key)?.abort();
    if (run.id !== null) this.#api.cancel(run.id).catch(() => {});
  }

  /** Drill-down: one `read` of the intercompany view per side, each targeted at that entity only. */
  openDrill(pair: DrillPair): Promise<Run[]> {
    this.drill = pair;
    const params = pair.asOf ? { as_of: pair.asOf } : undefined;
    const side = (entity: string) =>
      ({
        kind: "read",
        name: "intercompany",
        targets: [entity],
        ...(params ? { params } : {}),
      }) satisfies FanOutRequest;
    return Promise.all([
      this.start(DRILL_KEYS.a, `Intercompany: ${pair.entityA}`, side(pair.entityA)),
      this.start(DRILL_KEYS.b, `Intercompany: ${pair.entityB}`, side(pair.entityB)),
    ]);
  }

  closeDrill(): void {
    this.drill = null;
    for (const k of Object.values(DRILL_KEYS)) {
      const run = this.#runs.get(k);
      if (run && !isSettled(run)) this.#abandon(run);
      this.#runs.delete(k);
    }
    this.#notify();
  }
}
