import { createHash, type KeyObject, type X509Certificate } from "node:crypto";
import type { AddressInfo } from "node:net";
import tls from "node:tls";
import type { PspRole } from "./diode.ts";
import { PspError } from "./errors.ts";
import { type Identity, keyIdOfPublicKey } from "./identity.ts";
import { type PspLimits, resolveLimits } from "./limits.ts";
import { type PeerInfo, PspLink } from "./link.ts";
import { type Scheduler, systemScheduler } from "./scheduler.ts";

/**
 * Mutual TLS 1.3 with both ends pinned by certificate fingerprint.
 *
 * We do not use a CA: every peer is self-signed and known in advance (paired). Node's own chain
 * check is off (`rejectUnauthorized: false`) and replaced by an explicit check on the
 * fingerprint, run on `secureConnection`/`secureConnect` before any application byte is read
 * (no 'data' listener exists until the check passes). Doing it ourselves lets the refusing side
 * say *why* (no certificate, wrong pin, unknown peer) instead of a bare reset.
 */

/** Decides whether an authenticated TLS peer may have a link, and what to call it. */
export type PeerAuthorizer = (peer: {
  fingerprint: string;
  keyId: string;
}) =>
  | { ok: true; label: string }
  | { ok: false; code: "PSP_ERR_PEER_PIN" | "PSP_ERR_PEER_UNKNOWN"; reason: string };

/** Where refusals are reported. Never receives key or token material. */
export type RefusalLog = (event: {
  code: string;
  reason: string;
  remote: string;
  fingerprint?: string;
}) => void;

// One client TLS context per identity: building one costs ~1 ms, so never per connection.
const contexts = new WeakMap<Identity, tls.SecureContext>();
function secureContextFor(identity: Identity): tls.SecureContext {
  let ctx = contexts.get(identity);
  if (!ctx) {
    ctx = tls.createSecureContext({
      key: identity.keyPem,
      cert: identity.certPem,
      minVersion: "TLSv1.3",
      maxVersion: "TLSv1.3",
    });
    contexts.set(identity, ctx);
  }
  return ctx;
}

function peerOf(
  socket: tls.TLSSocket,
): { fingerprint: string; keyId: string; publicKey: KeyObject | undefined } | undefined {
  let cert: X509Certificate | undefined;
  try {
    cert = socket.getPeerX509Certificate();
  } catch {
    return undefined;
  }
  if (!cert) return undefined;
  let keyId: string;
  let publicKey: KeyObject | undefined;
  try {
    keyId = keyIdOfPublicKey(cert.publicKey);
    publicKey = cert.publicKey;
  } catch {
    // Not an Ed25519 certificate: give it an id no authorizer will know.
    keyId = "";
  }
  return { fingerprint: createHash("sha256").update(cert.raw).digest("hex"), keyId, publicKey };
}

export interface PspServerOptions {
  identity: Identity;
  role: PspRole;
  host?: string;
  port?: number;
  authorize: PeerAuthorizer;
  onLink: (link: PspLink) => void;
  onRefused?: RefusalLog;
  limits?: Partial<PspLimits>;
  scheduler?: Scheduler;
}

export interface PspServer {
  readonly address: { host: string; port: number };
  readonly links: ReadonlySet<PspLink>;
  /** Closes every live link of a peer at once (unpair, revoke). Returns how many closed. */
  closePeer(fingerprintOrKeyId: string, error?: PspError): number;
  close(): Promise<void>;
}

