import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ToteboxError } from "./errors.ts";
import { CsvParser, type CsvRecord, importFile, importText, parseCsv } from "./import.ts";
import {
  addAccounts,
  addCounterparties,
  appendTransaction,
  chainHead,
  readTransaction,
  verifyChain,
} from "./ledger.ts";
import { type Db, initEntity, openArchiveDatabase } from "./schema.ts";

let dir: string;
let db: Db;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "totebox-import-"));
  db = openArchiveDatabase(path.join(dir, "archive.db"));
  initEntity(db, { id: "elm", kind: "property", name: "Elm Holdings" });
  addAccounts(db, [
    { code: "1000", name: "Cash", class: "asset", subtype: "cash" },
    { code: "1100", name: "Rent receivable", class: "asset", subtype: "receivable" },
    { code: "4000", name: "Rental income", class: "income", subtype: "rent" },
    { code: "6000", name: "Repairs", class: "expense", subtype: "operating" },
  ]);
  addCounterparties(db, [{ id: "v1", name: "Acme Plumbing", kind: "vendor" }]);
});

afterEach(() => {
  db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function refusal(fn: () => unknown): ToteboxError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ToteboxError) return e;
    throw e;
  }
  throw new Error("expected a refusal");
}

const counts = (): { tx: number; lines: number; units: number; leases: number } =>
  db
    .prepare<[], { tx: number; lines: number; units: number; leases: number }>(
      "SELECT (SELECT count(*) FROM journal_tx) AS tx, (SELECT count(*) FROM journal_lines) AS lines, (SELECT count(*) FROM units) AS units, (SELECT count(*) FROM leases) AS leases",
    )
    .get()!;

