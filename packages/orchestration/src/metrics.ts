import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { TOTEBOX_STATUSES, type ToteboxStatus } from "./fanout.ts";
import type { LinkHealth } from "./pool.ts";

/** Upper bounds (seconds) of the per-Totebox answer latency buckets. */
const TOTEBOX_SECONDS_BUCKETS: readonly number[] = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5,
];

/** A metric's figures as prom-client's registry reads them from any registered metric. */
interface ExportedValue {
  readonly labels: Readonly<Record<string, string | number>>;
  readonly sharedLabels?: Readonly<Record<string, string>>;
  readonly value: number;
  readonly metricName: string;
  /** Buckets carry `null` (no exemplars kept), as prom-client's do. */
  readonly exemplar?: null;
}
interface ExportedMetric {
  readonly name: string;
  readonly help: string;
  readonly type: "histogram";
  readonly values: ExportedValue[];
  readonly aggregator: "sum";
}

/**
 * Per-Totebox answer latency by status, as a Prometheus histogram kept in plain arrays.
 *
 * Why not prom-client's Histogram: it is fed once per Totebox per fan-out (1,000 or 10,000 times a
 * query), and each of its `observe` calls validates and hashes the label object and looks the
 * buckets up by property name. That was ~2 µs per Totebox at the aggregator (CPU profile, eleventh
 * round), for a label set fixed in advance: the six statuses. Here an observation is an index and
 * a few array stores. The exposition is prom-client's own, byte for byte (metrics.test.ts feeds
 * both the same observations and compares the scrapes), so dashboards see no difference.
 */
class StatusSecondsHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = "histogram";
  readonly aggregator = "sum";
  /** counts[s × (buckets + 1) + b]: observations of status s in bucket b (the last: +Inf only). */
  readonly #counts: Float64Array;
  readonly #sums: Float64Array;
  /** Which statuses have been observed, and in what order (prom-client lists label sets so). */
  readonly #seen: Uint8Array;
  readonly #first: number[] = [];

  constructor(o: { name: string; help: string; registry: Registry }) {
    this.name = o.name;
    this.help = o.help;
    const width = TOTEBOX_SECONDS_BUCKETS.length + 1;
    this.#counts = new Float64Array(TOTEBOX_STATUSES.length * width);
    this.#sums = new Float64Array(TOTEBOX_STATUSES.length);
    this.#seen = new Uint8Array(TOTEBOX_STATUSES.length);
    o.registry.registerMetric(this as unknown as Parameters<Registry["registerMetric"]>[0]);
  }

  observe(status: ToteboxStatus, seconds: number): void {
    const s = TOTEBOX_STATUSES.indexOf(status);
    // Stricter than prom-client, which would open a new series for any label value: the statuses
    // are a fixed set, so another value is a bug of ours, refused. A non-finite value is refused
    // as prom-client refuses it.
    if (s < 0) throw new RangeError(`not a Totebox status: ${String(status)}`);
    if (!Number.isFinite(seconds)) throw new TypeError(`Value is not a valid number: ${seconds}`);
    const bounds = TOTEBOX_SECONDS_BUCKETS;
    let b = 0;
    while (b < bounds.length && seconds > bounds[b]!) b++;
    this.#counts[s * (bounds.length + 1) + b]!++;
    this.#sums[s]! += seconds;
    if (this.#seen[s] === 0) {
      this.#seen[s] = 1;
      this.#first.push(s);
    }
  }

  /** Observations of each status since start or reset, in the order first observed. */
  counts(): [ToteboxStatus, number][] {
    const width = TOTEBOX_SECONDS_BUCKETS.length + 1;
    return this.#first.map((s) => {
      let n = 0;
      for (let b = 0; b < width; b++) n += this.#counts[s * width + b]!;
      return [TOTEBOX_STATUSES[s]!, n];
    });
  }

  /** What prom-client's Histogram gives its registry: cumulative buckets, then +Inf, sum, count. */
  async getForPromString(): Promise<ExportedMetric> {
    const bounds = TOTEBOX_SECONDS_BUCKETS;
    const values: ExportedValue[] = [];
    // Label sets in the order first observed, as prom-client keeps them (its map by label hash).
    for (const s of this.#first) {
      const sharedLabels = { status: TOTEBOX_STATUSES[s]! };
      let acc = 0;
      for (let b = 0; b < bounds.length; b++) {
        acc += this.#counts[s * (bounds.length + 1) + b]!;
        values.push({
          labels: { le: bounds[b]! },
          sharedLabels,
          value: acc,
          metricName: `${this.name}_bucket`,
          exemplar: null,
        });
      }
      const count = acc + this.#counts[s * (bounds.length + 1) + bounds.length]!;
      values.push(
        {
          labels: { le: "+Inf" },
          sharedLabels,
          value: count,
          metricName: `${this.name}_bucket`,
          exemplar: null,
        },
        {
          labels: {},
          sharedLabels,
          value: this.#sums[s]!,
          metricName: `${this.name}_sum`,
        },
        {
          labels: {},
          sharedLabels,
          value: count,
          metricName: `${this.name}_count`,
        },
      );
    }
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      values,
      aggregator: this.aggregator,
    };
  }

  /** The same, with each value's labels and shared labels merged (prom-client's JSON form). */
  async get(): Promise<ExportedMetric> {
    const data = await this.getForPromString();
    const values = data.values.map(({ sharedLabels, ...v }) => ({
      ...v,
      labels: { ...v.labels, ...sharedLabels },
    }));
    return { ...data, values };
  }

  reset(): void {
    this.#counts.fill(0);
    this.#sums.fill(0);
    this.#seen.fill(0);
    this.#first.length = 0;
  }
}

