/**
 * The Totebox audit log: every call and every refusal, appended to an RFC 6962 Merkle log kept in
 * the archive's SQLite database, with signed checkpoints, inclusion proofs and consistency proofs
 * (so a console holding an old checkpoint can prove the log only grew).
 *
 * Storage (tables created by `ensureAuditSchema`, all append-only by trigger):
 * - audit_entry(idx, leaf_hash, entry): leaf `idx` (0-based, contiguous), its leaf hash and the
 *   canonical entry text. Leaf data = the UTF-8 bytes of `entry`; leaf hash = SHA-256(0x00 ‖ data).
 * - audit_node(level, idx, hash): every perfect subtree completed so far, level ≥ 1 (about one
 *   node per entry). Appends are O(log n) (amortised O(1)) hashes and inserts, and a proof is
 *   O(log n) point lookups plus O(log n) hashes for the right border: no proof ever rescans leaves.
 * - audit_checkpoint: every checkpoint signed, for `os-totebox audit` to show.
 *
 * Entry encoding: canonical JSON, i.e. RFC 8785 (JCS) restricted to this value domain: an object
 * whose keys are written in sorted order, values that are strings, safe integers, booleans or null
 * (and one flat `detail` object of the same), no whitespace. For such values JSON.stringify with
 * sorted keys *is* JCS (ES number and string serialisation), so any language can recompute a leaf
 * from the fields. JSON rather than CBOR because an auditor can read it without a decoder.
 *
 * Trust boundary: entries are written by the Totebox itself, but they record what untrusted peers
 * sent, so every field is bounded and shaped (see AUDIT_LIMITS). The capability field only accepts
 * a hex `cti` of at most 64 bytes: a token's bytes can never be logged by mistake.
 *
 * Group commit (`appendQueued`): a server answers a call only once the call's entry is committed,
 * and one SQLite write transaction costs ~0.4 ms here whatever it holds. So entries queued in the
 * same event-loop turn are appended in ONE transaction, flushed after that turn's I/O callbacks
 * (setImmediate); each caller's promise resolves once the commit holding its entry is done, and
 * every entry of a failed commit rejects with its error (none of them is in the log). better-sqlite3
 * commits synchronously, so "while a commit is in progress" is the same turn: entries that arrive
 * during a commit wait in the socket buffers and form the next group.
 *
 * Checkpoint format (the signed bytes), C2SP tlog-checkpoint body plus one extension line:
 *   <origin>\n<tree size, decimal>\n<root hash, base64>\ntime <ms since epoch>\n
 */

import type Database from "better-sqlite3";
import {
  CompactRange,
  HASH_SIZE,
  hashLeaf,
  consistencyProof as merkleConsistencyProof,
  inclusionProof as merkleInclusionProof,
  type TreeReader,
  treeRoot,
} from "../../psp/src/merkle.ts";
import { ToteboxError } from "./errors.ts";

// ---------------------------------------------------------------------------------------------
// Schema

const APPEND_ONLY = (table: string) => `
CREATE TRIGGER IF NOT EXISTS ${table}_no_update BEFORE UPDATE ON ${table}
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: ${table} is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ${table}_no_delete BEFORE DELETE ON ${table}
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: ${table} is append-only'); END;
`;

const AUDIT_SCHEMA = `
CREATE TABLE IF NOT EXISTS audit_entry (
  idx INTEGER PRIMARY KEY CHECK (idx >= 0),
  leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
  entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_node (
  level INTEGER NOT NULL CHECK (level BETWEEN 1 AND 62),
  idx INTEGER NOT NULL CHECK (idx >= 0),
  hash BLOB NOT NULL CHECK (length(hash) = 32),
  PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoint (
  id INTEGER PRIMARY KEY,
  origin TEXT NOT NULL,
  tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
  root_hash BLOB NOT NULL CHECK (length(root_hash) = 32),
  time INTEGER NOT NULL,
  signature BLOB NOT NULL
);
${APPEND_ONLY("audit_entry")}
${APPEND_ONLY("audit_node")}
${APPEND_ONLY("audit_checkpoint")}
-- Leaves are contiguous: the next index only. This also stops INSERT OR REPLACE, which would
-- otherwise delete a row without firing the DELETE trigger when recursive_triggers is off.
CREATE TRIGGER IF NOT EXISTS audit_entry_next_only BEFORE INSERT ON audit_entry
WHEN NEW.idx IS NOT (SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_entry)
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: audit_entry indexes are contiguous'); END;
CREATE TRIGGER IF NOT EXISTS audit_node_once BEFORE INSERT ON audit_node
WHEN EXISTS (SELECT 1 FROM audit_node WHERE level = NEW.level AND idx = NEW.idx)
BEGIN SELECT RAISE(ABORT, 'TOTEBOX_ERR_APPEND_ONLY: audit_node is append-only'); END;
`;

