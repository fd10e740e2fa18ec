import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { UiError } from "./errors.ts";
import { type SseEvent, SseParser } from "./sse.ts";

const SEED = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log(`sse.test.ts fast-check seed ${SEED} (rerun with FC_SEED=${SEED})`);

function parseAll(chunks: string[], max = 1 << 20): SseEvent[] {
  const p = new SseParser(max);
  return chunks.flatMap((c) => p.feed(c));
}

const STREAM =
  ": keep-alive\n" +
  'event: progress\ndata: {"a":1}\n\n' +
  "event: progress\r\ndata: line one\r\ndata: line two\r\n\r\n" +
  "id: 7\rdata:no-space\r\r" +
  'event: result\ndata: {"done":true}\n\n' +
  "event: ignored-without-data\n\n" +
  "data: incomplete at the end";

const EXPECTED: SseEvent[] = [
  { event: "progress", data: '{"a":1}', id: null },
  { event: "progress", data: "line one\nline two", id: null },
  { event: "message", data: "no-space", id: "7" },
  { event: "result", data: '{"done":true}', id: "7" },
];

describe("SseParser", () => {
  it("follows the event-stream rules: LF, CRLF and CR lines, comments, multi-line data, ids", () => {
    expect(parseAll([STREAM])).toEqual(EXPECTED);
  });

  it("gives the same events however the stream is split (property)", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: STREAM.length - 1 }), { maxLength: 40 }),
        (cuts) => {
          const sorted = [...cuts].sort((a, b) => a - b);
          const chunks: string[] = [];
          let at = 0;
          for (const c of sorted) {
            chunks.push(STREAM.slice(at, c));
            at = c;
          }
          chunks.push(STREAM.slice(at));
          expect(parseAll(chunks)).toEqual(EXPECTED);
        },
      ),
      { seed: SEED, numRuns: 500 },
    );
  });

  it("refuses an event longer than its bound, whether in one line or many", () => {
    const long = `data: ${"x".repeat(200)}`;
    expect(() => parseAll([long], 100)).toThrow(UiError);
    const many = "data: 1234567890\n".repeat(20);
    try {
      parseAll([many], 100);
      expect.unreachable();
    } catch (e) {
      expect((e as UiError).code).toBe("UI_ERR_TOO_LARGE");
    }
    // The bound is per event: many small events are fine.
    expect(parseAll(["data: 1234567890\n\n".repeat(50)], 100)).toHaveLength(50);
  });
});
