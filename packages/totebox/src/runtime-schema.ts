import type { Db } from "./schema.ts";

/**
 * Tables the running Totebox keeps beside the entity's records: who is paired, pending pairing
 * offers, and small settings such as the lifecycle state. They are not records of the entity and
 * are never reachable through a view (views run on their own read-only connection, and the
 * default policy never names them).
 *
 * - peers: an aggregator is trusted by certificate fingerprint; an operator by its Ed25519 key
 *   (key id = SHA-256 of the raw key). Rows are never deleted: revoking sets `revoked_at`, so the
 *   history of who was trusted stays (and every change is in the audit log too).
 * - pairing_offers: a one-time code the owner printed with `os-totebox pair`, valid until
 *   `expires_at` (ms), used at most once; a wrong proof burns it (`used_at` set, `outcome`).
 * - settings: key/value, e.g. state = active | suspended.
 */
export function ensureRuntimeSchema(db: Db): void {
  db.exec(`
CREATE TABLE IF NOT EXISTS peers (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('aggregator', 'operator')),
  label TEXT NOT NULL,
  fingerprint TEXT,
  key_id TEXT NOT NULL,
  public_key BLOB NOT NULL CHECK (length(public_key) = 32),
  tenants TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tenants)),
  roles TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(roles)),
  paired_at INTEGER NOT NULL,
  revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS peers_key ON peers(key_id);
CREATE TABLE IF NOT EXISTS pairing_offers (
  code TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('aggregator', 'operator')),
  label TEXT NOT NULL,
  tenants TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tenants)),
  roles TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(roles)),
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  used_at INTEGER,
  outcome TEXT
);
CREATE TABLE IF NOT EXISTS settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
INSERT OR IGNORE INTO settings (key, value) VALUES ('state', 'active');
`);
}

export type LifecycleState = "active" | "suspended";

export function readState(db: Db): LifecycleState {
  const row = db.prepare<[], { value: string }>("SELECT value FROM settings WHERE key = 'state'").get();
  return row?.value === "suspended" ? "suspended" : "active";
}

export function writeState(db: Db, state: LifecycleState): void {
  db.prepare(
    "INSERT INTO settings (key, value) VALUES ('state', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
  ).run(state);
}