/** The triggers without which the audit log is not append-only (for health checks). */
export const AUDIT_GUARDS = [
  "audit_entry_no_update",
  "audit_entry_no_delete",
  "audit_node_no_update",
  "audit_node_no_delete",
  "audit_checkpoint_no_update",
  "audit_checkpoint_no_delete",
  "audit_entry_next_only",
  "audit_node_once",
] as const;

/** Creates the audit tables and their append-only triggers if missing. Idempotent. */
export function ensureAuditSchema(db: Database.Database): void {
  db.exec(AUDIT_SCHEMA);
}

// ---------------------------------------------------------------------------------------------
// Entries

/** Bounds on an entry's fields. Documented defaults; entries beyond them are refused. */
export const AUDIT_LIMITS = Object.freeze({
  /** Longest peer id, tenant, target (view/command name) or action. */
  maxIdLength: 128,
  /** Longest capability id, in hex characters (64 bytes). */
  maxCapabilityHex: 128,
  /** Most keys in `detail`. */
  maxDetailKeys: 32,
  /** Longest string value in `detail`. */
  maxDetailString: 1024,
  /** Largest encoded entry, in bytes. */
  maxEntryBytes: 16 * 1024,
  /** Most entries returned by one `entries()` call. */
  maxEntriesPerRead: 1000,
});

export type AuditDetailValue = string | number | boolean | null;

/** One audited event. `outcome` is "ok" or the error code the caller received. */
export interface AuditEntry {
  /** When it happened, ms since the epoch. */
  readonly time: number;
  /** The peer that called: its certificate fingerprint (hex), or a local name such as "cli". */
  readonly peer: string | null;
  /** Operator key id (hex) on whose behalf the call came, when known. */
  readonly operator: string | null;
  readonly tenant: string | null;
  /** What was attempted: hello, authorize, read, command, diode, pair, unpair, revoke, ... */
  readonly action: string;
  /** The view or command name, when the action has one. */
  readonly target: string | null;
  /** The capability's id (`cti`, lowercase hex): never the token itself. */
  readonly capability: string | null;
  /** "ok" or a stable error code (PSP_ERR_…, TOTEBOX_ERR_…). */
  readonly outcome: string;
  /** Rows returned (reads), when any. */
  readonly rows: number | null;
  /** Small structured context: no secrets, no token bytes. */
  readonly detail: Readonly<Record<string, AuditDetailValue>> | null;
}

/** What `append` takes: `time` defaults to the log's clock; rows and detail to null. */
export type AuditEntryInput = Omit<AuditEntry, "time" | "rows" | "detail"> & {
  readonly time?: number;
  readonly rows?: number | null;
  readonly detail?: Readonly<Record<string, AuditDetailValue>> | null;
};

export interface AuditRecord {
  readonly index: number;
  readonly entry: AuditEntry;
  readonly leafHash: Uint8Array;
}

const ID_RE = /^[\x21-\x7e]+$/; // printable ASCII, no spaces
const HEX_RE = /^[0-9a-f]+$/;
const ACTION_RE = /^[a-z][a-z0-9_.-]*$/;
const OUTCOME_RE = /^(ok|[A-Z][A-Z0-9_]{2,63})$/;
const DETAIL_KEY_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;

function entryError(field: string, reason: string): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_AUDIT_ENTRY", `audit entry field "${field}" ${reason}`, {
    field,
    reason,
  });
}

function optionalId(value: unknown, field: string, re: RegExp, max: number): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== "string" || value.length === 0 || value.length > max || !re.test(value)) {
    throw entryError(field, `must be null or match ${re.source} (at most ${max} characters)`);
  }
  return value;
}

