import type { KeyObject } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import type { RpcTransportWithCustomEncoding } from "capnweb";
import { DiodeGuard, type PspRole } from "./diode.ts";
import { isPspError, PspError } from "./errors.ts";
import {
  encodeDirectFrame,
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameKind,
  frameByteLength,
  frameLength,
} from "./frame-codec.ts";
import { type PspLimits, resolveLimits } from "./limits.ts";
import {
  decodeMessages,
  decodeValue,
  encodeMessages,
  encodeValue,
  measureAttachments,
} from "./message-codec.ts";
import { sanitizeOutgoingError } from "./rpc.ts";
import { type Scheduler, systemScheduler, type TimerHandle } from "./scheduler.ts";

/** Who is on the other end, as established by the TLS pin check. */
export interface PeerInfo {
  /** Lowercase hex SHA-256 of the peer's certificate DER. */
  readonly fingerprint: string;
  /** Lowercase hex SHA-256 of the peer's raw Ed25519 public key. */
  readonly keyId: string;
  /** What the authorizer called this peer (a Totebox id, an operator id...). */
  readonly label: string;
  /** The peer certificate's Ed25519 public key, when it has one. */
  readonly publicKey?: KeyObject | undefined;
}

export interface LinkStats {
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  messagesIn: number;
  messagesOut: number;
}

export interface PspLinkOptions {
  role: PspRole;
  /**
   * The byte stream, normally a TLS socket (tls.ts). Received frames are read in place (views
   * into the chunks it emits, frame-codec.ts), so a socket must never write into a chunk it has
   * already emitted; Node's sockets never do.
   */
  socket: Duplex;
  peer: PeerInfo;
  limits?: Partial<PspLimits>;
  scheduler?: Scheduler;
}

/**
 * The subject's handler of direct requests (`PspLink.request`): given the method and the payload
 * segments (views into the received frame: copy what outlives the call), returns the reply's
 * payload segments. A throw becomes an error reply, sanitized like any error leaving a process
 * (rpc.ts): only a stable code, the message and a flat detail cross the link.
 */
export type DirectRequestHandler = (
  method: number,
  payload: readonly Uint8Array[],
) => Promise<readonly Uint8Array[]>;

/** Status word of a Reply frame's header. */
const REPLY_OK = 0;
const REPLY_ERROR = 1;
/** Request and Reply frames lead with 8 bytes: the id, then the method or the status (u32 BE). */
const DIRECT_HEAD_BYTES = 8;
/** Longest message, detail key or detail text of an error reply, in UTF-16 units (longer is cut). */
const MAX_REMOTE_ERROR_TEXT = 1024;
/** Most detail entries of an error reply (more are dropped). */
const MAX_REMOTE_DETAIL = 32;
/** Longest error code. */
const MAX_REMOTE_CODE = 64;
/** An error reply body larger than this, encoded, is sent as its code and message start only. */
const MAX_ERROR_REPLY_BYTES = 8 * 1024;
const REMOTE_CODE = /^[A-Z]+_ERR_[A-Z0-9_]+$/;

const pad8 = (n: number): number => (n + 7) & ~7;

const clip = (t: string): string =>
  t.length <= MAX_REMOTE_ERROR_TEXT ? t : t.slice(0, MAX_REMOTE_ERROR_TEXT);

export interface LinkEvents {
  /** A complete frame arrived (after limit checks, before message decoding). */
  "frame-in": [frame: Frame];
  /** A frame was handed to the socket. */
  "frame-out": [kind: FrameKind, bytes: number, messages: number];
  /** The peer (or our own code) broke the Diode; the link is being closed. */
  violation: [error: PspError];
  /** The link is closed; `error` is absent for a clean close. */
  close: [error: PspError | undefined];
}

/**
 * One PSP link: a framed, Diode-fenced capnweb transport over an authenticated socket.
 *
 * Messages capnweb sends in one turn of the event loop are batched into one frame (so a pipelined
 * chain of calls leaves as a single frame and costs a single round trip). Every message received is
 * checked by the DiodeGuard before capnweb sees it. Any limit or rule broken by the peer closes
 * this link — and only this link — with a typed error.
 */
export class PspLink extends EventEmitter<LinkEvents> implements RpcTransportWithCustomEncoding {
  readonly encodingLevel = "jsonCompatibleWithBytes" as const;
  readonly role: PspRole;
  readonly peer: PeerInfo;
  readonly limits: Readonly<PspLimits>;
  readonly stats: LinkStats = {
    framesIn: 0,
    framesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    messagesIn: 0,
    messagesOut: 0,
  };

