import {
  Bool,
  Data,
  type DataType,
  DateDay,
  Field,
  Float64,
  Int64,
  makeTable,
  RecordBatch,
  Schema,
  Struct,
  Table,
  tableToIPC,
  Utf8,
} from "apache-arrow";
import { bytesEqual } from "./cose.ts";
import { PspError } from "./errors.ts";

/**
 * View results travel as Apache Arrow IPC (stream format). The receiver decodes them where they
 * landed: PSP frames put each attachment at an 8-byte-aligned address, and Arrow's IPC buffers are
 * 8-byte padded, so the decoded vectors *share* the frame's memory instead of copying it (tested in
 * result.test.ts).
 *
 * Column types are deliberately few: what an owner's view may declare.
 * - string → Utf8
 * - integer → Int64 (amounts are integer minor units; decoded back to number when safe)
 * - number → Float64
 * - date → DateDay (days since the epoch; surfaced as "YYYY-MM-DD")
 * - boolean → Bool
 *
 * Both directions work on the IPC bytes directly instead of going through Arrow's builders and
 * stream reader/writer (which cost ~0.5 ms per small answer, most of the per-answer CPU of a
 * fan-out). The bytes are the ones Arrow's own writer produces for the same data (result.test.ts
 * checks that Arrow re-serialises what we write byte for byte), and the decoder accepts the subset
 * of the format those five types need, checking every offset, length and count it reads. The Arrow
 * `Table` of a decoded result is built from the same (shared) buffers on first use.
 */
export type ColumnType = "string" | "integer" | "number" | "date" | "boolean";
export const COLUMN_TYPES: readonly ColumnType[] = ["string", "integer", "number", "date", "boolean"];

export interface ColumnSpec {
  readonly name: string;
  readonly type: ColumnType;
}

export type Cell = string | number | bigint | boolean | null;

function malformed(message: string, detail?: Record<string, string | number | boolean>): PspError {
  return new PspError("PSP_ERR_RESULT_MALFORMED", message, detail);
}

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

const TYPE_LETTER: Readonly<Record<ColumnType, string>> = {
  string: "s",
  integer: "i",
  number: "n",
  date: "d",
  boolean: "b",
};

const MS_PER_DAY = 86_400_000;
/** ECMAScript dates reach ±10^8 days from the epoch; a DateDay beyond that has no calendar date. */
const MAX_DATE_DAYS = 100_000_000;
const TWO_32 = 4_294_967_296;
const TWO_63 = 2 ** 63;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
/** Arrow's own limit on the length of one array. */
const MAX_BATCH_ROWS = 2_147_483_647;

const pad8 = (n: number) => (n + 7) & ~7;
const bitmapBytes = (n: number) => (n + 7) >>> 3;

// ---------------------------------------------------------------------------------------------
// Encoding

/**
 * The schema message (continuation marker, length, flatbuffer) of a column list, made once by
 * Arrow's own writer and reused: a view's columns rarely change. Keyed by a length-prefixed
 * rendering of names and types, so two different lists can never share a key.
 */
const schemaMessages = new Map<string, Uint8Array>();
const SCHEMA_CACHE_LIMIT = 256;

function schemaMessage(columns: readonly ColumnSpec[]): Uint8Array {
  let key = "";
  for (const c of columns) {
    const letter = Object.hasOwn(TYPE_LETTER, c.type) ? TYPE_LETTER[c.type] : undefined;
    if (letter === undefined || typeof c.name !== "string") {
      throw malformed("result column has an unsupported type", { column: String(c.name) });
    }
    key += `${letter}${c.name.length}:${c.name}`;
  }
  const hit = schemaMessages.get(key);
  if (hit !== undefined) return hit;
  const names = new Set<string>();
  for (const c of columns) {
    if (names.has(c.name)) throw malformed("result has two columns of one name", { column: c.name });
    names.add(c.name);
  }
  const schema = new Schema(columns.map((c) => new Field(c.name, arrowType(c.type), true)));
  // A table without batches serialises as the schema message followed by the end-of-stream marker.
  const ipc = tableToIPC(new Table(schema), "stream");
  const message = new Uint8Array(ipc.subarray(0, ipc.byteLength - 8));
  if (schemaMessages.size >= SCHEMA_CACHE_LIMIT) schemaMessages.clear();
  schemaMessages.set(key, message);
  return message;
}

/** UTF-8 length as TextEncoder writes it (a lone surrogate becomes U+FFFD: 3 bytes). */
function utf8Length(s: string): number {
  const n = s.length;
  for (let i = 0; i < n; i++) {
    if (s.charCodeAt(i) >= 0x80) return Buffer.byteLength(s, "utf8");
  }
  return n;
}

const textEncoder = new TextEncoder();

// One-entry memo: a result's date column usually holds the same date on every row.
let lastDateText: string | undefined;
let lastDateDays = 0;

/** Days since the epoch of "YYYY-MM-DD…" (anything after the 10th character is ignored). */
function dateDays(v: unknown): number {
  const s = String(v);
  if (s === lastDateText) return lastDateDays;
  const ms = Date.parse(`${s.slice(0, 10)}T00:00:00Z`);
  if (!Number.isFinite(ms)) throw malformed("date column holds a non-date");
  const days = Math.floor(ms / MS_PER_DAY);
  lastDateText = s;
  lastDateDays = days;
  return days;
}

/** Writes one Int64 cell (little-endian) at `p`. */
function writeInt64(dv: DataView, p: number, v: unknown): void {
  if (typeof v === "number") {
    if (Number.isSafeInteger(v)) {
      // Two's complement from two 32-bit halves, without a BigInt: hi = floor(v / 2^32).
      const hi = Math.floor(v / TWO_32);
      dv.setUint32(p, v - hi * TWO_32, true);
      dv.setInt32(p + 4, hi, true);
      return;
    }
    if (Number.isInteger(v)) {
      if (v < -TWO_63 || v >= TWO_63) throw malformed("integer column value is outside 64 bits");
      dv.setBigInt64(p, BigInt(v), true);
      return;
    }
  } else if (typeof v === "bigint") {
    // Refused rather than wrapped: a signed answer must never carry a silently different amount.
    if (v < INT64_MIN || v > INT64_MAX) throw malformed("integer column value is outside 64 bits");
    dv.setBigInt64(p, v, true);
    return;
  } else if (typeof v === "boolean") {
    dv.setUint32(p, v ? 1 : 0, true);
    return;
  }
  throw malformed("integer column holds a non-integer", { type: typeof v });
}