/** Validates and normalises an entry; the result encodes canonically. */
export function normalizeEntry(input: AuditEntryInput, now: number): AuditEntry {
  const time = input.time ?? now;
  if (!Number.isSafeInteger(time) || time < 0) throw entryError("time", "must be ms since the epoch");
  const action = optionalId(input.action, "action", ACTION_RE, 64);
  if (action === null) throw entryError("action", "is required");
  if (typeof input.outcome !== "string" || !OUTCOME_RE.test(input.outcome)) {
    throw entryError("outcome", 'must be "ok" or an error code');
  }
  const capability =
    input.capability === null || input.capability === undefined
      ? null
      : String(input.capability).toLowerCase();
  if (
    capability !== null &&
    (capability.length > AUDIT_LIMITS.maxCapabilityHex ||
      !HEX_RE.test(capability) ||
      capability.length % 2 !== 0)
  ) {
    throw entryError(
      "capability",
      `must be the capability id in hex (at most ${AUDIT_LIMITS.maxCapabilityHex} characters)`,
    );
  }
  const operator = optionalId(
    typeof input.operator === "string" ? input.operator.toLowerCase() : input.operator,
    "operator",
    HEX_RE,
    AUDIT_LIMITS.maxIdLength,
  );
  const rows = input.rows ?? null;
  if (rows !== null && (!Number.isSafeInteger(rows) || rows < 0))
    throw entryError("rows", "must be a non-negative integer");
  let detail: Record<string, AuditDetailValue> | null = null;
  if (input.detail !== null && input.detail !== undefined) {
    if (typeof input.detail !== "object" || Array.isArray(input.detail))
      throw entryError("detail", "must be a flat object");
    const keys = Object.keys(input.detail).sort();
    if (keys.length > AUDIT_LIMITS.maxDetailKeys)
      throw entryError("detail", `has more than ${AUDIT_LIMITS.maxDetailKeys} keys`);
    detail = {};
    for (const k of keys) {
      if (!DETAIL_KEY_RE.test(k)) throw entryError("detail", `has an invalid key`);
      const v = input.detail[k];
      if (typeof v === "string") {
        if (v.length > AUDIT_LIMITS.maxDetailString) throw entryError("detail", `value "${k}" is too long`);
      } else if (typeof v === "number") {
        if (!Number.isFinite(v)) throw entryError("detail", `value "${k}" is not finite`);
      } else if (typeof v !== "boolean" && v !== null) {
        throw entryError("detail", `value "${k}" must be a string, number, boolean or null`);
      }
      detail[k] = v as AuditDetailValue;
    }
  }
  return {
    time,
    peer: optionalId(input.peer, "peer", ID_RE, AUDIT_LIMITS.maxIdLength),
    operator,
    tenant: optionalId(input.tenant, "tenant", ID_RE, AUDIT_LIMITS.maxIdLength),
    action,
    target: optionalId(input.target, "target", ID_RE, AUDIT_LIMITS.maxIdLength),
    capability,
    outcome: input.outcome,
    rows,
    detail,
  };
}

/** Canonical JSON of a normalised entry (keys sorted at every level; see the file comment). */
export function encodeEntry(entry: AuditEntry): string {
  const sorted = {
    action: entry.action,
    capability: entry.capability,
    detail:
      entry.detail === null
        ? null
        : Object.fromEntries(
            Object.keys(entry.detail)
              .sort()
              .map((k) => [k, entry.detail![k]]),
          ),
    operator: entry.operator,
    outcome: entry.outcome,
    peer: entry.peer,
    rows: entry.rows,
    target: entry.target,
    tenant: entry.tenant,
    time: entry.time,
  };
  return JSON.stringify(sorted);
}

