import { createPublicKey, type KeyObject } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Tag } from "cbor-x";
import { describe, expect, it } from "vitest";
import { decodeCwtClaims } from "./capability.ts";
import {
  decodeCbor,
  decodeSign1,
  ed25519PrivateKeyFromSeed,
  ed25519Verify,
  encodeCbor,
  encodeProtectedHeader,
  signSign1,
  sigStructure1,
  verifySign1,
} from "./cose.ts";
import { PspError } from "./errors.ts";

/**
 * Conformance with the COSE working group's public examples (github.com/cose-wg/Examples), copied
 * unchanged into ../shared/vectors/cose/ next to the repository. Absent folder = skipped, loudly.
 */
const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));
const vectorsDir = path.resolve(repoRoot, "..", "shared", "vectors", "cose");
const present = existsSync(vectorsDir);
if (!present) console.warn(`COSE conformance vectors are absent (${vectorsDir}): conformance tests skipped`);

interface CoseKey {
  kty: string;
  crv: string;
  x_hex?: string;
  d_hex?: string;
  x?: string;
  y?: string;
  y_hex?: string;
}
interface Vector {
  title: string;
  fail?: boolean;
  input: {
    plaintext?: string;
    plaintext_hex?: string;
    sign0?: { key: CoseKey; alg: string; external?: string; protected?: Record<string, unknown> };
    sign?: { signers: Array<{ key: CoseKey }> };
    failures?: Record<string, unknown>;
  };
  intermediates?: { ToBeSign_hex?: string; signers?: Array<{ ToBeSign_hex: string }> };
  output: { cbor: string };
}

const load = (dir: string, name: string): Vector =>
  JSON.parse(readFileSync(path.join(vectorsDir, dir, name), "utf8")) as Vector;
const hex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** Imports a COSE example key as a node KeyObject (public part). */
function publicKeyOf(k: CoseKey): KeyObject {
  if (k.kty === "OKP" && k.x_hex !== undefined) {
    return createPublicKey({
      key: { kty: "OKP", crv: k.crv, x: Buffer.from(k.x_hex, "hex").toString("base64url") },
      format: "jwk",
    });
  }
  if (k.kty === "EC") {
    const b64 = (h: string | undefined) =>
      h === undefined ? undefined : Buffer.from(h, "hex").toString("base64url");
    const x = k.x ?? b64(k.x_hex);
    const y = k.y ?? b64(k.y_hex);
    if (x !== undefined && y !== undefined) {
      return createPublicKey({ key: { kty: "EC", crv: k.crv, x, y }, format: "jwk" });
    }
  }
  throw new Error(`unsupported example key ${k.kty}/${k.crv}`);
}

function refusal(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    // Every refusal is typed: never a bare Error from cbor-x or node:crypto.
    expect(e).toBeInstanceOf(PspError);
    return (e as PspError).code;
  }
  return "ok";
}

