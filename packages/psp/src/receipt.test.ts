import { createHash, generateKeyPairSync } from "node:crypto";
import { Tag } from "cbor-x";
import { describe, expect, it } from "vitest";
import { ManualClock } from "./clock.ts";
import { decodeCbor, ed25519PrivateKeyFromSeed, encodeCbor, signSign1 } from "./cose.ts";
import { PspError } from "./errors.ts";
import {
  arrowDigest,
  canonicalCbor,
  type ReceiptInput,
  requestHash,
  signReceipt,
  verifyReceipt,
} from "./receipt.ts";

const subject = ed25519PrivateKeyFromSeed(
  new Uint8Array(createHash("sha256").update("totebox tb-1").digest()),
);
const other = ed25519PrivateKeyFromSeed(new Uint8Array(createHash("sha256").update("totebox tb-2").digest()));
const clock = new ManualClock(Date.UTC(2030, 0, 1));
const arrow = Uint8Array.from({ length: 4096 }, (_, i) => (i * 31) & 0xff);
const cti = new Uint8Array(16).fill(0xab);
const request = { view: "position", params: { asOf: "2029-12-31", currency: "EUR" }, row: "unit-1" };

const input: ReceiptInput = {
  capabilityId: cti,
  view: "position",
  requestHash: requestHash(request),
  rowCount: 42,
  suppressedGroups: 3,
  watermark: "journal:9f3c…@1207",
  arrowBytes: arrow,
  subjectId: "tb-1",
  clock,
  signer: subject,
};

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PspError);
    return (e as PspError).code;
  }
  return "ok";
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("canonical CBOR (RFC 8949 §4.2.1)", () => {
  it("sorts map keys by encoded bytes and uses shortest forms", () => {
    // Shorter keys first (length is in the head), then bytewise.
    expect(hex(canonicalCbor({ bb: 1, a: 2, c: 3 }))).toBe("a3616102616303626262" + "01");
    expect(hex(canonicalCbor([0, 23, 24, 255, 256, 65535, 65536, -1, -25]))).toBe(
      "89" + "00" + "17" + "1818" + "18ff" + "190100" + "19ffff" + "1a00010000" + "20" + "3818",
    );
    expect(hex(canonicalCbor(2 ** 40))).toBe("1b0000010000000000");
    expect(hex(canonicalCbor(1.5))).toBe("f93e00");
    expect(hex(canonicalCbor(100000.5))).toBe("fa47c35040");
    expect(hex(canonicalCbor(1.1))).toBe("fb3ff199999999999a");
    expect(hex(canonicalCbor(Number.NaN))).toBe("f97e00");
    expect(hex(canonicalCbor(Number.NEGATIVE_INFINITY))).toBe("f9fc00");
    expect(hex(canonicalCbor(2 ** -24))).toBe("f90001"); // smallest half subnormal
    expect(hex(canonicalCbor({ a: undefined, b: null, c: true, d: new Uint8Array([1]) }))).toBe(
      "a36162f66163f5616441" + "01",
    );
  });

  it("is independent of insertion order", () => {
    expect(requestHash({ view: "v", params: { x: 1, y: [1, 2], z: { q: "r", p: "s" } } })).toEqual(
      requestHash({ view: "v", params: { z: { p: "s", q: "r" }, y: [1, 2], x: 1 } }),
    );
    expect(requestHash({ view: "v" })).not.toEqual(requestHash({ command: "v" }));
    expect(requestHash({ view: "v", row: "1" })).not.toEqual(requestHash({ view: "v" }));
  });
});

