import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ToteboxError } from "./errors.ts";
import {
  addAccounts,
  addCounterparties,
  appendTransaction,
  appendTransactions,
  assertChainIntact,
  chainHead,
  entryHash,
  isIsoDate,
  type JournalTxInput,
  parseJournalTx,
  readTransaction,
  verifyChain,
} from "./ledger.ts";
import { type Db, GENESIS_HASH, initEntity, openArchiveDatabase } from "./schema.ts";

let dir: string;
let file: string;
const open: Db[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "totebox-ledger-"));
  file = path.join(dir, "archive.db");
});

afterEach(() => {
  for (const db of open.splice(0)) if (db.open) db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function archive(): Db {
  const db = openArchiveDatabase(file);
  open.push(db);
  initEntity(db, { id: "acme", kind: "company", name: "Acme", created: "2024-01-01T00:00:00Z" });
  addAccounts(db, [
    { code: "1000", name: "Cash", class: "asset", subtype: "cash" },
    { code: "1100", name: "Receivables", class: "asset", subtype: "receivable" },
    { code: "4000", name: "Sales", class: "income", subtype: "revenue" },
    { code: "6000", name: "Rent", class: "expense", subtype: "operating" },
  ]);
  addCounterparties(db, [
    { id: "c1", name: "Customer One", kind: "customer" },
    { id: "v1", name: "Landlord", kind: "vendor" },
  ]);
  return db;
}

function sale(i: number, amount = 1000 + i): JournalTxInput {
  return {
    id: `tx-${i}`,
    date: `2024-03-${String((i % 28) + 1).padStart(2, "0")}`,
    memo: `Sale ${i}`,
    source: "test",
    createdAt: "2024-03-31T12:00:00.000Z",
    lines: [
      { account: "1100", amount, counterparty: "c1", memo: "invoice" },
      { account: "4000", amount: -amount },
    ],
  };
}

function refusal(fn: () => unknown): ToteboxError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ToteboxError) return e;
    throw e;
  }
  throw new Error("expected a refusal");
}

/** A raw connection with the write-once triggers dropped: what an attacker with the file can do. */
function tamper(sql: string, ...params: unknown[]): void {
  const raw = new Database(file);
  raw.pragma("foreign_keys = OFF");
  for (const t of [
    "journal_tx_no_update",
    "journal_tx_no_delete",
    "journal_lines_no_update",
    "journal_lines_no_delete",
    "journal_lines_sealed",
    "journal_lines_daily",
    "journal_daily_totals_no_delete",
  ]) {
    raw.exec(`DROP TRIGGER IF EXISTS ${t}`);
  }
  raw.prepare(sql).run(...params);
  raw.close();
}

/**
 * The canonical encoding, written again from the comment in ledger.ts (not from its code), so a
 * drift between the documentation and the implementation fails here.
 */
