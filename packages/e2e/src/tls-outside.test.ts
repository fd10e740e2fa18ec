/**
 * TLS from outside: OpenSSL's own client (`openssl s_client`, OpenSSL 3.0) against a real
 * ToteboxServer and a real aggregator's console listener, both in-process on loopback.
 *
 * For each target, each of these is refused before any application data:
 *   (a) no client certificate                         → PSP_ERR_PEER_NO_CERT
 *   (b) an unknown self-signed Ed25519 certificate    → PSP_ERR_PEER_UNKNOWN
 *   (c) a wrong pin: the right client certificate, but the server is not who the client pinned:
 *       s_client `-verify_return_error -CAfile other.crt` aborts the handshake (the server logs
 *       PSP_ERR_TLS_HANDSHAKE), and our own connectPsp refuses with PSP_ERR_PEER_PIN before it
 *       writes a byte (the server then logs a broken handshake, or its link decoded nothing)
 *   (d) TLS 1.2 only (with the right certificate)      → PSP_ERR_TLS_HANDSHAKE
 *
 * "Before any application data": s_client always sends a line on stdin; the server never creates
 * a PSP link for the connection (the Totebox's link set and the aggregator's console-link gauge
 * are watched as they change), so no byte of it reached the frame decoder; the refusal is in the
 * server's log (pino into memory) with its code and counted; and s_client printed no
 * application byte (its stdout is empty) while its stderr shows the handshake failure or the
 * connection closed under it. A control run (right certificate, right CA file) shows that the
 * same line does reach the PSP layer once a peer is accepted, so the absence above means
 * something.
 *
 * Every s_client runs under a 10 s kill timer and must end on its own well before it.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { OrchestrationServer } from "@os-orchestration/orchestration";
import { connectPsp, type Identity, loadIdentity, type PspLink } from "@os-orchestration/psp";
import type { ToteboxServer } from "@os-orchestration/totebox";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import {
  buildEstate,
  consoleHomeOf,
  type Estate,
  fleetYaml,
  type RunningTotebox,
  startToteboxesInProcess,
} from "./estate.ts";

const OPENSSL = "/usr/bin/openssl";
const KILL_AFTER_MS = 10_000;
/** What s_client sends as soon as it can: 10 bytes, enough for a frame header if it got that far. */
const LINE = "hello psp\n";
/** How s_client reports a server that closed the connection without a word after the handshake. */
const CLOSED_UNDER_IT = /unexpected eof while reading|CONNECTION CLOSED BY SERVER/;

interface LogLine {
  readonly msg: string;
  readonly code?: string;
  readonly reason?: string;
  readonly fingerprint?: string;
  readonly peer?: string;
}

/** A pino logger writing into memory, so tests read what the server logged. */
function memoryLogger(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString("utf8").split("\n")) if (l) lines.push(JSON.parse(l) as LogLine);
      done();
    },
  });
  return { logger: pino({ level: "info" }, stream), lines };
}

interface SClientRun {
  readonly stdout: string;
  readonly stderr: string;
  readonly exitCode: number | null;
  /** True if our timer had to kill it (it would have hung). */
  readonly killed: boolean;
}

const running = new Set<ChildProcess>();

function sClient(port: number, args: readonly string[]): Promise<SClientRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(OPENSSL, ["s_client", "-connect", `127.0.0.1:${port}`, "-brief", ...args], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    running.add(child);
    let stdout = "";
    let stderr = "";
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      child.kill("SIGKILL");
    }, KILL_AFTER_MS);
    child.stdout!.setEncoding("utf8").on("data", (s: string) => {
      stdout += s;
    });
    child.stderr!.setEncoding("utf8").on("data", (s: string) => {
      stderr += s;
    });
    child.stdin!.on("error", () => {}); // EPIPE once s_client is gone
    child.on("error", reject);
    child.on("close", (exitCode) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ stdout, stderr, exitCode, killed });
    });
    // Kept open: s_client must end because the server (or the handshake) ended it, not stdin.
    child.stdin!.write(LINE);
  });
}

/** Polls a condition set by socket callbacks, with a deadline (never a fixed sleep). */
async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise<void>((r) => setImmediate(r));
  }
}