function decodeEntry(text: string, index: number): AuditEntry {
  try {
    const v = JSON.parse(text) as AuditEntry;
    return normalizeEntry(v, 0);
  } catch (e) {
    throw new ToteboxError(
      "TOTEBOX_ERR_AUDIT_CORRUPT",
      "a stored audit entry cannot be decoded",
      { index },
      { cause: e },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

export interface AuditCheckpoint {
  /** Names the log: the Totebox's identity, so a checkpoint of one log is never taken for another's. */
  readonly origin: string;
  readonly treeSize: number;
  readonly rootHash: Uint8Array;
  /** When it was signed, ms since the epoch. */
  readonly time: number;
  readonly signature: Uint8Array;
}

const ORIGIN_RE = /^[\x21-\x7e][\x20-\x7e]{0,255}$/;

function checkpointError(reason: string): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_AUDIT_CHECKPOINT", `audit checkpoint refused: ${reason}`, { reason });
}

/** The exact bytes a checkpoint's signature covers (see the file comment). */
export function checkpointBody(
  origin: string,
  treeSize: number,
  rootHash: Uint8Array,
  time: number,
): Uint8Array {
  if (typeof origin !== "string" || !ORIGIN_RE.test(origin))
    throw checkpointError("origin must be one printable ASCII line");
  if (!Number.isSafeInteger(treeSize) || treeSize < 0)
    throw checkpointError("tree size must be a non-negative integer");
  if (!(rootHash instanceof Uint8Array) || rootHash.length !== HASH_SIZE)
    throw checkpointError("root hash must be 32 bytes");
  if (!Number.isSafeInteger(time) || time < 0) throw checkpointError("time must be ms since the epoch");
  const root = Buffer.from(rootHash.buffer, rootHash.byteOffset, rootHash.byteLength).toString("base64");
  return new TextEncoder().encode(`${origin}\n${treeSize}\n${root}\ntime ${time}\n`);
}

/**
 * Checks a checkpoint's shape and signature with the injected verifier (for example Ed25519
 * against the Totebox's public key). Throws TOTEBOX_ERR_AUDIT_CHECKPOINT if either fails.
 */
export function verifyCheckpoint(
  checkpoint: AuditCheckpoint,
  verify: (body: Uint8Array, signature: Uint8Array) => boolean,
): void {
  if (typeof checkpoint !== "object" || checkpoint === null) throw checkpointError("not a checkpoint");
  if (!(checkpoint.signature instanceof Uint8Array) || checkpoint.signature.length === 0) {
    throw checkpointError("signature missing");
  }
  const body = checkpointBody(checkpoint.origin, checkpoint.treeSize, checkpoint.rootHash, checkpoint.time);
  let ok = false;
  try {
    ok = verify(body, checkpoint.signature) === true;
  } catch {
    ok = false;
  }
  if (!ok) throw checkpointError("signature does not verify");
}

// ---------------------------------------------------------------------------------------------
// The log

export interface AuditLogOptions {
  /** Signs checkpoint bodies (the Totebox identity key). */
  readonly sign: (body: Uint8Array) => Uint8Array;
  /** Names this log in checkpoints. Default "os-totebox/audit". */
  readonly origin?: string;
  /** Clock, ms since the epoch. Default Date.now. */
  readonly now?: () => number;
  /**
   * Schedules a group commit of the queued entries (called once per group). Default setImmediate:
   * after the current event-loop turn's I/O callbacks, so calls answered in one turn share a commit.
   */
  readonly schedule?: (flush: () => void) => void;
  /** Queued entries that force a commit at once, without waiting for the schedule. Default 1000. */
  readonly maxGroup?: number;
}

interface Queued {
  readonly text: string;
  readonly resolve: (index: number) => void;
  readonly reject: (e: unknown) => void;
}

export interface AuditInclusionProof {
  readonly index: number;
  readonly treeSize: number;
  readonly leafHash: Uint8Array;
  /** Sibling hashes from the leaf up (RFC 6962 audit path). */
  readonly proof: Uint8Array[];
}

export interface AuditConsistencyProof {
  readonly oldSize: number;
  readonly newSize: number;
  readonly proof: Uint8Array[];
}

function rangeError(message: string, detail: Record<string, number>): ToteboxError {
  return new ToteboxError("TOTEBOX_ERR_AUDIT_RANGE", message, detail);
}

const u8 = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

/**
 * One audit log over one database connection. Safe with several AuditLog objects or processes on
 * the same file: every append re-reads the stored size inside its write transaction and rebuilds
 * the frontier (O(log n) lookups) when another writer got there first.
 */
export class AuditLog {
  readonly #db: Database.Database;
  readonly #sign: (body: Uint8Array) => Uint8Array;
  readonly #origin: string;
  readonly #now: () => number;
  #range: CompactRange | undefined;
  readonly #stmts: {
    size: Database.Statement<[], { n: number }>;
    insertEntry: Database.Statement<[number, Buffer, string]>;
    insertNode: Database.Statement<[number, number, Buffer]>;
    leaf: Database.Statement<[number], { leaf_hash: Buffer }>;
    node: Database.Statement<[number, number], { hash: Buffer }>;
    entries: Database.Statement<[number, number], { idx: number; leaf_hash: Buffer; entry: string }>;
    insertCheckpoint: Database.Statement<[string, number, Buffer, number, Buffer]>;
    latestCheckpoint: Database.Statement<
      [],
      { origin: string; tree_size: number; root_hash: Buffer; time: number; signature: Buffer }
    >;
  };
  readonly #append: (inputs: readonly AuditEntryInput[]) => number[];
  readonly #commit: (texts: readonly string[]) => number[];
  readonly #encode: (input: AuditEntryInput, now: number) => string;
  readonly #schedule: (flush: () => void) => void;
  readonly #maxGroup: number;
  #queue: Queued[] = [];
  #flushScheduled = false;
  #commits = 0;

  constructor(db: Database.Database, options: AuditLogOptions) {
    ensureAuditSchema(db);
    this.#db = db;
    this.#sign = options.sign;
    this.#origin = options.origin ?? "os-totebox/audit";
    if (!ORIGIN_RE.test(this.#origin)) throw checkpointError("origin must be one printable ASCII line");
    this.#now = options.now ?? Date.now;
    this.#stmts = {
      size: db.prepare("SELECT COALESCE(MAX(idx) + 1, 0) AS n FROM audit_entry"),
      insertEntry: db.prepare("INSERT INTO audit_entry (idx, leaf_hash, entry) VALUES (?, ?, ?)"),
      insertNode: db.prepare("INSERT INTO audit_node (level, idx, hash) VALUES (?, ?, ?)"),
      leaf: db.prepare("SELECT leaf_hash FROM audit_entry WHERE idx = ?"),
      node: db.prepare("SELECT hash FROM audit_node WHERE level = ? AND idx = ?"),
      entries: db.prepare(
        "SELECT idx, leaf_hash, entry FROM audit_entry WHERE idx >= ? ORDER BY idx LIMIT ?",
      ),
      insertCheckpoint: db.prepare(
        "INSERT INTO audit_checkpoint (origin, tree_size, root_hash, time, signature) VALUES (?, ?, ?, ?, ?)",
      ),
      latestCheckpoint: db.prepare(
        "SELECT origin, tree_size, root_hash, time, signature FROM audit_checkpoint ORDER BY id DESC LIMIT 1",
      ),
    };
    // One transaction for a batch: entries are validated and encoded before it starts.
    const tx = db.transaction((texts: readonly string[]): number[] => {
      const range = this.#syncedRange();
      // The frontier is mutated before the commit: if anything below throws, forget it so the
      // next append rebuilds it from what was actually committed.
      this.#range = undefined;
      const indexes: number[] = [];
      for (const text of texts) {
        const index = range.size;
        const leafHash = hashLeaf(Buffer.from(text, "utf8"));
        this.#stmts.insertEntry.run(index, Buffer.from(leafHash), text);
        for (const node of range.append(leafHash)) {
          if (node.level > 0) this.#stmts.insertNode.run(node.level, node.index, Buffer.from(node.hash));
        }
        indexes.push(index);
      }
      this.#range = range;
      return indexes;
    });
    this.#encode = (input, now) => {
      const text = encodeEntry(normalizeEntry(input, now));
      if (Buffer.byteLength(text, "utf8") > AUDIT_LIMITS.maxEntryBytes) {
        throw entryError("*", `encodes to more than ${AUDIT_LIMITS.maxEntryBytes} bytes`);
      }
      return text;
    };
    this.#commit = (texts) => {
      try {
        const indexes = tx.immediate(texts);
        this.#commits++;
        return indexes;
      } catch (e) {
        this.#range = undefined;
        throw e;
      }
    };
    this.#append = (inputs) => {
      const now = this.#now();
      return this.#commit(inputs.map((input) => this.#encode(input, now)));
    };
    this.#schedule = options.schedule ?? ((flush) => void setImmediate(flush));
    this.#maxGroup = options.maxGroup ?? 1000;
    if (!Number.isSafeInteger(this.#maxGroup) || this.#maxGroup < 1) {
      throw new RangeError("maxGroup must be a positive integer");
    }
  }

  /** The frontier for the committed size (call inside a transaction). */
  #syncedRange(): CompactRange {
    const size = this.#stmts.size.get()!.n;
    if (this.#range !== undefined && this.#range.size === size) return this.#range;
    this.#range = CompactRange.restore(size, (level, index) => this.#nodeOrThrow(level, index));
    return this.#range;
  }

  #nodeOrThrow(level: number, index: number): Uint8Array {
    const h = this.#nodeHash(level, index);
    if (h === undefined) {
      throw new ToteboxError("TOTEBOX_ERR_AUDIT_CORRUPT", "a stored audit tree node is missing", {
        level,
        index,
      });
    }
    return h;
  }

  #nodeHash(level: number, index: number): Uint8Array | undefined {
    if (level === 0) {
      const row = this.#stmts.leaf.get(index);
      return row ? u8(row.leaf_hash) : undefined;
    }
    const row = this.#stmts.node.get(level, index);
    return row ? u8(row.hash) : undefined;
  }

  /** Reads proofs from stored nodes; a missing node is corruption, never silently recomputed. */
  #reader(): TreeReader {
    return {
      leafHash: (i) => this.#nodeOrThrow(0, i),
      nodeHash: (level, index) => this.#nodeOrThrow(level, index),
    };
  }

  /** Appends one entry; returns its index. Throws TOTEBOX_ERR_AUDIT_ENTRY for a malformed entry. */
  append(entry: AuditEntryInput): number {
    return this.#append([entry])[0]!;
  }

  /**
   * Appends several entries in one transaction (all or none); returns their indexes. One commit
   * for many entries: the way to audit bursts (a server can queue entries and flush per tick).
   */
  appendMany(entries: readonly AuditEntryInput[]): number[] {
    if (entries.length === 0) return [];
    return this.#append(entries);
  }

  /**
   * Queues an entry for the next group commit (see the file comment). Resolves with the entry's
   * index once the transaction that holds it has committed; rejects if that commit fails. A
   * malformed entry rejects at once with TOTEBOX_ERR_AUDIT_ENTRY and never joins a group, so one
   * bad entry cannot fail the others. The entry's time is taken now, not at the commit.
   */
  appendQueued(entry: AuditEntryInput): Promise<number> {
    let text: string;
    try {
      text = this.#encode(entry, this.#now());
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<number>((resolve, reject) => {
      this.#queue.push({ text, resolve, reject });
      if (this.#queue.length >= this.#maxGroup) this.flush();
      else if (!this.#flushScheduled) {
        this.#flushScheduled = true;
        this.#schedule(() => {
          this.#flushScheduled = false;
          this.flush();
        });
      }
    });
  }

  /** Commits every queued entry now, in one transaction; returns how many. */
  flush(): number {
    if (this.#queue.length === 0) return 0;
    const group = this.#queue;
    this.#queue = [];
    let indexes: number[];
    try {
      indexes = this.#commit(group.map((q) => q.text));
    } catch (e) {
      for (const q of group) q.reject(e);
      return 0;
    }
    for (let i = 0; i < group.length; i++) group[i]!.resolve(indexes[i]!);
    return group.length;
  }

  /** Entries queued and not yet committed. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Write transactions committed by this object (appends and group commits), for tests and metrics. */
  get commits(): number {
    return this.#commits;
  }

  /** Number of entries committed. */
  size(): number {
    return this.#stmts.size.get()!.n;
  }

  #checkTreeSize(treeSize: number): void {
    const size = this.size();
    if (!Number.isSafeInteger(treeSize) || treeSize < 0 || treeSize > size) {
      throw rangeError("tree size is beyond the log", { treeSize: Number(treeSize) || 0, size });
    }
  }

  /** Root hash of the first `treeSize` entries (default: all). */
  root(treeSize?: number): Uint8Array {
    return this.#db.transaction(() => {
      const n = treeSize ?? this.size();
      this.#checkTreeSize(n);
      return treeRoot(this.#reader(), n);
    })();
  }

  /** Signs and stores a checkpoint of the whole log as it is now. */
  checkpoint(): AuditCheckpoint {
    const { treeSize, rootHash } = this.#db.transaction(() => {
      const range = this.#syncedRange();
      return { treeSize: range.size, rootHash: range.root() };
    })();
    const time = this.#now();
    const signature = this.#sign(checkpointBody(this.#origin, treeSize, rootHash, time));
    if (!(signature instanceof Uint8Array) || signature.length === 0)
      throw checkpointError("the signer returned no signature");
    this.#stmts.insertCheckpoint.run(
      this.#origin,
      treeSize,
      Buffer.from(rootHash),
      time,
      Buffer.from(signature),
    );
    return { origin: this.#origin, treeSize, rootHash, time, signature: new Uint8Array(signature) };
  }

  /** The last checkpoint signed, if any. */
  latestCheckpoint(): AuditCheckpoint | undefined {
    const row = this.#stmts.latestCheckpoint.get();
    if (!row) return undefined;
    return {
      origin: row.origin,
      treeSize: row.tree_size,
      rootHash: new Uint8Array(row.root_hash),
      time: row.time,
      signature: new Uint8Array(row.signature),
    };
  }

  /** Inclusion proof of entry `index` in the tree of the first `treeSize` entries. */
  inclusionProof(index: number, treeSize: number): AuditInclusionProof {
    return this.#db.transaction(() => {
      this.#checkTreeSize(treeSize);
      if (!Number.isSafeInteger(index) || index < 0 || index >= treeSize) {
        throw rangeError("entry index is beyond the tree size", { index: Number(index) || 0, treeSize });
      }
      const reader = this.#reader();
      return {
        index,
        treeSize,
        leafHash: reader.leafHash(index),
        proof: merkleInclusionProof(reader, index, treeSize),
      };
    })();
  }

  /** Consistency proof between the trees of the first `oldSize` and `newSize` entries (0 < old ≤ new). */
  consistencyProof(oldSize: number, newSize: number): AuditConsistencyProof {
    return this.#db.transaction(() => {
      this.#checkTreeSize(newSize);
      if (!Number.isSafeInteger(oldSize) || oldSize < 1 || oldSize > newSize) {
        throw rangeError("old size must be between 1 and the new size", {
          oldSize: Number(oldSize) || 0,
          newSize,
        });
      }
      return { oldSize, newSize, proof: merkleConsistencyProof(this.#reader(), oldSize, newSize) };
    })();
  }

  /** Up to `count` entries from index `from` (at most AUDIT_LIMITS.maxEntriesPerRead). */
  entries(from: number, count: number): AuditRecord[] {
    if (!Number.isSafeInteger(from) || from < 0) throw rangeError("from must be a non-negative integer", {});
    if (!Number.isSafeInteger(count) || count < 0 || count > AUDIT_LIMITS.maxEntriesPerRead) {
      throw rangeError(`count must be between 0 and ${AUDIT_LIMITS.maxEntriesPerRead}`, {});
    }
    return this.#stmts.entries.all(from, count).map((r) => ({
      index: r.idx,
      entry: decodeEntry(r.entry, r.idx),
      leafHash: new Uint8Array(r.leaf_hash),
    }));
  }

  /**
   * Full check of what is stored (O(n): for `os-totebox verify`, not the request path): every
   * leaf hash matches its entry, every stored node matches its children, and the root matches
   * the latest checkpoint. Returns the first problem found, if any.
   */
  verifyStored(): { ok: true; size: number } | { ok: false; size: number; problem: string; index: number } {
    return this.#db.transaction(() => {
      const size = this.size();
      const range = new CompactRange();
      let i = 0;
      for (const row of this.#db
        .prepare<[], { idx: number; leaf_hash: Buffer; entry: string }>(
          "SELECT idx, leaf_hash, entry FROM audit_entry ORDER BY idx",
        )
        .iterate()) {
        if (row.idx !== i)
          return { ok: false as const, size, problem: "entry indexes are not contiguous", index: i };
        const leaf = hashLeaf(Buffer.from(row.entry, "utf8"));
        if (!Buffer.from(leaf).equals(row.leaf_hash)) {
          return { ok: false as const, size, problem: "leaf hash does not match the entry", index: i };
        }
        for (const node of range.append(leaf)) {
          if (node.level === 0) continue;
          const stored = this.#nodeHash(node.level, node.index);
          if (stored === undefined || !Buffer.from(stored).equals(node.hash)) {
            return {
              ok: false as const,
              size,
              problem: `stored node (${node.level}, ${node.index}) is wrong`,
              index: i,
            };
          }
        }
        i++;
      }
      const cp = this.latestCheckpoint();
      if (cp && cp.treeSize <= size) {
        const root = treeRoot(this.#reader(), cp.treeSize);
        if (!Buffer.from(root).equals(cp.rootHash)) {
          return {
            ok: false as const,
            size,
            problem: "the latest checkpoint's root does not match",
            index: cp.treeSize,
          };
        }
      } else if (cp) {
        return {
          ok: false as const,
          size,
          problem: "the latest checkpoint is beyond the log",
          index: cp.treeSize,
        };
      }
      return { ok: true as const, size };
    })();
  }
}
