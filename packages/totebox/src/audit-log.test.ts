import { generateKeyPairSync, sign, verify } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { hashLeaf, MerkleTree, verifyConsistency, verifyInclusion } from "../../psp/src/merkle.ts";
import {
  AUDIT_GUARDS,
  type AuditCheckpoint,
  type AuditEntryInput,
  AuditLog,
  checkpointBody,
  encodeEntry,
  ensureAuditSchema,
  normalizeEntry,
  verifyCheckpoint,
} from "./audit-log.ts";
import { ToteboxError } from "./errors.ts";

const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);

const keys = generateKeyPairSync("ed25519");
const otherKeys = generateKeyPairSync("ed25519");
const signer = (body: Uint8Array) => new Uint8Array(sign(null, body, keys.privateKey));
const verifier = (body: Uint8Array, sig: Uint8Array) => verify(null, body, keys.publicKey, sig);

let dir: string;
let file: string;
let db: Database.Database;
let clock: number;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "totebox-audit-"));
  file = path.join(dir, "archive.sqlite");
  db = new Database(file);
  db.pragma("journal_mode = WAL");
  clock = 1_700_000_000_000;
});

afterEach(() => {
  db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const newLog = (conn: Database.Database = db) =>
  new AuditLog(conn, { sign: signer, origin: "totebox.test/entity-1", now: () => clock++ });

function entry(i: number, extra: Partial<AuditEntryInput> = {}): AuditEntryInput {
  return {
    peer: "ab".repeat(32),
    operator: "C0FFEE00",
    tenant: "acme",
    action: i % 3 === 0 ? "command" : "read",
    target: i % 3 === 0 ? "verify-ledger" : "position",
    capability: (i + 1).toString(16).padStart(32, "0"),
    outcome: i % 5 === 4 ? "PSP_ERR_CAP_EXPIRED" : "ok",
    rows: i % 5 === 4 ? null : i,
    detail: { n: i, note: `entry ${i}` },
    ...extra,
  };
}

/** The tree an independent party would build from the stored entry texts. */
function referenceTree(log: AuditLog): MerkleTree {
  const records = [];
  for (let from = 0; from < log.size(); from += 1000) records.push(...log.entries(from, 1000));
  return MerkleTree.fromLeaves(records.map((r) => new TextEncoder().encode(encodeEntry(r.entry))));
}

function auditError(fn: () => unknown, code: string): ToteboxError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ToteboxError);
    expect((e as ToteboxError).code).toBe(code);
    return e as ToteboxError;
  }
  throw new Error(`expected ${code}`);
}

describe("audit log schema", () => {
  it("is append-only: UPDATE, DELETE, REPLACE and gaps are refused by triggers", () => {
    const log = newLog();
    for (let i = 0; i < 5; i++) log.append(entry(i));
    log.checkpoint();
    const names = db
      .prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'trigger'")
      .all();
    expect(names.map((n) => n.name)).toEqual(expect.arrayContaining([...AUDIT_GUARDS]));
    const refused = (sql: string) => expect(() => db.exec(sql)).toThrow(/TOTEBOX_ERR_APPEND_ONLY/);
    refused("UPDATE audit_entry SET entry = '{}' WHERE idx = 1");
    refused("DELETE FROM audit_entry WHERE idx = 4");
    refused("INSERT OR REPLACE INTO audit_entry (idx, leaf_hash, entry) VALUES (1, zeroblob(32), '{}')");
    refused("INSERT INTO audit_entry (idx, leaf_hash, entry) VALUES (9, zeroblob(32), '{}')");
    refused("UPDATE audit_node SET hash = zeroblob(32)");
    refused("DELETE FROM audit_node");
    refused("INSERT OR REPLACE INTO audit_node (level, idx, hash) VALUES (1, 0, zeroblob(32))");
    refused("UPDATE audit_checkpoint SET tree_size = 0");
    refused("DELETE FROM audit_checkpoint");
    expect(log.verifyStored()).toEqual({ ok: true, size: 5 });
    ensureAuditSchema(db); // idempotent
  });
});