/** Counts the aggregator's console links as they open: each time its gauge rises. */
function watchConsoleLinks(server: OrchestrationServer): void {
  const gauge = server.metrics.consoleLinks;
  const set = gauge.set.bind(gauge) as (value: number) => void;
  let last = 0;
  (gauge as unknown as { set: (value: number) => void }).set = (value: number) => {
    if (value > last) consoleLinksOpened.count += value - last;
    last = value;
    set(value);
  };
}

/** Records every link a PSP server adds to its live set (the Totebox's `links`). */
function watchLinks(set: ReadonlySet<PspLink>): PspLink[] {
  const created: PspLink[] = [];
  const s = set as Set<PspLink>;
  const add = s.add.bind(s);
  s.add = (l: PspLink) => {
    created.push(l);
    return add(l);
  };
  return created;
}

let root: string;
let estate: Estate;
let totebox: RunningTotebox & { server: ToteboxServer };
let aggregator: OrchestrationServer;
const toteboxLog = memoryLogger();
const aggregatorLog = memoryLogger();
let toteboxLinks: PspLink[];
/** Console links the aggregator opened so far (each rise of its orch_console_links gauge). */
const consoleLinksOpened = { count: 0 };
/** PEM files for s_client. */
const files = {
  strangerCrt: "",
  strangerKey: "",
  otherCrt: "",
  otherFingerprint: "",
  strangerFingerprint: "",
};

function openssl(args: readonly string[]): void {
  execFileSync(OPENSSL, args, { stdio: ["ignore", "ignore", "pipe"], timeout: KILL_AFTER_MS });
}

/** An Ed25519 key and self-signed certificate made by OpenSSL itself (nobody paired it). */
function selfSigned(name: string): { crt: string; key: string; fingerprint: string } {
  const key = join(root, `${name}.key`);
  const crt = join(root, `${name}.crt`);
  openssl(["genpkey", "-algorithm", "ed25519", "-out", key]);
  openssl(["req", "-x509", "-key", key, "-out", crt, "-subj", `/CN=${name}`, "-days", "1"]);
  const fingerprint = new X509Certificate(readFileSync(crt)).fingerprint256.replaceAll(":", "").toLowerCase();
  return { crt, key, fingerprint };
}

interface Target {
  readonly name: string;
  port(): number;
  /** The certificate the server presents (the right CA file for a pinning client). */
  serverCrt(): string;
  /** A client certificate this server accepts, and its identity. */
  client(): { crt: string; key: string; identity: Identity };
  refusals(): LogLine[];
  /** PSP links the server has created for peers so far. */
  links(): number;
  /** PSP links open now. */
  open(): number;
  /** The server's own refusal counter. */
  refusedCount(code: string): Promise<number>;
}

const identityFiles = (dir: string) => ({ crt: join(dir, "identity.crt"), key: join(dir, "identity.key") });
let aggregatorIdentityDir: string;
let operatorIdentityDir: string;
let operator: Identity;

