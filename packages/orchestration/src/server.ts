import { randomInt } from "node:crypto";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import {
  type Clock,
  type Identity,
  listenPsp,
  type PspLimits,
  type PspLink,
  type PspServer,
  type Scheduler,
  type SubjectSession,
  serveSubject,
  systemClock,
  systemScheduler,
} from "@os-orchestration/psp";
import pino from "pino";
import { closeCombineSandboxes } from "./combine.ts";
import { OrchError } from "./errors.ts";
import type { FanOutResult, ToteboxOutcome } from "./fanout.ts";
import { type OrchLimits, resolveOrchLimits } from "./limits.ts";
import { OrchMetrics } from "./metrics.ts";
import { LinkPool } from "./pool.ts";
import { ReceiptSampler } from "./receipt-sampler.ts";
import {
  loadRegistry,
  type Registry,
  type RegistryDiff,
  type RegistryParseInfo,
  type RegistryWatcher,
  watchRegistry,
} from "./registry.ts";
import { AggregatorMain, type ServiceContext } from "./service.ts";
import { builtinViewports, compileViewports, type Viewport } from "./viewports.ts";

/**
 * The aggregator process: a registry (fleet.yaml, hot-reloaded), a pool of commander links to the
 * Toteboxes, a PSP listener for consoles (the only way in for commands) and a small HTTP listener
 * for /metrics and /healthz.
 *
 * Stateless (invariant 1): nothing here writes a file. Its durable inputs are the configuration
 * and the identity (read by the CLI); its only output besides answers is the log on stderr.
 * Every answer lives in memory for the length of its query and a bounded number of finished
 * fan-outs per console session.
 */
export interface OrchestrationServerOptions {
  /** Path of fleet.yaml (watched for changes). */
  readonly configPath: string;
  readonly identity: Identity;
  /** Console listener; defaults from the config's aggregator.listen, else 127.0.0.1:0. */
  readonly host?: string;
  readonly port?: number;
  /** /metrics and /healthz; defaults from aggregator.http, else 127.0.0.1:0. `false` disables. */
  readonly http?: { readonly host?: string; readonly port?: number } | false;
  readonly clock?: Clock;
  readonly scheduler?: Scheduler;
  /** Uniform in [0, 1), for backoff jitter. */
  readonly random?: () => number;
  /**
   * Randomness that picks which Totebox receipts have their signature checked here
   * (receipt-sampler.ts), in [0, 1). Its own source, never shared with anything a Totebox can
   * observe (reconnect jitter). Default: node:crypto.
   */
  readonly receiptRandom?: () => number;
  readonly limits?: Partial<OrchLimits>;
  /** PSP limits for Totebox links. */
  readonly toteboxLinkLimits?: Partial<PspLimits>;
  /** PSP limits for console links. */
  readonly consoleLinkLimits?: Partial<PspLimits>;
  readonly logger?: pino.Logger;
  /** Registry poll interval in ms (the watcher also listens to fs events). Default 1000. */
  readonly configPollMs?: number;
}

/**
 * Console links carry whole fan-out answers back (every Totebox's Arrow bytes and receipt): frames
 * up to 64 MiB, and byte strings inline up to 64 KiB so that thousands of small receipts do not
 * become thousands of frame segments. Only registry-listed operator keys get such a link.
 */
export const CONSOLE_LINK_DEFAULTS: Partial<PspLimits> = Object.freeze({
  maxFrameBytes: 64 * 1024 * 1024,
  maxSegments: 1024,
  attachmentThresholdBytes: 64 * 1024,
});

export class OrchestrationServer {
  readonly identity: Identity;
  readonly metrics: OrchMetrics;
  readonly pool: LinkPool;
  readonly logger: pino.Logger;
  readonly #psp: PspServer;
  readonly #http: HttpServer | undefined;
  readonly #watcher: RegistryWatcher;
  #registry: Registry;
  #viewports: ReadonlyMap<string, Viewport>;
  /** Console links, each with its capnweb session once served. */
  readonly #consoles: Map<PspLink, SubjectSession | undefined>;
  readonly #startedAt: number;
  readonly #clock: Clock;

  private constructor(args: {
    identity: Identity;
    metrics: OrchMetrics;
    pool: LinkPool;
    logger: pino.Logger;
    psp: PspServer;
    http: HttpServer | undefined;
    watcher: RegistryWatcher;
    registry: Registry;
    viewports: ReadonlyMap<string, Viewport>;
    consoles: Map<PspLink, SubjectSession | undefined>;
    clock: Clock;
  }) {
    this.identity = args.identity;
    this.metrics = args.metrics;
    this.pool = args.pool;
    this.logger = args.logger;
    this.#psp = args.psp;
    this.#http = args.http;
    this.#watcher = args.watcher;
    this.#registry = args.registry;
    this.#viewports = args.viewports;
    this.#consoles = args.consoles;
    this.#clock = args.clock;
    this.#startedAt = args.clock.now();
  }