describe("entries", () => {
  it("are encoded canonically (sorted keys, no whitespace) and read back", () => {
    const log = newLog();
    const e = normalizeEntry(entry(1, { detail: { z: 1, a: "x", m: null, b: true } }), 5);
    expect(encodeEntry(e)).toBe(
      '{"action":"read","capability":"00000000000000000000000000000002","detail":{"a":"x","b":true,"m":null,"z":1},' +
        '"operator":"c0ffee00","outcome":"ok","peer":"' +
        "ab".repeat(32) +
        '","rows":1,"target":"position","tenant":"acme","time":5}',
    );
    expect(log.append(entry(0))).toBe(0);
    expect(log.append(entry(1, { time: 42 }))).toBe(1);
    const [r0, r1] = log.entries(0, 10);
    expect(r0!.entry).toMatchObject({ action: "command", operator: "c0ffee00", time: 1_700_000_000_000 });
    expect(r1!.entry.time).toBe(42);
    expect(
      Buffer.from(r1!.leafHash).equals(
        Buffer.from(hashLeaf(new TextEncoder().encode(encodeEntry(r1!.entry)))),
      ),
    ).toBe(true);
    expect(log.entries(1, 1).map((r) => r.index)).toEqual([1]);
    expect(log.entries(2, 5)).toEqual([]);
  });

  it("refuses malformed fields, and token bytes where a capability id belongs", () => {
    const log = newLog();
    const bad = (extra: Partial<AuditEntryInput> | Record<string, unknown>, field: string) =>
      expect(
        auditError(() => log.append(entry(0, extra as Partial<AuditEntryInput>)), "TOTEBOX_ERR_AUDIT_ENTRY")
          .detail?.field,
      ).toBe(field);
    bad({ capability: `d28443a10127a0${"00".repeat(200)}` }, "capability");
    bad({ capability: "not hex" }, "capability");
    bad({ capability: "abc" }, "capability");
    bad({ outcome: "fine" }, "outcome");
    bad({ action: "" }, "action");
    bad({ action: "Read" }, "action");
    bad({ peer: "has space" }, "peer");
    bad({ operator: "zz" }, "operator");
    bad({ tenant: "t".repeat(129) }, "tenant");
    bad({ rows: -1 }, "rows");
    bad({ rows: 1.5 }, "rows");
    bad({ time: -5 }, "time");
    bad({ detail: { nested: { a: 1 } } }, "detail");
    bad({ detail: { "bad key": 1 } }, "detail");
    bad({ detail: { x: "y".repeat(2000) } }, "detail");
    bad({ detail: { x: Number.POSITIVE_INFINITY } }, "detail");
    expect(log.size()).toBe(0);
  });
});

