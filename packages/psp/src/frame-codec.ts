import { PspError } from "./errors.ts";
import type { PspLimits } from "./limits.ts";

/**
 * PSP frames.
 *
 * ```
 *  offset  size  field
 *  0       4     body length in bytes (u32, big-endian; a multiple of 8; excludes this header)
 *  4       1     version (1)
 *  5       1     kind (FrameKind)
 *  6       2     segment count (u16, big-endian)
 *  8       ...   body: segment table (count × u32 BE lengths, zero-padded to a multiple of 8),
 *                then each segment, zero-padded to a multiple of 8
 * ```
 *
 * Every segment therefore starts at an offset that is a multiple of 8 from the start of the body,
 * and the decoder hands out each body 8-byte aligned in memory (a view into the received chunk,
 * or a fresh buffer of its own). Arrow IPC buffers carried as segments are then aligned, and
 * read in place without a copy.
 * Padding bytes must be zero: a frame has exactly one valid encoding.
 */
export const FRAME_HEADER_BYTES = 8;
export const FRAME_VERSION = 1;

export const FrameKind = {
  /** Segment 0: a CBOR array of RPC messages; segments 1..n: binary attachments. */
  Messages: 1,
  /** Commander → subject keep-alive. No segments. */
  Ping: 2,
  /** Subject → commander answer to a Ping. No segments. */
  Pong: 3,
  /**
   * Commander → subject direct request (link.ts, `request`): segment 0 is 8 bytes, the request id
   * (u32 BE, strictly increasing per link) and the method (u32 BE); segments 1..n are the
   * method's payload, opaque to the link.
   */
  Request: 4,
  /**
   * Subject → commander reply to one direct request: segment 0 is 8 bytes, the request id and
   * the status (u32 BE: 0 ok, 1 error); then the payload, or for an error one CBOR segment
   * `{code, message, detail?}`.
   */
  Reply: 5,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

const KNOWN_KINDS: ReadonlySet<number> = new Set(Object.values(FrameKind));

export interface Frame {
  readonly kind: FrameKind;
  /** Views into the frame's body, 8-aligned in memory (in the received chunk, or a copy). */
  readonly segments: readonly Uint8Array[];
  /** Header plus body, in bytes. */
  readonly byteLength: number;
}

const pad8 = (n: number): number => (n + 7) & ~7;

/**
 * Encodes a frame as a list of buffers to hand to `socket.write` under cork, so that large
 * attachments are written from where they already are instead of being copied into one buffer.
 */
export function encodeFrame(kind: FrameKind, segments: readonly Uint8Array[] = []): Uint8Array[] {
  if (segments.length > 0xffff) throw new RangeError("too many segments");
  const tableBytes = pad8(segments.length * 4);
  let bodyLength = tableBytes;
  for (const s of segments) bodyLength += pad8(s.byteLength);
  if (bodyLength > 0xffff_fff8) throw new RangeError("frame body too large");

  const head = new Uint8Array(FRAME_HEADER_BYTES + tableBytes);
  const view = new DataView(head.buffer);
  view.setUint32(0, bodyLength);
  view.setUint8(4, FRAME_VERSION);
  view.setUint8(5, kind);
  view.setUint16(6, segments.length);
  for (let i = 0; i < segments.length; i++)
    view.setUint32(FRAME_HEADER_BYTES + i * 4, segments[i]!.byteLength);
  const out: Uint8Array[] = [head];
  for (const s of segments) {
    if (s.byteLength > 0) out.push(s);
    const pad = pad8(s.byteLength) - s.byteLength;
    if (pad > 0) out.push(ZEROS.subarray(0, pad));
  }
  return out;
}

const ZEROS = new Uint8Array(8);

/** The exact byte length of a frame of these segments (header, padded table, padded segments). */
export function frameLength(segmentCount: number, segmentBytes: number): number {
  return FRAME_HEADER_BYTES + pad8(segmentCount * 4) + segmentBytes;
}

/**
 * A Request or Reply frame (segment 0 the 8-byte head `word0`, `word1` as u32 BE; then the
 * `payload` segments) encoded into one buffer: one allocation from Node's buffer pool for
 * a small frame, no head array and no list of parts. The same bytes as encodeFrame's parts joined.
 * Every padding byte is written (the pool's memory is not zeroed).
 */
export function encodeDirectFrame(
  kind: FrameKind,
  word0: number,
  word1: number,
  payload: readonly Uint8Array[],
): Buffer {
  const count = payload.length + 1;
  if (count > 0xffff) throw new RangeError("too many segments");
  const table = pad8(count * 4);
  let body = table + 8;
  for (let i = 0; i < payload.length; i++) body += pad8(payload[i]!.length);
  if (body > 0xffff_fff8) throw new RangeError("frame body too large");
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body);
  out.writeUInt32BE(body, 0);
  out[4] = FRAME_VERSION;
  out[5] = kind;
  out.writeUInt16BE(count, 6);
  out.writeUInt32BE(8, FRAME_HEADER_BYTES);
  let t = FRAME_HEADER_BYTES + 4;
  for (let i = 0; i < payload.length; i++, t += 4) out.writeUInt32BE(payload[i]!.length, t);
  for (; t < FRAME_HEADER_BYTES + table; t++) out[t] = 0;
  let p = FRAME_HEADER_BYTES + table;
  out.writeUInt32BE(word0, p);
  out.writeUInt32BE(word1, p + 4);
  p += 8;
  for (let i = 0; i < payload.length; i++) {
    const s = payload[i]!;
    out.set(s, p);
    p += s.length;
    for (const end = (p + 7) & ~7; p < end; p++) out[p] = 0;
  }
  return out;
}

