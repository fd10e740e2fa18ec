import type { KeyObject } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import {
  decodeUnverified,
  type Identity,
  loadIdentity,
  loadOrCreateIdentity,
  normalizeFingerprint,
  publicKeyFromRaw,
} from "@os-orchestration/psp";
import { ConsoleError } from "./errors.ts";

/**
 * The console's home folder: the operator's identity (its private key never leaves this machine),
 * the pinned aggregator, the Toteboxes whose keys the console knows (for receipts), the last audit
 * checkpoint of each Totebox, and the current session grant. Files are 0600 in a 0700 folder.
 *
 *   identity/            operator key + certificate (psp identity layout)
 *   console.json         { operator, aggregator, toteboxes }
 *   grant.cose           the current grant (COSE_Sign1 bytes)
 *   checkpoints/<id>.json
 */
export interface ConsoleConfig {
  operator: { id: string; tenant: string; role: string } | null;
  aggregator: { host: string; port: number; fingerprint: string } | null;
  /** Totebox id → its certificate fingerprint and raw Ed25519 public key (hex). */
  toteboxes: Record<string, { fingerprint: string; publicKey: string }>;
}

const ID_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const HEX64 = /^[0-9a-f]{64}$/;

export function defaultHome(): string {
  return process.env.OS_CONSOLE_HOME ?? join(homedir(), ".os-console");
}

export class ConsoleHome {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  get identityDir(): string {
    return join(this.dir, "identity");
  }

  async createIdentity(): Promise<Identity> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    chmodSync(this.dir, 0o700);
    return loadOrCreateIdentity(this.identityDir, "os-console operator");
  }

  async identity(): Promise<Identity> {
    if (!existsSync(this.identityDir)) {
      throw new ConsoleError("CONSOLE_ERR_KEYS", `no operator key in ${this.dir}: run os-console keys init`);
    }
    try {
      return await loadIdentity(this.identityDir);
    } catch (e) {
      throw new ConsoleError("CONSOLE_ERR_KEYS", `operator key cannot be used: ${(e as Error).message}`);
    }
  }

  config(): ConsoleConfig {
    const p = join(this.dir, "console.json");
    if (!existsSync(p)) return { operator: null, aggregator: null, toteboxes: {} };
    let raw: unknown;
    try {
      raw = JSON.parse(readFileSync(p, "utf8"));
    } catch {
      throw new ConsoleError("CONSOLE_ERR_CONFIG", `${p} is not valid JSON`);
    }
    return validateConfig(raw, p);
  }

  saveConfig(c: ConsoleConfig): void {
    this.#write("console.json", `${JSON.stringify(c, null, 2)}\n`);
  }

  update(fn: (c: ConsoleConfig) => void): ConsoleConfig {
    const c = this.config();
    fn(c);
    this.saveConfig(c);
    return c;
  }

  /** Public keys of the Toteboxes this console knows, for verifying receipts. */
  toteboxKeys(): Map<string, KeyObject> {
    const out = new Map<string, KeyObject>();
    for (const [id, t] of Object.entries(this.config().toteboxes)) {
      out.set(id, publicKeyFromRaw(Buffer.from(t.publicKey, "hex")));
    }
    return out;
  }

  grant(): Uint8Array | null {
    const p = join(this.dir, "grant.cose");
    return existsSync(p) ? new Uint8Array(readFileSync(p)) : null;
  }

  saveGrant(grant: Uint8Array): void {
    this.#write("grant.cose", grant);
  }

  /** The stored grant if it is still valid for at least `marginMs`, else null. */
  liveGrant(nowMs: number, marginMs = 30_000): Uint8Array | null {
    const g = this.grant();
    if (!g) return null;
    try {
      const c = decodeUnverified(g).claims;
      return c.kind === "grant" && c.exp * 1000 > nowMs + marginMs ? g : null;
    } catch {
      return null;
    }
  }

  checkpoint(totebox: string): { treeSize: number; rootHash: string; time: number } | null {
    if (!ID_RE.test(totebox)) throw new ConsoleError("CONSOLE_ERR_USAGE", "bad Totebox id");
    const p = join(this.dir, "checkpoints", `${totebox}.json`);
    if (!existsSync(p)) return null;
    const v = JSON.parse(readFileSync(p, "utf8")) as {
      treeSize?: unknown;
      rootHash?: unknown;
      time?: unknown;
    };
    if (!Number.isSafeInteger(v.treeSize) || typeof v.rootHash !== "string" || !HEX64.test(v.rootHash)) {
      throw new ConsoleError("CONSOLE_ERR_CONFIG", `stored checkpoint of ${totebox} is damaged`);
    }
    return { treeSize: v.treeSize as number, rootHash: v.rootHash, time: Number(v.time) };
  }

  saveCheckpoint(totebox: string, c: { treeSize: number; rootHash: string; time: number }): void {
    if (!ID_RE.test(totebox)) throw new ConsoleError("CONSOLE_ERR_USAGE", "bad Totebox id");
    mkdirSync(join(this.dir, "checkpoints"), { recursive: true, mode: 0o700 });
    this.#write(join("checkpoints", `${totebox}.json`), `${JSON.stringify(c)}\n`);
  }

  /** Atomic write, 0600. */
  #write(rel: string, data: string | Uint8Array): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const p = join(this.dir, rel);
    const tmp = `${p}.tmp-${process.pid}`;
    writeFileSync(tmp, data, { mode: 0o600 });
    renameSync(tmp, p);
  }
}

function validateConfig(raw: unknown, where: string): ConsoleConfig {
  const bad = (what: string) => new ConsoleError("CONSOLE_ERR_CONFIG", `${where}: ${what}`);
  if (typeof raw !== "object" || raw === null) throw bad("not an object");
  const r = raw as Record<string, unknown>;
  const out: ConsoleConfig = { operator: null, aggregator: null, toteboxes: {} };
  if (r.operator !== null && r.operator !== undefined) {
    const o = r.operator as Record<string, unknown>;
    if (typeof o.id !== "string" || typeof o.tenant !== "string" || typeof o.role !== "string")
      throw bad("bad operator");
    out.operator = { id: o.id, tenant: o.tenant, role: o.role };
  }
  if (r.aggregator !== null && r.aggregator !== undefined) {
    const a = r.aggregator as Record<string, unknown>;
    if (typeof a.host !== "string" || !Number.isInteger(a.port) || typeof a.fingerprint !== "string") {
      throw bad("bad aggregator");
    }
    out.aggregator = {
      host: a.host,
      port: a.port as number,
      fingerprint: normalizeFingerprint(a.fingerprint),
    };
  }
  if (r.toteboxes !== undefined) {
    if (typeof r.toteboxes !== "object" || r.toteboxes === null) throw bad("bad toteboxes");
    for (const [id, t] of Object.entries(r.toteboxes as Record<string, unknown>)) {
      const v = t as Record<string, unknown>;
      if (
        !ID_RE.test(id) ||
        typeof v.publicKey !== "string" ||
        !HEX64.test(v.publicKey) ||
        typeof v.fingerprint !== "string"
      ) {
        throw bad(`bad Totebox entry ${id.slice(0, 64)}`);
      }
      out.toteboxes[id] = { fingerprint: normalizeFingerprint(v.fingerprint), publicKey: v.publicKey };
    }
  }
  return out;
}
