/**
 * The aggregator end to end: 24 real `os-totebox serve` processes in two tenants, the aggregator
 * on loopback, and consoles for both tenants' operators. Figures are checked against sums
 * computed here directly from each Totebox's own SQLite file, not through any view.
 *
 * Slow Toteboxes are made slow by SIGSTOP (a stopped process accepts bytes and answers nothing),
 * which is deterministic where a sleep inside a view would be timing luck.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type AggregatorConnection,
  connectAggregator,
  runFanOut,
  signGrant,
  verifyAnswers,
} from "@os-orchestration/console";
import {
  type FanOutResult,
  type OperatorSessionRemote,
  OrchestrationServer,
} from "@os-orchestration/orchestration";
import { type Identity, loadIdentity } from "@os-orchestration/psp";
import { expectedIntercompanyBalance } from "@os-orchestration/totebox";
import Database from "better-sqlite3";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildEstate,
  ESTATE_AS_OF,
  ESTATE_SEED,
  type Estate,
  fleetYaml,
  type RunningTotebox,
  startToteboxProcesses,
  stopAllChildren,
  waitFor,
  writeFleet,
} from "./estate.ts";

const VIEWS = [
  "position",
  "income-summary",
  "occupancy",
  "rent-roll-summary",
  "intercompany",
  "archive-health",
  "audit",
];
const COMMANDS = ["verify-ledger", "snapshot", "set-state", "stage-entry"];

let root: string;
let estate: Estate;
let toteboxes: Map<string, RunningTotebox>;
let server: OrchestrationServer;
let configPath: string;
const conns: AggregatorConnection[] = [];

interface Operator {
  conn: AggregatorConnection;
  session: OperatorSessionRemote;
  grant: Uint8Array;
}

async function operator(
  tenant: "atlas" | "crown",
  extra: { selectors?: string[]; ids?: string[] } = {},
): Promise<Operator> {
  const identity = estate.operators.get(tenant)!;
  const conn = await connectAggregator({
    identity,
    host: server.address.host,
    port: server.address.port,
    fingerprint: server.identity.fingerprint,
  });
  conns.push(conn);
  const grant = signGrant({
    operator: identity,
    operatorId: tenant === "atlas" ? "alice" : "bob",
    tenant,
    aggregator: conn.hello,
    toteboxSelectors: extra.selectors ?? ["kind=property", "kind=company", "kind=project"],
    ...(extra.ids ? { toteboxIds: extra.ids } : {}),
    views: VIEWS,
    actions: ["read", ...COMMANDS],
  });
  return { conn, session: conn.aggregator.authorize(grant), grant };
}

/** Each Totebox's figures straight from its SQLite file (not through the views). */
function direct(id: string) {
  const db = new Database(join(estate.toteboxDir(id), "archive.db"), { readonly: true, fileMustExist: true });
  try {
    const sum = (where: string) =>
      Number(
        (
          db
            .prepare(
              `SELECT coalesce(sum(l.amount), 0) AS s FROM journal_lines l JOIN journal_tx t ON t.seq = l.tx_seq
                 JOIN accounts a ON a.code = l.account WHERE t.date <= ? AND (${where})`,
            )
            .get(ESTATE_AS_OF) as { s: number }
        ).s,
      );
    const units = (db.prepare("SELECT count(*) AS n FROM units").get() as { n: number }).n;
    const occupied = (
      db
        .prepare(
          "SELECT count(DISTINCT unit_id) AS n FROM leases WHERE start_date <= ? AND (end_date IS NULL OR end_date >= ?)",
        )
        .get(ESTATE_AS_OF, ESTATE_AS_OF) as { n: number }
    ).n;
    const intercompany = db
      .prepare(
        `SELECT c.entity_ref AS peer, coalesce(sum(l.amount), 0) AS balance FROM counterparties c
           LEFT JOIN journal_lines l ON l.counterparty = c.id
           LEFT JOIN accounts a ON a.code = l.account
           LEFT JOIN journal_tx t ON t.seq = l.tx_seq
          WHERE c.entity_ref IS NOT NULL AND (l.amount IS NULL OR (a.subtype = 'intercompany' AND t.date <= ?))
          GROUP BY c.entity_ref`,
      )
      .all(ESTATE_AS_OF) as { peer: string; balance: number }[];
    return {
      cash: sum("a.subtype = 'cash'"),
      debt: -sum("a.class = 'liability' AND a.subtype = 'debt'"),
      netValue: sum("a.class IN ('asset', 'liability')"),
      units,
      occupied,
      intercompany: new Map(intercompany.map((r) => [r.peer, Number(r.balance)])),
    };
  } finally {
    db.close();
  }
}

