import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isToteboxError, ToteboxError } from "./errors.ts";
import { addAccounts, addCounterparties, appendTransaction } from "./ledger.ts";
import {
  APPEND_ONLY_GUARDS,
  type Db,
  initEntity,
  missingGuards,
  openArchiveDatabase,
  readEntity,
  SCHEMA_VERSION,
  toToteboxError,
  userVersion,
} from "./schema.ts";

let dir: string;
let file: string;
const open: Db[] = [];

function track(db: Db): Db {
  open.push(db);
  return db;
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "totebox-schema-"));
  file = path.join(dir, "archive.db");
});

afterEach(() => {
  for (const db of open.splice(0)) if (db.open) db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Runs `fn` and returns the ToteboxError it throws (mapped from SQLite when needed). */
function refusal(fn: () => unknown): ToteboxError {
  try {
    fn();
  } catch (e) {
    const mapped = toToteboxError(e);
    if (mapped instanceof ToteboxError) return mapped;
    throw e;
  }
  throw new Error("expected a refusal");
}

function seeded(): Db {
  const db = track(openArchiveDatabase(file));
  initEntity(db, {
    id: "acme",
    kind: "company",
    name: "Acme Ltd",
    currency: "EUR",
    created: "2024-01-01T00:00:00Z",
  });
  addAccounts(db, [
    { code: "1000", name: "Cash", class: "asset", subtype: "cash" },
    { code: "4000", name: "Sales", class: "income", subtype: "revenue" },
  ]);
  addCounterparties(db, [{ id: "c1", name: "Customer One", kind: "customer" }]);
  for (let i = 1; i <= 3; i++) {
    appendTransaction(db, {
      id: `t${i}`,
      date: `2024-02-0${i}`,
      lines: [
        { account: "1000", amount: 100 * i },
        { account: "4000", amount: -100 * i, counterparty: "c1" },
      ],
    });
  }
  return db;
}

describe("openArchiveDatabase", () => {
  it("creates the file in WAL mode with foreign keys on, synchronous NORMAL, at the current version", () => {
    const db = track(openArchiveDatabase(file));
    expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    expect(db.pragma("foreign_keys", { simple: true })).toBe(1);
    expect(db.pragma("synchronous", { simple: true })).toBe(1);
    expect(db.pragma("recursive_triggers", { simple: true })).toBe(1);
    expect(userVersion(db)).toBe(SCHEMA_VERSION);
    const tables = db
      .prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
      .all()
      .map((t) => t.name);
    expect(tables).toEqual(
      expect.arrayContaining([
        "entity",
        "accounts",
        "counterparties",
        "journal_tx",
        "journal_lines",
        "journal_daily_totals",
        "properties",
        "units",
        "leases",
        "budgets",
        "staged_entries",
        "command_receipts",
      ]),
    );
    expect(missingGuards(db)).toEqual([]);
  });

  it("reopens an existing archive without migrating it again and keeps its records", () => {
    seeded().close();
    const db = track(openArchiveDatabase(file, { create: false }));
    expect(userVersion(db)).toBe(SCHEMA_VERSION);
    expect(readEntity(db)?.id).toBe("acme");
    expect(db.prepare("SELECT count(*) AS n FROM journal_tx").get()).toEqual({ n: 3 });
  });

  it("refuses a file written by a newer build, and a missing file when create is false", () => {
    const raw = new Database(file);
    raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    expect(refusal(() => openArchiveDatabase(file)).code).toBe("TOTEBOX_ERR_SCHEMA_VERSION");
    expect(refusal(() => openArchiveDatabase(path.join(dir, "nope.db"), { create: false })).code).toBe(
      "TOTEBOX_ERR_DB_OPEN",
    );
  });

  it("opens read-only connections that cannot write, and refuses an unmigrated file read-only", () => {
    seeded().close();
    const ro = track(openArchiveDatabase(file, { readonly: true }));
    expect(ro.prepare("SELECT count(*) AS n FROM journal_lines").get()).toEqual({ n: 6 });
    expect(() =>
      ro.prepare("INSERT INTO accounts (code, name, class) VALUES ('9', 'x', 'asset')").run(),
    ).toThrow();
    const blank = path.join(dir, "blank.db");
    new Database(blank).close();
    expect(refusal(() => openArchiveDatabase(blank, { readonly: true })).code).toBe(
      "TOTEBOX_ERR_SCHEMA_VERSION",
    );
  });
});

describe("entity", () => {
  it("holds exactly one entity whose identity and currency never change", () => {
    const db = seeded();
    expect(readEntity(db)).toEqual({
      id: "acme",
      kind: "company",
      name: "Acme Ltd",
      currency: "EUR",
      tags: {},
      created: "2024-01-01T00:00:00Z",
    });
    expect(refusal(() => initEntity(db, { id: "other", kind: "fund", name: "Other" })).code).toBe(
      "TOTEBOX_ERR_ENTITY",
    );
    expect(refusal(() => db.prepare("UPDATE entity SET kind = 'fund'").run()).code).toBe(
      "TOTEBOX_ERR_ENTITY",
    );
    expect(refusal(() => db.prepare("UPDATE entity SET currency = 'USD'").run()).code).toBe(
      "TOTEBOX_ERR_ENTITY",
    );
    expect(refusal(() => db.prepare("DELETE FROM entity").run()).code).toBe("TOTEBOX_ERR_APPEND_ONLY");
    db.prepare("UPDATE entity SET name = 'Acme Group', tags = ? ").run(JSON.stringify({ region: "north" }));
    expect(readEntity(db)).toMatchObject({ name: "Acme Group", tags: { region: "north" } });
  });

  it("validates kind, currency and tags", () => {
    const db = track(openArchiveDatabase(file));
    expect(refusal(() => initEntity(db, { id: "x", kind: "castle" as "fund", name: "X" })).code).toBe(
      "TOTEBOX_ERR_ENTITY",
    );
    expect(refusal(() => initEntity(db, { id: "x", kind: "fund", name: "X", currency: "euro" })).code).toBe(
      "TOTEBOX_ERR_ENTITY",
    );
    expect(readEntity(db)).toBeUndefined();
    initEntity(db, { id: "x", kind: "property", name: "X", tags: { city: "Lyon" } });
    expect(readEntity(db)?.tags).toEqual({ city: "Lyon" });
  });
});

describe("append-only journal", () => {
  it("refuses UPDATE and DELETE on journal headers and lines", () => {
    const db = seeded();
    for (const sql of [
      "UPDATE journal_tx SET memo = 'changed' WHERE seq = 2",
      "DELETE FROM journal_tx WHERE seq = 3",
      "UPDATE journal_lines SET amount = 1 WHERE tx_seq = 1 AND line_no = 1",
      "DELETE FROM journal_lines WHERE tx_seq = 1",
    ]) {
      const e = refusal(() => db.prepare(sql).run());
      expect(e.code, sql).toBe("TOTEBOX_ERR_APPEND_ONLY");
    }
    expect(db.prepare("SELECT count(*) AS n FROM journal_lines").get()).toEqual({ n: 6 });
  });

  it("refuses INSERT OR REPLACE, which would otherwise delete a header without firing DELETE triggers", () => {
    const db = seeded();
    const head = db
      .prepare<[], { seq: number; hash: string }>(
        "SELECT seq, hash FROM journal_tx ORDER BY seq DESC LIMIT 1",
      )
      .get()!;
    const e = refusal(() =>
      db
        .prepare(
          "INSERT OR REPLACE INTO journal_tx (seq, id, date, memo, source, created_at, prev_hash, hash) VALUES (?, 't1', '2024-03-01', '', 'x', 'x', ?, ?)",
        )
        .run(head.seq + 1, head.hash, "f".repeat(64)),
    );
    expect(e.code).toBe("TOTEBOX_ERR_APPEND_ONLY");
    expect(db.prepare("SELECT count(*) AS n FROM journal_tx").get()).toEqual({ n: 3 });
  });

  it("accepts a raw header only at the head of the chain, and lines only for the newest entry", () => {
    const db = seeded();
    const ins = db.prepare(
      "INSERT INTO journal_tx (seq, id, date, memo, source, created_at, prev_hash, hash) VALUES (?, ?, '2024-03-01', '', 'raw', 'x', ?, ?)",
    );
    expect(refusal(() => ins.run(7, "gap", "0".repeat(64), "a".repeat(64))).code).toBe(
      "TOTEBOX_ERR_CHAIN_BROKEN",
    );
    expect(refusal(() => ins.run(4, "badlink", "b".repeat(64), "a".repeat(64))).code).toBe(
      "TOTEBOX_ERR_CHAIN_BROKEN",
    );
    expect(
      refusal(() =>
        db
          .prepare("INSERT INTO journal_lines (tx_seq, line_no, account, amount) VALUES (1, 3, '1000', 5)")
          .run(),
      ).code,
    ).toBe("TOTEBOX_ERR_APPEND_ONLY");
    expect(
      refusal(() =>
        db
          .prepare("INSERT INTO journal_lines (tx_seq, line_no, account, amount) VALUES (3, 5, '1000', 5)")
          .run(),
      ).code,
    ).toBe("TOTEBOX_ERR_INVALID_TX");
  });

  it("refuses a new header while the previous entry does not balance", () => {
    const db = seeded();
    // A raw line appended to the newest entry unbalances it ...
    db.prepare("INSERT INTO journal_lines (tx_seq, line_no, account, amount) VALUES (3, 3, '1000', 7)").run();
    // ... so the next entry cannot be chained after it.
    const e = refusal(() =>
      appendTransaction(db, {
        id: "t4",
        date: "2024-02-04",
        lines: [
          { account: "1000", amount: 1 },
          { account: "4000", amount: -1 },
        ],
      }),
    );
    expect(e.code).toBe("TOTEBOX_ERR_UNBALANCED");
  });

  it("keeps daily totals per date and account in step with every line", () => {
    const db = seeded();
    const rows = db
      .prepare("SELECT date, account, amount, lines FROM journal_daily_totals ORDER BY date, account")
      .all();
    expect(rows).toEqual([
      { date: "2024-02-01", account: "1000", amount: 100, lines: 1 },
      { date: "2024-02-01", account: "4000", amount: -100, lines: 1 },
      { date: "2024-02-02", account: "1000", amount: 200, lines: 1 },
      { date: "2024-02-02", account: "4000", amount: -200, lines: 1 },
      { date: "2024-02-03", account: "1000", amount: 300, lines: 1 },
      { date: "2024-02-03", account: "4000", amount: -300, lines: 1 },
    ]);
    expect(refusal(() => db.prepare("DELETE FROM journal_daily_totals").run()).code).toBe(
      "TOTEBOX_ERR_APPEND_ONLY",
    );
  });

  it("lists dropped guards", () => {
    seeded().close();
    const raw = new Database(file);
    raw.exec("DROP TRIGGER journal_lines_no_update; DROP TRIGGER command_receipts_no_delete");
    raw.close();
    const db = track(openArchiveDatabase(file));
    expect(missingGuards(db)).toEqual(["journal_lines_no_update", "command_receipts_no_delete"]);
    expect(APPEND_ONLY_GUARDS.length).toBeGreaterThan(5);
  });
});

describe("master data", () => {
  it("never deletes or reclassifies accounts and counterparties, but allows renaming", () => {
    const db = seeded();
    expect(refusal(() => db.prepare("DELETE FROM accounts WHERE code = '4000'").run()).code).toBe(
      "TOTEBOX_ERR_APPEND_ONLY",
    );
    expect(
      refusal(() => db.prepare("UPDATE accounts SET class = 'expense' WHERE code = '4000'").run()).code,
    ).toBe("TOTEBOX_ERR_APPEND_ONLY");
    expect(
      refusal(() => db.prepare("UPDATE counterparties SET kind = 'vendor' WHERE id = 'c1'").run()).code,
    ).toBe("TOTEBOX_ERR_APPEND_ONLY");
    db.prepare("UPDATE accounts SET name = 'Product sales' WHERE code = '4000'").run();
    expect(refusal(() => addAccounts(db, [{ code: "1000", name: "dup", class: "asset" }])).code).toBe(
      "TOTEBOX_ERR_CONSTRAINT",
    );
    expect(
      refusal(() => addCounterparties(db, [{ id: "peer", name: "Peer", kind: "entity" }])).code,
      "an entity counterparty needs entity_ref",
    ).toBe("TOTEBOX_ERR_CONSTRAINT");
    addCounterparties(db, [{ id: "peer", name: "Peer", kind: "entity", entityRef: "peer-co" }]);
    expect(
      refusal(() =>
        addCounterparties(db, [{ id: "peer2", name: "Peer again", kind: "entity", entityRef: "peer-co" }]),
      ).code,
      "one counterparty per peer entity",
    ).toBe("TOTEBOX_ERR_CONSTRAINT");
  });

  it("refuses overlapping leases on a unit, on insert and on update", () => {
    const db = seeded();
    db.exec(`
      INSERT INTO properties (id, name, property_type) VALUES ('p1', 'Elm Court', 'residential');
      INSERT INTO units (id, property_id, unit_type, area_sqm, market_rent) VALUES ('u1', 'p1', '1br', 48.5, 120000);
      INSERT INTO counterparties (id, name, kind) VALUES ('ten1', 'Ann', 'tenant'), ('ten2', 'Bob', 'tenant');
      INSERT INTO leases (id, unit_id, tenant_id, start_date, end_date, monthly_rent)
        VALUES ('l1', 'u1', 'ten1', '2024-01-01', '2024-12-31', 120000);
      INSERT INTO leases (id, unit_id, tenant_id, start_date, end_date, monthly_rent)
        VALUES ('l2', 'u1', 'ten2', '2025-01-01', NULL, 125000);
    `);
    const overlap = db.prepare(
      "INSERT INTO leases (id, unit_id, tenant_id, start_date, end_date, monthly_rent) VALUES ('l3', 'u1', 'ten2', ?, ?, 1)",
    );
    expect(refusal(() => overlap.run("2024-12-31", "2025-01-15")).code).toBe("TOTEBOX_ERR_LEASE_OVERLAP");
    expect(refusal(() => overlap.run("2030-01-01", null)).code).toBe("TOTEBOX_ERR_LEASE_OVERLAP");
    expect(
      refusal(() => db.prepare("UPDATE leases SET end_date = '2025-02-01' WHERE id = 'l1'").run()).code,
    ).toBe("TOTEBOX_ERR_LEASE_OVERLAP");
    // Ending a lease early is an ordinary edit.
    db.prepare("UPDATE leases SET end_date = '2024-06-30' WHERE id = 'l1'").run();
    expect(
      refusal(() => db.prepare("UPDATE leases SET start_date = '2024-02-30' WHERE id = 'l1'").run()).code,
    ).toBe("TOTEBOX_ERR_CONSTRAINT");
  });

  it("decides a staged entry once, and keeps command receipts append-only", () => {
    const db = seeded();
    db.prepare(
      "INSERT INTO staged_entries (id, staged_at, proposed_by, entry) VALUES ('s1', '2024-03-01T00:00:00Z', 'op', ?)",
    ).run(JSON.stringify({ id: "x", date: "2024-03-01", lines: [] }));
    expect(
      refusal(() =>
        db.prepare("UPDATE staged_entries SET status = 'approved', decided_at = 'now' WHERE id = 's1'").run(),
      ).code,
      "approved needs the applied entry",
    ).toBe("TOTEBOX_ERR_CONSTRAINT");
    db.prepare(
      "UPDATE staged_entries SET status = 'rejected', decided_at = 'now', decided_by = 'owner' WHERE id = 's1'",
    ).run();
    expect(
      refusal(() => db.prepare("UPDATE staged_entries SET status = 'pending', decided_at = NULL").run()).code,
    ).toBe("TOTEBOX_ERR_APPEND_ONLY");
    expect(refusal(() => db.prepare("DELETE FROM staged_entries").run()).code).toBe(
      "TOTEBOX_ERR_APPEND_ONLY",
    );

    db.prepare(
      "INSERT INTO command_receipts (idempotency_key, command, args_hash, receipt, created_at) VALUES ('k1', 'snapshot', 'h', x'01', 'now')",
    ).run();
    expect(refusal(() => db.prepare("UPDATE command_receipts SET receipt = x'02'").run()).code).toBe(
      "TOTEBOX_ERR_APPEND_ONLY",
    );
    expect(refusal(() => db.prepare("DELETE FROM command_receipts").run()).code).toBe(
      "TOTEBOX_ERR_APPEND_ONLY",
    );
    expect(
      refusal(() =>
        db
          .prepare(
            "INSERT INTO command_receipts (idempotency_key, command, args_hash, receipt, created_at) VALUES ('k1', 'snapshot', 'h2', x'03', 'now')",
          )
          .run(),
      ).code,
    ).toBe("TOTEBOX_ERR_CONSTRAINT");
  });
});

describe("toToteboxError", () => {
  it("maps only our trigger codes, and leaves non-constraint errors alone", () => {
    const db = seeded();
    const other = new Error("disk I/O error");
    expect(toToteboxError(other)).toBe(other);
    const e = refusal(() =>
      db.prepare("INSERT INTO accounts (code, name, class) VALUES ('1', 'x', 'nonsense')").run(),
    );
    expect(e.code).toBe("TOTEBOX_ERR_CONSTRAINT");
    expect(isToteboxError(e, "TOTEBOX_ERR_CONSTRAINT")).toBe(true);
  });
});