function referenceHash(
  prevHash: string,
  seq: number,
  h: { id: string; date: string; memo: string; source: string; createdAt: string },
  lines: { account: string; counterparty: string | null; amount: number; memo: string }[],
): string {
  const str = (s: string): Buffer => {
    const b = Buffer.from(s, "utf8");
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    return Buffer.concat([len, b]);
  };
  const u32 = (n: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const i64 = (n: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(BigInt(n));
    return b;
  };
  const parts = [
    Buffer.from("totebox/journal/v1\u0000", "utf8"),
    Buffer.from(prevHash, "hex"),
    i64(seq),
    str(h.id),
    str(h.date),
    str(h.memo),
    str(h.source),
    str(h.createdAt),
    u32(lines.length),
  ];
  lines.forEach((l, i) => {
    parts.push(u32(i + 1), str(l.account));
    parts.push(
      l.counterparty === null ? Buffer.from([0]) : Buffer.concat([Buffer.from([1]), str(l.counterparty)]),
    );
    parts.push(i64(l.amount), str(l.memo));
  });
  return createHash("sha256").update(Buffer.concat(parts)).digest("hex");
}

describe("appendTransaction", () => {
  it("chains entries: seq 1 links to the genesis hash, each next one to its predecessor", () => {
    const db = archive();
    const a = appendTransaction(db, sale(1));
    const b = appendTransaction(db, sale(2));
    expect(a).toMatchObject({ seq: 1, id: "tx-1", prevHash: GENESIS_HASH, lines: 2 });
    expect(b.seq).toBe(2);
    expect(b.prevHash).toBe(a.hash);
    expect(chainHead(db)).toEqual({ seq: 2, hash: b.hash });
    const stored = readTransaction(db, { seq: 1 })!;
    expect(stored).toMatchObject({ id: "tx-1", memo: "Sale 1", source: "test", hash: a.hash });
    expect(stored.lines).toEqual([
      { lineNo: 1, account: "1100", counterparty: "c1", amount: 1001, memo: "invoice" },
      { lineNo: 2, account: "4000", counterparty: null, amount: -1001, memo: "" },
    ]);
    expect(readTransaction(db, { id: "tx-2" })?.seq).toBe(2);
    expect(readTransaction(db, { id: "nope" })).toBeUndefined();
  });

  it("hashes the documented canonical encoding (golden vector)", () => {
    const db = archive();
    const tx: JournalTxInput = {
      id: "golden-1",
      date: "2024-02-29",
      memo: "Café rent, février",
      source: "api",
      createdAt: "2024-03-01T09:30:00.000Z",
      lines: [
        { account: "6000", amount: 123456, counterparty: "v1", memo: "Feb" },
        { account: "1000", amount: -123456 },
      ],
    };
    const got = appendTransaction(db, tx);
    const header = { id: tx.id, date: tx.date, memo: tx.memo!, source: tx.source!, createdAt: tx.createdAt! };
    const lines = [
      { account: "6000", counterparty: "v1", amount: 123456, memo: "Feb" },
      { account: "1000", counterparty: null, amount: -123456, memo: "" },
    ];
    expect(got.hash).toBe(referenceHash(GENESIS_HASH, 1, header, lines));
    expect(got.hash).toBe(
      entryHash(
        { ...header, seq: 1, prevHash: GENESIS_HASH },
        lines.map((l, i) => ({ ...l, lineNo: i + 1 })),
      ),
    );
    // Pinned: changing the encoding breaks every archive's chain, so it must be deliberate.
    expect(got.hash).toBe("1c0fa8b9dbef38d7c2bad2c876e05213f441ee1550d3cb9c352dc1770c4aa2d2");
  });

  it("refuses an unbalanced transaction and writes nothing", () => {
    const db = archive();
    const e = refusal(() =>
      appendTransaction(db, {
        id: "bad",
        date: "2024-01-05",
        lines: [
          { account: "1000", amount: 100 },
          { account: "4000", amount: -99 },
        ],
      }),
    );
    expect(e.code).toBe("TOTEBOX_ERR_UNBALANCED");
    expect(e.detail).toMatchObject({ id: "bad", imbalance: "1" });
    expect(chainHead(db).seq).toBe(0);
  });

  it("checks the sum exactly even when partial sums leave the safe-integer range", () => {
    const db = archive();
    const max = Number.MAX_SAFE_INTEGER;
    const e = refusal(() =>
      appendTransaction(db, {
        id: "big",
        date: "2024-01-05",
        lines: [
          { account: "1000", amount: max },
          { account: "1000", amount: max },
          { account: "4000", amount: -max },
          { account: "4000", amount: -max + 1 },
        ],
      }),
    );
    expect(e.code).toBe("TOTEBOX_ERR_UNBALANCED");
    const ok = appendTransaction(db, {
      id: "big-ok",
      date: "2024-01-05",
      lines: [
        { account: "1000", amount: max },
        { account: "1000", amount: max },
        { account: "4000", amount: -max },
        { account: "4000", amount: -max },
      ],
    });
    expect(ok.seq).toBe(1);
    expect(verifyChain(db).ok).toBe(true);
  });

  it.each([
    ["unknown account", { account: "9999" }, "TOTEBOX_ERR_UNKNOWN_ACCOUNT"],
    ["unknown counterparty", { counterparty: "ghost" }, "TOTEBOX_ERR_UNKNOWN_COUNTERPARTY"],
    ["fractional amount", { amount: 10.5 }, "TOTEBOX_ERR_BAD_AMOUNT"],
    ["unsafe amount", { amount: 2 ** 53 }, "TOTEBOX_ERR_BAD_AMOUNT"],
    ["NaN amount", { amount: Number.NaN }, "TOTEBOX_ERR_BAD_AMOUNT"],
    ["empty account", { account: "" }, "TOTEBOX_ERR_INVALID_TX"],
  ] as const)("refuses a line with an %s", (_name, patch, code) => {
    const db = archive();
    const tx = sale(1);
    const lines = [{ ...tx.lines[0]!, ...patch }, tx.lines[1]!];
    const e = refusal(() => appendTransaction(db, { ...tx, lines }));
    expect(e.code).toBe(code);
    expect(chainHead(db).seq).toBe(0);
  });

  it.each(["2024-02-30", "2023-02-29", "2024-1-05", "24-01-05", "2024-13-01", "", "2024-01-05T00:00"])(
    "refuses the date %j",
    (date) => {
      const db = archive();
      expect(refusal(() => appendTransaction(db, { ...sale(1), date })).code).toBe("TOTEBOX_ERR_BAD_DATE");
    },
  );

  it("refuses fewer than two lines, a duplicate id, and oversize fields", () => {
    const db = archive();
    expect(refusal(() => appendTransaction(db, { ...sale(1), lines: [] })).code).toBe(
      "TOTEBOX_ERR_INVALID_TX",
    );
    expect(
      refusal(() => appendTransaction(db, { ...sale(1), lines: [{ account: "1000", amount: 0 }] })).code,
    ).toBe("TOTEBOX_ERR_INVALID_TX");
    appendTransaction(db, sale(1));
    const dup = refusal(() => appendTransaction(db, sale(1)));
    expect(dup.code).toBe("TOTEBOX_ERR_DUPLICATE_TX");
    expect(refusal(() => appendTransaction(db, { ...sale(2), id: "x".repeat(129) })).code).toBe(
      "TOTEBOX_ERR_INVALID_TX",
    );
    expect(refusal(() => appendTransaction(db, { ...sale(2), memo: "m".repeat(2001) })).code).toBe(
      "TOTEBOX_ERR_INVALID_TX",
    );
    expect(chainHead(db).seq).toBe(1);
  });

  it("appends a batch all or nothing", () => {
    const db = archive();
    appendTransaction(db, sale(0));
    const bad = {
      ...sale(3),
      lines: [
        { account: "1000", amount: 5 },
        { account: "4000", amount: -4 },
      ],
    };
    expect(refusal(() => appendTransactions(db, [sale(1), sale(2), bad, sale(4)])).code).toBe(
      "TOTEBOX_ERR_UNBALANCED",
    );
    expect(chainHead(db).seq).toBe(1);
    const r = appendTransactions(db, [sale(1), sale(2)]);
    expect(r.count).toBe(2);
    expect(r.first?.seq).toBe(2);
    expect(r.last?.seq).toBe(3);
    expect(verifyChain(db)).toMatchObject({ ok: true, entries: 3, lines: 6, head: r.last!.hash });
  });

  it("nests inside a caller's transaction and rolls back with it", () => {
    const db = archive();
    expect(() =>
      db.transaction(() => {
        appendTransaction(db, sale(1));
        throw new Error("caller changed its mind");
      })(),
    ).toThrow("caller changed its mind");
    expect(chainHead(db).seq).toBe(0);
    expect(verifyChain(db)).toEqual({ ok: true, entries: 0, lines: 0, head: GENESIS_HASH });
  });
});

describe("parseJournalTx", () => {
  it("accepts a well-formed value and refuses wrong shapes", () => {
    const tx = parseJournalTx(JSON.parse(JSON.stringify(sale(1))));
    expect(tx.lines[0]).toEqual({ account: "1100", amount: 1001, counterparty: "c1", memo: "invoice" });
    for (const bad of [
      null,
      [],
      { ...sale(1), extra: 1 },
      { ...sale(1), lines: "x" },
      {
        ...sale(1),
        lines: [
          { account: "1", amount: "5" },
          { account: "2", amount: -5 },
        ],
      },
      {
        ...sale(1),
        lines: [
          { account: "1", amount: 5, evil: true },
          { account: "2", amount: -5 },
        ],
      },
      { ...sale(1), date: 20240101 },
    ]) {
      expect(() => parseJournalTx(bad)).toThrow(ToteboxError);
    }
    expect(() =>
      parseJournalTx({
        ...sale(1),
        lines: [
          { account: "1", amount: 5 },
          { account: "2", amount: -4 },
        ],
      }),
    ).toThrow(expect.objectContaining({ code: "TOTEBOX_ERR_UNBALANCED" }));
  });
});

describe("isIsoDate", () => {
  it("accepts calendar dates only", () => {
    expect(isIsoDate("2024-02-29")).toBe(true);
    expect(isIsoDate("0001-01-01")).toBe(true);
    expect(isIsoDate("2100-02-29")).toBe(false);
    expect(isIsoDate("0000-01-01")).toBe(false);
    expect(isIsoDate(20240101)).toBe(false);
  });
});

describe("verifyChain", () => {
  function tenEntries(): Db {
    const db = archive();
    appendTransactions(
      db,
      Array.from({ length: 10 }, (_, i) => sale(i + 1)),
    );
    return db;
  }

  it("reports an intact chain with its head", () => {
    const db = tenEntries();
    const r = verifyChain(db);
    expect(r).toEqual({ ok: true, entries: 10, lines: 20, head: chainHead(db).hash });
    expect(assertChainIntact(db).entries).toBe(10);
  });

  it("finds an altered line amount (balanced or not) at its entry", () => {
    const db = tenEntries();
    db.close();
    tamper("UPDATE journal_lines SET amount = amount + 500 WHERE tx_seq = 5 AND line_no = 1");
    tamper("UPDATE journal_lines SET amount = amount - 500 WHERE tx_seq = 5 AND line_no = 2");
    const reopened = openArchiveDatabase(file);
    open.push(reopened);
    expect(verifyChain(reopened, { checkDailyTotals: false })).toMatchObject({
      ok: false,
      firstBrokenSeq: 5,
      check: "hash",
      entriesChecked: 4,
    });
    tamper("UPDATE journal_lines SET amount = amount + 1 WHERE tx_seq = 3 AND line_no = 2");
    expect(verifyChain(reopened)).toMatchObject({ ok: false, firstBrokenSeq: 3, check: "balance" });
    const e = refusal(() => assertChainIntact(reopened));
    expect(e.code).toBe("TOTEBOX_ERR_CHAIN_BROKEN");
    expect(e.detail).toMatchObject({ firstBrokenSeq: 3, check: "balance" });
  });

  it("finds an altered header field, account or counterparty", () => {
    for (const [sql, seq] of [
      ["UPDATE journal_tx SET memo = 'nothing to see' WHERE seq = 7", 7],
      ["UPDATE journal_tx SET date = '2024-03-01' WHERE seq = 9", 9],
      ["UPDATE journal_lines SET account = '1000' WHERE tx_seq = 2 AND line_no = 1", 2],
      ["UPDATE journal_lines SET counterparty = NULL WHERE tx_seq = 6 AND line_no = 1", 6],
    ] as const) {
      const db = tenEntries();
      db.close();
      tamper(sql);
      const reopened = openArchiveDatabase(file);
      expect(verifyChain(reopened, { checkDailyTotals: false }), sql).toMatchObject({
        ok: false,
        firstBrokenSeq: seq,
        check: "hash",
      });
      reopened.close();
      fs.rmSync(file);
      fs.rmSync(`${file}-wal`, { force: true });
      fs.rmSync(`${file}-shm`, { force: true });
    }
  });

  it("finds a removed entry, and a rewritten entry whose hash was recomputed by the forger", () => {
    const db = tenEntries();
    db.close();
    tamper("DELETE FROM journal_lines WHERE tx_seq = 4");
    tamper("DELETE FROM journal_tx WHERE seq = 4");
    const a = openArchiveDatabase(file);
    open.push(a);
    expect(verifyChain(a)).toMatchObject({
      ok: false,
      firstBrokenSeq: 4,
      check: "sequence",
      entriesChecked: 3,
    });
    a.close();

    // Rebuild, then forge entry 6 consistently (new amount, hash recomputed): entry 7 no longer links.
    for (const f of [file, `${file}-wal`, `${file}-shm`]) fs.rmSync(f, { force: true });
    const b = tenEntries();
    const six = readTransaction(b, { seq: 6 })!;
    b.close();
    const forgedLines = six.lines.map((l) => ({ ...l, amount: l.amount * 10 }));
    const forged = entryHash({ ...six, seq: 6 }, forgedLines);
    tamper("UPDATE journal_lines SET amount = amount * 10 WHERE tx_seq = 6");
    tamper("UPDATE journal_tx SET hash = ? WHERE seq = 6", forged);
    const c = openArchiveDatabase(file);
    open.push(c);
    expect(verifyChain(c, { checkDailyTotals: false })).toMatchObject({
      ok: false,
      firstBrokenSeq: 7,
      check: "link",
    });
  });

  it("finds lines that belong to no entry, a BLOB where text belongs, and tampered daily totals", () => {
    const db = tenEntries();
    db.close();
    tamper("INSERT INTO journal_lines (tx_seq, line_no, account, amount) VALUES (42, 1, '1000', 5)");
    let d = openArchiveDatabase(file);
    expect(verifyChain(d)).toMatchObject({ ok: false, firstBrokenSeq: 42, check: "orphan-lines" });
    d.close();
    tamper("DELETE FROM journal_lines WHERE tx_seq = 42");
    tamper("UPDATE journal_lines SET memo = x'00ff' WHERE tx_seq = 8 AND line_no = 2");
    d = openArchiveDatabase(file);
    expect(verifyChain(d)).toMatchObject({ ok: false, firstBrokenSeq: 8, check: "lines" });
    d.close();
    tamper("UPDATE journal_lines SET memo = '' WHERE tx_seq = 8 AND line_no = 2");
    d = openArchiveDatabase(file);
    expect(verifyChain(d).ok).toBe(true);
    d.close();
    tamper(
      "UPDATE journal_daily_totals SET amount = amount + 100 WHERE date = (SELECT date FROM journal_tx WHERE seq = 3) AND account = '4000'",
    );
    d = openArchiveDatabase(file);
    open.push(d);
    const r = verifyChain(d);
    expect(r).toMatchObject({ ok: false, check: "daily-totals" });
    expect(verifyChain(d, { checkDailyTotals: false }).ok).toBe(true);
  });

  it("detects any single-field change at the entry that holds it (property)", () => {
    const db = archive();
    appendTransactions(
      db,
      Array.from({ length: 12 }, (_, i) => sale(i + 1, 1000 * (i + 1))),
    );
    db.close();
    const columns = [
      ["journal_tx", "memo", "seq"],
      ["journal_tx", "source", "seq"],
      ["journal_tx", "created_at", "seq"],
      ["journal_tx", "id", "seq"],
      ["journal_lines", "memo", "tx_seq"],
      ["journal_lines", "account", "tx_seq"],
    ] as const;
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 12 }),
        fc.constantFrom(...columns),
        fc.string({ minLength: 1, maxLength: 8 }),
        (seq, [table, column, key], suffix) => {
          const copy = path.join(dir, `copy-${seq}.db`);
          const src = new Database(file);
          src.exec(`VACUUM INTO '${copy.replaceAll("'", "''")}'`);
          src.close();
          const raw = new Database(copy);
          raw.pragma("foreign_keys = OFF");
          raw.exec(`DROP TRIGGER ${table}_no_update`);
          // account values must stay existing accounts to reach the hash check, not an FK error
          const value = column === "account" ? "1000" : null;
          raw
            .prepare(
              `UPDATE ${table} SET ${column} = coalesce(?, ${column} || ?) WHERE ${key} = ?${table === "journal_lines" ? " AND line_no = 1" : ""}`,
            )
            .run(value, suffix, seq);
          raw.close();
          const check = openArchiveDatabase(copy);
          const r = verifyChain(check, { checkDailyTotals: false });
          check.close();
          for (const f of [copy, `${copy}-wal`, `${copy}-shm`]) fs.rmSync(f, { force: true });
          expect(r.ok).toBe(false);
          if (!r.ok) expect(r.firstBrokenSeq).toBe(seq);
        },
      ),
      { numRuns: 30 },
    );
  });

  it("holds any sequence of random balanced transactions (property)", () => {
    const amount = fc.integer({ min: -1_000_000_000, max: 1_000_000_000 }).filter((n) => n !== 0);
    const txArb = fc.record({
      memo: fc.string({ maxLength: 20 }),
      amounts: fc.array(amount, { minLength: 1, maxLength: 6 }),
      account: fc.constantFrom("1000", "1100", "6000"),
    });
    fc.assert(
      fc.property(fc.array(txArb, { minLength: 1, maxLength: 15 }), (txs) => {
        for (const f of [file, `${file}-wal`, `${file}-shm`]) fs.rmSync(f, { force: true });
        const db = archive();
        const inputs: JournalTxInput[] = txs.map((t, i) => {
          const total = t.amounts.reduce((s, a) => s + a, 0);
          return {
            id: `p${i}`,
            date: "2024-05-01",
            memo: t.memo,
            createdAt: "2024-05-01T00:00:00Z",
            lines: [
              ...t.amounts.map((a) => ({ account: t.account, amount: a })),
              { account: "4000", amount: -total },
            ],
          };
        });
        const r = appendTransactions(db, inputs);
        const v = verifyChain(db);
        db.close();
        open.splice(open.indexOf(db), 1);
        expect(v).toEqual({
          ok: true,
          entries: inputs.length,
          lines: inputs.reduce((s, t) => s + t.lines.length, 0),
          head: r.last!.hash,
        });
      }),
      { numRuns: 20 },
    );
  });
});

