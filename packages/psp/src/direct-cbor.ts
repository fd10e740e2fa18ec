/**
 * Reading and writing the exact CBOR bytes of PSP's signed objects directly, without cbor-x.
 *
 * Receipts (receipt.ts) and call capabilities (capability.ts) are written and checked once per
 * answer and once per call, so the generic path (cbor-x decode into a Map, re-encode to prove the
 * canonical form, field checks on the Map) showed up next to the Ed25519 operations themselves,
 * and its garbage was a fifth of the aggregator's allocations in a fan-out. Each module pairs a
 * direct writer with a direct reader for its own layout and keeps the generic path as the
 * fallback: the direct reader accepts a subset of what the generic one accepts, with the same
 * result, and returns undefined for anything else (another key order, a non-shortest head, text
 * that is not plain UTF-8), which then takes the generic path. Differential tests pin both
 * properties for each layout.
 *
 * Everything here reads hostile bytes: every read is bounds-checked and a cursor turns `ok` false
 * at the first surprise instead of throwing, so a caller checks once at the end.
 */

/** Strict UTF-8 (no replacement, BOM kept): a string the reader returns re-encodes to its bytes. */
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A cursor over bytes being read; `ok` turns false at the first surprise and stays false. */
export interface Cursor {
  readonly b: Uint8Array;
  p: number;
  ok: boolean;
}

export function cursor(b: Uint8Array, p = 0): Cursor {
  return { b, p, ok: true };
}

/**
 * Argument of a head of `major` in its shortest form (below 2^32), or -1 (the cursor's `ok` is
 * left to the caller: -1 is out of every range a caller accepts).
 */
export function readHead(c: Cursor, major: number): number {
  const b = c.b;
  const h = b[c.p];
  if (h === undefined || h >> 5 !== major) return -1;
  const info = h & 0x1f;
  c.p++;
  if (info < 24) return info;
  let v: number;
  if (info === 24 && c.p + 1 <= b.byteLength) {
    v = b[c.p]!;
    c.p += 1;
    return v >= 24 ? v : -1;
  }
  if (info === 25 && c.p + 2 <= b.byteLength) {
    v = (b[c.p]! << 8) | b[c.p + 1]!;
    c.p += 2;
    return v >= 0x100 ? v : -1;
  }
  if (info === 26 && c.p + 4 <= b.byteLength) {
    v = b[c.p]! * 0x1000000 + ((b[c.p + 1]! << 16) | (b[c.p + 2]! << 8) | b[c.p + 3]!);
    c.p += 4;
    return v >= 0x10000 ? v : -1;
  }
  return -1;
}

/** One byte that must be exactly `byte` (a small map label, a fixed head). */
export function expectByte(c: Cursor, byte: number): void {
  if (c.b[c.p] === byte) c.p++;
  else c.ok = false;
}

/** Bytes that must be exactly `bytes` (a fixed header written byte by byte). */
export function expectBytes(c: Cursor, bytes: Uint8Array): void {
  const b = c.b;
  if (c.p + bytes.byteLength > b.byteLength) {
    c.ok = false;
    return;
  }
  for (let i = 0; i < bytes.byteLength; i++) {
    if (b[c.p + i] !== bytes[i]) {
      c.ok = false;
      return;
    }
  }
  c.p += bytes.byteLength;
}

/**
 * Reads a byte string's head and steps over its min..max bytes; returns where they start, or -1
 * (and `ok` false) when the head or length is out of bounds.
 */
export function byteString(c: Cursor, min: number, max: number): number {
  const len = readHead(c, 2);
  if (len < min || len > max || c.p + len > c.b.byteLength) {
    c.ok = false;
    return -1;
  }
  c.p += len;
  return c.p - len;
}

/** A byte string of min..max bytes, as a view into the cursor's bytes (no copy). */
export function readByteView(c: Cursor, min: number, max: number): Uint8Array {
  const at = byteString(c, min, max);
  return at < 0 ? EMPTY : c.b.subarray(at, c.p);
}

/** A byte string of min..max bytes, copied into a plain Uint8Array (even when `b` is a Buffer). */
export function readByteCopy(c: Cursor, min: number, max: number): Uint8Array {
  const at = byteString(c, min, max);
  if (at < 0 || !c.ok) return EMPTY;
  return copyBytes(c.b, at, c.p);
}

/** b[at..end) copied into a plain Uint8Array (even when `b` is a Buffer). */
export function copyBytes(b: Uint8Array, at: number, end: number): Uint8Array {
  const len = end - at;
  // Ids and digests (16-64 bytes) are copied by hand: no view of `b` made just to copy from it.
  const out = new Uint8Array(len);
  if (len <= 64) for (let i = 0; i < len; i++) out[i] = b[at + i]!;
  else out.set(b.subarray(at, end));
  return out;
}

/**
 * A text string of 1..maxBytes UTF-8 bytes, strictly valid, and without a leading BOM: whether
 * cbor-x keeps a leading BOM depends on which of its decoders reads the string (its TextDecoder
 * path drops it, cbor-extract keeps it), so the generic path decides those.
 */
export function readText(c: Cursor, maxBytes: number): string {
  const at = skipText(c, maxBytes);
  return at < 0 ? "" : textAt(c.b, at, c.p);
}

/**
 * readText's checks, without making the string: where the text starts (it ends at `c.p`), or -1
 * with `ok` false. readText is this and textAt; a reader that only compares the text (textEquals)
 * or steps over it stops here.
 */