/** Per-column facts gathered before the output is sized. */
interface EncodePlan {
  readonly nulls: number;
  /** String columns: the text of each cell (null for null) and their UTF-8 lengths. */
  readonly texts?: (string | null)[];
  readonly textLengths?: Int32Array;
  readonly textBytes?: number;
}

function planColumn(type: ColumnType, rows: readonly (readonly unknown[])[], col: number): EncodePlan {
  const n = rows.length;
  let nulls = 0;
  if (type !== "string") {
    for (let r = 0; r < n; r++) if (rows[r]![col] == null) nulls++;
    return { nulls };
  }
  const texts: (string | null)[] = new Array(n);
  const textLengths = new Int32Array(n);
  let textBytes = 0;
  for (let r = 0; r < n; r++) {
    const v = rows[r]![col];
    if (v == null) {
      nulls++;
      texts[r] = null;
      continue;
    }
    const s = String(v);
    const len = utf8Length(s);
    texts[r] = s;
    textLengths[r] = len;
    textBytes += len;
  }
  if (textBytes > 0x7fffffff) throw malformed("string column is larger than Arrow's 2 GiB offsets");
  return { nulls, texts, textLengths, textBytes };
}

/**
 * The RecordBatch message's flatbuffer, laid out exactly as Arrow's writer (flatbuffers builder)
 * lays it out. Fields equal to their default are left out by that builder, so there are three
 * layouts: rows and body present; no rows but a body (empty Utf8 columns still have a 4-byte
 * offsets buffer); neither. Offsets below are relative to the flatbuffer's start.
 */
function recordBatchMetaLength(rows: number, bodyLength: number, buffers: number, nodes: number): number {
  const vectors = 16 * (buffers + nodes);
  if (rows > 0) return 88 + vectors;
  return bodyLength > 0 ? 80 + vectors : 64 + vectors;
}

function u16s(dv: DataView, p: number, vs: readonly number[]): void {
  for (let i = 0; i < vs.length; i++) dv.setUint16(p + 2 * i, vs[i]!, true);
}

/** A non-negative int64 (below 2^53), little-endian. */
function putCount(dv: DataView, p: number, v: number): void {
  dv.setUint32(p, v % TWO_32, true);
  dv.setUint32(p + 4, Math.floor(v / TWO_32), true);
}

// (No inner closures in the hot paths of this file: tsx compiles with esbuild's keepNames, which
// turns every named inner function into an Object.defineProperty call each time it is created.)
function writeRecordBatchMeta(
  dv: DataView,
  at: number,
  rows: number,
  bodyLength: number,
  regions: readonly number[],
  nodes: readonly number[],
): void {
  const m = regions.length / 2;
  let buffersAt: number;
  if (rows > 0) {
    dv.setUint32(at, 20, true); // root table offset
    u16s(dv, at + 8, [12, 22, 20, 15, 16, 4]); // Message vtable: version, header_type, header, bodyLength
    dv.setUint32(at + 20, 12, true); // Message table → its vtable
    putCount(dv, at + 24, bodyLength);
    dv.setUint8(at + 35, 3); // header_type = RecordBatch
    dv.setUint32(at + 36, 16, true); // header → RecordBatch table at 52
    dv.setUint16(at + 40, 4, true); // MetadataVersion V5
    u16s(dv, at + 42, [10, 24, 12, 8, 4]); // RecordBatch vtable: length, nodes, buffers
    dv.setUint32(at + 52, 10, true);
    dv.setUint32(at + 56, 20, true); // buffers vector at 76
    dv.setUint32(at + 60, 24 + 16 * m, true); // nodes vector after it
    putCount(dv, at + 64, rows);
    buffersAt = 76;
  } else if (bodyLength > 0) {
    dv.setUint32(at, 20, true);
    u16s(dv, at + 8, [12, 26, 24, 19, 20, 4]);
    dv.setUint32(at + 20, 12, true);
    putCount(dv, at + 24, bodyLength);
    dv.setUint8(at + 39, 3);
    dv.setUint32(at + 40, 16, true);
    dv.setUint16(at + 44, 4, true);
    u16s(dv, at + 46, [10, 12, 0, 8, 4]);
    dv.setUint32(at + 56, 10, true);
    dv.setUint32(at + 60, 8, true);
    dv.setUint32(at + 64, 12 + 16 * m, true);
    buffersAt = 68;
  } else {
    dv.setUint32(at, 16, true);
    u16s(dv, at + 6, [10, 14, 12, 7, 8]);
    dv.setUint32(at + 16, 10, true);
    dv.setUint8(at + 23, 3);
    dv.setUint32(at + 24, 16, true);
    dv.setUint16(at + 28, 4, true);
    u16s(dv, at + 30, [10, 12, 0, 8, 4]);
    dv.setUint32(at + 40, 10, true);
    dv.setUint32(at + 44, 8, true);
    dv.setUint32(at + 48, 12 + 16 * m, true);
    buffersAt = 52;
  }
  dv.setUint32(at + buffersAt, m, true);
  for (let i = 0; i < regions.length; i++) putCount(dv, at + buffersAt + 4 + 8 * i, regions[i]!);
  const nodesAt = at + buffersAt + 4 + 16 * m + 4;
  dv.setUint32(nodesAt, nodes.length / 2, true);
  for (let i = 0; i < nodes.length; i++) putCount(dv, nodesAt + 4 + 8 * i, nodes[i]!);
}

