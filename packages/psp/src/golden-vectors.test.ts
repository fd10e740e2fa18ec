import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { renderCapabilityVectors, type VectorFile } from "../test-vectors/generate.ts";
import { type TrustedOperators, verifyCallChain } from "./capability.ts";
import { ManualClock } from "./clock.ts";
import { ed25519PublicKeyFromRaw } from "./cose.ts";
import { PspError } from "./errors.ts";
import { MemoryReplayStore } from "./replay-store.ts";

const vectorsPath = new URL("../test-vectors/capabilities.json", import.meta.url);
const text = readFileSync(vectorsPath, "utf8");
const file = JSON.parse(text) as VectorFile;

/** Verifies one case the way a Totebox in any language would, from the JSON alone. */
function run(c: VectorFile["cases"][number]): string[] {
  const keyById = new Map(Object.values(file.keys).map((k) => [k.keyId, k.publicKey]));
  const trustedOperators: TrustedOperators = (keyId) => {
    const entry = file.trustedOperators.find((t) => t.keyId === keyId);
    const raw = keyById.get(keyId);
    if (entry === undefined || raw === undefined) return undefined;
    return { publicKey: ed25519PublicKeyFromRaw(Buffer.from(raw, "hex")), tenants: entry.tenants };
  };
  const clock = new ManualClock(c.clockMs);
  const replayStore = new MemoryReplayStore(clock);
  return c.expect.map(() => {
    try {
      verifyCallChain({
        grant: new Uint8Array(Buffer.from(c.grant, "hex")),
        capability: new Uint8Array(Buffer.from(c.capability, "hex")),
        trustedOperators,
        aggregatorId: file.aggregatorId,
        totebox: c.totebox,
        request: c.request,
        clock,
        replayStore,
        skewMs: file.skewMs,
      });
      return "ok";
    } catch (e) {
      if (!(e instanceof PspError)) throw e;
      return e.code;
    }
  });
}

describe("golden capability vectors (packages/psp/test-vectors/capabilities.json)", () => {
  it("the generator reproduces the checked-in file byte for byte", () => {
    expect(renderCapabilityVectors()).toBe(text);
  });

  it("covers every required situation", () => {
    const names = new Set(file.cases.map((c) => c.name));
    for (const n of [
      "valid",
      "expired",
      "not-yet-valid",
      "replayed",
      "widened",
      "misdirected",
      "wrong-tenant",
      "forged-signature",
      "wrong-audience",
      "call-lifetime-too-long",
      "grant-lifetime-too-long",
      "batch-ok",
      "batch-tampered-path",
    ]) {
      expect(names.has(n), n).toBe(true);
    }
  });

  for (const c of file.cases) {
    it(`${c.name}: ${c.description} → ${c.expect.join(", then ")}`, () => {
      expect(run(c)).toEqual(c.expect);
    });
  }
});
