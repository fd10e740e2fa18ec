/**
 * The store (runs, cancellation, drill-down, readiness) over the real API client and real HTTP:
 * the fixture server for the happy paths, a scripted server where the order of events matters.
 * Ordering is by events (the server waits for the cancel request), never by sleeping.
 */
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { fixtureMiddleware } from "../dev-fixtures/middleware.ts";
import { createApi } from "./api.ts";
import { isReady, KEYS } from "./routes.ts";
import { DRILL_KEYS, Store } from "./store.ts";

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server = createServer(handler);
  server.on("connection", (s) => closers.push(() => s.destroy()));
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  closers.push(() => server.close());
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function fixtureStore(): Promise<Store> {
  const mw = fixtureMiddleware({ stepMs: 0 });
  const base = await serve((req, res) => mw(req, res, () => res.writeHead(404).end()));
  let t = 1_000;
  return new Store({ api: createApi(base), now: () => (t += 10), defer: queueMicrotask });
}

const result = JSON.parse(
  readFileSync(new URL("../dev-fixtures/executive-summary.json", import.meta.url), "utf8"),
) as Record<string, unknown>;

/**
 * A console server whose fan-outs stream one progress page, then hold until POST .../cancel
 * arrives, then end with a cancelled result. `holdStart` delays the POST /api/fanouts answer.
 */
async function scripted(holdStart?: Promise<void>) {
  const log: string[] = [];
  const waiters: { line: string; ok: () => void }[] = [];
  /** Resolves once the server has received `line` ("POST /api/fanouts/s1/cancel"). */
  const seen = (line: string) =>
    new Promise<void>((ok) => (log.includes(line) ? ok() : waiters.push({ line, ok })));
  const cancels = new Map<string, () => void>();
  const cancelled = (id: string) => new Promise<void>((ok) => cancels.set(id, ok));
  const waits = new Map<string, Promise<void>>();
  let n = 0;
  const base = await serve((req, res) => {
    const line = `${req.method} ${req.url}`;
    log.push(line);
    for (const w of waiters.filter((x) => x.line === line)) w.ok();
    const json = (v: unknown) =>
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(v));
    if (req.method === "POST" && req.url === "/api/fanouts") {
      const id = `s${++n}`;
      waits.set(id, cancelled(id));
      void (holdStart ?? Promise.resolve()).then(() => json({ id }));
      return;
    }
    const m = /^\/api\/fanouts\/(s\d+)(\/events|\/cancel)?$/.exec(req.url ?? "");
    if (!m) return res.writeHead(404).end();
    const id = m[1]!;
    if (m[2] === "/cancel") {
      cancels.get(id)?.();
      return json({ cancelled: true });
    }
    res.writeHead(200, { "content-type": "text/event-stream" });
    const page = {
      events: [
        {
          seq: 1,
          totebox: "tb-a",
          status: "ok",
          code: null,
          reason: "",
          elapsedMs: 3,
          answered: 1,
          targeted: 8,
        },
      ],
      cursor: 1,
      done: false,
      answered: 1,
      targeted: 8,
    };
    res.write(`event: progress\ndata: ${JSON.stringify(page)}\n\n`);
    void waits.get(id)!.then(() => {
      const r = {
        ...result,
        id,
        sections: [],
        partial: true,
        error: { code: "ORCH_ERR_CANCELLED", message: "cancelled" },
        verification: { receipts: "none", recomputed: null, verified: false },
      };
      res.end(`event: result\ndata: ${JSON.stringify(r)}\n\n`);
    });
  });
  return { base, log, seen };
}