/** Writes a Utf8 column's offsets at `at` and its bytes at `dataAt`. */
function writeStrings(out: Uint8Array, dv: DataView, at: number, dataAt: number, plan: EncodePlan): void {
  const texts = plan.texts!;
  const lengths = plan.textLengths!;
  const n = texts.length;
  let pos = 0;
  for (let r = 0; r < n; r++) {
    dv.setInt32(at + 4 * r, pos, true);
    const s = texts[r];
    if (s === null || s === undefined) continue;
    const len = lengths[r]!;
    const p = dataAt + pos;
    if (len === s.length) {
      for (let k = 0; k < len; k++) out[p + k] = s.charCodeAt(k); // ASCII: one byte per unit
    } else if (textEncoder.encodeInto(s, out.subarray(p, p + len)).written !== len) {
      throw new Error("UTF-8 length and encoding disagree");
    }
    pos += len;
  }
  dv.setInt32(at + 4 * n, pos, true);
}

/** Appends a body buffer of `len` bytes (padded to 8) at `body`; returns the new body length. */
function addRegion(regions: number[], body: number, len: number): number {
  regions.push(body, pad8(len));
  return body + pad8(len);
}

/** Encodes rows (arrays in column order) as an Arrow IPC stream. */
export function encodeResult(
  columns: readonly ColumnSpec[],
  rows: readonly (readonly unknown[])[],
): Uint8Array {
  if (columns.length === 0) return tableToIPC(makeTable({}) as unknown as Table, "stream");
  const schemaBytes = schemaMessage(columns);
  const n = rows.length;
  if (n > MAX_BATCH_ROWS) throw malformed("result has more rows than one Arrow batch holds");

  // Pass 1: null counts and string sizes, so every buffer's place is known before writing.
  const plans: EncodePlan[] = new Array(columns.length);
  // regions: [offset, length] per body buffer in Arrow's order; nodes: [length, nulls] per column.
  const regions: number[] = [];
  const nodes: number[] = [];
  let body = 0;
  for (let i = 0; i < columns.length; i++) {
    const type = columns[i]!.type;
    const plan = planColumn(type, rows, i);
    plans[i] = plan;
    nodes.push(n, plan.nulls);
    body = addRegion(regions, body, plan.nulls > 0 ? bitmapBytes(n) : 0);
    switch (type) {
      case "string":
        body = addRegion(regions, body, 4 * (n + 1));
        body = addRegion(regions, body, plan.textBytes!);
        break;
      case "integer":
      case "number":
        body = addRegion(regions, body, 8 * n);
        break;
      case "date":
        body = addRegion(regions, body, 4 * n);
        break;
      case "boolean":
        body = addRegion(regions, body, bitmapBytes(n));
        break;
    }
  }

  const meta = recordBatchMetaLength(n, body, regions.length / 2, columns.length);
  const bodyAt = schemaBytes.byteLength + 8 + meta;
  // Zero-filled: padding, null slots and unset bits must be zero.
  const out = new Uint8Array(bodyAt + body + 8);
  const dv = new DataView(out.buffer);
  out.set(schemaBytes, 0);
  dv.setInt32(schemaBytes.byteLength, -1, true);
  dv.setInt32(schemaBytes.byteLength + 4, meta, true);
  writeRecordBatchMeta(dv, schemaBytes.byteLength + 8, n, body, regions, nodes);

  // Pass 2: values, straight into their buffers.
  let b = 0; // index of the next body buffer
  for (let i = 0; i < columns.length; i++) {
    const type = columns[i]!.type;
    const plan = plans[i]!;
    const validityAt = bodyAt + regions[2 * b++]!;
    if (plan.nulls > 0) {
      for (let r = 0; r < n; r++) if (rows[r]![i] != null) out[validityAt + (r >>> 3)]! |= 1 << (r & 7);
    }
    const at = bodyAt + regions[2 * b++]!;
    switch (type) {
      case "integer":
        for (let r = 0; r < n; r++) {
          const v = rows[r]![i];
          if (v != null) writeInt64(dv, at + 8 * r, v);
        }
        break;
      case "number":
        for (let r = 0; r < n; r++) {
          const v = rows[r]![i];
          if (v != null) dv.setFloat64(at + 8 * r, Number(v), true);
        }
        break;
      case "date":
        for (let r = 0; r < n; r++) {
          const v = rows[r]![i];
          if (v != null) dv.setInt32(at + 4 * r, dateDays(v), true);
        }
        break;
      case "boolean":
        for (let r = 0; r < n; r++) {
          const v = rows[r]![i];
          if (v != null && v) out[at + (r >>> 3)]! |= 1 << (r & 7);
        }
        break;
      case "string":
        writeStrings(out, dv, at, bodyAt + regions[2 * b++]!, plan);
        break;
    }
  }
  // End-of-stream marker.
  dv.setInt32(out.byteLength - 8, -1, true);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding

export interface DecodedResult {
  /** The result as an Arrow table (vectors share the received bytes; built on first use). */
  readonly table: Table;
  readonly columns: readonly ColumnSpec[];
  readonly rowCount: number;
  /** Materializes rows as plain objects (copies): for printing and combining, not for hot paths. */
  rows(): Record<string, Cell>[];
  /**
   * The values of column `index` (of `columns`) over every row, read straight from the received
   * bytes as the Arrow table's getters give them, except that an integer within 2^53 is a number
   * (beyond, a bigint) and a date is epoch milliseconds: what a combine loads, without building an
   * Arrow table (at 10,000 answers, building their tables cost the aggregator ~0.5 s in one turn).
   */
  column(index: number): Cell[];
}

/** One column of one record batch: views into the received bytes (copies only if misaligned). */
interface Chunk {
  readonly length: number;
  readonly nulls: number;
  /** Present only when nulls > 0: exactly ceil(length / 8) bytes. */
  readonly validity: Uint8Array | undefined;
  readonly values: Uint8Array | Int32Array | Float64Array | BigInt64Array;
  /** Utf8 only: length + 1 offsets into `values`. */
  readonly offsets: Int32Array | undefined;
}

/**
 * An integer or float column, bounds checked, whose typed view is made when first read: a
 * combine reads one column of many, and a typed array view costs an allocation each.
 */
class NumericChunk implements Chunk {
  readonly offsets = undefined;
  #values: Float64Array | BigInt64Array | undefined;

  constructor(
    readonly length: number,
    readonly nulls: number,
    readonly validity: Uint8Array | undefined,
    private readonly bytes: Uint8Array,
    private readonly at: number,
    private readonly float: boolean,
  ) {}

  get values(): Float64Array | BigInt64Array {
    this.#values ??= this.float
      ? view(this.bytes, this.at, this.length, Float64Array)
      : view(this.bytes, this.at, this.length, BigInt64Array);
    return this.#values;
  }
}

/**
 * One record batch, checked whole when decoded, whose columns are made into chunks (typed views)
 * only when read: a combine reads one or two columns of a view's eight, and every chunk was a few
 * objects and views per answer. A batch keeps where its column metadata lies to find a column's
 * buffers again. Chunks are not kept: `column` and `rows` copy the cells out (`table` keeps the
 * views it makes, in its Arrow data), and a kept chunk lived as long as its answer (at the
 * aggregator, until the whole fan-out was combined), long enough to be promoted to V8's old
 * generation with its views: ~18 MB of the ~81 MB that V8's sampling heap profiler saw outlive a
 * scavenge there over 5 s at 1,000 Toteboxes.
 */
interface Batch {
  readonly length: number;
  readonly bytes: Uint8Array;
  readonly r: FlatReader;
  /** Position of the first column's FieldNode and of its first Buffer struct (the validity). */
  readonly nodeFirst: number;
  readonly bufFirst: number;
  readonly bodyAt: number;
  readonly bodyLength: number;
  /** The schema's bufferOffsets (shared, not a copy). */
  readonly bufferOffsets: readonly number[];
}

interface DecodedSchema {
  readonly columns: readonly ColumnSpec[];
  readonly nullable: readonly boolean[];
  /** Per column, the offset of its first Buffer struct from the batch's first (16 bytes each). */
  readonly bufferOffsets: readonly number[];
  /** Buffer structs a batch of this schema has: 3 per string column, 2 per other column. */
  readonly bufferCount: number;
  /** Arrow schema for the lazily built table (shared by every result of this schema). */
  arrow: Schema | undefined;
}

/**
 * A bounds-checked reader of the flatbuffers Arrow uses for IPC metadata (Message.fbs, Schema.fbs).
 * Every position it returns lies inside [lo, hi) of one message; anything pointing outside, or a
 * vtable or vector that does not fit, is PSP_ERR_RESULT_MALFORMED.
 */
class FlatReader {
  constructor(
    readonly dv: DataView,
    readonly lo: number,
    readonly hi: number,
  ) {}

  private check(ok: boolean): void {
    if (!ok) throw malformed("result is not a readable Arrow IPC stream");
  }

  /** The table the uoffset at `p` points to, with its vtable, both checked to fit the message. */
  table(p: number): FlatTable {
    const pos = this.offset(p);
    this.check(pos + 4 <= this.hi);
    const vt = pos - this.dv.getInt32(pos, true);
    this.check(vt >= this.lo && vt + 4 <= this.hi);
    const vtSize = this.dv.getUint16(vt, true);
    const size = this.dv.getUint16(vt + 2, true);
    this.check(vtSize >= 4 && vt + vtSize <= this.hi && size >= 4 && pos + size <= this.hi);
    return { pos, vt, vtSize, size };
  }

  /** Absolute position of field `index` (of `width` bytes), or -1 if absent (default value). */
  field(t: FlatTable, index: number, width: number): number {
    const slot = 4 + 2 * index;
    if (slot + 2 > t.vtSize) return -1;
    const off = this.dv.getUint16(t.vt + slot, true);
    if (off === 0) return -1;
    this.check(off + width <= t.size);
    return t.pos + off;
  }

  /** Target of the uoffset stored at `p`. */
  offset(p: number): number {
    this.check(p >= this.lo && p + 4 <= this.hi);
    const target = p + this.dv.getUint32(p, true);
    this.check(target < this.hi);
    return target;
  }

  /** [first element position, element count] of the vector a uoffset at `p` points to. */
  vector(p: number, width: number): [number, number] {
    const first = this.vectorAt(p, width);
    return [first, this.vectorLength];
  }

  /** Element count of the vector `vectorAt` found last. */
  vectorLength = 0;

  /** First element position of the vector a uoffset at `p` points to; its count in vectorLength. */
  vectorAt(p: number, width: number): number {
    const v = this.offset(p);
    this.check(v + 4 <= this.hi);
    const len = this.dv.getUint32(v, true);
    this.check(len <= (this.hi - v - 4) / width);
    this.vectorLength = len;
    return v + 4;
  }

  u8(t: FlatTable, index: number, dflt: number): number {
    const p = this.field(t, index, 1);
    return p < 0 ? dflt : this.dv.getUint8(p);
  }

  i16(t: FlatTable, index: number, dflt: number): number {
    const p = this.field(t, index, 2);
    return p < 0 ? dflt : this.dv.getInt16(p, true);
  }

  i32(t: FlatTable, index: number, dflt: number): number {
    const p = this.field(t, index, 4);
    return p < 0 ? dflt : this.dv.getInt32(p, true);
  }

  /** A non-negative int64 at absolute position `p`, at most `max`. */
  count(p: number, max: number): number {
    this.check(p >= this.lo && p + 8 <= this.hi);
    const hi = this.dv.getInt32(p + 4, true);
    this.check(hi >= 0 && hi < 0x200000);
    const v = hi * TWO_32 + this.dv.getUint32(p, true);
    this.check(v <= max);
    return v;
  }

  i64Field(t: FlatTable, index: number, max: number): number {
    const p = this.field(t, index, 8);
    return p < 0 ? 0 : this.count(p, max);
  }
}

interface FlatTable {
  readonly pos: number;
  readonly vt: number;
  readonly vtSize: number;
  readonly size: number;
}

// flatbuffers-JS (which Arrow uses) decodes strings with a default TextDecoder: replacement
// characters for bad UTF-8 and a leading BOM dropped. Field names and Utf8 cells follow suit.
const textDecoder = new TextDecoder();

const MESSAGE_SCHEMA = 1;
const MESSAGE_RECORD_BATCH = 3;
const METADATA_V4 = 3;
const METADATA_V5 = 4;
// Schema.fbs Type union members this format uses.
const FB_INT = 2;
const FB_FLOAT = 3;
const FB_UTF8 = 5;
const FB_BOOL = 6;
const FB_DATE = 8;

const decodedSchemas = new Map<string, DecodedSchema>();

/**
 * The schema decoded last, with its bytes (an owned copy): a fan-out's answers all carry one
 * view's schema, so nearly every lookup is this one, checked by comparing bytes in place rather
 * than by building a string key of them (~1 µs an answer). Anything else goes through the map.
 */
let lastSchema: { bytes: Uint8Array; decoded: DecodedSchema } | undefined;

function readSchema(r: FlatReader, header: number): DecodedSchema {
  // Same schema bytes, same columns: views answer with one schema, so parse it once.
  const bytes = new Uint8Array(r.dv.buffer, r.dv.byteOffset + r.lo, r.hi - r.lo);
  if (lastSchema !== undefined && bytesEqual(lastSchema.bytes, bytes)) return lastSchema.decoded;
  const key = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
  const hit = decodedSchemas.get(key) ?? parseSchema(r, header, key);
  lastSchema = { bytes: new Uint8Array(bytes), decoded: hit };
  return hit;
}

function parseSchema(r: FlatReader, header: number, key: string): DecodedSchema {
  const schema = r.table(header);
  if (r.i16(schema, 0, 0) !== 0) throw malformed("result is not little-endian Arrow");
  const fieldsAt = r.field(schema, 1, 4);
  const columns: ColumnSpec[] = [];
  const nullable: boolean[] = [];
  if (fieldsAt >= 0) {
    const [first, count] = r.vector(fieldsAt, 4);
    for (let i = 0; i < count; i++) {
      const f = r.table(first + 4 * i);
      // Arrow's writer leaves an empty name out (its own reader then says "null"); absent is "".
      const nameAt = r.field(f, 0, 4);
      let name = "";
      if (nameAt >= 0) {
        const [nameStart, nameLen] = r.vector(nameAt, 1);
        name = textDecoder.decode(new Uint8Array(r.dv.buffer, r.dv.byteOffset + nameStart, nameLen));
      }
      const childrenAt = r.field(f, 5, 4);
      // A dictionary-encoded or nested field is none of the five types.
      let supported = r.field(f, 4, 4) < 0 && (childrenAt < 0 || r.vector(childrenAt, 4)[1] === 0);
      const typeAt = r.field(f, 3, 4);
      let type: ColumnType | undefined;
      switch (r.u8(f, 2, 0)) {
        case FB_UTF8:
          type = "string";
          break;
        case FB_BOOL:
          type = "boolean";
          break;
        case FB_INT:
          if (typeAt >= 0) {
            const t = r.table(typeAt);
            if (r.i32(t, 0, 0) === 64 && r.u8(t, 1, 0) === 1) type = "integer";
          }
          break;
        case FB_FLOAT:
          if (typeAt >= 0 && r.i16(r.table(typeAt), 0, 0) === 2) type = "number"; // DOUBLE
          break;
        case FB_DATE:
          if (typeAt >= 0 && r.i16(r.table(typeAt), 0, 1) === 0) type = "date"; // DAY (default: ms)
          break;
      }
      if (type === undefined) supported = false;
      if (!supported) throw malformed("result column has an unsupported type", { column: name });
      columns.push(Object.freeze({ name, type: type! }));
      nullable.push(r.u8(f, 1, 0) !== 0);
    }
  }
  const bufferOffsets: number[] = [];
  let buffers = 0;
  for (const c of columns) {
    bufferOffsets.push(16 * buffers);
    buffers += c.type === "string" ? 3 : 2;
  }
  // Shared by every result decoded from these schema bytes, hence frozen.
  const decoded: DecodedSchema = {
    columns: Object.freeze(columns),
    nullable,
    bufferOffsets: Object.freeze(bufferOffsets),
    bufferCount: buffers,
    arrow: undefined,
  };
  if (decodedSchemas.size >= SCHEMA_CACHE_LIMIT) decodedSchemas.clear();
  decodedSchemas.set(key, decoded);
  return decoded;
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, i) => {
  let c = 0;
  for (let x = i; x; x >>= 1) c += x & 1;
  return c;
});