export function frameByteLength(parts: readonly Uint8Array[]): number {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  return n;
}

type DecoderState =
  | { s: "header"; have: number }
  | { s: "body"; kind: FrameKind; segCount: number; body: Uint8Array; have: number }
  | { s: "failed" };

/**
 * Incremental frame decoder: an explicit state machine fed with whatever chunks the socket gives.
 *
 * Limits are checked on the header, before a single body byte is buffered, so an oversized frame
 * costs the receiver 8 bytes of memory. After the first error the decoder stays failed: the link
 * that fed it is closed by its owner.
 */
export class FrameDecoder {
  readonly #limits: Pick<PspLimits, "maxFrameBytes" | "maxSegments">;
  readonly #header = new Uint8Array(FRAME_HEADER_BYTES);
  readonly #headerView = new DataView(this.#header.buffer);
  #state: DecoderState = { s: "header", have: 0 };

  constructor(limits: Pick<PspLimits, "maxFrameBytes" | "maxSegments">) {
    this.#limits = limits;
  }

  /** True while part of a frame has been received but not all of it. */
  get midFrame(): boolean {
    const st = this.#state;
    return (st.s === "header" && st.have > 0) || st.s === "body";
  }

  /**
   * Consumes a chunk and returns every frame it completed. Throws PspError (and stays failed) on
   * the first violation.
   *
   * A frame that lies whole in the chunk with its body 8-aligned in memory is not copied: its
   * segments are views into the chunk (zero-copy; a TLS socket hands over each chunk in its own
   * buffer and never reuses it, and a chunk that starts on a frame boundary keeps every frame in it
   * aligned, since frames are multiples of 8 bytes). Any other frame is assembled in a fresh
   * buffer of its own, offset 0. A kept segment keeps its whole buffer alive: for a frame read
   * in place, the socket's chunk (up to ~16 KiB on TLS, other frames' bytes included).
   */
  push(chunk: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    let off = 0;
    const n = chunk.byteLength;
    while (off < n) {
      const st = this.#state;
      if (st.s === "failed") throw new PspError("PSP_ERR_FRAME_MALFORMED", "decoder already failed");
      if (st.s === "header") {
        const take = Math.min(FRAME_HEADER_BYTES - st.have, n - off);
        for (let i = 0; i < take; i++) this.#header[st.have + i] = chunk[off + i]!;
        st.have += take;
        off += take;
        if (st.have === FRAME_HEADER_BYTES) {
          const { kind, segCount, bodyLength } = this.#parseHeader();
          if (bodyLength === 0 || (bodyLength <= n - off && ((chunk.byteOffset + off) & 7) === 0)) {
            const body = new Uint8Array(chunk.buffer, chunk.byteOffset + off, bodyLength);
            off += bodyLength;
            st.have = 0;
            frames.push(this.#finish(kind, segCount, body));
          } else {
            // A fresh ArrayBuffer per body: offset 0, so 8-aligned segment offsets are 8-aligned in
            // memory.
            this.#state = { s: "body", kind, segCount, body: new Uint8Array(bodyLength), have: 0 };
          }
        }
      } else {
        const take = Math.min(st.body.byteLength - st.have, n - off);
        st.body.set(chunk.subarray(off, off + take), st.have);
        st.have += take;
        off += take;
        if (st.have === st.body.byteLength) {
          frames.push(this.#finish(st.kind, st.segCount, st.body));
          this.#state = { s: "header", have: 0 };
        }
      }
    }
    return frames;
  }

  #fail(
    code: "PSP_ERR_FRAME_TOO_LARGE" | "PSP_ERR_FRAME_MALFORMED" | "PSP_ERR_FRAME_KIND",
    msg: string,
    detail?: Record<string, number>,
  ): never {
    this.#state = { s: "failed" };
    throw new PspError(code, msg, detail);
  }

  #parseHeader(): { kind: FrameKind; segCount: number; bodyLength: number } {
    const v = this.#headerView;
    const bodyLength = v.getUint32(0);
    const version = v.getUint8(4);
    const kind = v.getUint8(5);
    const segCount = v.getUint16(6);
    if (version !== FRAME_VERSION)
      this.#fail("PSP_ERR_FRAME_MALFORMED", "unsupported frame version", { version });
    if (!KNOWN_KINDS.has(kind)) this.#fail("PSP_ERR_FRAME_KIND", "unknown frame kind", { kind });
    if (FRAME_HEADER_BYTES + bodyLength > this.#limits.maxFrameBytes) {
      this.#fail("PSP_ERR_FRAME_TOO_LARGE", "frame exceeds the maximum frame size", {
        bytes: FRAME_HEADER_BYTES + bodyLength,
        limit: this.#limits.maxFrameBytes,
      });
    }
    if (bodyLength % 8 !== 0)
      this.#fail("PSP_ERR_FRAME_MALFORMED", "frame body length is not a multiple of 8");
    if (segCount > this.#limits.maxSegments) {
      this.#fail("PSP_ERR_FRAME_MALFORMED", "too many segments in frame", {
        segments: segCount,
        limit: this.#limits.maxSegments,
      });
    }
    const control = kind === FrameKind.Ping || kind === FrameKind.Pong;
    if (control && (segCount !== 0 || bodyLength !== 0)) {
      this.#fail("PSP_ERR_FRAME_MALFORMED", "control frames carry no body");
    }
    if (!control && segCount === 0) {
      this.#fail("PSP_ERR_FRAME_MALFORMED", "message frame without segments");
    }
    return { kind: kind as FrameKind, segCount, bodyLength };
  }

  #finish(kind: FrameKind, segCount: number, body: Uint8Array): Frame {
    const tableBytes = pad8(segCount * 4);
    const bodyLength = body.length;
    if (tableBytes > bodyLength) this.#fail("PSP_ERR_FRAME_MALFORMED", "segment table overruns the body");
    for (let p = segCount * 4; p < tableBytes; p++) {
      if (body[p] !== 0) this.#fail("PSP_ERR_FRAME_MALFORMED", "non-zero padding");
    }
    const segments: Uint8Array[] = new Array(segCount);
    let pos = tableBytes;
    for (let i = 0; i < segCount; i++) {
      // The segment table: u32 big-endian lengths.
      const len =
        ((body[4 * i]! << 24) | (body[4 * i + 1]! << 16) | (body[4 * i + 2]! << 8) | body[4 * i + 3]!) >>> 0;
      // Checked before padding: pad8 is 32-bit arithmetic, so a hostile length near 2^32 would
      // pad to a negative or zero size and let the next segment overlap this one or the table.
      if (len > bodyLength - pos) this.#fail("PSP_ERR_FRAME_MALFORMED", "segment overruns the body");
      const end = pos + pad8(len);
      if (end > bodyLength) this.#fail("PSP_ERR_FRAME_MALFORMED", "segment overruns the body");
      segments[i] = body.subarray(pos, pos + len);
      for (let p = pos + len; p < end; p++) {
        if (body[p] !== 0) this.#fail("PSP_ERR_FRAME_MALFORMED", "non-zero padding");
      }
      pos = end;
    }
    if (pos !== bodyLength) this.#fail("PSP_ERR_FRAME_MALFORMED", "trailing bytes after the last segment");
    return { kind, segments, byteLength: FRAME_HEADER_BYTES + bodyLength };
  }
}
