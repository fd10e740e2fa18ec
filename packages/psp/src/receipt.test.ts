import { createHash, createPublicKey, generateKeyPairSync } from "node:crypto";
import { Tag } from "cbor-x";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { keyIdOf } from "./capability.ts";
import { ManualClock } from "./clock.ts";
import {
  COSE_ALG_EDDSA,
  COSE_HEADER,
  decodeCbor,
  ed25519PrivateKeyFromSeed,
  ed25519Sign,
  encodeCbor,
  encodeProtectedHeader,
  encodeSign1,
  type HeaderLabel,
  signSign1,
  sigStructure1,
} from "./cose.ts";
import { PspError } from "./errors.ts";
import {
  arrowDigest,
  type CanonicalValue,
  canonicalCbor,
  checkReceipt,
  RECEIPT_CONTENT_TYPE,
  type ReceiptClaims,
  type ReceiptInput,
  receiptCodecsForTest,
  requestHash,
  signReceipt,
  verifyReceipt,
} from "./receipt.ts";

/** Reproduce a failure with FC_SEED=<logged seed>. */
const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);

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

/** The receipt with its payload's row count (claim 5) rewritten and the signature kept. */
function withRowCount(token: Uint8Array, rows: number): Uint8Array {
  const parts = [...((decodeCbor(token) as Tag).value as unknown[])];
  const payload = decodeCbor(parts[2] as Uint8Array) as Map<number, unknown>;
  payload.set(5, rows);
  parts[2] = encodeCbor(payload);
  return encodeCbor(new Tag(parts, 18));
}

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
    const rewritten = withRowCount(token, 41);
    const parts = [...((decodeCbor(token) as Tag).value as unknown[])];
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

  it("checkSignature: false skips the Ed25519 check only: key id, envelope and expectations still hold", () => {
    const token = signReceipt(input);
    const unsigned = (t: Uint8Array, key = subject, expect?: Parameters<typeof verifyReceipt>[0]["expect"]) =>
      verifyReceipt({
        token: t,
        subjectPublicKey: key,
        checkSignature: false,
        ...(expect ? { expect } : {}),
      });
    expect(unsigned(token).rowCount).toBe(42);
    // Signed by someone else: the key id in the protected header gives it away without a verify.
    expect(code(() => unsigned(token, other))).toBe("PSP_ERR_RECEIPT_SIGNATURE");
    expect(code(() => unsigned(token, subject, { capabilityId: new Uint8Array(16) }))).toBe(
      "PSP_ERR_RECEIPT_MISMATCH",
    );
    expect(code(() => unsigned(Uint8Array.of(1, 2, 3)))).toBe("PSP_ERR_RECEIPT_SIGNATURE");
    // What it does not catch, by design: a payload rewritten under the right key id. Only the
    // signature check finds that, which is why whoever relies on the figures (the console) always
    // verifies.
    // Any one bit of the key id flipped, read in place: refused as another signer's, unverified.
    const kidAt = token.findIndex((_, i) => i > 0 && token[i - 1] === 0x58 && token[i] === 0x20) + 1;
    expect(Buffer.from(token.subarray(kidAt, kidAt + 32))).toEqual(Buffer.from(keyIdOf(subject), "hex"));
    for (let bit = 0; bit < 256; bit++) {
      const t = Uint8Array.from(token);
      t[kidAt + (bit >> 3)]! ^= 1 << (bit & 7);
      expect(
        code(() => unsigned(t)),
        `kid bit ${bit}`,
      ).toBe("PSP_ERR_RECEIPT_SIGNATURE");
    }
    const rewritten = withRowCount(token, 41);
    expect(unsigned(rewritten).rowCount).toBe(41);
    expect(code(() => verifyReceipt({ token: rewritten, subjectPublicKey: subject }))).toBe(
      "PSP_ERR_RECEIPT_SIGNATURE",
    );
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

// ---------------------------------------------------------------------------------------------
// The direct codecs (the signer's exact layout, read and written byte by byte) against the
// generic ones (cbor-x, re-encode, field checks).

const codecs = receiptCodecsForTest;
const keyId = (k: Parameters<typeof createPublicKey>[0]) =>
  createHash("sha256")
    .update(Buffer.from((createPublicKey(k).export({ format: "jwk" }) as { x: string }).x, "base64url"))
    .digest();

/** A receipt envelope the subject signs over any payload bytes (for non-signer layouts). */
function signedEnvelope(payload: Uint8Array): Uint8Array {
  const protectedBytes = encodeProtectedHeader(
    new Map<HeaderLabel, unknown>([
      [COSE_HEADER.alg, COSE_ALG_EDDSA],
      [COSE_HEADER.contentType, RECEIPT_CONTENT_TYPE],
      [COSE_HEADER.kid, new Uint8Array(keyId(subject))],
    ]),
  );
  const signature = ed25519Sign(sigStructure1(protectedBytes, new Uint8Array(0), payload), subject);
  return encodeSign1({ protectedBytes, unprotectedHeader: new Map(), payload, signature });
}

const text = fc.oneof(
  fc.string({ minLength: 1, maxLength: 40 }),
  fc.string({ minLength: 1, maxLength: 40, unit: "grapheme" }),
  fc.string({ minLength: 1, maxLength: 300, unit: "binary" }),
  fc.constantFrom("\uFEFFbom", "x".repeat(1024), "é".repeat(512), "é".repeat(513)),
);
const count = fc.oneof(fc.nat(30), fc.nat(), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }));
const claimsArb: fc.Arbitrary<ReceiptClaims> = fc
  .record({
    capabilityId: fc.uint8Array({ minLength: 8, maxLength: 64 }),
    isView: fc.boolean(),
    name: text,
    requestHash: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    rowCount: count,
    suppressedGroups: count,
    watermark: text,
    arrowDigest: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    issuedAt: count,
    subjectId: text,
  })
  .map(({ isView, name, ...c }) => ({
    ...c,
    view: isView ? name : undefined,
    command: isView ? undefined : name,
  }));

