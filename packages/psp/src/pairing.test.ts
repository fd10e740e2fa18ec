import { describe, expect, it } from "vitest";
import { newPairingCode, normalizePairingCode, pairingProof, verifyPairingProof } from "./pairing.ts";

const fpA = "a".repeat(64);
const fpB = "b".repeat(64);

describe("pairing proofs", () => {
  it("codes are 8 Crockford base32 characters shown as XXXX-XXXX, and normalise readings", () => {
    const code = newPairingCode(() => new Uint8Array([1, 2, 3, 4, 5]));
    expect(code).toMatch(/^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$/);
    expect(normalizePairingCode(code.toLowerCase().replace("-", " "))).toBe(code.replace("-", ""));
    expect(normalizePairingCode("oooo-llll")).toBe("00001111");
    expect(() => normalizePairingCode("short")).toThrow(expect.objectContaining({ code: "PSP_ERR_PAIRING" }));
  });

  it("a proof verifies only for the same code, both fingerprints as seen, and the same side", () => {
    const code = "7K3M-Q9XA";
    const base = { code, initiatorFingerprint: fpA, responderFingerprint: fpB };
    const proof = pairingProof({ ...base, side: "initiator" });
    expect(verifyPairingProof({ ...base, side: "initiator" }, proof)).toBe(true);
    expect(verifyPairingProof({ ...base, code: "7K3M-Q9XB", side: "initiator" }, proof)).toBe(false);
    // A relay in the middle sees another fingerprint on one leg: the proof does not carry over.
    expect(
      verifyPairingProof({ ...base, responderFingerprint: "c".repeat(64), side: "initiator" }, proof),
    ).toBe(false);
    expect(
      verifyPairingProof(
        { ...base, initiatorFingerprint: fpB, responderFingerprint: fpA, side: "initiator" },
        proof,
      ),
    ).toBe(false);
    // The responder's proof is not the initiator's: neither can be reflected back.
    expect(verifyPairingProof({ ...base, side: "responder" }, proof)).toBe(false);
    expect(verifyPairingProof({ ...base, side: "initiator" }, proof.subarray(0, 16))).toBe(false);
  });
});
