import {
  Bool,
  DataType,
  DateDay,
  DateUnit,
  Float64,
  Int64,
  makeTable,
  Precision,
  type Table,
  tableFromIPC,
  tableToIPC,
  Utf8,
  type Vector,
  vectorFromArray,
} from "apache-arrow";
import { PspError } from "./errors.ts";

/**
 * View results travel as Apache Arrow IPC (stream format). The receiver decodes them where they
 * landed: PSP frames put each attachment at an 8-byte-aligned address, and Arrow's IPC buffers are
 * 8-byte padded, so `tableFromIPC` makes vectors that *share* the frame's memory instead of
 * copying it (tested in result.test.ts).
 *
 * Column types are deliberately few: what an owner's view may declare.
 * - string → Utf8
 * - integer → Int64 (amounts are integer minor units; decoded back to number when safe)
 * - number → Float64
 * - date → DateDay (days since the epoch; surfaced as "YYYY-MM-DD")
 * - boolean → Bool
 */
export type ColumnType = "string" | "integer" | "number" | "date" | "boolean";
export const COLUMN_TYPES: readonly ColumnType[] = ["string", "integer", "number", "date", "boolean"];

export interface ColumnSpec {
  readonly name: string;
  readonly type: ColumnType;
}

export type Cell = string | number | bigint | boolean | null;

function arrowType(t: ColumnType): DataType {
  switch (t) {
    case "string":
      return new Utf8();
    case "integer":
      return new Int64();
    case "number":
      return new Float64();
    case "date":
      return new DateDay();
    case "boolean":
      return new Bool();
  }
}

function toArrowValue(t: ColumnType, v: unknown): unknown {
  if (v === null || v === undefined) return null;
  switch (t) {
    case "integer":
      if (typeof v === "bigint") return v;
      if (typeof v === "number" && Number.isInteger(v)) return BigInt(v);
      if (typeof v === "boolean") return v ? 1n : 0n;
      throw new PspError("PSP_ERR_RESULT_MALFORMED", "integer column holds a non-integer", {
        type: typeof v,
      });
    case "number":
      return typeof v === "bigint" ? Number(v) : Number(v);
    case "string":
      return String(v);
    case "boolean":
      return Boolean(v);
    case "date": {
      const s = String(v);
      const ms = Date.parse(`${s.slice(0, 10)}T00:00:00Z`);
      if (!Number.isFinite(ms))
        throw new PspError("PSP_ERR_RESULT_MALFORMED", "date column holds a non-date");
      return new Date(ms);
    }
  }
}

/** Encodes rows (arrays in column order) as an Arrow IPC stream. */
export function encodeResult(
  columns: readonly ColumnSpec[],
  rows: readonly (readonly unknown[])[],
): Uint8Array {
  const vectors: Record<string, Vector> = {};
  columns.forEach((c, i) => {
    const values = rows.map((r) => toArrowValue(c.type, r[i]));
    vectors[c.name] = vectorFromArray(values, arrowType(c.type));
  });
  return tableToIPC(makeTable(vectors as never) as unknown as Table, "stream");
}

export interface DecodedResult {
  readonly table: Table;
  readonly columns: readonly ColumnSpec[];
  readonly rowCount: number;
  /** Materializes rows as plain objects (copies): for printing and combining, not for hot paths. */
  rows(): Record<string, Cell>[];
}

function columnTypeOf(t: DataType): ColumnType | undefined {
  // Decoded schemas carry generic type instances (Int_, Float, Date_), so match on type ids and
  // parameters, not on classes.
  if (DataType.isUtf8(t)) return "string";
  if (DataType.isInt(t) && t.bitWidth === 64 && t.isSigned) return "integer";
  if (DataType.isFloat(t) && t.precision === Precision.DOUBLE) return "number";
  if (DataType.isDate(t) && t.unit === DateUnit.DAY) return "date";
  if (DataType.isBool(t)) return "boolean";
  return undefined;
}

/**
 * Decodes an Arrow IPC stream received from a peer. Hostile input: anything Arrow cannot read, or
 * any column type outside the five above, is PSP_ERR_RESULT_MALFORMED. `expect` (optional) pins the
 * schema the caller asked for.
 */
export function decodeResult(bytes: Uint8Array, expect?: readonly ColumnSpec[]): DecodedResult {
  let table: Table;
  try {
    table = tableFromIPC(bytes);
  } catch (cause) {
    throw new PspError(
      "PSP_ERR_RESULT_MALFORMED",
      "result is not a readable Arrow IPC stream",
      {},
      { cause },
    );
  }
  const columns: ColumnSpec[] = [];
  for (const f of table.schema.fields) {
    const type = columnTypeOf(f.type);
    if (!type)
      throw new PspError("PSP_ERR_RESULT_MALFORMED", "result column has an unsupported type", {
        column: f.name,
      });
    columns.push({ name: f.name, type });
  }
  if (expect) {
    const same =
      expect.length === columns.length &&
      expect.every((c, i) => c.name === columns[i]!.name && c.type === columns[i]!.type);
    if (!same)
      throw new PspError(
        "PSP_ERR_RESULT_MALFORMED",
        "result columns differ from the view's declared columns",
      );
  }
  return {
    table,
    columns,
    rowCount: table.numRows,
    rows() {
      const out: Record<string, Cell>[] = [];
      const vecs = columns.map((c) => table.getChild(c.name)!);
      for (let r = 0; r < table.numRows; r++) {
        const row: Record<string, Cell> = {};
        columns.forEach((c, i) => {
          row[c.name] = fromArrowValue(c.type, vecs[i]!.get(r));
        });
        out.push(row);
      }
      return out;
    },
  };
}

function fromArrowValue(t: ColumnType, v: unknown): Cell {
  if (v === null || v === undefined) return null;
  switch (t) {
    case "integer": {
      const b = typeof v === "bigint" ? v : BigInt(v as number);
      return b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
    }
    case "date": {
      const ms = v instanceof Date ? v.getTime() : Number(v);
      return new Date(ms).toISOString().slice(0, 10);
    }
    case "number":
      return Number(v);
    case "boolean":
      return Boolean(v);
    case "string":
      return String(v);
  }
}
