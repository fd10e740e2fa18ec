import { describe, expect, it } from "vitest";
import {
  type CryptoPrimitives,
  FLOOR_PLAIN,
  MAX_PACED_DEPTH,
  NODE_CRYPTO,
  pacedDepth,
  pacedDepthFor,
  pacedMarker,
  RequiredToteboxWork,
} from "./floor-pace.ts";
import { answerFloorChunk, FloorFrameCounter, floorFrame } from "./sim-fleet-worker.ts";

describe("paced floor requests", () => {
  it("carry the path depth in the first payload byte, and a plain request none", () => {
    expect(pacedDepth(FLOOR_PLAIN)).toBeUndefined();
    for (const d of [0, 1, 9, 13, MAX_PACED_DEPTH]) expect(pacedDepth(pacedMarker(d))).toBe(d);
    // Bytes past the last depth, and the empty payload's -1, ask for nothing.
    expect(pacedDepth(2 + MAX_PACED_DEPTH)).toBeUndefined();
    expect(pacedDepth(255)).toBeUndefined();
    expect(pacedDepth(-1)).toBeUndefined();
  });

  it("ask for the path of one batch over the whole fleet", () => {
    expect([1, 2, 3, 1000, 1024, 10_000].map(pacedDepthFor)).toEqual([0, 1, 1, 9, 10, 13]);
  });

  it("refuses a depth that does not fit", () => {
    for (const d of [-1, MAX_PACED_DEPTH + 1, 1.5, Number.NaN])
      expect(() => pacedMarker(d)).toThrow(RangeError);
  });
});

/** node:crypto's primitives, counted, and each hash's input size recorded. */
function counting() {
  const counts = { verify: 0, sign: 0, hashedBytes: [] as number[] };
  const crypto: CryptoPrimitives = {
    verify: (m, k, s) => {
      counts.verify++;
      return NODE_CRYPTO.verify(m, k, s);
    },
    sign: (m, k) => {
      counts.sign++;
      return NODE_CRYPTO.sign(m, k);
    },
    sha256: (d) => {
      counts.hashedBytes.push(d.byteLength);
      return NODE_CRYPTO.sha256(d);
    },
  };
  return { counts, crypto };
}

describe("RequiredToteboxWork", () => {
  it("runs a Totebox's per-answer cryptography: a verification, the leaf, the path, the answer, a signature", () => {
    const { counts, crypto } = counting();
    const w = new RequiredToteboxWork(crypto);
    w.run(9, new Uint8Array(1432));
    expect(counts.verify).toBe(1);
    expect(counts.sign).toBe(1);
    // The leaf (a capability's claims), 9 interior nodes (0x01 ‖ left ‖ right), the answer.
    expect(counts.hashedBytes).toEqual([150, ...new Array(9).fill(65), 1432]);
    w.run(0, new Uint8Array(10));
    expect(counts.hashedBytes.slice(11)).toEqual([150, 10]);
  });

  it("refuses to answer if its verification fails", () => {
    const { crypto } = counting();
    const w = new RequiredToteboxWork({ ...crypto, verify: () => false });
    expect(() => w.run(1, new Uint8Array(1))).toThrow(/did not verify/);
  });

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

  it("records nothing unless asked, as on the floor's hub, and counts the same wherever the stream is cut", () => {
    for (let i = 0; i <= stream.length; i++) {
      for (let j = i; j <= stream.length; j++) {
        const c = new FloorFrameCounter();
        let count = 0;
        for (const part of [stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)]) {
          count += c.push(part);
          expect(c.firstBytes).toEqual([]);
        }
        expect({ i, j, count }).toEqual({ i, j, count: 3 });
      }
    }
  });

  it("still refuses a frame longer than its limit", () => {
    const c = new FloorFrameCounter(4, true);
    expect(() => c.push(floorFrame(new Uint8Array(5)))).toThrow(
      expect.objectContaining({ code: "BENCH_ERR_IPC" }),
    );
  });
});

describe("answerFloorChunk (a simulated Totebox's floor server)", () => {
  const answer = floorFrame(new Uint8Array(40).fill(0x5a));

  function server() {
    const { counts, crypto } = counting();
    const work = new RequiredToteboxWork(crypto);
    const written: Buffer[] = [];
    const stats = { floorFrames: 0, floorPaced: 0 };
    const counter = new FloorFrameCounter(1024, true);
    const push = (chunk: Buffer) =>
      answerFloorChunk({ chunk, counter, answer, work: () => work, write: (b) => written.push(b), stats });
    return { counts, written, stats, push };
  }

  it("answers every request, and a paced one only after the work, across chunks", () => {
    const s = server();
    const stream = Buffer.concat([
      floorFrame(Uint8Array.of(pacedMarker(9), 1, 2, 3)),
      floorFrame(Uint8Array.of(FLOOR_PLAIN, 1, 2, 3)),
      floorFrame(Uint8Array.of(pacedMarker(0), 1, 2, 3)),
    ]);
    // Cut just after the first frame's header: its marker opens the next chunk.
    s.push(stream.subarray(0, 4));
    expect(s.written).toHaveLength(0);
    s.push(stream.subarray(4, 12));
    s.push(stream.subarray(12));
    expect(s.written).toHaveLength(3);
    expect(s.written.every((b) => b === answer)).toBe(true);
    expect(s.stats).toEqual({ floorFrames: 3, floorPaced: 2 });
    expect(s.counts.verify).toBe(2);
    expect(s.counts.sign).toBe(2);
    // The first paced request: leaf, 9 nodes, the answer's payload (not its 4-byte header).
    expect(s.counts.hashedBytes).toEqual([150, ...new Array(9).fill(65), 40, 150, 40]);
  });

  it("answers a plain request with no work at all", () => {
    const s = server();
    s.push(floorFrame(Uint8Array.of(FLOOR_PLAIN, 9, 9)));
    s.push(floorFrame(new Uint8Array(0)));
    expect(s.written).toHaveLength(2);
    expect(s.stats).toEqual({ floorFrames: 2, floorPaced: 0 });
    expect(s.counts).toEqual({ verify: 0, sign: 0, hashedBytes: [] });
  });

  it("answers nothing of a chunk whose length is hostile, not even the good requests before it", () => {
    const s = server();
    const hostile = Buffer.alloc(4);
    hostile.writeUInt32BE(2048, 0);
    const good = floorFrame(Uint8Array.of(pacedMarker(3), 1, 2));
    expect(() => s.push(Buffer.concat([good, hostile, Buffer.alloc(8)]))).toThrow(
      expect.objectContaining({ code: "BENCH_ERR_IPC" }),
    );
    expect(s.written).toHaveLength(0);
    expect(s.counts.verify).toBe(0);
    expect(s.stats).toEqual({ floorFrames: 0, floorPaced: 0 });
  });
});