/** The generic check's answer: the claims, or the refusal message. */
function generic(payload: Uint8Array): ReceiptClaims | string {
  try {
    return codecs.parseReceiptPayloadGeneric(payload, (m) => new Error(m));
  } catch (e) {
    return (e as Error).message;
  }
}

describe("receipt codecs: direct paths agree with the generic ones", () => {
  it("the direct writer emits exactly cbor-x's bytes, and declines only what it should", () => {
    fc.assert(
      fc.property(claimsArb, (c) => {
        const direct = codecs.writePayload(c);
        const strings = [c.view ?? c.command, c.watermark, c.subjectId] as string[];
        const takes = strings.every((s) => !/[\uD800-\uDFFF]/.test(s) && Buffer.byteLength(s) <= 1024);
        expect(direct !== undefined).toBe(takes);
        if (direct !== undefined) {
          expect(Buffer.from(direct).equals(Buffer.from(codecs.encodeReceiptPayload(c)))).toBe(true);
          // ... and the direct reader takes it back unchanged, as the generic check does; it
          // leaves text with a leading BOM to the generic check (cbor-x drops it from long text).
          const read = codecs.readPayload(direct);
          if (read === undefined) expect(strings.some((s) => s.startsWith("\uFEFF"))).toBe(true);
          else {
            expect(read).toEqual(c);
            expect(generic(direct)).toEqual(c);
          }
        }
      }),
      { seed, numRuns: 2000 },
    );
  });

  it("whatever the direct reader accepts, the generic check accepts with the same claims", () => {
    const variants = fc.oneof(
      // The signer's bytes with bits flipped, bytes replaced, or cut short.
      fc
        .tuple(claimsArb, fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 3 }))
        .map(([c, edits]) => {
          const p = Uint8Array.from(codecs.encodeReceiptPayload(c));
          for (const [i, v] of edits) p[i % p.byteLength] = v;
          return p;
        }),
      fc.tuple(claimsArb, fc.nat()).map(([c, n]) => {
        const p = codecs.encodeReceiptPayload(c);
        return p.subarray(0, n % p.byteLength);
      }),
      // Maps in another key order, counts as bigints (8-byte heads), other value types.
      fc.tuple(claimsArb, fc.boolean(), fc.boolean(), fc.anything()).map(([c, shuffle, bigCounts, odd]) => {
        const m = new Map<number, unknown>(
          decodeCbor(codecs.encodeReceiptPayload(c)) as Map<number, unknown>,
        );
        if (bigCounts) for (const k of [5, 6, 9]) m.set(k, BigInt(m.get(k) as number | bigint));
        const entries = [...m];
        if (shuffle) entries.reverse();
        if (odd !== undefined && entries.length > 0) entries[0] = [entries[0]![0], odd];
        try {
          return encodeCbor(new Map(entries));
        } catch {
          return encodeCbor(m);
        }
      }),
    );
    fc.assert(
      fc.property(variants, (p) => {
        const direct = codecs.readPayload(p);
        if (direct !== undefined) expect(generic(p)).toEqual(direct);
      }),
      { seed, numRuns: 3000 },
    );
  });

  it("checkReceipt refuses exactly what verifyReceipt refuses, with the same code and field, and agrees on the counts", () => {
    // What verifyReceipt or checkReceipt made of one token: the counts, or the refusal.
    const outcome = (f: () => { rowCount: number; suppressedGroups: number; watermark: string }) => {
      try {
        const { rowCount, suppressedGroups, watermark } = f();
        return { rowCount, suppressedGroups, watermark };
      } catch (e) {
        expect(e).toBeInstanceOf(PspError);
        return { code: (e as PspError).code, field: (e as PspError).detail?.field };
      }
    };
    const arrowArb = fc.uint8Array({ maxLength: 300 });
    // A payload in the signer's layout (then edited, cut short, or re-encoded in another layout, as
    // above), signed as it is, with expectations that match the claims or differ in one field.
    const cases = fc.record({
      claims: claimsArb,
      arrow: arrowArb,
      edits: fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 2 }),
      cut: fc.option(fc.nat(), { nil: undefined }),
      otherLayout: fc.boolean(),
      wrong: fc.constantFrom("none", "arrowBytes", "capabilityId", "requestHash", "subjectId", "several"),
      partial: fc.boolean(),
      checkSignature: fc.boolean(),
      signer: fc.constantFrom("subject", "other"),
    });
    fc.assert(
      fc.property(cases, (k) => {
        const c = { ...k.claims, arrowDigest: arrowDigest(k.arrow) };
        let payload = Uint8Array.from(codecs.encodeReceiptPayload(c));
        if (k.otherLayout) {
          const m = new Map([...(decodeCbor(payload) as Map<number, unknown>)].reverse());
          m.set(5, BigInt(c.rowCount));
          payload = Uint8Array.from(encodeCbor(m));
        }
        for (const [i, v] of k.edits) payload[i % payload.byteLength] = v;
        if (k.cut !== undefined) payload = payload.subarray(0, k.cut % (payload.byteLength + 1));
        const token = signedEnvelope(payload);
        const flip = (b: Uint8Array) => {
          const x = Uint8Array.from(b);
          x[0]! ^= 1;
          return x;
        };
        const w = k.wrong;
        const expectations = {
          arrowBytes: w === "arrowBytes" || w === "several" ? Uint8Array.of(...k.arrow, 1) : k.arrow,
          capabilityId: w === "capabilityId" || w === "several" ? flip(c.capabilityId) : c.capabilityId,
          requestHash: w === "requestHash" ? flip(c.requestHash) : c.requestHash,
          subjectId: w === "subjectId" || w === "several" ? `${c.subjectId}x` : c.subjectId,
        };
        // Some expectations left out: each is checked only when given.
        const expect_ = k.partial
          ? { capabilityId: expectations.capabilityId, subjectId: expectations.subjectId }
          : expectations;
        const key = k.signer === "subject" ? subject : other;
        const args = { token, subjectPublicKey: key, expect: expect_, checkSignature: k.checkSignature };
        expect(outcome(() => checkReceipt(args))).toEqual(outcome(() => verifyReceipt(args)));
      }),
      { seed, numRuns: 2000 },
    );
  });

  it("checkReceipt on the signer's own receipts: counts, and each differing expectation named", () => {
    for (const extra of [
      {},
      { watermark: "journal:ünï😀@7", subjectId: "tb-中文" },
      { rowCount: 2 ** 40 + 3 },
    ]) {
      const r = { ...input, ...extra };
      const token = signReceipt(r);
      const expect_ = {
        arrowBytes: arrow,
        capabilityId: cti,
        requestHash: requestHash(request),
        subjectId: r.subjectId,
      };
      expect(checkReceipt({ token, subjectPublicKey: subject, expect: expect_ })).toEqual({
        rowCount: r.rowCount,
        suppressedGroups: 3,
        watermark: r.watermark,
      });
      const field = (e: Partial<typeof expect_>) => {
        try {
          checkReceipt({ token, subjectPublicKey: subject, expect: { ...expect_, ...e } });
          return "accepted";
        } catch (err) {
          return `${(err as PspError).code} ${String((err as PspError).detail?.field)}`;
        }
      };
      expect(field({ arrowBytes: arrow.subarray(1) })).toBe("PSP_ERR_RECEIPT_MISMATCH arrowDigest");
      expect(field({ capabilityId: cti.subarray(1) })).toBe("PSP_ERR_RECEIPT_MISMATCH capabilityId");
      expect(field({ requestHash: requestHash({ ...request, row: "unit-2" }) })).toBe(
        "PSP_ERR_RECEIPT_MISMATCH requestHash",
      );
      expect(field({ subjectId: `${r.subjectId}\u0000` })).toBe("PSP_ERR_RECEIPT_MISMATCH subjectId");
      // The same length: ASCII against ASCII, and a non-ASCII character in place of another.
      const last = r.subjectId.length - 1;
      expect(field({ subjectId: `${r.subjectId.slice(0, last)}#` })).toBe(
        "PSP_ERR_RECEIPT_MISMATCH subjectId",
      );
      expect(field({ subjectId: `${r.subjectId.slice(0, last)}é` })).toBe(
        "PSP_ERR_RECEIPT_MISMATCH subjectId",
      );
      // Two expectations wrong: the first in verifyReceipt's order is the one named.
      expect(field({ requestHash: new Uint8Array(32), subjectId: "tb-9" })).toBe(
        "PSP_ERR_RECEIPT_MISMATCH requestHash",
      );
      expect(field({ capabilityId: new Uint8Array(16), requestHash: new Uint8Array(32) })).toBe(
        "PSP_ERR_RECEIPT_MISMATCH capabilityId",
      );
      expect(field({ subjectId: r.subjectId.slice(0, -1) })).toBe("PSP_ERR_RECEIPT_MISMATCH subjectId");
      expect(code(() => checkReceipt({ token, subjectPublicKey: other, expect: expect_ }))).toBe(
        "PSP_ERR_RECEIPT_SIGNATURE",
      );
    }
  });

  it("the direct envelope reader agrees with the generic envelope checks", () => {
    const token = signReceipt(input);
    const parts = codecs.readEnvelope(token)!;
    expect(parts).toBeDefined();
    const msg = codecs.decodeEnvelopeGeneric(token);
    const same = (a: Uint8Array, b: unknown) => Buffer.from(a).equals(b as Uint8Array);
    expect(same(parts.protectedBytes, msg.protectedBytes)).toBe(true);
    expect(same(parts.kid, msg.protectedHeader.get(COSE_HEADER.kid))).toBe(true);
    expect(same(parts.payload, msg.payload)).toBe(true);
    expect(same(parts.signature, msg.signature)).toBe(true);
    // Flips and cuts: wherever the direct reader still says yes, the generic checks say the same.
    for (let bit = 0; bit < token.byteLength * 8; bit++) {
      const t = Uint8Array.from(token);
      t[bit >> 3]! ^= 1 << (bit & 7);
      const d = codecs.readEnvelope(t);
      if (d === undefined) continue;
      const g = codecs.decodeEnvelopeGeneric(t);
      expect(same(d.protectedBytes, g.protectedBytes) && same(d.payload, g.payload)).toBe(true);
      expect(same(d.signature, g.signature)).toBe(true);
    }
    for (let n = 0; n < token.byteLength; n++)
      expect(codecs.readEnvelope(token.subarray(0, n))).toBeUndefined();
  });

  it("the signer's protected header and envelope are exactly cbor-x's encoding", () => {
    const token = signReceipt(input);
    const t = decodeCbor(token) as Tag;
    expect(t.tag).toBe(18);
    expect(Buffer.from(encodeCbor(new Tag(t.value, 18))).equals(Buffer.from(token))).toBe(true);
    const [protectedBytes] = t.value as [Uint8Array];
    const expected = encodeProtectedHeader(
      new Map<HeaderLabel, unknown>([
        [COSE_HEADER.alg, COSE_ALG_EDDSA],
        [COSE_HEADER.contentType, RECEIPT_CONTENT_TYPE],
        [COSE_HEADER.kid, new Uint8Array(keyId(subject))],
      ]),
    );
    expect(Buffer.from(protectedBytes).equals(Buffer.from(expected))).toBe(true);
  });

  it("receipts in another layout (key order, 8-byte counts, text with a BOM) verify as before", () => {
    const token = signReceipt(input);
    const payload = decodeCbor((decodeCbor(token) as Tag).value[2] as Uint8Array) as Map<number, unknown>;
    const reordered = new Map([...payload].reverse());
    reordered.set(5, 42n);
    reordered.set(7, "\uFEFF".concat("x".repeat(80)));
    const other = signedEnvelope(encodeCbor(reordered));
    expect(codecs.readPayload((decodeCbor(other) as Tag).value[2] as Uint8Array)).toBeUndefined();
    const generic = verifyReceipt({ token: other, subjectPublicKey: subject });
    expect(generic.rowCount).toBe(42);
    expect(generic.view).toBe("position");
    // cbor-x decodes a long text with a leading BOM without it: the re-encoding differs, refused.
    expect(generic.watermark).toBe("\uFEFF".concat("x".repeat(80)).slice(0));
  });

  it("a Buffer token yields claims that are plain copies, not views into the token", () => {
    const token = Buffer.from(signReceipt(input));
    const claims = verifyReceipt({ token, subjectPublicKey: subject });
    expect(claims.capabilityId.constructor).toBe(Uint8Array);
    const before = Uint8Array.from(claims.requestHash);
    token.fill(0);
    expect(claims.requestHash).toEqual(before);
    expect(claims.capabilityId).toEqual(cti);
  });

  it("non-ASCII and astral text round-trips through sign and verify", () => {
    const token = signReceipt({ ...input, watermark: "journal:ünï😀@7", subjectId: "tb-中文" });
    const claims = verifyReceipt({ token, subjectPublicKey: subject, expect: { subjectId: "tb-中文" } });
    expect(claims.watermark).toBe("journal:ünï😀@7");
  });
});

