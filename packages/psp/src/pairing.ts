import { createHmac, randomBytes, scryptSync, timingSafeEqual } from "node:crypto";
import { PspError } from "./errors.ts";
import { normalizeFingerprint } from "./identity.ts";

/**
 * The pairing ceremony's cryptography (machine-based auth).
 *
 * A Totebox that is asked to pair shows two things to the person at it: its device ID (the
 * certificate fingerprint, grouped) and a short one-time code. The person types the code into the
 * console (or aggregator) that is to be paired. That side connects over mutual TLS with a
 * certificate the Totebox does not know yet, and proves knowledge of the code bound to *both*
 * certificate fingerprints as each side saw them. The Totebox answers with its own proof. A
 * machine in the middle sees other fingerprints on each leg, so it cannot relay a proof, and it
 * cannot guess the code within its lifetime: the proof key is derived with scrypt, and a wrong
 * proof burns the code.
 *
 * Codes: 8 characters of Crockford base32 (40 bits), shown as "ABCD-EFGH".
 */
const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

export function newPairingCode(random: (n: number) => Uint8Array = randomBytes): string {
  const bytes = random(5);
  let bits = 0n;
  for (const b of bytes) bits = (bits << 8n) | BigInt(b);
  let out = "";
  for (let i = 0; i < 8; i++) {
    out = ALPHABET[Number(bits & 31n)]! + out;
    bits >>= 5n;
  }
  return `${out.slice(0, 4)}-${out.slice(4)}`;
}

export function normalizePairingCode(code: string): string {
  const c = code.toUpperCase().replace(/[\s-]/g, "").replace(/O/g, "0").replace(/[IL]/g, "1");
  if (!/^[0-9A-HJKMNP-TV-Z]{8}$/.test(c))
    throw new PspError("PSP_ERR_PAIRING", "pairing code must be 8 characters");
  return c;
}

export type PairingSide = "initiator" | "responder";

export interface PairingProofInput {
  code: string;
  /** Certificate fingerprint of the side that connects (the one being paired). */
  initiatorFingerprint: string;
  /** Certificate fingerprint of the Totebox (or aggregator) that showed the code. */
  responderFingerprint: string;
  side: PairingSide;
}

// scrypt cost: ~30 ms per derivation here. Paid once per pairing, it multiplies an attacker's
// offline guessing cost by the same factor.
const SCRYPT = { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };

export function pairingProof(input: PairingProofInput): Uint8Array {
  const code = normalizePairingCode(input.code);
  const i = normalizeFingerprint(input.initiatorFingerprint);
  const r = normalizeFingerprint(input.responderFingerprint);
  const key = scryptSync(code, `psp-pairing-v1|${i}|${r}`, 32, SCRYPT);
  return createHmac("sha256", key).update(`psp-pairing-v1|${input.side}|${i}|${r}`).digest();
}

export function verifyPairingProof(input: PairingProofInput, proof: Uint8Array): boolean {
  const want = pairingProof(input);
  return proof.byteLength === want.byteLength && timingSafeEqual(want, proof);
}