/** Set bits among the first `length` bits of the bitmap at `at` in `bytes`. */
function popcountAt(bytes: Uint8Array, at: number, length: number): number {
  let c = 0;
  const whole = length >>> 3;
  for (let i = 0; i < whole; i++) c += POPCOUNT[bytes[at + i]!]!;
  const rest = length & 7;
  if (rest > 0) c += POPCOUNT[bytes[at + whole]! & ((1 << rest) - 1)]!;
  return c;
}

/** A typed view of `byteLength` bytes at absolute `at`; a copy if `at` is not aligned for the type. */
function view<T>(
  bytes: Uint8Array,
  at: number,
  count: number,
  Ctor: { new (b: ArrayBuffer, o: number, n: number): T; readonly BYTES_PER_ELEMENT: number },
): T {
  const abs = bytes.byteOffset + at;
  if (abs % Ctor.BYTES_PER_ELEMENT === 0) return new Ctor(bytes.buffer as ArrayBuffer, abs, count);
  // A fresh buffer (not `slice`: on a Buffer that is a view, with the same misalignment).
  const copy = new Uint8Array(count * Ctor.BYTES_PER_ELEMENT);
  copy.set(bytes.subarray(at, at + copy.byteLength));
  return new Ctor(copy.buffer, 0, count);
}