const TARGETS: readonly Target[] = [
  {
    name: "a ToteboxServer",
    port: () => totebox.port,
    serverCrt: () => identityFiles(join(estate.toteboxDir(totebox.id), "identity")).crt,
    // The aggregator is paired with every Totebox of the estate.
    client: () => ({ ...identityFiles(aggregatorIdentityDir), identity: estate.aggregator }),
    refusals: () => toteboxLog.lines.filter((l) => l.msg === "connection refused"),
    links: () => toteboxLinks.length,
    open: () => totebox.server.links.size,
    refusedCount: async () => totebox.server.stats.refusedConnections,
  },
  {
    name: "the aggregator's console listener",
    port: () => aggregator.address.port,
    serverCrt: () => identityFiles(join(root, "aggregator", "identity")).crt,
    // A registered operator key (alice, tenant atlas).
    client: () => ({ ...identityFiles(operatorIdentityDir), identity: operator }),
    refusals: () => aggregatorLog.lines.filter((l) => l.msg === "console refused"),
    links: () => consoleLinksOpened.count,
    open: () => aggregator.consoleLinks,
    refusedCount: async (code) => {
      const m = await aggregator.metrics.refusals.get();
      return m.values.filter((v) => v.labels.code === code).reduce((s, v) => s + v.value, 0);
    },
  },
];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "os-orch-tls-"));
  estate = await buildEstate({ root, count: 3 });
  const first = estate.entities[0]!.id;
  const started = await startToteboxesInProcess(estate, toteboxLog.logger, [first]);
  totebox = started.get(first)!;
  toteboxLinks = watchLinks(totebox.server.links);
  aggregatorIdentityDir = join(root, "aggregator", "identity");
  operatorIdentityDir = join(consoleHomeOf(root, "atlas"), "identity");
  operator = estate.operators.get("atlas")!;

  // Every Totebox suspended: the aggregator makes no link of its own, so the Totebox's links are
  // only ever the ones these tests open.
  const addresses = new Map<string, { host: string; port: number; fingerprint: string }>();
  for (const e of estate.entities) {
    const id = await loadIdentity(join(estate.toteboxDir(e.id), "identity"));
    addresses.set(e.id, { host: totebox.host, port: totebox.port, fingerprint: id.fingerprint });
  }
  const fleet = parse(fleetYaml(estate, addresses)) as { toteboxes: { state: string }[] };
  for (const t of fleet.toteboxes) t.state = "suspended";
  const configPath = join(root, "fleet.yaml");
  writeFileSync(configPath, stringify(fleet), { mode: 0o600 });
  aggregator = await OrchestrationServer.start({
    configPath,
    identity: estate.aggregator,
    logger: aggregatorLog.logger,
    http: false,
    configPollMs: 60_000,
  });
  watchConsoleLinks(aggregator);

  const stranger = selfSigned("stranger");
  const other = selfSigned("other");
  files.strangerCrt = stranger.crt;
  files.strangerKey = stranger.key;
  files.strangerFingerprint = stranger.fingerprint;
  files.otherCrt = other.crt;
  files.otherFingerprint = other.fingerprint;
}, 120_000);

afterAll(async () => {
  for (const c of running) c.kill("SIGKILL");
  await aggregator?.close();
  await totebox?.stop();
  rmSync(root, { recursive: true, force: true });
});