function section(r: FanOutResult, name: string) {
  const s = r.sections.find((x) => x.name === name);
  if (!s) throw new Error(`no section ${name}`);
  const idx = new Map(s.columns.map((c, i) => [c.name, i]));
  return s.rows.map(
    (row) => Object.fromEntries([...idx].map(([k, i]) => [k, row[i]])) as Record<string, unknown>,
  );
}

function statusOf(r: FanOutResult, id: string) {
  const o = r.outcomes.find((x) => x.totebox === id);
  if (!o) throw new Error(`${id} missing from the answer`);
  return o;
}

/** Every targeted Totebox appears exactly once. */
function expectEachOnce(r: FanOutResult, ids: readonly string[]) {
  expect(r.outcomes.map((o) => o.totebox).sort()).toEqual([...ids].sort());
  expect(r.targeted).toBe(ids.length);
}

const tenantIds = (tenant: string) =>
  estate.entities.filter((e) => e.tenants.includes(tenant)).map((e) => e.id);

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "os-orch-e2e-"));
  estate = await buildEstate({ root, count: 24 });
  toteboxes = await startToteboxProcesses(estate);
  configPath = join(root, "fleet.yaml");
  writeFleet(configPath, fleetYaml(estate, toteboxes));
  server = await OrchestrationServer.start({
    configPath,
    identity: estate.aggregator,
    logger: pino({ level: "silent" }),
    configPollMs: 100,
  });
  await server.pool.settled(30_000);
}, 240_000);

afterAll(async () => {
  for (const c of conns) c.close();
  await server?.close();
  await stopAllChildren();
  rmSync(root, { recursive: true, force: true });
});

