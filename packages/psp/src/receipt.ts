import { createHash, type KeyObject } from "node:crypto";
import { keyIdOf } from "./capability.ts";
import type { Clock } from "./clock.ts";
import {
  assertEd25519Key,
  bytesEqual,
  COSE_ALG_EDDSA,
  COSE_HEADER,
  checkEdDsaHeaders,
  decodeCbor,
  decodeSign1,
  ed25519Sign,
  ed25519Verify,
  encodeCbor,
  encodeProtectedHeader,
  encodeSign1,
  type HeaderLabel,
  MAX_TOKEN_BYTES,
  sigStructure1,
  toHex,
} from "./cose.ts";
import { isPspError, PspError } from "./errors.ts";

/**
 * Result receipts: the answering subject (a Totebox) signs what it answered, so a console can check
 * that nothing between it and the Totebox (the aggregator included) altered the answer.
 *
 * A receipt is a COSE_Sign1 (cose.ts), EdDSA/Ed25519, with protected header
 * {1: -8, 3: "application/psp-receipt+cbor", 4: kid} (kid = SHA-256 of the subject's raw public
 * key) and an empty unprotected header. Its payload is a CBOR map with integer labels:
 *
 * | label | field             | type             | meaning                                             |
 * |-------|-------------------|------------------|-----------------------------------------------------|
 * |  1    | capability id     | bstr, 8..64      | cti of the call capability that was answered        |
 * |  2    | view              | tstr             | exactly one of 2 / 3                                |
 * |  3    | command           | tstr             |                                                     |
 * |  4    | request hash      | bstr, 32         | SHA-256 of canonical CBOR {view|command, params, row}|
 * |  5    | row count         | uint             | rows in the Arrow result                            |
 * |  6    | suppressed groups | uint             | groups withheld by the privacy floor                |
 * |  7    | data watermark    | tstr             | e.g. last journal entry hash and height             |
 * |  8    | arrow digest      | bstr, 32         | SHA-256 of the Arrow IPC bytes as sent              |
 * |  9    | issued at         | uint, seconds    |                                                     |
 * | 10    | subject id        | tstr             | the answering Totebox                               |
 *
 * The content type in the protected header separates receipts from capabilities at the signature
 * level: a receipt can never be replayed as a capability or the other way round.
 */

export const RECEIPT_CONTENT_TYPE = "application/psp-receipt+cbor";

export const RECEIPT_FIELD = {
  capabilityId: 1,
  view: 2,
  command: 3,
  requestHash: 4,
  rowCount: 5,
  suppressedGroups: 6,
  watermark: 7,
  arrowDigest: 8,
  issuedAt: 9,
  subjectId: 10,
} as const;

export interface ReceiptClaims {
  readonly capabilityId: Uint8Array;
  readonly view: string | undefined;
  readonly command: string | undefined;
  readonly requestHash: Uint8Array;
  readonly rowCount: number;
  readonly suppressedGroups: number;
  readonly watermark: string;
  readonly arrowDigest: Uint8Array;
  /** Seconds since epoch. */
  readonly issuedAt: number;
  readonly subjectId: string;
}

const MAX_TEXT_BYTES = 1024;

// ---------------------------------------------------------------------------------------------
// Request hash: SHA-256 over the RFC 8949 §4.2.1 core deterministic encoding of the request.

/** Values a request may carry in its parameters. */
export type CanonicalValue =
  | null
  | boolean
  | number
  | string
  | Uint8Array
  | readonly CanonicalValue[]
  | { readonly [key: string]: CanonicalValue | undefined };

const MAX_CANONICAL_DEPTH = 64;

/**
 * Core deterministic CBOR (RFC 8949 §4.2.1) of a JSON-like value: definite lengths, shortest
 * heads, map keys sorted by the bytes of their encoding, floats in their shortest exact width.
 * JavaScript cannot tell 1 from 1.0, so every integral number in the safe range is a CBOR integer
 * (and -0 is 0). Object members whose value is `undefined` are left out, as in JSON.
 */
export function canonicalCbor(value: CanonicalValue): Uint8Array {
  const out: number[] = [];
  write(value, out, 0);
  return Uint8Array.from(out);
}

function head(major: number, n: number, out: number[]): void {
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
}

