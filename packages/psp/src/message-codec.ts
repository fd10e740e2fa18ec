import { addExtension, Encoder } from "cbor-x";
import { PspError } from "./errors.ts";

/**
 * The body of a Messages frame: segment 0 is a CBOR array of capnweb messages (capnweb's
 * "jsonCompatibleWithBytes" encoding level: JSON-shaped trees whose byte strings stay raw), and
 * every byte string of at least `attachmentThresholdBytes` is lifted out into its own segment so it
 * lands 8-byte aligned in the receiver's memory. In the CBOR it is replaced by tag 40100 wrapping
 * the segment index (1-based; segment 0 is the CBOR itself).
 *
 * Everything decoded here is hostile until `decodeMessages` has walked it: only null, booleans,
 * finite-or-not numbers, strings, byte strings, arrays and plain objects survive. cbor-x would
 * otherwise hand us Dates, Sets, Maps, typed arrays, and (with tags 28/29) cyclic graphs.
 */
export const ATTACHMENT_TAG = 40100;

/** Placeholder for a lifted byte string. Only exists between CBOR and the tree walk. */
export class AttachmentRef {
  constructor(readonly index: number) {}
}

addExtension({
  Class: AttachmentRef,
  tag: ATTACHMENT_TAG,
  encode(ref: AttachmentRef, encode: (v: unknown) => Uint8Array) {
    return encode(ref.index);
  },
  decode(data: unknown) {
    // Returns a placeholder, never the bytes: the tree walk below resolves it against the
    // segments of the frame being decoded, bounds-checked. Any other decoder that meets this tag
    // gets an object its own validation refuses.
    return new AttachmentRef(typeof data === "number" ? data : -1);
  },
});

const codec = new Encoder({
  useRecords: false,
  mapsAsObjects: true,
  tagUint8Array: false,
  // No shared-structure or cyclic-reference support: a message is a plain tree.
  structuredClone: false,
  bundleStrings: false,
  pack: false,
} as ConstructorParameters<typeof Encoder>[0]);

export interface MessageCodecLimits {
  readonly attachmentThresholdBytes: number;
  readonly maxMessageDepth: number;
  readonly maxMessagesPerFrame: number;
}

/**
 * How many attachments, and how many bytes of them, a message will lift when encoded. Lets the
 * sender split a batch before encoding so no frame exceeds the receiver's segment or size limits.
 * `message` is a capnweb-devaluated tree, as for encodeMessages.
 */
export function measureAttachments(
  message: unknown,
  threshold: number,
  depthLimit = 64,
): { count: number; bytes: number } {
  const acc = { count: 0, bytes: 0 };
  measureNode(message, 0, threshold, depthLimit, acc);
  return acc;
}

// The tree walks below are module-level functions taking their context as arguments, not closures
// made per call: under tsx (esbuild's keepNames) every closure created costs an
// Object.defineProperty for its name, and these run for every message on every link (measured:
// ~3% of the hub's CPU at 1,000 links).

function measureNode(
  node: unknown,
  depth: number,
  threshold: number,
  depthLimit: number,
  acc: { count: number; bytes: number },
): void {
  if (node instanceof Uint8Array) {
    if (node.byteLength >= threshold) acc.count++;
    acc.bytes += node.byteLength;
    return;
  }
  if (depth > depthLimit || node === null || typeof node !== "object") return;
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) measureNode(node[i], depth + 1, threshold, depthLimit, acc);
  } else {
    // for-in, not Object.keys: no array of keys made per object (a fan-out's result to a console
    // is thousands of small objects). The trees here are capnweb's devaluated plain objects, whose
    // prototype chain has no enumerable keys, so for-in visits exactly their own keys.
    const obj = node as Record<string, unknown>;
    for (const k in obj) measureNode(obj[k], depth + 1, threshold, depthLimit, acc);
  }
}

/**
 * Encodes a batch of messages into frame segments. Mutates the (freshly devaluated) message trees
 * only by swapping large byte strings for AttachmentRef placeholders. The trees are capnweb's
 * devaluated output: arrays, byte strings, primitives and plain objects whose prototype chain has
 * no enumerable keys (the walks below use for-in).
 */
export function encodeMessages(messages: unknown[], limits: MessageCodecLimits): Uint8Array[] {
  const attachments: Uint8Array[] = [];
  for (let i = 0; i < messages.length; i++) messages[i] = liftNode(messages[i], 0, limits, attachments);
  return [codec.encode(messages), ...attachments];
}

