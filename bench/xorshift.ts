/**
 * A seeded xorshift32 stream of unsigned 32-bit integers, for the bench's deterministic data and
 * resampling. Not for keys. Seed 0 (xorshift's fixed point) is taken as 1.
 */
export function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