function halfBits(x: number): number | undefined {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Number.POSITIVE_INFINITY) return sign | 0x7c00;
  if (a >= 65520) return undefined;
  if (a < 2 ** -14) {
    const h = a * 2 ** 24; // subnormal: value = h × 2^-24; exact, scaling by a power of two
    return Number.isInteger(h) ? sign | h : undefined;
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const m = (a / 2 ** e - 1) * 1024;
  return Number.isInteger(m) ? sign | ((e + 15) << 10) | m : undefined;
}

function writeFloat(x: number, out: number[]): void {
  const half = halfBits(x);
  if (half !== undefined) {
    out.push(0xf9, half >>> 8, half & 0xff);
    return;
  }
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  if (Math.fround(x) === x) {
    dv.setFloat32(0, x);
    out.push(0xfa, ...b.subarray(0, 4));
  } else {
    dv.setFloat64(0, x);
    out.push(0xfb, ...b);
  }
}

function write(v: CanonicalValue, out: number[], depth: number): void {
  if (depth > MAX_CANONICAL_DEPTH) throw new RangeError("value nests too deeply for canonical CBOR");
  if (v === null) out.push(0xf6);
  else if (v === true) out.push(0xf5);
  else if (v === false) out.push(0xf4);
  else if (typeof v === "number") {
    if (Number.isSafeInteger(v)) {
      if (v >= 0) head(0, v, out);
      else head(1, -1 - v, out);
    } else writeFloat(v, out);
  } else if (typeof v === "string") {
    const b = Buffer.from(v, "utf8");
    head(3, b.byteLength, out);
    for (const x of b) out.push(x);
  } else if (v instanceof Uint8Array) {
    head(2, v.byteLength, out);
    for (const x of v) out.push(x);
  } else if (Array.isArray(v)) {
    head(4, v.length, out);
    for (const item of v as readonly CanonicalValue[]) write(item, out, depth + 1);
  } else if (typeof v === "object") {
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null)
      throw new TypeError("only plain objects encode as maps");
    const entries: Array<[Uint8Array, CanonicalValue]> = [];
    for (const [k, item] of Object.entries(v as { readonly [key: string]: CanonicalValue | undefined })) {
      if (item === undefined) continue;
      const key: number[] = [];
      write(k, key, depth + 1);
      entries.push([Uint8Array.from(key), item]);
    }
    entries.sort((a, b) => Buffer.compare(a[0], b[0]));
    head(5, entries.length, out);
    for (const [k, item] of entries) {
      for (const x of k) out.push(x);
      write(item, out, depth + 1);
    }
  } else {
    throw new TypeError(`cannot encode ${typeof v} canonically`);
  }
}

export interface ReceiptRequest {
  readonly view?: string;
  readonly command?: string;
  readonly params?: { readonly [key: string]: CanonicalValue | undefined };
  readonly row?: string;
}

/**
 * SHA-256 of the canonical CBOR map {"view" | "command": name, "params": {...}, "row"?: key};
 * `params` defaults to the empty map, `row` is left out when absent.
 */
export function requestHash(request: ReceiptRequest): Uint8Array {
  const v: { [key: string]: CanonicalValue | undefined } = {
    view: request.view,
    command: request.command,
    params: request.params ?? {},
    row: request.row,
  };
  return new Uint8Array(createHash("sha256").update(canonicalCbor(v)).digest());
}

/** SHA-256 of the Arrow IPC bytes exactly as sent. */
export function arrowDigest(arrowBytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(arrowBytes).digest());
}

// ---------------------------------------------------------------------------------------------
// Signing and verifying

export interface ReceiptInput {
  readonly capabilityId: Uint8Array;
  readonly view?: string;
  readonly command?: string;
  readonly requestHash: Uint8Array;
  readonly rowCount: number;
  readonly suppressedGroups: number;
  readonly watermark: string;
  /** Give the Arrow IPC bytes, or their digest if already computed. */
  readonly arrowBytes?: Uint8Array;
  readonly arrowDigest?: Uint8Array;
  readonly subjectId: string;
  readonly clock: Clock;
  readonly signer: KeyObject;
}

/** CBOR-x writes integers above 2^32 as float64; a bigint keeps them CBOR uint64 (major 0). */
function uintForCbor(n: number): number | bigint {
  return n > 0xffffffff ? BigInt(n) : n;
}

