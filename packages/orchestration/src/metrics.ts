import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { LinkHealth } from "./pool.ts";

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
  readonly toteboxSeconds = new Histogram({
    name: "orch_totebox_answer_duration_seconds",
    help: "Per-Totebox answer latency within fan-outs",
    labelNames: ["status"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
    registers: [this.registry],
  });
  readonly toteboxStatus = new Counter({
    name: "orch_totebox_status_total",
    help: "Per-Totebox outcomes within fan-outs, by status",
    labelNames: ["status"] as const,
    registers: [this.registry],
  });
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