describe("CSV parser", () => {
  it("reads quoted fields with commas, doubled quotes and newlines, and reports record start lines", () => {
    const text = [
      "a,b,c",
      '1,"two, with comma","say ""hi"""',
      '2,"multi',
      'line",x',
      "3,,",
      "",
      "4,last,row",
    ].join("\n");
    expect(parseCsv(text)).toEqual([
      { line: 1, fields: ["a", "b", "c"] },
      { line: 2, fields: ["1", "two, with comma", 'say "hi"'] },
      { line: 3, fields: ["2", "multi\nline", "x"] },
      { line: 5, fields: ["3", "", ""] },
      { line: 7, fields: ["4", "last", "row"] },
    ]);
  });

  it("accepts CRLF, CR and LF, a BOM, and a last record without a line break", () => {
    expect(parseCsv('\uFEFFa,b\r\n"x\r\ny",2\rz,3\n\r\nq,""')).toEqual([
      { line: 1, fields: ["a", "b"] },
      { line: 2, fields: ["x\r\ny", "2"] },
      { line: 4, fields: ["z", "3"] },
      { line: 6, fields: ["q", ""] },
    ]);
  });

  it.each([
    ['a,b\n1,x"y\n', 2, "quote inside an unquoted field"],
    ['a,b\n1,"x"y\n', 2, "after a closing quote"],
    ['a,b\n1,2\n3,"never\nclosed\n', 3, "not closed"],
  ])("refuses malformed CSV %j at its line", (text, line, reason) => {
    const e = refusal(() => parseCsv(text));
    expect(e.code).toBe("TOTEBOX_ERR_IMPORT_ROW");
    expect(e.detail?.line).toBe(line);
    expect(String(e.detail?.reason)).toContain(reason);
  });

  it("bounds fields, records and field counts", () => {
    expect(refusal(() => parseCsv(`a\n${"x".repeat(20)}\n`, { maxFieldChars: 10 })).detail?.line).toBe(2);
    expect(refusal(() => parseCsv("a,b,c,d\n", { maxFields: 3 })).code).toBe("TOTEBOX_ERR_IMPORT_ROW");
    expect(refusal(() => parseCsv(`${"x,".repeat(10)}x\n`, { maxRecordChars: 8 })).code).toBe(
      "TOTEBOX_ERR_IMPORT_ROW",
    );
  });

  it("gives the same records however the text is cut into chunks (property)", () => {
    const field = fc.string({
      unit: fc.constantFrom("a", "b", ",", '"', "\n", "\r", " ", "é", "🏠"),
      maxLength: 6,
    });
    const records = fc.array(fc.array(field, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 8 });
    fc.assert(
      fc.property(
        records,
        fc.constantFrom("\n", "\r\n", "\r"),
        fc.array(fc.nat(), { maxLength: 6 }),
        (recs, eol, cuts) => {
          // A record of one empty field would be a blank line, which CSV cannot tell apart: quote it.
          const text = recs
            .map((r) =>
              r
                .map((f) =>
                  f === "" && r.length === 1
                    ? '""'
                    : /[",\r\n]/.test(f) || f === ""
                      ? `"${f.replaceAll('"', '""')}"`
                      : f,
                )
                .join(","),
            )
            .join(eol);
          const positions = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
          const got: CsvRecord[] = [];
          const p = new CsvParser((r) => got.push(r));
          let from = 0;
          for (const at of [...positions, text.length]) {
            p.push(text.slice(from, at));
            from = at;
          }
          p.end();
          expect(got.map((r) => r.fields)).toEqual(recs);
          expect(got).toEqual(parseCsv(text));
        },
      ),
      { numRuns: 300 },
    );
  });
});

const JOURNAL_CSV = [
  "tx_id,date,account,counterparty,amount,memo",
  "r-1,2024-01-01,1100,,150000,January rent",
  "r-1,2024-01-01,4000,,-150000,",
  'p-1,2024-01-09,6000,v1,12550,"Leak, flat 2"',
  "p-1,2024-01-09,1000,,-12550,",
  "",
].join("\n");

describe("journal import", () => {
  it("imports consecutive rows with the same tx_id as one balanced transaction", () => {
    const r = importText(db, JOURNAL_CSV, {
      kind: "journal",
      format: "csv",
      createdAt: "2024-02-01T00:00:00Z",
    });
    expect(r).toMatchObject({ rows: 4, transactions: 2, lines: 4, firstSeq: 1, lastSeq: 2 });
    const p1 = readTransaction(db, { id: "p-1" })!;
    expect(p1).toMatchObject({ date: "2024-01-09", source: "import", createdAt: "2024-02-01T00:00:00Z" });
    expect(p1.lines[0]).toEqual({
      lineNo: 1,
      account: "6000",
      counterparty: "v1",
      amount: 12550,
      memo: "Leak, flat 2",
    });
    expect(verifyChain(db).ok).toBe(true);
  });

  it.each([
    ["unbalanced transaction", "p-1,2024-01-09,1000,,-12500,", 4, "does not balance"],
    ["decimal amount", "p-1,2024-01-09,1000,,-125.50,", 5, "integer number of minor units"],
    ["bad date", "p-1,2024-01-32,1000,,-12550,", 5, "calendar date"],
    ["unknown account", "p-1,2024-01-09,1999,,-12550,", 5, "not in the chart of accounts"],
    ["unknown counterparty", "p-1,2024-01-09,1000,ghost,-12550,", 5, "counterparty ghost"],
    ["date differing inside a transaction", "p-1,2024-01-10,1000,,-12550,", 5, "differs"],
    ["missing field", "p-1,2024-01-09,1000,,-12550", 5, "expected 6 fields"],
    ["empty tx_id", ",2024-01-09,1000,,-12550,", 5, "tx_id is empty"],
  ])("refuses a %s with its line and applies nothing", (_name, badRow, line, reason) => {
    const text = JOURNAL_CSV.trimEnd().split("\n").slice(0, 4).concat(badRow).join("\n");
    const e = refusal(() => importText(db, text, { kind: "journal", format: "csv" }));
    expect(e.code).toBe("TOTEBOX_ERR_IMPORT_ROW");
    expect(e.detail?.line).toBe(line);
    expect(String(e.detail?.reason)).toContain(reason);
    expect(counts()).toMatchObject({ tx: 0, lines: 0 });
  });

  it("refuses a tx_id that comes back after another transaction, or is already recorded", () => {
    const text = `${JOURNAL_CSV}r-1,2024-01-01,1100,,1,\nr-1,2024-01-01,4000,,-1,\n`;
    const e = refusal(() => importText(db, text, { kind: "journal", format: "csv" }));
    expect(e.detail).toMatchObject({ line: 6 });
    expect(String(e.detail?.reason)).toContain("appears again");
    appendTransaction(db, {
      id: "p-1",
      date: "2023-12-31",
      lines: [
        { account: "1000", amount: 1 },
        { account: "4000", amount: -1 },
      ],
    });
    const dup = refusal(() => importText(db, JOURNAL_CSV, { kind: "journal", format: "csv" }));
    expect(dup.detail).toMatchObject({ line: 4 });
    expect(String(dup.detail?.reason)).toContain("already recorded");
    expect(chainHead(db).seq).toBe(1);
  });

  it("refuses unknown, duplicate or missing header columns at line 1", () => {
    for (const header of [
      "tx_id,date,account,amount,ammount",
      "tx_id,date,account,amount,amount",
      "tx_id,date,account",
    ]) {
      const e = refusal(() => importText(db, `${header}\n`, { kind: "journal", format: "csv" }));
      expect(e.detail?.line, header).toBe(1);
    }
    expect(refusal(() => importText(db, "", { kind: "journal", format: "csv" })).detail?.reason).toContain(
      "no header",
    );
  });

  it("imports JSONL, with amounts as numbers or digit strings, and refuses bad lines by number", () => {
    const rows = [
      { tx_id: "j-1", date: "2024-03-01", account: "1000", amount: 5000, memo: "deposit" },
      { tx_id: "j-1", date: "2024-03-01", account: "4000", amount: "-5000" },
    ];
    const text = `${rows.map((r) => JSON.stringify(r)).join("\r\n")}\n\n`;
    expect(importText(db, text, { kind: "journal", format: "jsonl" })).toMatchObject({
      transactions: 1,
      lines: 2,
    });
    for (const [bad, reason] of [
      ["{not json", "not valid JSON"],
      ['["an","array"]', "JSON object"],
      ['{"tx_id":"j-2","date":"2024-03-02","account":"1000","amount":1,"colour":"red"}', "unknown field"],
      ['{"tx_id":"j-2","date":"2024-03-02","account":"1000"}', "missing required field"],
      ['{"tx_id":"j-2","date":"2024-03-02","account":"1000","amount":{"$gt":0}}', "string, a number or null"],
    ]) {
      const e = refusal(() =>
        importText(db, `${JSON.stringify({ ...rows[0], tx_id: "j-2" })}\n\n${bad}\n`, {
          kind: "journal",
          format: "jsonl",
        }),
      );
      expect(e.detail, bad).toMatchObject({ line: 3 });
      expect(String(e.detail?.reason)).toContain(reason);
    }
    expect(counts().tx).toBe(1);
  });

  it("streams a file over several chunks, with a BOM and CRLF", () => {
    const lines = ["tx_id,date,account,amount,memo"];
    for (let i = 0; i < 14_000; i++) {
      lines.push(
        `t${i},2024-04-${String((i % 28) + 1).padStart(2, "0")},1000,${i + 1},"mémo ${i}, with ""quotes"""`,
      );
      lines.push(`t${i},2024-04-${String((i % 28) + 1).padStart(2, "0")},4000,-${i + 1},`);
    }
    const file = path.join(dir, "big.csv");
    fs.writeFileSync(file, `\uFEFF${lines.join("\r\n")}\r\n`);
    expect(fs.statSync(file).size).toBeGreaterThan(1024 * 1024);
    const r = importFile(db, file, { kind: "journal" });
    expect(r).toMatchObject({ format: "csv", rows: 28_000, transactions: 14_000, lines: 28_000 });
    expect(readTransaction(db, { id: "t13999" })?.lines[0]?.memo).toBe('mémo 13999, with "quotes"');
    expect(readTransaction(db, { id: "t0" })?.source).toBe("import:big.csv");
    expect(verifyChain(db)).toMatchObject({ ok: true, entries: 14_000 });
  });

  it("bounds file size and row count with named limits", () => {
    const file = path.join(dir, "j.csv");
    fs.writeFileSync(file, JOURNAL_CSV);
    const big = refusal(() => importFile(db, file, { kind: "journal", limits: { maxFileBytes: 50 } }));
    expect(big).toMatchObject({
      code: "TOTEBOX_ERR_IMPORT_LIMIT",
      detail: { limit: "maxFileBytes", max: 50 },
    });
    const many = refusal(() => importFile(db, file, { kind: "journal", limits: { maxRows: 3 } }));
    expect(many).toMatchObject({
      code: "TOTEBOX_ERR_IMPORT_LIMIT",
      detail: { limit: "maxRows", max: 3, line: 5 },
    });
    const perTx = refusal(() => importFile(db, file, { kind: "journal", limits: { maxLinesPerTx: 1 } }));
    expect(perTx.detail).toMatchObject({ line: 3 });
    expect(counts().tx).toBe(0);
  });

  it("refuses files that are not UTF-8, and formats it cannot recognise", () => {
    const file = path.join(dir, "latin1.csv");
    fs.writeFileSync(
      file,
      Buffer.concat([
        Buffer.from("tx_id,date,account,amount,memo\nx,2024-01-01,1000,1,caf"),
        Buffer.from([0xe9, 0x0a]),
      ]),
    );
    expect(refusal(() => importFile(db, file, { kind: "journal" })).code).toBe("TOTEBOX_ERR_IMPORT_FORMAT");
    const txt = path.join(dir, "rows.txt");
    fs.writeFileSync(txt, JOURNAL_CSV);
    expect(refusal(() => importFile(db, txt, { kind: "journal" })).code).toBe("TOTEBOX_ERR_IMPORT_FORMAT");
    expect(importFile(db, txt, { kind: "journal", format: "csv" }).transactions).toBe(2);
    expect(refusal(() => importFile(db, path.join(dir, "missing.csv"), { kind: "journal" })).code).toBe(
      "TOTEBOX_ERR_IMPORT_FORMAT",
    );
    expect(refusal(() => importText(db, "", { kind: "tenants" as "units", format: "csv" })).code).toBe(
      "TOTEBOX_ERR_IMPORT_FORMAT",
    );
  });
});

describe("units and leases import", () => {
  const UNITS = [
    "property_id,property_name,property_type,unit_id,unit_type,area_sqm,market_rent",
    "p1,Elm Court,residential,p1-101,1br,48.5,125000",
    "p1,,,p1-102,2br,71,160000",
    "p2,Harbor Plaza,retail,p2-s1,shop,120.25,",
  ].join("\n");
  const LEASES = [
    "lease_id,unit_id,tenant_id,tenant_name,start_date,end_date,monthly_rent",
    "l1,p1-101,t-ann,Ann Okafor,2024-01-01,2024-12-31,125000",
    "l2,p1-101,t-ann,,2025-01-01,,128000",
    "l3,p2-s1,t-cafe,Bluebird Bakery LLC,2023-06-01,2028-05-31,410000",
  ].join("\n");

  it("creates properties, units, tenants and leases", () => {
    expect(importText(db, UNITS, { kind: "units", format: "csv" })).toMatchObject({
      rows: 3,
      properties: 2,
      units: 3,
    });
    expect(importText(db, LEASES, { kind: "leases", format: "csv" })).toMatchObject({
      rows: 3,
      leases: 3,
      tenants: 2,
    });
    expect(db.prepare("SELECT id, property_type FROM properties ORDER BY id").all()).toEqual([
      { id: "p1", property_type: "residential" },
      { id: "p2", property_type: "retail" },
    ]);
    expect(db.prepare("SELECT area_sqm, market_rent FROM units WHERE id = 'p2-s1'").get()).toEqual({
      area_sqm: 120.25,
      market_rent: null,
    });
    expect(db.prepare("SELECT kind, name FROM counterparties WHERE id = 't-cafe'").get()).toEqual({
      kind: "tenant",
      name: "Bluebird Bakery LLC",
    });
    expect(db.prepare("SELECT end_date FROM leases WHERE id = 'l2'").get()).toEqual({ end_date: null });
  });

  it.each([
    ["units", "p3,,,p3-1,studio,30,90000", 5, "does not exist"],
    ["units", "p1,Other Name,,p1-103,studio,30,90000", 5, "recorded as"],
    ["units", "p1,,,p1-101,studio,30,90000", 5, "already exists"],
    ["units", "p1,,,p1-103,studio,-4,90000", 5, "positive number"],
    ["units", "p1,,castle,p1-103,studio,30,90000", 5, "property_type"],
  ])("refuses a bad %s row %j and applies nothing", (kind, row, line, reason) => {
    const e = refusal(() => importText(db, `${UNITS}\n${row}\n`, { kind: kind as "units", format: "csv" }));
    expect(e.detail).toMatchObject({ line });
    expect(String(e.detail?.reason)).toContain(reason);
    expect(counts().units).toBe(0);
    expect(db.prepare("SELECT count(*) AS n FROM properties").get()).toEqual({ n: 0 });
  });

  it.each([
    ["l4,p1-101,t-bob,Bob,2024-06-01,2025-05-31,1", "overlapping"],
    ["l4,p9-9,t-bob,Bob,2024-06-01,,1", "import units first"],
    ["l4,p1-102,t-new,,2024-06-01,,1", "give tenant_name"],
    ["l4,p1-102,t-bob,Bob,2024-06-01,2024-05-31,1", "before start_date"],
    ["l1,p1-102,t-bob,Bob,2024-06-01,,1", "already exists"],
  ])("refuses the lease row %j with its line", (row, reason) => {
    importText(db, UNITS, { kind: "units", format: "csv" });
    const e = refusal(() => importText(db, `${LEASES}\n${row}`, { kind: "leases", format: "csv" }));
    expect(e.detail).toMatchObject({ line: 5 });
    expect(String(e.detail?.reason)).toContain(reason);
    expect(counts().leases).toBe(0);
    expect(db.prepare("SELECT count(*) AS n FROM counterparties WHERE kind = 'tenant'").get()).toEqual({
      n: 0,
    });
  });

  it("imports leases from JSONL with numbers", () => {
    importText(db, UNITS, { kind: "units", format: "csv" });
    const text = JSON.stringify({
      lease_id: "j1",
      unit_id: "p1-102",
      tenant_id: "t-j",
      tenant_name: "Jo",
      start_date: "2024-02-01",
      end_date: null,
      monthly_rent: 150000,
    });
    expect(importText(db, text, { kind: "leases", format: "jsonl" })).toMatchObject({
      leases: 1,
      tenants: 1,
    });
  });
});
