import { describe, expect, it } from "vitest";
import { encodeFrame, FrameDecoder, FrameKind } from "./frame-codec.ts";
import { DEFAULT_PSP_LIMITS } from "./limits.ts";
import { decodeMessages, encodeMessages } from "./message-codec.ts";
import { type ColumnSpec, decodeResult, encodeResult } from "./result.ts";

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

  it("integers beyond 2^53 stay exact as bigint", () => {
    const big = 2n ** 60n + 7n;
    const decoded = decodeResult(encodeResult([{ name: "n", type: "integer" }], [[big]]));
    expect(decoded.rows()[0]!.n).toBe(big);
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

  it("an unaligned buffer is still read correctly (Arrow copies; PSP never hands it one)", () => {
    const arrow = encodeResult(columns, rows);
    const shifted = new Uint8Array(arrow.byteLength + 3).subarray(3);
    shifted.set(arrow);
    expect(decodeResult(shifted).rows()[0]).toMatchObject({ entity: "tb-01" });
  });

  it("garbage, truncated or unexpected results are refused with PSP_ERR_RESULT_MALFORMED", () => {
    const arrow = encodeResult(columns, rows);
    expect(() => decodeResult(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]))).toThrow(
      expect.objectContaining({ code: "PSP_ERR_RESULT_MALFORMED" }),
    );
    expect(() => decodeResult(arrow.subarray(0, arrow.byteLength >> 1))).toThrow(
      expect.objectContaining({ code: "PSP_ERR_RESULT_MALFORMED" }),
    );
    expect(() => decodeResult(arrow, [{ name: "other", type: "string" }])).toThrow(
      expect.objectContaining({ code: "PSP_ERR_RESULT_MALFORMED" }),
    );
  });
});
