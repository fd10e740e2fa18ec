import type { KeyObject } from "node:crypto";
import { keyIdBytesOf, keyIdOf } from "./capability.ts";
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
} from "./cose.ts";
import {
  byteString,
  type Cursor,
  copyBytes,
  cursor,
  expectByte,
  headLength,
  putHead,
  putString,
  putText,
  readHead,
  skipText,
  stringLength,
  textAt,
  textEquals,
  textLength,
} from "./direct-cbor.ts";
import { isPspError, PspError } from "./errors.ts";
import { sha256, sha256Equals, sha256EqualsAt } from "./sha256.ts";

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
  const w = new CanonicalWriter();
  write(value, w, 0);
  return w.bytes();
}

/** A growable byte buffer for canonicalCbor (one allocation per doubling, not per byte). */
class CanonicalWriter {
  buf = new Uint8Array(128);
  len = 0;

  room(k: number): void {
    if (this.len + k <= this.buf.byteLength) return;
    const next = new Uint8Array(Math.max(2 * this.buf.byteLength, this.len + k));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  byte(x: number): void {
    this.room(1);
    this.buf[this.len++] = x;
  }

  raw(b: Uint8Array): void {
    this.room(b.byteLength);
    this.buf.set(b, this.len);
    this.len += b.byteLength;
  }

  bytes(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

function head(major: number, n: number, w: CanonicalWriter): void {
  const m = major << 5;
  w.room(9);
  const b = w.buf;
  let p = w.len;
  if (n < 24) b[p++] = m | n;
  else if (n < 0x100) {
    b[p++] = m | 24;
    b[p++] = n;
  } else if (n < 0x10000) {
    b[p++] = m | 25;
    b[p++] = n >>> 8;
    b[p++] = n & 0xff;
  } else if (n < 0x100000000) {
    b[p++] = m | 26;
    b[p++] = n >>> 24;
    b[p++] = (n >>> 16) & 0xff;
    b[p++] = (n >>> 8) & 0xff;
    b[p++] = n & 0xff;
  } else {
    b[p++] = m | 27;
    new DataView(b.buffer, b.byteOffset + p, 8).setBigUint64(0, BigInt(n));
    p += 8;
  }
  w.len = p;
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

function writeFloat(x: number, w: CanonicalWriter): void {
  const half = halfBits(x);
  w.room(9);
  const p = w.len;
  if (half !== undefined) {
    w.buf[p] = 0xf9;
    w.buf[p + 1] = half >>> 8;
    w.buf[p + 2] = half & 0xff;
    w.len += 3;
    return;
  }
  const dv = new DataView(w.buf.buffer, w.buf.byteOffset + p + 1, 8);
  if (Math.fround(x) === x) {
    w.buf[p] = 0xfa;
    dv.setFloat32(0, x);
    w.len += 5;
  } else {
    w.buf[p] = 0xfb;
    dv.setFloat64(0, x);
    w.len += 9;
  }
}

/** A text string: head with the UTF-8 length, then the bytes (ASCII copied without a Buffer). */
function writeText(v: string, w: CanonicalWriter): void {
  const n = v.length;
  let ascii = true;
  for (let i = 0; i < n; i++) {
    if (v.charCodeAt(i) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (!ascii) {
    const b = Buffer.from(v, "utf8");
    head(3, b.byteLength, w);
    w.raw(b);
    return;
  }
  head(3, n, w);
  w.room(n);
  const buf = w.buf;
  const p = w.len;
  for (let i = 0; i < n; i++) buf[p + i] = v.charCodeAt(i);
  w.len += n;
}

/** Map keys (text) in canonical order: encoded-bytes order, i.e. UTF-8 length, then bytewise. */
function compareKeys(a: [Buffer, CanonicalValue], b: [Buffer, CanonicalValue]): number {
  return a[0].byteLength - b[0].byteLength || Buffer.compare(a[0], b[0]);
}

function write(v: CanonicalValue, w: CanonicalWriter, depth: number): void {
  if (depth > MAX_CANONICAL_DEPTH) throw new RangeError("value nests too deeply for canonical CBOR");
  if (v === null) w.byte(0xf6);
  else if (v === true) w.byte(0xf5);
  else if (v === false) w.byte(0xf4);
  else if (typeof v === "number") {
    if (Number.isSafeInteger(v)) {
      if (v >= 0) head(0, v, w);
      else head(1, -1 - v, w);
    } else writeFloat(v, w);
  } else if (typeof v === "string") {
    writeText(v, w);
  } else if (v instanceof Uint8Array) {
    head(2, v.byteLength, w);
    w.raw(v);
  } else if (Array.isArray(v)) {
    head(4, v.length, w);
    for (const item of v as readonly CanonicalValue[]) write(item, w, depth + 1);
  } else if (typeof v === "object") {
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null)
      throw new TypeError("only plain objects encode as maps");
    const entries: Array<[Buffer, CanonicalValue]> = [];
    for (const [k, item] of Object.entries(v as { readonly [key: string]: CanonicalValue | undefined })) {
      if (item === undefined) continue;
      entries.push([Buffer.from(k, "utf8"), item]);
    }
    // (Keys sit one level down, as their values do.)
    if (entries.length > 0 && depth + 1 > MAX_CANONICAL_DEPTH) {
      throw new RangeError("value nests too deeply for canonical CBOR");
    }
    entries.sort(compareKeys);
    head(5, entries.length, w);
    for (const [k, item] of entries) {
      head(3, k.byteLength, w);
      w.raw(k);
      write(item, w, depth + 1);
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
  return sha256(canonicalCbor(v));
}

/** SHA-256 of the Arrow IPC bytes exactly as sent. */
export function arrowDigest(arrowBytes: Uint8Array): Uint8Array {
  return sha256(arrowBytes);
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

/** The generic encoding (cbor-x): for inputs the direct writer below does not take. */
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

// ---------------------------------------------------------------------------------------------
// The receipt's exact bytes, written and read directly.
//
// Receipts are signed and checked once per answer, so the generic path (cbor-x decode, re-encode
// to check the canonical form, field checks) showed up next to the Ed25519 operation itself. Both
// directions below handle exactly the bytes this module's signer emits, which is exactly what
// cbor-x writes for the same claims (tests pin both: byte equality with the generic encoder, and
// that the direct reader accepts what the signer emits). The direct reader accepts a subset of
// what the generic check accepts, with the same result; anything else (another key order, a
// non-shortest integer, a string that is not plain UTF-8, a malformed field) goes down the generic
// path, so what is accepted or refused, and with which code, is unchanged.

const CONTENT_TYPE_BYTES = Buffer.from(RECEIPT_CONTENT_TYPE, "utf8");
/** {1: -8, 3: "application/psp-receipt+cbor", 4: h'<32 bytes>'} up to the kid's bytes. */
const PROTECTED_PREFIX = Uint8Array.from([
  0xa3,
  0x01,
  0x27,
  0x03,
  0x78,
  CONTENT_TYPE_BYTES.byteLength,
  ...CONTENT_TYPE_BYTES,
  0x04,
  0x58,
  0x20,
]);
const PROTECTED_LENGTH = PROTECTED_PREFIX.byteLength + 32;
/** Tag 18, array of 4, bstr head of the protected header (69 bytes: 0x58 0x45). */
const ENVELOPE_PREFIX = Uint8Array.from([0xd2, 0x84, 0x58, PROTECTED_LENGTH]);
const SIGNATURE_HEAD = Uint8Array.of(0x58, 0x40);
const MIN_ENVELOPE = ENVELOPE_PREFIX.byteLength + PROTECTED_LENGTH + 1 + 1 + 2 + 64;

// Byte lengths of the fixed parts, read once: a typed array's byteLength is a getter call.
const ENVELOPE_PREFIX_BYTES = ENVELOPE_PREFIX.byteLength;
const PROTECTED_PREFIX_BYTES = PROTECTED_PREFIX.byteLength;
/** Where the kid's 32 bytes start in a token of the signer's layout. */
const KID_AT = ENVELOPE_PREFIX_BYTES + PROTECTED_PREFIX_BYTES;
/** The signature's head and bytes at the end of a token of the signer's layout. */
const SIGNATURE_TAIL = 2 + 64;

/**
 * Where the payload starts in a receipt envelope of exactly the signer's layout, or -1. The
 * payload then ends SIGNATURE_TAIL bytes before the token does, the protected header's bytes and
 * the kid lie at fixed offsets, and the signature is the last 64 bytes: a verifier reads them in
 * place, with no view made of the parts it only compares (the aggregator checks every receipt's
 * binding and only a sample of their signatures).
 */
function envelopePayloadAt(token: Uint8Array): number {
  const n = token.byteLength;
  if (n < MIN_ENVELOPE || n > MAX_TOKEN_BYTES) return -1;
  for (let i = 0; i < ENVELOPE_PREFIX_BYTES; i++) if (token[i] !== ENVELOPE_PREFIX[i]) return -1;
  const p0 = ENVELOPE_PREFIX_BYTES;
  for (let i = 0; i < PROTECTED_PREFIX_BYTES; i++) if (token[p0 + i] !== PROTECTED_PREFIX[i]) return -1;
  let p = p0 + PROTECTED_LENGTH;
  if (token[p++] !== 0xa0) return -1; // empty unprotected header
  // Payload: a byte string with its shortest head (tokens are < 64 KiB, so at most 3 head bytes).
  const h = token[p++]!;
  let len: number;
  if (h >= 0x40 && h < 0x58) len = h - 0x40;
  else if (h === 0x58 && token[p]! >= 24) len = token[p++]!;
  else if (h === 0x59 && token[p]! > 0) {
    len = (token[p]! << 8) | token[p + 1]!;
    p += 2;
  } else return -1;
  const payloadAt = p;
  p += len;
  if (p + SIGNATURE_TAIL !== n || token[p] !== SIGNATURE_HEAD[0] || token[p + 1] !== SIGNATURE_HEAD[1])
    return -1;
  return payloadAt;
}

/** The parts of a receipt envelope in exactly the signer's layout, or undefined. */
function readEnvelope(
  token: Uint8Array,
): { protectedBytes: Uint8Array; kid: Uint8Array; payload: Uint8Array; signature: Uint8Array } | undefined {
  const payloadAt = envelopePayloadAt(token);
  if (payloadAt < 0) return undefined;
  const n = token.byteLength;
  const p0 = ENVELOPE_PREFIX_BYTES;
  return {
    protectedBytes: token.subarray(p0, p0 + PROTECTED_LENGTH),
    kid: token.subarray(KID_AT, p0 + PROTECTED_LENGTH),
    payload: token.subarray(payloadAt, n - SIGNATURE_TAIL),
    signature: token.subarray(n - 64, n),
  };
}

/** A count as the signer writes it: shortest head up to 2^32 - 1, 8-byte head above (to 2^53). */
function readCount(c: Cursor): number {
  const b = c.b;
  if (b[c.p] === 0x1b && c.p + 9 <= b.byteLength) {
    const hi = ((b[c.p + 1]! << 24) | (b[c.p + 2]! << 16) | (b[c.p + 3]! << 8) | b[c.p + 4]!) >>> 0;
    const lo = ((b[c.p + 5]! << 24) | (b[c.p + 6]! << 16) | (b[c.p + 7]! << 8) | b[c.p + 8]!) >>> 0;
    c.p += 9;
    const v = hi * 0x100000000 + lo;
    if (hi === 0 || !Number.isSafeInteger(v)) c.ok = false;
    return v;
  }
  const v = readHead(c, 0);
  if (v < 0) c.ok = false;
  return v;
}

/**
 * Where each field of a payload in exactly the signer's layout lies, its counts read, every field
 * checked as the generic path would; undefined for any other layout (the generic path decides).
 * readPayload copies the claims out of it; scanPayload compares expectations in place.
 */
interface PayloadLayout {
  readonly capabilityAt: number;
  readonly capabilityEnd: number;
  /** The name is a view's (label 2), else a command's (label 3). */
  readonly isView: boolean;
  readonly nameAt: number;
  readonly nameEnd: number;
  readonly requestHashAt: number;
  readonly rowCount: number;
  readonly suppressedGroups: number;
  readonly watermarkAt: number;
  readonly watermarkEnd: number;
  readonly digestAt: number;
  readonly issuedAt: number;
  readonly subjectAt: number;
  readonly subjectEnd: number;
}

function payloadLayout(payload: Uint8Array): PayloadLayout | undefined {
  const c = cursor(payload);
  expectByte(c, 0xa9); // map of 9 entries
  expectByte(c, RECEIPT_FIELD.capabilityId);
  const capabilityAt = byteString(c, 8, 64);
  const capabilityEnd = c.p;
  const isView = payload[c.p] === RECEIPT_FIELD.view;
  if (isView) c.p++;
  else expectByte(c, RECEIPT_FIELD.command);
  const nameAt = skipText(c, MAX_TEXT_BYTES);
  const nameEnd = c.p;
  expectByte(c, RECEIPT_FIELD.requestHash);
  const requestHashAt = byteString(c, 32, 32);
  expectByte(c, RECEIPT_FIELD.rowCount);
  const rowCount = readCount(c);
  expectByte(c, RECEIPT_FIELD.suppressedGroups);
  const suppressedGroups = readCount(c);
  expectByte(c, RECEIPT_FIELD.watermark);
  const watermarkAt = skipText(c, MAX_TEXT_BYTES);
  const watermarkEnd = c.p;
  expectByte(c, RECEIPT_FIELD.arrowDigest);
  const digestAt = byteString(c, 32, 32);
  expectByte(c, RECEIPT_FIELD.issuedAt);
  const issuedAt = readCount(c);
  expectByte(c, RECEIPT_FIELD.subjectId);
  const subjectAt = skipText(c, MAX_TEXT_BYTES);
  if (!c.ok || c.p !== payload.byteLength) return undefined;
  return {
    capabilityAt,
    capabilityEnd,
    isView,
    nameAt,
    nameEnd,
    requestHashAt,
    rowCount,
    suppressedGroups,
    watermarkAt,
    watermarkEnd,
    digestAt,
    issuedAt,
    subjectAt,
    subjectEnd: c.p,
  };
}

/** Claims from a payload in exactly the signer's layout (copied out), or undefined for the generic path. */
function readPayload(payload: Uint8Array): ReceiptClaims | undefined {
  const l = payloadLayout(payload);
  if (l === undefined) return undefined;
  const name = textAt(payload, l.nameAt, l.nameEnd);
  return {
    capabilityId: copyBytes(payload, l.capabilityAt, l.capabilityEnd),
    view: l.isView ? name : undefined,
    command: l.isView ? undefined : name,
    requestHash: copyBytes(payload, l.requestHashAt, l.requestHashAt + 32),
    rowCount: l.rowCount,
    suppressedGroups: l.suppressedGroups,
    watermark: textAt(payload, l.watermarkAt, l.watermarkEnd),
    arrowDigest: copyBytes(payload, l.digestAt, l.digestAt + 32),
    issuedAt: l.issuedAt,
    subjectId: textAt(payload, l.subjectAt, l.subjectEnd),
  };
}

function putBytes(out: Uint8Array, p: number, label: number, b: Uint8Array): number {
  out[p] = label;
  return putString(out, p + 1, 2, b);
}

function putTextField(out: Uint8Array, p: number, label: number, s: string, byteLength: number): number {
  out[p] = label;
  return putText(out, p + 1, s, byteLength);
}

function putCount(out: Uint8Array, p: number, label: number, n: number): number {
  out[p] = label;
  return putHead(out, p + 1, 0, n);
}

const isCount = (n: unknown): n is number => typeof n === "number" && Number.isSafeInteger(n) && n >= 0;

/**
 * The signer's payload written directly, for claims the verifier's checks accept (else undefined:
 * the generic encoder and checks then refuse them with their usual TypeError).
 */
function writePayload(c: ReceiptClaims): Uint8Array | undefined {
  const name = c.view !== undefined ? c.view : c.command;
  if ((c.view === undefined) === (c.command === undefined)) return undefined;
  const nameLength = textLength(name, MAX_TEXT_BYTES);
  const watermark = textLength(c.watermark, MAX_TEXT_BYTES);
  const subject = textLength(c.subjectId, MAX_TEXT_BYTES);
  if (
    nameLength < 0 ||
    watermark < 0 ||
    subject < 0 ||
    c.capabilityId.byteLength < 8 ||
    c.capabilityId.byteLength > 64 ||
    c.requestHash.byteLength !== 32 ||
    c.arrowDigest.byteLength !== 32 ||
    !isCount(c.rowCount) ||
    !isCount(c.suppressedGroups) ||
    !isCount(c.issuedAt)
  ) {
    return undefined;
  }
  const text = (n: number) => headLength(n) + n;
  const size =
    1 +
    9 + // labels
    stringLength(c.capabilityId) +
    text(nameLength) +
    stringLength(c.requestHash) +
    headLength(c.rowCount) +
    headLength(c.suppressedGroups) +
    text(watermark) +
    stringLength(c.arrowDigest) +
    headLength(c.issuedAt) +
    text(subject);
  const out = new Uint8Array(size);
  out[0] = 0xa9;
  let p = putBytes(out, 1, RECEIPT_FIELD.capabilityId, c.capabilityId);
  const nameLabel = c.view !== undefined ? RECEIPT_FIELD.view : RECEIPT_FIELD.command;
  p = putTextField(out, p, nameLabel, name!, nameLength);
  p = putBytes(out, p, RECEIPT_FIELD.requestHash, c.requestHash);
  p = putCount(out, p, RECEIPT_FIELD.rowCount, c.rowCount);
  p = putCount(out, p, RECEIPT_FIELD.suppressedGroups, c.suppressedGroups);
  p = putTextField(out, p, RECEIPT_FIELD.watermark, c.watermark, watermark);
  p = putBytes(out, p, RECEIPT_FIELD.arrowDigest, c.arrowDigest);
  p = putCount(out, p, RECEIPT_FIELD.issuedAt, c.issuedAt);
  putTextField(out, p, RECEIPT_FIELD.subjectId, c.subjectId, subject);
  return out;
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

/** The protected header per signing key: it depends on the key only. */
const protectedHeaders = new WeakMap<KeyObject, Uint8Array>();

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
  const payload = writePayload(claims) ?? encodeReceiptPayload(claims);
  // Same parser as the verifier: a subject cannot emit a receipt consoles would refuse.
  parseReceiptPayload(payload, (m) => new TypeError(`receipt input invalid: ${m}`));
  let protectedBytes = protectedHeaders.get(args.signer);
  if (protectedBytes === undefined) {
    protectedBytes = receiptProtectedHeader(keyIdOf(args.signer));
    protectedHeaders.set(args.signer, protectedBytes);
  }
  const signature = ed25519Sign(sigStructure1(protectedBytes, EMPTY, payload), args.signer);
  return encodeSign1({ protectedBytes, unprotectedBytes: EMPTY_MAP, payload, signature });
}

const EMPTY = new Uint8Array(0);
const EMPTY_MAP = Uint8Array.of(0xa0);

function parseReceiptPayload(
  payload: Uint8Array,
  fail: (message: string, field?: string) => Error,
): ReceiptClaims {
  return readPayload(payload) ?? parseReceiptPayloadGeneric(payload, fail);
}

function parseReceiptPayloadGeneric(
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
  /**
   * false skips only the Ed25519 verification; the envelope, the signer's key id and every
   * expectation are still checked. For a party that received the receipt over a link already
   * authenticated by that same key (the aggregator) and only forwards it to whoever relies on it
   * (the console, which always verifies). Default true.
   */
  readonly checkSignature?: boolean;
}): ReceiptClaims {
  const claims = parseReceiptPayload(openReceipt(args), contentInvalid);
  if (args.expect !== undefined) checkExpectations(claims, args.expect);
  return claims;
}

/** What a party that forwards a receipt keeps of it: its counts and watermark (checkReceipt). */
export interface ReceiptCounts {
  readonly rowCount: number;
  readonly suppressedGroups: number;
  readonly watermark: string;
}

/**
 * verifyReceipt with expectations, for a party that keeps only the receipt's counts: the
 * aggregator, once per Totebox per query. The same checks in the same order, refused with the same
 * errors, but a receipt in the signer's layout has its expected fields compared where they lie in
 * the token: no capability id, request hash, digest or view is copied out, and no claims object is
 * made. At 1,000 Toteboxes per query those copies were ~650 bytes of the aggregator's ~12 KB of
 * allocation per Totebox (sampling heap profile, eleventh round). Any other layout takes
 * verifyReceipt's generic path.
 */
export function checkReceipt(args: {
  readonly token: Uint8Array;
  readonly subjectPublicKey: KeyObject;
  readonly expect: ReceiptExpectations;
  /** As for verifyReceipt. */
  readonly checkSignature?: boolean;
}): ReceiptCounts {
  const payload = openReceipt(args);
  const counts = scanPayload(payload, args.expect);
  if (counts !== undefined) return counts;
  const claims = parseReceiptPayloadGeneric(payload, contentInvalid);
  checkExpectations(claims, args.expect);
  return {
    rowCount: claims.rowCount,
    suppressedGroups: claims.suppressedGroups,
    watermark: claims.watermark,
  };
}

/**
 * The receipt's envelope checked (size, structure, algorithm, content type, signer's key id, and
 * the signature unless `checkSignature` is false): its payload, or PSP_ERR_RECEIPT_SIGNATURE.
 */
function openReceipt(args: {
  readonly token: Uint8Array;
  readonly subjectPublicKey: KeyObject;
  readonly checkSignature?: boolean;
}): Uint8Array {
  let protectedBytes: Uint8Array | undefined;
  let kidBytes: Uint8Array;
  let payload: Uint8Array;
  let signature: Uint8Array | undefined;
  try {
    assertEd25519Key(args.subjectPublicKey, "verify");
  } catch (e) {
    throw receiptRefused(isPspError(e) ? e.code : "malformed");
  }
  // The signer's exact layout is recognised byte by byte (it passes every check below by
  // construction) and read in place; any other envelope gets the generic decode and checks.
  const token = args.token;
  const payloadAt = token instanceof Uint8Array ? envelopePayloadAt(token) : -1;
  const keyId = keyIdBytesOf(args.subjectPublicKey);
  if (payloadAt >= 0) {
    const n = token.byteLength;
    // The kid in place: 32 bytes at a fixed offset (a key id is always 32 bytes).
    let diff = keyId.byteLength ^ 32;
    for (let i = 0; i < 32; i++) diff |= token[KID_AT + i]! ^ keyId[i]!;
    if (diff !== 0) throw receiptRefused("signed by another key");
    payload = token.subarray(payloadAt, n - SIGNATURE_TAIL);
    if (args.checkSignature !== false) {
      const p0 = ENVELOPE_PREFIX_BYTES;
      protectedBytes = token.subarray(p0, p0 + PROTECTED_LENGTH);
      signature = token.subarray(n - 64, n);
    }
  } else {
    const msg = decodeEnvelopeGeneric(token);
    protectedBytes = msg.protectedBytes;
    kidBytes = msg.protectedHeader.get(COSE_HEADER.kid) as Uint8Array;
    payload = msg.payload;
    signature = msg.signature;
    if (!bytesEqual(kidBytes, keyId)) throw receiptRefused("signed by another key");
  }
  if (
    args.checkSignature !== false &&
    !ed25519Verify(sigStructure1(protectedBytes!, EMPTY, payload), signature!, args.subjectPublicKey)
  ) {
    throw receiptRefused("signature does not verify");
  }
  return payload;
}

/** `expect` against parsed claims, in a fixed order: the first that differs is the error. */
function checkExpectations(claims: ReceiptClaims, e: ReceiptExpectations): void {
  if (e.arrowBytes !== undefined && !sha256Equals(e.arrowBytes, claims.arrowDigest)) {
    throw mismatch("arrowDigest");
  }
  if (e.capabilityId !== undefined && !bytesEqual(e.capabilityId, claims.capabilityId))
    throw mismatch("capabilityId");
  if (e.requestHash !== undefined && !bytesEqual(e.requestHash, claims.requestHash))
    throw mismatch("requestHash");
  if (e.subjectId !== undefined && e.subjectId !== claims.subjectId) throw mismatch("subjectId");
}

/**
 * checkExpectations on a payload in exactly the signer's layout, read in place (payloadLayout):
 * the counts, or undefined for the generic path. Throws the first expectation that differs, in
 * checkExpectations' order.
 */
function scanPayload(payload: Uint8Array, e: ReceiptExpectations): ReceiptCounts | undefined {
  const l = payloadLayout(payload);
  if (l === undefined) return undefined;
  if (e.arrowBytes !== undefined && !sha256EqualsAt(e.arrowBytes, payload, l.digestAt)) {
    throw mismatch("arrowDigest");
  }
  if (e.capabilityId !== undefined && !bytesAt(e.capabilityId, payload, l.capabilityAt, l.capabilityEnd))
    throw mismatch("capabilityId");
  if (e.requestHash !== undefined && !bytesAt(e.requestHash, payload, l.requestHashAt, l.requestHashAt + 32))
    throw mismatch("requestHash");
  if (e.subjectId !== undefined && !textEquals(payload, l.subjectAt, l.subjectEnd, e.subjectId))
    throw mismatch("subjectId");
  return {
    rowCount: l.rowCount,
    suppressedGroups: l.suppressedGroups,
    watermark: textAt(payload, l.watermarkAt, l.watermarkEnd),
  };
}

/** Whether `expected` is b[at..end), reading every byte (as bytesEqual does). */
function bytesAt(expected: Uint8Array, b: Uint8Array, at: number, end: number): boolean {
  // Anything but a Uint8Array (a caller's DataView or ArrayBuffer) gets bytesEqual's own answer.
  if (!(expected instanceof Uint8Array)) return bytesEqual(expected, b.subarray(at, end));
  if (expected.byteLength !== end - at) return false;
  let diff = 0;
  for (let i = 0; i < expected.byteLength; i++) diff |= expected[i]! ^ b[at + i]!;
  return diff === 0;
}

function receiptRefused(reason: string): PspError {
  return new PspError("PSP_ERR_RECEIPT_SIGNATURE", `receipt refused: ${reason}`, { reason });
}

function contentInvalid(message: string, field?: string): PspError {
  return new PspError("PSP_ERR_RECEIPT_MISMATCH", `receipt content invalid: ${message}`, {
    field: field ?? "payload",
  });
}

function mismatch(field: string): PspError {
  return new PspError("PSP_ERR_RECEIPT_MISMATCH", `receipt ${field} differs from what was expected`, {
    field,
  });
}

/** Generic envelope checks: decode, profile, and canonical form by re-encoding. */
function decodeEnvelopeGeneric(token: Uint8Array): ReturnType<typeof decodeSign1> {
  let msg: ReturnType<typeof decodeSign1>;
  try {
    msg = decodeSign1(token, { maxBytes: MAX_TOKEN_BYTES });
    checkEdDsaHeaders(msg);
  } catch (e) {
    throw receiptRefused(isPspError(e) ? e.code : "malformed");
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
    throw receiptRefused("not a PSP receipt envelope");
  }
  let canonical: boolean;
  try {
    canonical =
      bytesEqual(encodeProtectedHeader(msg.protectedHeader), msg.protectedBytes) &&
      bytesEqual(encodeSign1(msg), token);
  } catch {
    canonical = false;
  }
  if (!canonical) throw receiptRefused("envelope is not in canonical encoding");
  return msg;
}

/**
 * @internal The direct and generic codecs side by side, for receipt.test.ts's differential tests
 * (index.ts does not re-export this).
 */
export const receiptCodecsForTest = {
  readEnvelope,
  decodeEnvelopeGeneric,
  readPayload,
  parseReceiptPayloadGeneric,
  writePayload,
  encodeReceiptPayload,
};
