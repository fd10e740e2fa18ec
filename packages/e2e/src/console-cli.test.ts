/**
 * os-console as an operator uses it, as real processes: a fresh key, the pairing ceremonies with
 * the aggregator and with a Totebox, a grant, the fleet, viewports in every output format, a
 * partial answer under abort, audit-log growth, saved answers re-verified offline, and a command.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { OrchestrationServer } from "@os-orchestration/orchestration";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildEstate,
  CONSOLE_BIN,
  ESTATE_AS_OF,
  type Estate,
  fleetYaml,
  ORCH_BIN,
  type RunningTotebox,
  startToteboxesInProcess,
  TOTEBOX_BIN,
  waitFor,
  writeFleet,
} from "./estate.ts";

const run = promisify(execFile);

let root: string;
let estate: Estate;
let toteboxes: Map<string, RunningTotebox & { server: import("@os-orchestration/totebox").ToteboxServer }>;
let server: OrchestrationServer;
let config: string;
let home: string;
const children = new Set<ChildProcess>();

async function osConsole(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CONSOLE_BIN, ...args, "--home", home], {
      env: { ...process.env, OS_CONSOLE_HOME: "" },
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === "number" ? x.code : 1, stdout: x.stdout ?? "", stderr: x.stderr ?? "" };
  }
}

/** Starts a command that prints a pairing offer and waits; resolves with its device id and code. */
function offer(
  bin: string,
  args: string[],
): Promise<{
  child: ChildProcess;
  deviceId: string;
  code: string;
  address?: string;
  exited: Promise<number | null>;
}> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    const exited = new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
    let text = "";
    let err = "";
    child.stderr!.on("data", (d) => {
      err += String(d);
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      text += `${line}\n`;
      const code = /code\s+(\S+)/.exec(text)?.[1];
      const deviceId = /device ID\s+(\S+)/.exec(text)?.[1];
      const address = /address\s+(\S+)/.exec(text)?.[1];
      if (code && deviceId) resolve({ child, deviceId, code, ...(address ? { address } : {}), exited });
    });
    child.once("exit", (c) => reject(new Error(`pairing offer exited ${c}: ${err}`)));
  });
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "os-console-cli-"));
  home = join(root, "console-home");
  estate = await buildEstate({ root: join(root, "estate"), count: 8 });
  toteboxes = await startToteboxesInProcess(estate, pino({ level: "silent" }));
  config = join(root, "fleet.yaml");
  // The fleet starts without our new operator: pairing adds it.
  writeFleet(config, fleetYaml(estate, toteboxes));
  server = await OrchestrationServer.start({
    configPath: config,
    identity: estate.aggregator,
    logger: pino({ level: "silent" }),
    configPollMs: 100,
  });
  await server.pool.settled(20_000);
}, 120_000);

afterAll(async () => {
  for (const c of children) c.kill("SIGKILL");
  await server?.close();
  for (const t of toteboxes?.values() ?? []) await t.stop();
  rmSync(root, { recursive: true, force: true });
});

