/**
 * Hostile Toteboxes for the end-to-end tests: scripted PSP subjects on loopback, each with its own
 * identity, that behave well enough to come online in an aggregator's pool (they answer `hello`
 * through a real capnweb session and answer pings) and then do what the script says once a
 * fan-out reaches them: call up, answer twice, send a frame too large or one that never ends,
 * forge a receipt, replay an old answer...
 *
 * The capnweb session runs over a bare frame transport with no Diode guard of its own, so a
 * script can put any message or byte on the wire; the aggregator's side is the real thing under
 * test. Test support only: imports psp internals by path.
 */
import { createHash, type KeyObject } from "node:crypto";
import {
  type CanonicalValue,
  type Clock,
  decodeDirectReadRequest,
  decodeUnverified,
  type Identity,
  requestHash,
  signReceipt,
  systemClock,
} from "@os-orchestration/psp";
import type { ReadAnswer, ToteboxHello } from "@os-orchestration/totebox";
import { RpcSession, RpcTarget, type RpcTransportWithCustomEncoding } from "capnweb";
import { encodeFrame, FRAME_HEADER_BYTES, FRAME_VERSION, FrameKind } from "../../psp/src/frame-codec.ts";
import { encodeValue } from "../../psp/src/message-codec.ts";
import { type RawPeer, rawListen } from "../../psp/src/test-peers.ts";

/** One read as the hostile Totebox received it: everything it needs to forge an answer. */
export interface ReadCall {
  /** The operator's grant the aggregator presented in `authorize`. */
  readonly grant: Uint8Array;
  readonly view: string;
  readonly capability: Uint8Array;
  readonly params: Readonly<Record<string, unknown>>;
  readonly row: string | undefined;
}

/** The wire under a hostile Totebox's capnweb session, for scripts that break the protocol. */
export interface ScriptedWire {
  /**
   * From now on the script owns the wire: the capnweb session and the ping answers go silent, so
   * nothing of ours lands in the middle of the script's bytes.
   */
  takeOver(): void;
  /** capnweb messages as they are, in one Messages frame. */
  sendMessages(messages: unknown[]): void;
  sendRaw(bytes: Uint8Array): void;
  /**
   * Writes `prefix`, then zeros, `chunkBytes` at a time every `everyMs`, until the link closes:
   * a frame that never completes.
   */
  trickle(options: { prefix?: Uint8Array; chunkBytes: number; everyMs: number }): void;
  /** The next `resolve` the session sends leaves twice, in the same frame. */
  duplicateNextResolve(): void;
  /** Resolves when the aggregator closes the connection. */
  readonly closed: Promise<void>;
}

export interface HostileBehaviour {
  hello(): ToteboxHello | Promise<ToteboxHello>;
  /** Answers (or misbehaves on) one read; the value returned is the answer capnweb sends. */
  read(call: ReadCall, wire: ScriptedWire): unknown;
}

export interface HostileTotebox {
  readonly host: string;
  readonly port: number;
  readonly fingerprint: string;
  /** TLS connections accepted so far. */
  readonly connections: number;
  /** Reads received so far, over all connections. */
  readonly reads: number;
  /** Of those, the reads that came as direct reads (psp.md §3.1). */
  readonly directReads: number;
  close(): Promise<void>;
}