describe("tree, checkpoints and proofs", () => {
  it("roots match an independent tree; checkpoints sign them and verify", () => {
    const log = newLog();
    const cps: AuditCheckpoint[] = [];
    for (let i = 0; i < 70; i++) {
      log.append(entry(i));
      if (i % 17 === 0) cps.push(log.checkpoint());
    }
    cps.push(log.checkpoint());
    const ref = referenceTree(log);
    for (const cp of cps) {
      verifyCheckpoint(cp, verifier);
      expect(Buffer.from(cp.rootHash).toString("hex")).toBe(
        Buffer.from(ref.root(cp.treeSize)).toString("hex"),
      );
      expect(Buffer.from(log.root(cp.treeSize)).equals(Buffer.from(cp.rootHash))).toBe(true);
    }
    expect(log.latestCheckpoint()).toEqual(cps.at(-1));
    expect(
      new TextDecoder().decode(
        checkpointBody(cps[1]!.origin, cps[1]!.treeSize, cps[1]!.rootHash, cps[1]!.time),
      ),
    ).toMatch(/^totebox\.test\/entity-1\n18\n[A-Za-z0-9+/]{43}=\ntime \d+\n$/);
    const refuse = (cp: AuditCheckpoint, v = verifier) =>
      auditError(() => verifyCheckpoint(cp, v), "TOTEBOX_ERR_AUDIT_CHECKPOINT");
    const cp = cps.at(-1)!;
    refuse({ ...cp, treeSize: cp.treeSize + 1 });
    refuse({ ...cp, time: cp.time + 1 });
    refuse({ ...cp, origin: "someone-else" });
    refuse({ ...cp, rootHash: ref.root(cp.treeSize - 1) });
    refuse({ ...cp, signature: cp.signature.map((b, i) => (i === 0 ? b ^ 1 : b)) });
    refuse(cp, (body, sig) => verify(null, body, otherKeys.publicKey, sig));
    refuse(cp, () => {
      throw new Error("verifier crashed");
    });
    refuse({ ...cp, rootHash: new Uint8Array(31) });
  });

  it("serves inclusion and consistency proofs that verify against checkpoints", () => {
    const log = newLog();
    const cps: AuditCheckpoint[] = [];
    for (let i = 0; i < 130; i++) {
      log.append(entry(i));
      if ([0, 1, 2, 7, 63, 64, 100, 129].includes(i)) cps.push(log.checkpoint());
    }
    for (const cp of cps) {
      for (let index = 0; index < cp.treeSize; index++) {
        const p = log.inclusionProof(index, cp.treeSize);
        verifyInclusion(p.index, p.treeSize, p.leafHash, p.proof, cp.rootHash);
      }
    }
    for (const a of cps) {
      for (const b of cps) {
        if (a.treeSize > b.treeSize) continue;
        const p = log.consistencyProof(a.treeSize, b.treeSize);
        verifyConsistency(p.oldSize, p.newSize, p.proof, a.rootHash, b.rootHash);
      }
    }
    auditError(() => log.inclusionProof(130, 130), "TOTEBOX_ERR_AUDIT_RANGE");
    auditError(() => log.inclusionProof(0, 131), "TOTEBOX_ERR_AUDIT_RANGE");
    auditError(() => log.inclusionProof(-1, 10), "TOTEBOX_ERR_AUDIT_RANGE");
    auditError(() => log.consistencyProof(0, 10), "TOTEBOX_ERR_AUDIT_RANGE");
    auditError(() => log.consistencyProof(11, 10), "TOTEBOX_ERR_AUDIT_RANGE");
    auditError(() => log.consistencyProof(1, 131), "TOTEBOX_ERR_AUDIT_RANGE");
    auditError(() => log.entries(0, 1001), "TOTEBOX_ERR_AUDIT_RANGE");
    auditError(() => log.root(200), "TOTEBOX_ERR_AUDIT_RANGE");
  });

  it("random append / checkpoint / proof sequences always verify (property)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.constant("append" as const), fc.constant("checkpoint" as const), fc.nat()), {
          maxLength: 60,
        }),
        (ops) => {
          const conn = new Database(":memory:");
          try {
            const log = newLog(conn);
            const cps: AuditCheckpoint[] = [];
            let n = 0;
            for (const op of ops) {
              if (op === "append") log.append(entry(n++));
              else if (op === "checkpoint") cps.push(log.checkpoint());
              else if (n > 0) {
                const size = 1 + (op % n);
                const index = op % size;
                const p = log.inclusionProof(index, size);
                verifyInclusion(index, size, p.leafHash, p.proof, log.root(size));
              }
            }
            for (let i = 1; i < cps.length; i++) {
              const a = cps[i - 1]!;
              const b = cps[i]!;
              if (a.treeSize === 0) continue;
              verifyConsistency(
                a.treeSize,
                b.treeSize,
                log.consistencyProof(a.treeSize, b.treeSize).proof,
                a.rootHash,
                b.rootHash,
              );
            }
            expect(log.verifyStored().ok).toBe(true);
          } finally {
            conn.close();
          }
        },
      ),
      { seed, numRuns: 60 },
    );
  });
});

