import {
  Bool as ArrowBool,
  CompressionType,
  compressionRegistry,
  DataType,
  DateDay,
  DateMillisecond,
  Dictionary,
  Field,
  Float32,
  Float64,
  Int32,
  Int64,
  makeData,
  RecordBatch,
  Schema,
  Struct,
  Table,
  tableFromIPC,
  tableToIPC,
  Utf8,
  vectorFromArray,
} from "apache-arrow";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { PspError } from "./errors.ts";
import { encodeFrame, FrameDecoder, FrameKind } from "./frame-codec.ts";
import { DEFAULT_PSP_LIMITS } from "./limits.ts";
import { decodeMessages, encodeMessages } from "./message-codec.ts";
import { type Cell, type ColumnSpec, type ColumnType, decodeResult, encodeResult } from "./result.ts";

/** Reproduce a failure with FC_SEED=<logged seed>. */
const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);

const columns: ColumnSpec[] = [
  { name: "entity", type: "string" },
  { name: "cash", type: "integer" },
  { name: "ratio", type: "number" },
  { name: "as_of", type: "date" },
  { name: "ok", type: "boolean" },
];
const rows = [
  ["tb-01", 1_250_000, 0.93, "2026-11-01", true],
  ["tb-02", -4_000, 0.5, "2026-10-31", false],
  ["tb-03", null, null, null, null],
];

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof PspError) return e.code;
    throw e;
  }
  return "ok";
}

// ---------------------------------------------------------------------------------------------
// Oracles: Arrow's own builders, reader and getters, i.e. how results were encoded and read before
// the direct encoder/decoder.

const ARROW_TYPE: Record<ColumnType, () => DataType> = {
  string: () => new Utf8(),
  integer: () => new Int64(),
  number: () => new Float64(),
  date: () => new DateDay(),
  boolean: () => new ArrowBool(),
};

function toBuilderValue(t: ColumnType, v: unknown): unknown {
  if (v === null || v === undefined) return null;
  switch (t) {
    case "integer":
      return typeof v === "bigint" ? v : typeof v === "boolean" ? (v ? 1n : 0n) : BigInt(v as number);
    case "number":
      return Number(v);
    case "string":
      return String(v);
    case "boolean":
      return Boolean(v);
    case "date":
      return new Date(Date.parse(`${String(v).slice(0, 10)}T00:00:00Z`));
  }
}

/** The stream Arrow's builders and writer make for these rows (columns kept in declared order). */
function arrowWritten(cols: readonly ColumnSpec[], data: readonly (readonly unknown[])[]): Uint8Array {
  const fields = cols.map((c) => new Field(c.name, ARROW_TYPE[c.type](), true));
  const children = cols.map((c, i) => {
    const v = vectorFromArray(
      data.map((r) => toBuilderValue(c.type, r[i])),
      fields[i]!.type,
    );
    return v.data[0] ?? makeData({ type: fields[i]!.type, length: 0 } as never);
  });
  const schema = new Schema(fields);
  const struct = makeData({ type: new Struct(fields), length: data.length, nullCount: 0, children });
  return tableToIPC(new Table(schema, [new RecordBatch(schema, struct)]), "stream");
}

/** Cells as the old decoder produced them: Arrow's getters, then the same normalisation. */
function arrowRows(bytes: Uint8Array): Record<string, Cell>[] {
  const t = tableFromIPC(bytes);
  const out: Record<string, Cell>[] = [];
  for (let r = 0; r < t.numRows; r++) {
    const row: Record<string, Cell> = {};
    t.schema.fields.forEach((f, i) => {
      const v: unknown = t.getChildAt(i)!.get(r);
      let cell: Cell;
      if (v === null || v === undefined) cell = null;
      else if (DataType.isInt(f.type)) {
        const b = v as bigint;
        cell = b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
      } else if (DataType.isDate(f.type)) cell = new Date(v as number).toISOString().slice(0, 10);
      else cell = v as Cell;
      row[f.name] = cell;
    });
    out.push(row);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Generators

const cellOf: Record<ColumnType, fc.Arbitrary<unknown>> = {
  string: fc.oneof(fc.string(), fc.string({ unit: "grapheme" }), fc.string({ unit: "binary" })),
  integer: fc.oneof(
    fc.integer(),
    fc.maxSafeInteger(),
    fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
    fc.boolean(),
  ),
  number: fc.oneof(fc.double(), fc.integer(), fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n })),
  date: fc
    .tuple(
      fc.date({
        min: new Date("0001-01-01T00:00:00Z"),
        max: new Date("9999-12-31T23:59:59Z"),
        noInvalidDate: true,
      }),
      fc.constantFrom(10, 24),
    )
    .map(([d, n]) => d.toISOString().slice(0, n)),
  boolean: fc.oneof(fc.boolean(), fc.constantFrom(0, 1, "", "x")),
};
const nullish = fc.constantFrom(null, undefined);