export function listenPsp(options: PspServerOptions): Promise<PspServer> {
  const limits = resolveLimits(options.limits);
  const scheduler = options.scheduler ?? systemScheduler;
  const links = new Set<PspLink>();
  const refuse = (socket: tls.TLSSocket, code: string, reason: string, fingerprint?: string) => {
    options.onRefused?.({
      code,
      reason,
      remote: `${socket.remoteAddress}:${socket.remotePort}`,
      fingerprint,
    });
    socket.destroy();
  };
  // The server builds its one context from key and cert itself: handing it a prebuilt
  // `secureContext` makes OpenSSL fail to choose an Ed25519 signature algorithm (measured, Node 20).
  const server = tls.createServer({
    key: options.identity.keyPem,
    cert: options.identity.certPem,
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: "TLSv1.3",
    maxVersion: "TLSv1.3",
    handshakeTimeout: limits.handshakeTimeoutMs,
  });
  server.on("secureConnection", (socket: tls.TLSSocket) => {
    socket.setNoDelay(true);
    const peer = peerOf(socket);
    if (!peer) return refuse(socket, "PSP_ERR_PEER_NO_CERT", "peer presented no certificate");
    const verdict = options.authorize({ fingerprint: peer.fingerprint, keyId: peer.keyId });
    if (!verdict.ok) return refuse(socket, verdict.code, verdict.reason, peer.fingerprint);
    const info: PeerInfo = { ...peer, label: verdict.label };
    const link = new PspLink({ role: options.role, socket, peer: info, limits, scheduler });
    links.add(link);
    link.once("close", () => links.delete(link));
    options.onLink(link);
  });
  server.on("tlsClientError", (err: Error & { code?: string }, socket: tls.TLSSocket) => {
    const timeout = err.code === "ERR_TLS_HANDSHAKE_TIMEOUT";
    options.onRefused?.({
      code: timeout ? "PSP_ERR_TLS_TIMEOUT" : "PSP_ERR_TLS_HANDSHAKE",
      reason: timeout ? "handshake did not finish in time" : `handshake failed: ${err.code ?? err.message}`,
      remote: `${socket?.remoteAddress}:${socket?.remotePort}`,
    });
    // Node reports a handshake timeout but leaves the socket open: close it ourselves.
    socket?.destroy();
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      const a = server.address() as AddressInfo;
      resolve({
        address: { host: a.address, port: a.port },
        links,
        closePeer(id, error) {
          let n = 0;
          for (const l of [...links]) {
            if (l.peer.fingerprint === id || l.peer.keyId === id) {
              l.close(error ?? new PspError("PSP_ERR_LINK_CLOSED", "peer unpaired or revoked"));
              n++;
            }
          }
          return n;
        },
        close() {
          for (const l of [...links]) l.close();
          return new Promise<void>((res) => server.close(() => res()));
        },
      });
    });
  });
}

export interface PspConnectOptions {
  identity: Identity;
  role: PspRole;
  host: string;
  port: number;
  /** The fingerprint the server must present, or a full authorizer. */
  expect: string | PeerAuthorizer;
  limits?: Partial<PspLimits>;
  scheduler?: Scheduler;
  onRefused?: RefusalLog;
}

export function connectPsp(options: PspConnectOptions): Promise<PspLink> {
  const limits = resolveLimits(options.limits);
  const scheduler = options.scheduler ?? systemScheduler;
  const authorize: PeerAuthorizer =
    typeof options.expect === "string" ? pinOnly(options.expect) : options.expect;
  return new Promise<PspLink>((resolve, reject) => {
    let settled = false;
    const fail = (err: PspError) => {
      if (settled) return;
      settled = true;
      timer.cancel();
      options.onRefused?.({ code: err.code, reason: err.message, remote: `${options.host}:${options.port}` });
      socket.destroy();
      reject(err);
    };
    const socket = tls.connect({
      host: options.host,
      port: options.port,
      secureContext: secureContextFor(options.identity),
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
      maxVersion: "TLSv1.3",
    });
    socket.setNoDelay(true);
    const timer = scheduler.after(limits.handshakeTimeoutMs, () =>
      fail(
        new PspError("PSP_ERR_TLS_TIMEOUT", "handshake did not finish in time", {
          ms: limits.handshakeTimeoutMs,
        }),
      ),
    );
    socket.once("secureConnect", () => {
      const peer = peerOf(socket);
      if (!peer) return fail(new PspError("PSP_ERR_PEER_NO_CERT", "server presented no certificate"));
      const verdict = authorize({ fingerprint: peer.fingerprint, keyId: peer.keyId });
      if (!verdict.ok) return fail(new PspError(verdict.code, verdict.reason));
      settled = true;
      timer.cancel();
      socket.removeAllListeners("error");
      resolve(
        new PspLink({
          role: options.role,
          socket,
          peer: { ...peer, label: verdict.label },
          limits,
          scheduler,
        }),
      );
    });
    socket.once("error", (cause) =>
      fail(
        new PspError("PSP_ERR_TLS_HANDSHAKE", "TLS connection failed", { reason: errCode(cause) }, { cause }),
      ),
    );
    socket.once("close", () =>
      fail(new PspError("PSP_ERR_TLS_HANDSHAKE", "connection closed during handshake")),
    );
  });
}

/** An authorizer that accepts exactly one fingerprint. */
export function pinOnly(fingerprint: string, label = "peer"): PeerAuthorizer {
  const want = fingerprint.toLowerCase();
  return (peer) =>
    peer.fingerprint === want
      ? { ok: true, label }
      : { ok: false, code: "PSP_ERR_PEER_PIN", reason: "certificate does not match the pinned fingerprint" };
}

function errCode(e: unknown): string {
  const c = (e as { code?: unknown }).code;
  return typeof c === "string" ? c : "unknown";
}
