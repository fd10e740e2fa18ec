/**
 * Importing journal lines, units and leases from CSV or JSONL.
 *
 * All or nothing: a whole file is applied in one SQLite transaction, and the first bad row
 * aborts it with TOTEBOX_ERR_IMPORT_ROW, detail { line, reason } (line = the physical line where
 * the record starts, 1-based, the CSV header being line 1). Files are streamed in chunks, so
 * memory is bounded by one transaction's lines, not by the file.
 *
 * Journal files: columns tx_id, date, account, amount (integer minor units, debit positive),
 * optional counterparty, memo. Consecutive rows with the same tx_id form one transaction; a tx_id
 * that reappears after another transaction is refused (it would otherwise force holding the whole
 * file in memory, and usually means a sorting mistake).
 *
 * CSV follows RFC 4180, read strictly: comma separator; fields may be quoted with "..." and then
 * contain commas, newlines and doubled quotes (""); a quote inside an unquoted field, text after a
 * closing quote, or an unterminated quote is an error; CRLF, LF or CR end a record; a UTF-8 BOM
 * is ignored; blank lines are skipped; no trimming. A small parser is written here rather than
 * depending on a CSV package: these rules fit in ~120 lines, and the line numbers reported must
 * be those of record starts, which the parser tracks exactly.
 */
import fs from "node:fs";
import path from "node:path";
import { TextDecoder } from "node:util";
import { ToteboxError, type ToteboxErrorDetail } from "./errors.ts";
import { appendTransaction, isIsoDate, type JournalLineInput, LEDGER_LIMITS } from "./ledger.ts";
import { type Db, PROPERTY_TYPES, toToteboxError } from "./schema.ts";

export interface ImportLimits {
  /** Largest file accepted. Default 256 MiB (1,000,000 journal lines take ~60 MiB of CSV). */
  readonly maxFileBytes: number;
  /** Data rows per file (header excluded). Default 2,000,000. */
  readonly maxRows: number;
  /** Characters in one field. Default 8,192. */
  readonly maxFieldChars: number;
  /** Characters in one record (a CSV record or a JSONL line). Default 65,536. */
  readonly maxRecordChars: number;
  /** Fields in one CSV record. Default 64. */
  readonly maxFields: number;
  /** Lines in one journal transaction. Default LEDGER_LIMITS.maxLinesPerTx (10,000). */
  readonly maxLinesPerTx: number;
}

export const IMPORT_LIMITS: ImportLimits = {
  maxFileBytes: 256 * 1024 * 1024,
  maxRows: 2_000_000,
  maxFieldChars: 8_192,
  maxRecordChars: 65_536,
  maxFields: 64,
  maxLinesPerTx: LEDGER_LIMITS.maxLinesPerTx,
};

/** Bytes read from a file at a time. */
const CHUNK_BYTES = 1024 * 1024;

export type ImportKind = "journal" | "units" | "leases";
export type ImportFormat = "csv" | "jsonl";

export interface ImportOptions {
  kind: ImportKind;
  /** Default: from the file extension (.csv, .jsonl / .ndjson). Required by importText. */
  format?: ImportFormat;
  limits?: Partial<ImportLimits>;
  /** journal_tx.source of imported entries. Default "import:<file name>" or "import". */
  source?: string;
  /** journal_tx.created_at of imported entries. Default now. */
  createdAt?: string;
}

export interface ImportResult {
  kind: ImportKind;
  format: ImportFormat;
  rows: number;
  transactions: number;
  lines: number;
  firstSeq: number | null;
  lastSeq: number | null;
  properties: number;
  units: number;
  leases: number;
  tenants: number;
}

/** The columns of each kind: required ones first. Unknown columns are refused (typos). */
export const IMPORT_COLUMNS: Readonly<
  Record<ImportKind, { required: readonly string[]; optional: readonly string[] }>
> = {
  journal: { required: ["tx_id", "date", "account", "amount"], optional: ["counterparty", "memo"] },
  units: {
    required: ["property_id", "unit_id", "unit_type", "area_sqm"],
    optional: ["property_name", "property_type", "market_rent"],
  },
  leases: {
    required: ["lease_id", "unit_id", "tenant_id", "start_date", "monthly_rent"],
    optional: ["tenant_name", "end_date"],
  },
};