describe.skipIf(!present)("COSE WG examples: eddsa-examples", () => {
  const ed25519Key = () => publicKeyOf(load("eddsa-examples", "eddsa-sig-01.json").input.sign0!.key);

  it("eddsa-sig-01 (Ed25519, COSE_Sign1 tag 18) verifies, and we re-create it byte for byte", () => {
    const v = load("eddsa-examples", "eddsa-sig-01.json");
    const token = hex(v.output.cbor);
    const msg = verifySign1(token, ed25519Key());
    expect(Buffer.from(msg.payload).toString()).toBe(v.input.plaintext);
    expect(toHex(sigStructure1(msg.protectedBytes, new Uint8Array(0), msg.payload))).toBe(
      v.intermediates!.ToBeSign_hex!.toLowerCase(),
    );
    // Signing the same content with the example's private key (Ed25519 is deterministic) and the
    // same headers ({1: -8, 3: 0} protected, {4: '11'} unprotected) reproduces the example exactly.
    const signer = ed25519PrivateKeyFromSeed(hex(v.input.sign0!.key.d_hex!));
    const ours = signSign1({
      payload: msg.payload,
      signer,
      protectedHeader: new Map([[3, 0]]),
      unprotectedHeader: new Map([[4, Buffer.from("11")]]),
    });
    expect(toHex(ours)).toBe(v.output.cbor.toLowerCase());
  });

  it("eddsa-sig-02 (Ed448, COSE_Sign1) is refused as an unsupported algorithm", () => {
    const v = load("eddsa-examples", "eddsa-sig-02.json");
    const token = hex(v.output.cbor);
    const ed448 = publicKeyOf(v.input.sign0!.key);
    expect(ed448.asymmetricKeyType).toBe("ed448");
    expect(refusal(() => verifySign1(token, ed448))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
    // The header says -8 either way (RFC 9053: EdDSA covers both curves); against an Ed25519 key
    // the 114-byte Ed448 signature simply does not verify.
    expect(refusal(() => verifySign1(token, ed25519Key()))).toBe("PSP_ERR_CAP_SIGNATURE");
  });

  /*
   * eddsa-01 and eddsa-02 are COSE_Sign (tag 98, multi-signer), not COSE_Sign1: PSP tokens are
   * single-signer only, so our Sign1 decoder refuses them as malformed (wrong tag). To show the
   * Ed25519 material in eddsa-01 is still interoperable, the test rebuilds the COSE_Sign
   * Sig_structure ["Signature", body_protected, sign_protected, external_aad, payload], checks it
   * against the example's ToBeSign, and verifies the signer's signature with the raw primitive.
   * eddsa-02 is the same with Ed448: refused as unsupported for its key, malformed for our format.
   */
  it("eddsa-01 (Ed25519, COSE_Sign tag 98) is not a COSE_Sign1; its signer signature still verifies", () => {
    const v = load("eddsa-examples", "eddsa-01.json");
    const token = hex(v.output.cbor);
    const key = publicKeyOf(v.input.sign!.signers[0]!.key);
    expect(refusal(() => verifySign1(token, key))).toBe("PSP_ERR_CAP_MALFORMED");
    const top = decodeCbor(token) as Tag;
    expect(top.tag).toBe(98);
    const [bodyProtected, , content, signers] = top.value as [Uint8Array, unknown, Uint8Array, unknown[][]];
    const [signProtected, , signature] = signers[0] as [Uint8Array, unknown, Uint8Array];
    const tbs = encodeCbor(["Signature", bodyProtected, signProtected, new Uint8Array(0), content]);
    expect(toHex(tbs)).toBe(v.intermediates!.signers![0]!.ToBeSign_hex.toLowerCase());
    expect(ed25519Verify(tbs, signature, key)).toBe(true);
  });

  it("eddsa-02 (Ed448, COSE_Sign) is refused", () => {
    const v = load("eddsa-examples", "eddsa-02.json");
    const token = hex(v.output.cbor);
    expect(refusal(() => verifySign1(token, publicKeyOf(v.input.sign!.signers[0]!.key)))).toBe(
      "PSP_ERR_CAP_UNSUPPORTED_ALG",
    );
    expect(refusal(() => verifySign1(token, ed25519Key()))).toBe("PSP_ERR_CAP_MALFORMED");
  });
});

describe.skipIf(!present)("COSE WG examples: sign1-tests", () => {
  const files = present
    ? readdirSync(path.join(vectorsDir, "sign1-tests")).filter((f) => f.endsWith(".json"))
    : [];
  const ed25519Key = () => publicKeyOf(load("eddsa-examples", "eddsa-sig-01.json").input.sign0!.key);

  it("has the expected cases", () => {
    expect(files.length).toBeGreaterThanOrEqual(9);
  });

  for (const file of files) {
    const v = present ? load("sign1-tests", file) : undefined;
    if (v === undefined) continue;
    const isEdDsa = v.input.sign0?.alg === "EdDSA";
    if (v.fail === true) {
      it(`${file}: "${v.title}" is refused`, () => {
        const token = hex(v.output.cbor);
        // With the example's own key (P-256 in every case) the key type alone is refused ...
        expect(refusal(() => verifySign1(token, publicKeyOf(v.input.sign0!.key)))).not.toBe("ok");
        // ... and with an Ed25519 key the token itself is refused: a wrong tag is malformed, an
        // algorithm other than -8 (ES256, -999, "unknown") is unsupported. Our verifier accepts
        // EdDSA only, so every algorithm swap is refused whatever the signature.
        const expected =
          "ChangeCBORTag" in (v.input.failures ?? {})
            ? "PSP_ERR_CAP_MALFORMED"
            : "PSP_ERR_CAP_UNSUPPORTED_ALG";
        expect(refusal(() => verifySign1(token, ed25519Key()))).toBe(expected);
      });
    } else if (isEdDsa) {
      it(`${file}: "${v.title}" verifies`, () => {
        const ext = v.input.sign0?.external;
        verifySign1(
          hex(v.output.cbor),
          publicKeyOf(v.input.sign0!.key),
          ext ? { externalAad: hex(ext) } : {},
        );
      });
    } else {
      it(`${file}: "${v.title}" (${v.input.sign0?.alg}) is refused as an unsupported algorithm`, () => {
        const token = hex(v.output.cbor);
        expect(refusal(() => verifySign1(token, publicKeyOf(v.input.sign0!.key)))).toBe(
          "PSP_ERR_CAP_UNSUPPORTED_ALG",
        );
        expect(refusal(() => verifySign1(token, ed25519Key()))).toBe("PSP_ERR_CAP_UNSUPPORTED_ALG");
        // It is a well-formed COSE_Sign1 (tagged or not): the refusal is about the algorithm only.
        const msg = decodeSign1(token);
        expect(Buffer.from(msg.payload).toString()).toBe(v.input.plaintext);
        // (The example's ToBeSign predates its "failures" mutation, so compare only unmutated ones.)
        if (v.input.failures === undefined)
          expect(
            toHex(sigStructure1(msg.protectedBytes, hex(v.input.sign0?.external ?? ""), msg.payload)),
          ).toBe(v.intermediates!.ToBeSign_hex!.toLowerCase());
      });
    }
  }
});

describe.skipIf(!present)("COSE WG examples: CWT (RFC 8392 appendix A)", () => {
  const expectedA1 = {
    iss: "coap://as.example.com",
    sub: "erikw",
    aud: "coap://light.example.com",
    exp: 1444064944,
    nbf: 1443944944,
    iat: 1443944944,
    cti: Uint8Array.from([0x0b, 0x71]),
  };

  it("A_3 (signed, ES256): the envelope is a COSE_Sign1 we refuse by algorithm; its claims set decodes", () => {
    const v = load("CWT", "A_3.json");
    const token = hex(v.output.cbor);
    const msg = decodeSign1(token);
    expect(toHex(msg.payload)).toBe(v.input.plaintext_hex);
    const claims = decodeCwtClaims(msg.payload);
    expect({ ...claims, cti: new Uint8Array(claims.cti!) }).toEqual({ ...expectedA1, other: new Map() });
    expect(refusal(() => verifySign1(token, publicKeyOf(v.input.sign0!.key)))).toBe(
      "PSP_ERR_CAP_UNSUPPORTED_ALG",
    );
  });

  /*
   * A_4 and A_7 are COSE_Mac0 (tag 17): not signatures, refused by our Sign1 decoder; their
   * payloads are still CWT claims sets and decode (A_7 carries a floating-point iat, which RFC 8392
   * allows and our strict capability profile does not). A_5 and A_6 are COSE_Encrypt0 (tag 16):
   * the claims are ciphertext, so only the refusal is checked.
   */
  it("A_4 (MACed): refused as a COSE_Sign1; claims set decodes", () => {
    const token = hex(load("CWT", "A_4.json").output.cbor);
    expect(refusal(() => decodeSign1(token))).toBe("PSP_ERR_CAP_MALFORMED");
    const mac0 = decodeCbor(token) as Tag;
    expect(mac0.tag).toBe(17);
    const claims = decodeCwtClaims((mac0.value as Uint8Array[])[2]!);
    expect(claims.iss).toBe(expectedA1.iss);
    expect(claims.exp).toBe(expectedA1.exp);
  });

  it("A_7 (MACed, float iat): claims set decodes with iat 1443944944.5", () => {
    const token = hex(load("CWT", "A_7.json").output.cbor);
    expect(refusal(() => decodeSign1(token))).toBe("PSP_ERR_CAP_MALFORMED");
    const claims = decodeCwtClaims(((decodeCbor(token) as Tag).value as Uint8Array[])[2]!);
    expect(claims.iat).toBe(1443944944.5);
  });

  it("A_5 and A_6 (encrypted) are refused as COSE_Sign1", () => {
    for (const f of ["A_5.json", "A_6.json"]) {
      expect(refusal(() => decodeSign1(hex(load("CWT", f).output.cbor)))).toBe("PSP_ERR_CAP_MALFORMED");
    }
  });

  it("the A_3 claims set re-encodes byte for byte through our codec", () => {
    const payload = hex(load("CWT", "A_3.json").input.plaintext_hex!);
    expect(toHex(encodeCbor(decodeCbor(payload)))).toBe(toHex(payload));
    // And our protected-header encoding matches the example's (h'A10126' for ES256).
    expect(toHex(encodeProtectedHeader(new Map([[1, -7]])))).toBe("a10126");
  });
});