function inconsistent(what: string): PspError {
  return malformed(`result batch is inconsistent: ${what}`);
}

function readBatch(
  bytes: Uint8Array,
  r: FlatReader,
  header: number,
  schema: DecodedSchema,
  bodyAt: number,
  bodyLength: number,
): Batch {
  const rb = r.table(header);
  const length = r.i64Field(rb, 0, MAX_BATCH_ROWS);
  if (r.field(rb, 3, 4) >= 0) throw malformed("result batch is compressed");
  const variadicAt = r.field(rb, 4, 4);
  if (variadicAt >= 0) {
    r.vectorAt(variadicAt, 8);
    if (r.vectorLength > 0) throw inconsistent("variadic buffers");
  }
  const cols = schema.columns;
  if (cols.length === 0 && length > 0) throw inconsistent("rows without columns");
  const nodesAt = r.field(rb, 1, 4);
  const buffersAt = r.field(rb, 2, 4);
  let nodeFirst = 0;
  let nodeCount = 0;
  if (nodesAt >= 0) {
    nodeFirst = r.vectorAt(nodesAt, 16);
    nodeCount = r.vectorLength;
  }
  let bufFirst = 0;
  let bufCount = 0;
  if (buffersAt >= 0) {
    bufFirst = r.vectorAt(buffersAt, 16);
    bufCount = r.vectorLength;
  }
  if (nodeCount !== cols.length || bufCount !== schema.bufferCount)
    throw inconsistent("node or buffer count");
  const batch: Batch = {
    length,
    bytes,
    r,
    nodeFirst,
    bufFirst,
    bodyAt,
    bodyLength,
    bufferOffsets: schema.bufferOffsets,
  };
  // Every column is checked now, whether or not it is ever read: a hostile answer is refused whole.
  for (let i = 0; i < cols.length; i++) checkColumn(batch, i, cols[i]!.type);
  return batch;
}