  readonly #socket: Duplex;
  readonly #guard: DiodeGuard;
  readonly #decoder: FrameDecoder;
  readonly #scheduler: Scheduler;
  readonly #inbox: unknown[] = [];
  #waiter: { resolve: (m: unknown) => void; reject: (e: unknown) => void } | undefined;
  #outbox: unknown[] = [];
  #flushScheduled = false;
  /** This link's entry in the shared flush queue (made once, queued once per turn at most). */
  readonly #pendingFlush: PendingFlush = {
    flush: () => this.#flush(),
    fail: (e) => this.close(toPspError(e)),
  };
  /** Set while the outbox holds only `release` messages waiting for company (see #flush). */
  #releaseTimer: TimerHandle | undefined;
  #closed: { error: PspError | undefined } | undefined;
  #idleTimer: TimerHandle | undefined;
  #pingTimer: TimerHandle | undefined;
  #pingOutstanding = false;
  #lastFrameInAt: number;
  /** Commander: direct requests sent and not yet answered. */
  readonly #requests = new OpenRequests();
  #nextRequestId = 1;
  /** Subject: who answers direct requests (none: each is refused with PSP_ERR_METHOD_UNKNOWN). */
  #directHandler: DirectRequestHandler | undefined;

  constructor(options: PspLinkOptions) {
    super();
    this.role = options.role;
    this.peer = options.peer;
    this.limits = resolveLimits(options.limits);
    this.#socket = options.socket;
    this.#scheduler = options.scheduler ?? systemScheduler;
    this.#guard = new DiodeGuard(this.role, this.limits);
    this.#decoder = new FrameDecoder(this.limits);
    this.#lastFrameInAt = this.#elapsed();

    this.#socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    this.#socket.on("end", () => this.close());
    this.#socket.on("close", () => this.close());
    this.#socket.on("error", (cause: Error) =>
      this.close(new PspError("PSP_ERR_LINK_CLOSED", "socket error", { peer: this.peer.label }, { cause })),
    );
    this.#armIdle();
    if (this.role === "commander") this.#armPing();
  }

  get closed(): boolean {
    return this.#closed !== undefined;
  }

  /** The error the link closed with, once closed (undefined for a clean close or while open). */
  get closeError(): PspError | undefined {
    return this.#closed?.error;
  }

  /** Calls the commander currently has open on this link (meaningful on the subject side). */
  get callsInFlight(): number {
    return this.#guard.callsInFlight;
  }

  // ---- capnweb transport ------------------------------------------------------------------

  send(message: unknown): number | undefined {
    if (this.#closed) return undefined;
    try {
      this.#guard.inspectOutgoing(message);
    } catch (e) {
      // Our own side tried to break the Diode: that is a bug, but the peer must never see it.
      const err = toPspError(e);
      if (err.code === "PSP_ERR_DIODE") this.emit("violation", err);
      this.close(err);
      return undefined;
    }
    this.#outbox.push(message);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      // Flush once the current macrotask's promise jobs have run: capnweb sends a call's `push`
      // when it is made and its `pull` when the caller awaits it, a few microtasks later, and a
      // pipelined chain spreads its pushes over several microtasks too. Waiting for setImmediate
      // puts them all in one frame (one round trip) at the cost of one event-loop turn.
      scheduleFlush(this.#pendingFlush);
    }
    return undefined;
  }

  receive(): Promise<unknown> {
    if (this.#inbox.length > 0) return Promise.resolve(this.#inbox.shift());
    if (this.#closed) {
      return Promise.reject(this.#closed.error ?? new PspError("PSP_ERR_LINK_CLOSED", "link closed"));
    }
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  abort(reason: unknown): void {
    this.close(isPspError(reason) ? toPspError(reason) : undefined);
  }

  // ---- direct requests ----------------------------------------------------------------------
  //
  // One call and its answer in one frame each, outside capnweb: for the call a fan-out makes to
  // every Totebox on every query, where capnweb's general machinery (its import and export tables,
  // promise objects, message trees walked three times) cost more hub CPU than the TLS link itself.
  // Pipelining, returned objects and everything else stay with capnweb. The Diode holds the same:
  // only the commander requests, only the subject replies, each reply answers one open request,
  // and open requests count as calls in flight at the subject.

  /**
   * Commander: sends a direct request and resolves with the reply's payload segments (views into
   * the received frame, 8-byte aligned). An error reply rejects with an Error whose `code`,
   * `message` and `detail` are the subject's, as a capnweb call's would; a closed link rejects
   * with the close error. `ticket.id` is set to the request's id (for `abandon`).
   */
  request(method: number, payload: readonly Uint8Array[], ticket?: { id: number }): Promise<Uint8Array[]> {
    let sink!: PromiseSink;
    const answer = new Promise<Uint8Array[]>((resolve, reject) => {
      sink = new PromiseSink(resolve, reject);
    });
    try {
      const id = this.requestWith(method, payload, sink, 0);
      if (ticket) ticket.id = id;
    } catch (e) {
      return Promise.reject(e);
    }
    return answer;
  }

  /**
   * Commander: sends a direct request whose outcome goes to `sink` with `tag`, and returns its id
   * (for `abandon`). For a caller with many requests in flight (a fan-out's one per Totebox): the
   * request holds no promise, closure or object of its own while it waits, only its place in
   * three arrays, so a query's in-flight state is not promoted to V8's old generation and
   * collected by full mark-compacts (measured: ~20 µs of hub CPU per Totebox at 1,000).
   *
   * Throws, and never calls the sink, if the request was not sent: the link is closed (its close
   * error), `maxCallsInFlight` requests are unanswered on it (PSP_ERR_CALLS_IN_FLIGHT), `method`
   * is not a u32 or the payload cannot be framed (RangeError). Once it returns, exactly one sink call follows, never from inside
   * `requestWith`: `reply` with the payload segments (views into the received frame, 8-byte
   * aligned), or `fail` with the subject's error (code, message, detail), PSP_ERR_ABANDONED (from
   * `abandon`, at once) or the link's close error (a microtask after close). A sink must not
   * throw: what it throws is rethrown from a microtask (an uncaught exception), never charged to
   * the peer.
   */
  requestWith(method: number, payload: readonly Uint8Array[], sink: ReplySink, tag: number): number {
    if (this.#closed) throw this.#closeReason();
    if (!Number.isInteger(method) || method < 0 || method > 0xffff_ffff) {
      throw new RangeError("method must be a u32");
    }
    // Our own bound on what we wait for, the subject's limit mirrored: a subject that stops
    // replying gets no more requests (abandoned ones count until it replies), and nothing of ours
    // piles up behind it.
    if (this.#guard.directOutstanding >= this.limits.maxCallsInFlight) {
      throw new PspError("PSP_ERR_CALLS_IN_FLIGHT", "too many direct requests unanswered on this link", {
        limit: this.limits.maxCallsInFlight,
      });
    }
    const id = this.#nextRequestId++;
    if (id > 0xffff_ffff) {
      // Four billion requests on one link: the ids would wrap and could no longer increase.
      this.close(new PspError("PSP_ERR_LINK_CLOSED", "direct request ids exhausted; reconnect"));
      throw this.#closeReason();
    }
    // Encoded before anything records the request: a payload that cannot be framed (65,535
    // segments or more) throws here, leaving nothing open, no sink to call and the link up.
    const frame = directFrame(FrameKind.Request, id, method, payload);
    try {
      this.#guard.requestOut(id);
      // Messages capnweb queued before this request leave before it (their releases lower the
      // subject's count of calls in flight before this request counts).
      if (this.#outbox.length > 0) this.#flush(true);
    } catch (e) {
      // Our own bug (encoding our own messages failed): as on the scheduled flush path, the link
      // closes with PSP_ERR_INTERNAL rather than carry on with a half-sent outbox.
      this.close(toPspError(e));
      throw this.#closeReason();
    }
    // The flush may have closed the link (send buffer full, a frame too large).
    if (this.#closed) throw this.#closeReason();
    this.#requests.add(id, sink, tag);
    // #write closing the link (this frame too large for the peer) fails the entry just set, a
    // microtask later (close).
    this.#write(frame, FrameKind.Request, 1);
    return id;
  }

  /**
   * Commander: stops waiting for request `id` (from `request`'s ticket or `requestWith`): its
   * sink's `fail` is called with PSP_ERR_ABANDONED at once (`request`'s promise rejects), and the
   * reply, when it comes, is dropped. The request still counts
   * against this link's bound until the subject replies. Unknown or answered ids are ignored.
   */
  abandon(id: number): void {
    const k = this.#requests.indexOf(id);
    if (k < 0) return;
    this.#requests.settleAt(
      k,
      undefined,
      new PspError("PSP_ERR_ABANDONED", "stopped waiting for this direct request"),
    );
  }

  /** Subject: answers direct requests with `handler` (replacing any handler before). */
  serveRequests(handler: DirectRequestHandler): void {
    if (this.role !== "subject") throw new RangeError("only a subject serves direct requests");
    this.#directHandler = handler;
  }

  #closeReason(): PspError {
    return (
      this.#closed?.error ?? new PspError("PSP_ERR_LINK_CLOSED", "link closed", { peer: this.peer.label })
    );
  }

  #onRequest(segments: readonly Uint8Array[]): void {
    // The role first: a Request from a subject is a Diode violation whatever its head says.
    if (this.role === "commander") throw diode("a subject never calls");
    const head = segments[0]!;
    if (head.byteLength !== DIRECT_HEAD_BYTES) {
      throw new PspError("PSP_ERR_MESSAGE_MALFORMED", "direct request header must be 8 bytes");
    }
    const v = new DataView(head.buffer, head.byteOffset, DIRECT_HEAD_BYTES);
    const id = v.getUint32(0);
    const method = v.getUint32(4);
    this.#guard.requestIn(id); // ids increase; calls in flight
    this.stats.messagesIn++;
    const handler = this.#directHandler;
    let answer: Promise<readonly Uint8Array[]>;
    try {
      // A handler that throws instead of rejecting fails this request only, never the link.
      answer = handler
        ? Promise.resolve(handler(method, segments.slice(1)))
        : Promise.reject(new PspError("PSP_ERR_METHOD_UNKNOWN", "this link serves no direct requests"));
    } catch (e) {
      answer = Promise.reject(e);
    }
    answer
      .then(
        (payload) => this.#reply(id, REPLY_OK, payload),
        (e: unknown) => this.#replyError(id, e),
      )
      // Only a bug of ours lands here (replying failed): close rather than leave it unanswered.
      .catch((e: unknown) => this.close(toPspError(e)));
  }

  #replyError(id: number, e: unknown): void {
    const safe = sanitizeOutgoingError(e instanceof Error ? e : new Error(String(e))) as Error & {
      code: string;
      detail?: Record<string, string | number | boolean>;
    };
    // Within the bounds every receiver enforces (remoteError): a long message (an enum's whole
    // list of values, say) is cut here rather than refused there.
    const code = safe.code.length <= MAX_REMOTE_CODE ? safe.code : "PSP_ERR_INTERNAL";
    const body: Record<string, unknown> = { code, message: clip(safe.message) };
    if (safe.detail !== undefined) {
      const detail: Record<string, string | number | boolean> = {};
      for (const [k, x] of Object.entries(safe.detail).slice(0, MAX_REMOTE_DETAIL)) {
        detail[clip(k)] = typeof x === "string" ? clip(x) : x;
      }
      body.detail = detail;
    }
    let encoded = encodeValue(body);
    if (encoded.byteLength > MAX_ERROR_REPLY_BYTES) {
      // Clipped field by field it may still be large (32 details of 1,024 characters): the code
      // and the start of the message are what the caller needs.
      encoded = encodeValue({ code, message: safe.message.slice(0, 256) });
    }
    this.#reply(id, REPLY_ERROR, [encoded]);
  }

  #reply(id: number, status: number, payload: readonly Uint8Array[]): void {
    if (this.#closed) return;
    let segmentBytes: number | undefined; // measured once, for the limit check and the encoding
    if (status === REPLY_OK) {
      // An answer the peer could not take (too many segments, too large a frame) is refused as
      // this request's error; the link and its other requests carry on.
      segmentBytes = directSegmentBytes(payload);
      const bytes = frameLength(payload.length + 1, segmentBytes);
      if (payload.length + 1 > this.limits.maxSegments || bytes > this.limits.maxFrameBytes) {
        this.#replyError(
          id,
          new PspError("PSP_ERR_FRAME_TOO_LARGE", "answer exceeds the frame limits", {
            limit: this.limits.maxFrameBytes,
          }),
        );
        return;
      }
    }
    this.#guard.replyOut(id); // throws only on a bug of ours: the caller closes the link
    this.#write(directFrame(FrameKind.Reply, id, status, payload, segmentBytes), FrameKind.Reply, 1);
  }

  #onReply(segments: readonly Uint8Array[]): void {
    // The role first: a Reply from a commander is a Diode violation whatever its head says.
    if (this.role === "subject") throw diode("a commander never answers: the subject asked it nothing");
    const head = segments[0]!;
    if (head.byteLength !== DIRECT_HEAD_BYTES) {
      throw new PspError("PSP_ERR_MESSAGE_MALFORMED", "direct reply header must be 8 bytes");
    }
    const v = new DataView(head.buffer, head.byteOffset, DIRECT_HEAD_BYTES);
    const id = v.getUint32(0);
    const status = v.getUint32(4);
    this.#guard.replyIn(id); // the Diode: a subject answers only what it was asked, once
    this.stats.messagesIn++;
    const requests = this.#requests;
    const k = requests.indexOf(id);
    if (k < 0) return; // abandoned by its caller: the late reply is dropped
    if (status === REPLY_OK) {
      requests.settleAt(k, segments.slice(1), undefined);
      return;
    }
    if (status !== REPLY_ERROR || segments.length !== 2) {
      const err = new PspError("PSP_ERR_MESSAGE_MALFORMED", "direct reply has an unknown status or layout");
      requests.settleAt(k, undefined, err);
      throw err;
    }
    let remote: Error;
    try {
      remote = remoteError(decodeValue(segments[1]!, 4));
    } catch (e) {
      requests.settleAt(k, undefined, e);
      throw e;
    }
    requests.settleAt(k, undefined, remote);
  }

  // ---- lifecycle --------------------------------------------------------------------------

  /** Closes the link. Idempotent; the first error wins. */
  close(error?: PspError): void {
    if (this.#closed) return;
    this.#closed = { error };
    this.#releaseTimer?.cancel();
    this.#releaseTimer = undefined;
    this.#idleTimer?.cancel();
    this.#pingTimer?.cancel();
    // Send what capnweb already queued (typically its own "abort" message), then end.
    if (!error && this.#outbox.length > 0) this.#flush();
    if (error) this.#socket.destroy();
    else this.#socket.end();
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.reject(error ?? new PspError("PSP_ERR_LINK_CLOSED", "link closed", { peer: this.peer.label }));
    if (this.#requests.size > 0) {
      // A microtask later: close may run inside requestWith (its frame too large for the peer),
      // and a sink is never called from there.
      const open = this.#requests.takeAll();
      const reason = error ?? new PspError("PSP_ERR_LINK_CLOSED", "link closed", { peer: this.peer.label });
      queueMicrotask(() => {
        for (let k = 0; k < open.sinks.length; k++) deliver(open.sinks[k]!, open.tags[k]!, undefined, reason);
      });
    }
    this.emit("close", error);
  }

  // ---- internals --------------------------------------------------------------------------

  #flush(force = false): void {
    this.#flushScheduled = false;
    if (this.#closed && this.#outbox.length === 0) return;
    // A batch of nothing but `release` messages (capnweb returning imports once an answer has
    // been used) changes nothing the peer must act on now: it only lets the peer free table
    // entries. Sending it alone costs a TLS record and a write syscall per link per query (the
    // hub's largest avoidable cost after receipts, measured at 1,000 links), so it waits up to
    // releaseDelayMs for the next frame out and rides along. Releases stay ahead of any later
    // call in the outbox, so the subject's calls-in-flight count drops before new calls count.
    if (
      !force &&
      !this.#closed &&
      this.limits.releaseDelayMs > 0 &&
      this.#outbox.length > 0 &&
      onlyReleases(this.#outbox)
    ) {
      this.#releaseTimer ??= this.#scheduler.after(this.limits.releaseDelayMs, () => {
        this.#releaseTimer = undefined;
        this.#flush(true);
      });
      return;
    }
    this.#releaseTimer?.cancel();
    this.#releaseTimer = undefined;
    // Split the queue into frames the peer will accept: at most maxMessagesPerFrame messages,
    // maxSegments - 1 attachments (segment 0 is the CBOR), and attachment bytes well under
    // maxFrameBytes. A single message too large on its own is refused in #write.
    const maxAttachments = this.limits.maxSegments - 1;
    const byteBudget = this.limits.maxFrameBytes - 64 * 1024;
    while (this.#outbox.length > 0) {
      let n = 0;
      let attachments = 0;
      let bytes = 0;
      while (n < this.#outbox.length && n < this.limits.maxMessagesPerFrame) {
        const m = measureAttachments(this.#outbox[n], this.limits.attachmentThresholdBytes);
        if (n > 0 && (attachments + m.count > maxAttachments || bytes + m.bytes > byteBudget)) break;
        attachments += m.count;
        bytes += m.bytes;
        n++;
      }
      const batch = this.#outbox.splice(0, n);
      const parts = encodeFrame(FrameKind.Messages, encodeMessages(batch, this.limits));
      this.#write(parts, FrameKind.Messages, batch.length);
      if (this.#closed) return;
    }
  }

  #write(parts: Uint8Array[], kind: FrameKind, messages: number): void {
    // Nothing goes out on a closed link (close() itself flushes capnweb's last messages first).
    if (this.#closed && kind !== FrameKind.Messages) return;
    const bytes = frameByteLength(parts);
    if (bytes > this.limits.maxFrameBytes) {
      // The peer would refuse it; refuse it here, with a clear code, instead.
      this.close(
        new PspError("PSP_ERR_FRAME_TOO_LARGE", "outgoing frame exceeds the maximum frame size", {
          bytes,
          limit: this.limits.maxFrameBytes,
        }),
      );
      return;
    }
    if (bytes <= COALESCE_BYTES) {
      // A small frame goes out as one buffer: copying a few KiB is cheaper than the socket's
      // writev path, which cost ~3× a plain write per frame on the aggregator (profiled at 1,000
      // links, where nearly every frame is a small request).
      this.#socket.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes));
    } else {
      // Large attachments are written where they lie (zero-copy), batched into one writev.
      const s = this.#socket as Duplex & { cork?: () => void; uncork?: () => void };
      s.cork?.();
      for (const p of parts) this.#socket.write(p);
      s.uncork?.();
    }
    this.stats.framesOut++;
    this.stats.bytesOut += bytes;
    this.stats.messagesOut += messages;
    this.emit("frame-out", kind, bytes, messages);
    if (this.#socket.writableLength > this.limits.maxSendBufferBytes) {
      this.close(
        new PspError("PSP_ERR_SEND_BUFFER", "peer is not reading; send buffer limit reached", {
          limit: this.limits.maxSendBufferBytes,
        }),
      );
    }
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    this.stats.bytesIn += chunk.byteLength;
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (e) {
      this.close(toPspError(e));
      return;
    }
    for (const frame of frames) {
      if (this.#closed) return;
      this.stats.framesIn++;
      this.#lastFrameInAt = this.#elapsed();
      this.emit("frame-in", frame);
      try {
        this.#onFrame(frame);
      } catch (e) {
        const err = toPspError(e);
        if (err.code === "PSP_ERR_DIODE") this.emit("violation", err);
        this.close(err);
        return;
      }
    }
  }

  #onFrame(frame: Frame): void {
    switch (frame.kind) {
      case FrameKind.Ping:
        if (this.role === "commander") throw diode("a subject never initiates, not even a ping");
        this.#write(encodeFrame(FrameKind.Pong), FrameKind.Pong, 0);
        return;
      case FrameKind.Pong:
        if (this.role === "subject") throw diode("a commander never answers");
        if (!this.#pingOutstanding) throw diode("pong without a ping");
        this.#pingOutstanding = false;
        return;
      case FrameKind.Request:
        this.#onRequest(frame.segments);
        return;
      case FrameKind.Reply:
        this.#onReply(frame.segments);
        return;
      case FrameKind.Messages: {
        const messages = decodeMessages(frame.segments, this.limits);
        // Check the whole batch before capnweb sees any of it.
        for (const m of messages) this.#guard.inspectIncoming(m);
        this.stats.messagesIn += messages.length;
        for (const m of messages) {
          const w = this.#waiter;
          if (w) {
            this.#waiter = undefined;
            w.resolve(m);
          } else {
            this.#inbox.push(m);
          }
        }
        return;
      }
    }
  }

  /**
   * Milliseconds on a clock that never steps (the scheduler's monotonic clock when it has one):
   * a wall clock stepped forward would cut healthy links, stepped back would keep a silent one.
   */
  #elapsed(): number {
    return this.#scheduler.monotonicNow ? this.#scheduler.monotonicNow() : this.#scheduler.now();
  }

  /**
   * One idle timer per link, not one per frame: a frame only records when it arrived, and the
   * timer, when it fires, closes the link if no frame came within idleTimeoutMs or else sleeps
   * for what is left. (Re-arming on every frame cost a timer allocation per answer: ~1.5% of the
   * aggregator's CPU at 1,000 links.)
   */
  #armIdle(delayMs = this.limits.idleTimeoutMs): void {
    this.#idleTimer = this.#scheduler.after(delayMs, () => {
      if (this.#closed) return;
      const quietFor = this.#elapsed() - this.#lastFrameInAt;
      if (quietFor < this.limits.idleTimeoutMs) {
        this.#armIdle(this.limits.idleTimeoutMs - quietFor);
        return;
      }
      this.close(
        new PspError("PSP_ERR_IDLE_TIMEOUT", "no complete frame within the idle timeout", {
          idleTimeoutMs: this.limits.idleTimeoutMs,
          midFrame: this.#decoder.midFrame,
        }),
      );
    });
  }

  #armPing(): void {
    this.#pingTimer = this.#scheduler.after(this.limits.pingIntervalMs, () => {
      if (this.#closed) return;
      // Ping only a link that has been silent toward us: its answer is what keeps the idle timer
      // from firing.
      const quiet = this.#elapsed() - this.#lastFrameInAt >= this.limits.pingIntervalMs;
      if (quiet && !this.#pingOutstanding) {
        this.#pingOutstanding = true;
        this.#write(encodeFrame(FrameKind.Ping), FrameKind.Ping, 0);
      }
      this.#armPing();
    });
  }
}

