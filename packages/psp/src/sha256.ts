import { hash } from "node:crypto";

/**
 * SHA-256 for PSP's hot paths: capability leaves and Merkle nodes, Arrow digests, grant and
 * request hashes. A fan-out hashes ~3 times per Totebox at the aggregator and ~10 times per call
 * at each Totebox, over inputs of 64 bytes to a few KiB.
 *
 * Node's one-shot `crypto.hash` (no Hash object) is used with its digest read as a "binary"
 * (latin1) string rather than as a Buffer. A Buffer digest is a fresh off-heap ArrayBuffer each
 * time: a malloc, an ArrayBuffer object, external-memory accounting and a free when the collector
 * sweeps it. A 32-character one-byte string lives on V8's heap like any small object. Latin1 maps each byte
 * 0-255 to the code unit of the same value, so the string is the digest, byte for byte.
 * `npm run bench -- psp` prints both ways, as process CPU per digest (the collector's share
 * included); on 2026-11-27 it read 1.80 against 1.08 µs for a Merkle node's 65 bytes and 4.52
 * against 3.71 µs for a 1,120-byte answer.
 */

/** Bytes in a SHA-256 digest. */
export const SHA256_BYTES = 32;

/** SHA-256 of `input` as a fresh plain Uint8Array (kept on V8's heap: it is 32 bytes). */
export function sha256(input: Uint8Array): Uint8Array {
  const s = hash("sha256", input, "binary");
  const out = new Uint8Array(SHA256_BYTES);
  for (let i = 0; i < SHA256_BYTES; i++) out[i] = s.charCodeAt(i);
  return out;
}

/**
 * Whether SHA-256(`input`) equals `expected`, without materializing the digest as bytes. Reads
 * every byte whatever differs first (no early exit), as `bytesEqual` does for short values.
 */
export function sha256Equals(input: Uint8Array, expected: Uint8Array): boolean {
  return expected.byteLength === SHA256_BYTES && sha256EqualsAt(input, expected, 0);
}

/** sha256Equals against the 32 bytes at `b[at]` (a digest read in place from a larger buffer). */
export function sha256EqualsAt(input: Uint8Array, b: Uint8Array, at: number): boolean {
  if (at < 0 || at + SHA256_BYTES > b.byteLength) return false;
  const s = hash("sha256", input, "binary");
  let diff = 0;
  for (let i = 0; i < SHA256_BYTES; i++) diff |= s.charCodeAt(i) ^ b[at + i]!;
  return diff === 0;
}