function rowError(line: number, reason: string, extra: Record<string, string | number> = {}): ToteboxError {
  const detail: ToteboxErrorDetail = { line, reason, ...extra };
  return new ToteboxError("TOTEBOX_ERR_IMPORT_ROW", `line ${line}: ${reason}`, detail);
}

// ---------------------------------------------------------------------------------------------
// CSV

export interface CsvRecord {
  /** Physical line (1-based) where the record starts. */
  line: number;
  fields: string[];
}

const QUOTE = 34;
const COMMA = 44;
const LF = 10;
const CR = 13;

enum CsvState {
  FieldStart,
  Unquoted,
  Quoted,
  QuoteInQuoted,
}

/**
 * Streaming RFC 4180 parser: push() text chunks (split anywhere, even inside a CRLF or a quoted
 * field), end() once. Records are handed to `emit` as they complete.
 */
export class CsvParser {
  readonly #limits: Pick<ImportLimits, "maxFieldChars" | "maxRecordChars" | "maxFields">;
  readonly #emit: (r: CsvRecord) => void;
  #state = CsvState.FieldStart;
  #field = "";
  #record: string[] = [];
  #recordChars = 0;
  #line = 1;
  #recordLine = 1;
  /** The previous chunk ended in CR: a LF opening this chunk belongs to the same line break. */
  #afterCR = false;
  /** The previous chunk ended in CR inside a quoted field. */
  #quotedCR = false;
  #first = true;

  constructor(emit: (r: CsvRecord) => void, limits: Partial<ImportLimits> = {}) {
    this.#emit = emit;
    this.#limits = { ...IMPORT_LIMITS, ...limits };
  }

