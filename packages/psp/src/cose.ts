import {
  createPrivateKey,
  createPublicKey,
  sign as cryptoSign,
  verify as cryptoVerify,
  KeyObject,
  timingSafeEqual,
} from "node:crypto";
import { Encoder, Tag } from "cbor-x";
import { headLength, putHead, putString, stringLength } from "./direct-cbor.ts";
import { PspError } from "./errors.ts";

/**
 * COSE_Sign1 (RFC 9052 §4.2) with EdDSA over Ed25519 only, the envelope of every PSP capability
 * and receipt.
 *
 *   COSE_Sign1 = #6.18([ protected: bstr .cbor header_map / bstr .size 0,
 *                        unprotected: header_map,
 *                        payload: bstr,
 *                        signature: bstr ])
 *   Sig_structure = ["Signature1", protected, external_aad, payload]
 *
 * Trust boundary: everything handed to `decodeSign1`/`verifySign1` is hostile. It is size-bounded
 * before parsing, decoded with cbor-x into `unknown`, and checked field by field. Nothing in a
 * thrown error carries token, key or signature bytes: only field names, sizes and limits.
 *
 * Algorithm policy: exactly one algorithm, EdDSA (-8), and only with Ed25519 keys. RFC 9053 lets
 * -8 mean Ed25519 or Ed448; the curve is pinned by the verifying key, and any other key type (Ed448,
 * P-256, RSA, ...) is refused as PSP_ERR_CAP_UNSUPPORTED_ALG before the token is looked at. The
 * algorithm must sit in the protected header (an unprotected `alg` could be swapped in transit).
 */

export const COSE_SIGN1_TAG = 18;
/** COSE algorithm identifier for EdDSA (RFC 9053 §2.2). */
export const COSE_ALG_EDDSA = -8;
/** Standard COSE header labels used here (RFC 9052 §3.1). */
export const COSE_HEADER = { alg: 1, crit: 2, contentType: 3, kid: 4 } as const;
/** Upper bound on an encoded COSE token, checked before any parsing (16 KiB). */
export const MAX_TOKEN_BYTES = 16 * 1024;
export const ED25519_PUBLIC_KEY_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;

/** PKCS#8 DER prefix of an Ed25519 private key; the 32-byte seed follows (RFC 8410). */
const ED25519_PKCS8_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
]);

/**
 * The project's CBOR codec settings for signed objects: maps decode as `Map` (integer labels
 * survive), byte strings are major type 2 both ways (no typed-array tags, no records, no shared
 * structures or string bundling, which would make bytes depend on history), and map headers are
 * sized to their content, so the same value always encodes to the same, shortest bytes.
 */
const codec = new Encoder({
  mapsAsObjects: false,
  useRecords: false,
  tagUint8Array: false,
  structuredClone: false,
  bundleStrings: false,
  pack: false,
  variableMapSize: true,
  useTag259ForMaps: false,
} as ConstructorParameters<typeof Encoder>[0]);

/** Encodes with the signed-object codec. Returns a fresh array (not a view into cbor-x's pool). */
export function encodeCbor(value: unknown): Uint8Array {
  return new Uint8Array(codec.encode(value));
}

/**
 * Decodes one CBOR item that must span all of `bytes`. Throws whatever cbor-x throws (including
 * RangeError from hostile nesting); callers at a trust boundary wrap it into their own code.
 */
export function decodeCbor(bytes: Uint8Array): unknown {
  return codec.decode(bytes);
}

export type HeaderLabel = number | string;
export type HeaderMap = ReadonlyMap<HeaderLabel, unknown>;

/** A structurally valid COSE_Sign1, not yet verified. */
export interface CoseSign1 {
  /** The protected header exactly as received: it is what the signature covers. */
  readonly protectedBytes: Uint8Array;
  readonly protectedHeader: HeaderMap;
  readonly unprotectedHeader: HeaderMap;
  readonly payload: Uint8Array;
  readonly signature: Uint8Array;
  /** Whether the CBOR tag 18 was present (RFC 9052 allows it to be implied by context). */
  readonly tagged: boolean;
}