describe("a demo estate of 24 Toteboxes in two tenants", () => {
  it("links to every Totebox, and each tenant's fleet lists only its own", async () => {
    expect(server.pool.counts().online).toBe(24);
    const atlas = await operator("atlas");
    const crown = await operator("crown");
    const fa = await atlas.session.fleet();
    const fc = await crown.session.fleet();
    expect(fa.map((e) => e.id).sort()).toEqual(tenantIds("atlas").sort());
    expect(fc.map((e) => e.id).sort()).toEqual(tenantIds("crown").sort());
    expect(new Set([...fa, ...fc].map((e) => e.id)).size).toBe(24);
    expect(fa.every((e) => e.online && e.lastContact !== null)).toBe(true);
  });

  it("portfolio: subtotals and grand total equal the Toteboxes' own books, every receipt verifies", async () => {
    for (const tenant of ["atlas", "crown"] as const) {
      const op = await operator(tenant);
      const r = await op.session.viewport("portfolio", {
        params: { group_by: "region", as_of: ESTATE_AS_OF },
      });
      const ids = tenantIds(tenant);
      expectEachOnce(r, ids);
      expect(r.error).toBeNull();
      expect(r.partial).toBe(false);
      expect(r.outcomes.every((o) => o.status === "ok")).toBe(true);

      const checks = verifyAnswers(r, (id) => keyOf(id));
      expect(checks.filter((c) => c.verified).length).toBe(ids.length);

      const rows = section(r, "rollup");
      const figures = new Map(ids.map((id) => [id, direct(id)]));
      const byGroup = new Map<string, string[]>();
      for (const e of estate.entities.filter((x) => ids.includes(x.id))) {
        const g = e.tags.region!;
        byGroup.set(g, [...(byGroup.get(g) ?? []), e.id]);
      }
      const total = rows.find((x) => x.level === "total")!;
      expect(Number(total.net_value)).toBe(ids.reduce((s, id) => s + figures.get(id)!.netValue, 0));
      expect(Number(total.cash)).toBe(ids.reduce((s, id) => s + figures.get(id)!.cash, 0));
      expect(Number(total.debt)).toBe(ids.reduce((s, id) => s + figures.get(id)!.debt, 0));
      expect(Number(total.units)).toBe(ids.reduce((s, id) => s + figures.get(id)!.units, 0));
      expect(Number(total.toteboxes)).toBe(ids.length);
      for (const [g, members] of byGroup) {
        const sub = rows.find((x) => x.level === "subtotal" && x.grp === g)!;
        expect(Number(sub.net_value)).toBe(members.reduce((s, id) => s + figures.get(id)!.netValue, 0));
        const occ = members.reduce((s, id) => s + figures.get(id)!.occupied, 0);
        const units = members.reduce((s, id) => s + figures.get(id)!.units, 0);
        expect(Number(sub.occupancy_ratio)).toBeCloseTo(units === 0 ? 0 : occ / units, 9);
      }
      for (const id of ids) {
        const row = rows.find((x) => x.level === "totebox" && x.totebox === id)!;
        expect(Number(row.net_value)).toBe(figures.get(id)!.netValue);
      }
    }
  });

  it("reconciliation: every intercompany pair classified as the generator's rule says", async () => {
    const crown = await operator("crown");
    const r = await crown.session.viewport("reconciliation", { params: { as_of: ESTATE_AS_OF } });
    const companies = estate.entities.filter((e) => e.kind === "company").map((e) => e.id);
    const pairs = section(r, "pairs");
    expect(pairs.length).toBe((companies.length * (companies.length - 1)) / 2);
    let mismatched = 0;
    for (const p of pairs) {
      const a = String(p.entity_a);
      const b = String(p.entity_b);
      const ea = expectedIntercompanyBalance(a, b, ESTATE_SEED, ESTATE_AS_OF);
      const eb = expectedIntercompanyBalance(b, a, ESTATE_SEED, ESTATE_AS_OF);
      expect(Number(p.balance_a)).toBe(ea);
      expect(Number(p.balance_b)).toBe(eb);
      // and the books themselves say the same
      expect(direct(a).intercompany.get(b) ?? 0).toBe(ea);
      expect(Number(p.difference)).toBe(ea + eb);
      expect(p.status).toBe(ea + eb === 0 ? "matched" : "mismatched");
      if (ea + eb !== 0) mismatched++;
    }
    expect(mismatched).toBeGreaterThan(0);
    expect(mismatched).toBeLessThan(pairs.length);
    const summary = section(r, "summary")[0]!;
    expect(Number(summary.mismatched)).toBe(mismatched);
  });

  it("executive summary covers every Totebox of the tenant and sums the estate", async () => {
    const atlas = await operator("atlas");
    const r = await atlas.session.viewport("executive-summary", { params: { as_of: ESTATE_AS_OF } });
    const ids = tenantIds("atlas");
    expectEachOnce(r, ids);
    const f = section(r, "figures")[0]!;
    expect(Number(f.toteboxes_targeted)).toBe(ids.length);
    expect(Number(f.toteboxes_answered)).toBe(ids.length);
    expect(Number(f.net_value)).toBe(ids.reduce((s, id) => s + direct(id).netValue, 0));
    const windows = section(r, "windows").map((w) => w.period);
    expect(windows).toEqual(["1D", "1W", "30D", "90D", "YTD", "ITD"]);
    const coverage = section(r, "coverage");
    expect(coverage.find((c) => c.status === "ok")?.toteboxes).toBe(ids.length);
  });
});

/** Totebox public keys, read from their own identity folders (what pairing would have told the console). */
const keys = new Map<string, Identity>();
function keyOf(id: string) {
  return keys.get(id)?.publicKey;
}
beforeAll(async () => {
  for (const e of estate.entities)
    keys.set(e.id, await loadIdentity(join(estate.toteboxDir(e.id), "identity")));
});