/**
 * Links with messages to send, flushed together by one setImmediate: a fan-out over 1,000 links
 * queues one callback, not 1,000. A flush that throws (a bug: encoding our own messages failed)
 * closes its own link with PSP_ERR_INTERNAL; the other links still flush.
 */
interface PendingFlush {
  readonly flush: () => void;
  readonly fail: (e: unknown) => void;
}
let flushQueue: PendingFlush[] = [];

function scheduleFlush(p: PendingFlush): void {
  if (flushQueue.length === 0) setImmediate(runFlushes);
  flushQueue.push(p);
}

function runFlushes(): void {
  const queue = flushQueue;
  flushQueue = [];
  for (const p of queue) {
    try {
      p.flush();
    } catch (e) {
      p.fail(e);
    }
  }
}

/** Frames up to this size are copied into one buffer before writing (see #write). */
const COALESCE_BYTES = 64 * 1024;

/**
 * A Request or Reply frame's parts for #write: a small one encoded straight into one buffer (no
 * head array, no list of parts, no second copy in #write), a large one as parts to write where
 * its attachments lie.
 */
function directFrame(
  kind: FrameKind,
  word0: number,
  word1: number,
  payload: readonly Uint8Array[],
  segmentBytes = directSegmentBytes(payload),
): Uint8Array[] {
  if (frameLength(payload.length + 1, segmentBytes) <= COALESCE_BYTES) {
    return [encodeDirectFrame(kind, word0, word1, payload)];
  }
  const head = new Uint8Array(DIRECT_HEAD_BYTES);
  const v = new DataView(head.buffer);
  v.setUint32(0, word0);
  v.setUint32(4, word1);
  return encodeFrame(kind, [head, ...payload]);
}