function malformed(message: string, detail?: Record<string, string | number | boolean>): PspError {
  return new PspError("PSP_ERR_CAP_MALFORMED", message, detail);
}

function isLabel(k: unknown): k is HeaderLabel {
  return (typeof k === "number" && Number.isSafeInteger(k)) || typeof k === "string";
}

function asHeaderMap(value: unknown, which: "protected" | "unprotected"): HeaderMap {
  if (!(value instanceof Map)) throw malformed(`COSE ${which} header is not a map`, { field: which });
  for (const k of value.keys()) {
    if (!isLabel(k)) throw malformed(`COSE ${which} header has a label that is neither int nor text`);
  }
  return value as HeaderMap;
}

/**
 * Parses a COSE_Sign1 (tagged 18 or untagged) without verifying it. Refuses anything over
 * `maxBytes`, any other tag (COSE_Sign is 98, COSE_Mac0 17, ...), a detached (nil) payload, and
 * labels present in both header buckets (RFC 9052 §3).
 */
export function decodeSign1(bytes: Uint8Array, opts: { maxBytes?: number } = {}): CoseSign1 {
  const maxBytes = opts.maxBytes ?? MAX_TOKEN_BYTES;
  if (!(bytes instanceof Uint8Array)) throw malformed("COSE token is not a byte array");
  if (bytes.byteLength === 0 || bytes.byteLength > maxBytes) {
    throw malformed("COSE token size out of bounds", { size: bytes.byteLength, limit: maxBytes });
  }
  let top: unknown;
  try {
    top = decodeCbor(bytes);
  } catch {
    // The cbor-x message may quote input; it is dropped on purpose.
    throw malformed("COSE token is not well-formed CBOR");
  }
  let tagged = false;
  if (top instanceof Tag) {
    if (top.tag !== COSE_SIGN1_TAG) throw malformed("COSE token carries a tag other than 18 (COSE_Sign1)");
    tagged = true;
    top = top.value;
  }
  if (!Array.isArray(top) || top.length !== 4) throw malformed("COSE_Sign1 is not a 4-element array");
  const [p, u, payload, signature] = top as unknown[];
  if (!(p instanceof Uint8Array)) throw malformed("COSE protected header is not a byte string");
  let protectedHeader: HeaderMap;
  if (p.byteLength === 0) {
    protectedHeader = new Map();
  } else {
    let decoded: unknown;
    try {
      decoded = decodeCbor(p);
    } catch {
      throw malformed("COSE protected header is not well-formed CBOR");
    }
    protectedHeader = asHeaderMap(decoded, "protected");
  }
  const unprotectedHeader = asHeaderMap(u, "unprotected");
  if (!(payload instanceof Uint8Array)) throw malformed("COSE payload is absent or not a byte string");
  if (!(signature instanceof Uint8Array)) throw malformed("COSE signature is not a byte string");
  for (const k of protectedHeader.keys()) {
    if (unprotectedHeader.has(k)) throw malformed("COSE header label appears in both buckets");
  }
  return { protectedBytes: p, protectedHeader, unprotectedHeader, payload, signature, tagged };
}

/** Encodes a protected header map: the empty map is the zero-length byte string (RFC 9052 §3). */
export function encodeProtectedHeader(header: HeaderMap): Uint8Array {
  return header.size === 0 ? new Uint8Array(0) : encodeCbor(header);
}

/** CBOR head (major type + argument) in its shortest form, RFC 8949 §3. */
export function cborHead(major: number, n: number): Uint8Array {
  const out = new Uint8Array(headLength(n));
  putHead(out, 0, major, n);
  return out;
}

const writeBstr = (out: Uint8Array, at: number, b: Uint8Array): number => putString(out, at, 2, b);

/** Tag 18 and the 4-element array head. */
const SIGN1_PREFIX = Uint8Array.of(0xd2, 0x84);
const EMPTY_MAP = Uint8Array.of(0xa0);

/**
 * Encodes a tagged COSE_Sign1 from its parts. Written out by hand into one allocation (byte
 * strings are copied, not walked by the CBOR encoder): it runs for every signature and for the
 * canonical-form check of every verification. The result is exactly what cbor-x produces for the
 * same Tag (a test pins this).
 */
