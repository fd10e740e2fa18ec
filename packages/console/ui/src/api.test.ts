/**
 * The API client against real HTTP servers on 127.0.0.1: the dev-fixture server (the same shapes
 * the console server promises) and small scripted servers for the failure paths.
 */
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { fixtureMiddleware } from "../dev-fixtures/middleware.ts";
import { createApi, decodeUiResult, type FanOutPage, readBounded } from "./api.ts";
import { UiError } from "./errors.ts";

type Handler = (req: IncomingMessage, res: ServerResponse) => void;
const servers: { close(): void }[] = [];

async function serve(handler: Handler): Promise<string> {
  const server = createServer(handler);
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  servers.push({ close: () => server.close() });
  server.on("connection", (s) => servers.push({ close: () => s.destroy() }));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

const fixtureServer = () => {
  const api = fixtureMiddleware({ stepMs: 0 });
  return serve((req, res) =>
    api(req, res, () => {
      res.writeHead(404);
      res.end();
    }),
  );
};

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as UiError).code;
  }
  throw new Error("expected a rejection");
}

function fixture(name: string): Record<string, unknown> {
  return JSON.parse(readFileSync(new URL(`../dev-fixtures/${name}`, import.meta.url), "utf8"));
}

describe("createApi against the fixture server", () => {
  it("reads the session and the fleet", async () => {
    const api = createApi(await fixtureServer());
    const s = await api.session();
    expect(s.operator.id).toBe("op-alice");
    expect(s.tags).toContain("region");
    expect(s.viewports.map((v) => v.name)).toEqual(["portfolio", "reconciliation", "executive-summary"]);
    const fleet = await api.fleet();
    expect(fleet).toHaveLength(8);
    expect(fleet.find((f) => f.id === "tb-dev")?.online).toBe(false);
  });

  it("starts a fan-out and follows its progress stream to the result", async () => {
    const api = createApi(await fixtureServer());
    const { id } = await api.start({
      kind: "viewport",
      name: "executive-summary",
      params: { as_of: "2025-06-30" },
    });
    const pages: FanOutPage[] = [];
    const r = await api.follow(id, (p) => pages.push(p));
    // One page per Totebox, in order, counting answered of targeted.
    expect(pages.map((p) => p.events[0]!.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(pages.at(-1)).toMatchObject({ done: true, answered: 7, targeted: 8 });
    expect(r.id).toBe(id);
    expect(r.outcomes).toHaveLength(8);
    expect(r.partial).toBe(true);
    expect(r.sections.map((s) => s.name)).toEqual(["figures", "windows", "exceptions", "coverage"]);
    expect(r.params.as_of).toBe("2025-06-30");
  });

  it("passes the server's error code through, and maps 401 to UI_ERR_UNAUTHORIZED", async () => {
    const api = createApi(await fixtureServer());
    expect(await code(api.start({ kind: "viewport", name: "no-such-viewport" }))).toBe(
      "ORCH_ERR_VIEWPORT_UNKNOWN",
    );
    const denied = createApi(
      await serve((_req, res) => {
        res.writeHead(401, { "content-type": "application/json" });
        res.end('{"code":"CONSOLE_ERR_UI_REQUEST","message":"no session"}');
      }),
    );
    expect(await code(denied.session())).toBe("UI_ERR_UNAUTHORIZED");
  });
});

describe("createApi failure paths", () => {
  it("falls back to GET /api/fanouts/:id when the stream ends without a result", async () => {
    const result = fixture("reconciliation.json");
    let gets = 0;
    const base = await serve((req, res) => {
      if (req.url === "/api/fanouts/f1/events") {
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.end('event: progress\ndata: {"events":[],"cursor":0,"done":false,"answered":0,"targeted":8}\n\n');
      } else if (req.url === "/api/fanouts/f1") {
        gets++;
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ ...result, id: "f1" }));
      }
    });
    const pages: FanOutPage[] = [];
    const r = await createApi(base).follow("f1", (p) => pages.push(p));
    expect(pages).toHaveLength(1);
    expect(gets).toBe(1);
    expect(r.id).toBe("f1");
  });

  it("refuses a progress event that is not the promised shape (no silent fallback)", async () => {
    const base = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end('event: progress\ndata: {"events":"nope"}\n\n');
    });
    expect(await code(createApi(base).follow("f1", () => {}))).toBe("UI_ERR_BAD_RESPONSE");
  });

  it("turns the stream's failure event into the server's own error, without a fallback", async () => {
    let gets = 0;
    const base = await serve((req, res) => {
      if (req.url === "/api/fanouts/f1") gets++;
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end('event: failure\ndata: {"code":"ORCH_ERR_COMBINE","message":"combine failed"}\n\n');
    });
    expect(await code(createApi(base).follow("f1", () => {}))).toBe("ORCH_ERR_COMBINE");
    expect(gets).toBe(0);
  });

  it("bounds a body while reading it", async () => {
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const base = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      // No content-length: the bound must hold on the running count.
      for (let i = 0; i < 32; i++) res.write(chunk);
      res.end();
    });
    const res = await fetch(base);
    expect(await code(readBounded(res, 1024 * 1024))).toBe("UI_ERR_TOO_LARGE");
    const small = await fetch(base);
    expect((await readBounded(small, 4 * 1024 * 1024)).length).toBe(32 * 64 * 1024);
  });

  it("reports non-JSON and an unreachable server with their codes", async () => {
    const base = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<html>");
    });
    expect(await code(createApi(base).fleet())).toBe("UI_ERR_BAD_RESPONSE");
    const closed = await serve(() => {});
    for (const s of servers.splice(0)) s.close();
    expect(await code(createApi(closed).session())).toBe("UI_ERR_NETWORK");
  });
});