describe("Store runs", () => {
  it("runs a fan-out to its result, keeping every arrival and counting answered of targeted", async () => {
    const store = await fixtureStore();
    const versions: number[] = [];
    store.subscribe(() => versions.push(store.version));
    const run = await store.start(KEYS.summary, "Executive summary", {
      kind: "viewport",
      name: "executive-summary",
    });
    expect(run.phase).toBe("done");
    expect(run.arrivals.map((e) => e.totebox)).toHaveLength(8);
    expect(run.arrivalsSeen).toBe(8);
    expect([run.answered, run.targeted]).toEqual([7, 8]);
    expect(run.result?.sections).toHaveLength(4);
    expect(run.finishedAt! > run.startedAt).toBe(true);
    // Notified at start, on the id, for progress (coalesced) and at the end; versions only grow.
    expect(versions.length).toBeGreaterThanOrEqual(3);
    expect([...versions].sort((a, b) => a - b)).toEqual(versions);
  });

  it("records a refused start as a failed run with the server's code", async () => {
    const store = await fixtureStore();
    const run = await store.start("x", "Bad", { kind: "viewport", name: "no-such-viewport" });
    expect(run.phase).toBe("failed");
    expect(run.error?.code).toBe("ORCH_ERR_VIEWPORT_UNKNOWN");
  });

  it("cancels: the server is asked, and the run settles with the server's cancelled result", async () => {
    const { base, log } = await scripted();
    const store = new Store({ api: createApi(base), defer: queueMicrotask });
    const settled = store.start("k", "Run", { kind: "viewport", name: "executive-summary" });
    // Wait for the first progress page (an event), then cancel.
    await new Promise<void>((ok) => {
      const off = store.subscribe(() => {
        if (store.run("k")?.arrivalsSeen === 1) {
          off();
          ok();
        }
      });
    });
    await store.cancel("k");
    const run = await settled;
    expect(log).toContain("POST /api/fanouts/s1/cancel");
    expect(run.phase).toBe("done");
    expect(run.result?.error?.code).toBe("ORCH_ERR_CANCELLED");
    expect(run.cancelling).toBe(false);
  });

  it("cancels a run whose start has not answered yet, as soon as its id is known", async () => {
    let release!: () => void;
    const hold = new Promise<void>((ok) => {
      release = ok;
    });
    const { base, log } = await scripted(hold);
    const store = new Store({ api: createApi(base), defer: queueMicrotask });
    const settled = store.start("k", "Run", { kind: "viewport", name: "executive-summary" });
    expect(store.run("k")?.phase).toBe("starting");
    await store.cancel("k");
    expect(store.run("k")?.cancelling).toBe(true);
    release();
    const run = await settled;
    expect(log).toContain("POST /api/fanouts/s1/cancel");
    expect(run.result?.error?.code).toBe("ORCH_ERR_CANCELLED");
  });

  it("replacing a running slot cancels the old fan-out and ignores its late answer", async () => {
    const { base, seen } = await scripted();
    const store = new Store({ api: createApi(base), defer: queueMicrotask });
    const first = store.start("k", "First", { kind: "viewport", name: "executive-summary" });
    await new Promise<void>((ok) => {
      const off = store.subscribe(() => {
        if (store.run("k")?.phase === "running") {
          off();
          ok();
        }
      });
    });
    const second = store.start("k", "Second", { kind: "viewport", name: "executive-summary" });
    await first;
    // The abandoned fan-out is cancelled on the server (fire-and-forget from the store).
    await seen("POST /api/fanouts/s1/cancel");
    expect(store.run("k")?.label).toBe("Second");
    expect(store.run("k")?.result).toBeNull();
    await store.cancel("k");
    expect((await second).result?.id).toBe("s2");
  });
});

describe("drill-down and readiness", () => {
  it("reads each side of a pair from its own Totebox, and closes cleanly", async () => {
    const store = await fixtureStore();
    const [a, b] = await store.openDrill({
      entityA: "tb-harbour",
      nameA: "Harbour Point Apartments",
      entityB: "tb-hold",
      nameB: "Maple Holdings Ltd",
      asOf: "2025-06-30",
    });
    expect(a?.request).toEqual({
      kind: "read",
      name: "intercompany",
      targets: ["tb-harbour"],
      params: { as_of: "2025-06-30" },
    });
    expect(b?.request.targets).toEqual(["tb-hold"]);
    expect(a?.result?.outcomes.map((o) => o.totebox)).toEqual(["tb-harbour"]);
    expect(b?.result?.verification.verified).toBe(true);
    store.closeDrill();
    expect(store.drill).toBeNull();
    expect(store.run(DRILL_KEYS.a)).toBeUndefined();
  });

  it("a page is ready once the session and every run it shows have settled", async () => {
    const store = await fixtureStore();
    expect(isReady("summary", store)).toBe(false);
    await store.loadSession();
    expect(isReady("summary", store)).toBe(false);
    const running = store.start(KEYS.summary, "Executive summary", {
      kind: "viewport",
      name: "executive-summary",
    });
    expect(isReady("summary", store)).toBe(false);
    await running;
    expect(isReady("summary", store)).toBe(true);
    expect(isReady("overview", store)).toBe(false); // its portfolio run has not started
    expect(isReady("coverage", store)).toBe(false); // the fleet has not loaded
    await store.loadFleet();
    expect(isReady("coverage", store)).toBe(true);
    await store.start(KEYS.reconciliation, "Reconciliation", { kind: "viewport", name: "reconciliation" });
    expect(isReady("reconciliation", store)).toBe(true);
    const drill = store.openDrill({ entityA: "tb-bay", nameA: "", entityB: "tb-ops", nameB: "", asOf: null });
    expect(isReady("reconciliation", store)).toBe(false);
    await drill;
    expect(isReady("reconciliation", store)).toBe(true);
  });

  it("a page whose session failed is ready (it shows the error)", async () => {
    const base = await serve((_req, res) => res.writeHead(401).end());
    const store = new Store({ api: createApi(base) });
    await store.loadSession();
    expect(store.session?.error?.code).toBe("UI_ERR_UNAUTHORIZED");
    expect(isReady("overview", store)).toBe(true);
  });
});