describe("durability and concurrency", () => {
  it("continues after a restart; the old checkpoint is consistent with the new tree", () => {
    const log = newLog();
    for (let i = 0; i < 21; i++) log.append(entry(i));
    const before = log.checkpoint();
    db.close();
    db = new Database(file);
    const again = newLog();
    expect(again.size()).toBe(21);
    expect(again.append(entry(21))).toBe(21);
    for (let i = 22; i < 40; i++) again.append(entry(i));
    const after = again.checkpoint();
    verifyConsistency(21, 40, again.consistencyProof(21, 40).proof, before.rootHash, after.rootHash);
    expect(Buffer.from(after.rootHash).equals(Buffer.from(referenceTree(again).root()))).toBe(true);
  });

  it("two connections appending in turn keep one consistent tree", () => {
    const other = new Database(file);
    try {
      const a = newLog();
      const b = newLog(other);
      for (let i = 0; i < 40; i++) (i % 3 === 0 ? b : a).append(entry(i));
      const cpA = a.checkpoint();
      const cpB = b.checkpoint();
      expect(cpA.treeSize).toBe(40);
      expect(Buffer.from(cpA.rootHash).equals(Buffer.from(cpB.rootHash))).toBe(true);
      expect(Buffer.from(cpA.rootHash).equals(Buffer.from(referenceTree(a).root()))).toBe(true);
      expect(a.verifyStored()).toEqual({ ok: true, size: 40 });
    } finally {
      other.close();
    }
  });

  it("an append rolled back by an outer transaction leaves no trace in the tree", () => {
    const log = newLog();
    for (let i = 0; i < 6; i++) log.append(entry(i));
    expect(() =>
      db.transaction(() => {
        log.append(entry(100));
        log.append(entry(101));
        throw new Error("caller failed after auditing");
      })(),
    ).toThrow("caller failed");
    expect(log.size()).toBe(6);
    expect(log.append(entry(6))).toBe(6);
    expect(Buffer.from(log.root()).equals(Buffer.from(referenceTree(log).root()))).toBe(true);
    expect(log.verifyStored().ok).toBe(true);
  });

  it("verifyStored finds tampering done behind the triggers' back", () => {
    const log = newLog();
    for (let i = 0; i < 9; i++) log.append(entry(i));
    log.checkpoint();
    db.exec("DROP TRIGGER audit_entry_no_update");
    db.prepare("UPDATE audit_entry SET entry = ? WHERE idx = 3").run(
      encodeEntry(normalizeEntry(entry(3, { outcome: "ok", rows: 999 }), 0)),
    );
    expect(log.verifyStored()).toMatchObject({
      ok: false,
      index: 3,
      problem: "leaf hash does not match the entry",
    });
  });
});

