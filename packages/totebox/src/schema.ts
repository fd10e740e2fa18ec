/**
 * The archive database: opening, pragmas and migrations, plus the enumerations the schema checks.
 *
 * One Totebox = one entity = one SQLite file. The journal (journal_tx + journal_lines) is the
 * record of truth: append-only (triggers refuse UPDATE and DELETE, so a correction is a new entry)
 * and hash-chained (see ledger.ts for the canonical encoding). Everything else is either master
 * data that owners legitimately edit (units, leases, names) or derived (journal_daily_totals,
 * maintained by a trigger so views over 1,000,000 lines answer in milliseconds; verifyChain
 * recomputes it from the journal, so tampering with it is detected too).
 *
 * Migrations are keyed by `PRAGMA user_version`: MIGRATIONS[i] takes the file from version i to
 * i + 1, each in its own transaction together with the version bump, so a crash mid-migration
 * leaves the previous version intact. A file newer than this build is refused, never "fixed".
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { ToteboxError, type ToteboxErrorCode } from "./errors.ts";

export type Db = Database.Database;

export const ENTITY_KINDS = ["property", "company", "project", "fund", "household"] as const;
export type EntityKind = (typeof ENTITY_KINDS)[number];

export const ACCOUNT_CLASSES = ["asset", "liability", "equity", "income", "expense"] as const;
export type AccountClass = (typeof ACCOUNT_CLASSES)[number];

/**
 * Account subtypes the default views rely on: `cash` (position.cash), `debt` (position.debt),
 * `intercompany` (the intercompany view). The others exist so owners can classify honestly.
 */
export const ACCOUNT_SUBTYPES = [
  "cash",
  "receivable",
  "inventory",
  "prepaid",
  "investment",
  "fixed_asset",
  "intercompany",
  "payable",
  "accrued",
  "debt",
  "tax",
  "deferred_revenue",
  "capital",
  "retained_earnings",
  "distribution",
  "revenue",
  "rent",
  "interest",
  "gain",
  "cogs",
  "operating",
  "payroll",
  "depreciation",
  "other",
] as const;
export type AccountSubtype = (typeof ACCOUNT_SUBTYPES)[number];

/** `entity` counterparties carry `entity_ref`: the id of another Totebox's entity (intercompany). */
export const COUNTERPARTY_KINDS = [
  "entity",
  "tenant",
  "customer",
  "vendor",
  "lender",
  "investor",
  "employee",
  "other",
] as const;
export type CounterpartyKind = (typeof COUNTERPARTY_KINDS)[number];

export const PROPERTY_TYPES = ["residential", "office", "retail", "industrial", "mixed"] as const;
export type PropertyType = (typeof PROPERTY_TYPES)[number];

/** 64 hex zeros: the prev_hash of the first journal entry (genesis). */
export const GENESIS_HASH = "0".repeat(64);

const sqlList = (values: readonly string[]): string => values.map((v) => `'${v}'`).join(", ");

/** A TEXT column holding a real calendar date YYYY-MM-DD (date() normalises 2023-02-30 away). */
const isDateSql = (col: string): string =>
  `(${col} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]' AND date(${col}) IS ${col})`;

const appendOnly = (table: string): string => `
CREATE TRIGGER ${table}_no_update BEFORE UPDATE ON ${table}
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: ${table} is append-only; record a correcting entry'); END;
CREATE TRIGGER ${table}_no_delete BEFORE DELETE ON ${table}
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: ${table} is append-only; record a correcting entry'); END;
`;

const noDelete = (table: string, why: string): string => `
CREATE TRIGGER ${table}_no_delete BEFORE DELETE ON ${table}
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: ${why}'); END;
`;

