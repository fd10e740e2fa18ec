import { createHash, type KeyObject } from "node:crypto";
import { mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import {
  type CanonicalValue,
  type Clock,
  canonicalCbor,
  requestHash,
  signReceipt,
} from "@os-orchestration/psp";
import { ToteboxError } from "./errors.ts";
import { appendTransaction, chainHead, parseJournalTx, verifyChain } from "./ledger.ts";
import { type LifecycleState, readState, writeState } from "./runtime-schema.ts";
import type { Db } from "./schema.ts";

/**
 * The Totebox's named commands. Each is capability-gated (checked by the caller before anything
 * here runs), idempotent by key and receipted.
 *
 * Idempotency: the first run of a key stores (command, SHA-256 of its canonical arguments,
 * receipt, result) in `command_receipts` (append-only). The same key again returns the stored
 * receipt and result without running anything; the same key with other arguments or another
 * command is refused (TOTEBOX_ERR_IDEMPOTENCY_CONFLICT). Concurrent calls with one key share one
 * run: the first registers its promise and the rest wait on it.
 *
 * Nothing here changes the entity's records blind: `stage-entry` only proposes an entry, which the
 * owner applies with `os-totebox approve` at the Totebox.
 */
export const COMMAND_NAMES = ["verify-ledger", "snapshot", "set-state", "stage-entry"] as const;
export type CommandName = (typeof COMMAND_NAMES)[number];

export const COMMAND_DESCRIPTIONS: Readonly<Record<CommandName, string>> = {
  "verify-ledger": "Verify the journal's hash chain end to end",
  snapshot: "Write a consistent backup of the archive database inside the archive folder",
  "set-state": "Set the lifecycle state: active, or suspended (answers only hello)",
  "stage-entry": "Propose a journal entry for the owner's approval (never applied directly)",
};

export interface CommandContext {
  readonly db: Db;
  readonly dir: string;
  readonly entityId: string;
  readonly clock: Clock;
  readonly signer: KeyObject;
  /** Who asked, for the staged entry's record and the receipt. */
  readonly operator: string;
  readonly capabilityId: Uint8Array;
  readonly onStateChange: (state: LifecycleState) => void;
}

export interface CommandAnswer {
  readonly command: string;
  readonly result: CanonicalValue;
  /** Canonical CBOR of `result`: what the receipt's digest covers. */
  readonly resultBytes: Uint8Array;
  readonly receipt: Uint8Array;
  /** True when this answer is the stored one from an earlier run of the same key. */
  readonly replayed: boolean;
}

export const COMMAND_LIMITS = Object.freeze({
  /** Longest idempotency key, in characters. */
  maxIdempotencyKey: 200,
  /** Largest canonical argument encoding, in bytes. */
  maxArgsBytes: 64 * 1024,
});

const inFlight = new WeakMap<Db, Map<string, Promise<CommandAnswer>>>();

export function isCommandName(name: string): name is CommandName {
  return (COMMAND_NAMES as readonly string[]).includes(name);
}

function toCanonical(v: unknown, depth = 0): CanonicalValue {
  if (depth > 16) throw new ToteboxError("TOTEBOX_ERR_COMMAND_ARGS", "arguments nested too deeply");
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new ToteboxError("TOTEBOX_ERR_COMMAND_ARGS", "numbers must be finite");
    return v;
  }
  if (Array.isArray(v)) return v.map((x) => toCanonical(x, depth + 1));
  if (typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    const out: Record<string, CanonicalValue> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      if (x !== undefined) out[k] = toCanonical(x, depth + 1);
    }
    return out;
  }
  throw new ToteboxError("TOTEBOX_ERR_COMMAND_ARGS", "arguments must be plain data");
}

