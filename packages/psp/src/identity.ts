import "reflect-metadata";
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  webcrypto,
  X509Certificate,
} from "node:crypto";
import { chmod, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { keyIdOf } from "./capability.ts";
import { ed25519PublicKeyFromRaw, rawPublicKey } from "./cose.ts";
import { PspError } from "./errors.ts";

// @peculiar/x509 defaults to the global WebCrypto; Node 20 exposes it as node:crypto's webcrypto.
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

/**
 * A machine's identity: one Ed25519 key and a self-signed certificate over it. The same key signs
 * TLS handshakes and, depending on the role, capabilities (the aggregator), receipts and audit
 * checkpoints (a Totebox) or grants (an operator's console).
 *
 * Peers are pinned by `fingerprint` (SHA-256 of the certificate's DER bytes), the "device ID".
 * Signatures name their signer by `keyId` (SHA-256 of the raw 32-byte public key).
 */
export interface Identity {
  readonly name: string;
  /** Made once: signing with a KeyObject is ~12× faster than with a PEM string. */
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  readonly certPem: string;
  /** PKCS#8 PEM. Needed to build the TLS context; never logged. */
  readonly keyPem: string;
  /** Lowercase hex SHA-256 of the certificate DER: what peers pin. */
  readonly fingerprint: string;
  /** Lowercase hex SHA-256 of the raw Ed25519 public key: what signatures name. */
  readonly keyId: string;
}

export const IDENTITY_KEY_FILE = "identity.key";
export const IDENTITY_CERT_FILE = "identity.crt";

export interface CreateIdentityOptions {
  name: string;
  /** Certificate validity in days. Default 10 years: pins, not expiry, carry the trust. */
  validDays?: number;
  now?: Date;
}

export async function createIdentity(options: CreateIdentityOptions): Promise<Identity> {
  const alg = { name: "Ed25519" };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const now = options.now ?? new Date();
  const notAfter = new Date(now.getTime() + (options.validDays ?? 3650) * 86_400_000);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=${escapeDnValue(options.name)}`,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter,
    signingAlgorithm: alg,
    keys,
  });
  const keyDer = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  const keyPem = toPem(keyDer, "PRIVATE KEY");
  return identityFromPem(options.name, keyPem, cert.toString("pem"));
}

/** Builds an Identity from PEM text, checking that the key is Ed25519 and matches the certificate. */
export function identityFromPem(name: string, keyPem: string, certPem: string): Identity {
  let privateKey: KeyObject;
  let cert: X509Certificate;
  try {
    privateKey = createPrivateKey(keyPem);
    cert = new X509Certificate(certPem);
  } catch (cause) {
    throw new PspError("PSP_ERR_IDENTITY", "identity key or certificate cannot be parsed", {}, { cause });
  }
  if (privateKey.asymmetricKeyType !== "ed25519") {
    throw new PspError("PSP_ERR_IDENTITY", "identity key must be Ed25519", {
      type: String(privateKey.asymmetricKeyType),
    });
  }
  const publicKey = createPublicKey(privateKey);
  if (!cert.publicKey.equals(publicKey)) {
    throw new PspError("PSP_ERR_IDENTITY", "identity certificate does not match its key");
  }
  return {
    name,
    privateKey,
    publicKey,
    certPem,
    keyPem,
    fingerprint: certFingerprint(cert),
    keyId: keyIdOfPublicKey(publicKey),
  };
}

/**
 * Writes the identity with owner-only permissions: the folder 0700, both files 0600.
 * Refuses to overwrite an existing identity.
 */
export async function saveIdentity(dir: string, identity: Identity): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  await writeFile(join(dir, IDENTITY_KEY_FILE), identity.keyPem, { mode: 0o600, flag: "wx" });
  await writeFile(join(dir, IDENTITY_CERT_FILE), identity.certPem, { mode: 0o600, flag: "wx" });
}

/** Loads an identity, refusing a private key that anyone but the owner can read. */
export async function loadIdentity(dir: string, name = "psp"): Promise<Identity> {
  const keyPath = join(dir, IDENTITY_KEY_FILE);
  let mode: number;
  try {
    mode = (await stat(keyPath)).mode;
  } catch (cause) {
    throw new PspError(
      "PSP_ERR_IDENTITY",
      "no identity key in folder",
      { file: IDENTITY_KEY_FILE },
      { cause },
    );
  }
  if ((mode & 0o077) !== 0) {
    throw new PspError("PSP_ERR_IDENTITY", "identity key is readable by others; expected mode 0600", {
      mode: (mode & 0o777).toString(8),
    });
  }
  const [keyPem, certPem] = await Promise.all([
    readFile(keyPath, "utf8"),
    readFile(join(dir, IDENTITY_CERT_FILE), "utf8"),
  ]);
  return identityFromPem(name, keyPem, certPem);
}

export async function loadOrCreateIdentity(dir: string, name: string): Promise<Identity> {
  try {
    return await loadIdentity(dir, name);
  } catch (e) {
    if (e instanceof PspError && e.message === "no identity key in folder") {
      const identity = await createIdentity({ name });
      await saveIdentity(dir, identity);
      return identity;
    }
    throw e;
  }
}

/** Lowercase hex SHA-256 of a certificate's DER bytes. */
export function certFingerprint(cert: X509Certificate | string): string {
  const c = typeof cert === "string" ? new X509Certificate(cert) : cert;
  return createHash("sha256").update(c.raw).digest("hex");
}

/** Node writes fingerprints as "AB:CD:..."; PSP uses plain lowercase hex. */
export function normalizeFingerprint(fp: string): string {
  const hex = fp.replace(/[:\s-]/g, "").toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new PspError("PSP_ERR_IDENTITY", "fingerprint must be 32 bytes of hex");
  }
  return hex;
}

// Key bytes and key ids have one implementation, in cose.ts / capability.ts (cached per
// KeyObject, JWK import). These wrappers keep identity's own error code for non-Ed25519 input.

function requireEd25519(key: KeyObject): void {
  if (key.asymmetricKeyType !== "ed25519")
    throw new PspError("PSP_ERR_IDENTITY", "not an Ed25519 public key");
}

/** The 32 raw bytes of an Ed25519 public key. */
export function rawEd25519PublicKey(publicKey: KeyObject): Buffer {
  requireEd25519(publicKey);
  return Buffer.from(rawPublicKey(publicKey));
}

export function publicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new PspError("PSP_ERR_IDENTITY", "Ed25519 public keys are 32 bytes");
  return ed25519PublicKeyFromRaw(raw);
}

export function keyIdOfPublicKey(publicKey: KeyObject): string {
  requireEd25519(publicKey);
  return keyIdOf(publicKey);
}

/**
 * A fingerprint grouped for reading aloud or comparing by eye: 16 groups of 4 upper-case hex
 * digits, e.g. "3F2A-91C0-…".
 */
export function formatDeviceId(fingerprint: string): string {
  const hex = normalizeFingerprint(fingerprint).toUpperCase();
  return hex.match(/.{4}/g)!.join("-");
}

function toPem(der: Buffer, label: string): string {
  const b64 = der
    .toString("base64")
    .match(/.{1,64}/g)!
    .join("\n");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

function randomSerial(): string {
  // Positive 16-byte serial (top bit clear), as X.509 requires.
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = bytes[0]! & 0x7f;
  return Buffer.from(bytes).toString("hex");
}

function escapeDnValue(v: string): string {
  return v.replace(/[,+"\\<>;=]/g, (c) => `\\${c}`);
}