describe("receipts", () => {
  it("sign and verify, with all expectations met", () => {
    const token = signReceipt(input);
    const claims = verifyReceipt({
      token,
      subjectPublicKey: subject,
      expect: { arrowBytes: arrow, capabilityId: cti, requestHash: requestHash(request), subjectId: "tb-1" },
    });
    expect(claims.rowCount).toBe(42);
    expect(claims.suppressedGroups).toBe(3);
    expect(claims.view).toBe("position");
    expect(claims.arrowDigest).toEqual(arrowDigest(arrow));
    expect(claims.issuedAt).toBe(Math.floor(clock.now() / 1000));
  });

  it("carries row counts beyond 2^32 exactly", () => {
    const token = signReceipt({ ...input, rowCount: 2 ** 40 + 3 });
    expect(verifyReceipt({ token, subjectPublicKey: subject }).rowCount).toBe(2 ** 40 + 3);
  });

  it("detects an altered Arrow answer, capability id or request", () => {
    const token = signReceipt(input);
    const altered = Uint8Array.from(arrow);
    altered[100]! ^= 1;
    const check = (expect: Parameters<typeof verifyReceipt>[0]["expect"]) =>
      code(() => verifyReceipt({ token, subjectPublicKey: subject, ...(expect ? { expect } : {}) }));
    expect(check({ arrowBytes: altered })).toBe("PSP_ERR_RECEIPT_MISMATCH");
    expect(check({ capabilityId: new Uint8Array(16) })).toBe("PSP_ERR_RECEIPT_MISMATCH");
    expect(check({ requestHash: requestHash({ ...request, row: "unit-2" }) })).toBe(
      "PSP_ERR_RECEIPT_MISMATCH",
    );
    expect(check({ subjectId: "tb-2" })).toBe("PSP_ERR_RECEIPT_MISMATCH");
  });

  it("refuses a receipt signed by another subject, altered, or not a receipt at all", () => {
    const token = signReceipt(input);
    expect(code(() => verifyReceipt({ token, subjectPublicKey: other }))).toBe("PSP_ERR_RECEIPT_SIGNATURE");
    // The aggregator rewrites the row count and keeps the signature.
    const t = decodeCbor(token) as Tag;
    const parts = [...(t.value as unknown[])];
    const payload = decodeCbor(parts[2] as Uint8Array) as Map<number, unknown>;
    payload.set(5, 41);
    parts[2] = encodeCbor(payload);
    const rewritten = encodeCbor(new Tag(parts, 18));
    expect(code(() => verifyReceipt({ token: rewritten, subjectPublicKey: subject }))).toBe(
      "PSP_ERR_RECEIPT_SIGNATURE",
    );
    // A COSE_Sign1 by the right key but without the receipt content type.
    const plain = signSign1({ payload: parts[2] as Uint8Array, signer: subject });
    expect(code(() => verifyReceipt({ token: plain, subjectPublicKey: subject }))).toBe(
      "PSP_ERR_RECEIPT_SIGNATURE",
    );
    expect(code(() => verifyReceipt({ token: Uint8Array.of(1, 2, 3), subjectPublicKey: subject }))).toBe(
      "PSP_ERR_RECEIPT_SIGNATURE",
    );
    const ed448 = generateKeyPairSync("ed448").publicKey;
    expect(code(() => verifyReceipt({ token, subjectPublicKey: ed448 }))).toBe("PSP_ERR_RECEIPT_SIGNATURE");
  });

  it("every single-bit flip of a receipt is refused with a receipt code", () => {
    const token = signReceipt(input);
    for (let bit = 0; bit < token.byteLength * 8; bit++) {
      const t = Uint8Array.from(token);
      t[bit >> 3]! ^= 1 << (bit & 7);
      const c = code(() => verifyReceipt({ token: t, subjectPublicKey: subject }));
      expect(c === "PSP_ERR_RECEIPT_SIGNATURE" || c === "PSP_ERR_RECEIPT_MISMATCH", `bit ${bit}: ${c}`).toBe(
        true,
      );
    }
  });

  it("a signer cannot emit an invalid receipt", () => {
    expect(() => signReceipt({ ...input, view: undefined })).toThrow(TypeError);
    expect(() => signReceipt({ ...input, rowCount: -1 })).toThrow(TypeError);
    expect(() => signReceipt({ ...input, arrowBytes: undefined })).toThrow(TypeError);
  });
});