/**
 * Prometheus metrics of one aggregator (a registry per instance, so several aggregators in one
 * test process never mix their figures). Labels are bounded sets: codes, statuses, kinds; never a
 * Totebox id, operator or anything an outsider controls (cardinality is a resource too).
 */
export class OrchMetrics {
  readonly registry = new Registry();

  constructor() {
    // The process's own figures (heap, RSS, event-loop lag, GC, handles), under nodejs_/process_:
    // what an operator needs to tell a JS-heap leak from native memory growth.
    collectDefaultMetrics({ register: this.registry });
    const statusCounts = () => this.toteboxSeconds.counts();
    this.toteboxStatus = new Counter({
      name: "orch_totebox_status_total",
      help: "Per-Totebox outcomes within fan-outs, by status",
      labelNames: ["status"] as const,
      registers: [this.registry],
      // Set afresh from the histogram's counts on every scrape (no state of its own to drift, say
      // after a registry reset), in the order the statuses were first seen.
      collect() {
        this.reset();
        for (const [status, n] of statusCounts()) this.inc({ status }, n);
      },
    });
    const counts = () => this.#receiptCounts?.();
    const exportsHeld = () => this.#consoleExports?.();
    this.consoleExports = new Gauge({
      name: "orch_console_exports",
      help: "Aggregator objects held by consoles (sessions, fan-out handles) and not yet released; one that only grows is a console that never releases",
      registers: [this.registry],
      collect() {
        const n = exportsHeld();
        if (n !== undefined) this.set(n);
      },
    });
    this.receiptSignatures = new Gauge({
      name: "orch_receipt_signatures",
      help: "Totebox read receipts since start: signature checked here, or forwarded with its binding checked (the console verifies every signature)",
      labelNames: ["check"] as const,
      registers: [this.registry],
      collect() {
        const c = counts();
        if (!c) return;
        this.set({ check: "checked" }, c.checked);
        this.set({ check: "forwarded" }, c.forwarded);
      },
    });
  }

  /** Reports the consoles' held objects on every scrape. */
  watchConsoleExports(count: () => number): void {
    this.#consoleExports = count;
  }

  /** Reports the sampler's counts on every scrape. */
  watchReceipts(counts: () => { checked: number; forwarded: number }): void {
    this.#receiptCounts = counts;
  }
  readonly links = new Gauge({
    name: "orch_links",
    help: "Totebox links by health",
    labelNames: ["health"] as const,
    registers: [this.registry],
  });
  readonly consoleLinks = new Gauge({
    name: "orch_console_links",
    help: "Console links open",
    registers: [this.registry],
  });
  readonly fanouts = new Counter({
    name: "orch_fanouts_total",
    help: "Fan-outs finished, by kind and outcome (complete, partial, failed)",
    labelNames: ["kind", "outcome"] as const,
    registers: [this.registry],
  });
  readonly fanoutsRunning = new Gauge({
    name: "orch_fanouts_running",
    help: "Fan-outs in progress",
    registers: [this.registry],
  });
  readonly fanoutSeconds = new Histogram({
    name: "orch_fanout_duration_seconds",
    help: "Fan-out latency from request to result",
    labelNames: ["kind"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  /** Per-Totebox answer latency by status; fed through `toteboxAnswered`. */
  readonly toteboxSeconds = new StatusSecondsHistogram({
    name: "orch_totebox_answer_duration_seconds",
    help: "Per-Totebox answer latency within fan-outs",
    registry: this.registry,
  });
  /** Per-Totebox outcomes by status: the histogram's counts, brought up to date on each scrape. */
  readonly toteboxStatus: Counter<"status">;

  /** One Totebox's outcome within a fan-out (called once per Totebox per fan-out). */
  toteboxAnswered(status: ToteboxStatus, seconds: number): void {
    this.toteboxSeconds.observe(status, seconds);
  }
  #receiptCounts: (() => { checked: number; forwarded: number }) | undefined;
  #consoleExports: (() => number) | undefined;
  readonly consoleExports: Gauge;
  /** Filled on each scrape from the ReceiptSampler given to `watchReceipts`. */
  readonly receiptSignatures: Gauge<"check">;
  readonly diodeViolations = new Counter({
    name: "orch_diode_violations_total",
    help: "Peers cut off for breaking the Diode or the frame rules, by side and code",
    labelNames: ["side", "code"] as const,
    registers: [this.registry],
  });
  readonly refusals = new Counter({
    name: "orch_refusals_total",
    help: "Requests and connections refused, by code",
    labelNames: ["code"] as const,
    registers: [this.registry],
  });

  setLinkCounts(counts: Record<LinkHealth, number>): void {
    for (const [health, n] of Object.entries(counts)) this.links.set({ health }, n);
  }

  /** Only stable codes become label values; anything else is folded into one bucket. */
  refused(code: string): void {
    this.refusals.inc({ code: /^[A-Z][A-Z0-9_]{2,63}$/.test(code) ? code : "OTHER" });
  }
}