// ---------------------------------------------------------------------------------------------
// canonicalCbor against the previous (byte-array) implementation, kept here as the oracle.

function referenceCanonical(value: CanonicalValue): Uint8Array {
  const out: number[] = [];
  const head = (major: number, n: number) => {
    const m = major << 5;
    if (n < 24) out.push(m | n);
    else if (n < 0x100) out.push(m | 24, n);
    else if (n < 0x10000) out.push(m | 25, n >>> 8, n & 0xff);
    else if (n < 0x100000000) out.push(m | 26, n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
    else {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, BigInt(n));
      out.push(m | 27, ...b);
    }
  };
  const float = (x: number) => {
    const b = new Uint8Array(8);
    const dv = new DataView(b.buffer);
    dv.setFloat32(0, x);
    const f16 = (() => {
      if (Number.isNaN(x)) return 0x7e00;
      const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
      const a = Math.abs(x);
      if (a === Number.POSITIVE_INFINITY) return sign | 0x7c00;
      if (a >= 65520) return undefined;
      if (a < 2 ** -14) {
        const h = a * 2 ** 24;
        return Number.isInteger(h) ? sign | h : undefined;
      }
      let e = Math.floor(Math.log2(a));
      if (2 ** e > a) e--;
      if (2 ** (e + 1) <= a) e++;
      const m = (a / 2 ** e - 1) * 1024;
      return Number.isInteger(m) ? sign | ((e + 15) << 10) | m : undefined;
    })();
    if (f16 !== undefined) out.push(0xf9, f16 >>> 8, f16 & 0xff);
    else if (Math.fround(x) === x) out.push(0xfa, ...b.subarray(0, 4));
    else {
      dv.setFloat64(0, x);
      out.push(0xfb, ...b);
    }
  };
  const write = (v: CanonicalValue): void => {
    if (v === null) out.push(0xf6);
    else if (v === true) out.push(0xf5);
    else if (v === false) out.push(0xf4);
    else if (typeof v === "number") {
      if (Number.isSafeInteger(v)) v >= 0 ? head(0, v) : head(1, -1 - v);
      else float(v);
    } else if (typeof v === "string") {
      const b = Buffer.from(v, "utf8");
      head(3, b.byteLength);
      out.push(...b);
    } else if (v instanceof Uint8Array) {
      head(2, v.byteLength);
      out.push(...v);
    } else if (Array.isArray(v)) {
      head(4, v.length);
      for (const item of v as CanonicalValue[]) write(item);
    } else {
      const entries = Object.entries(v as Record<string, CanonicalValue | undefined>)
        .filter(([, item]) => item !== undefined)
        .map(([k, item]) => [canonicalKey(k), item] as const)
        .sort((a, b) => Buffer.compare(a[0], b[0]));
      head(5, entries.length);
      for (const [k, item] of entries) {
        out.push(...k);
        write(item as CanonicalValue);
      }
    }
  };
  const canonicalKey = (k: string) => {
    const saved = out.splice(0);
    write(k);
    const key = Buffer.from(out.splice(0));
    out.push(...saved);
    return key;
  };
  write(value);
  return Uint8Array.from(out);
}