describe("decodeUiResult", () => {
  const good = fixture("portfolio-region.json");

  it("accepts every fixture result", () => {
    for (const f of ["portfolio-region.json", "reconciliation.json", "executive-summary.json"]) {
      expect(() => decodeUiResult(fixture(f), f)).not.toThrow();
    }
    expect(() => decodeUiResult(fixture("read-intercompany-tb-hold.json"), "read")).not.toThrow();
  });

  it("accepts what the aggregator really sends: no chart key, non-scalar params left out", () => {
    const raw = structuredClone(good) as {
      sections: Record<string, unknown>[];
      params: Record<string, unknown>;
    };
    delete raw.sections[0]!.chart;
    raw.params.targets = ["a", "b"];
    const r = decodeUiResult(raw, "r");
    expect(r.sections[0]!.chart).toBeNull();
    expect(r.params).toEqual({ group_by: "region", as_of: "2025-06-30" });
  });

  it("refuses rows that do not match their columns, unknown statuses and non-scalar cells", () => {
    const sections = good.sections as { rows: unknown[][] }[];
    const shortRow = structuredClone(good);
    (shortRow.sections as { rows: unknown[][] }[])[0]!.rows[0] = sections[0]!.rows[0]!.slice(1);
    expect(() => decodeUiResult(shortRow, "r")).toThrow(/cells for/);

    const badStatus = structuredClone(good);
    (badStatus.outcomes as { status: string }[])[0]!.status = "fine";
    expect(() => decodeUiResult(badStatus, "r")).toThrow(/expected one of/);

    const objCell = structuredClone(good);
    (objCell.sections as { rows: unknown[][] }[])[0]!.rows[0]![1] = { toString: "x" };
    expect(() => decodeUiResult(objCell, "r")).toThrow(UiError);

    const protoTag = structuredClone(good);
    (protoTag.outcomes as { tags: unknown }[])[0]!.tags = JSON.parse('{"__proto__": "x"}');
    const r = decodeUiResult(protoTag, "r");
    expect(Object.getPrototypeOf(r.outcomes[0]!.tags)).toBeNull();
  });
});
