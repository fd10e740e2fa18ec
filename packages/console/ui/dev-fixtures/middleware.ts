/**
 * DEVELOPMENT ONLY: answers the dashboard's /api/* from the static JSON beside this file, so the UI
 * can be built and looked at before `os-console ui` exists. vite.config.ts mounts it only on the
 * dev server and only when UI_DEV_FIXTURES=1; it is never part of the production bundle.
 *
 * It imitates the real API's shapes, including the SSE progress stream (one Totebox per step) and
 * cancellation, so the progress panel can be exercised.
 */
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const DIR = dirname(fileURLToPath(import.meta.url));
const MAX_BODY = 64 * 1024;
/** The instant the fixture files were generated at; fleet contact times are shifted to "now". */
const FIXTURE_NOW = Date.UTC(2025, 5, 30, 9, 30);
const NAME = /^[a-z][a-z0-9_-]{0,63}$/;

interface FixtureOutcome {
  totebox: string;
  status: string;
  code: string | null;
  reason: string;
  elapsedMs: number;
}
interface FixtureResult {
  id: string;
  params: Record<string, unknown>;
  outcomes: FixtureOutcome[];
  answered: number;
  targeted: number;
  partial: boolean;
  error: { code: string; message: string } | null;
  [k: string]: unknown;
}
interface Running {
  result: FixtureResult;
  cancelled: boolean;
  finished: boolean;
}

export interface FixtureOptions {
  /** Pause between progress events, ms (pacing so progress is visible; 0 in tests). */
  readonly stepMs?: number;
}

function load(file: string): unknown {
  return JSON.parse(readFileSync(join(DIR, file), "utf8"));
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(text);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error("body too large"));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function fixtureFor(req: Record<string, unknown>): string | null {
  const name = typeof req.name === "string" && NAME.test(req.name) ? req.name : null;
  if (name === null) return null;
  const params = (typeof req.params === "object" && req.params !== null ? req.params : {}) as Record<
    string,
    unknown
  >;
  if (req.kind === "viewport") {
    if (name === "portfolio") {
      const g =
        typeof params.group_by === "string" && NAME.test(params.group_by) ? params.group_by : "region";
      return `portfolio-${g}.json`;
    }
    return `${name}.json`;
  }
  if (req.kind === "read" && Array.isArray(req.targets) && req.targets.length === 1) {
    const t = req.targets[0];
    if (typeof t === "string" && NAME.test(t)) return `read-${name}-${t}.json`;
  }
  return null;
}

/** A connect-style handler; calls `next()` for anything outside /api/. */
export function fixtureMiddleware(options: FixtureOptions = {}) {
  const stepMs = options.stepMs ?? 150;
  const running = new Map<string, Running>();
  let seq = 0;

  async function stream(res: ServerResponse, run: Running): Promise<void> {
    res.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-store",
      connection: "keep-alive",
    });
    const r = run.result;
    let answered = 0;
    let cursor = 0;
    const settled: FixtureOutcome[] = [];
    for (const o of r.outcomes) {
      if (run.cancelled) break;
      if (stepMs > 0) await new Promise((ok) => setTimeout(ok, stepMs));
      if (run.cancelled) break;
      if (o.status === "ok" || o.status === "suppressed") answered++;
      cursor++;
      settled.push(o);
      const ev = { seq: cursor, ...pick(o), answered, targeted: r.targeted };
      const page = {
        events: [ev],
        cursor,
        done: cursor === r.outcomes.length,
        answered,
        targeted: r.targeted,
      };
      res.write(`event: progress\ndata: ${JSON.stringify(page)}\n\n`);
    }
    if (run.cancelled) {
      const done = new Set(settled.map((o) => o.totebox));
      r.outcomes = r.outcomes.map((o) =>
        done.has(o.totebox)
          ? o
          : {
              ...o,
              status: "error",
              code: "ORCH_ERR_CANCELLED",
              reason: "cancelled",
              answers: [],
              verified: false,
            },
      );
      r.answered = answered;
      r.partial = true;
      r.error = { code: "ORCH_ERR_CANCELLED", message: "the fan-out was cancelled by the operator" };
      // A fan-out that failed as a whole has no combined sections and nothing verified.
      r.sections = [];
      r.verification = { receipts: "none", recomputed: null, verified: false };
    }
    run.finished = true;
    res.write(`event: result\ndata: ${JSON.stringify(r)}\n\n`);
    res.end();
  }

  return (req: IncomingMessage, res: ServerResponse, next: () => void): void => {
    const url = new URL(req.url ?? "/", "http://fixture.invalid");
    const path = url.pathname;
    if (!path.startsWith("/api/")) {
      next();
      return;
    }
    const handle = async () => {
      if (req.method === "GET" && path === "/api/session") return send(res, 200, load("session.json"));
      if (req.method === "GET" && path === "/api/fleet") {
        const shift = Date.now() - FIXTURE_NOW;
        const fleet = (load("fleet.json") as { lastContact: number | null }[]).map((f) => ({
          ...f,
          lastContact: f.lastContact === null ? null : f.lastContact + shift,
        }));
        return send(res, 200, fleet);
      }
      if (req.method === "POST" && path === "/api/fanouts") {
        const body = JSON.parse(await readBody(req)) as Record<string, unknown>;
        const file = fixtureFor(body);
        if (file === null) return send(res, 400, { code: "ORCH_ERR_REQUEST_INVALID", message: "no fixture" });
        let result: FixtureResult;
        try {
          result = load(file) as FixtureResult;
        } catch {
          return send(res, 404, { code: "ORCH_ERR_VIEWPORT_UNKNOWN", message: `no fixture ${file}` });
        }
        const id = `fx-${++seq}`;
        const params = (body.params ?? {}) as Record<string, unknown>;
        result.id = id;
        result.params = { ...result.params, ...params };
        running.set(id, { result, cancelled: false, finished: false });
        return send(res, 200, { id });
      }
      const m = /^\/api\/fanouts\/([A-Za-z0-9_-]{1,64})(\/events|\/cancel)?$/.exec(path);
      const run = m ? running.get(m[1]!) : undefined;
      if (!m || !run) return send(res, 404, { code: "ORCH_ERR_FANOUT_UNKNOWN", message: "no such fan-out" });
      if (req.method === "GET" && m[2] === "/events") return stream(res, run);
      if (req.method === "GET" && m[2] === undefined) return send(res, 200, run.result);
      if (req.method === "POST" && m[2] === "/cancel") {
        const was = !run.finished && !run.cancelled;
        run.cancelled = true;
        return send(res, 200, { cancelled: was });
      }
      return send(res, 405, { code: "UI_ERR_HTTP", message: "method not allowed" });
    };
    handle().catch(() => {
      if (!res.headersSent) send(res, 500, { code: "UI_ERR_HTTP", message: "fixture failure" });
      else res.end();
    });
  };
}

function pick(o: FixtureOutcome) {
  return { totebox: o.totebox, status: o.status, code: o.code, reason: o.reason, elapsedMs: o.elapsedMs };
}
