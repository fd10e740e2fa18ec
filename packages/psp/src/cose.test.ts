import { generateKeyPairSync } from "node:crypto";
import { Tag } from "cbor-x";
import { describe, expect, it } from "vitest";
import {
  bytesEqual,
  COSE_ALG_EDDSA,
  COSE_HEADER,
  decodeCbor,
  decodeSign1,
  ed25519PrivateKeyFromSeed,
  ed25519PublicKeyFromRaw,
  encodeCbor,
  encodeSign1,
  MAX_TOKEN_BYTES,
  rawPublicKey,
  signSign1,
  sigStructure1,
  verifySign1,
} from "./cose.ts";
import { PspError } from "./errors.ts";

const seed = new Uint8Array(32).fill(7);
const priv = ed25519PrivateKeyFromSeed(seed);
const pub = ed25519PublicKeyFromRaw(rawPublicKey(priv));
const payload = new TextEncoder().encode("hello psp");

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PspError);
    return (e as PspError).code;
  }
  return "ok";
}

describe("cbor codec", () => {
  it("encodes byte strings as major type 2 and decodes maps as Map with integer labels", () => {
    const bytes = encodeCbor(new Map<number, unknown>([[-3, new Uint8Array([1, 2])]]));
    expect(Buffer.from(bytes).toString("hex")).toBe("a1224201" + "02");
    const back = decodeCbor(bytes);
    expect(back).toBeInstanceOf(Map);
    const value = (back as Map<number, unknown>).get(-3);
    expect(value).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(value as Uint8Array).toString("hex")).toBe("0102");
  });
});