function liftNode(
  node: unknown,
  depth: number,
  limits: MessageCodecLimits,
  attachments: Uint8Array[],
): unknown {
  if (node instanceof Uint8Array) {
    if (node.byteLength >= limits.attachmentThresholdBytes) {
      attachments.push(node);
      return new AttachmentRef(attachments.length);
    }
    return node;
  }
  if (depth > limits.maxMessageDepth) return node;
  // Written back only where a byte string was lifted: a store per property otherwise, for nothing.
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) {
      const v = node[i];
      const lifted = liftNode(v, depth + 1, limits, attachments);
      if (lifted !== v) node[i] = lifted;
    }
  } else if (node !== null && typeof node === "object") {
    const obj = node as Record<string, unknown>;
    for (const k in obj) {
      const v = obj[k];
      const lifted = liftNode(v, depth + 1, limits, attachments);
      if (lifted !== v) obj[k] = lifted;
    }
  }
  return node;
}

/** Decodes and validates the segments of a Messages frame into a list of message trees. */
export function decodeMessages(segments: readonly Uint8Array[], limits: MessageCodecLimits): unknown[] {
  const body = segments[0];
  if (!body) throw new PspError("PSP_ERR_MESSAGE_MALFORMED", "message frame has no CBOR segment");
  let decoded: unknown;
  try {
    decoded = codec.decode(body);
  } catch (cause) {
    // Includes RangeError from hostile nesting: cbor-x recurses.
    throw new PspError("PSP_ERR_MESSAGE_MALFORMED", "message segment is not valid CBOR", {}, { cause });
  }
  if (!Array.isArray(decoded)) {
    throw new PspError("PSP_ERR_MESSAGE_MALFORMED", "message segment must be a CBOR array");
  }
  if (decoded.length === 0 || decoded.length > limits.maxMessagesPerFrame) {
    throw new PspError("PSP_ERR_MESSAGE_MALFORMED", "message count out of bounds", {
      count: decoded.length,
      limit: limits.maxMessagesPerFrame,
    });
  }
  const walk: DecodeWalk = { segments, used: new Set<number>(), maxDepth: limits.maxMessageDepth };
  for (let i = 0; i < decoded.length; i++) decoded[i] = walkNode(decoded[i], 0, walk);
  if (walk.used.size !== segments.length - 1) fail("unreferenced attachment in frame");
  return decoded;
}

interface DecodeWalk {
  readonly segments: readonly Uint8Array[];
  /** Attachment indexes already referenced: each may be referenced once. */
  readonly used: Set<number>;
  readonly maxDepth: number;
}

function fail(why: string): never {
  throw new PspError("PSP_ERR_MESSAGE_MALFORMED", why);
}

function walkNode(node: unknown, depth: number, w: DecodeWalk): unknown {
  if (depth > w.maxDepth) fail("message nesting too deep");
  if (node === null || node === undefined) return node;
  switch (typeof node) {
    case "boolean":
    case "number":
    case "string":
      return node;
    case "object":
      break;
    default:
      // bigint (CBOR tags 2/3 or 64-bit ints beyond 2^53) and anything else: capnweb has its
      // own ["bigint", "digits"] form, so a raw bigint is never legitimate here.
      return fail("unsupported value type in message");
  }
  if (node instanceof AttachmentRef) {
    const i = node.index;
    if (!Number.isInteger(i) || i < 1 || i >= w.segments.length) fail("attachment index out of range");
    if (w.used.has(i)) fail("attachment referenced twice");
    w.used.add(i);
    return w.segments[i];
  }
  if (node instanceof Uint8Array) {
    // cbor-x decodes byte strings as Buffers; tagged typed arrays would be other classes.
    if (
      Object.getPrototypeOf(node) !== Buffer.prototype &&
      Object.getPrototypeOf(node) !== Uint8Array.prototype
    ) {
      fail("typed arrays other than byte strings are not allowed");
    }
    return node;
  }
  if (Array.isArray(node)) {
    if (Object.getPrototypeOf(node) !== Array.prototype) fail("unexpected array class");
    for (let i = 0; i < node.length; i++) node[i] = walkNode(node[i], depth + 1, w);
    return node;
  }
  if (Object.getPrototypeOf(node) !== Object.prototype) fail("only plain maps are allowed");
  const obj = node as Record<string, unknown>;
  for (const k of Object.keys(obj)) obj[k] = walkNode(obj[k], depth + 1, w);
  return node;
}

/**
 * One CBOR value outside a Messages frame (a direct reply's error, a direct read's request body),
 * with the same strict walk as messages and no attachments: a tag 40100 placeholder has no
 * segment to resolve against and is refused.
 */
export function decodeValue(bytes: Uint8Array, maxDepth: number): unknown {
  let decoded: unknown;
  try {
    decoded = codec.decode(bytes);
  } catch (cause) {
    throw new PspError("PSP_ERR_MESSAGE_MALFORMED", "value is not valid CBOR", {}, { cause });
  }
  return walkNode(decoded, 0, { segments: NO_SEGMENTS, used: new Set<number>(), maxDepth });
}

const NO_SEGMENTS: readonly Uint8Array[] = [new Uint8Array(0)];

/** Encodes one plain value (no attachments lifted): the inverse of decodeValue. */
export function encodeValue(value: unknown): Uint8Array {
  return codec.encode(value);
}