export function encodeSign1(parts: {
  protectedBytes: Uint8Array;
  /** The unprotected header map, or (`unprotectedBytes`) its encoding when the caller has it. */
  unprotectedHeader?: HeaderMap;
  unprotectedBytes?: Uint8Array;
  payload: Uint8Array;
  signature: Uint8Array;
}): Uint8Array {
  const u = parts.unprotectedHeader;
  const unprotected = parts.unprotectedBytes ?? (u === undefined || u.size === 0 ? EMPTY_MAP : encodeCbor(u));
  const out = new Uint8Array(
    2 +
      stringLength(parts.protectedBytes) +
      unprotected.byteLength +
      stringLength(parts.payload) +
      stringLength(parts.signature),
  );
  out.set(SIGN1_PREFIX, 0);
  let p = writeBstr(out, 2, parts.protectedBytes);
  out.set(unprotected, p);
  p = writeBstr(out, p + unprotected.byteLength, parts.payload);
  writeBstr(out, p, parts.signature);
  return out;
}

/** ["Signature1" as a CBOR array head and text string. */
const SIG_STRUCTURE1_PREFIX = Uint8Array.of(0x84, 0x6a, ...Buffer.from("Signature1"));

/** The bytes an EdDSA COSE_Sign1 signature covers (RFC 9052 §4.4). */
export function sigStructure1(
  protectedBytes: Uint8Array,
  externalAad: Uint8Array,
  payload: Uint8Array,
): Uint8Array {
  const out = new Uint8Array(
    SIG_STRUCTURE1_PREFIX.byteLength +
      stringLength(protectedBytes) +
      stringLength(externalAad) +
      stringLength(payload),
  );
  out.set(SIG_STRUCTURE1_PREFIX, 0);
  let p = writeBstr(out, SIG_STRUCTURE1_PREFIX.byteLength, protectedBytes);
  p = writeBstr(out, p, externalAad);
  writeBstr(out, p, payload);
  return out;
}

/**
 * Enforces the algorithm policy on a decoded message: `alg` must be -8 and protected; `crit`, if
 * present, must be protected and list only labels this verifier understands (`understoodCritical`)
 * that are themselves present in the protected header (RFC 9052 §3.1).
 */
export function checkEdDsaHeaders(msg: CoseSign1, understoodCritical: ReadonlySet<HeaderLabel> = new Set()) {
  const p = msg.protectedHeader.get(COSE_HEADER.alg);
  const u = msg.unprotectedHeader.get(COSE_HEADER.alg);
  if (p === undefined) {
    if (u === undefined) throw malformed("COSE header names no algorithm");
    if (u !== COSE_ALG_EDDSA) {
      throw new PspError("PSP_ERR_CAP_UNSUPPORTED_ALG", "COSE algorithm is not EdDSA (-8)");
    }
    throw malformed("COSE algorithm must be in the protected header");
  }
  if (p !== COSE_ALG_EDDSA)
    throw new PspError("PSP_ERR_CAP_UNSUPPORTED_ALG", "COSE algorithm is not EdDSA (-8)");
  if (msg.unprotectedHeader.has(COSE_HEADER.crit))
    throw malformed("COSE crit must be in the protected header");
  const crit = msg.protectedHeader.get(COSE_HEADER.crit);
  if (crit !== undefined) {
    if (!Array.isArray(crit) || crit.length === 0) throw malformed("COSE crit is not a non-empty array");
    for (const label of crit as unknown[]) {
      if (!isLabel(label) || !understoodCritical.has(label) || !msg.protectedHeader.has(label)) {
        throw malformed("COSE crit names a header this verifier does not understand");
      }
    }
  }
}