/** Bytes of a direct frame's segments: the 8-byte head, then the payload, each padded to 8. */
function directSegmentBytes(payload: readonly Uint8Array[]): number {
  let bytes = DIRECT_HEAD_BYTES;
  for (const p of payload) bytes += pad8(p.byteLength);
  return bytes;
}

function onlyReleases(outbox: readonly unknown[]): boolean {
  for (const m of outbox) if (!Array.isArray(m) || m[0] !== "release") return false;
  return true;
}

function diode(rule: string): PspError {
  return new PspError("PSP_ERR_DIODE", `Diode violation by peer: ${rule}`, { offender: "peer", rule });
}

/**
 * A subject's error reply, as the caller sees it: an Error named PspRemoteError with the subject's
 * code, message and flat detail (the same shape a capnweb call's error takes). Anything else the
 * subject sends as an error is malformed.
 */
function remoteError(body: unknown): Error {
  const bad = () =>
    new PspError("PSP_ERR_MESSAGE_MALFORMED", "direct reply error must be {code, message, detail?}");
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw bad();
  const { code, message, detail, ...rest } = body as Record<string, unknown>;
  if (Object.keys(rest).length > 0) throw bad();
  if (typeof code !== "string" || code.length > MAX_REMOTE_CODE || !REMOTE_CODE.test(code)) throw bad();
  if (typeof message !== "string") throw bad();
  // Structure is checked strictly; length is not a protocol matter (the frame limit bounds it):
  // text past the bounds is cut, so an honest subject's long message never costs its link.
  const flat: Record<string, string | number | boolean> = {};
  if (detail !== undefined) {
    if (detail === null || typeof detail !== "object" || Array.isArray(detail)) throw bad();
    let kept = 0;
    for (const [k, x] of Object.entries(detail as Record<string, unknown>)) {
      // Every entry is checked for shape; the first MAX_REMOTE_DETAIL are kept.
      if (typeof x !== "string" && typeof x !== "number" && typeof x !== "boolean") throw bad();
      if (kept++ < MAX_REMOTE_DETAIL) flat[clip(k)] = typeof x === "string" ? clip(x) : x;
    }
  }
  const out = new Error(clip(message)) as Error & {
    code: string;
    detail: Record<string, string | number | boolean>;
  };
  out.name = "PspRemoteError";
  out.code = code;
  out.detail = flat;
  out.stack = "";
  return out;
}

