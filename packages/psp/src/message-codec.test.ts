import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { PspError } from "./errors.ts";
import { encodeFrame, FrameDecoder, FrameKind } from "./frame-codec.ts";
import { DEFAULT_PSP_LIMITS } from "./limits.ts";
import { decodeMessages, encodeMessages } from "./message-codec.ts";

const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log(`fast-check seed ${seed} (set FC_SEED to replay)`);

const L = DEFAULT_PSP_LIMITS;
const viaFrame = (messages: unknown[]) => {
  const bytes = Buffer.concat(encodeFrame(FrameKind.Messages, encodeMessages(messages, L)));
  const [frame] = new FrameDecoder(L).push(bytes);
  return { frame: frame!, messages: decodeMessages(frame!.segments, L) };
};

describe("message codec", () => {
  it("round-trips capnweb-shaped messages and lifts large byte strings into aligned attachments", () => {
    const big = new Uint8Array(1000).map((_, i) => i & 0xff);
    const small = new Uint8Array([1, 2, 3]);
    const { frame, messages } = viaFrame([
      ["push", ["pipeline", 0, ["read"], [["bytes", small], { a: 1, b: "x", c: null, d: true }]]],
      ["resolve", 3, { arrow: ["bytes", big] }],
    ]);
    expect(frame.segments).toHaveLength(2);
    const got = messages as [unknown, [string, number, { arrow: [string, Uint8Array] }]];
    const arrow = got[1][2].arrow[1];
    expect([...arrow]).toEqual([...big]);
    // The attachment is a view into the frame body, at an 8-aligned address: no copy was made.
    expect(arrow.buffer).toBe(frame.segments[1]!.buffer);
    expect(arrow.byteOffset % 8).toBe(0);
  });

  it.each([
    ["a Date (CBOR tag 1)", "81c11a5f5e1000"],
    ["a Set (tag 258)", "81d9010280"],
    ["a typed array (tag 72)", "81d8484101"],
    ["a cyclic structure (tags 28/29)", "81d81c81d81d00"],
    ["a bigint (tag 2)", "81c249010000000000000000"],
    ["not an array", "a0"],
    ["an empty batch", "80"],
    ["an attachment index out of range", "81d99ca405"],
    ["truncated CBOR", "8264707573"],
  ])("refuses %s with a typed error", (_n, hex) => {
    expect(() => decodeMessages([Buffer.from(hex, "hex")], L)).toThrow(
      expect.objectContaining({ code: "PSP_ERR_MESSAGE_MALFORMED" }),
    );
  });

  it("refuses hostile nesting without blowing the stack", () => {
    const deep = Buffer.concat([Buffer.from([0x81]), Buffer.alloc(200_000, 0x81), Buffer.from([0])]);
    expect(() => decodeMessages([deep], L)).toThrow(
      expect.objectContaining({ code: "PSP_ERR_MESSAGE_MALFORMED" }),
    );
    const moderate = Buffer.concat([Buffer.alloc(100, 0x81), Buffer.from([0])]);
    expect(() => decodeMessages([moderate], L)).toThrow(
      expect.objectContaining({ code: "PSP_ERR_MESSAGE_MALFORMED" }),
    );
  });

  it("a __proto__ key never sets a prototype", () => {
    // batch of two messages: "x" and {"__proto__": {"polluted": 1}}
    const hex = "826178a1695f5f70726f746f5f5fa168706f6c6c7574656401";
    let outcome: string;
    try {
      const out = decodeMessages([Buffer.from(hex, "hex")], L) as [string, Record<string, unknown>];
      expect(Object.getPrototypeOf(out[1])).toBe(Object.prototype);
      expect(out[1].polluted).toBeUndefined();
      outcome = "accepted as a plain key";
    } catch (e) {
      expect(e).toBeInstanceOf(PspError);
      outcome = "refused";
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(["accepted as a plain key", "refused"]).toContain(outcome);
  });

  it("arbitrary bytes never crash the decoder (property, 10,000 runs)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), (bytes) => {
        try {
          decodeMessages([bytes], L);
        } catch (e) {
          expect(e).toBeInstanceOf(PspError);
        }
      }),
      { seed, numRuns: 10_000 },
    );
  });
});