/** Starts a hostile Totebox listening on 127.0.0.1 (ephemeral port) under `identity`. */
export async function startHostileTotebox(options: {
  identity: Identity;
  behaviour: HostileBehaviour;
}): Promise<HostileTotebox> {
  const counts = { connections: 0, reads: 0, directReads: 0 };
  const sessions: ScriptedTransport[] = [];
  const server = await rawListen(options.identity, (peer) => {
    counts.connections++;
    // Grants authorized on this connection, by hex SHA-256: what a direct read names its session by.
    const grants = new Map<string, Uint8Array>();
    const transport = new ScriptedTransport(peer, async (payload) => {
      // A direct read (psp direct-read.ts) goes to the same behaviour as a capnweb read. A read
      // answer leaves as the direct reply's two segments; anything else a behaviour returns
      // leaves as one CBOR segment, which the aggregator must refuse as it refuses it in capnweb.
      const req = decodeDirectReadRequest(payload);
      counts.directReads++;
      const grant = grants.get(Buffer.from(req.grantHash).toString("hex"));
      if (!grant) throw Object.assign(new Error("no session"), { code: "TOTEBOX_ERR_SESSION_UNKNOWN" });
      const a = (await onRead(readCall(grant, req.view, req.capability, req.params, req.row))) as
        | Partial<ReadAnswer>
        | null
        | undefined;
      if (a && a.arrow instanceof Uint8Array && a.receipt instanceof Uint8Array) return [a.arrow, a.receipt];
      return [encodeValue(a ?? null)];
    });
    sessions.push(transport);
    const onRead = (call: ReadCall) => {
      counts.reads++;
      return options.behaviour.read(call, transport.wire);
    };
    const onAuthorize = (grant: Uint8Array) => {
      grants.set(createHash("sha256").update(grant).digest("hex"), grant);
    };
    new RpcSession(transport, new HostileMain(options.behaviour, onRead, onAuthorize));
  });
  return {
    host: "127.0.0.1",
    port: server.port,
    fingerprint: options.identity.fingerprint,
    get connections() {
      return counts.connections;
    },
    get reads() {
      return counts.reads;
    },
    get directReads() {
      return counts.directReads;
    },
    close: async () => {
      for (const s of sessions) s.stop();
      await server.close();
    },
  };
}

/** A hello that passes the aggregator's checks (the id is what the registry pins it as). */
export function hostileHello(
  id: string,
  identity: Identity,
  tags: Readonly<Record<string, string>> = {},
): ToteboxHello {
  return {
    protocol: "psp/1",
    // It answers direct reads (the harness serves them, startHostileTotebox): the aggregator then
    // sends them once a link's session has answered over capnweb.
    directMethods: [1],
    id,
    name: `Hostile ${id}`,
    kind: "property",
    currency: "EUR",
    tags: { ...tags },
    deviceId: identity.fingerprint,
    keyId: identity.keyId,
    state: "active",
    policyDigest: "0".repeat(64),
    views: [],
    commands: [],
  };
}

/**
 * A read answer whose receipt is correct in every field for `call` (capability id, request hash,
 * Arrow digest, subject id) and signed by `signer`: with the Totebox's own key it verifies, with
 * any other key only the signature is wrong.
 */
export function signedAnswer(args: {
  call: ReadCall;
  toteboxId: string;
  arrow: Uint8Array;
  rowCount: number;
  signer: KeyObject;
  clock?: Clock;
}): ReadAnswer {
  const { call } = args;
  const watermark = "hostile";
  const receipt = signReceipt({
    capabilityId: decodeUnverified(call.capability).claims.cti,
    view: call.view,
    requestHash: requestHash({
      view: call.view,
      params: { ...(call.params as Record<string, CanonicalValue>) },
      ...(call.row !== undefined ? { row: call.row } : {}),
    }),
    rowCount: args.rowCount,
    suppressedGroups: 0,
    watermark,
    arrowBytes: args.arrow,
    subjectId: args.toteboxId,
    clock: args.clock ?? systemClock,
    signer: args.signer,
  });
  return {
    totebox: args.toteboxId,
    view: call.view,
    arrow: args.arrow,
    receipt,
    rowCount: args.rowCount,
    suppressedGroups: 0,
    watermark,
  };
}

/** `n` bytes that look random, the same for the same seed (SHA-256 in counter mode). */
export function seededBytes(seed: string, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let off = 0, i = 0; off < n; i++) {
    const block = createHash("sha256").update(`${seed}:${i}`).digest();
    out.set(block.subarray(0, Math.min(block.byteLength, n - off)), off);
    off += block.byteLength;
  }
  return out;
}

/** The 8-byte header of a Messages frame announcing a body of `bodyBytes` (a multiple of 8). */
export function messagesFrameHeader(bodyBytes: number): Uint8Array {
  const head = new Uint8Array(FRAME_HEADER_BYTES);
  const v = new DataView(head.buffer);
  v.setUint32(0, bodyBytes);
  v.setUint8(4, FRAME_VERSION);
  v.setUint8(5, FrameKind.Messages);
  v.setUint16(6, 1);
  return head;
}