describe("partial answers are explicit", () => {
  it("a stopped, a slowed and a suspended Totebox are each reported with their reason", async () => {
    const atlas = await operator("atlas");
    const stopped = toteboxes.get("prop-002")!;
    const slowed = toteboxes.get("prop-003")!;
    await stopped.stop();
    process.kill(slowed.pid!, "SIGSTOP");
    try {
      // Suspended mid-query: the registry suspends prop-004 while prop-003 holds the fan-out open.
      const handle = atlas.session.start({
        kind: "viewport",
        name: "portfolio",
        params: { as_of: ESTATE_AS_OF },
        timeoutMs: 4_000,
      });
      const first = await handle.next(0, 10_000);
      expect(first.events.length).toBeGreaterThan(0);
      const cfg = readFileSync(configPath, "utf8").replace(
        /(id: prop-004\n(?:.*\n)*?\s+state:) active/,
        "$1 suspended",
      );
      writeFileSync(configPath, cfg);
      const r = await handle.result();
      expectEachOnce(r, tenantIds("atlas"));
      expect(r.partial).toBe(true);
      expect(r.error).toBeNull(); // warn mode: what arrived is returned
      expect(statusOf(r, "prop-002")).toMatchObject({ status: "offline" });
      expect(statusOf(r, "prop-003")).toMatchObject({ status: "timeout", code: "ORCH_ERR_TOTEBOX_TIMEOUT" });
      const p4 = statusOf(r, "prop-004");
      expect(["ok", "offline"]).toContain(p4.status);
      // The rollup is over the Toteboxes that answered, and says so.
      const total = section(r, "rollup").find((x) => x.level === "total")!;
      expect(Number(total.toteboxes)).toBe(r.answered);

      // Once the suspension is applied, the next fan-out reports it without asking the Totebox.
      await waitFor(() => server.pool.health("prop-004")?.health === "suspended");
      const again = await atlas.session.viewport("portfolio", {
        params: { as_of: ESTATE_AS_OF },
        timeoutMs: 2_000,
        mode: "abort",
      });
      expect(statusOf(again, "prop-004")).toMatchObject({
        status: "offline",
        code: "ORCH_ERR_TOTEBOX_SUSPENDED",
      });
      expect(again.error?.code).toBe("ORCH_ERR_PARTIAL");
      expect(again.sections).toEqual([]);
    } finally {
      process.kill(slowed.pid!, "SIGCONT");
      writeFileSync(
        configPath,
        readFileSync(configPath, "utf8").replace(/state: suspended/g, "state: active"),
      );
      const restarted = await startToteboxProcesses(estate, ["prop-002"], {
        ports: new Map([["prop-002", stopped.port]]),
      });
      toteboxes.set("prop-002", restarted.get("prop-002")!);
    }
    // Everything heals: links come back (reconnect with backoff) and the answer is whole again.
    await waitFor(
      () => tenantIds("atlas").every((id) => server.pool.health(id)?.health === "online"),
      60_000,
    );
    const healed = await atlas.session.viewport("portfolio", { params: { as_of: ESTATE_AS_OF } });
    expect(healed.partial).toBe(false);
  });
});

describe("tenants are isolated", () => {
  it("an operator never reaches another tenant's Totebox, whatever it asks", async () => {
    const crown = await operator("crown");
    const atlasOnly = estate.entities.find((e) => !e.tenants.includes("crown"))!.id;
    await expect(crown.session.read("position", { targets: [atlasOnly] })).rejects.toMatchObject({
      code: "ORCH_ERR_TARGET_UNKNOWN",
    });
    // A selector reaching into the other tenant selects nothing there.
    const r = await crown.session.read("position", {
      targets: ["kind=property"],
      params: { as_of: ESTATE_AS_OF },
    });
    expect(
      r.outcomes.every((o) => estate.entities.find((e) => e.id === o.totebox)!.tenants.includes("crown")),
    ).toBe(true);
    expect(r.sections[0]!.rows.every((row) => tenantIds("crown").includes(String(row[0])))).toBe(true);
    await expect(crown.session.read("position", { targets: ["kind=project"] })).rejects.toMatchObject({
      code: "ORCH_ERR_NO_TARGETS",
    });
  });

  it("a grant is bound to its operator's link and tenant", async () => {
    const atlas = await operator("atlas");
    const crown = await operator("crown");
    // bob's grant presented on alice's link
    await expect(atlas.conn.aggregator.authorize(crown.grant).fleet()).rejects.toMatchObject({
      code: "ORCH_ERR_GRANT_OPERATOR",
    });
    // alice signing a grant for crown's tenant
    const wrongTenant = signGrant({
      operator: estate.operators.get("atlas")!,
      operatorId: "alice",
      tenant: "crown",
      aggregator: atlas.conn.hello,
      toteboxSelectors: ["kind=company"],
      views: ["position"],
      actions: ["read"],
    });
    await expect(atlas.conn.aggregator.authorize(wrongTenant).fleet()).rejects.toMatchObject({
      code: "ORCH_ERR_GRANT_TENANT",
    });
  });

  it("a request outside the grant is refused before any fan-out", async () => {
    const atlas = await operator("atlas", { selectors: ["region=west"] });
    const before = await fanoutsStarted();
    const outside = estate.entities.find((e) => e.tenants.includes("atlas") && e.tags.region !== "west")!.id;
    await expect(atlas.session.read("position", { targets: [outside] })).rejects.toMatchObject({
      code: "ORCH_ERR_OUT_OF_GRANT",
    });
    const narrow = signGrant({
      operator: estate.operators.get("atlas")!,
      operatorId: "alice",
      tenant: "atlas",
      aggregator: atlas.conn.hello,
      toteboxSelectors: ["region=west"],
      views: ["position"],
      actions: ["read"],
    });
    const s = atlas.conn.aggregator.authorize(narrow);
    await expect(s.viewport("portfolio")).rejects.toMatchObject({ code: "ORCH_ERR_OUT_OF_GRANT" });
    await expect(s.command("verify-ledger", { idempotencyKey: "k1" })).rejects.toMatchObject({
      code: "ORCH_ERR_OUT_OF_GRANT",
    });
    expect(await fanoutsStarted()).toBe(before);
    // Inside the grant, a selector-wide read reaches exactly the west.
    const ok = await s.read("position", { params: { as_of: ESTATE_AS_OF } });
    const west = estate.entities
      .filter((e) => e.tenants.includes("atlas") && e.tags.region === "west")
      .map((e) => e.id);
    expectEachOnce(ok, west);
  });
});

