import type { KeyObject } from "node:crypto";
import { keyIdOfPublicKey, publicKeyFromRaw, rawEd25519PublicKey } from "@os-orchestration/psp";
import { ToteboxError } from "./errors.ts";
import type { Db } from "./schema.ts";

export type PeerKind = "aggregator" | "operator";

export interface PeerRecord {
  /** Aggregators: certificate fingerprint. Operators: key id. */
  readonly id: string;
  readonly kind: PeerKind;
  readonly label: string;
  readonly fingerprint: string | null;
  readonly keyId: string;
  readonly publicKey: KeyObject;
  /** Operators: tenants it may act for ([] = any tenant the aggregator's grant names). */
  readonly tenants: readonly string[];
  readonly roles: readonly string[];
  readonly pairedAt: number;
  readonly revokedAt: number | null;
}

interface PeerRow {
  id: string;
  kind: PeerKind;
  label: string;
  fingerprint: string | null;
  key_id: string;
  public_key: Buffer;
  tenants: string;
  roles: string;
  paired_at: number;
  revoked_at: number | null;
}

function toRecord(r: PeerRow): PeerRecord {
  return {
    id: r.id,
    kind: r.kind,
    label: r.label,
    fingerprint: r.fingerprint,
    keyId: r.key_id,
    publicKey: publicKeyFromRaw(r.public_key),
    tenants: JSON.parse(r.tenants) as string[],
    roles: JSON.parse(r.roles) as string[],
    pairedAt: r.paired_at,
    revokedAt: r.revoked_at,
  };
}

export interface TrustInput {
  kind: PeerKind;
  label: string;
  publicKey: KeyObject;
  /** Required for aggregators (what their TLS certificate is pinned by). */
  fingerprint?: string;
  tenants?: readonly string[];
  roles?: readonly string[];
  now: number;
}

/** Records (or re-activates) trust in a peer. */
export function trustPeer(db: Db, input: TrustInput): PeerRecord {
  const keyId = keyIdOfPublicKey(input.publicKey);
  if (input.kind === "aggregator" && !input.fingerprint) {
    throw new ToteboxError("TOTEBOX_ERR_PEER", "an aggregator is trusted by its certificate fingerprint");
  }
  const id = input.kind === "aggregator" ? input.fingerprint! : keyId;
  db.prepare(
    `INSERT INTO peers (id, kind, label, fingerprint, key_id, public_key, tenants, roles, paired_at, revoked_at)
     VALUES (@id, @kind, @label, @fingerprint, @keyId, @publicKey, @tenants, @roles, @now, NULL)
     ON CONFLICT(id) DO UPDATE SET label = excluded.label, tenants = excluded.tenants, roles = excluded.roles,
       fingerprint = COALESCE(excluded.fingerprint, peers.fingerprint), paired_at = excluded.paired_at, revoked_at = NULL`,
  ).run({
    id,
    kind: input.kind,
    label: input.label,
    fingerprint: input.fingerprint ?? null,
    keyId,
    publicKey: rawEd25519PublicKey(input.publicKey),
    tenants: JSON.stringify(input.tenants ?? []),
    roles: JSON.stringify(input.roles ?? []),
    now: input.now,
  });
  return getPeer(db, id)!;
}

export function getPeer(db: Db, id: string): PeerRecord | undefined {
  const row = db.prepare<[string], PeerRow>("SELECT * FROM peers WHERE id = ?").get(id);
  return row ? toRecord(row) : undefined;
}

export function listPeers(db: Db): PeerRecord[] {
  return db.prepare<[], PeerRow>("SELECT * FROM peers ORDER BY kind, label").all().map(toRecord);
}

/** Revokes a peer by id, fingerprint, key id or label. Returns the revoked record. */
export function revokePeer(db: Db, ref: string, now: number): PeerRecord {
  const row = db
    .prepare<[string, string, string, string], PeerRow>(
      "SELECT * FROM peers WHERE id = ? OR fingerprint = ? OR key_id = ? OR label = ? ORDER BY paired_at DESC",
    )
    .all(ref, ref, ref, ref);
  if (row.length === 0) throw new ToteboxError("TOTEBOX_ERR_PEER", "no such paired peer", { ref });
  if (row.length > 1) throw new ToteboxError("TOTEBOX_ERR_PEER", "several peers match; use the id", { ref });
  db.prepare("UPDATE peers SET revoked_at = ? WHERE id = ?").run(now, row[0]!.id);
  return getPeer(db, row[0]!.id)!;
}

/**
 * An in-memory view of the peers table that refreshes itself when another connection (the CLI
 * running `revoke`, `trust` or `pair`) commits: `PRAGMA data_version` changes on every commit by
 * another connection, and reading it costs no I/O.
 */
export class PeerRegistry {
  readonly #db: Db;
  #version = -1;
  #byId = new Map<string, PeerRecord>();
  #byKeyId = new Map<string, PeerRecord>();
  readonly #onRevoked: (peer: PeerRecord) => void;

  constructor(db: Db, onRevoked: (peer: PeerRecord) => void) {
    this.#db = db;
    this.#onRevoked = onRevoked;
    this.refresh(true);
  }

  /** Re-reads the table if anything was committed since the last look. Returns true if it did. */
  refresh(force = false): boolean {
    const v = Number(this.#db.pragma("data_version", { simple: true }));
    if (!force && v === this.#version) return false;
    this.#version = v;
    const before = this.#byId;
    const byId = new Map<string, PeerRecord>();
    const byKeyId = new Map<string, PeerRecord>();
    for (const p of listPeers(this.#db)) {
      if (p.revokedAt !== null) continue;
      byId.set(p.id, p);
      byKeyId.set(`${p.kind}:${p.keyId}`, p);
    }
    this.#byId = byId;
    this.#byKeyId = byKeyId;
    for (const [id, p] of before) if (!byId.has(id)) this.#onRevoked(p);
    return true;
  }

  /** Marks our own writes as seen and applies them. */
  afterLocalWrite(): void {
    this.refresh(true);
  }

  aggregator(fingerprint: string): PeerRecord | undefined {
    const p = this.#byId.get(fingerprint);
    return p?.kind === "aggregator" ? p : undefined;
  }

  operator(keyId: string): PeerRecord | undefined {
    return this.#byKeyId.get(`operator:${keyId}`);
  }

  get active(): readonly PeerRecord[] {
    return [...this.#byId.values()];
  }
}
