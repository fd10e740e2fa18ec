import { readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { VectorFile } from "../test-vectors/generate.ts";
import { type TrustedOperators, type VerifiedGrant, verifyCallChain, verifyGrant } from "./capability.ts";
import { ManualClock } from "./clock.ts";
import { ed25519PublicKeyFromRaw } from "./cose.ts";
import { PspError } from "./errors.ts";
import { MemoryReplayStore } from "./replay-store.ts";

/**
 * Bit-flip properties over the golden tokens: any altered grant or call capability (single or
 * batch) is refused, and always with a PspError: never a crash, never an untyped exception.
 * Reproduce a failure with FC_SEED=<logged seed>.
 */
const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);
const NUM_RUNS = 10_000;

const file = JSON.parse(
  readFileSync(new URL("../test-vectors/capabilities.json", import.meta.url), "utf8"),
) as VectorFile;
const byName = (name: string) => {
  const c = file.cases.find((x) => x.name === name);
  if (c === undefined) throw new Error(`golden case ${name} missing`);
  return c;
};
const operatorKey = ed25519PublicKeyFromRaw(Buffer.from(file.keys.operator.publicKey, "hex"));
const trustedOperators: TrustedOperators = (keyId) =>
  keyId === file.keys.operator.keyId ? { publicKey: operatorKey, tenants: ["acme"] } : undefined;

const hex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

/** "ok" or the PspError code; anything else thrown propagates and fails the property. */
function attempt(
  c: VectorFile["cases"][number],
  grant: Uint8Array | VerifiedGrant,
  capability: Uint8Array,
): string {
  const clock = new ManualClock(c.clockMs);
  try {
    verifyCallChain({
      grant,
      capability,
      trustedOperators,
      aggregatorId: file.aggregatorId,
      totebox: c.totebox,
      request: c.request,
      clock,
      replayStore: new MemoryReplayStore(clock),
      skewMs: file.skewMs,
    });
    return "ok";
  } catch (e) {
    if (e instanceof PspError) return e.code;
    throw e;
  }
}

function flip(token: Uint8Array, bits: readonly number[]): Uint8Array {
  const t = Uint8Array.from(token);
  for (const b of bits) t[b >> 3]! ^= 1 << (b & 7);
  return t;
}

/** Two distinct bit positions (equal ones would cancel out and leave the token unaltered). */
const twoBits = (n: number) =>
  fc
    .tuple(fc.integer({ min: 0, max: n - 1 }), fc.integer({ min: 0, max: n - 2 }))
    .map(([a, b]) => [a, b >= a ? b + 1 : b] as const);

const targets = [
  { label: "grant", name: "valid", which: "grant" as const },
  { label: "call capability", name: "valid", which: "capability" as const },
  { label: "batch call capability", name: "batch-ok", which: "capability" as const },
];

describe("bit flips of golden tokens", () => {
  for (const target of targets) {
    const c = byName(target.name);
    const grant = hex(c.grant);
    const capability = hex(c.capability);
    const token = target.which === "grant" ? grant : capability;
    // Capability flips run against the grant verified once (the session path): the grant bytes
    // path is what the grant flips exercise, and this halves the cost of each run.
    const verified = verifyGrant({
      grant,
      trustedOperators,
      aggregatorId: file.aggregatorId,
      clock: new ManualClock(c.clockMs),
      skewMs: file.skewMs,
    });
    const tryToken = (t: Uint8Array) =>
      target.which === "grant" ? attempt(c, t, capability) : attempt(c, verified, t);
    const bits = token.byteLength * 8;

    it(`the unaltered ${target.label} verifies (control)`, () => {
      expect(tryToken(token)).toBe("ok");
    });

    it(`every single-bit flip of the ${target.label} is refused (exhaustive, ${bits} flips)`, () => {
      for (let b = 0; b < bits; b++) expect(tryToken(flip(token, [b])), `bit ${b}`).not.toBe("ok");
    });

    it(`single-bit flips of the ${target.label}: ${NUM_RUNS} runs, always a PspError`, () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: bits - 1 }), (b) => tryToken(flip(token, [b])) !== "ok"),
        { seed, numRuns: NUM_RUNS },
      );
    });

    it(`double-bit flips of the ${target.label}: ${NUM_RUNS} runs, always a PspError`, () => {
      fc.assert(
        fc.property(twoBits(bits), (pair) => tryToken(flip(token, pair)) !== "ok"),
        { seed, numRuns: NUM_RUNS },
      );
    });
  }
});