describe("os-console", () => {
  it("keys, pairing with the aggregator and a Totebox, a grant and the fleet", async () => {
    const keys = await osConsole(["keys", "init", "--json"]);
    expect(keys.code).toBe(0);
    const { publicKey } = JSON.parse(keys.stdout) as { publicKey: string };
    expect(publicKey).toMatch(/^[0-9a-f]{64}$/);

    // Before pairing the console has nowhere to go.
    const early = await osConsole(["fleet"]);
    expect(early.code).toBe(1);
    expect(early.stderr).toMatch(/CONSOLE_ERR_CONFIG/);

    const o = await offer(ORCH_BIN, [
      "pair-operator",
      "--identity",
      join(estate.root, "aggregator", "identity"),
      "--config",
      config,
      "--id",
      "carol",
      "--tenant",
      "atlas",
      "--role",
      "manager",
    ]);
    // A wrong code is refused (and burns the offer) — checked on a second offer below.
    const paired = await osConsole([
      "pair",
      "--address",
      o.address!,
      "--device-id",
      o.deviceId,
      "--code",
      o.code,
      "--aggregator",
      `127.0.0.1:${server.address.port}`,
    ]);
    expect(paired.stderr).toBe("");
    expect(paired.code).toBe(0);
    expect(await o.exited).toBe(0);
    expect(readFileSync(config, "utf8")).toContain(publicKey);

    const o2 = await offer(ORCH_BIN, [
      "pair-operator",
      "--identity",
      join(estate.root, "aggregator", "identity"),
      "--config",
      config,
      "--id",
      "mallory",
      "--tenant",
      "atlas",
    ]);
    const wrong = await osConsole([
      "pair",
      "--address",
      o2.address!,
      "--device-id",
      o2.deviceId,
      "--code",
      "AAAA-AAAA",
    ]);
    expect(wrong.code).toBe(1);
    expect(await o2.exited).toBe(1);
    expect(readFileSync(config, "utf8")).not.toContain("mallory");

    // The running aggregator picks carol up from the file.
    await waitFor(() => [...server.registry.operatorById.keys()].includes("carol"));

    // Pair with one Totebox as its operator: the console learns its receipt key.
    const tb = estate.entities.find((e) => e.tenants.includes("atlas"))!;
    const t = toteboxes.get(tb.id)!;
    const tbOffer = await offer(TOTEBOX_BIN, [
      "pair",
      "--dir",
      estate.toteboxDir(tb.id),
      "--as",
      "operator",
      "--label",
      "carol",
      "--tenant",
      "atlas",
    ]);
    const pt = await osConsole([
      "pair-totebox",
      "--address",
      `127.0.0.1:${t.port}`,
      "--device-id",
      tbOffer.deviceId,
      "--code",
      tbOffer.code,
    ]);
    expect(pt.stderr).toBe("");
    expect(pt.code).toBe(0);
    const cfg = JSON.parse(readFileSync(join(home, "console.json"), "utf8")) as {
      toteboxes: Record<string, { publicKey: string }>;
      operator: { id: string; tenant: string };
    };
    expect(cfg.operator).toMatchObject({ id: "carol", tenant: "atlas" });
    expect(Object.keys(cfg.toteboxes)).toEqual([tb.id]);

    // Until the other Toteboxes' owners trust carol, they deny her grant: the hub cannot widen it.
    expect((await osConsole(["grant", "--ttl-seconds", "600"])).code).toBe(0);
    const denied = await osConsole(["viewport", "portfolio"]);
    expect(denied.stderr).toMatch(/denied\s+PSP_ERR_CAP_ISSUER/);
    // The owners trust her key (os-totebox trust --as operator --public-key …).
    for (const e of estate.entities.filter((x) => x.tenants.includes("atlas") && x.id !== tb.id)) {
      const r = await run(process.execPath, [
        TOTEBOX_BIN,
        "trust",
        "--dir",
        estate.toteboxDir(e.id),
        "--as",
        "operator",
        "--label",
        "carol",
        "--public-key",
        publicKey,
        "--tenant",
        "atlas",
      ]);
      expect(r.stderr).toBe("");
    }
    rmSync(join(home, "grant.cose"));

    expect((await osConsole(["fleet"])).stderr).toMatch(/no live grant/);
    const g = await osConsole(["grant", "--ttl-seconds", "600"]);
    expect(g.stderr).toBe("");
    expect(g.code).toBe(0);
    const fleet = await osConsole(["fleet"]);
    expect(fleet.code).toBe(0);
    for (const e of estate.entities.filter((x) => x.tenants.includes("atlas")))
      expect(fleet.stdout).toContain(e.id);
    for (const e of estate.entities.filter((x) => !x.tenants.includes("atlas")))
      expect(fleet.stdout).not.toContain(e.id);
    const fj = JSON.parse((await osConsole(["fleet", "--json"])).stdout) as { id: string; online: boolean }[];
    expect(fj.every((e) => e.online)).toBe(true);
  }, 240_000);

  it("viewport as table, JSON and CSV; saved answers verify offline, tampered ones do not", async () => {
    const save = join(root, "portfolio.json");
    const tableOut = await osConsole([
      "viewport",
      "portfolio",
      "--param",
      `as_of=${ESTATE_AS_OF}`,
      "--save",
      save,
    ]);
    expect(tableOut.code).toBe(0);
    expect(tableOut.stdout).toMatch(/level\s+grp/);
    // Carol knows one Totebox's key only: its receipt verifies, the others are reported unverified.
    expect(tableOut.stderr).toMatch(/NOT verified \(receipts: some/);

    const json = await osConsole(["viewport", "portfolio", "--param", `as_of=${ESTATE_AS_OF}`, "--json"]);
    const parsed = JSON.parse(json.stdout) as {
      sections: { name: string; rows: unknown[][] }[];
      answered: number;
    };
    expect(parsed.sections[0]!.name).toBe("rollup");
    const csvOut = await osConsole(["viewport", "portfolio", "--param", `as_of=${ESTATE_AS_OF}`, "--csv"]);
    const lines = csvOut.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^level,grp,/);
    expect(lines.length).toBe(parsed.sections[0]!.rows.length + 1);

    // Give the console every key (as pairing with each would), then re-verify the saved answer.
    const cfgPath = join(home, "console.json");
    const cfg = JSON.parse(readFileSync(cfgPath, "utf8")) as { toteboxes: Record<string, unknown> };
    const { loadIdentity, rawEd25519PublicKey } = await import("@os-orchestration/psp");
    for (const e of estate.entities) {
      const id = await loadIdentity(join(estate.toteboxDir(e.id), "identity"));
      cfg.toteboxes[e.id] = {
        fingerprint: id.fingerprint,
        publicKey: Buffer.from(rawEd25519PublicKey(id.publicKey)).toString("hex"),
      };
    }
    writeFileSync(cfgPath, JSON.stringify(cfg));
    const ok = await osConsole(["receipts", "verify", save]);
    expect(ok.stdout).toMatch(/receipts: all; figures recomputed: equal/);
    expect(ok.code).toBe(0);

    // A figure changed after the fact: receipts still verify, but the recomputed figures differ.
    const r = JSON.parse(readFileSync(save, "utf8")) as { sections: { rows: unknown[][] }[] };
    const row = r.sections[0]!.rows.at(-1)!;
    const i = row.findIndex((c) => typeof c === "number" && Math.abs(c) > 1000);
    row[i] = (row[i] as number) + 100;
    writeFileSync(save, JSON.stringify(r));
    const bad = await osConsole(["receipts", "verify", save]);
    expect(bad.stdout).toMatch(/figures recomputed: DIFFERENT/);
    expect(bad.code).toBe(4);
  });

  it("a partial answer under --mode abort exits 3 and names the missing Totebox", async () => {
    const victim = estate.entities.find((e) => e.tenants.includes("atlas"))!.id;
    await toteboxes.get(victim)!.stop();
    try {
      const r = await osConsole(["viewport", "portfolio", "--mode", "abort", "--timeout", "3000"]);
      expect(r.stderr).toContain("ORCH_ERR_PARTIAL");
      expect(r.code).toBe(3);
      expect(r.stderr).toContain(victim);
      expect(r.stderr).toMatch(/ORCH_ERR_PARTIAL/);
      const warn = await osConsole(["viewport", "portfolio", "--timeout", "3000"]);
      expect(warn.stderr).toMatch(new RegExp(`${victim}\\s+offline`));
    } finally {
      const again = await startToteboxesInProcess(estate, pino({ level: "silent" }), [victim], {
        ports: new Map([[victim, toteboxes.get(victim)!.port]]),
      });
      toteboxes.set(victim, again.get(victim)!);
    }
  });

  it("audit verify stores a checkpoint, then proves the log only grew", async () => {
    const tb = estate.entities.find((e) => e.tenants.includes("atlas"))!.id;
    await waitFor(() => server.pool.health(tb)?.health === "online", 30_000);
    const first = await osConsole(["audit", "verify", tb]);
    expect(first.stderr).toBe("");
    expect(first.stdout).toMatch(/checkpoint stored \(first check\)/);
    await osConsole(["read", "position", "--targets", tb]);
    const second = await osConsole(["audit", "verify", tb]);
    expect(second.stdout).toMatch(/grew from (\d+) to (\d+) entries, consistent/);
    const [, a, b] = /grew from (\d+) to (\d+)/.exec(second.stdout)!;
    expect(Number(b)).toBeGreaterThan(Number(a));
  });

  it("command: idempotent by key, needs a grant that lists it", async () => {
    const denied = await osConsole([
      "command",
      "verify-ledger",
      "--targets",
      "kind=property",
      "--idempotency-key",
      "k-1",
    ]);
    expect(denied.code).toBe(1);
    expect(denied.stderr).toMatch(/ORCH_ERR_OUT_OF_GRANT/);
    expect((await osConsole(["grant", "--actions", "read,verify-ledger"])).code).toBe(0);
    const first = await osConsole([
      "command",
      "verify-ledger",
      "--targets",
      "kind=property",
      "--idempotency-key",
      "k-1",
      "--json",
    ]);
    expect(first.code).toBe(0);
    const again = await osConsole([
      "command",
      "verify-ledger",
      "--targets",
      "kind=property",
      "--idempotency-key",
      "k-1",
      "--json",
    ]);
    const a = JSON.parse(first.stdout) as { outcomes: { command: { replayed: boolean } }[] };
    const b = JSON.parse(again.stdout) as { outcomes: { command: { replayed: boolean } }[] };
    expect(a.outcomes.every((o) => o.command.replayed === false)).toBe(true);
    expect(b.outcomes.every((o) => o.command.replayed === true)).toBe(true);
  });
});