/** A promise that never settles: a call the hostile Totebox never answers. */
export function never<T = never>(): Promise<T> {
  return new Promise<T>(() => {});
}

// ---- capnweb objects of the hostile Totebox ------------------------------------------------------

class HostileMain extends RpcTarget {
  readonly #behaviour: HostileBehaviour;
  readonly #onRead: (call: ReadCall) => unknown;
  readonly #onAuthorize: (grant: Uint8Array) => void;
  constructor(
    behaviour: HostileBehaviour,
    onRead: (call: ReadCall) => unknown,
    onAuthorize: (grant: Uint8Array) => void,
  ) {
    super();
    this.#behaviour = behaviour;
    this.#onRead = onRead;
    this.#onAuthorize = onAuthorize;
  }
  hello() {
    return this.#behaviour.hello();
  }
  authorize(grant: unknown) {
    this.#onAuthorize(bytes(grant));
    return new HostileSession(bytes(grant), this.#onRead);
  }
}

class HostileSession extends RpcTarget {
  readonly #grant: Uint8Array;
  readonly #onRead: (call: ReadCall) => unknown;
  constructor(grant: Uint8Array, onRead: (call: ReadCall) => unknown) {
    super();
    this.#grant = grant;
    this.#onRead = onRead;
  }
  view(name: unknown) {
    return new HostileView(this.#grant, String(name), this.#onRead);
  }
  read(capability: unknown, view: unknown, params?: unknown, row?: unknown) {
    return this.#onRead(readCall(this.#grant, String(view), capability, params, row));
  }
  cancel() {
    return { cancelled: false, state: "unknown" };
  }
}

class HostileView extends RpcTarget {
  readonly #grant: Uint8Array;
  readonly #name: string;
  readonly #onRead: (call: ReadCall) => unknown;
  constructor(grant: Uint8Array, name: string, onRead: (call: ReadCall) => unknown) {
    super();
    this.#grant = grant;
    this.#name = name;
    this.#onRead = onRead;
  }
  read(capability: unknown, params?: unknown, row?: unknown) {
    return this.#onRead(readCall(this.#grant, this.#name, capability, params, row));
  }
}

function readCall(
  grant: Uint8Array,
  view: string,
  capability: unknown,
  params: unknown,
  row: unknown,
): ReadCall {
  return {
    grant,
    view,
    capability: bytes(capability),
    params: params !== null && typeof params === "object" ? (params as Record<string, unknown>) : {},
    row: typeof row === "string" ? row : undefined,
  };
}

function bytes(v: unknown): Uint8Array {
  return v instanceof Uint8Array ? v : new Uint8Array(0);
}

// ---- the bare transport ------------------------------------------------------------------------

/**
 * capnweb over PSP frames with nothing in between: no Diode guard, no limits beyond the frame
 * decoder's. What the aggregator sends is decoded by test-peers' RawPeer; what capnweb sends is
 * batched per event-loop turn into one Messages frame, as a real PSP link does.
 */
class ScriptedTransport implements RpcTransportWithCustomEncoding {
  readonly encodingLevel = "jsonCompatibleWithBytes" as const;
  readonly wire: ScriptedWire;
  readonly #peer: RawPeer;
  readonly #inbox: unknown[] = [];
  #waiter: { resolve: (m: unknown) => void; reject: (e: unknown) => void } | undefined;
  #outbox: unknown[] = [];
  #flushScheduled = false;
  #scripted = false;
  #duplicateNextResolve = false;
  #closed = false;
  #trickle: ReturnType<typeof setInterval> | undefined;
  readonly #direct: (payload: readonly Uint8Array[]) => Promise<readonly Uint8Array[]>;