// Opt-in (TOTEBOX_LARGE_TESTS=1): 1,000,000 lines, to show verifyChain copes. Time and heap are
// printed, not asserted.
describe.skipIf(!process.env.TOTEBOX_LARGE_TESTS)("verifyChain at 1,000,000 lines", () => {
  it("verifies a million lines with bounded memory", () => {
    const db = archive();
    const perTx = 4;
    const txs = 250_000;
    function* gen(): Generator<JournalTxInput> {
      for (let i = 1; i <= txs; i++) {
        yield {
          id: `m${i}`,
          date: `2024-${String((i % 12) + 1).padStart(2, "0")}-15`,
          createdAt: "2024-12-31T00:00:00Z",
          lines: Array.from({ length: perTx }, (_, l) => ({
            account: l % 2 === 0 ? "1100" : "4000",
            amount: l % 2 === 0 ? 100 + i : -(100 + i),
            counterparty: l === 0 ? "c1" : null,
            memo: "line",
          })),
        };
      }
    }
    appendTransactions(db, gen());
    const heapBefore = process.memoryUsage().heapUsed;
    const t0 = performance.now();
    const r = verifyChain(db);
    const ms = Math.round(performance.now() - t0);
    const heapAfter = process.memoryUsage().heapUsed;
    console.log(
      `verifyChain: ${r.ok ? "ok" : "broken"} over ${txs * perTx} lines in ${ms} ms; ` +
        `heap ${Math.round(heapBefore / 1e6)} MB before, ${Math.round(heapAfter / 1e6)} MB after (rows are streamed)`,
    );
    expect(r).toMatchObject({ ok: true, entries: txs, lines: txs * perTx });
  }, 600_000);
});

describe("text that cannot be recorded faithfully", () => {
  it("refuses NUL and unpaired surrogates in a transaction's text, before the chain is touched", async () => {
    const { openArchiveDatabase } = await import("./schema.ts");
    const { mkdtempSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const { appendTransaction, verifyChain } = await import("./ledger.ts");
    const dir = mkdtempSync(join(tmpdir(), "ledger-text-"));
    try {
      const db = openArchiveDatabase(join(dir, "a.db"));
      for (const id of ["x\ud800", "x\udc00y", "nul\u0000"]) {
        let err: { code?: unknown; message?: unknown } = {};
        try {
          appendTransaction(db, { id, date: "2026-01-01", lines: [] } as never);
        } catch (e) {
          err = e as typeof err;
        }
        expect(err.code).toBe("TOTEBOX_ERR_INVALID_TX");
        expect(String(err.message)).toMatch(/NUL or an unpaired surrogate/);
      }
      expect(verifyChain(db).ok).toBe(true);
      db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
