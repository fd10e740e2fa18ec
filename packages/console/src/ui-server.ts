import { randomBytes, timingSafeEqual } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import type {
  AggregatorHello,
  FanOutHandleRemote,
  FanOutPage,
  FanOutRequest,
  FanOutResult,
} from "@os-orchestration/orchestration";
import { releaseStub, systemClock } from "@os-orchestration/psp";
import { connectAggregator, ResilientSession, signGrant } from "./client.ts";
import { ConsoleError } from "./errors.ts";
import type { ConsoleHome } from "./home.ts";
import { type Verification, verifyResult } from "./verify.ts";

/**
 * `os-console ui`: the dashboard, served by the process that holds the operator's key. The
 * browser never sees a key, a grant or a receipt's bytes: it gets figures, statuses and the
 * console's own verdict on each answer.
 *
 * Local-only and hostile-input aware: bound to loopback; every API call needs the session cookie
 * set by the one-time link printed at start (another local user or a web page cannot drive it);
 * bodies are size-bounded; only known routes answer; fan-outs kept per process are bounded.
 */

const UI_DIST = fileURLToPath(new URL("../ui-dist/", import.meta.url));
const MAX_BODY = 16 * 1024;
const MAX_FANOUTS = 64;
const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".json": "application/json",
  ".woff2": "font/woff2",
  ".ico": "image/x-icon",
};

/** What the browser gets for a fan-out: no bytes, plus the console's verification. */
export interface UiResult extends Omit<FanOutResult, "outcomes"> {
  readonly outcomes: {
    totebox: string;
    name: string;
    tags: Readonly<Record<string, string>>;
    status: string;
    code: string | null;
    reason: string;
    elapsedMs: number;
    answers: { view: string; rowCount: number; suppressedGroups: number; watermark: string }[];
    verified: boolean;
    verifyCode: string | null;
  }[];
  readonly verification: {
    receipts: Verification["receipts"];
    recomputed: boolean | null;
    verified: boolean;
  };
}

interface Tracked {
  readonly handle: FanOutHandleRemote;
  readonly pages: FanOutPage[];
  result: Promise<UiResult>;
  cursor: number;
  done: boolean;
  readonly listeners: Set<() => void>;
}

