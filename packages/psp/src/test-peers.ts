/**
 * Test support: identities and a scripted raw peer that speaks PSP frames directly, so tests can
 * send exactly the bytes a hostile Totebox or commander would. Not exported from the package.
 */
import tls from "node:tls";
import type { PspError } from "./errors.ts";
import { encodeFrame, type Frame, FrameDecoder, FrameKind } from "./frame-codec.ts";
import type { Identity } from "./identity.ts";
import { DEFAULT_PSP_LIMITS, type PspLimits } from "./limits.ts";
import type { PspLink } from "./link.ts";
import { decodeMessages, encodeMessages } from "./message-codec.ts";
import { connectPsp } from "./tls.ts";

export interface RawPeer {
  socket: tls.TLSSocket;
  /** Sends capnweb messages as one Messages frame. */
  sendMessages(messages: unknown[]): void;
  sendFrameParts(parts: Uint8Array[]): void;
  sendRaw(bytes: Uint8Array): void;
  /** Resolves with the next frame: its kind, its decoded messages (Messages frames), its segments. */
  nextFrame(): Promise<{ kind: number; messages: unknown[]; segments: readonly Uint8Array[] }>;
  /** Resolves when the other side closes the connection. */
  closed: Promise<void>;
}

function wrap(socket: tls.TLSSocket): RawPeer {
  const decoder = new FrameDecoder(DEFAULT_PSP_LIMITS);
  const queue: Frame[] = [];
  let waiter: ((f: Frame) => void) | undefined;
  socket.on("data", (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) {
      if (waiter) {
        const w = waiter;
        waiter = undefined;
        w(f);
      } else queue.push(f);
    }
  });
  const closed = new Promise<void>((resolve) => {
    socket.on("close", () => resolve());
    socket.on("error", () => resolve());
  });
  return {
    socket,
    sendMessages(messages) {
      for (const p of encodeFrame(FrameKind.Messages, encodeMessages(messages, DEFAULT_PSP_LIMITS)))
        socket.write(p);
    },
    sendFrameParts(parts) {
      for (const p of parts) socket.write(p);
    },
    sendRaw(bytes) {
      socket.write(bytes);
    },
    nextFrame() {
      const toResult = (f: Frame) => ({
        kind: f.kind,
        messages: f.kind === FrameKind.Messages ? decodeMessages(f.segments, DEFAULT_PSP_LIMITS) : [],
        segments: f.segments,
      });
      const f = queue.shift();
      if (f) return Promise.resolve(toResult(f));
      return new Promise((resolve) => {
        waiter = (fr) => resolve(toResult(fr));
      });
    },
    closed,
  };
}

/** Connects to a PSP server as a raw peer (TLS done properly, then anything goes). */
export function rawConnect(identity: Identity, port: number): Promise<RawPeer> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect(
      {
        host: "127.0.0.1",
        port,
        key: identity.keyPem,
        cert: identity.certPem,
        rejectUnauthorized: false,
        minVersion: "TLSv1.3",
      },
      () => {
        socket.setNoDelay(true);
        resolve(wrap(socket));
      },
    );
    socket.once("error", reject);
  });
}

/** A raw TLS server that hands each accepted socket to `onPeer` as a RawPeer. */
export async function rawListen(
  identity: Identity,
  onPeer: (peer: RawPeer) => void,
): Promise<{ port: number; close(): Promise<void> }> {
  const server = tls.createServer(
    {
      key: identity.keyPem,
      cert: identity.certPem,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
    },
    (socket) => {
      socket.setNoDelay(true);
      onPeer(wrap(socket));
    },
  );
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const sockets = new Set<tls.TLSSocket>();
  server.on("secureConnection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  return {
    port,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** Resolves with the error a link closed with (undefined for a clean close), now or when it closes. */
export function closedWith(link: PspLink): Promise<PspError | undefined> {
  return new Promise((resolve) => {
    if (link.closed) resolve(link.closeError);
    else link.once("close", resolve);
  });
}

/**
 * A scripted hostile subject on loopback (TLS done properly, then `script` plays anything) and a
 * real commander link to it: the link under test, the Diode violations it reported, and a closer.
 */
export async function hostileSubjectLink(options: {
  subject: Identity;
  commander: Identity;
  script: (peer: RawPeer) => void | Promise<void>;
  limits?: Partial<PspLimits>;
}): Promise<{ link: PspLink; violations: PspError[]; close(): Promise<void> }> {
  const server = await rawListen(options.subject, (peer) => void options.script(peer));
  const link = await connectPsp({
    identity: options.commander,
    role: "commander",
    host: "127.0.0.1",
    port: server.port,
    expect: options.subject.fingerprint,
    ...(options.limits ? { limits: options.limits } : {}),
  });
  const violations: PspError[] = [];
  link.on("violation", (e) => violations.push(e));
  return { link, violations, close: () => server.close() };
}