const V1 = `
-- The entity this archive belongs to: exactly one row (singleton = 1).
CREATE TABLE entity (
  singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
  id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 128),
  kind TEXT NOT NULL CHECK (kind IN (${sqlList(ENTITY_KINDS)})),
  name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  currency TEXT NOT NULL CHECK (currency GLOB '[A-Z][A-Z][A-Z]'),
  tags TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(tags) AND json_type(tags) = 'object'),
  created TEXT NOT NULL
);
${noDelete("entity", "the entity row cannot be deleted")}
-- Identity and currency give every amount in the journal its meaning: they never change.
CREATE TRIGGER entity_fixed BEFORE UPDATE ON entity
WHEN NEW.id IS NOT OLD.id OR NEW.kind IS NOT OLD.kind OR NEW.currency IS NOT OLD.currency
  OR NEW.created IS NOT OLD.created OR NEW.singleton IS NOT OLD.singleton
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_ENTITY: entity id, kind, currency and creation date are fixed'); END;

-- Chart of accounts. class and subtype decide how the default views read an account.
CREATE TABLE accounts (
  code TEXT PRIMARY KEY CHECK (length(code) BETWEEN 1 AND 32),
  name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  class TEXT NOT NULL CHECK (class IN (${sqlList(ACCOUNT_CLASSES)})),
  subtype TEXT NOT NULL DEFAULT 'other' CHECK (subtype IN (${sqlList(ACCOUNT_SUBTYPES)}))
) WITHOUT ROWID;
${noDelete("accounts", "accounts cannot be deleted; the journal refers to them")}
-- Reclassifying an account would silently rewrite the meaning of its history.
CREATE TRIGGER accounts_fixed BEFORE UPDATE ON accounts
WHEN NEW.code IS NOT OLD.code OR NEW.class IS NOT OLD.class OR NEW.subtype IS NOT OLD.subtype
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: account code, class and subtype are fixed; open a new account'); END;

CREATE TABLE counterparties (
  id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
  name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  kind TEXT NOT NULL CHECK (kind IN (${sqlList(COUNTERPARTY_KINDS)})),
  entity_ref TEXT CHECK (entity_ref IS NULL OR length(entity_ref) BETWEEN 1 AND 128),
  CHECK ((kind = 'entity') = (entity_ref IS NOT NULL))
) WITHOUT ROWID;
-- One counterparty per peer entity, so a balance "with entity X" has one meaning.
CREATE UNIQUE INDEX counterparties_entity_ref ON counterparties(entity_ref) WHERE entity_ref IS NOT NULL;
${noDelete("counterparties", "counterparties cannot be deleted; the journal refers to them")}
CREATE TRIGGER counterparties_fixed BEFORE UPDATE ON counterparties
WHEN NEW.id IS NOT OLD.id OR NEW.kind IS NOT OLD.kind OR NEW.entity_ref IS NOT OLD.entity_ref
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: counterparty id, kind and entity_ref are fixed'); END;

-- Journal transaction headers. seq is the position in the hash chain (1, 2, 3, ... no gaps).
CREATE TABLE journal_tx (
  seq INTEGER PRIMARY KEY CHECK (seq >= 1),
  id TEXT NOT NULL UNIQUE CHECK (length(id) BETWEEN 1 AND 128),
  date TEXT NOT NULL CHECK ${isDateSql("date")},
  memo TEXT NOT NULL DEFAULT '',
  source TEXT NOT NULL,
  created_at TEXT NOT NULL,
  prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),
  hash TEXT NOT NULL CHECK (length(hash) = 64)
);
CREATE INDEX journal_tx_date ON journal_tx(date);
${appendOnly("journal_tx")}
-- (Lookups are written ORDER BY ... DESC LIMIT 1: an index seek. coalesce(max(x), 0) is not
-- recognised by the min/max optimisation and would scan the table on every insert.)
-- Defence in depth behind ledger.ts: a header must extend the chain at its head, and the
-- previous transaction (whose lines are complete once a new header arrives) must balance.
CREATE TRIGGER journal_tx_chain BEFORE INSERT ON journal_tx
BEGIN
  SELECT RAISE(ABORT, 'TOTEBOX_ERR_CHAIN_BROKEN: seq must be the head seq + 1')
    WHERE NEW.seq IS NOT coalesce((SELECT seq FROM journal_tx ORDER BY seq DESC LIMIT 1), 0) + 1;
  SELECT RAISE(ABORT, 'TOTEBOX_ERR_CHAIN_BROKEN: prev_hash must be the hash of the head entry')
    WHERE NEW.prev_hash IS NOT coalesce((SELECT hash FROM journal_tx WHERE seq = NEW.seq - 1), '${GENESIS_HASH}');
  SELECT RAISE(ABORT, 'TOTEBOX_ERR_UNBALANCED: the previous transaction does not balance')
    WHERE NEW.seq > 1 AND (SELECT count(*) < 2 OR total(amount) <> 0 FROM journal_lines WHERE tx_seq = NEW.seq - 1);
END;

-- Journal lines: amounts in integer minor units (cents), debit positive, credit negative.
-- Keyed by the header's seq rather than its text id: smaller rows and faster joins at 1M lines.
CREATE TABLE journal_lines (
  tx_seq INTEGER NOT NULL REFERENCES journal_tx(seq),
  line_no INTEGER NOT NULL CHECK (line_no >= 1),
  account TEXT NOT NULL REFERENCES accounts(code),
  counterparty TEXT REFERENCES counterparties(id),
  amount INTEGER NOT NULL CHECK (typeof(amount) = 'integer'),
  memo TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (tx_seq, line_no)
) WITHOUT ROWID;
-- Serves the intercompany view: only lines with a counterparty, covering account and amount.
CREATE INDEX journal_lines_counterparty ON journal_lines(counterparty, account, amount)
  WHERE counterparty IS NOT NULL;
${appendOnly("journal_lines")}
CREATE TRIGGER journal_lines_sealed BEFORE INSERT ON journal_lines
BEGIN
  SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: lines may only be added to the newest transaction')
    WHERE NEW.tx_seq IS NOT (SELECT seq FROM journal_tx ORDER BY seq DESC LIMIT 1);
  SELECT RAISE(ABORT, 'TOTEBOX_ERR_INVALID_TX: line numbers must be 1, 2, 3, ... in order')
    WHERE NEW.line_no IS NOT coalesce(
      (SELECT line_no FROM journal_lines WHERE tx_seq = NEW.tx_seq ORDER BY line_no DESC LIMIT 1), 0) + 1;
END;

-- Derived: per day and account, the sum and count of journal lines. Read by the position,
-- income-summary and archive-health views (a full scan of 1M lines costs ~500 ms; this, ~ms).
CREATE TABLE journal_daily_totals (
  date TEXT NOT NULL,
  account TEXT NOT NULL,
  amount INTEGER NOT NULL,
  lines INTEGER NOT NULL,
  PRIMARY KEY (date, account)
) WITHOUT ROWID;
${noDelete("journal_daily_totals", "journal_daily_totals is derived from the journal")}
CREATE TRIGGER journal_lines_daily AFTER INSERT ON journal_lines
BEGIN
  INSERT INTO journal_daily_totals(date, account, amount, lines)
    VALUES ((SELECT date FROM journal_tx WHERE seq = NEW.tx_seq), NEW.account, NEW.amount, 1)
    ON CONFLICT (date, account) DO UPDATE SET amount = amount + excluded.amount, lines = lines + 1;
END;

-- Real estate. Master data: owners edit it (a lease ends early), so it is not append-only;
-- the money side of a lease lives in the journal.
CREATE TABLE properties (
  id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
  name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  property_type TEXT NOT NULL CHECK (property_type IN (${sqlList(PROPERTY_TYPES)})),
  address TEXT NOT NULL DEFAULT '',
  acquired TEXT CHECK (acquired IS NULL OR ${isDateSql("acquired")})
) WITHOUT ROWID;

CREATE TABLE units (
  id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
  property_id TEXT NOT NULL REFERENCES properties(id),
  unit_type TEXT NOT NULL CHECK (length(unit_type) BETWEEN 1 AND 64),
  area_sqm REAL NOT NULL CHECK (area_sqm > 0),
  market_rent INTEGER CHECK (market_rent IS NULL OR (typeof(market_rent) = 'integer' AND market_rent >= 0))
) WITHOUT ROWID;
CREATE INDEX units_property ON units(property_id);

-- A lease: end_date NULL = open-ended; a unit has at most one lease on any day.
CREATE TABLE leases (
  id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
  unit_id TEXT NOT NULL REFERENCES units(id),
  tenant_id TEXT NOT NULL REFERENCES counterparties(id),
  start_date TEXT NOT NULL CHECK ${isDateSql("start_date")},
  end_date TEXT CHECK (end_date IS NULL OR ${isDateSql("end_date")}),
  monthly_rent INTEGER NOT NULL CHECK (typeof(monthly_rent) = 'integer' AND monthly_rent >= 0),
  CHECK (end_date IS NULL OR end_date >= start_date)
) WITHOUT ROWID;
CREATE INDEX leases_unit ON leases(unit_id, start_date);
CREATE TRIGGER leases_no_overlap BEFORE INSERT ON leases
BEGIN
  SELECT RAISE(ABORT, 'TOTEBOX_ERR_LEASE_OVERLAP: the unit already has a lease in that period')
    WHERE EXISTS (SELECT 1 FROM leases l WHERE l.unit_id = NEW.unit_id
      AND l.start_date <= coalesce(NEW.end_date, '9999-12-31')
      AND coalesce(l.end_date, '9999-12-31') >= NEW.start_date);
END;
CREATE TRIGGER leases_no_overlap_update BEFORE UPDATE OF unit_id, start_date, end_date ON leases
BEGIN
  SELECT RAISE(ABORT, 'TOTEBOX_ERR_LEASE_OVERLAP: the unit already has a lease in that period')
    WHERE EXISTS (SELECT 1 FROM leases l WHERE l.unit_id = NEW.unit_id AND l.id <> OLD.id
      AND l.start_date <= coalesce(NEW.end_date, '9999-12-31')
      AND coalesce(l.end_date, '9999-12-31') >= NEW.start_date);
END;

-- Budgets (projects): planned spend per account over a period, compared with the journal.
CREATE TABLE budgets (
  id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
  name TEXT NOT NULL,
  account TEXT NOT NULL REFERENCES accounts(code),
  amount INTEGER NOT NULL CHECK (typeof(amount) = 'integer'),
  start_date TEXT NOT NULL CHECK ${isDateSql("start_date")},
  end_date TEXT NOT NULL CHECK ${isDateSql("end_date")},
  CHECK (end_date >= start_date)
) WITHOUT ROWID;

-- Proposed journal entries (from the stage-entry command) awaiting the owner's decision.
-- entry is the JSON of a journal transaction; a decision is final and recorded once.
CREATE TABLE staged_entries (
  id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
  staged_at TEXT NOT NULL,
  proposed_by TEXT NOT NULL,
  idempotency_key TEXT,
  entry TEXT NOT NULL CHECK (json_valid(entry)),
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
  decided_at TEXT,
  decided_by TEXT,
  applied_seq INTEGER REFERENCES journal_tx(seq),
  CHECK ((status = 'pending') = (decided_at IS NULL)),
  CHECK ((status = 'approved') = (applied_seq IS NOT NULL))
) WITHOUT ROWID;
CREATE INDEX staged_entries_status ON staged_entries(status, staged_at);
${noDelete("staged_entries", "staged entries are kept; reject one instead")}
CREATE TRIGGER staged_entries_decide_once BEFORE UPDATE ON staged_entries
WHEN OLD.status <> 'pending' OR NEW.id IS NOT OLD.id OR NEW.entry IS NOT OLD.entry
  OR NEW.staged_at IS NOT OLD.staged_at OR NEW.proposed_by IS NOT OLD.proposed_by
  OR NEW.idempotency_key IS NOT OLD.idempotency_key
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: a staged entry is decided once and never edited'); END;

-- Idempotency of commands: key -> hash of the arguments and the receipt returned the first time.
CREATE TABLE command_receipts (
  idempotency_key TEXT PRIMARY KEY CHECK (length(idempotency_key) BETWEEN 1 AND 200),
  command TEXT NOT NULL,
  args_hash TEXT NOT NULL,
  receipt BLOB NOT NULL,
  created_at TEXT NOT NULL
) WITHOUT ROWID;
${appendOnly("command_receipts")}
`;