  push(chunk: string): void {
    let s = chunk;
    if (this.#first && s.length > 0) {
      this.#first = false;
      if (s.charCodeAt(0) === 0xfeff) s = s.slice(1);
    }
    const n = s.length;
    let i = 0;
    if (n > 0) {
      if (this.#afterCR) {
        this.#afterCR = false;
        if (s.charCodeAt(0) === LF) i = 1;
      }
      if (this.#quotedCR) {
        // A CR ended the previous chunk inside a quoted field: one line break, unless the LF
        // completing a CRLF opens this chunk (then that LF is counted).
        this.#quotedCR = false;
        if (s.charCodeAt(0) !== LF) this.#line++;
      }
    }
    while (i < n) {
      switch (this.#state) {
        case CsvState.FieldStart: {
          const c = s.charCodeAt(i);
          if (c === QUOTE) {
            this.#state = CsvState.Quoted;
            i++;
          } else if (c === COMMA) {
            this.#endField();
            i++;
          } else if (c === LF || c === CR) {
            // "a,<newline>": the empty field after the comma ends here; an empty line is skipped.
            if (this.#record.length > 0) this.#endField();
            i = this.#lineBreak(s, i);
          } else {
            this.#state = CsvState.Unquoted;
          }
          break;
        }
        case CsvState.Unquoted: {
          let j = i;
          let c = 0;
          while (j < n) {
            c = s.charCodeAt(j);
            if (c === COMMA || c === LF || c === CR || c === QUOTE) break;
            j++;
          }
          this.#append(s, i, j);
          i = j;
          if (j === n) break;
          if (c === QUOTE) {
            throw rowError(
              this.#recordLine,
              "a quote inside an unquoted field (quote the whole field and double the quote)",
            );
          }
          this.#endField();
          if (c === COMMA) {
            this.#state = CsvState.FieldStart;
            i++;
          } else i = this.#lineBreak(s, i);
          break;
        }
        case CsvState.Quoted: {
          let j = i;
          while (j < n) {
            const c = s.charCodeAt(j);
            if (c === QUOTE) break;
            // Count line breaks inside the field (CRLF once) so later records keep true numbers.
            if (c === LF) this.#line++;
            else if (c === CR) {
              if (j + 1 >= n) this.#quotedCR = true;
              else if (s.charCodeAt(j + 1) !== LF) this.#line++;
            }
            j++;
          }
          this.#append(s, i, j);
          i = j;
          if (j < n) {
            this.#state = CsvState.QuoteInQuoted;
            i++;
          }
          break;
        }
        case CsvState.QuoteInQuoted: {
          const c = s.charCodeAt(i);
          if (c === QUOTE) {
            this.#append('"', 0, 1);
            this.#state = CsvState.Quoted;
            i++;
          } else if (c === COMMA) {
            this.#endField();
            this.#state = CsvState.FieldStart;
            i++;
          } else if (c === LF || c === CR) {
            this.#endField();
            i = this.#lineBreak(s, i);
          } else {
            throw rowError(
              this.#recordLine,
              "text after a closing quote (a quote inside a quoted field must be doubled)",
            );
          }
          break;
        }
      }
    }
  }

  end(): void {
    if (this.#state === CsvState.Quoted) {
      throw rowError(this.#recordLine, "a quoted field is not closed before the end of the file");
    }
    // Last record without a final line break (also "a," whose empty last field ends here).
    if (this.#state !== CsvState.FieldStart || this.#record.length > 0) this.#endField();
    if (this.#record.length > 0) this.#endRecord();
  }

  #append(s: string, from: number, to: number): void {
    if (to <= from) return;
    const len = to - from;
    if (this.#field.length + len > this.#limits.maxFieldChars) {
      throw rowError(this.#recordLine, `a field is longer than ${this.#limits.maxFieldChars} characters`);
    }
    this.#recordChars += len;
    if (this.#recordChars > this.#limits.maxRecordChars) {
      throw rowError(this.#recordLine, `the record is longer than ${this.#limits.maxRecordChars} characters`);
    }
    this.#field += from === 0 && to === s.length ? s : s.slice(from, to);
  }

  #endField(): void {
    if (this.#record.length >= this.#limits.maxFields) {
      throw rowError(this.#recordLine, `more than ${this.#limits.maxFields} fields`);
    }
    this.#record.push(this.#field);
    this.#field = "";
  }

  /** Ends the record at a line break at s[i] (CR, LF or CRLF); returns the index after it. */
  #lineBreak(s: string, i: number): number {
    let next = i + 1;
    if (s.charCodeAt(i) === CR) {
      if (next < s.length) {
        if (s.charCodeAt(next) === LF) next++;
      } else this.#afterCR = true;
    }
    // Callers have ended the last field; no field at all means an empty line, which is skipped.
    if (this.#record.length > 0) this.#endRecord();
    this.#state = CsvState.FieldStart;
    this.#line++;
    this.#recordLine = this.#line;
    return next;
  }

  #endRecord(): void {
    this.#emit({ line: this.#recordLine, fields: this.#record });
    this.#record = [];
    this.#recordChars = 0;
    this.#state = CsvState.FieldStart;
  }
}

/** Parses a whole CSV text (convenience for small inputs and tests). */
export function parseCsv(text: string, limits: Partial<ImportLimits> = {}): CsvRecord[] {
  const out: CsvRecord[] = [];
  const p = new CsvParser((r) => out.push(r), limits);
  p.push(text);
  p.end();
  return out;
}

// ---------------------------------------------------------------------------------------------
// Row sources: CSV (with a header) and JSONL, both yielding { line, values } to a row handler.

type RowValue = string | number | boolean | null;
interface Row {
  line: number;
  values: ReadonlyMap<string, RowValue>;
}

interface RowSink {
  push(chunk: string): void;
  end(): void;
}

function csvRows(kind: ImportKind, limits: ImportLimits, onRow: (r: Row) => void): RowSink {
  let header: string[] | null = null;
  const parser = new CsvParser((rec) => {
    if (!header) {
      header = checkHeader(kind, rec.fields, rec.line);
      return;
    }
    if (rec.fields.length !== header.length) {
      throw rowError(rec.line, `expected ${header.length} fields, found ${rec.fields.length}`);
    }
    const values = new Map<string, RowValue>();
    for (let i = 0; i < header.length; i++) values.set(header[i]!, rec.fields[i]!);
    onRow({ line: rec.line, values });
  }, limits);
  return {
    push: (c) => parser.push(c),
    end: () => {
      parser.end();
      if (!header) throw rowError(1, "the file has no header row");
    },
  };
}

function checkHeader(kind: ImportKind, fields: readonly string[], line: number): string[] {
  const { required, optional } = IMPORT_COLUMNS[kind];
  const known = new Set([...required, ...optional]);
  const seen = new Set<string>();
  for (const f of fields) {
    if (!known.has(f)) {
      throw rowError(
        line,
        `unknown column "${f.slice(0, 40)}" (expected ${[...required, ...optional].join(", ")})`,
      );
    }
    if (seen.has(f)) throw rowError(line, `column "${f}" appears twice`);
    seen.add(f);
  }
  for (const r of required) if (!seen.has(r)) throw rowError(line, `missing required column "${r}"`);
  return [...fields];
}

function jsonlRows(kind: ImportKind, limits: ImportLimits, onRow: (r: Row) => void): RowSink {
  const { required, optional } = IMPORT_COLUMNS[kind];
  const known = new Set([...required, ...optional]);
  let pending = "";
  let line = 0;
  let first = true;
  const handle = (text: string): void => {
    line++;
    const t = text.endsWith("\r") ? text.slice(0, -1) : text;
    if (t.length > limits.maxRecordChars) {
      throw rowError(line, `the line is longer than ${limits.maxRecordChars} characters`);
    }
    if (t.trim() === "") return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(t);
    } catch {
      throw rowError(line, "not valid JSON");
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw rowError(line, "each line must be a JSON object");
    }
    const values = new Map<string, RowValue>();
    for (const [k, v] of Object.entries(parsed)) {
      if (!known.has(k)) throw rowError(line, `unknown field "${k.slice(0, 40)}"`);
      if (v !== null && typeof v !== "string" && typeof v !== "number" && typeof v !== "boolean") {
        throw rowError(line, `field "${k}" must be a string, a number or null`);
      }
      if (typeof v === "string" && v.length > limits.maxFieldChars) {
        throw rowError(line, `field "${k}" is longer than ${limits.maxFieldChars} characters`);
      }
      values.set(k, v);
    }
    for (const r of required) {
      if (!values.has(r) || values.get(r) === null) throw rowError(line, `missing required field "${r}"`);
    }
    onRow({ line, values });
  };
  return {
    push: (chunk) => {
      let c = chunk;
      if (first && c.length > 0) {
        first = false;
        if (c.charCodeAt(0) === 0xfeff) c = c.slice(1);
      }
      // Lines are cut by index; only the unfinished tail is carried to the next chunk.
      const buf = pending + c;
      let start = 0;
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        handle(buf.slice(start, nl));
        start = nl + 1;
        nl = buf.indexOf("\n", start);
      }
      pending = buf.slice(start);
      if (pending.length > limits.maxRecordChars + 1) {
        throw rowError(line + 1, `the line is longer than ${limits.maxRecordChars} characters`);
      }
    },
    end: () => {
      if (pending.length > 0) handle(pending);
      pending = "";
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Field readers: each returns the typed value or throws a row error naming the column.

function text(row: Row, col: string, opts: { required: boolean; max?: number }): string | null {
  const v = row.values.get(col);
  if (v === undefined || v === null || v === "") {
    if (opts.required) throw rowError(row.line, `${col} is empty`, { column: col });
    return null;
  }
  if (typeof v !== "string") throw rowError(row.line, `${col} must be text`, { column: col });
  const max = opts.max ?? LEDGER_LIMITS.maxIdLength;
  if (v.length > max) throw rowError(row.line, `${col} is longer than ${max} characters`, { column: col });
  // NUL ends a string for SQLite's length(), so the schema's CHECKs would misjudge it; an unpaired
  // surrogate (JSON's "\ud800") is stored as U+FFFD while the journal hash covers the original,
  // which would leave an entry that fails verifyChain.
  if (v.includes("\u0000") || LONE_SURROGATE.test(v)) {
    throw rowError(row.line, `${col} contains a NUL character or an unpaired surrogate`, { column: col });
  }
  return v;
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Runs a row's insert: a constraint failure the field checks did not foresee is that row's error. */
function insertRow(r: Row, run: () => unknown): void {
  try {
    run();
  } catch (e) {
    const mapped = toToteboxError(e);
    if (!(mapped instanceof ToteboxError)) throw mapped;
    throw rowError(r.line, mapped.message, { cause: mapped.code });
  }
}

const INTEGER_RE = /^-?\d{1,16}$/;

function integer(row: Row, col: string, opts: { required: boolean; min?: number }): number | null {
  const v = row.values.get(col);
  if (v === undefined || v === null || v === "") {
    if (opts.required) throw rowError(row.line, `${col} is empty`, { column: col });
    return null;
  }
  const n = typeof v === "number" ? v : typeof v === "string" && INTEGER_RE.test(v) ? Number(v) : Number.NaN;
  if (!Number.isSafeInteger(n)) {
    throw rowError(row.line, `${col} must be an integer number of minor units (cents), e.g. 125000`, {
      column: col,
    });
  }
  if (opts.min !== undefined && n < opts.min) {
    throw rowError(row.line, `${col} must be at least ${opts.min}`, { column: col });
  }
  return n;
}

const DECIMAL_RE = /^\d{1,9}(\.\d{1,6})?$/;

function positiveDecimal(row: Row, col: string): number {
  const v = row.values.get(col);
  const n = typeof v === "number" ? v : typeof v === "string" && DECIMAL_RE.test(v) ? Number(v) : Number.NaN;
  if (!Number.isFinite(n) || n <= 0 || n > 1e7) {
    throw rowError(row.line, `${col} must be a positive number (e.g. 72.5)`, { column: col });
  }
  return n;
}

function date(row: Row, col: string, required: boolean): string | null {
  const v = text(row, col, { required, max: 10 });
  if (v === null) return null;
  if (!isIsoDate(v)) throw rowError(row.line, `${col} must be a calendar date YYYY-MM-DD`, { column: col });
  return v;
}

// ---------------------------------------------------------------------------------------------
// Kind handlers

interface Handler {
  row(r: Row): void;
  finish(): void;
}

function journalHandler(
  db: Db,
  opts: { source: string; createdAt: string; limits: ImportLimits },
  result: ImportResult,
): Handler {
  let pending: {
    id: string;
    date: string;
    firstLine: number;
    lines: JournalLineInput[];
    rowLines: number[];
  } | null = null;
  const seen = new Set<string>();

  const flush = (): void => {
    if (!pending) return;
    const p = pending;
    pending = null;
    try {
      const appended = appendTransaction(db, {
        id: p.id,
        date: p.date,
        source: opts.source,
        createdAt: opts.createdAt,
        lines: p.lines,
      });
      result.firstSeq ??= appended.seq;
      result.lastSeq = appended.seq;
      result.transactions++;
      result.lines += appended.lines;
    } catch (e) {
      if (!(e instanceof ToteboxError)) throw e;
      const lineIndex = typeof e.detail?.line === "number" ? e.detail.line : null;
      const at = lineIndex !== null ? (p.rowLines[lineIndex - 1] ?? p.firstLine) : p.firstLine;
      const reason =
        e.code === "TOTEBOX_ERR_UNBALANCED"
          ? `transaction ${p.id} does not balance: its lines sum to ${String(e.detail?.imbalance)} (lines ${p.firstLine}-${p.rowLines[p.rowLines.length - 1]})`
          : e.code === "TOTEBOX_ERR_UNKNOWN_ACCOUNT"
            ? `account ${String(e.detail?.account)} is not in the chart of accounts`
            : e.code === "TOTEBOX_ERR_UNKNOWN_COUNTERPARTY"
              ? `counterparty ${String(e.detail?.counterparty)} is not known`
              : e.code === "TOTEBOX_ERR_DUPLICATE_TX"
                ? `transaction ${p.id} is already recorded in the archive`
                : e.message;
      throw new ToteboxError(
        "TOTEBOX_ERR_IMPORT_ROW",
        `line ${at}: ${reason}`,
        { line: at, reason, cause: e.code },
        {
          cause: e,
        },
      );
    }
  };

  return {
    row(r) {
      const id = text(r, "tx_id", { required: true })!;
      const d = date(r, "date", true)!;
      const account = text(r, "account", { required: true, max: LEDGER_LIMITS.maxIdLength })!;
      const counterparty = text(r, "counterparty", { required: false });
      const amount = integer(r, "amount", { required: true })!;
      const memo = text(r, "memo", { required: false, max: LEDGER_LIMITS.maxMemoLength }) ?? "";
      if (!pending || pending.id !== id) {
        flush();
        if (seen.has(id)) {
          throw rowError(
            r.line,
            `tx_id ${id} appears again after other transactions; keep a transaction's lines together`,
          );
        }
        seen.add(id);
        pending = { id, date: d, firstLine: r.line, lines: [], rowLines: [] };
      } else if (pending.date !== d) {
        throw rowError(
          r.line,
          `date ${d} differs from ${pending.date} on the first line of transaction ${id}`,
        );
      }
      if (pending.lines.length >= opts.limits.maxLinesPerTx) {
        throw rowError(r.line, `transaction ${id} has more than ${opts.limits.maxLinesPerTx} lines`);
      }
      pending.lines.push({ account, counterparty, amount, memo });
      pending.rowLines.push(r.line);
    },
    finish: flush,
  };
}

function unitsHandler(db: Db, result: ImportResult): Handler {
  const getProperty = db.prepare<[string], { name: string }>("SELECT name FROM properties WHERE id = ?");
  const insProperty = db.prepare<[string, string, string]>(
    "INSERT INTO properties (id, name, property_type) VALUES (?, ?, ?)",
  );
  const unitExists = db.prepare<[string], { one: number }>("SELECT 1 AS one FROM units WHERE id = ?");
  const insUnit = db.prepare<[string, string, string, number, number | null]>(
    "INSERT INTO units (id, property_id, unit_type, area_sqm, market_rent) VALUES (?, ?, ?, ?, ?)",
  );
  return {
    row(r) {
      const propertyId = text(r, "property_id", { required: true })!;
      const propertyName = text(r, "property_name", { required: false, max: 200 });
      const propertyType = text(r, "property_type", { required: false, max: 32 });
      const unitId = text(r, "unit_id", { required: true })!;
      const unitType = text(r, "unit_type", { required: true, max: 64 })!;
      const area = positiveDecimal(r, "area_sqm");
      const marketRent = integer(r, "market_rent", { required: false, min: 0 });
      if (propertyType !== null && !(PROPERTY_TYPES as readonly string[]).includes(propertyType)) {
        throw rowError(r.line, `property_type must be one of ${PROPERTY_TYPES.join(", ")}`, {
          column: "property_type",
        });
      }
      const existing = getProperty.get(propertyId);
      if (existing) {
        if (propertyName !== null && propertyName !== existing.name) {
          throw rowError(
            r.line,
            `property ${propertyId} is recorded as "${existing.name}", not "${propertyName}"`,
          );
        }
      } else {
        if (propertyName === null) {
          throw rowError(
            r.line,
            `property ${propertyId} does not exist: give property_name (and property_type)`,
          );
        }
        insertRow(r, () => insProperty.run(propertyId, propertyName, propertyType ?? "residential"));
        result.properties++;
      }
      if (unitExists.get(unitId)) throw rowError(r.line, `unit ${unitId} already exists`);
      insertRow(r, () => insUnit.run(unitId, propertyId, unitType, area, marketRent));
      result.units++;
    },
    finish() {},
  };
}

function leasesHandler(db: Db, result: ImportResult): Handler {
  const unitExists = db.prepare<[string], { one: number }>("SELECT 1 AS one FROM units WHERE id = ?");
  const leaseExists = db.prepare<[string], { one: number }>("SELECT 1 AS one FROM leases WHERE id = ?");
  const getTenant = db.prepare<[string], { name: string }>("SELECT name FROM counterparties WHERE id = ?");
  const insTenant = db.prepare<[string, string]>(
    "INSERT INTO counterparties (id, name, kind) VALUES (?, ?, 'tenant')",
  );
  const insLease = db.prepare<[string, string, string, string, string | null, number]>(
    "INSERT INTO leases (id, unit_id, tenant_id, start_date, end_date, monthly_rent) VALUES (?, ?, ?, ?, ?, ?)",
  );
  return {
    row(r) {
      const leaseId = text(r, "lease_id", { required: true })!;
      const unitId = text(r, "unit_id", { required: true })!;
      const tenantId = text(r, "tenant_id", { required: true })!;
      const tenantName = text(r, "tenant_name", { required: false, max: 200 });
      const start = date(r, "start_date", true)!;
      const end = date(r, "end_date", false);
      const rent = integer(r, "monthly_rent", { required: true, min: 0 })!;
      if (end !== null && end < start)
        throw rowError(r.line, "end_date is before start_date", { column: "end_date" });
      if (!unitExists.get(unitId))
        throw rowError(r.line, `unit ${unitId} does not exist; import units first`);
      if (leaseExists.get(leaseId)) throw rowError(r.line, `lease ${leaseId} already exists`);
      if (!getTenant.get(tenantId)) {
        if (tenantName === null)
          throw rowError(r.line, `tenant ${tenantId} does not exist: give tenant_name`);
        insertRow(r, () => insTenant.run(tenantId, tenantName));
        result.tenants++;
      }
      try {
        insLease.run(leaseId, unitId, tenantId, start, end, rent);
      } catch (e) {
        const mapped = toToteboxError(e);
        if (mapped instanceof ToteboxError && mapped.code === "TOTEBOX_ERR_LEASE_OVERLAP") {
          throw rowError(
            r.line,
            `unit ${unitId} already has a lease overlapping ${start} to ${end ?? "open end"}`,
          );
        }
        if (mapped instanceof ToteboxError) throw rowError(r.line, mapped.message, { cause: mapped.code });
        throw mapped;
      }
      result.leases++;
    },
    finish() {},
  };
}

// ---------------------------------------------------------------------------------------------
// Entry points

function formatFromName(file: string): ImportFormat {
  const ext = path.extname(file).toLowerCase();
  if (ext === ".csv") return "csv";
  if (ext === ".jsonl" || ext === ".ndjson") return "jsonl";
  throw new ToteboxError(
    "TOTEBOX_ERR_IMPORT_FORMAT",
    "cannot tell the format from the file name: give csv or jsonl",
    {
      extension: ext.slice(0, 16),
    },
  );
}

function checkOptions(options: ImportOptions): void {
  if (!(options.kind in IMPORT_COLUMNS)) {
    throw new ToteboxError("TOTEBOX_ERR_IMPORT_FORMAT", "kind must be journal, units or leases", {
      kind: String(options.kind).slice(0, 32),
    });
  }
  if (options.format !== undefined && options.format !== "csv" && options.format !== "jsonl") {
    throw new ToteboxError("TOTEBOX_ERR_IMPORT_FORMAT", "format must be csv or jsonl", {
      format: String(options.format).slice(0, 32),
    });
  }
}

/**
 * Runs an import from a chunk producer inside one write transaction: any error rolls back
 * everything the file had applied.
 */
function runImport(
  db: Db,
  format: ImportFormat,
  options: ImportOptions,
  defaultSource: string,
  produce: (sink: (chunk: string) => void) => void,
): ImportResult {
  const limits: ImportLimits = { ...IMPORT_LIMITS, ...options.limits };
  const result: ImportResult = {
    kind: options.kind,
    format,
    rows: 0,
    transactions: 0,
    lines: 0,
    firstSeq: null,
    lastSeq: null,
    properties: 0,
    units: 0,
    leases: 0,
    tenants: 0,
  };
  const handler =
    options.kind === "journal"
      ? journalHandler(
          db,
          {
            source: options.source ?? defaultSource,
            createdAt: options.createdAt ?? new Date().toISOString(),
            limits,
          },
          result,
        )
      : options.kind === "units"
        ? unitsHandler(db, result)
        : leasesHandler(db, result);
  const onRow = (r: Row): void => {
    if (result.rows >= limits.maxRows) {
      throw new ToteboxError("TOTEBOX_ERR_IMPORT_LIMIT", `more than ${limits.maxRows} rows`, {
        limit: "maxRows",
        max: limits.maxRows,
        line: r.line,
      });
    }
    result.rows++;
    handler.row(r);
  };
  return db
    .transaction(() => {
      const sink =
        format === "csv" ? csvRows(options.kind, limits, onRow) : jsonlRows(options.kind, limits, onRow);
      produce((chunk) => sink.push(chunk));
      sink.end();
      handler.finish();
      return result;
    })
    .immediate();
}

/** Imports a CSV or JSONL file, streamed in 1 MiB chunks. All or nothing. */
export function importFile(db: Db, file: string, options: ImportOptions): ImportResult {
  checkOptions(options);
  const limits: ImportLimits = { ...IMPORT_LIMITS, ...options.limits };
  const format = options.format ?? formatFromName(file);
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch (e) {
    throw new ToteboxError(
      "TOTEBOX_ERR_IMPORT_FORMAT",
      "cannot read the import file",
      { file: path.basename(file) },
      {
        cause: e,
      },
    );
  }
  if (size > limits.maxFileBytes) {
    throw new ToteboxError(
      "TOTEBOX_ERR_IMPORT_LIMIT",
      `the file is larger than ${limits.maxFileBytes} bytes`,
      {
        limit: "maxFileBytes",
        max: limits.maxFileBytes,
        size,
      },
    );
  }
  return runImport(db, format, options, `import:${path.basename(file)}`, (sink) => {
    const fd = fs.openSync(file, "r");
    try {
      // fatal: invalid UTF-8 is refused rather than silently replaced with U+FFFD.
      const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
      const buf = Buffer.allocUnsafe(CHUNK_BYTES);
      let total = 0;
      for (;;) {
        const n = fs.readSync(fd, buf, 0, CHUNK_BYTES, null);
        if (n === 0) break;
        total += n;
        // The file may grow while it is read: the limit holds on what is read, not on stat.
        if (total > limits.maxFileBytes) {
          throw new ToteboxError(
            "TOTEBOX_ERR_IMPORT_LIMIT",
            `the file is larger than ${limits.maxFileBytes} bytes`,
            {
              limit: "maxFileBytes",
              max: limits.maxFileBytes,
            },
          );
        }
        sink(decodeChunk(decoder, buf.subarray(0, n), true));
      }
      sink(decodeChunk(decoder, new Uint8Array(0), false));
    } finally {
      fs.closeSync(fd);
    }
  });
}

function decodeChunk(decoder: TextDecoder, bytes: Uint8Array, stream: boolean): string {
  try {
    return decoder.decode(bytes, { stream });
  } catch (e) {
    throw new ToteboxError("TOTEBOX_ERR_IMPORT_FORMAT", "the file is not valid UTF-8", undefined, {
      cause: e,
    });
  }
}

/** Imports CSV or JSONL text already in memory. All or nothing. */
export function importText(
  db: Db,
  text: string,
  options: ImportOptions & { format: ImportFormat },
): ImportResult {
  checkOptions(options);
  const limits: ImportLimits = { ...IMPORT_LIMITS, ...options.limits };
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > limits.maxFileBytes) {
    throw new ToteboxError(
      "TOTEBOX_ERR_IMPORT_LIMIT",
      `the input is larger than ${limits.maxFileBytes} bytes`,
      {
        limit: "maxFileBytes",
        max: limits.maxFileBytes,
        size: bytes,
      },
    );
  }
  return runImport(db, options.format, options, "import", (sink) => sink(text));
}