/** Absolute start of the body buffer described at `p` (offset, length), checked to fit the body. */
function bufferStart(r: FlatReader, p: number, bodyAt: number, bodyLength: number): number {
  return bodyAt + r.count(p, bodyLength - r.count(p + 8, bodyLength));
}

/** Where column `i`'s buffers lie in the body, all checked to fit it (no views made). */
interface ColumnPlace {
  nulls: number;
  /** -1 without nulls (no bitmap is read then). */
  validityAt: number;
  valuesAt: number;
  valuesLength: number;
  /** String columns: the data buffer. */
  dataAt: number;
  dataLength: number;
}

/** One scratch place for checkColumn and chunkOf: both synchronous, neither re-entered. */
const scratchPlace: ColumnPlace = {
  nulls: 0,
  validityAt: -1,
  valuesAt: 0,
  valuesLength: 0,
  dataAt: 0,
  dataLength: 0,
};

function placeColumn(b: Batch, i: number, type: ColumnType, out: ColumnPlace): ColumnPlace {
  const { r, length, bodyAt, bodyLength } = b;
  const node = b.nodeFirst + 16 * i;
  if (r.count(node, MAX_BATCH_ROWS) !== length) throw inconsistent("column length");
  const nulls = r.count(node + 8, length);
  const buf = b.bufFirst + b.bufferOffsets[i]!;
  out.nulls = nulls;
  out.validityAt = -1;
  if (nulls > 0) {
    if (r.count(buf + 8, bodyLength) < bitmapBytes(length)) throw inconsistent("validity bitmap too short");
    out.validityAt = bufferStart(r, buf, bodyAt, bodyLength);
  } else {
    bufferStart(r, buf, bodyAt, bodyLength); // still checked to lie inside the body
  }
  out.valuesLength = r.count(buf + 24, bodyLength);
  out.valuesAt = bufferStart(r, buf + 16, bodyAt, bodyLength);
  if (type === "string") {
    out.dataLength = r.count(buf + 40, bodyLength);
    out.dataAt = bufferStart(r, buf + 32, bodyAt, bodyLength);
  }
  return out;
}

/** Checks column `i` of a batch the way readers would read it, without making any view. */
function checkColumn(b: Batch, i: number, type: ColumnType): void {
  const p = placeColumn(b, i, type, scratchPlace);
  const { bytes, length } = b;
  const dv = b.r.dv;
  const validityAt = p.validityAt;
  // Arrow trusts null_count; we do not: a lying count would make readers disagree on nulls.
  if (validityAt >= 0 && popcountAt(bytes, validityAt, length) !== length - p.nulls) {
    throw inconsistent("null count");
  }
  switch (type) {
    case "integer":
    case "number":
      if (p.valuesLength < 8 * length) throw inconsistent("values too short");
      return;
    case "date": {
      if (p.valuesLength < 4 * length) throw inconsistent("values too short");
      // Days beyond ±10^8 have no ECMAScript date: refused here rather than failing in rows().
      for (let k = 0; k < length; k++) {
        const d = dv.getInt32(p.valuesAt + 4 * k, true);
        if (
          (d > MAX_DATE_DAYS || d < -MAX_DATE_DAYS) &&
          (validityAt < 0 || (bytes[validityAt + (k >>> 3)]! & (1 << (k & 7))) !== 0)
        ) {
          throw inconsistent("date out of range");
        }
      }
      return;
    }
    case "boolean":
      if (p.valuesLength < bitmapBytes(length)) throw inconsistent("values too short");
      return;
    case "string": {
      if (p.valuesLength < 4 * (length + 1)) throw inconsistent("offsets too short");
      let prev = dv.getInt32(p.valuesAt, true);
      if (prev < 0) throw inconsistent("string offsets");
      for (let k = 1; k <= length; k++) {
        const o = dv.getInt32(p.valuesAt + 4 * k, true);
        if (o < prev) throw inconsistent("string offsets");
        prev = o;
      }
      if (prev > p.dataLength) throw inconsistent("string offsets");
      return;
    }
  }
}