  static async start(o: OrchestrationServerOptions): Promise<OrchestrationServer> {
    const clock = o.clock ?? systemClock;
    const scheduler = o.scheduler ?? systemScheduler;
    const limits = resolveOrchLimits(o.limits);
    const logger =
      o.logger ??
      pino(
        { level: process.env.ORCH_LOG_LEVEL ?? "info", base: { svc: "os-orchestration" } },
        pino.destination(2),
      );
    const registry = await loadRegistry(o.configPath, { limits });
    const viewports = await loadViewports(registry);
    const metrics = new OrchMetrics();
    const consoles = new Map<PspLink, SubjectSession | undefined>();
    metrics.watchConsoleExports(() => exportsOf(consoles));
    const state = { registry, viewports };

    const random = o.random ?? (() => randomInt(0, 2 ** 31) / 2 ** 31);
    const pool = new LinkPool({
      identity: o.identity,
      scheduler,
      random,
      limits,
      ...(o.toteboxLinkLimits ? { pspLimits: o.toteboxLinkLimits } : {}),
      logger,
      events: {
        health: () => metrics.setLinkCounts(pool.counts()),
        violation: (_id, code) => metrics.diodeViolations.inc({ side: "totebox", code }),
      },
    });

    const receipts = new ReceiptSampler({
      every: limits.receiptSignatureEvery,
      random: o.receiptRandom ?? (() => randomInt(0, 2 ** 31) / 2 ** 31),
    });
    metrics.watchReceipts(() => receipts.counts);
    const ctx: ServiceContext = {
      receipts,
      identity: o.identity,
      clock,
      scheduler,
      limits,
      logger,
      pool,
      registry: () => state.registry,
      viewports: () => state.viewports,
      refused: (code) => metrics.refused(code),
      running: new Map(),
      hooks: {
        started: () => metrics.fanoutsRunning.inc(),
        outcome: (oc: ToteboxOutcome) => metrics.toteboxAnswered(oc.status, oc.elapsedMs / 1000),
        finished: (r: FanOutResult) => {
          metrics.fanoutsRunning.dec();
          const outcome = r.error ? "failed" : r.partial ? "partial" : "complete";
          metrics.fanouts.inc({ kind: r.kind, outcome });
          metrics.fanoutSeconds.observe({ kind: r.kind }, (r.finishedAt - r.startedAt) / 1000);
          logger.info(
            {
              fanout: r.id,
              kind: r.kind,
              name: r.name,
              targeted: r.targeted,
              answered: r.answered,
              outcome,
              code: r.error?.code,
              ms: r.finishedAt - r.startedAt,
            },
            "fan-out finished",
          );
        },
      },
    };

    const listen = registry.aggregator.listen;
    const psp = await listenPsp({
      identity: o.identity,
      role: "subject",
      host: o.host ?? listen?.host ?? "127.0.0.1",
      port: o.port ?? listen?.port ?? 0,
      scheduler,
      limits: { ...CONSOLE_LINK_DEFAULTS, ...o.consoleLinkLimits },
      // Consoles authenticate by their operator key: only keys in the registry get a link.
      authorize: (peer) => {
        const op = state.registry.operatorByKeyId.get(peer.keyId);
        if (!op) return { ok: false, code: "PSP_ERR_PEER_UNKNOWN", reason: "not a registered operator key" };
        if (consoles.size >= limits.maxConsoleLinks) {
          return { ok: false, code: "PSP_ERR_PEER_UNKNOWN", reason: "too many console links" };
        }
        return { ok: true, label: `operator:${op.id}` };
      },
      onRefused: (ev) => {
        metrics.refused(ev.code);
        logger.warn(
          { code: ev.code, reason: ev.reason, remote: ev.remote, peer: ev.fingerprint },
          "console refused",
        );
      },
      onLink: (link) => {
        consoles.set(link, undefined);
        metrics.consoleLinks.set(consoles.size);
        link.on("violation", (err) => {
          metrics.diodeViolations.inc({ side: "console", code: err.code });
          logger.warn(
            { peer: link.peer.fingerprint, code: err.code },
            "console broke the protocol; link cut",
          );
        });
        link.once("close", () => {
          consoles.delete(link);
          metrics.consoleLinks.set(consoles.size);
        });
        const served = serveSubject(link, new AggregatorMain(ctx, link));
        // (Unless the link already closed: a closed link must not come back into the map.)
        if (consoles.has(link)) consoles.set(link, served);
      },
    });

    let server: OrchestrationServer | undefined;
    const watcher = watchRegistry({
      path: o.configPath,
      initial: registry,
      limits,
      ...(o.configPollMs !== undefined ? { pollMs: o.configPollMs } : {}),
      onChange: (next: Registry, diff: RegistryDiff, parsed: RegistryParseInfo) => {
        void (async () => {
          let vps: ReadonlyMap<string, Viewport>;
          try {
            vps = await loadViewports(next);
          } catch (e) {
            logger.error({ code: (e as OrchError).code, err: (e as Error).message }, "config change refused");
            return;
          }
          state.registry = next;
          state.viewports = vps;
          if (server) {
            server.#registry = next;
            server.#viewports = vps;
          }
          pool.apply(next, diff);
          // An operator removed (or moved to another tenant) loses its live sessions at once.
          for (const link of [...consoles.keys()]) {
            const op = next.operatorByKeyId.get(link.peer.keyId);
            if (!op) link.close();
          }
          metrics.setLinkCounts(pool.counts());
          logger.info(
            {
              digest: next.digest,
              added: diff.added.length,
              removed: diff.removed.length,
              relinked: diff.relinked.length,
              changed: diff.changed.length,
              parseMs: Math.round(parsed.ms),
              parsedOffThread: parsed.offThread,
            },
            "config applied",
          );
        })();
      },
      onError: (e) =>
        logger.error({ code: e.code, err: e.message, detail: e.detail }, "config change refused"),
    });

    let http: HttpServer | undefined;
    if (o.http !== false) {
      http = createServer((req, res) => {
        if (server) server.#serveHttp(req.method ?? "", req.url ?? "", res);
        else res.writeHead(503).end();
      });
      http.headersTimeout = 5_000;
      http.requestTimeout = 5_000;
      http.maxHeadersCount = 50;
      const h = o.http ?? {};
      await new Promise<void>((resolve, reject) => {
        http!.once("error", reject);
        http!.listen(
          h.port ?? registry.aggregator.http?.port ?? 0,
          h.host ?? registry.aggregator.http?.host ?? "127.0.0.1",
          () => resolve(),
        );
      });
    }

    server = new OrchestrationServer({
      identity: o.identity,
      metrics,
      pool,
      logger,
      psp,
      http,
      watcher,
      registry,
      viewports,
      consoles,
      clock,
    });
    pool.apply(registry);
    metrics.setLinkCounts(pool.counts());
    logger.info(
      { port: psp.address.port, toteboxes: registry.toteboxes.length, operators: registry.operators.length },
      "aggregator listening",
    );
    return server;
  }