describe("COSE_Sign1", () => {
  it("round-trips sign and verify with a tagged envelope", () => {
    const token = signSign1({ payload, signer: priv });
    expect(token[0]).toBe(0xd2); // tag 18
    const msg = verifySign1(token, pub);
    expect(Buffer.from(msg.payload).toString()).toBe("hello psp");
    expect(msg.protectedHeader.get(COSE_HEADER.alg)).toBe(COSE_ALG_EDDSA);
    expect(msg.tagged).toBe(true);
  });

  it("is deterministic (Ed25519 signatures are)", () => {
    expect(signSign1({ payload, signer: priv })).toEqual(signSign1({ payload, signer: priv }));
  });

  it("binds external AAD", () => {
    const aad = Uint8Array.of(1, 2, 3);
    const token = signSign1({ payload, signer: priv, externalAad: aad });
    expect(() => verifySign1(token, pub, { externalAad: aad })).not.toThrow();
    expect(code(() => verifySign1(token, pub))).toBe("PSP_ERR_CAP_SIGNATURE");
  });

  it("refuses a signature by another key", () => {
    const other = generateKeyPairSync("ed25519");
    const token = signSign1({ payload, signer: other.privateKey });
    expect(code(() => verifySign1(token, pub))).toBe("PSP_ERR_CAP_SIGNATURE");
  });

  it("refuses non-Ed25519 keys for signing and verifying", () => {
    const ed448 = generateKeyPairSync("ed448");
    const p256 = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const token = signSign1({ payload, signer: priv });
    expect(code(() => verifySign1(token, ed448.publicKey))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
    expect(code(() => verifySign1(token, p256.publicKey))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
    expect(code(() => signSign1({ payload, signer: ed448.privateKey }))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
    expect(code(() => signSign1({ payload, signer: pub }))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
    expect(code(() => rawPublicKey(ed448.publicKey))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
  });

  it("refuses other algorithms, an unprotected alg, and unknown crit labels", () => {
    const forge = (protectedMap: Map<number, unknown>, unprotected = new Map<number, unknown>()) => {
      const protectedBytes = protectedMap.size === 0 ? new Uint8Array(0) : encodeCbor(protectedMap);
      return encodeSign1({
        protectedBytes,
        unprotectedHeader: unprotected,
        payload,
        signature: new Uint8Array(64),
      });
    };
    expect(code(() => verifySign1(forge(new Map([[1, -7]])), pub))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
    expect(code(() => verifySign1(forge(new Map([[1, "EdDSA"]])), pub))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
    expect(code(() => verifySign1(forge(new Map(), new Map([[1, -8]])), pub))).toBe("PSP_ERR_CAP_MALFORMED");
    expect(code(() => verifySign1(forge(new Map(), new Map([[1, -7]])), pub))).toBe(
      "PSP_ERR_CAP_UNSUPPORTED_ALG",
    );
    expect(code(() => verifySign1(forge(new Map()), pub))).toBe("PSP_ERR_CAP_MALFORMED");
    expect(
      code(() =>
        verifySign1(
          forge(
            new Map<number, unknown>([
              [1, -8],
              [2, [99]],
              [99, 1],
            ]),
          ),
          pub,
        ),
      ),
    ).toBe("PSP_ERR_CAP_MALFORMED");
  });

  it("refuses malformed structures without leaking bytes into messages", () => {
    const cases: Uint8Array[] = [
      new Uint8Array(0),
      Uint8Array.of(0xff),
      encodeCbor(new Tag([new Uint8Array(0), new Map(), payload, new Uint8Array(64)], 98)), // COSE_Sign
      encodeCbor(new Tag([new Uint8Array(0), new Map(), payload], 18)),
      encodeCbor(new Tag([new Uint8Array(0), new Map(), null, new Uint8Array(64)], 18)), // detached
      encodeCbor(new Tag([Uint8Array.of(0x01), new Map(), payload, new Uint8Array(64)], 18)), // not a map
      encodeCbor(
        new Tag([encodeCbor(new Map([[1, -8]])), new Map([[1, -8]]), payload, new Uint8Array(64)], 18),
      ),
      new Uint8Array(MAX_TOKEN_BYTES + 1),
      Uint8Array.from({ length: MAX_TOKEN_BYTES }, (_, i) => (i === MAX_TOKEN_BYTES - 1 ? 0 : 0x81)), // deep nesting
      Uint8Array.of(0xd2, 0xd9, 0xdf, 0xff, 0x83, 0x00, 0x80, 0x00), // cbor-x record tag
      Uint8Array.of(...signSign1({ payload, signer: priv }), 0x00), // trailing byte
    ];
    for (const token of cases) {
      try {
        verifySign1(token, pub);
        expect.unreachable();
      } catch (e) {
        expect(e).toBeInstanceOf(PspError);
        expect((e as PspError).code).toBe("PSP_ERR_CAP_MALFORMED");
        expect((e as PspError).message).not.toMatch(/[0-9a-f]{16}/i);
      }
    }
  });

  it("accepts an untagged COSE_Sign1 (RFC 9052 lets the application imply the tag)", () => {
    const token = signSign1({ payload, signer: priv });
    const untagged = token.subarray(1);
    expect(decodeSign1(untagged).tagged).toBe(false);
    expect(() => verifySign1(untagged, pub)).not.toThrow();
  });

  it("hand-written envelope encoders match the CBOR codec byte for byte", () => {
    for (const n of [0, 1, 23, 24, 255, 256, 65535, 65536]) {
      const body = Uint8Array.from({ length: n }, (_, i) => i & 0xff);
      const unprotected =
        n % 2 === 0
          ? new Map()
          : new Map<number, unknown>([
              [-65538, n],
              [-65539, [body.subarray(0, 3)]],
            ]);
      const parts = {
        protectedBytes: body.subarray(0, n >> 1),
        unprotectedHeader: unprotected,
        payload: body,
        signature: body.subarray(0, 64),
      };
      expect(encodeSign1(parts)).toEqual(
        encodeCbor(new Tag([parts.protectedBytes, unprotected, parts.payload, parts.signature], 18)),
      );
      expect(sigStructure1(parts.protectedBytes, body.subarray(0, 5), body)).toEqual(
        encodeCbor(["Signature1", parts.protectedBytes, body.subarray(0, 5), body]),
      );
    }
  });

  it("builds the Sig_structure of RFC 9052 §4.4", () => {
    const tbs = sigStructure1(Uint8Array.of(0xa1, 0x01, 0x27), new Uint8Array(0), payload);
    expect(Buffer.from(tbs).toString("hex")).toBe(
      `846a5369676e61747572653143a1012740${(0x40 + payload.length).toString(16)}${Buffer.from(payload).toString("hex")}`,
    );
  });
});

describe("bytesEqual", () => {
  it("is byte equality at every length either side of 64, on heap arrays, views and Buffers", () => {
    const backing = new Uint8Array(300);
    for (let n = 0; n <= 100; n++) {
      const a = Uint8Array.from({ length: n }, (_, i) => (i * 7 + n) & 0xff);
      backing.set(a, 5);
      const forms = [new Uint8Array(a), backing.subarray(5, 5 + n), Buffer.from(a)];
      for (const x of forms) for (const y of forms) expect(bytesEqual(x, y)).toBe(true);
      for (let i = 0; i < n; i++) {
        const b = new Uint8Array(a);
        b[i]! ^= 0x80;
        expect(bytesEqual(a, b)).toBe(false);
        expect(bytesEqual(Buffer.from(b), backing.subarray(5, 5 + n))).toBe(false);
      }
      expect(bytesEqual(a, new Uint8Array(n + 1))).toBe(false);
    }
    // Views that are not Uint8Arrays compare their bytes too (not elements).
    const x = Uint8Array.of(1, 2, 3, 4);
    const y = Uint8Array.of(1, 2, 3, 5);
    expect(bytesEqual(new DataView(x.buffer) as never, new DataView(y.buffer) as never)).toBe(false);
    expect(bytesEqual(new Uint16Array(x.buffer) as never, new Uint16Array(y.buffer) as never)).toBe(false);
    expect(
      bytesEqual(new DataView(x.buffer) as never, new DataView(Uint8Array.of(1, 2, 3, 4).buffer) as never),
    ).toBe(true);
  });
});