/** Column `i` of a batch as a chunk of views into the received bytes, made for one read. */
function chunkOf(b: Batch, schema: DecodedSchema, i: number): Chunk {
  const type = schema.columns[i]!.type;
  // Checked when decoded: placing it again cannot throw, as long as the received bytes are not
  // changed after decodeResult (the chunks are views of them; DecodedResult documents that the
  // bytes are shared, and nothing in PSP writes into a frame it has handed over).
  const p = placeColumn(b, i, type, scratchPlace);
  const { bytes, length } = b;
  const validity =
    p.validityAt < 0
      ? undefined
      : new Uint8Array(bytes.buffer, bytes.byteOffset + p.validityAt, bitmapBytes(length));
  let chunk: Chunk;
  switch (type) {
    case "integer":
    case "number":
      chunk = new NumericChunk(length, p.nulls, validity, bytes, p.valuesAt, type === "number");
      break;
    case "date":
      chunk = {
        length,
        nulls: p.nulls,
        validity,
        values: view(bytes, p.valuesAt, length, Int32Array),
        offsets: undefined,
      };
      break;
    case "boolean":
      chunk = {
        length,
        nulls: p.nulls,
        validity,
        values: new Uint8Array(bytes.buffer, bytes.byteOffset + p.valuesAt, bitmapBytes(length)),
        offsets: undefined,
      };
      break;
    case "string":
      chunk = {
        length,
        nulls: p.nulls,
        validity,
        values: new Uint8Array(bytes.buffer, bytes.byteOffset + p.dataAt, p.dataLength),
        offsets: view(bytes, p.valuesAt, length + 1, Int32Array),
      };
      break;
  }
  return chunk;
}

const isSet = (bitmap: Uint8Array, i: number) => (bitmap[i >>> 3]! & (1 << (i & 7))) !== 0;

/** Parses an Arrow IPC stream of the five column types: schema, record batches, end-of-stream. */
function readStream(bytes: Uint8Array): { schema: DecodedSchema; batches: Batch[] } {
  if (!(bytes instanceof Uint8Array)) throw malformed("result is not a byte array");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.byteLength;
  let schema: DecodedSchema | undefined;
  const batches: Batch[] = [];
  let p = 0;
  for (;;) {
    // Continuation marker, metadata length; length 0 is the end-of-stream marker, which must be
    // there and must be last (a stream cut at a batch boundary is refused, not silently short).
    if (p + 8 > end || dv.getInt32(p, true) !== -1)
      throw malformed("result is not a readable Arrow IPC stream");
    const metaLength = dv.getInt32(p + 4, true);
    if (metaLength === 0) {
      if (p + 8 !== end) throw malformed("result has bytes after its end-of-stream marker");
      if (schema === undefined) throw malformed("result has no schema");
      return { schema, batches };
    }
    const lo = p + 8;
    if (metaLength < 4 || metaLength > end - lo) throw malformed("result is not a readable Arrow IPC stream");
    const r = new FlatReader(dv, lo, lo + metaLength);
    const message = r.table(lo);
    const version = r.i16(message, 0, 0);
    if (version !== METADATA_V4 && version !== METADATA_V5)
      throw malformed("result has an unsupported Arrow version");
    const headerType = r.u8(message, 1, 0);
    const headerAt = r.field(message, 2, 4);
    const bodyAt = lo + metaLength;
    const bodyLength = r.i64Field(message, 3, end - bodyAt);
    if (headerAt < 0) throw malformed("result message has no header");
    if (schema === undefined) {
      if (headerType !== MESSAGE_SCHEMA || bodyLength !== 0)
        throw malformed("result does not start with a schema");
      schema = readSchema(r, headerAt);
    } else if (headerType === MESSAGE_RECORD_BATCH) {
      batches.push(readBatch(bytes, r, headerAt, schema, bodyAt, bodyLength));
    } else {
      throw malformed("result holds a message other than record batches");
    }
    p = bodyAt + bodyLength;
  }
}