export function skipText(c: Cursor, maxBytes: number): number {
  const len = readHead(c, 3);
  const at = c.p;
  if (len < 1 || len > maxBytes || at + len > c.b.byteLength) {
    c.ok = false;
    return -1;
  }
  c.p += len;
  const b = c.b;
  for (let i = at; i < at + len; i++) {
    if (b[i]! >= 0x80) {
      // Not ASCII (ids, views and commands are): the same checks as readText, by decoding.
      if (b[at] === 0xef && b[at + 1] === 0xbb && b[at + 2] === 0xbf) {
        c.ok = false;
        return -1;
      }
      try {
        strictUtf8.decode(b.subarray(at, at + len));
      } catch {
        c.ok = false;
        return -1;
      }
      return at;
    }
  }
  return at;
}

/** The valid UTF-8 text in b[at..end) (skipText checked it) as a string. */
export function textAt(b: Uint8Array, at: number, end: number): string {
  for (let i = at; i < end; i++) {
    if (b[i]! >= 0x80) return strictUtf8.decode(b.subarray(at, end));
  }
  return String.fromCharCode.apply(null, b.subarray(at, end) as unknown as number[]);
}

/** Whether the valid UTF-8 text in b[at..end) (skipText) is `s`, without decoding ASCII. */
export function textEquals(b: Uint8Array, at: number, end: number, s: string): boolean {
  const len = end - at;
  if (len === s.length) {
    let i = 0;
    while (i < len && b[at + i] === s.charCodeAt(i) && b[at + i]! < 0x80) i++;
    if (i === len) return true;
    // Both ASCII where they first differ: the texts differ there.
    if (b[at + i]! < 0x80 && s.charCodeAt(i) < 0x80) return false;
  }
  return strictUtf8.decode(b.subarray(at, end)) === s;
}

/** Bytes of the shortest head for `n` (< 2^32), or 9 for the 8-byte head. */
export function headLength(n: number): number {
  return n < 24 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : n <= 0xffffffff ? 5 : 9;
}

/** Writes the shortest head of `major` for `n` (a safe integer) at `p`; returns the next offset. */
export function putHead(out: Uint8Array, p: number, major: number, n: number): number {
  const m = major << 5;
  if (n < 24) {
    out[p] = m | n;
    return p + 1;
  }
  if (n < 0x100) {
    out[p] = m | 24;
    out[p + 1] = n;
    return p + 2;
  }
  if (n < 0x10000) {
    out[p] = m | 25;
    out[p + 1] = n >>> 8;
    out[p + 2] = n & 0xff;
    return p + 3;
  }
  if (n <= 0xffffffff) {
    out[p] = m | 26;
    out[p + 1] = n >>> 24;
    out[p + 2] = (n >>> 16) & 0xff;
    out[p + 3] = (n >>> 8) & 0xff;
    out[p + 4] = n & 0xff;
    return p + 5;
  }
  out[p] = m | 27;
  const hi = Math.floor(n / 0x100000000);
  const lo = n - hi * 0x100000000;
  out[p + 1] = hi >>> 24;
  out[p + 2] = (hi >>> 16) & 0xff;
  out[p + 3] = (hi >>> 8) & 0xff;
  out[p + 4] = hi & 0xff;
  out[p + 5] = lo >>> 24;
  out[p + 6] = (lo >>> 16) & 0xff;
  out[p + 7] = (lo >>> 8) & 0xff;
  out[p + 8] = lo & 0xff;
  return p + 9;
}

/** Writes a byte string (major 2) or, with major 3, a text string's UTF-8 bytes; returns next offset. */
export function putString(out: Uint8Array, p: number, major: 2 | 3, b: Uint8Array): number {
  const q = putHead(out, p, major, b.byteLength);
  out.set(b, q);
  return q + b.byteLength;
}

/** Bytes a byte or text string of `b` takes, head included. */
export function stringLength(b: Uint8Array): number {
  return headLength(b.byteLength) + b.byteLength;
}

/**
 * UTF-8 length of a text field the direct writers take (1..maxBytes bytes, no surrogates), or -1.
 * ASCII, the usual case (ids, view and action names), is measured without encoding it.
 */
export function textLength(s: unknown, maxBytes: number): number {
  if (typeof s !== "string" || s.length === 0) return -1;
  let ascii = true;
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return s.length <= maxBytes ? s.length : -1;
  if (SURROGATE.test(s)) return -1;
  const n = Buffer.byteLength(s, "utf8");
  return n <= maxBytes ? n : -1;
}

/**
 * Writes a text string of `byteLength` UTF-8 bytes (from textLength) at `p`; returns the next
 * offset. ASCII is copied code unit by code unit, anything else through Buffer's UTF-8 writer.
 */
export function putText(out: Uint8Array, p: number, s: string, byteLength: number): number {
  const q = putHead(out, p, 3, byteLength);
  if (byteLength === s.length) {
    for (let i = 0; i < byteLength; i++) out[q + i] = s.charCodeAt(i);
  } else {
    Buffer.from(out.buffer, out.byteOffset, out.byteLength).write(s, q, byteLength, "utf8");
  }
  return q + byteLength;
}

/** Any UTF-16 surrogate: strings with one take the generic encoder (cbor-x's own UTF-8 rules). */
const SURROGATE = /[\uD800-\uDFFF]/;

const EMPTY = new Uint8Array(0);