export function toPspError(e: unknown): PspError {
  if (e instanceof PspError) return e;
  if (isPspError(e)) {
    const x = e as unknown as { code: PspError["code"]; message: string };
    return new PspError(x.code, x.message);
  }
  return new PspError("PSP_ERR_INTERNAL", "internal error", {}, { cause: e });
}

/**
 * Where a direct request's outcome goes (`PspLink.requestWith`): one object may serve many
 * requests, told apart by the caller's `tag`.
 */
export interface ReplySink {
  /** The subject answered: its payload segments, views into the received frame (8-byte aligned). */
  reply(tag: number, payload: Uint8Array[]): void;
  /** The subject refused, the caller abandoned the request, or the link closed. */
  fail(tag: number, error: unknown): void;
}

/** `request`'s sink: the promise it returns. */
class PromiseSink implements ReplySink {
  readonly #resolve: (payload: Uint8Array[]) => void;
  readonly #reject: (error: unknown) => void;

  constructor(resolve: (payload: Uint8Array[]) => void, reject: (error: unknown) => void) {
    this.#resolve = resolve;
    this.#reject = reject;
  }

  reply(_tag: number, payload: Uint8Array[]): void {
    this.#resolve(payload);
  }

  fail(_tag: number, error: unknown): void {
    this.#reject(error);
  }
}