export async function runCommand(
  ctx: CommandContext,
  name: string,
  rawArgs: unknown,
  idempotencyKey: string,
): Promise<CommandAnswer> {
  if (!isCommandName(name))
    throw new ToteboxError("TOTEBOX_ERR_COMMAND_UNKNOWN", "no such command", { command: name.slice(0, 64) });
  if (
    typeof idempotencyKey !== "string" ||
    idempotencyKey.length < 1 ||
    idempotencyKey.length > COMMAND_LIMITS.maxIdempotencyKey
  ) {
    throw new ToteboxError(
      "TOTEBOX_ERR_COMMAND_ARGS",
      "an idempotency key of 1 to 200 characters is required",
    );
  }
  const args = toCanonical(rawArgs ?? {});
  const argsBytes = canonicalCbor(args);
  if (argsBytes.byteLength > COMMAND_LIMITS.maxArgsBytes) {
    throw new ToteboxError("TOTEBOX_ERR_COMMAND_ARGS", "arguments too large", {
      limit: COMMAND_LIMITS.maxArgsBytes,
    });
  }
  const argsHash = createHash("sha256").update(`${name}\n`).update(argsBytes).digest("hex");

  let pending = inFlight.get(ctx.db);
  if (!pending) {
    pending = new Map();
    inFlight.set(ctx.db, pending);
  }
  const running = pending.get(idempotencyKey);
  if (running) {
    const first = await running;
    if (first.command !== name || (await argsHashOf(ctx.db, idempotencyKey)) !== argsHash) {
      throw conflict();
    }
    return { ...first, replayed: true };
  }

  const stored = ctx.db
    .prepare<[string], { command: string; args_hash: string; receipt: Buffer; created_at: string }>(
      "SELECT command, args_hash, receipt, created_at FROM command_receipts WHERE idempotency_key = ?",
    )
    .get(idempotencyKey);
  if (stored) {
    if (stored.command !== name || stored.args_hash !== argsHash) throw conflict();
    const { result, receipt } = unpackStored(stored.receipt);
    return { command: name, result, resultBytes: canonicalCbor(result), receipt, replayed: true };
  }

  const p = (async (): Promise<CommandAnswer> => {
    const result = await execute(ctx, name, args);
    const resultBytes = canonicalCbor(result);
    const receipt = signReceipt({
      capabilityId: ctx.capabilityId,
      command: name,
      requestHash: requestHash({ command: name, params: args as Record<string, CanonicalValue> }),
      rowCount: 0,
      suppressedGroups: 0,
      watermark: watermark(ctx.db),
      arrowBytes: resultBytes,
      subjectId: ctx.entityId,
      clock: ctx.clock,
      signer: ctx.signer,
    });
    ctx.db
      .prepare(
        "INSERT INTO command_receipts (idempotency_key, command, args_hash, receipt, created_at) VALUES (?, ?, ?, ?, ?)",
      )
      .run(
        idempotencyKey,
        name,
        argsHash,
        packStored(result, receipt),
        new Date(ctx.clock.now()).toISOString(),
      );
    return { command: name, result, resultBytes, receipt, replayed: false };
  })();
  pending.set(idempotencyKey, p);
  try {
    return await p;
  } finally {
    pending.delete(idempotencyKey);
  }
}

function conflict(): ToteboxError {
  return new ToteboxError(
    "TOTEBOX_ERR_IDEMPOTENCY_CONFLICT",
    "this idempotency key was used with another command or other arguments",
  );
}

async function argsHashOf(db: Db, key: string): Promise<string | undefined> {
  return db
    .prepare<[string], { args_hash: string }>(
      "SELECT args_hash FROM command_receipts WHERE idempotency_key = ?",
    )
    .get(key)?.args_hash;
}

// Stored as canonical CBOR [result, receipt] so a replay returns byte-identical answers.
function packStored(result: CanonicalValue, receipt: Uint8Array): Buffer {
  return Buffer.from(canonicalCbor([result, receipt] as unknown as CanonicalValue));
}

function unpackStored(bytes: Buffer): { result: CanonicalValue; receipt: Uint8Array } {
  const { decode } = cborDecoder;
  const v = decode(bytes) as [CanonicalValue, Uint8Array];
  return { result: v[0], receipt: new Uint8Array(v[1]) };
}

import { Decoder } from "cbor-x";

const cborDecoder = new Decoder({ mapsAsObjects: true, useRecords: false } as ConstructorParameters<
  typeof Decoder
>[0]);

export function watermark(db: Db): string {
  const head = chainHead(db);
  return `${head.seq}:${head.hash}`;
}