function encodeReceiptPayload(c: ReceiptClaims): Uint8Array {
  const m = new Map<number, unknown>([[RECEIPT_FIELD.capabilityId, c.capabilityId]]);
  if (c.view !== undefined) m.set(RECEIPT_FIELD.view, c.view);
  if (c.command !== undefined) m.set(RECEIPT_FIELD.command, c.command);
  m.set(RECEIPT_FIELD.requestHash, c.requestHash);
  m.set(RECEIPT_FIELD.rowCount, uintForCbor(c.rowCount));
  m.set(RECEIPT_FIELD.suppressedGroups, uintForCbor(c.suppressedGroups));
  m.set(RECEIPT_FIELD.watermark, c.watermark);
  m.set(RECEIPT_FIELD.arrowDigest, c.arrowDigest);
  m.set(RECEIPT_FIELD.issuedAt, uintForCbor(c.issuedAt));
  m.set(RECEIPT_FIELD.subjectId, c.subjectId);
  return encodeCbor(m);
}

function receiptProtectedHeader(kidHex: string): Uint8Array {
  return encodeProtectedHeader(
    new Map<HeaderLabel, unknown>([
      [COSE_HEADER.alg, COSE_ALG_EDDSA],
      [COSE_HEADER.contentType, RECEIPT_CONTENT_TYPE],
      [COSE_HEADER.kid, new Uint8Array(Buffer.from(kidHex, "hex"))],
    ]),
  );
}

/** The answering subject signs a receipt for one answer. */
export function signReceipt(args: ReceiptInput): Uint8Array {
  assertEd25519Key(args.signer, "sign");
  let digest: Uint8Array;
  if (args.arrowDigest !== undefined) digest = new Uint8Array(args.arrowDigest);
  else if (args.arrowBytes !== undefined) digest = arrowDigest(args.arrowBytes);
  else throw new TypeError("signReceipt needs arrowBytes or arrowDigest");
  const claims: ReceiptClaims = {
    capabilityId: new Uint8Array(args.capabilityId),
    view: args.view,
    command: args.command,
    requestHash: new Uint8Array(args.requestHash),
    rowCount: args.rowCount,
    suppressedGroups: args.suppressedGroups,
    watermark: args.watermark,
    arrowDigest: digest,
    issuedAt: Math.floor(args.clock.now() / 1000),
    subjectId: args.subjectId,
  };
  const payload = encodeReceiptPayload(claims);
  // Same parser as the verifier: a subject cannot emit a receipt consoles would refuse.
  parseReceiptPayload(payload, (m) => new TypeError(`receipt input invalid: ${m}`));
  const protectedBytes = receiptProtectedHeader(keyIdOf(args.signer));
  const signature = ed25519Sign(sigStructure1(protectedBytes, new Uint8Array(0), payload), args.signer);
  return encodeSign1({ protectedBytes, unprotectedHeader: new Map(), payload, signature });
}

function parseReceiptPayload(
  payload: Uint8Array,
  fail: (message: string, field?: string) => Error,
): ReceiptClaims {
  let m: unknown;
  try {
    m = decodeCbor(payload);
  } catch {
    throw fail("payload is not well-formed CBOR");
  }
  if (!(m instanceof Map)) throw fail("payload is not a map");
  let canonical: boolean;
  try {
    canonical = bytesEqual(encodeCbor(m), payload);
  } catch {
    canonical = false;
  }
  if (!canonical) throw fail("payload is not in canonical encoding");
  const known = new Set<unknown>(Object.values(RECEIPT_FIELD));
  for (const k of m.keys()) if (!known.has(k)) throw fail("payload has an unexpected label");
  const bytes = (label: number, field: string, min: number, max: number): Uint8Array => {
    const v = m.get(label);
    if (!(v instanceof Uint8Array) || v.byteLength < min || v.byteLength > max)
      throw fail("bad byte field", field);
    return new Uint8Array(v);
  };
  const text = (label: number, field: string, optional: boolean): string | undefined => {
    if (optional && !m.has(label)) return undefined;
    const v = m.get(label);
    if (typeof v !== "string" || v.length === 0 || Buffer.byteLength(v) > MAX_TEXT_BYTES) {
      throw fail("bad text field", field);
    }
    return v;
  };
  const uint = (label: number, field: string): number => {
    const raw = m.get(label);
    const v = typeof raw === "bigint" ? Number(raw) : raw;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw fail("bad count field", field);
    return v;
  };
  const view = text(RECEIPT_FIELD.view, "view", true);
  const command = text(RECEIPT_FIELD.command, "command", true);
  if ((view === undefined) === (command === undefined))
    throw fail("names neither or both of view and command");
  return {
    capabilityId: bytes(RECEIPT_FIELD.capabilityId, "capabilityId", 8, 64),
    view,
    command,
    requestHash: bytes(RECEIPT_FIELD.requestHash, "requestHash", 32, 32),
    rowCount: uint(RECEIPT_FIELD.rowCount, "rowCount"),
    suppressedGroups: uint(RECEIPT_FIELD.suppressedGroups, "suppressedGroups"),
    watermark: text(RECEIPT_FIELD.watermark, "watermark", false)!,
    arrowDigest: bytes(RECEIPT_FIELD.arrowDigest, "arrowDigest", 32, 32),
    issuedAt: uint(RECEIPT_FIELD.issuedAt, "issuedAt"),
    subjectId: text(RECEIPT_FIELD.subjectId, "subjectId", false)!,
  };
}