describe("group commit (appendQueued)", () => {
  /** A log whose group commits run only when the test says so. */
  const manualLog = (conn: Database.Database = db, maxGroup?: number) => {
    const flushes: (() => void)[] = [];
    const log = new AuditLog(conn, {
      sign: signer,
      origin: "totebox.test/entity-1",
      now: () => clock++,
      schedule: (f) => flushes.push(f),
      ...(maxGroup !== undefined ? { maxGroup } : {}),
    });
    return { log, flushes };
  };
  const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

  it("entries queued in one turn share one transaction, and none resolves before it commits", async () => {
    const { log, flushes } = manualLog();
    log.append(entry(0));
    const commits = log.commits;
    let resolved = 0;
    const queued = Array.from({ length: 10 }, (_, i) =>
      log.appendQueued(entry(i + 1)).then((index) => {
        resolved++;
        return index;
      }),
    );
    expect(flushes).toHaveLength(1); // one commit scheduled for the whole group
    await new Promise((r) => setImmediate(r));
    expect(resolved).toBe(0);
    expect(log.size()).toBe(1);
    expect(log.queued).toBe(10);
    flushes[0]!();
    expect(await Promise.all(queued)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    expect(log.commits).toBe(commits + 1);
    expect(log.queued).toBe(0);
    expect(same(log.root(), referenceTree(log).root())).toBe(true);
    expect(log.verifyStored()).toEqual({ ok: true, size: 11 });
    // Entries keep the order they were queued in, with the time they were queued at.
    expect(log.entries(1, 10).map((r) => r.entry.detail?.n)).toEqual(
      Array.from({ length: 10 }, (_, i) => i + 1),
    );
  });

  it("by default commits after the current turn: one transaction for a burst", async () => {
    const log = newLog();
    const commits = log.commits;
    const indexes = await Promise.all(Array.from({ length: 25 }, (_, i) => log.appendQueued(entry(i))));
    expect(indexes).toEqual(Array.from({ length: 25 }, (_, i) => i));
    expect(log.commits).toBe(commits + 1);
    // A later turn is a later group.
    await log.appendQueued(entry(25));
    expect(log.commits).toBe(commits + 2);
  });

  it("a malformed entry is refused on its own and never joins a group", async () => {
    const { log, flushes } = manualLog();
    const good1 = log.appendQueued(entry(1));
    const bad = log.appendQueued(entry(2, { capability: "not hex: a token?" }));
    const good2 = log.appendQueued(entry(3));
    await expect(bad).rejects.toMatchObject({ code: "TOTEBOX_ERR_AUDIT_ENTRY" });
    flushes[0]!();
    expect([await good1, await good2]).toEqual([0, 1]);
  });

  it("a failed commit rejects every entry in it, leaves no trace, and the log carries on", async () => {
    // A second writer holds the write lock; this connection does not wait for it.
    const impatient = new Database(file, { timeout: 0 });
    const writer = new Database(file);
    try {
      const { log, flushes } = manualLog(impatient);
      log.append(entry(0));
      writer.exec("BEGIN IMMEDIATE");
      const group = [1, 2, 3].map((i) => log.appendQueued(entry(i)));
      flushes[0]!();
      for (const p of group) await expect(p).rejects.toMatchObject({ code: "SQLITE_BUSY" });
      writer.exec("ROLLBACK");
      expect(log.size()).toBe(1);
      const next = log.appendQueued(entry(4));
      flushes[1]!();
      expect(await next).toBe(1);
      expect(log.verifyStored()).toEqual({ ok: true, size: 2 });
      expect(same(log.root(), referenceTree(log).root())).toBe(true);
    } finally {
      writer.close();
      impatient.close();
    }
  });

  it("a full group commits at once without waiting for its turn to end", async () => {
    const { log, flushes } = manualLog(db, 3);
    const ps = [0, 1, 2].map((i) => log.appendQueued(entry(i)));
    expect(log.size()).toBe(3);
    expect(await Promise.all(ps)).toEqual([0, 1, 2]);
    // The group's scheduled flush finds nothing left to do.
    flushes[0]!();
    expect(log.size()).toBe(3);
  });

  it("random mixes of queued and direct appends keep one tree (property)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.constant("queue"), fc.constant("append"), fc.constant("flush")), {
          maxLength: 60,
        }),
        async (ops) => {
          const conn = new Database(":memory:");
          try {
            const { log, flushes } = manualLog(conn);
            const texts: string[] = [];
            const pending: Promise<number>[] = [];
            const queuedTexts: string[] = [];
            let i = 0;
            for (const op of ops) {
              if (op === "flush") {
                for (const f of flushes.splice(0)) f();
                texts.push(...queuedTexts.splice(0));
              } else {
                const e = entry(i++);
                const text = encodeEntry(normalizeEntry(e, clock));
                if (op === "queue") {
                  pending.push(log.appendQueued(e));
                  queuedTexts.push(text);
                } else {
                  log.append(e);
                  texts.push(text);
                }
              }
            }
            log.flush();
            texts.push(...queuedTexts);
            await Promise.all(pending);
            expect(log.size()).toBe(texts.length);
            const stored = log.entries(0, 1000).map((r) => encodeEntry(r.entry));
            // Exactly the order of commits: direct appends at once, queued ones at their flush.
            const n = (t: string) => (JSON.parse(t) as { detail: { n: number } }).detail.n;
            expect(stored.map(n)).toEqual(texts.map(n));
            expect(same(log.root(), referenceTree(log).root())).toBe(true);
            expect(log.verifyStored().ok).toBe(true);
          } finally {
            conn.close();
          }
        },
      ),
      { seed, numRuns: 50 },
    );
  });
});
