import fc from "fast-check";
import { describe, expect, it, vi } from "vitest";
import { PspError } from "./errors.ts";
import {
  encodeDirectFrame,
  encodeFrame,
  FRAME_HEADER_BYTES,
  FrameDecoder,
  FrameKind,
  frameLength,
} from "./frame-codec.ts";
import { DEFAULT_PSP_LIMITS } from "./limits.ts";

const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log(`fast-check seed ${seed} (set FC_SEED to replay)`);

const concat = (parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));

describe("frame codec", () => {
  it("round-trips segments and places each at an 8-aligned address", () => {
    const segs = [new Uint8Array([1, 2, 3]), new Uint8Array(0), new Uint8Array(17).fill(9)];
    const bytes = concat(encodeFrame(FrameKind.Messages, segs));
    expect(bytes.byteLength % 8).toBe(0);
    const frames = new FrameDecoder(DEFAULT_PSP_LIMITS).push(bytes);
    expect(frames).toHaveLength(1);
    const f = frames[0]!;
    expect(f.kind).toBe(FrameKind.Messages);
    expect(f.byteLength).toBe(bytes.byteLength);
    expect(f.segments.map((s) => [...s])).toEqual(segs.map((s) => [...s]));
    for (const s of f.segments) expect(s.byteOffset % 8).toBe(0);
  });

  it("bodies of any size: 8-aligned, exact bytes (nothing stale), plain Uint8Array", () => {
    const decoder = new FrameDecoder(DEFAULT_PSP_LIMITS);
    for (const size of [1, 7, 100, 1500, 4000, 4100, 70_000]) {
      // Dirty Node's Buffer pool between frames: a body must never show any of this.
      Buffer.allocUnsafe(size % 4096).fill(0xee);
      const seg = new Uint8Array(size).map((_, i) => (i * 13 + size) & 0x7f);
      const [f] = decoder.push(concat(encodeFrame(FrameKind.Messages, [seg, Uint8Array.of(1, 2, 3)])));
      expect(f!.segments[0]).toEqual(seg);
      expect([...f!.segments[1]!]).toEqual([1, 2, 3]);
      for (const s of f!.segments) {
        expect(s.byteOffset % 8).toBe(0);
        expect(Object.getPrototypeOf(s)).toBe(Uint8Array.prototype);
      }
    }
  });

  it("reads a whole frame aligned in its chunk in place, and copies any other into an aligned buffer", () => {
    const segs = [Uint8Array.of(1, 2, 3), new Uint8Array(20).fill(4)];
    const bytes = concat([
      ...encodeFrame(FrameKind.Messages, segs),
      ...encodeFrame(FrameKind.Ping),
      ...encodeFrame(FrameKind.Reply, [new Uint8Array(8), new Uint8Array(9).fill(5)]),
    ]);
    const inPlace = new FrameDecoder(DEFAULT_PSP_LIMITS).push(bytes);
    expect(inPlace.map((f) => f.kind)).toEqual([FrameKind.Messages, FrameKind.Ping, FrameKind.Reply]);
    for (const f of inPlace) for (const seg of f.segments) expect(seg.buffer).toBe(bytes.buffer); // zero-copy
    // The same frames 3 bytes off alignment: each is copied, aligned, and independent of the chunk.
    const shifted = new Uint8Array(bytes.byteLength + 3);
    shifted.set(bytes, 3);
    const copied = new FrameDecoder(DEFAULT_PSP_LIMITS).push(shifted.subarray(3));
    expect(copied.map((f) => f.kind)).toEqual([FrameKind.Messages, FrameKind.Ping, FrameKind.Reply]);
    shifted.fill(0xee);
    expect(copied[0]!.segments.map((x) => [...x])).toEqual(segs.map((x) => [...x]));
    expect([...copied[2]!.segments[1]!]).toEqual(new Array(9).fill(5));
    for (const f of copied) {
      for (const seg of f.segments) {
        expect(seg.buffer).not.toBe(shifted.buffer);
        expect(seg.byteOffset % 8).toBe(0);
        expect(Object.getPrototypeOf(seg)).toBe(Uint8Array.prototype);
      }
    }
    // A ping alone at a misaligned offset is a whole frame at once (it has no body to wait for).
    const ping = concat([new Uint8Array(5), ...encodeFrame(FrameKind.Ping)]).subarray(5);
    const decoder = new FrameDecoder(DEFAULT_PSP_LIMITS);
    expect(decoder.push(ping).map((f) => f.kind)).toEqual([FrameKind.Ping]);
    expect(decoder.midFrame).toBe(false);
  });

  it("encodes a direct frame in one buffer with exactly encodeFrame's bytes, padding zeroed (property)", () => {
    // Every buffer it allocates comes out dirty: a padding byte it forgot to write shows.
    const dirty = vi.spyOn(Buffer, "allocUnsafe").mockImplementation((n: number) => Buffer.alloc(n, 0xee));
    try {
      fc.assert(
        fc.property(
          fc.constantFrom(FrameKind.Request, FrameKind.Reply),
          fc.nat(0xffff_ffff),
          fc.nat(0xffff_ffff),
          fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 6 }),
          (kind, word0, word1, payload) => {
            const head = new Uint8Array(8);
            new DataView(head.buffer).setUint32(0, word0);
            new DataView(head.buffer).setUint32(4, word1);
            const expected = concat(encodeFrame(kind, [head, ...payload]));
            const flat = encodeDirectFrame(kind, word0, word1, payload);
            expect(Buffer.from(flat).equals(Buffer.from(expected))).toBe(true);
            const padded = payload.reduce((n, s) => n + ((s.byteLength + 7) & ~7), 8);
            expect(frameLength(payload.length + 1, padded)).toBe(expected.byteLength);
          },
        ),
        { seed, numRuns: 500 },
      );
      expect(dirty).toHaveBeenCalled();
    } finally {
      dirty.mockRestore();
    }
  });

  it("decodes the same frames whatever the chunking (property)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(fc.uint8Array({ maxLength: 40 }), { minLength: 1, maxLength: 4 }), {
          minLength: 1,
          maxLength: 5,
        }),
        fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 20 }),
        (frames, cuts) => {
          // Anywhere in memory: aligned or not, each segment must come out aligned.
          const shift = cuts[0]! % 8;
          const framed = concat(frames.flatMap((segs) => encodeFrame(FrameKind.Messages, segs)));
          const stream = new Uint8Array(framed.byteLength + shift).subarray(shift);
          stream.set(framed);
          const dec = new FrameDecoder(DEFAULT_PSP_LIMITS);
          const got: Uint8Array[][] = [];
          let off = 0;
          let i = 0;
          while (off < stream.byteLength) {
            const n = cuts[i++ % cuts.length]!;
            for (const f of dec.push(stream.subarray(off, off + n))) got.push([...f.segments]);
            off += n;
          }
          expect(got.map((fr) => fr.map((s) => [...s]))).toEqual(frames.map((fr) => fr.map((s) => [...s])));
          for (const fr of got) for (const seg of fr) expect(seg.byteOffset % 8).toBe(0);
          expect(dec.midFrame).toBe(false);
        },
      ),
      { seed, numRuns: 500 },
    );
  });

  it("refuses an oversized frame from its header alone, before buffering the body", () => {
    const dec = new FrameDecoder({ maxFrameBytes: 1024, maxSegments: 4 });
    const header = new Uint8Array(FRAME_HEADER_BYTES);
    const v = new DataView(header.buffer);
    v.setUint32(0, 0xffff_fff8);
    v.setUint8(4, 1);
    v.setUint8(5, FrameKind.Messages);
    v.setUint16(6, 1);
    expect(() => dec.push(header)).toThrow(expect.objectContaining({ code: "PSP_ERR_FRAME_TOO_LARGE" }));
    // Once failed, stays failed.
    expect(() => dec.push(new Uint8Array(8))).toThrow(PspError);
  });

  it.each([
    ["bad version", (v: DataView) => v.setUint8(4, 9), "PSP_ERR_FRAME_MALFORMED"],
    ["unknown kind", (v: DataView) => v.setUint8(5, 77), "PSP_ERR_FRAME_KIND"],
    ["too many segments", (v: DataView) => v.setUint16(6, 65), "PSP_ERR_FRAME_MALFORMED"],
    ["unaligned body", (v: DataView) => v.setUint32(0, 12), "PSP_ERR_FRAME_MALFORMED"],
    ["message frame without segments", (v: DataView) => v.setUint16(6, 0), "PSP_ERR_FRAME_MALFORMED"],
  ])("refuses %s", (_name, mutate, code) => {
    const bytes = concat(encodeFrame(FrameKind.Messages, [new Uint8Array([1, 2, 3, 4])]));
    mutate(new DataView(bytes.buffer));
    expect(() => new FrameDecoder(DEFAULT_PSP_LIMITS).push(bytes)).toThrow(expect.objectContaining({ code }));
  });

  it("refuses non-zero padding and segment tables that do not add up", () => {
    const good = concat(encodeFrame(FrameKind.Messages, [new Uint8Array([1, 2, 3])]));
    const badPad = good.slice();
    badPad[badPad.byteLength - 1] = 1;
    expect(() => new FrameDecoder(DEFAULT_PSP_LIMITS).push(badPad)).toThrow(
      expect.objectContaining({ code: "PSP_ERR_FRAME_MALFORMED" }),
    );
    const badLen = good.slice();
    new DataView(badLen.buffer).setUint32(8, 200);
    expect(() => new FrameDecoder(DEFAULT_PSP_LIMITS).push(badLen)).toThrow(
      expect.objectContaining({ code: "PSP_ERR_FRAME_MALFORMED" }),
    );
  });

  it("refuses segment lengths near 2^32 that would pad to nothing and overlap (hostile)", () => {
    for (const [first, second] of [
      [0xffff_fff8, 16], // pads to -8: segment 1 would start back at the table
      [0xffff_fff9, 8], // pads to 0
      [0xffff_ffff, 0],
      [0x8000_0000, 0],
    ] as const) {
      const frame = new Uint8Array(FRAME_HEADER_BYTES + 16);
      const v = new DataView(frame.buffer);
      v.setUint32(0, 16);
      v.setUint8(4, 1);
      v.setUint8(5, FrameKind.Messages);
      v.setUint16(6, 2);
      v.setUint32(8, first);
      v.setUint32(12, second);
      expect(() => new FrameDecoder(DEFAULT_PSP_LIMITS).push(frame)).toThrow(
        expect.objectContaining({ code: "PSP_ERR_FRAME_MALFORMED" }),
      );
    }
  });

  it("control frames carry no body", () => {
    const dec = new FrameDecoder(DEFAULT_PSP_LIMITS);
    const [f] = dec.push(concat(encodeFrame(FrameKind.Ping)));
    expect(f?.kind).toBe(FrameKind.Ping);
    const bad = concat(encodeFrame(FrameKind.Ping, [new Uint8Array(1)]));
    expect(() => new FrameDecoder(DEFAULT_PSP_LIMITS).push(bad)).toThrow(
      expect.objectContaining({ code: "PSP_ERR_FRAME_MALFORMED" }),
    );
  });

  it("single- and double-bit flips of a golden frame never crash and never throw untyped (10,000 runs each)", () => {
    const golden = concat(
      encodeFrame(FrameKind.Messages, [
        new Uint8Array([0x82, 0x64, 0x70, 0x75, 0x73, 0x68]),
        new Uint8Array(300).fill(7),
      ]),
    );
    const check = (bytes: Uint8Array) => {
      try {
        new FrameDecoder(DEFAULT_PSP_LIMITS).push(bytes);
      } catch (e) {
        expect(e).toBeInstanceOf(PspError);
      }
    };
    const bit = fc.integer({ min: 0, max: golden.byteLength * 8 - 1 });
    fc.assert(
      fc.property(bit, (b) => {
        const m = golden.slice();
        m[b >> 3]! ^= 1 << (b & 7);
        check(m);
      }),
      { seed, numRuns: 10_000 },
    );
    fc.assert(
      fc.property(bit, bit, (b1, b2) => {
        const m = golden.slice();
        m[b1 >> 3]! ^= 1 << (b1 & 7);
        m[b2 >> 3]! ^= 1 << (b2 & 7);
        check(m);
      }),
      { seed, numRuns: 10_000 },
    );
  });
});