/**
 * Calls a sink (`payload` for a reply, else `error`). What a sink throws is the caller's bug, not
 * the peer's: it is rethrown outside the link's frame handling (which would otherwise cut the
 * link as if the frame were malformed) as an uncaught exception.
 */
function deliver(sink: ReplySink, tag: number, payload: Uint8Array[] | undefined, error: unknown): void {
  try {
    if (payload !== undefined) sink.reply(tag, payload);
    else sink.fail(tag, error);
  } catch (e) {
    queueMicrotask(() => {
      throw e;
    });
  }
}

/**
 * A commander's open direct requests on one link: at most `maxCallsInFlight` (256 by default), and
 * on a fan-out's links one or two. Parallel arrays searched linearly rather than a Map: a Map
 * emptied and refilled on every request and reply re-allocates its table each time (measured at
 * ~270 bytes per reply at the hub); arrays that shrink by `pop` keep theirs. An entry is its id,
 * sink and tag: no object per request.
 */
class OpenRequests {
  #ids: number[] = [];
  #sinks: ReplySink[] = [];
  #tags: number[] = [];

  get size(): number {
    return this.#ids.length;
  }

  add(id: number, sink: ReplySink, tag: number): void {
    this.#ids.push(id);
    this.#sinks.push(sink);
    this.#tags.push(tag);
  }