export interface ReceiptExpectations {
  /** The Arrow IPC bytes received with the receipt. */
  readonly arrowBytes?: Uint8Array;
  /** cti of the capability the request was sent with. */
  readonly capabilityId?: Uint8Array;
  /** requestHash() of the request as the console sent it. */
  readonly requestHash?: Uint8Array;
  readonly subjectId?: string;
}

/**
 * Verifies a receipt. Anything that stops the signature from being checked or accepted (size,
 * structure, algorithm, content type, signer, signature) is PSP_ERR_RECEIPT_SIGNATURE; a receipt
 * the subject did sign but whose content is malformed or differs from `expect` is
 * PSP_ERR_RECEIPT_MISMATCH (detail.field names which).
 */
export function verifyReceipt(args: {
  readonly token: Uint8Array;
  readonly subjectPublicKey: KeyObject;
  readonly expect?: ReceiptExpectations;
}): ReceiptClaims {
  const sigFail = (reason: string) =>
    new PspError("PSP_ERR_RECEIPT_SIGNATURE", `receipt refused: ${reason}`, { reason });
  let msg: ReturnType<typeof decodeSign1>;
  try {
    assertEd25519Key(args.subjectPublicKey, "verify");
    msg = decodeSign1(args.token, { maxBytes: MAX_TOKEN_BYTES });
    checkEdDsaHeaders(msg);
  } catch (e) {
    throw sigFail(isPspError(e) ? e.code : "malformed");
  }
  const p = msg.protectedHeader;
  const kidBytes = p.get(COSE_HEADER.kid);
  if (
    !msg.tagged ||
    p.size !== 3 ||
    p.get(COSE_HEADER.contentType) !== RECEIPT_CONTENT_TYPE ||
    !(kidBytes instanceof Uint8Array) ||
    kidBytes.byteLength !== 32 ||
    msg.unprotectedHeader.size !== 0
  ) {
    throw sigFail("not a PSP receipt envelope");
  }
  let canonical: boolean;
  try {
    canonical =
      bytesEqual(encodeProtectedHeader(msg.protectedHeader), msg.protectedBytes) &&
      bytesEqual(encodeSign1(msg), args.token);
  } catch {
    canonical = false;
  }
  if (!canonical) throw sigFail("envelope is not in canonical encoding");
  if (toHex(kidBytes) !== keyIdOf(args.subjectPublicKey)) throw sigFail("signed by another key");
  if (
    !ed25519Verify(
      sigStructure1(msg.protectedBytes, new Uint8Array(0), msg.payload),
      msg.signature,
      args.subjectPublicKey,
    )
  ) {
    throw sigFail("signature does not verify");
  }
  const claims = parseReceiptPayload(
    msg.payload,
    (message, field) =>
      new PspError("PSP_ERR_RECEIPT_MISMATCH", `receipt content invalid: ${message}`, {
        field: field ?? "payload",
      }),
  );
  const mismatch = (field: string) =>
    new PspError("PSP_ERR_RECEIPT_MISMATCH", `receipt ${field} differs from what was expected`, { field });
  const e = args.expect ?? {};
  if (e.arrowBytes !== undefined && !bytesEqual(arrowDigest(e.arrowBytes), claims.arrowDigest)) {
    throw mismatch("arrowDigest");
  }
  if (e.capabilityId !== undefined && !bytesEqual(e.capabilityId, claims.capabilityId))
    throw mismatch("capabilityId");
  if (e.requestHash !== undefined && !bytesEqual(e.requestHash, claims.requestHash))
    throw mismatch("requestHash");
  if (e.subjectId !== undefined && e.subjectId !== claims.subjectId) throw mismatch("subjectId");
  return claims;
}