async function execute(
  ctx: CommandContext,
  name: CommandName,
  args: CanonicalValue,
): Promise<CanonicalValue> {
  const a = (args ?? {}) as Record<string, CanonicalValue>;
  switch (name) {
    case "verify-ledger": {
      const v = verifyChain(ctx.db);
      return v.ok
        ? { ok: true, entries: v.entries, lines: v.lines, head: v.head }
        : { ok: false, firstBrokenSeq: v.firstBrokenSeq, reason: v.reason };
    }
    case "snapshot": {
      const dir = join(ctx.dir, "snapshots");
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const stamp = new Date(ctx.clock.now()).toISOString().replace(/[:.]/g, "-");
      const file = join(dir, `archive-${stamp}.db`);
      // better-sqlite3's backup uses SQLite's online backup API: a consistent copy while serving.
      await ctx.db.backup(file);
      return {
        file: `snapshots/archive-${stamp}.db`,
        bytes: statSync(file).size,
        watermark: watermark(ctx.db),
      };
    }
    case "set-state": {
      const state = a.state;
      if (state !== "active" && state !== "suspended") {
        throw new ToteboxError("TOTEBOX_ERR_COMMAND_ARGS", "state must be active or suspended");
      }
      const before = readState(ctx.db);
      writeState(ctx.db, state);
      ctx.onStateChange(state);
      return { before, state };
    }
    case "stage-entry": {
      let tx: ReturnType<typeof parseJournalTx>;
      try {
        tx = parseJournalTx(a.entry);
      } catch (e) {
        throw new ToteboxError("TOTEBOX_ERR_COMMAND_ARGS", `entry refused: ${(e as Error).message}`);
      }
      const id = `st-${createHash("sha256")
        .update(canonicalCbor(a.entry ?? null))
        .update(String(ctx.clock.now()))
        .digest("hex")
        .slice(0, 16)}`;
      ctx.db
        .prepare(
          "INSERT INTO staged_entries (id, staged_at, proposed_by, idempotency_key, entry) VALUES (?, ?, ?, NULL, ?)",
        )
        .run(id, new Date(ctx.clock.now()).toISOString(), ctx.operator, JSON.stringify(tx));
      return { staged: id, status: "pending", note: "applied only after the owner runs os-totebox approve" };
    }
  }
}

export interface StagedEntry {
  id: string;
  stagedAt: string;
  proposedBy: string;
  status: string;
  entry: unknown;
}

export function listStaged(db: Db): StagedEntry[] {
  return db
    .prepare<[], { id: string; staged_at: string; proposed_by: string; status: string; entry: string }>(
      "SELECT id, staged_at, proposed_by, status, entry FROM staged_entries ORDER BY staged_at",
    )
    .all()
    .map((r) => ({
      id: r.id,
      stagedAt: r.staged_at,
      proposedBy: r.proposed_by,
      status: r.status,
      entry: JSON.parse(r.entry),
    }));
}

/** The owner's decision at the Totebox: approve applies the staged entry to the journal. */
export function decideStaged(
  db: Db,
  id: string,
  decision: "approve" | "reject",
  by: string,
  now: number,
): { seq?: number } {
  return db
    .transaction(() => {
      const row = db
        .prepare<[string], { status: string; entry: string }>(
          "SELECT status, entry FROM staged_entries WHERE id = ?",
        )
        .get(id);
      if (!row) throw new ToteboxError("TOTEBOX_ERR_STAGED", "no such staged entry", { id });
      if (row.status !== "pending")
        throw new ToteboxError("TOTEBOX_ERR_STAGED", "staged entry already decided", { id });
      const at = new Date(now).toISOString();
      if (decision === "reject") {
        db.prepare(
          "UPDATE staged_entries SET status = 'rejected', decided_at = ?, decided_by = ? WHERE id = ?",
        ).run(at, by, id);
        return {};
      }
      const tx = parseJournalTx(JSON.parse(row.entry));
      const appended = appendTransaction(db, { ...tx, source: `staged:${id}` });
      db.prepare(
        "UPDATE staged_entries SET status = 'approved', decided_at = ?, decided_by = ?, applied_seq = ? WHERE id = ?",
      ).run(at, by, appended.seq, id);
      return { seq: appended.seq };
    })
    .immediate();
}