const tableArb = fc
  .uniqueArray(
    fc.record({
      // Not "" (Arrow's writer leaves an empty name out and its reader then says "null"; tested
      // on its own below) and not "__proto__" (also tested on its own).
      name: fc.string({ minLength: 1, maxLength: 8 }).filter((s) => s !== "__proto__"),
      type: fc.constantFrom<ColumnType>(...(Object.keys(ARROW_TYPE) as ColumnType[])),
    }),
    { minLength: 1, maxLength: 6, selector: (c) => c.name },
  )
  .chain((cols) =>
    fc.tuple(
      fc.constant(cols as ColumnSpec[]),
      fc.array(
        fc.tuple(
          ...cols.map((c) =>
            fc.oneof({ weight: 1, arbitrary: nullish }, { weight: 4, arbitrary: cellOf[c.type] }),
          ),
        ),
        { maxLength: 40 },
      ),
    ),
  );

describe("Arrow results", () => {
  it("round-trips every column type, nulls included", () => {
    const decoded = decodeResult(encodeResult(columns, rows), columns);
    expect(decoded.columns).toEqual(columns);
    expect(decoded.rows()).toEqual([
      { entity: "tb-01", cash: 1_250_000, ratio: 0.93, as_of: "2026-11-01", ok: true },
      { entity: "tb-02", cash: -4_000, ratio: 0.5, as_of: "2026-10-31", ok: false },
      { entity: "tb-03", cash: null, ratio: null, as_of: null, ok: null },
    ]);
  });

  it("integers beyond 2^53 stay exact as bigint; 64-bit extremes survive; beyond 64 bits is refused", () => {
    const big = 2n ** 60n + 7n;
    const n = [{ name: "n", type: "integer" }] as const;
    const values = [
      big,
      -big,
      2n ** 63n - 1n,
      -(2n ** 63n),
      2 ** 53 - 1,
      -(2 ** 53) + 1,
      2 ** 60,
      true,
      false,
    ];
    expect(
      decodeResult(
        encodeResult(
          n,
          values.map((v) => [v]),
        ),
      ).rows(),
    ).toEqual([
      { n: big },
      { n: -big },
      { n: 2n ** 63n - 1n },
      { n: -(2n ** 63n) },
      { n: 2 ** 53 - 1 },
      { n: -(2 ** 53) + 1 },
      { n: 2n ** 60n },
      { n: 1 },
      { n: 0 },
    ]);
    // Arrow's builders wrapped these silently (2^64 became 0): a signed amount must never change.
    for (const v of [2n ** 63n, -(2n ** 63n) - 1n, 2n ** 64n, 2 ** 63, 1e300]) {
      expect(
        code(() => encodeResult(n, [[v]])),
        String(v),
      ).toBe("PSP_ERR_RESULT_MALFORMED");
    }
    for (const v of [1.5, "7", Number.NaN, Number.POSITIVE_INFINITY, {}]) {
      expect(
        code(() => encodeResult(n, [[v]])),
        String(v),
      ).toBe("PSP_ERR_RESULT_MALFORMED");
    }
  });

  it("dates: before 1970, years 1 and 9999, a timestamp's date part; a non-date is refused", () => {
    const d = [{ name: "d", type: "date" }] as const;
    const given = ["1969-12-31", "0001-01-01", "9999-12-31", "2026-01-01T23:59:59Z", "2024-02-29"];
    expect(
      decodeResult(
        encodeResult(
          d,
          given.map((v) => [v]),
        ),
      )
        .rows()
        .map((r) => r.d),
    ).toEqual(["1969-12-31", "0001-01-01", "9999-12-31", "2026-01-01", "2024-02-29"]);
    expect(code(() => encodeResult(d, [["not a date"]]))).toBe("PSP_ERR_RESULT_MALFORMED");
    expect(code(() => encodeResult(d, [[new Date(0)]]))).toBe("PSP_ERR_RESULT_MALFORMED");
  });

  it("unicode strings, empty strings and nulls stay distinct", () => {
    const s = [{ name: "s", type: "string" }] as const;
    const given = ["", null, "é", "😀 ünïcödé 中文", "a\u0000b", "x".repeat(300), "🙂".repeat(100), 42, true];
    expect(
      decodeResult(
        encodeResult(
          s,
          given.map((v) => [v]),
        ),
      )
        .rows()
        .map((r) => r.s),
    ).toEqual([
      "",
      null,
      "é",
      "😀 ünïcödé 中文",
      "a\u0000b",
      "x".repeat(300),
      "🙂".repeat(100),
      "42",
      "true",
    ]);
    // A lone surrogate is not UTF-8: it travels as U+FFFD, as with Arrow's TextEncoder.
    expect(decodeResult(encodeResult(s, [["a\uD800b"]])).rows()[0]!.s).toBe("a\uFFFDb");
  });

  it("empty results keep their schema, for every column type", () => {
    for (const c of columns) {
      const decoded = decodeResult(encodeResult([c], []), [c]);
      expect(decoded.rowCount).toBe(0);
      expect(decoded.rows()).toEqual([]);
      expect(decoded.table.numRows).toBe(0);
      expect(tableFromIPC(encodeResult([c], [])).schema.fields[0]!.name).toBe(c.name);
    }
    const all = decodeResult(encodeResult(columns, []), columns);
    expect(all.columns).toEqual(columns);
    expect(all.table.numCols).toBe(columns.length);
    expect(decodeResult(encodeResult([], [])).columns).toEqual([]);
  });

  it("all-null columns of every type", () => {
    const decoded = decodeResult(encodeResult(columns, [[null, null, null, null, null], []]), columns);
    const nulls = { entity: null, cash: null, ratio: null, as_of: null, ok: null };
    expect(decoded.rows()).toEqual([nulls, nulls]);
  });

  it("columns keep their declared order, numeric-looking names included", () => {
    const cols: ColumnSpec[] = [
      { name: "b", type: "integer" },
      { name: "2024", type: "integer" },
      { name: "a", type: "string" },
    ];
    const decoded = decodeResult(encodeResult(cols, [[1, 2, "x"]]), cols);
    expect(decoded.columns).toEqual(cols);
    expect(tableFromIPC(encodeResult(cols, [[1, 2, "x"]])).schema.fields.map((f) => f.name)).toEqual([
      "b",
      "2024",
      "a",
    ]);
  });

  it("refuses two columns of one name and unknown column types", () => {
    expect(
      code(() =>
        encodeResult(
          [
            { name: "a", type: "integer" },
            { name: "a", type: "string" },
          ],
          [[1, "x"]],
        ),
      ),
    ).toBe("PSP_ERR_RESULT_MALFORMED");
    expect(code(() => encodeResult([{ name: "a", type: "money" as ColumnType }], [[1]]))).toBe(
      "PSP_ERR_RESULT_MALFORMED",
    );
  });

  it("Arrow re-serialises what we write byte for byte (same framing, metadata and buffers)", () => {
    fc.assert(
      fc.property(tableArb, ([cols, data]) => {
        const ours = encodeResult(cols, data);
        expect(Buffer.from(tableToIPC(tableFromIPC(ours), "stream")).equals(Buffer.from(ours))).toBe(true);
      }),
      { seed, numRuns: 300 },
    );
    // Including the layouts without rows (with and without a body) and with large bodies.
    for (const c of columns) {
      const ours = encodeResult([c], []);
      expect(Buffer.from(tableToIPC(tableFromIPC(ours), "stream")).equals(Buffer.from(ours))).toBe(true);
    }
    const many = encodeResult(
      columns,
      Array.from({ length: 5000 }, (_, i) => [`row ${i}`, i, i / 3, "2026-01-01", i % 3 === 0]),
    );
    expect(Buffer.from(tableToIPC(tableFromIPC(many), "stream")).equals(Buffer.from(many))).toBe(true);
  });

  it("values equal what Arrow's builders write and Arrow's getters read", () => {
    fc.assert(
      fc.property(tableArb, ([cols, data]) => {
        const reference = arrowWritten(cols, data);
        const expected = arrowRows(reference);
        const ours = encodeResult(cols, data);
        // Our bytes, read by Arrow; Arrow's bytes, read by us; our bytes, read by us.
        expect(arrowRows(ours)).toEqual(expected);
        expect(decodeResult(reference).rows()).toEqual(expected);
        expect(decodeResult(ours, cols).rows()).toEqual(expected);
        // The lazily built table answers Arrow's getters like tableFromIPC's table does.
        const table = decodeResult(ours).table;
        const arrow = tableFromIPC(ours);
        expect(table.numRows).toBe(arrow.numRows);
        for (let i = 0; i < cols.length; i++) {
          expect(table.schema.fields[i]!.name).toBe(arrow.schema.fields[i]!.name);
          expect(table.getChildAt(i)!.toArray()).toEqual(arrow.getChildAt(i)!.toArray());
        }
        // column(i), without a table: Arrow's getters' values, integers as numbers within 2^53.
        const decoded = decodeResult(reference);
        for (let i = 0; i < cols.length; i++) {
          const vec = arrow.getChildAt(i)!;
          const want = Array.from({ length: arrow.numRows }, (_, r) => {
            const v = vec.get(r) as unknown;
            if (
              typeof v === "bigint" &&
              v >= BigInt(Number.MIN_SAFE_INTEGER) &&
              v <= BigInt(Number.MAX_SAFE_INTEGER)
            ) {
              return Number(v);
            }
            return v instanceof Date ? v.getTime() : v;
          });
          expect(decoded.column(i)).toEqual(want);
        }
      }),
      { seed, numRuns: 300 },
    );
  });

  it("column(i) reads multi-batch streams and refuses a column that does not exist", () => {
    const cols: ColumnSpec[] = [
      { name: "d", type: "date" },
      { name: "n", type: "integer" },
    ];
    const one = tableFromIPC(arrowWritten(cols, [["2026-10-31", 1]]));
    const two = tableFromIPC(arrowWritten(cols, [[null, 2 ** 60]]));
    const decoded = decodeResult(
      tableToIPC(new Table(one.schema, [...one.batches, ...two.batches]), "stream"),
    );
    expect(decoded.column(0)).toEqual([Date.UTC(2026, 9, 31), null]);
    expect(decoded.column(1)).toEqual([1, 2n ** 60n]);
    expect(() => decoded.column(2)).toThrow(RangeError);
  });

  it("reads multi-batch streams written by Arrow", () => {
    const cols: ColumnSpec[] = [
      { name: "s", type: "string" },
      { name: "n", type: "integer" },
    ];
    const one = tableFromIPC(
      arrowWritten(cols, [
        ["a", 1],
        [null, 2],
      ]),
    );
    const two = tableFromIPC(arrowWritten(cols, [["b", null]]));
    const stream = tableToIPC(new Table(one.schema, [...one.batches, ...two.batches]), "stream");
    const decoded = decodeResult(stream, cols);
    expect(decoded.rowCount).toBe(3);
    expect(decoded.rows()).toEqual([
      { s: "a", n: 1 },
      { s: null, n: 2 },
      { s: "b", n: null },
    ]);
    expect(decoded.table.batches.length).toBe(2);
    expect(decoded.table.getChild("n")!.get(2)).toBeNull();
  });

  it("two columns of one name (another writer's stream) read as a by-name lookup does", () => {
    const ipc = Buffer.from(
      encodeResult(
        [
          { name: "a", type: "integer" },
          { name: "b", type: "integer" },
        ],
        [[1, 2]],
      ),
    );
    // Rename "b" to "a" in the schema (same length, so every offset stays valid).
    const at = ipc.indexOf(Buffer.from([1, 0, 0, 0, 0x62, 0]));
    ipc[at + 4] = 0x61;
    const decoded = decodeResult(new Uint8Array(ipc));
    expect(decoded.columns.map((c) => c.name)).toEqual(["a", "a"]);
    expect(decoded.rows()).toEqual([{ a: 1 }]);
  });

  it("an empty column name round-trips as the empty name", () => {
    const cols: ColumnSpec[] = [{ name: "", type: "integer" }];
    const decoded = decodeResult(encodeResult(cols, [[5]]), cols);
    expect(decoded.columns).toEqual(cols);
    expect(decoded.rows()).toEqual([{ "": 5 }]);
  });

  it("a column named __proto__ is an own property, not the row's prototype", () => {
    const row = decodeResult(encodeResult([{ name: "__proto__", type: "string" }], [["x"]])).rows()[0]!;
    expect(Object.getPrototypeOf(row)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(row, "__proto__")?.value).toBe("x");
  });

  it("a schema is matched by its bytes, never by the buffer it last arrived in", () => {
    // Same length schemas (names "aa"/"bb"), decoded from one buffer overwritten in place: the
    // second decode must see the second schema, not the cached first one.
    const a: ColumnSpec[] = [{ name: "aa", type: "integer" }];
    const b: ColumnSpec[] = [{ name: "bb", type: "integer" }];
    const first = encodeResult(a, [[1]]);
    const second = encodeResult(b, [[2]]);
    expect(second.byteLength).toBe(first.byteLength);
    const buffer = new Uint8Array(first);
    expect(decodeResult(buffer).columns).toEqual(a);
    buffer.set(second);
    expect(decodeResult(buffer).columns).toEqual(b);
    expect(decodeResult(buffer).rows()).toEqual([{ bb: 2 }]);
    buffer.set(first);
    expect(decodeResult(buffer).rows()).toEqual([{ aa: 1 }]);
  });

  it("decoded vectors share the received frame's memory (zero-copy)", () => {
    const many = Array.from({ length: 1000 }, (_, i) => [
      `tb-${i}`,
      i * 100,
      i / 7,
      "2026-01-01",
      i % 2 === 0,
    ]);
    const arrow = encodeResult(columns, many);
    // Through the real wire path: message codec → frame → decoder → message codec.
    const wire = Buffer.concat(
      encodeFrame(FrameKind.Messages, encodeMessages([["resolve", 1, ["bytes", arrow]]], DEFAULT_PSP_LIMITS)),
    );
    const [frame] = new FrameDecoder(DEFAULT_PSP_LIMITS).push(wire);
    const [msg] = decodeMessages(frame!.segments, DEFAULT_PSP_LIMITS) as [
      [string, number, [string, Uint8Array]],
    ];
    const received = msg[2][1];
    const frameMemory = frame!.segments[0]!.buffer;
    expect(received.buffer).toBe(frameMemory);

    const decoded = decodeResult(received, columns);
    for (const c of columns) {
      const data = decoded.table.getChild(c.name)!.data[0]!;
      // The column's value buffer is a view into the frame body, not a copy of it.
      expect(data.values.buffer, c.name).toBe(frameMemory);
    }
    expect(decoded.rowCount).toBe(1000);
    expect(decoded.rows()[999]).toMatchObject({ entity: "tb-999", cash: 99_900 });
  });

  it("an unaligned buffer is still read correctly (copied; PSP never hands it one)", () => {
    const arrow = encodeResult(columns, rows);
    const shifted = new Uint8Array(arrow.byteLength + 3).subarray(3);
    shifted.set(arrow);
    expect(decodeResult(shifted).rows()).toEqual(decodeResult(arrow).rows());
    expect(decodeResult(shifted).table.getChild("cash")!.get(0)).toBe(1_250_000n);
  });

  it("a misaligned Buffer (whose slice is a view) is copied, not misread", () => {
    const arrow = encodeResult(columns, rows);
    const pool = Buffer.alloc(arrow.byteLength + 3);
    pool.set(arrow, 3);
    const b = pool.subarray(3);
    expect(decodeResult(b).rows()).toEqual(decodeResult(arrow).rows());
    expect(decodeResult(b).table.getChild("ratio")!.get(1)).toBe(0.5);
  });
});