  /** Where request `id` is, or -1 if it is not open. */
  indexOf(id: number): number {
    const ids = this.#ids;
    for (let k = 0; k < ids.length; k++) if (ids[k] === id) return k;
    return -1;
  }

  /**
   * Removes entry `k`, then tells its sink: `payload` for a reply, else `error` (deliver). The rest
   * keep their order (the oldest is usually first, so little moves): close fails them as sent.
   */
  settleAt(k: number, payload: Uint8Array[] | undefined, error: unknown): void {
    const ids = this.#ids;
    const sinks = this.#sinks;
    const tags = this.#tags;
    const sink = sinks[k]!;
    const tag = tags[k]!;
    for (let j = k + 1; j < ids.length; j++) {
      ids[j - 1] = ids[j]!;
      sinks[j - 1] = sinks[j]!;
      tags[j - 1] = tags[j]!;
    }
    ids.pop();
    sinks.pop();
    tags.pop();
    deliver(sink, tag, payload, error);
  }

  /** Removes every open entry and returns their sinks and tags, oldest first. */
  takeAll(): { sinks: ReplySink[]; tags: number[] } {
    const all = { sinks: this.#sinks, tags: this.#tags };
    this.#ids = [];
    this.#sinks = [];
    this.#tags = [];
    return all;
  }
}