  constructor(peer: RawPeer, direct: (payload: readonly Uint8Array[]) => Promise<readonly Uint8Array[]>) {
    this.#peer = peer;
    this.#direct = direct;
    void peer.closed.then(() => this.stop());
    void this.#pump();
    this.wire = {
      takeOver: () => {
        this.#scripted = true;
        this.#outbox = [];
      },
      sendMessages: (messages) => peer.sendMessages(messages),
      sendRaw: (b) => peer.sendRaw(b),
      trickle: ({ prefix = new Uint8Array(0), chunkBytes, everyMs }) => {
        let sent = 0;
        if (this.#trickle) clearInterval(this.#trickle); // one trickle per connection
        this.#trickle = setInterval(() => {
          if (this.#closed || peer.socket.destroyed) return this.stop();
          const chunk = new Uint8Array(chunkBytes);
          const fromPrefix = prefix.subarray(Math.min(sent, prefix.byteLength), sent + chunkBytes);
          chunk.set(fromPrefix);
          sent += chunkBytes;
          peer.sendRaw(chunk);
        }, everyMs);
      },
      duplicateNextResolve: () => {
        this.#duplicateNextResolve = true;
      },
      closed: peer.closed,
    };
  }

  /** Stops the trickle and fails the session's pending receive (the connection is gone). */
  stop(): void {
    if (this.#trickle) clearInterval(this.#trickle);
    this.#trickle = undefined;
    if (this.#closed) return;
    this.#closed = true;
    this.#peer.socket.destroy();
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.reject(new Error("connection closed"));
  }

  async #pump(): Promise<void> {
    // After the connection closes nextFrame() never settles: the loop simply stops there.
    while (!this.#closed) {
      const f = await this.#peer.nextFrame();
      if (this.#scripted || this.#closed) continue;
      if (f.kind === FrameKind.Ping) {
        this.#peer.sendFrameParts(encodeFrame(FrameKind.Pong));
        continue;
      }
      if (f.kind === FrameKind.Request) {
        void this.#answerDirect(f.segments);
        continue;
      }
      for (const m of f.messages) {
        const w = this.#waiter;
        if (w) {
          this.#waiter = undefined;
          w.resolve(m);
        } else this.#inbox.push(m);
      }
    }
  }

  /** Answers a direct request as a PSP link would: a Reply frame, ok or error, for its id. */
  async #answerDirect(segments: readonly Uint8Array[]): Promise<void> {
    const head = segments[0] ?? new Uint8Array(8);
    const id = new DataView(head.buffer, head.byteOffset, 8).getUint32(0);
    const reply = (status: number, payload: readonly Uint8Array[]) => {
      if (this.#closed || this.#scripted) return; // a script that took the wire answers nothing
      const h = new Uint8Array(8);
      const v = new DataView(h.buffer);
      v.setUint32(0, id);
      v.setUint32(4, status);
      this.#peer.sendFrameParts(encodeFrame(FrameKind.Reply, [h, ...payload]));
    };
    try {
      reply(0, await this.#direct(segments.slice(1)));
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      reply(1, [
        encodeValue({
          code: typeof code === "string" && /^[A-Z]+_ERR_[A-Z0-9_]+$/.test(code) ? code : "PSP_ERR_INTERNAL",
          message: e instanceof Error ? e.message.slice(0, 200) : "error",
        }),
      ]);
    }
  }

  send(message: unknown): void {
    if (this.#closed || this.#scripted) return;
    this.#outbox.push(message);
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      if (this.#closed || this.#scripted || this.#outbox.length === 0) return;
      const batch = this.#outbox.splice(0);
      if (this.#duplicateNextResolve) {
        const i = batch.findIndex((m) => Array.isArray(m) && m[0] === "resolve");
        if (i >= 0) {
          this.#duplicateNextResolve = false;
          // A deep copy: the encoder lifts byte strings out of the tree it is given, and one
          // attachment referenced twice would be refused as malformed before the Diode saw it.
          batch.splice(i + 1, 0, structuredClone(batch[i]));
        }
      }
      this.#peer.sendMessages(batch);
    });
  }

  receive(): Promise<unknown> {
    if (this.#inbox.length > 0) return Promise.resolve(this.#inbox.shift());
    if (this.#closed) return Promise.reject(new Error("connection closed"));
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  abort(): void {
    this.stop();
  }
}