describe("commands and progress", () => {
  it("a command runs once per Totebox however often it is retried", async () => {
    const crown = await operator("crown");
    const opts = { targets: ["kind=company"], idempotencyKey: "verify-2026-11-26" };
    const first = await crown.session.command("verify-ledger", opts);
    const second = await crown.session.command("verify-ledger", opts);
    expect(first.outcomes.every((o) => o.status === "ok" && o.command?.replayed === false)).toBe(true);
    expect(second.outcomes.every((o) => o.status === "ok" && o.command?.replayed === true)).toBe(true);
    for (const o of second.outcomes) {
      const f = first.outcomes.find((x) => x.totebox === o.totebox)!;
      expect(Buffer.from(o.command!.receipt).equals(Buffer.from(f.command!.receipt))).toBe(true);
    }
    expect(verifyAnswers(second, (id) => keyOf(id)).every((c) => c.verified)).toBe(true);
    // Asked without answers: each Totebox reports ok, and no command receipt comes back.
    const third = await crown.session.command("verify-ledger", { ...opts, answers: false });
    expect(third.outcomes.length).toBe(first.outcomes.length);
    expect(
      third.outcomes.every((o) => o.status === "ok" && o.command === null && o.answers.length === 0),
    ).toBe(true);
  });

  it("live progress arrives Totebox by Totebox, and cancel stops the rest", async () => {
    const atlas = await operator("atlas");
    const slowed = toteboxes.get("prop-005")!;
    process.kill(slowed.pid!, "SIGSTOP");
    try {
      const pages: number[] = [];
      const events: { seq: number; status: string; answered: number; targeted: number }[] = [];
      const handle = atlas.session.start({
        kind: "read",
        name: "position",
        params: { as_of: ESTATE_AS_OF },
        timeoutMs: 60_000,
      });
      let cursor = 0;
      let answered = 0;
      const targeted = tenantIds("atlas").length;
      while (answered < targeted - 1) {
        const page = await handle.next(cursor, 5_000);
        cursor = page.cursor;
        answered = page.answered;
        pages.push(page.events.length);
        events.push(...page.events);
      }
      // The pages make one sequence: seq 1, 2, … in the order Toteboxes settled, each event
      // counting the Toteboxes that had answered by then, itself included.
      expect(events.map((e) => e.seq)).toEqual(events.map((_, k) => k + 1));
      let sofar = 0;
      for (const e of events) {
        if (e.status === "ok" || e.status === "suppressed") sofar++;
        expect(e).toMatchObject({ answered: sofar, targeted });
      }
      const cancelled = await handle.cancel();
      expect(cancelled.cancelled).toBe(true);
      const r = await handle.result();
      expect(r.error?.code).toBe("ORCH_ERR_CANCELLED");
      expect(statusOf(r, "prop-005")).toMatchObject({ status: "error", code: "ORCH_ERR_CANCELLED" });
      expectEachOnce(r, tenantIds("atlas"));
      expect(pages.reduce((a, b) => a + b, 0)).toBe(targeted - 1);
    } finally {
      process.kill(slowed.pid!, "SIGCONT");
    }
    // The cancellation reached the Totebox: once it runs again, its audit log records the
    // aggregator's cancel of that read (by capability id, never the token).
    await waitFor(() => auditActions("prop-005").includes("cancel"), 30_000);
  });

  it("per-tenant limits: one tenant's fan-outs cannot starve another's", async () => {
    const cfg = readFileSync(configPath, "utf8");
    writeFileSync(
      configPath,
      cfg.replace(
        /crown:\n(\s+)name: Crown Holdings/,
        "crown:\n$1name: Crown Holdings\n$1max_concurrent_fanouts: 1",
      ),
    );
    await waitFor(() => server.registry.tenants.get("crown")?.maxConcurrentFanouts === 1);
    const crown = await operator("crown");
    const atlas = await operator("atlas");
    const held = toteboxes.get("co-002")!;
    process.kill(held.pid!, "SIGSTOP");
    try {
      const first = crown.session.start({
        kind: "read",
        name: "position",
        targets: ["co-002"],
        timeoutMs: 30_000,
      });
      await first.id(); // the fan-out is running (held open by the stopped Totebox)
      await expect(crown.session.read("position", { targets: ["co-001"] })).rejects.toMatchObject({
        code: "ORCH_ERR_TENANT_BUSY",
      });
      // The other tenant is served meanwhile.
      const other = await atlas.session.read("position", { targets: ["prop-001"] });
      expect(other.answered).toBe(1);
      await first.cancel();
      await first.result();
      // Once the first is done, the tenant may run again.
      const again = await crown.session.read("position", { targets: ["co-001"] });
      expect(again.answered).toBe(1);
    } finally {
      process.kill(held.pid!, "SIGCONT");
      writeFileSync(configPath, cfg);
    }
  });

  it("runFanOut follows progress to the end", async () => {
    const crown = await operator("crown");
    const seen: number[] = [];
    const r = await runFanOut(crown.session, { kind: "viewport", name: "portfolio" }, (p) =>
      seen.push(p.answered),
    );
    expect(seen.at(-1)).toBe(r.targeted);
    expect(r.answered).toBe(r.targeted);
  });
});