/** Refuses anything but an Ed25519 KeyObject of the wanted type (a private key also verifies). */
export function assertEd25519Key(key: unknown, use: "sign" | "verify"): asserts key is KeyObject {
  if (!(key instanceof KeyObject)) {
    throw new PspError("PSP_ERR_CAP_UNSUPPORTED_ALG", "key is not a node:crypto KeyObject", { use });
  }
  if (key.asymmetricKeyType !== "ed25519") {
    throw new PspError("PSP_ERR_CAP_UNSUPPORTED_ALG", "only Ed25519 keys are supported", {
      use,
      keyType: key.asymmetricKeyType ?? key.type,
    });
  }
  if (use === "sign" && key.type !== "private") {
    throw new PspError("PSP_ERR_CAP_UNSUPPORTED_ALG", "signing needs an Ed25519 private key", { use });
  }
}

/** Raw Ed25519 signature; `key` must already have passed `assertEd25519Key(key, "sign")`. */
export function ed25519Sign(data: Uint8Array, key: KeyObject): Uint8Array {
  return new Uint8Array(cryptoSign(null, data, key));
}

/** Raw Ed25519 verification. Never throws: odd lengths and library refusals are just `false`. */
export function ed25519Verify(data: Uint8Array, signature: Uint8Array, key: KeyObject): boolean {
  if (signature.byteLength !== ED25519_SIGNATURE_BYTES) return false;
  try {
    return cryptoVerify(null, data, key, signature);
  } catch {
    return false;
  }
}

/** Signs `payload` as a tagged COSE_Sign1 with `alg: -8` first in the protected header. */
export function signSign1(args: {
  payload: Uint8Array;
  signer: KeyObject;
  /** Extra protected labels (alg is added first, and must not be given). */
  protectedHeader?: HeaderMap;
  unprotectedHeader?: HeaderMap;
  externalAad?: Uint8Array;
}): Uint8Array {
  assertEd25519Key(args.signer, "sign");
  const header = new Map<HeaderLabel, unknown>([[COSE_HEADER.alg, COSE_ALG_EDDSA]]);
  for (const [k, v] of args.protectedHeader ?? []) {
    if (k === COSE_HEADER.alg) throw new TypeError("signSign1 sets alg itself");
    header.set(k, v);
  }
  const protectedBytes = encodeProtectedHeader(header);
  const signature = ed25519Sign(
    sigStructure1(protectedBytes, args.externalAad ?? new Uint8Array(0), args.payload),
    args.signer,
  );
  return encodeSign1({
    protectedBytes,
    unprotectedHeader: args.unprotectedHeader ?? new Map(),
    payload: args.payload,
    signature,
  });
}

/**
 * Verifies a COSE_Sign1 signed with EdDSA/Ed25519. Order: key type (UNSUPPORTED_ALG), size and
 * structure (MALFORMED), algorithm and crit (UNSUPPORTED_ALG / MALFORMED), signature (SIGNATURE).
 * Returns the decoded message; its payload is authentic, its meaning is for the caller to check.
 */
export function verifySign1(
  token: Uint8Array,
  publicKey: KeyObject,
  opts: { externalAad?: Uint8Array; maxBytes?: number; understoodCritical?: ReadonlySet<HeaderLabel> } = {},
): CoseSign1 {
  assertEd25519Key(publicKey, "verify");
  const msg = decodeSign1(token, opts.maxBytes === undefined ? {} : { maxBytes: opts.maxBytes });
  checkEdDsaHeaders(msg, opts.understoodCritical);
  const toBeSigned = sigStructure1(msg.protectedBytes, opts.externalAad ?? new Uint8Array(0), msg.payload);
  if (!ed25519Verify(toBeSigned, msg.signature, publicKey)) {
    throw new PspError("PSP_ERR_CAP_SIGNATURE", "COSE_Sign1 signature does not verify");
  }
  return msg;
}

// ---------------------------------------------------------------------------------------------
// Ed25519 key helpers. Keys are converted once and cached: importing a DER public key costs
// ~200 µs on this machine (OpenSSL 3 decoders), a JWK import ~15 µs, an Ed25519 verify ~100 µs.