describe("hostile Arrow results", () => {
  const arrow = encodeResult(columns, rows);
  const malformed = (b: Uint8Array) => code(() => decodeResult(b));

  /** Byte positions inside our own layout (rows > 0): the RecordBatch message and its body. */
  function layout(b: Uint8Array) {
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const meta = 8 + dv.getInt32(4, true) + 8; // start of the RecordBatch flatbuffer
    const buffers = meta + 80;
    const m = dv.getUint32(meta + 76, true);
    const nodes = buffers + 16 * m + 8;
    const body = meta + dv.getInt32(meta - 4, true);
    const buffer = (i: number) => body + Number(dv.getBigInt64(buffers + 16 * i, true));
    return { dv, nodes, buffer };
  }

  it("garbage, truncated, extended or unexpected results are refused with PSP_ERR_RESULT_MALFORMED", () => {
    expect(malformed(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]))).toBe("PSP_ERR_RESULT_MALFORMED");
    expect(malformed(new Uint8Array(0))).toBe("PSP_ERR_RESULT_MALFORMED");
    expect(code(() => decodeResult("x" as unknown as Uint8Array))).toBe("PSP_ERR_RESULT_MALFORMED");
    // Cut anywhere, even at a message boundary: the end-of-stream marker is required.
    for (let n = 0; n < arrow.byteLength; n++)
      expect(malformed(arrow.subarray(0, n)), `cut at ${n}`).toBe("PSP_ERR_RESULT_MALFORMED");
    const longer = new Uint8Array(arrow.byteLength + 8);
    longer.set(arrow);
    expect(malformed(longer)).toBe("PSP_ERR_RESULT_MALFORMED");
    expect(code(() => decodeResult(arrow, [{ name: "other", type: "string" }]))).toBe(
      "PSP_ERR_RESULT_MALFORMED",
    );
  });

  it("every single-bit flip is refused with PSP_ERR_RESULT_MALFORMED or decodes to readable cells", () => {
    for (let bit = 0; bit < arrow.byteLength * 8; bit++) {
      const b = Uint8Array.from(arrow);
      b[bit >> 3]! ^= 1 << (bit & 7);
      let decoded: ReturnType<typeof decodeResult>;
      try {
        decoded = decodeResult(b);
      } catch (e) {
        expect(e instanceof PspError && e.code === "PSP_ERR_RESULT_MALFORMED", `bit ${bit}: ${e}`).toBe(true);
        continue;
      }
      // Accepted (a flipped value or padding bit): every cell reads without throwing, both ways.
      expect(decoded.rows()).toHaveLength(decoded.rowCount);
      for (let i = 0; i < decoded.columns.length; i++) decoded.table.getChildAt(i)!.toArray();
    }
  });

  it("refuses a lying null count, string offsets outside the data, and dates without a calendar day", () => {
    const nulls = Uint8Array.from(arrow);
    layout(nulls).dv.setUint32(layout(nulls).nodes + 4 + 8, 2, true); // column 0 claims 2 nulls, has 1
    expect(malformed(nulls)).toBe("PSP_ERR_RESULT_MALFORMED");

    const offsets = Uint8Array.from(arrow);
    const l = layout(offsets);
    l.dv.setInt32(l.buffer(1) + 4, 1000, true); // entity's second offset beyond its data
    expect(malformed(offsets)).toBe("PSP_ERR_RESULT_MALFORMED");
    l.dv.setInt32(l.buffer(1) + 4, -1, true);
    expect(malformed(offsets)).toBe("PSP_ERR_RESULT_MALFORMED");

    const dates = Uint8Array.from(arrow);
    const d = layout(dates);
    d.dv.setInt32(d.buffer(8), 100_000_001, true); // as_of: validity, values → buffers 7, 8
    expect(malformed(dates)).toBe("PSP_ERR_RESULT_MALFORMED");
    d.dv.setInt32(d.buffer(8), 100_000_000, true); // +275760-09-13, the last ECMAScript day
    expect(decodeResult(dates).rows()[0]!.as_of).toBe(new Date(8.64e15).toISOString().slice(0, 10));
  });

  it("refuses types outside the five, dictionaries, and compressed batches written by Arrow", () => {
    const one = (type: DataType, values: unknown[]) =>
      tableToIPC(new Table({ x: vectorFromArray(values, type) }), "stream");
    expect(malformed(one(new Int32(), [1]))).toBe("PSP_ERR_RESULT_MALFORMED");
    expect(malformed(one(new Float32(), [1]))).toBe("PSP_ERR_RESULT_MALFORMED");
    expect(malformed(one(new DateMillisecond(), [new Date(0)]))).toBe("PSP_ERR_RESULT_MALFORMED");
    expect(malformed(one(new Dictionary(new Utf8(), new Int32()), ["a"]))).toBe("PSP_ERR_RESULT_MALFORMED");
    // A stand-in codec (a bare zstd frame header): only the batch's compression field matters here.
    compressionRegistry.set(CompressionType.ZSTD, { encode: () => Uint8Array.of(40, 181, 47, 253, 0, 0) });
    const compressed = tableToIPC(tableFromIPC(arrow), "stream", CompressionType.ZSTD);
    expect(malformed(compressed)).toBe("PSP_ERR_RESULT_MALFORMED");
  });
});
