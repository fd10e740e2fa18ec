/**
 * Invariant 1, the stateless hub, proven on a real `os-orchestration serve` process: SIGKILL it in
 * the middle of a session, start it again, and the console reconnects and gets the same answers;
 * and the aggregator wrote no file besides its configuration, identity and logs.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { connectAggregator, ResilientSession, signGrant } from "@os-orchestration/console";
import type { FanOutResult } from "@os-orchestration/orchestration";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildEstate,
  ESTATE_AS_OF,
  type Estate,
  fleetYaml,
  type RunningTotebox,
  startAggregatorProcess,
  startToteboxesInProcess,
  stopAllChildren,
  stopChild,
  writeFleet,
} from "./estate.ts";

let root: string;
let estate: Estate;
let running: Map<string, RunningTotebox>;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "os-orch-restart-"));
  estate = await buildEstate({ root: join(root, "estate"), count: 8 });
  running = await startToteboxesInProcess(estate, pino({ level: "silent" }));
  cleanups.push(async () => {
    for (const t of running.values()) await t.stop();
  });
}, 120_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await stopAllChildren();
  rmSync(root, { recursive: true, force: true });
});

/** Every file under `dir` with its size and mtime. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        const s = statSync(p);
        out.set(relative(dir, p), `${s.size}:${s.mtimeMs}`);
      }
    }
  };
  walk(dir);
  return out;
}

const sectionsOf = (r: FanOutResult) => JSON.stringify(r.sections);

describe("the aggregator keeps no state", () => {
  it("SIGKILL mid-session, restart: the console reconnects and gets the same answers; no file written", async () => {
    // The aggregator's whole world: a config folder, its identity, an empty working folder and
    // an empty home. Everything is snapshotted before it starts.
    const configDir = join(root, "config");
    const work = join(root, "work");
    const home = join(root, "home");
    for (const d of [configDir, work, home]) mkdirSync(d, { recursive: true });
    const config = join(configDir, "fleet.yaml");
    writeFleet(config, fleetYaml(estate, running));
    const identityDir = join(estate.root, "aggregator", "identity");
    const watched = [configDir, identityDir, work, home];
    const before = watched.map(snapshot);

    const env = { HOME: home, TMPDIR: work };
    let agg = await startAggregatorProcess({ config, identityDir, cwd: work, env, http: "127.0.0.1:0" });
    const port = agg.port;
    const operator = estate.operators.get("atlas")!;
    const connect = () =>
      connectAggregator({
        identity: operator,
        host: "127.0.0.1",
        port,
        fingerprint: estate.aggregator.fingerprint,
      });
    const rs = new ResilientSession({
      connect,
      grant: (hello) =>
        signGrant({
          operator,
          operatorId: "alice",
          tenant: "atlas",
          aggregator: hello,
          toteboxSelectors: ["kind=property", "kind=project"],
          views: ["position", "occupancy", "income-summary", "intercompany", "archive-health"],
          actions: ["read"],
        }),
      random: () => 0.5,
    });
    cleanups.push(() => rs.close());
    const ask = () =>
      rs.run((s) => s.viewport("executive-summary", { params: { as_of: ESTATE_AS_OF }, mode: "abort" }));

    const first = await ask();
    expect(first.error).toBeNull();
    const portfolio = await rs.run((s) => s.viewport("portfolio", { params: { as_of: ESTATE_AS_OF } }));

    // Operations endpoints of the live process.
    const metrics = await (await fetch(`${agg.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/orch_links\{health="online"\} 8/);
    expect(metrics).toMatch(/orch_fanouts_total\{kind="viewport",outcome="complete"\} 2/);
    const health = (await (await fetch(`${agg.httpUrl}/healthz`)).json()) as {
      status: string;
      links: { online: number };
    };
    expect(health).toMatchObject({ status: "ok", links: { online: 8 } });

    // Kill it while a request is in flight.
    const inFlight = rs.run((s) => s.viewport("portfolio", { params: { as_of: ESTATE_AS_OF } }));
    // Awaited below; a handler now so that a rejection meanwhile is not reported as unhandled.
    inFlight.catch(() => {});
    await stopChild(agg.child, "SIGKILL");
    agg = await startAggregatorProcess({
      config,
      identityDir,
      cwd: work,
      env,
      listen: `127.0.0.1:${port}`,
      http: "127.0.0.1:0",
    });
    cleanups.push(() => stopChild(agg.child));

    // The in-flight request was retried on the new process; the next ones simply work.
    expect(sectionsOf(await inFlight)).toBe(sectionsOf(portfolio));
    const again = await ask();
    expect(sectionsOf(again)).toBe(sectionsOf(first));
    expect(again.outcomes.map((o) => [o.totebox, o.status])).toEqual(
      first.outcomes.map((o) => [o.totebox, o.status]),
    );
    expect(rs.reconnects).toBeGreaterThan(0);

    await stopChild(agg.child, "SIGKILL");
    // Nothing was written anywhere it could have written: config, identity, cwd, home.
    expect(watched.map(snapshot)).toEqual(before);
    // Its logs went to stderr, as JSON, and name no secret.
    const log = agg.stderr();
    expect(log).not.toMatch(/PRIVATE KEY|BEGIN CERTIFICATE/);
  });
});