/** Ed25519 private key from a 32-byte seed (RFC 8410 PKCS#8). For fixtures and key files. */
export function ed25519PrivateKeyFromSeed(seed: Uint8Array): KeyObject {
  if (!(seed instanceof Uint8Array) || seed.byteLength !== 32) {
    throw new RangeError("an Ed25519 seed is exactly 32 bytes");
  }
  const der = new Uint8Array(ED25519_PKCS8_PREFIX.byteLength + 32);
  der.set(ED25519_PKCS8_PREFIX, 0);
  der.set(seed, ED25519_PKCS8_PREFIX.byteLength);
  return createPrivateKey({
    key: Buffer.from(der.buffer, der.byteOffset, der.byteLength),
    format: "der",
    type: "pkcs8",
  });
}

const rawKeyCache = new WeakMap<KeyObject, Uint8Array>();

/**
 * The raw 32-byte Ed25519 public key of a public or private KeyObject. Refuses other key types
 * with PSP_ERR_CAP_UNSUPPORTED_ALG. Returns a fresh copy each call (callers may keep it).
 */
export function rawPublicKey(key: KeyObject): Uint8Array {
  assertEd25519Key(key, "verify");
  let raw = rawKeyCache.get(key);
  if (raw === undefined) {
    const pub = key.type === "private" ? createPublicKey(key) : key;
    const jwk = pub.export({ format: "jwk" });
    if (typeof jwk.x !== "string") throw new PspError("PSP_ERR_CAP_UNSUPPORTED_ALG", "key export failed");
    raw = new Uint8Array(Buffer.from(jwk.x, "base64url"));
    if (raw.byteLength !== ED25519_PUBLIC_KEY_BYTES) {
      throw new PspError("PSP_ERR_CAP_UNSUPPORTED_ALG", "unexpected Ed25519 public key length");
    }
    rawKeyCache.set(key, raw);
  }
  return raw.slice();
}

/** Bounded cache raw-key-hex → KeyObject, so keys carried inside grants are imported once. */
const importedKeys = new Map<string, KeyObject>();
const IMPORTED_KEYS_LIMIT = 1024;

/** KeyObject for a raw 32-byte Ed25519 public key (cached). MALFORMED if not 32 bytes. */
export function ed25519PublicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (!(raw instanceof Uint8Array) || raw.byteLength !== ED25519_PUBLIC_KEY_BYTES) {
    throw malformed("Ed25519 public key is not 32 bytes");
  }
  const hex = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString("hex");
  const hit = importedKeys.get(hex);
  if (hit !== undefined) {
    // Refresh recency: Map iteration order is insertion order, so re-inserting makes it newest.
    importedKeys.delete(hex);
    importedKeys.set(hex, hit);
    return hit;
  }
  let key: KeyObject;
  try {
    key = createPublicKey({
      key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(hex, "hex").toString("base64url") },
      format: "jwk",
    });
  } catch {
    throw malformed("Ed25519 public key does not decode");
  }
  if (importedKeys.size >= IMPORTED_KEYS_LIMIT) {
    const oldest = importedKeys.keys().next();
    if (!oldest.done) importedKeys.delete(oldest.value);
  }
  importedKeys.set(hex, key);
  return key;
}

/** Lowercase hex of bytes. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/**
 * Byte equality. Every value compared with it is public (hashes, ids), so timing is moot; both
 * ways below take the same time whatever the bytes anyway.
 *
 * Up to 64 bytes (ids, hashes, key ids: nearly every call) a plain loop: handing a typed array
 * that lives on V8's heap (any fresh one of at most 64 bytes, such as a field copied out of a
 * receipt) to native code moves its bytes off the heap first, which made one timingSafeEqual of
 * 32 bytes cost ~0.7 µs instead of ~0.1 µs (measured here), plus the backing store's garbage.
 * Longer arrays live off the heap already: timingSafeEqual. (The length is read once: V8 here
 * does not inline the typed array `byteLength` getter, ~30 ns a read, so never in a loop test.)
 */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  const n = a.byteLength;
  if (n !== b.byteLength) return false;
  // Anything but two Uint8Arrays (a DataView, an ArrayBuffer passed where bytes were meant) goes
  // to timingSafeEqual, which compares bytes whatever the view; the loop indexes elements.
  if (n > 64 || !(a instanceof Uint8Array) || !(b instanceof Uint8Array)) return timingSafeEqual(a, b);
  let d = 0;
  for (let i = 0; i < n; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}