describe("one round trip each way", () => {
  it("a viewport costs the console one round trip and each Totebox one", async () => {
    const crown = await operator("crown");
    // Let the link go quiet (hello's answer released) so that only this request's frames count.
    await new Promise<void>((r) => setImmediate(r));
    const ids = tenantIds("crown");
    const perTotebox = new Map<string, { outBeforeAnswer: number }>();
    const cleanups: (() => void)[] = [];
    for (const id of ids) {
      const link = server.pool.linkOf(id)!;
      const start = link.stats.framesOut;
      const onIn = () => {
        if (!perTotebox.has(id)) perTotebox.set(id, { outBeforeAnswer: link.stats.framesOut - start });
      };
      link.on("frame-in", onIn);
      cleanups.push(() => link.off("frame-in", onIn));
    }
    const clink = crown.conn.link;
    const cStart = clink.stats.framesOut;
    let cOutBeforeAnswer = -1;
    const onConsoleIn = () => {
      if (cOutBeforeAnswer < 0) cOutBeforeAnswer = clink.stats.framesOut - cStart;
    };
    clink.on("frame-in", onConsoleIn);
    try {
      const r = await crown.session.viewport("executive-summary", { params: { as_of: ESTATE_AS_OF } });
      expect(r.answered).toBe(ids.length);
    } finally {
      clink.off("frame-in", onConsoleIn);
      for (const c of cleanups) c();
    }
    // The console's whole request (authorize + viewport) left in one frame before anything came back.
    expect(cOutBeforeAnswer).toBe(1);
    // Each Totebox: authorize + five pipelined reads in one frame before its first answer frame.
    for (const id of ids) expect(perTotebox.get(id)?.outBeforeAnswer).toBe(1);
  });
});

/** Actions recorded in a Totebox's own audit log (read straight from its archive). */
function auditActions(id: string): string[] {
  const db = new Database(join(estate.toteboxDir(id), "archive.db"), { readonly: true, fileMustExist: true });
  try {
    return (
      db.prepare("SELECT entry FROM audit_entry ORDER BY idx DESC LIMIT 200").all() as { entry: string }[]
    ).map((r) => (JSON.parse(r.entry) as { action: string }).action);
  } finally {
    db.close();
  }
}

/** Fan-outs finished so far, from the aggregator's own metrics. */
async function fanoutsStarted(): Promise<number> {
  const m = await server.metrics.fanouts.get();
  return m.values.reduce((s, v) => s + v.value, 0);
}