export async function startUiServer(options: {
  home: ConsoleHome;
  host: string;
  port: number;
}): Promise<{ url: string; port: number; close(): Promise<void> }> {
  const { home } = options;
  const cfg = home.config();
  if (!cfg.aggregator || !cfg.operator)
    throw new ConsoleError("CONSOLE_ERR_CONFIG", "not paired with an aggregator");
  const operator = cfg.operator;
  const aggregator = cfg.aggregator;
  const identity = await home.identity();
  const keys = home.toteboxKeys();
  if (!existsSync(join(UI_DIST, "index.html"))) {
    throw new ConsoleError("CONSOLE_ERR_CONFIG", "the dashboard is not built: run npm run build:ui");
  }

  // The dashboard signs its own session grants (the key is in this process): every Totebox of
  // the tenant, every view the viewports read, read only, renewed before expiry.
  let grant: { bytes: Uint8Array; exp: number } | undefined;
  const grantFor = (hello: AggregatorHello) => {
    const now = systemClock.now();
    if (grant && grant.exp - now > 5 * 60_000) return grant.bytes;
    const views = [
      ...new Set([...hello.viewports.flatMap((v) => v.views), "intercompany", "position", "audit"]),
    ];
    const bytes = signGrant({
      operator: identity,
      operatorId: operator.id,
      tenant: operator.tenant,
      aggregator: hello,
      toteboxSelectors: [],
      toteboxIds: fleetIds,
      views,
      actions: ["read"],
      lifetimeSeconds: 8 * 3600,
    });
    grant = { bytes, exp: now + 8 * 3600_000 };
    return bytes;
  };
  let fleetIds: string[] = [];
  const rs = new ResilientSession({
    connect: () => connectAggregator({ identity, ...aggregator }),
    grant: (hello) => grantFor(hello),
  });
  // The tenant's Toteboxes, so that the session grant can name them by id.
  {
    const conn = await connectAggregator({ identity, ...aggregator });
    try {
      fleetIds = (await conn.aggregator.fleet()).map((e) => e.id);
    } finally {
      conn.close();
    }
  }

  const token = randomBytes(24).toString("base64url");
  const tokenBytes = Buffer.from(token);
  const fanouts = new Map<string, Tracked>();

  const authed = (req: IncomingMessage): boolean => {
    const m = /(?:^|;\s*)osc_session=([A-Za-z0-9_-]{1,64})/.exec(req.headers.cookie ?? "");
    if (!m) return false;
    const got = Buffer.from(m[1]!);
    return got.length === tokenBytes.length && timingSafeEqual(got, tokenBytes);
  };

  const toUi = async (r: FanOutResult): Promise<UiResult> => {
    const v = await verifyResult(r, (id) => keys.get(id));
    const byId = new Map(v.toteboxes.map((c) => [c.totebox, c]));
    return {
      ...r,
      outcomes: r.outcomes.map((o) => ({
        totebox: o.totebox,
        name: o.name,
        tags: o.tags,
        status: o.status,
        code: o.code,
        reason: o.reason,
        elapsedMs: o.elapsedMs,
        answers: o.answers.map((a) => ({
          view: a.view,
          rowCount: a.rowCount,
          suppressedGroups: a.suppressedGroups,
          watermark: a.watermark,
        })),
        verified: byId.get(o.totebox)?.verified ?? false,
        verifyCode: byId.get(o.totebox)?.code ?? (o.status === "ok" ? null : o.code),
      })),
      verification: { receipts: v.receipts, recomputed: v.recomputed, verified: v.verified },
    };
  };

  const start = async (request: FanOutRequest): Promise<string> => {
    // Through run(): a dead link is replaced, and an expired grant re-authorized, before the start.
    const { handle, id, result } = await rs.run(async (session) => {
      const handle = session.start(request);
      // Asked for in the same frame as the start, so the aggregator holds the result for us
      // however many fan-outs of this session start meanwhile.
      const result = handle.result();
      try {
        return { handle, id: await handle.id(), result };
      } catch (e) {
        releaseStub(handle);
        throw e;
      }
    });
    const t: Tracked = {
      handle,
      pages: [],
      cursor: 0,
      done: false,
      listeners: new Set(),
      result: Promise.resolve(undefined as unknown as UiResult),
    };
    t.result = Promise.resolve(result).then(toUi);
    t.result.catch(() => {});
    fanouts.set(id, t);
    while (fanouts.size > MAX_FANOUTS) {
      const [oldest, gone] = fanouts.entries().next().value!;
      fanouts.delete(oldest);
      // The aggregator holds the handle's fan-out for us until we release it.
      releaseStub(gone.handle);
    }
    // Follow progress in the background (long polls) and fan it out to SSE listeners.
    void (async () => {
      try {
        while (!t.done) {
          const page = await handle.next(t.cursor, 5_000);
          t.cursor = page.cursor;
          t.pages.push(page);
          t.done = page.done;
          for (const l of t.listeners) l();
        }
      } catch {
        t.done = true;
        for (const l of t.listeners) l();
      }
    })();
    return id;
  };

  const json = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
    res.end(JSON.stringify(body));
  };
  const fail = (res: ServerResponse, status: number, e: unknown) => {
    const code = (e as { code?: unknown }).code;
    json(res, status, {
      error: {
        code: typeof code === "string" ? code : "CONSOLE_ERR_UI_REQUEST",
        message: e instanceof Error ? e.message : "request failed",
      },
    });
  };

  const readBody = (req: IncomingMessage): Promise<unknown> =>
    new Promise((resolve, reject) => {
      let size = 0;
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY) {
          reject(new ConsoleError("CONSOLE_ERR_UI_REQUEST", "request body too large"));
          req.destroy();
        } else chunks.push(c);
      });
      req.on("end", () => {
        try {
          resolve(chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : {});
        } catch {
          reject(new ConsoleError("CONSOLE_ERR_UI_REQUEST", "body is not JSON"));
        }
      });
      req.on("error", reject);
    });

  const parseRequest = (b: unknown): FanOutRequest => {
    const r = b as Record<string, unknown>;
    if (typeof r !== "object" || r === null) throw new ConsoleError("CONSOLE_ERR_UI_REQUEST", "bad request");
    if (r.kind !== "viewport" && r.kind !== "read")
      throw new ConsoleError("CONSOLE_ERR_UI_REQUEST", "kind must be viewport or read");
    if (typeof r.name !== "string") throw new ConsoleError("CONSOLE_ERR_UI_REQUEST", "name must be a string");
    // Shape beyond this is the aggregator's to check (it refuses anything malformed, typed).
    return {
      kind: r.kind,
      name: r.name,
      ...(r.params !== undefined ? { params: r.params as FanOutRequest["params"] & object } : {}),
      ...(Array.isArray(r.targets) ? { targets: r.targets as string[] } : {}),
      ...(r.mode === "abort" || r.mode === "warn" ? { mode: r.mode } : {}),
      // The dashboard waits longer than the aggregator's defaults (5 s per Totebox, 15 s in all):
      // a person looking at a whole estate prefers a slow answer to a partial one.
      timeoutMs: typeof r.timeoutMs === "number" ? r.timeoutMs : 30_000,
      deadlineMs: 60_000,
    };
  };

  const serveStatic = (res: ServerResponse, path: string) => {
    const rel = path === "/" ? "index.html" : decodeURIComponent(path.slice(1));
    const full = normalize(join(UI_DIST, rel));
    if (
      !full.startsWith(UI_DIST.endsWith(sep) ? UI_DIST : UI_DIST + sep) ||
      !existsSync(full) ||
      !statSync(full).isFile()
    ) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, {
      "content-type": TYPES[extname(full)] ?? "application/octet-stream",
      "cache-control": rel === "index.html" ? "no-store" : "max-age=3600",
      "x-content-type-options": "nosniff",
      "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
    });
    res.end(readFileSync(full));
  };

  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? "/", "http://localhost");
      const path = url.pathname;
      if (path === "/login") {
        // The one-time link printed at start: trade the token for an HttpOnly cookie.
        const t = Buffer.from(url.searchParams.get("token") ?? "");
        if (t.length !== tokenBytes.length || !timingSafeEqual(t, tokenBytes))
          return fail(res, 403, new ConsoleError("CONSOLE_ERR_UI_REQUEST", "bad token"));
        res.writeHead(302, {
          "set-cookie": `osc_session=${token}; HttpOnly; SameSite=Strict; Path=/`,
          location: "/",
        });
        return res.end();
      }
      if (!path.startsWith("/api/")) return serveStatic(res, path);
      if (!authed(req))
        return fail(
          res,
          401,
          new ConsoleError(
            "CONSOLE_ERR_UI_REQUEST",
            "open the dashboard from the link os-console ui printed",
          ),
        );
      try {
        if (req.method === "GET" && path === "/api/session") {
          const { conn, session } = await rs.session();
          const fleet = await session.fleet();
          return json(res, 200, {
            operator,
            aggregator: {
              fingerprint: aggregator.fingerprint,
              address: `${aggregator.host}:${aggregator.port}`,
            },
            viewports: conn.hello.viewports,
            tags: [...new Set(fleet.flatMap((e) => Object.keys(e.tags)))].sort(),
          });
        }
        if (req.method === "GET" && path === "/api/fleet") {
          return json(res, 200, await rs.run((s) => s.fleet()));
        }
        if (req.method === "POST" && path === "/api/fanouts") {
          const id = await start(parseRequest(await readBody(req)));
          return json(res, 200, { id });
        }
        const m = /^\/api\/fanouts\/([0-9a-f]{16})(\/events|\/cancel)?$/.exec(path);
        const t = m ? fanouts.get(m[1]!) : undefined;
        if (m && !t) return fail(res, 404, new ConsoleError("CONSOLE_ERR_UI_REQUEST", "no such fan-out"));
        if (t && req.method === "GET" && m![2] === undefined) return json(res, 200, await t.result);
        if (t && req.method === "POST" && m![2] === "/cancel") return json(res, 200, await t.handle.cancel());
        if (t && req.method === "GET" && m![2] === "/events") {
          res.writeHead(200, {
            "content-type": "text/event-stream",
            "cache-control": "no-store",
            connection: "keep-alive",
          });
          let sent = 0;
          const flush = () => {
            while (sent < t.pages.length)
              res.write(`event: progress\ndata: ${JSON.stringify(t.pages[sent++])}\n\n`);
          };
          const onNews = () => flush();
          t.listeners.add(onNews);
          req.on("close", () => t.listeners.delete(onNews));
          flush();
          try {
            const r = await t.result;
            flush();
            res.write(`event: result\ndata: ${JSON.stringify(r)}\n\n`);
          } catch (e) {
            res.write(
              `event: failure\ndata: ${JSON.stringify({ code: (e as { code?: string }).code ?? "CONSOLE_ERR_UI_REQUEST", message: (e as Error).message })}\n\n`,
            );
          }
          t.listeners.delete(onNews);
          return res.end();
        }
        return fail(res, 404, new ConsoleError("CONSOLE_ERR_UI_REQUEST", "no such route"));
      } catch (e) {
        return fail(res, 400, e);
      }
    })();
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 0; // SSE streams stay open while a fan-out runs
  await new Promise<void>((r) => server.listen(options.port, options.host, () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${options.host}:${port}/login?token=${token}`,
    port,
    close: async () => {
      rs.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