/** "YYYY-MM-DD" of a day count, as `new Date(days * 864e5).toISOString().slice(0, 10)`. */
function dayText(days: number): string {
  // Civil-from-days (proleptic Gregorian), exact for every representable day.
  const z = days + 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor(
    (doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365,
  );
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp < 10 ? mp + 3 : mp - 9;
  const y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  if (y < 0 || y > 9999) return new Date(days * MS_PER_DAY).toISOString().slice(0, 10);
  return `${String(y).padStart(4, "0")}-${m < 10 ? "0" : ""}${m}-${d < 10 ? "0" : ""}${d}`;
}

/** Utf8 cell as Arrow's getter returns it (default TextDecoder), with a fast path for ASCII. */
function utf8Text(bytes: Uint8Array, start: number, end: number): string {
  if (end - start <= 64) {
    let ascii = true;
    for (let i = start; i < end; i++) {
      if (bytes[i]! >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return String.fromCharCode.apply(null, bytes.subarray(start, end) as unknown as number[]);
  }
  return textDecoder.decode(bytes.subarray(start, end));
}

function arrowSchema(schema: DecodedSchema): Schema {
  if (schema.arrow === undefined) {
    schema.arrow = new Schema(
      schema.columns.map((c, i) => new Field(c.name, arrowType(c.type), schema.nullable[i])),
    );
  }
  return schema.arrow;
}

function toArrowTable(schema: DecodedSchema, batches: readonly Batch[]): Table {
  const s = arrowSchema(schema);
  if (batches.length === 0) return new Table(s);
  const struct = new Struct(s.fields);
  return new Table(
    batches.map((b) => {
      // Data built directly (buffers: [offsets, values, validity]): makeData's visitor would
      // re-wrap every buffer, and these views are already of the type's array class.
      const children = s.fields.map((f, i) => {
        const ch = chunkOf(b, schema, i);
        return new Data(f.type, 0, ch.length, ch.nulls, [ch.offsets, ch.values, ch.validity] as never);
      });
      return new RecordBatch(s, new Data(struct, 0, b.length, 0, undefined, children));
    }),
  );
}

class Decoded implements DecodedResult {
  #table: Table | undefined;

  constructor(
    private readonly schema: DecodedSchema,
    private readonly batches: readonly Batch[],
    readonly rowCount: number,
  ) {}

  get columns(): readonly ColumnSpec[] {
    return this.schema.columns;
  }

  get table(): Table {
    if (this.#table === undefined) this.#table = toArrowTable(this.schema, this.batches);
    return this.#table;
  }

  rows(): Record<string, Cell>[] {
    const out: Record<string, Cell>[] = new Array(this.rowCount);
    const cols = this.schema.columns;
    // With two columns of one name the first one is the row's value, as a by-name lookup gives.
    const seen = new Set<string>();
    const use = cols.map((c) => {
      if (seen.has(c.name)) return false;
      seen.add(c.name);
      return true;
    });
    let base = 0;
    for (const b of this.batches) {
      for (let r = 0; r < b.length; r++) out[base + r] = {};
      for (let i = 0; i < cols.length; i++) {
        if (use[i]) fillColumn(out, base, cols[i]!, chunkOf(b, this.schema, i));
      }
      base += b.length;
    }
    return out;
  }

  column(index: number): Cell[] {
    const c = this.schema.columns[index];
    if (c === undefined) throw new RangeError("no such column");
    const out: Cell[] = new Array(this.rowCount);
    let base = 0;
    for (const b of this.batches) {
      columnCells(c, chunkOf(b, this.schema, index), out, base, true);
      base += b.length;
    }
    return out;
  }
}

/** Sets row[name] = value; "__proto__" lands as an own property, not as the row's prototype. */
function put(row: Record<string, Cell>, name: string, value: Cell): void {
  if (name === "__proto__") {
    Object.defineProperty(row, name, { value, enumerable: true, writable: true, configurable: true });
  } else {
    row[name] = value;
  }
}

/** Writes one column of a batch into rows out[base ..], as Arrow's getters would read it. */
function fillColumn(out: Record<string, Cell>[], base: number, c: ColumnSpec, ch: Chunk): void {
  const cells: Cell[] = new Array(ch.length);
  columnCells(c, ch, cells, 0, false);
  const { name } = c;
  for (let k = 0; k < ch.length; k++) put(out[base + k]!, name, cells[k]!);
}

/**
 * Reads one column of a batch into out[base ..], as rows() gives its cells: dates as day text, or
 * with `datesAsMs` as epoch milliseconds (as Arrow's DateDay getter gives them).
 */
function columnCells(c: ColumnSpec, ch: Chunk, out: Cell[], base: number, datesAsMs: boolean): void {
  const { validity, length } = ch;
  switch (c.type) {
    case "integer": {
      // Read the two 32-bit halves; a BigInt only for values beyond 2^53 (kept exact as bigint).
      const v = ch.values as BigInt64Array;
      const halves = new Int32Array(v.buffer, v.byteOffset, 2 * length);
      for (let k = 0; k < length; k++) {
        let value: Cell = null;
        if (validity === undefined || isSet(validity, k)) {
          const hi = halves[2 * k + 1]!;
          if (hi > -0x200000 && hi < 0x200000) value = hi * TWO_32 + (halves[2 * k]! >>> 0);
          else {
            const b = v[k]!;
            value = b >= MIN_SAFE_BIG && b <= MAX_SAFE_BIG ? Number(b) : b;
          }
        }
        out[base + k] = value;
      }
      return;
    }
    case "number": {
      const v = ch.values as Float64Array;
      for (let k = 0; k < length; k++)
        out[base + k] = validity === undefined || isSet(validity, k) ? v[k]! : null;
      return;
    }
    case "date": {
      const v = ch.values as Int32Array;
      for (let k = 0; k < length; k++) {
        if (validity !== undefined && !isSet(validity, k)) out[base + k] = null;
        else out[base + k] = datesAsMs ? v[k]! * MS_PER_DAY : dayText(v[k]!);
      }
      return;
    }
    case "boolean": {
      const v = ch.values as Uint8Array;
      for (let k = 0; k < length; k++) {
        out[base + k] = validity === undefined || isSet(validity, k) ? isSet(v, k) : null;
      }
      return;
    }
    case "string": {
      const v = ch.values as Uint8Array;
      const o = ch.offsets!;
      for (let k = 0; k < length; k++) {
        out[base + k] = validity === undefined || isSet(validity, k) ? utf8Text(v, o[k]!, o[k + 1]!) : null;
      }
      return;
    }
  }
}

const MIN_SAFE_BIG = BigInt(Number.MIN_SAFE_INTEGER);
const MAX_SAFE_BIG = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Decodes an Arrow IPC stream received from a peer. Hostile input: anything that is not a
 * well-formed stream of the five column types above is PSP_ERR_RESULT_MALFORMED. Every offset,
 * length and count is checked against the bytes; beyond what Arrow's reader checks, a stream must
 * end with its end-of-stream marker (a cut stream is refused, not read short), null counts must
 * match the validity bitmaps, string offsets must stay inside their data, and dates must have a
 * calendar day. Compressed batches, dictionaries and nested types are refused. `expect`
 * (optional) pins the schema the caller asked for.
 */
export function decodeResult(bytes: Uint8Array, expect?: readonly ColumnSpec[]): DecodedResult {
  let stream: { schema: DecodedSchema; batches: Batch[] };
  try {
    stream = readStream(bytes);
  } catch (cause) {
    if (cause instanceof PspError) throw cause;
    // Only a bug could land here (every read is bounds-checked); refuse rather than crash.
    throw new PspError(
      "PSP_ERR_RESULT_MALFORMED",
      "result is not a readable Arrow IPC stream",
      {},
      { cause },
    );
  }
  const { columns } = stream.schema;
  if (expect && !sameColumns(expect, columns)) {
    throw new PspError("PSP_ERR_RESULT_MALFORMED", "result columns differ from the view's declared columns");
  }
  let rowCount = 0;
  for (const b of stream.batches) rowCount += b.length;
  return new Decoded(stream.schema, stream.batches, rowCount);
}

/**
 * Same names and types in the same order. A loop, not an `every` callback: decodeResult runs per
 * answer, and V8 keeps a closure's optimised code only while a closure of it is alive, so a
 * callback made per call was compiled again after most major collections at the aggregator.
 */
function sameColumns(a: readonly ColumnSpec[], b: readonly ColumnSpec[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if (a[i]!.name !== b[i]!.name || a[i]!.type !== b[i]!.type) return false;
  }
  return true;
}