  get address(): { host: string; port: number } {
    return this.#psp.address;
  }

  get httpAddress(): { host: string; port: number } | undefined {
    const a = this.#http?.address() as AddressInfo | null | undefined;
    return a ? { host: a.address, port: a.port } : undefined;
  }

  get registry(): Registry {
    return this.#registry;
  }

  get viewports(): ReadonlyMap<string, Viewport> {
    return this.#viewports;
  }

  get consoleLinks(): number {
    return this.#consoles.size;
  }

  /**
   * Our objects that consoles hold stubs to and have not released (each link's main object
   * included): bounded by what consoles use, unless a console forgets to release.
   */
  get consoleExports(): number {
    return exportsOf(this.#consoles);
  }

  #serveHttp(method: string, url: string, res: import("node:http").ServerResponse): void {
    if (method !== "GET") {
      res.writeHead(405, { allow: "GET" }).end();
      return;
    }
    const path = url.split("?")[0];
    if (path === "/metrics") {
      this.metrics.setLinkCounts(this.pool.counts());
      void this.metrics.registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": this.metrics.registry.contentType }).end(text),
        () => res.writeHead(500).end(),
      );
      return;
    }
    if (path === "/healthz") {
      const counts = this.pool.counts();
      const body = {
        status: "ok",
        uptimeSeconds: Math.round((this.#clock.now() - this.#startedAt) / 1000),
        registry: { digest: this.#registry.digest, toteboxes: this.#registry.toteboxes.length },
        links: counts,
        consoles: this.#consoles.size,
      };
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(body));
      return;
    }
    res.writeHead(404).end();
  }

  async close(): Promise<void> {
    this.#watcher.close();
    this.pool.close();
    // The combine's kept DuckDB instances (process-wide; the next combine anywhere opens one).
    closeCombineSandboxes();
    for (const l of [...this.#consoles.keys()]) l.close();
    await this.#psp.close();
    if (this.#http) {
      this.#http.closeAllConnections();
      await new Promise<void>((r) => this.#http!.close(() => r()));
    }
  }
}

/**
 * @internal Built-in viewports plus the config's own; a config viewport may not shadow a built-in.
 * `serve` and `check` (cli.ts) both load through it, so `check` refuses what `serve` would.
 */
export async function loadViewports(registry: Registry): Promise<ReadonlyMap<string, Viewport>> {
  const builtin = await builtinViewports();
  for (const v of registry.viewports) {
    if (builtin.has(v.name)) {
      throw new OrchError("ORCH_ERR_VIEWPORT_INVALID", `viewport ${v.name} would replace a built-in one`, {
        name: v.name,
        line: v.line,
        column: v.column,
      });
    }
  }
  const custom = await compileViewports(registry.viewports);
  return new Map([...builtin, ...custom]);
}

function exportsOf(consoles: ReadonlyMap<PspLink, SubjectSession | undefined>): number {
  let n = 0;
  for (const session of consoles.values()) n += session?.stats().exports ?? 0;
  return n;
}