describe.each(TARGETS)("openssl s_client against $name", (t) => {
  /** Runs s_client and checks the server refused it, with `code`, before any application byte. */
  async function expectRefused(
    args: readonly string[],
    code: string,
  ): Promise<{ run: SClientRun; log: LogLine }> {
    const refusalsBefore = t.refusals().length;
    const countBefore = await t.refusedCount(code);
    const linksBefore = t.links();
    const run = await sClient(t.port(), args);
    expect(run.killed).toBe(false);
    expect(run.exitCode).not.toBe(0);
    expect(run.stdout).toBe(""); // not one application byte came back
    // The refusal is logged before the socket is destroyed; after a client-side abort (an alert)
    // the server may still be reading it when s_client exits.
    await until(() => t.refusals().length > refusalsBefore, "the refusal log line");
    const logged = t.refusals().slice(refusalsBefore);
    expect(logged).toHaveLength(1);
    expect(logged[0]!.code).toBe(code);
    expect(await t.refusedCount(code)).toBe(countBefore + 1);
    expect(t.links()).toBe(linksBefore); // no PSP link: no frame was ever decoded
    return { run, log: logged[0]! };
  }

  it("control: the right certificate and CA file get a PSP link, and the line reaches the frame decoder", async () => {
    const c = t.client();
    const refusalsBefore = t.refusals().length;
    const linksBefore = t.links();
    const toteboxLinksBefore = toteboxLinks.length;
    const run = await sClient(t.port(), [
      "-cert",
      c.crt,
      "-key",
      c.key,
      "-CAfile",
      t.serverCrt(),
      "-verify_return_error",
    ]);
    expect(run.killed).toBe(false);
    expect(run.stderr).toContain("Verification: OK");
    expect(run.stderr).toContain("Protocol version: TLSv1.3");
    expect(run.stdout).toBe("");
    expect(t.refusals().length).toBe(refusalsBefore);
    expect(t.links()).toBe(linksBefore + 1);
    // The ten bytes were read as a frame header (version byte 'o'): malformed, link closed.
    await until(() => t.open() === 0, "the control link to close");
    for (const link of toteboxLinks.slice(toteboxLinksBefore)) {
      expect(link.stats.bytesIn).toBe(LINE.length);
      expect(link.closeError?.code).toBe("PSP_ERR_FRAME_MALFORMED");
    }
  });

  it("(a) no client certificate → PSP_ERR_PEER_NO_CERT", async () => {
    const { run } = await expectRefused([], "PSP_ERR_PEER_NO_CERT");
    // TLS 1.3: the client finishes its side first; the server then closes without reading.
    expect(run.stderr).toContain("CONNECTION ESTABLISHED");
    expect(run.stderr).toMatch(CLOSED_UNDER_IT);
  });

  it("(b) an unknown self-signed Ed25519 certificate → PSP_ERR_PEER_UNKNOWN", async () => {
    const { run, log } = await expectRefused(
      ["-cert", files.strangerCrt, "-key", files.strangerKey],
      "PSP_ERR_PEER_UNKNOWN",
    );
    // The refusal names the stranger by its certificate fingerprint (never key material).
    expect(log.fingerprint ?? log.peer).toBe(files.strangerFingerprint);
    expect(run.stderr).toContain("CONNECTION ESTABLISHED");
    expect(run.stderr).toMatch(CLOSED_UNDER_IT);
  });

  it("(c) a wrong pin: s_client pinned to another certificate aborts the handshake", async () => {
    const c = t.client();
    const { run, log } = await expectRefused(
      ["-cert", c.crt, "-key", c.key, "-CAfile", files.otherCrt, "-verify_return_error"],
      "PSP_ERR_TLS_HANDSHAKE",
    );
    expect(run.stderr).toMatch(/certificate verify failed/);
    expect(run.stderr).not.toContain("CONNECTION ESTABLISHED");
    expect(log.reason).toMatch(/UNKNOWN_CA/);
  });

  it("(c) a wrong pin, from our side: connectPsp expecting another fingerprint → PSP_ERR_PEER_PIN", async () => {
    const c = t.client();
    const seen: string[] = [];
    const refusalsBefore = t.refusals().length;
    const linksBefore = t.links();
    const toteboxLinksBefore = toteboxLinks.length;
    await expect(
      connectPsp({
        identity: c.identity,
        role: "commander",
        host: "127.0.0.1",
        port: t.port(),
        expect: files.otherFingerprint,
        onRefused: (e) => seen.push(e.code),
      }),
    ).rejects.toMatchObject({ code: "PSP_ERR_PEER_PIN" });
    expect(seen).toEqual(["PSP_ERR_PEER_PIN"]);
    // Our client drops the connection the moment the pin fails, so the server either never
    // finishes its side (our Finished was still unsent, or a reset overtook it: it logs a
    // handshake failure) or opens a link that is closed before it decodes a byte. Either way
    // nothing beyond the handshake was read. Wait for whichever happened.
    await until(
      () => t.refusals().length > refusalsBefore || (t.links() > linksBefore && t.open() === 0),
      "the server to finish with the connection",
    );
    for (const r of t.refusals().slice(refusalsBefore)) expect(r.code).toBe("PSP_ERR_TLS_HANDSHAKE");
    expect(t.links() - linksBefore).toBeLessThanOrEqual(1);
    for (const link of toteboxLinks.slice(toteboxLinksBefore)) {
      expect(link.stats.bytesIn).toBe(0);
      expect(link.stats.framesIn).toBe(0);
    }
  });

  it("(d) TLS 1.2 only (even with the right certificate) → PSP_ERR_TLS_HANDSHAKE", async () => {
    const c = t.client();
    const { run, log } = await expectRefused(
      ["-tls1_2", "-cert", c.crt, "-key", c.key],
      "PSP_ERR_TLS_HANDSHAKE",
    );
    expect(run.stderr).toMatch(/alert protocol version/);
    expect(run.stderr).not.toContain("CONNECTION ESTABLISHED");
    expect(log.reason).toMatch(/UNSUPPORTED_PROTOCOL/);
  });
});
