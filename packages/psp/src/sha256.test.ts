import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { SHA256_BYTES, sha256, sha256Equals } from "./sha256.ts";

/** Reproduce a failure with FC_SEED=<seed>. */
const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("sha256 fast-check seed", seed);

const reference = (b: Uint8Array) => new Uint8Array(createHash("sha256").update(b).digest());

describe("sha256 (digest read as a binary string)", () => {
  it("is SHA-256 byte for byte, for inputs of any length and digests holding every byte value", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (input) => {
        const d = sha256(input);
        expect(d).toBeInstanceOf(Uint8Array);
        expect(Buffer.isBuffer(d)).toBe(false);
        expect(d).toEqual(reference(input));
      }),
      { seed, numRuns: 500 },
    );
    // Digests with bytes at and above 0x80 (where a UTF-8 reading would differ) and with zeros.
    const seen = new Set<number>();
    for (let i = 0; seen.size < 256 && i < 20_000; i++) {
      const input = new Uint8Array([i & 0xff, i >>> 8]);
      const d = sha256(input);
      expect(d).toEqual(reference(input));
      for (const x of d) seen.add(x);
    }
    expect(seen.size).toBe(256);
  });

  it("RFC 6234 / FIPS 180-2 test vectors", () => {
    const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
    expect(hex(sha256(new Uint8Array(0)))).toBe(
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    );
    expect(hex(sha256(new TextEncoder().encode("abc")))).toBe(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
  });

  it("sha256Equals accepts the digest and refuses any one bit changed, or another length", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.nat(SHA256_BYTES * 8 - 1), (input, bit) => {
        const d = reference(input);
        expect(sha256Equals(input, d)).toBe(true);
        const flipped = new Uint8Array(d);
        flipped[bit >>> 3]! ^= 1 << (bit & 7);
        expect(sha256Equals(input, flipped)).toBe(false);
        expect(sha256Equals(input, d.subarray(0, SHA256_BYTES - 1))).toBe(false);
        expect(sha256Equals(input, new Uint8Array([...d, 0]))).toBe(false);
      }),
      { seed, numRuns: 300 },
    );
  });
});