/** MIGRATIONS[i] migrates user_version i to i + 1. Append only; never edit a shipped one. */
const MIGRATIONS: readonly string[] = [V1];

export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Triggers whose absence means the write-once guarantees are off (someone dropped them on a raw
 * connection). `missingGuards` lists the absent ones, for `verify` and archive-health to report.
 */
export const APPEND_ONLY_GUARDS = [
  "journal_tx_no_update",
  "journal_tx_no_delete",
  "journal_tx_chain",
  "journal_lines_no_update",
  "journal_lines_no_delete",
  "journal_lines_sealed",
  "journal_lines_daily",
  "command_receipts_no_update",
  "command_receipts_no_delete",
] as const;

export interface OpenArchiveOptions {
  /** Open read-only (`query_only`): for view execution. Never migrates. Default false. */
  readonly?: boolean;
  /** Create the file when missing. Default true for read-write, ignored for read-only. */
  create?: boolean;
  /** How long a statement waits for another connection's write lock. Default 5000 ms. */
  busyTimeoutMs?: number;
}

export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

/**
 * Opens an archive database. Read-write connections run pending migrations; read-only ones
 * require the file at the current schema version.
 */
export function openArchiveDatabase(file: string, options: OpenArchiveOptions = {}): Db {
  const readonly = options.readonly ?? false;
  const create = !readonly && (options.create ?? true);
  if (!create && !fs.existsSync(file)) {
    throw new ToteboxError("TOTEBOX_ERR_DB_OPEN", "archive database not found", {
      file: path.basename(file),
    });
  }
  let db: Db;
  try {
    db = new Database(file, { readonly, fileMustExist: !create });
  } catch (e) {
    throw new ToteboxError(
      "TOTEBOX_ERR_DB_OPEN",
      "cannot open archive database",
      { file: path.basename(file) },
      { cause: e },
    );
  }
  try {
    db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS))}`);
    db.pragma("foreign_keys = ON");
    // With recursive triggers off, INSERT OR REPLACE deletes conflicting rows without firing
    // DELETE triggers: an append-only bypass. On, the no_delete triggers fire for REPLACE too.
    db.pragma("recursive_triggers = ON");
    if (readonly) {
      db.pragma("query_only = ON");
      const version = userVersion(db);
      if (version !== SCHEMA_VERSION) {
        throw new ToteboxError(
          "TOTEBOX_ERR_SCHEMA_VERSION",
          "archive schema version differs from this build",
          {
            found: version,
            expected: SCHEMA_VERSION,
          },
        );
      }
    } else {
      const mode = db.pragma("journal_mode = WAL", { simple: true });
      if (mode !== "wal") {
        throw new ToteboxError("TOTEBOX_ERR_DB_OPEN", "cannot switch the archive database to WAL", {
          mode: String(mode),
        });
      }
      // NORMAL in WAL mode: a power loss may drop the last commits but never corrupts the file.
      db.pragma("synchronous = NORMAL");
      migrate(db);
    }
    return db;
  } catch (e) {
    db.close();
    if (e instanceof ToteboxError) throw e;
    throw new ToteboxError(
      "TOTEBOX_ERR_DB_OPEN",
      "cannot open archive database",
      { file: path.basename(file) },
      { cause: e },
    );
  }
}

export function userVersion(db: Db): number {
  return Number(db.pragma("user_version", { simple: true }));
}

/** Applies pending migrations. Returns the versions before and after. */
export function migrate(db: Db): { from: number; to: number } {
  const from = userVersion(db);
  if (from > SCHEMA_VERSION) {
    throw new ToteboxError("TOTEBOX_ERR_SCHEMA_VERSION", "archive was written by a newer build", {
      found: from,
      supported: SCHEMA_VERSION,
    });
  }
  for (let v = from; v < SCHEMA_VERSION; v++) {
    const sql = MIGRATIONS[v]!;
    db.transaction(() => {
      db.exec(sql);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
  return { from, to: SCHEMA_VERSION };
}

export function missingGuards(db: Db): string[] {
  const present = new Set(
    db
      .prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'trigger'")
      .all()
      .map((r) => r.name),
  );
  return APPEND_ONLY_GUARDS.filter((g) => !present.has(g));
}

export interface EntityInit {
  id: string;
  kind: EntityKind;
  name: string;
  /** ISO 4217 code. Default "USD". */
  currency?: string;
  /** Labels for grouping in the aggregator (region=west, fund=II). */
  tags?: Readonly<Record<string, string>>;
  /** ISO timestamp; default now. Injected for reproducible demo archives. */
  created?: string;
}

export interface EntityRecord {
  id: string;
  kind: EntityKind;
  name: string;
  currency: string;
  tags: Record<string, string>;
  created: string;
}

/** Writes the entity row of a new archive. Refuses when the archive already has one. */
export function initEntity(db: Db, entity: EntityInit): EntityRecord {
  if (!(ENTITY_KINDS as readonly string[]).includes(entity.kind)) {
    throw new ToteboxError("TOTEBOX_ERR_ENTITY", "unknown entity kind", { kind: String(entity.kind) });
  }
  const record: EntityRecord = {
    id: entity.id,
    kind: entity.kind,
    name: entity.name,
    currency: entity.currency ?? "USD",
    tags: { ...(entity.tags ?? {}) },
    created: entity.created ?? new Date().toISOString(),
  };
  for (const [k, v] of Object.entries(record.tags)) {
    if (typeof v !== "string")
      throw new ToteboxError("TOTEBOX_ERR_ENTITY", "tag values must be strings", { tag: k });
  }
  try {
    db.prepare(
      "INSERT INTO entity (singleton, id, kind, name, currency, tags, created) VALUES (1, ?, ?, ?, ?, ?, ?)",
    ).run(record.id, record.kind, record.name, record.currency, JSON.stringify(record.tags), record.created);
  } catch (e) {
    const mapped = toToteboxError(e);
    if (mapped instanceof ToteboxError && mapped.code !== "TOTEBOX_ERR_CONSTRAINT") throw mapped;
    throw new ToteboxError(
      "TOTEBOX_ERR_ENTITY",
      readEntity(db) ? "archive already has an entity" : "invalid entity (id, name, currency)",
      { id: record.id },
      { cause: e },
    );
  }
  return record;
}

export function readEntity(db: Db): EntityRecord | undefined {
  const row = db
    .prepare<
      [],
      { id: string; kind: EntityKind; name: string; currency: string; tags: string; created: string }
    >("SELECT id, kind, name, currency, tags, created FROM entity WHERE singleton = 1")
    .get();
  if (!row) return undefined;
  const parsed: unknown = JSON.parse(row.tags);
  const tags: Record<string, string> = {};
  if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
    for (const [k, v] of Object.entries(parsed)) if (typeof v === "string") tags[k] = v;
  }
  return { ...row, tags };
}

/** The codes our triggers raise; a message naming any other code is not trusted as ours. */
const TRIGGER_CODES: ReadonlySet<string> = new Set<ToteboxErrorCode>([
  "TOTEBOX_ERR_APPEND_ONLY",
  "TOTEBOX_ERR_CHAIN_BROKEN",
  "TOTEBOX_ERR_UNBALANCED",
  "TOTEBOX_ERR_INVALID_TX",
  "TOTEBOX_ERR_ENTITY",
  "TOTEBOX_ERR_LEASE_OVERLAP",
]);
const isTriggerCode = (code: string): code is ToteboxErrorCode => TRIGGER_CODES.has(code);

const CODE_IN_MESSAGE = /^(TOTEBOX_ERR_[A-Z_]+): (.*)$/s;

/**
 * Maps a SQLite error raised by one of our triggers (message "TOTEBOX_ERR_<CODE>: why") to a
 * ToteboxError with that code; other constraint failures become TOTEBOX_ERR_CONSTRAINT.
 * Anything else is returned unchanged (I/O errors are not ours to rename).
 */
export function toToteboxError(e: unknown): unknown {
  if (e instanceof ToteboxError || !(e instanceof Error)) return e;
  const sqliteCode = (e as { code?: unknown }).code;
  if (typeof sqliteCode !== "string" || !sqliteCode.startsWith("SQLITE_CONSTRAINT")) return e;
  const m = CODE_IN_MESSAGE.exec(e.message);
  const code = m?.[1];
  if (m && code && isTriggerCode(code)) return new ToteboxError(code, m[2]!, undefined, { cause: e });
  return new ToteboxError("TOTEBOX_ERR_CONSTRAINT", e.message, { sqlite: sqliteCode }, { cause: e });
}