describe("canonicalCbor matches the previous implementation byte for byte", () => {
  it("on arbitrary JSON-like values (unicode keys, floats, bytes, nesting)", () => {
    const leaf: fc.Arbitrary<CanonicalValue> = fc.oneof(
      fc.constant(null),
      fc.boolean(),
      fc.double(),
      fc.integer(),
      fc.maxSafeInteger(),
      fc.string({ unit: "binary" }),
      fc.string({ unit: "grapheme" }),
      fc.uint8Array({ maxLength: 40 }),
    );
    const value = fc.letrec<{ v: CanonicalValue }>((tie) => ({
      v: fc.oneof(
        { depthSize: "small" },
        leaf,
        fc.array(tie("v")),
        fc.dictionary(fc.string({ unit: "binary" }), fc.option(tie("v"), { nil: undefined })),
      ) as fc.Arbitrary<CanonicalValue>,
    })).v;
    fc.assert(
      fc.property(value, (v) => {
        expect(Buffer.from(canonicalCbor(v)).equals(Buffer.from(referenceCanonical(v)))).toBe(true);
      }),
      { seed, numRuns: 2000 },
    );
  });

  it("grows past its first buffer", () => {
    const big = { blob: new Uint8Array(5000).fill(1), list: Array.from({ length: 300 }, (_, i) => `v${i}`) };
    expect(Buffer.from(canonicalCbor(big)).equals(Buffer.from(referenceCanonical(big)))).toBe(true);
  });
});
