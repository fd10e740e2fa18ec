import { PspError } from "./errors.ts";
import { decodeValue, encodeValue } from "./message-codec.ts";

/**
 * The direct read: a session read (`ToteboxSession.read(capability, view, params, row)`) carried
 * as a PSP direct request (link.ts `request`, FrameKind.Request / Reply) instead of a capnweb call.
 * It is the one call a fan-out makes to every Totebox on every query, so it has its own compact
 * layout; everything else (authorize, pipelined chains, commands, cancel) stays with capnweb.
 *
 * Request payload, two segments:
 *   0. the call capability (COSE_Sign1 bytes), the only part that differs per Totebox;
 *   1. a CBOR array `[grantHash, view, params, row]`: the SHA-256 of the grant the session was
 *      authorized under (bstr, 32), the view name (text), its parameters (map of plain values)
 *      and the row key (text or null). One fan-out encodes this segment once and sends the same
 *      bytes to every Totebox.
 *
 * The grant hash names which session the read belongs to: the subject serves it only if a session
 * under that very grant was authorized on this link (capnweb `authorize`) and is still held.
 * A direct read therefore never skips a check the capnweb read makes: the session's grant, the
 * call capability, the policy and the replay store are all checked as before, by the same code.
 *
 * Reply payload, two segments: the Arrow IPC stream (8-byte aligned at the receiver, read without
 * a copy) and the receipt. Nothing else: row counts, suppressed groups, the watermark, the subject
 * id and the request are all claims of the receipt, which the commander must check anyway.
 */
export const DIRECT_READ_METHOD = 1;

/** Bounds of what a subject accepts in a direct read request (besides the link's frame limits). */
export const DIRECT_READ_LIMITS = Object.freeze({
  /** Longest capability, bytes: a batch capability with its whole Merkle path fits well under. */
  maxCapabilityBytes: 8 * 1024,
  /** Longest request body (grant hash, view, params, row), bytes. */
  maxBodyBytes: 16 * 1024,
  /** Longest view name, UTF-16 units (the Totebox's own limit on view names). */
  maxViewLength: 128,
  /** Deepest nesting of the body (the array is 0, the params map 1, a parameter's value 2). */
  maxBodyDepth: 16,
});

export interface DirectReadBody {
  readonly grantHash: Uint8Array;
  readonly view: string;
  readonly params: Readonly<Record<string, unknown>>;
  readonly row: string | null;
}

export interface DirectReadRequest extends DirectReadBody {
  readonly capability: Uint8Array;
}

export interface DirectReadReply {
  readonly arrow: Uint8Array;
  readonly receipt: Uint8Array;
}

/** The shared segment of a direct read: encode once per fan-out and read (see the layout above). */
export function encodeDirectReadBody(body: DirectReadBody): Uint8Array {
  return encodeValue([body.grantHash, body.view, { ...body.params }, body.row]);
}

/** The request payload for one Totebox: its capability, then the shared body. */
export function directReadPayload(capability: Uint8Array, body: Uint8Array): Uint8Array[] {
  return [capability, body];
}

/** Subject side: the request as received, checked for shape (the session checks everything else). */
export function decodeDirectReadRequest(payload: readonly Uint8Array[]): DirectReadRequest {
  const L = DIRECT_READ_LIMITS;
  if (payload.length !== 2) throw malformed("a direct read carries a capability and a body");
  const capability = payload[0]!;
  const bodyBytes = payload[1]!;
  if (capability.byteLength === 0 || capability.byteLength > L.maxCapabilityBytes) {
    throw malformed("direct read capability size out of bounds");
  }
  if (bodyBytes.byteLength > L.maxBodyBytes) throw malformed("direct read body too large");
  const body = decodeValue(bodyBytes, L.maxBodyDepth);
  if (!Array.isArray(body) || body.length !== 4)
    throw malformed("direct read body is [grantHash, view, params, row]");
  const [grantHash, view, params, row] = body as unknown[];
  if (!(grantHash instanceof Uint8Array) || grantHash.byteLength !== 32) {
    throw malformed("direct read grant hash must be 32 bytes");
  }
  if (typeof view !== "string" || view.length === 0 || view.length > L.maxViewLength) {
    throw malformed("direct read view must be a view name");
  }
  if (
    params === null ||
    typeof params !== "object" ||
    Array.isArray(params) ||
    params instanceof Uint8Array
  ) {
    throw malformed("direct read params must be a map");
  }
  if (row !== null && typeof row !== "string") throw malformed("direct read row must be text or null");
  return {
    capability,
    grantHash,
    view,
    params: params as Record<string, unknown>,
    row: row as string | null,
  };
}

/** Subject side: the reply payload. */
export function encodeDirectReadReply(reply: DirectReadReply): Uint8Array[] {
  return [reply.arrow, reply.receipt];
}

/** Commander side: the reply as received. The caller checks the receipt against its request. */
export function decodeDirectReadReply(payload: readonly Uint8Array[]): DirectReadReply {
  if (payload.length !== 2) throw malformed("a direct read reply carries an Arrow stream and a receipt");
  return { arrow: payload[0]!, receipt: payload[1]! };
}

function malformed(why: string): PspError {
  return new PspError("PSP_ERR_MESSAGE_MALFORMED", why);
}
