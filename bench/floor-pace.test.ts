import { describe, expect, it } from "vitest";
import { FLOOR_PLAIN, MAX_PACED_DEPTH, pacedDepth, pacedMarker, RequiredToteboxWork } from "./floor-pace.ts";
import { FloorFrameCounter, floorFrame } from "./sim-fleet-worker.ts";

describe("paced floor requests", () => {
  it("carry the path depth in the first payload byte, and a plain request none", () => {
    expect(pacedDepth(FLOOR_PLAIN)).toBeUndefined();
    for (const d of [0, 1, 9, 13, MAX_PACED_DEPTH]) expect(pacedDepth(pacedMarker(d))).toBe(d);
    // Bytes past the last depth, and the empty payload's -1, ask for nothing.
    expect(pacedDepth(2 + MAX_PACED_DEPTH)).toBeUndefined();
    expect(pacedDepth(255)).toBeUndefined();
    expect(pacedDepth(-1)).toBeUndefined();
  });

  it("refuses a depth that does not fit", () => {
    for (const d of [-1, MAX_PACED_DEPTH + 1, 1.5, Number.NaN])
      expect(() => pacedMarker(d)).toThrow(RangeError);
  });
});

describe("RequiredToteboxWork", () => {
  it("signs over the answer's digest and the path it hashed", () => {
    const w = new RequiredToteboxWork();
    const a = new Uint8Array(1432).fill(1);
    const b = new Uint8Array(1432).fill(2);
    const s1 = w.run(9, a);
    expect(s1.byteLength).toBe(64);
    // Ed25519 is deterministic: the same inputs sign the same, and each input moves the signature.
    expect(Buffer.from(w.run(9, a)).equals(Buffer.from(s1))).toBe(true);
    expect(Buffer.from(w.run(9, b)).equals(Buffer.from(s1))).toBe(false);
    expect(Buffer.from(w.run(10, a)).equals(Buffer.from(s1))).toBe(false);
    expect(w.done).toBe(4);
  });
});

describe("FloorFrameCounter's first bytes", () => {
  // Three frames: a paced one, an empty one and a plain one.
  const frames = [
    floorFrame(Uint8Array.of(pacedMarker(9), 7, 7, 7, 7, 7)),
    floorFrame(new Uint8Array(0)),
    floorFrame(Uint8Array.of(FLOOR_PLAIN, 8, 8)),
  ];
  const stream = Buffer.concat(frames);
  const expected = [pacedMarker(9), -1, FLOOR_PLAIN];

  it("reports each completed frame's first payload byte, in one chunk", () => {
    const c = new FloorFrameCounter(1024, true);
    expect(c.push(stream)).toBe(3);
    expect(c.firstBytes).toEqual(expected);
  });

  it("reports the same wherever the stream is cut, once or twice", () => {
    // Every cut, including inside a header and just after a header ends a chunk.
    for (let i = 0; i <= stream.length; i++) {
      for (let j = i; j <= stream.length; j++) {
        const c = new FloorFrameCounter(1024, true);
        const seen: number[] = [];
        let count = 0;
        for (const part of [stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)]) {
          count += c.push(part);
          seen.push(...c.firstBytes);
        }
        expect({ i, j, count, seen }).toEqual({ i, j, count: 3, seen: expected });
      }
    }
  });

  it("one byte at a time", () => {
    const c = new FloorFrameCounter(1024, true);
    const seen: number[] = [];
    for (const byte of stream) {
      c.push(Buffer.of(byte));
      seen.push(...c.firstBytes);
    }
    expect(seen).toEqual(expected);
  });

  it("records nothing unless asked, as on the floor's hub", () => {
    const c = new FloorFrameCounter();
    expect(c.push(stream)).toBe(3);
    expect(c.firstBytes).toEqual([]);
  });

  it("still refuses a frame longer than its limit", () => {
    const c = new FloorFrameCounter(4, true);
    expect(() => c.push(floorFrame(new Uint8Array(5)))).toThrow(
      expect.objectContaining({ code: "BENCH_ERR_IPC" }),
    );
  });
});
