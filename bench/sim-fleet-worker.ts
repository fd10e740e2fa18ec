/**
 * One worker process of the simulated fleet (bench/sim-fleet.ts forks several), and the in-process
 * pieces other benches reuse.
 *
 * A simulated Totebox is a real PSP subject: its own Ed25519 identity and certificate, its own
 * `listenPsp` server pinned to the aggregator, the real capability chain check (operator → grant →
 * aggregator → batch-signed call capability, replay store included), a real Arrow answer and a
 * real signed receipt. Only the archive is simulated: the one `position` row is computed from
 * (seed, index) instead of read from SQLite, so the bench measures the protocol, not SQL.
 *
 * The same worker also serves, per simulated Totebox and on the same identity, the two baselines
 * the fan-out is compared with, so all three contenders are measured against the same processes:
 * - FLOOR: mutual TLS, length-prefixed frames, no protocol work (answers a fixed byte string; a
 *   paced request first does the cryptography a Totebox of ours must do, floor-pace.ts);
 * - USUAL WAY: HTTPS + JSON with a JWT per request (jose, EdDSA), verified with a key imported once.
 *
 * Addresses: Totebox i listens on its own loopback address (127.70.x.y) on fixed ports below the
 * ephemeral range. 10,000 Toteboxes × 3 listeners on port 0 would take 30,000 ephemeral ports, more
 * than this machine's range holds, and starve every other process's outgoing connections.
 */
import { createHash, type KeyObject, webcrypto } from "node:crypto";
import { mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { pathToFileURL } from "node:url";
import {
  BatchRootCache,
  type CanonicalValue,
  type Clock,
  type ColumnSpec,
  createIdentity,
  DIRECT_READ_METHOD,
  type DirectRequestHandler,
  decodeDirectReadRequest,
  encodeDirectReadReply,
  encodeResult,
  type Identity,
  identityFromPem,
  keyIdOfRaw,
  listenPsp,
  MemoryReplayStore,
  PspError,
  type PspLink,
  type PspServer,
  pinOnly,
  publicKeyFromRaw,
  rawEd25519PublicKey,
  requestHash,
  serveSubject,
  signReceipt,
  systemClock,
  type TrustedOperators,
  type VerifiedGrant,
  verifyCallChain,
  verifyGrant,
} from "@os-orchestration/psp";
import type { ReadAnswer, ToteboxHello } from "@os-orchestration/totebox";
import { ToteboxError } from "@os-orchestration/totebox";
import { RpcTarget } from "capnweb";
import { jwtVerify } from "jose";
import { BenchError } from "./bench-error.ts";
import { pacedDepth, RequiredToteboxWork } from "./floor-pace.ts";

// ---------------------------------------------------------------------------------------------
// Errors (bench-error.ts)

export { BenchError, type BenchErrorCode } from "./bench-error.ts";

// ---------------------------------------------------------------------------------------------
// The simulated estate: ids, tags, addresses and the deterministic position row

export const REGIONS = ["north", "south", "east", "west"] as const;
export const KINDS = ["property", "company", "project"] as const;
const CURRENCIES = ["EUR", "USD", "GBP", "CHF"] as const;

/** Fixed ports on each Totebox's own loopback address (below the ephemeral range 32768+). */
export const SIM_PORTS = Object.freeze({ psp: 24_001, floor: 24_002, https: 24_003 });
/** Most simulated Toteboxes one fleet addresses (a /16 of loopback addresses). */
export const MAX_SIM_TOTEBOXES = 65_536;

/** The same columns, in the same order, as the default policy's `position` view. */
export const POSITION_COLUMNS: readonly ColumnSpec[] = Object.freeze([
  { name: "as_of", type: "date" },
  { name: "currency", type: "string" },
  { name: "cash", type: "integer" },
  { name: "assets", type: "integer" },
  { name: "liabilities", type: "integer" },
  { name: "equity", type: "integer" },
  { name: "debt", type: "integer" },
  { name: "net_value", type: "integer" },
]);

/** Where net_value, the column a portfolio sums, is in POSITION_COLUMNS. */
export const NET_VALUE_COLUMN = POSITION_COLUMNS.findIndex((c) => c.name === "net_value");

export interface SimPosition {
  readonly as_of: string;
  readonly currency: string;
  /** Minor units (cents), like the real view. */
  readonly cash: number;
  readonly assets: number;
  readonly liabilities: number;
  readonly equity: number;
  readonly debt: number;
  readonly net_value: number;
}

function checkIndex(seed: number, index: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new BenchError("BENCH_ERR_ARGS", "seed must be an integer in 0..2^32-1");
  }
  if (!Number.isSafeInteger(index) || index < 0 || index >= MAX_SIM_TOTEBOXES) {
    throw new BenchError("BENCH_ERR_ARGS", `Totebox index must be in 0..${MAX_SIM_TOTEBOXES - 1}`);
  }
}

function digestOf(seed: number, index: number): Buffer {
  return createHash("sha256").update(`os-orch-bench:${seed}:${index}`).digest();
}

export function simToteboxId(seed: number, index: number): string {
  checkIndex(seed, index);
  return `sim-${seed}-${String(index).padStart(5, "0")}`;
}

/** region cycles through the four values (so every region holds N/4); kind is pseudo-random. */
export function simTags(seed: number, index: number): { region: string; kind: string } {
  checkIndex(seed, index);
  return { region: REGIONS[index % REGIONS.length]!, kind: KINDS[digestOf(seed, index)[0]! % KINDS.length]! };
}

/** Totebox i's own loopback address: 127.70.(i >> 8).(i & 255). */
export function simHost(index: number, base = 70): string {
  checkIndex(0, index);
  return `127.${base}.${index >> 8}.${index & 255}`;
}

/**
 * The one `position` row of a simulated Totebox, deterministic in (seed, index). Balanced like the
 * real view: net_value = assets − liabilities = equity; debt ≤ liabilities; cash ≤ assets. All
 * values stay far below 2^53.
 */
export function simPosition(seed: number, index: number, asOf: string): SimPosition {
  const d = digestOf(seed, index);
  const assets = 10_000_000 + (d.readUInt32BE(4) % 9_000_000_000);
  const liabilities = Math.floor((assets * (d.readUInt32BE(8) % 71)) / 100);
  const debt = Math.floor((liabilities * (d.readUInt32BE(12) % 81)) / 100);
  const cash = Math.floor((assets * (1 + (d.readUInt32BE(16) % 20))) / 100);
  const net = assets - liabilities;
  return {
    as_of: asOf,
    currency: CURRENCIES[d[20]! % CURRENCIES.length]!,
    cash,
    assets,
    liabilities,
    equity: net,
    debt,
    net_value: net,
  };
}

/** Expected rollup (sum of net_value per region) over Toteboxes 0..count-1. */
export function simExpectedRollup(seed: number, count: number, asOf: string): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (let i = 0; i < count; i++) {
    const region = simTags(seed, i).region;
    out.set(region, (out.get(region) ?? 0n) + BigInt(simPosition(seed, i, asOf).net_value));
  }
  return out;
}

const DATE = /^(\d{4})-(\d{2})-(\d{2})$/;

function isIsoDate(s: string): boolean {
  const m = DATE.exec(s);
  if (!m) return false;
  const t = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  return new Date(t).toISOString().slice(0, 10) === s;
}

// ---------------------------------------------------------------------------------------------
// Identities, cached on disk: generating one costs ~6-12 ms of CPU (key + self-signed certificate)

const ID_CACHE_ROOT = join(tmpdir(), "os-orch-bench-ids");
const MAX_ID_FILE_BYTES = 16 * 1024;
const ID_NAME = /^[a-z0-9][a-z0-9-]{0,63}$/;

export function benchIdentityDir(seed: number): string {
  checkIndex(seed, 0);
  return join(ID_CACHE_ROOT, `seed-${seed}`);
}

/**
 * Loads identity `name` of `seed` from the cache, or creates and caches it. The cache is a file in
 * the shared temp folder: anything in it that does not parse into a valid identity (wrong size,
 * shape, key/certificate mismatch) is replaced, never trusted. Written 0600 in a 0700 folder,
 * through a rename so a concurrent reader never sees half a file.
 */
export async function benchIdentity(name: string, seed: number): Promise<Identity> {
  if (!ID_NAME.test(name)) throw new BenchError("BENCH_ERR_ARGS", "identity name must be [a-z0-9-]");
  const dir = benchIdentityDir(seed);
  const file = join(dir, `${name}.json`);
  try {
    const st = await stat(file);
    if (st.isFile() && st.size <= MAX_ID_FILE_BYTES && (st.mode & 0o077) === 0) {
      const parsed: unknown = JSON.parse(await readFile(file, "utf8"));
      if (
        parsed !== null &&
        typeof parsed === "object" &&
        typeof (parsed as { keyPem?: unknown }).keyPem === "string" &&
        typeof (parsed as { certPem?: unknown }).certPem === "string"
      ) {
        const p = parsed as { keyPem: string; certPem: string };
        return identityFromPem(name, p.keyPem, p.certPem);
      }
    }
  } catch {
    // Missing or unusable: fall through and make a fresh one.
  }
  const id = await createIdentity({ name });
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    await writeFile(tmp, JSON.stringify({ keyPem: id.keyPem, certPem: id.certPem }), { mode: 0o600 });
    await rename(tmp, file);
  } catch (cause) {
    throw new BenchError("BENCH_ERR_IDENTITY", "cannot write the bench identity cache", { cause });
  }
  return id;
}

// ---------------------------------------------------------------------------------------------
// Trust: what every simulated Totebox of a worker was "paired" with. Keys are imported once.

export interface SimTrustInput {
  /** Certificate fingerprint the aggregator presents (the TLS pin). */
  readonly aggregatorFingerprint: string;
  /** Raw 32-byte Ed25519 key of the aggregator (signs call capabilities and, usual way, JWTs). */
  readonly aggregatorPublicKeyRaw: Uint8Array;
  /** Raw 32-byte Ed25519 key of the trusted operator (signs grants). */
  readonly operatorPublicKeyRaw: Uint8Array;
  /** More trusted operators (each paired with every Totebox), for multi-operator runs. */
  readonly moreOperatorPublicKeysRaw?: readonly Uint8Array[];
}

export interface SimTrust {
  readonly aggregatorFingerprint: string;
  readonly aggregatorKeyHex: string;
  readonly aggregatorKeyId: string;
  readonly trustedOperators: TrustedOperators;
  /** The aggregator's key as WebCrypto wants it for jose (imported once per worker). */
  readonly jwtKey: webcrypto.CryptoKey;
}

export async function makeSimTrust(input: SimTrustInput): Promise<SimTrust> {
  const fp = input.aggregatorFingerprint.toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(fp)) throw new BenchError("BENCH_ERR_ARGS", "aggregator fingerprint is not hex");
  if (!(input.aggregatorPublicKeyRaw instanceof Uint8Array) || input.aggregatorPublicKeyRaw.length !== 32) {
    throw new BenchError("BENCH_ERR_ARGS", "aggregator key must be 32 raw bytes");
  }
  // Operator keys imported once per worker, looked up by key id on every grant.
  const operators = new Map<string, { publicKey: KeyObject }>();
  for (const raw of [input.operatorPublicKeyRaw, ...(input.moreOperatorPublicKeysRaw ?? [])]) {
    operators.set(keyIdOfRaw(raw), { publicKey: publicKeyFromRaw(raw) });
  }
  const jwtKey = await webcrypto.subtle.importKey(
    "raw",
    new Uint8Array(input.aggregatorPublicKeyRaw),
    { name: "Ed25519" },
    false,
    ["verify"],
  );
  return {
    aggregatorFingerprint: fp,
    aggregatorKeyHex: Buffer.from(input.aggregatorPublicKeyRaw).toString("hex"),
    aggregatorKeyId: keyIdOfRaw(input.aggregatorPublicKeyRaw),
    trustedOperators: (keyId) => operators.get(keyId),
    jwtKey,
  };
}

// ---------------------------------------------------------------------------------------------
// The simulated Totebox's PSP API (same shape as packages/totebox/src/subject.ts)

const VIEW_DESCRIPTION =
  "Cash, total assets, liabilities, equity, debt and net value as of a date (minor units).";
const WATERMARK_PREFIX = "sim";

interface ReadInput {
  readonly capability: unknown;
  readonly view: unknown;
  readonly params: unknown;
  readonly row: unknown;
}

export interface SimToteboxStats {
  /** PSP links accepted, and those that ended with an error (idle timeout, limit, reset). */
  linksOpened: number;
  linksFailed: number;
  authorized: number;
  reads: number;
  refused: number;
  httpsReads: number;
  httpsRefused: number;
  floorFrames: number;
  /** Floor requests answered after the work a Totebox of ours must do (floor-pace.ts). */
  floorPaced: number;
}

/** State and checks of one simulated Totebox; the RpcTargets below hold it in private fields. */
/** Counters all at zero: a Totebox's start, and the sum a worker or the fleet adds up into. */
export function emptySimStats(): SimToteboxStats {
  return {
    linksOpened: 0,
    linksFailed: 0,
    authorized: 0,
    reads: 0,
    refused: 0,
    httpsReads: 0,
    httpsRefused: 0,
    floorFrames: 0,
    floorPaced: 0,
  };
}

export class SimTotebox {
  readonly seed: number;
  readonly index: number;
  readonly id: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly identity: Identity;
  readonly trust: SimTrust;
  readonly clock: Clock;
  readonly stats: SimToteboxStats = emptySimStats();
  readonly #replay: MemoryReplayStore;
  readonly #batchRoots = new BatchRootCache();
  readonly #jwtReplay: MemoryReplayStore;
  readonly #watermark: string;

  constructor(args: { seed: number; index: number; identity: Identity; trust: SimTrust; clock?: Clock }) {
    this.seed = args.seed;
    this.index = args.index;
    this.id = simToteboxId(args.seed, args.index);
    this.tags = Object.freeze(simTags(args.seed, args.index));
    this.identity = args.identity;
    this.trust = args.trust;
    this.clock = args.clock ?? systemClock;
    this.#replay = new MemoryReplayStore(this.clock);
    this.#jwtReplay = new MemoryReplayStore(this.clock);
    this.#watermark = `${WATERMARK_PREFIX}:${args.seed}:${args.index}`;
  }

  hello(): ToteboxHello {
    return {
      protocol: "psp/1",
      directMethods: [DIRECT_READ_METHOD], // as the real Totebox: it serves direct reads
      id: this.id,
      name: `Simulated ${this.id}`,
      kind: this.tags.kind ?? "property",
      currency: simPosition(this.seed, this.index, "1970-01-01").currency,
      tags: { ...this.tags },
      deviceId: this.identity.fingerprint,
      keyId: this.identity.keyId,
      state: "active",
      policyDigest: "sim",
      views: [
        {
          name: "position",
          description: VIEW_DESCRIPTION,
          params: [{ name: "as_of", type: "date", required: false }],
          columns: POSITION_COLUMNS.map((c) => ({ name: c.name, type: c.type })),
          rowKey: null,
        },
      ],
      commands: [],
    };
  }

  /** The grant must verify, be addressed to this link's aggregator, and name this link's key. */
  authorize(grant: unknown, link: PspLink, linkKeyHex: string): VerifiedGrant {
    try {
      if (!(grant instanceof Uint8Array)) throw new ToteboxError("TOTEBOX_ERR_PARAM", "grant must be bytes");
      const verified = verifyGrant({
        grant,
        trustedOperators: this.trust.trustedOperators,
        aggregatorId: link.peer.fingerprint,
        clock: this.clock,
      });
      if (Buffer.from(verified.claims.aggregatorKey).toString("hex") !== linkKeyHex) {
        throw new ToteboxError("TOTEBOX_ERR_PARAM", "grant names another aggregator key than this link's");
      }
      this.stats.authorized++;
      return verified;
    } catch (e) {
      this.stats.refused++;
      throw e;
    }
  }

  /** Same order as the real Totebox: capability chain → policy (one view) → params → answer. */
  read(grant: VerifiedGrant, req: ReadInput): ReadAnswer {
    try {
      if (!(req.capability instanceof Uint8Array))
        throw new ToteboxError("TOTEBOX_ERR_PARAM", "capability must be bytes");
      if (typeof req.view !== "string" || req.view.length > 128)
        throw new ToteboxError("TOTEBOX_ERR_VIEW_UNKNOWN", "view name must be a short string");
      if (req.row !== undefined && req.row !== null)
        throw new ToteboxError("TOTEBOX_ERR_PARAM", "this view has no row key", { param: "row" });
      const call = verifyCallChain({
        grant,
        capability: req.capability,
        trustedOperators: this.trust.trustedOperators,
        aggregatorId: grant.claims.aud,
        totebox: { id: this.id, tags: this.tags },
        request: { view: req.view, action: "read" },
        clock: this.clock,
        replayStore: this.#replay,
        // Its own, as a Totebox on its own machine would have: the fleet's Toteboxes share nothing.
        batchRoots: this.#batchRoots,
      });
      if (req.view !== "position") throw new ToteboxError("TOTEBOX_ERR_VIEW_UNKNOWN", "no such view");
      const params = this.#params(req.params);
      const row = simPosition(this.seed, this.index, params.asOf);
      const arrow = encodeResult(POSITION_COLUMNS, [
        POSITION_COLUMNS.map((c) => row[c.name as keyof SimPosition]),
      ]);
      const receipt = signReceipt({
        capabilityId: call.capability.cti,
        view: "position",
        requestHash: requestHash({ view: "position", params: params.raw }),
        rowCount: 1,
        suppressedGroups: 0,
        watermark: this.#watermark,
        arrowBytes: arrow,
        subjectId: this.id,
        clock: this.clock,
        signer: this.identity.privateKey,
      });
      this.stats.reads++;
      return {
        totebox: this.id,
        view: "position",
        arrow,
        receipt,
        rowCount: 1,
        suppressedGroups: 0,
        watermark: this.#watermark,
      };
    } catch (e) {
      this.stats.refused++;
      throw e;
    }
  }

  /** The usual way's check: a JWT per request, with claims equivalent to a call capability. */
  async readJwt(
    token: string,
    body: unknown,
  ): Promise<{ totebox: string; view: string; rows: SimPosition[] }> {
    try {
      const { payload } = await jwtVerify(token, this.trust.jwtKey, {
        algorithms: ["EdDSA"],
        audience: this.id,
        issuer: this.trust.aggregatorKeyId,
        requiredClaims: ["exp", "nbf", "iat", "jti", "sub"],
        clockTolerance: 60,
        maxTokenAge: "120s",
        currentDate: new Date(this.clock.now()),
      });
      if (payload.view !== "position" || payload.action !== "read" || typeof payload.tenant !== "string") {
        throw new ToteboxError("TOTEBOX_ERR_PARAM", "token does not name this read");
      }
      const jti = typeof payload.jti === "string" ? Buffer.from(payload.jti, "utf8") : Buffer.alloc(0);
      this.#jwtReplay.checkAndInsert(jti, (payload.exp ?? 0) * 1000 + 60_000);
      const params = this.#params(body);
      this.stats.httpsReads++;
      return { totebox: this.id, view: "position", rows: [simPosition(this.seed, this.index, params.asOf)] };
    } catch (e) {
      this.stats.httpsRefused++;
      throw e;
    }
  }

  #params(raw: unknown): { asOf: string; raw: { [key: string]: CanonicalValue } } {
    if (raw === undefined || raw === null) return { asOf: this.#today(), raw: {} };
    if (typeof raw !== "object" || Array.isArray(raw) || Object.getPrototypeOf(raw) !== Object.prototype) {
      throw new ToteboxError("TOTEBOX_ERR_PARAM", "params must be a map", { param: "params" });
    }
    const keys = Object.keys(raw);
    if (keys.some((k) => k !== "as_of")) {
      throw new ToteboxError("TOTEBOX_ERR_PARAM", "unknown parameter", { param: "params" });
    }
    const asOf = (raw as { as_of?: unknown }).as_of;
    if (asOf === undefined) return { asOf: this.#today(), raw: {} };
    if (typeof asOf !== "string" || !isIsoDate(asOf)) {
      throw new ToteboxError("TOTEBOX_ERR_PARAM", "as_of must be a date YYYY-MM-DD", { param: "as_of" });
    }
    return { asOf, raw: { as_of: asOf } };
  }

  #today(): string {
    return new Date(this.clock.now()).toISOString().slice(0, 10);
  }
}

/** The main object a commander gets on a link (ToteboxRemote). */
export class SimToteboxMain extends RpcTarget {
  readonly #tb: SimTotebox;
  readonly #link: PspLink;
  readonly #linkKeyHex: string;

  constructor(tb: SimTotebox, link: PspLink) {
    super();
    this.#tb = tb;
    this.#link = link;
    const pk = link.peer.publicKey;
    this.#linkKeyHex = pk ? rawEd25519PublicKey(pk).toString("hex") : "";
  }

  hello(): ToteboxHello {
    return this.#tb.hello();
  }

  authorize(grant: unknown): SimSession {
    const verified = this.#tb.authorize(grant, this.#link, this.#linkKeyHex);
    const session = new SimSession(this.#tb, verified, this.#link);
    simSessions(this.#link).set(Buffer.from(verified.hash).toString("hex"), session);
    return session;
  }
}

/**
 * As the real Totebox (packages/totebox/src/subject.ts): sessions held on each link, by grant
 * hash; one per grant here, since the bench authorizes each grant once per link.
 */
const simSessionsByLink = new WeakMap<PspLink, Map<string, SimSession>>();

function simSessions(link: PspLink): Map<string, SimSession> {
  let m = simSessionsByLink.get(link);
  if (!m) {
    m = new Map();
    simSessionsByLink.set(link, m);
  }
  return m;
}

/** As the real Totebox's directReadHandler: a direct read under a session held on this link. */
function simDirectReads(link: PspLink): DirectRequestHandler {
  return async (method, payload) => {
    if (method !== DIRECT_READ_METHOD) {
      throw new PspError("PSP_ERR_METHOD_UNKNOWN", "unknown direct request method", { method });
    }
    const req = decodeDirectReadRequest(payload);
    const session = simSessionsByLink.get(link)?.get(Buffer.from(req.grantHash).toString("hex"));
    if (!session) {
      throw new ToteboxError(
        "TOTEBOX_ERR_SESSION_UNKNOWN",
        "no session under this grant is open on this link",
      );
    }
    return encodeDirectReadReply(session.read(req.capability, req.view, req.params, req.row ?? undefined));
  };
}

export class SimSession extends RpcTarget {
  readonly #tb: SimTotebox;
  readonly #grant: VerifiedGrant;
  readonly #link: PspLink;

  constructor(tb: SimTotebox, grant: VerifiedGrant, link: PspLink) {
    super();
    this.#tb = tb;
    this.#grant = grant;
    this.#link = link;
  }

  [Symbol.dispose](): void {
    const m = simSessionsByLink.get(this.#link);
    const key = Buffer.from(this.#grant.hash).toString("hex");
    if (m?.get(key) === this) m.delete(key);
  }

  view(name: unknown): SimView {
    if (typeof name !== "string" || name.length > 128)
      throw new ToteboxError("TOTEBOX_ERR_VIEW_UNKNOWN", "bad view name");
    return new SimView(this.#tb, this.#grant, name);
  }

  read(capability: unknown, view: unknown, params?: unknown, row?: unknown): ReadAnswer {
    return this.#tb.read(this.#grant, { capability, view, params, row });
  }
}

export class SimView extends RpcTarget {
  readonly #tb: SimTotebox;
  readonly #grant: VerifiedGrant;
  readonly #name: string;

  constructor(tb: SimTotebox, grant: VerifiedGrant, name: string) {
    super();
    this.#tb = tb;
    this.#grant = grant;
    this.#name = name;
  }

  read(capability: unknown, params?: unknown, row?: unknown): ReadAnswer {
    return this.#tb.read(this.#grant, { capability, view: this.#name, params, row });
  }
}

// ---------------------------------------------------------------------------------------------
// Floor framing: u32 big-endian payload length, then the payload. Nothing else.

export const FLOOR_MAX_FRAME_BYTES = 1024 * 1024;

/** Builds one floor frame. */
export function floorFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + payload.length);
  out.writeUInt32BE(payload.length, 0);
  out.set(payload, 4);
  return out;
}

/**
 * Counts complete frames in a byte stream without copying payloads. A length above the limit is
 * hostile: it throws, and the caller drops the connection. With `recordFirstBytes` it also keeps,
 * for the frames the last push completed, each one's first payload byte (-1 for an empty payload):
 * a paced floor request says there what work its answer waits for (floor-pace.ts).
 */
export class FloorFrameCounter {
  readonly #header = Buffer.alloc(4);
  #headerFill = 0;
  /** Payload bytes still expected for the current frame; -1 while reading a header. */
  #remaining = -1;
  /** The current frame's first payload byte, once read; -1 before (or for an empty payload). */
  #first = -1;
  readonly #limit: number;
  readonly #record: boolean;
  /** With `recordFirstBytes`: the first payload byte of each frame the last push completed. */
  readonly firstBytes: number[] = [];

  constructor(limit = FLOOR_MAX_FRAME_BYTES, recordFirstBytes = false) {
    this.#limit = limit;
    this.#record = recordFirstBytes;
  }

  /** Returns how many frames this chunk completed. */
  push(chunk: Buffer): number {
    let frames = 0;
    let off = 0;
    if (this.#record) this.firstBytes.length = 0;
    while (off < chunk.length) {
      if (this.#remaining < 0) {
        const take = Math.min(4 - this.#headerFill, chunk.length - off);
        chunk.copy(this.#header, this.#headerFill, off, off + take);
        this.#headerFill += take;
        off += take;
        if (this.#headerFill < 4) break;
        this.#headerFill = 0;
        const len = this.#header.readUInt32BE(0);
        if (len > this.#limit) throw new BenchError("BENCH_ERR_IPC", "floor frame exceeds the limit");
        this.#remaining = len;
        this.#first = -1;
        if (this.#record && len > 0 && off < chunk.length) this.#first = chunk[off]!;
      } else if (this.#record && this.#first < 0 && off < chunk.length) {
        // Only a frame whose payload has not begun reaches here with #first unset: the header
        // completed at the very end of the last chunk, so this chunk opens with its first byte.
        this.#first = chunk[off]!;
      }
      const take = Math.min(this.#remaining, chunk.length - off);
      off += take;
      this.#remaining -= take;
      if (this.#remaining === 0) {
        this.#remaining = -1;
        frames++;
        if (this.#record) this.firstBytes.push(this.#first);
      }
    }
    return frames;
  }
}

// ---------------------------------------------------------------------------------------------
// Servers of one simulated Totebox

export interface SimServerPorts {
  /** Which listeners to start; all three by default. */
  readonly psp?: boolean;
  readonly floor?: boolean;
  readonly https?: boolean;
}

export interface SimToteboxDescriptor {
  readonly index: number;
  readonly id: string;
  readonly tags: Record<string, string>;
  readonly fingerprint: string;
  readonly publicKeyRaw: Uint8Array;
  /** PEM of the certificate: the usual way pins it as its only CA. */
  readonly certPem: string;
  readonly host: string;
  readonly pspPort: number;
  readonly floorPort: number;
  readonly httpsPort: number;
}

export interface RunningSimTotebox {
  readonly totebox: SimTotebox;
  readonly descriptor: SimToteboxDescriptor;
  readonly psp: PspServer | undefined;
  close(): Promise<void>;
}

const HTTPS_MAX_BODY_BYTES = 4096;
const HTTPS_MAX_AUTH_BYTES = 4096;
export const HTTPS_READ_PATH = "/v1/views/position/read";
export const HTTPS_HEALTH_PATH = "/healthz";

function isAddrInUse(e: unknown): boolean {
  return (e as { code?: unknown })?.code === "EADDRINUSE";
}

/** Listens on the preferred port; if something else holds it, on any port of the same address. */
async function listenWithFallback<T>(listen: (port: number) => Promise<T>, port: number): Promise<T> {
  try {
    return await listen(port);
  } catch (e) {
    if (!isAddrInUse(e)) throw e;
    return listen(0);
  }
}

function listenServer(server: tls.Server | https.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function closeServer(server: tls.Server | https.Server): Promise<void> {
  return new Promise((resolve) => {
    (server as https.Server).closeAllConnections?.();
    server.close(() => resolve());
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function codeOf(e: unknown): string {
  const c = (e as { code?: unknown })?.code;
  return typeof c === "string" && /^[A-Z][A-Z0-9_]{2,63}$/.test(c) ? c : "ERR_INTERNAL";
}

function readBoundedBody(req: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        resolve(undefined);
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks, size)));
    req.on("error", reject);
  });
}

/**
 * A floor server's handling of one chunk from the hub: every request it completes is answered
 * with `answer`, a paced one (floor-pace.ts) only after the work a Totebox of ours must do first.
 * Throws on a hostile length (the caller drops the connection) before answering any frame of it.
 */
export function answerFloorChunk(a: {
  chunk: Buffer;
  counter: FloorFrameCounter;
  answer: Buffer;
  work: () => RequiredToteboxWork;
  write: (b: Buffer) => void;
  stats: Pick<SimToteboxStats, "floorFrames" | "floorPaced">;
}): void {
  const n = a.counter.push(a.chunk);
  a.stats.floorFrames += n;
  for (let i = 0; i < n; i++) {
    const depth = pacedDepth(a.counter.firstBytes[i]!);
    if (depth !== undefined) {
      // The digest covers the answer's payload, as a receipt covers the answer (not the frame header).
      a.work().run(depth, a.answer.subarray(4));
      a.stats.floorPaced++;
    }
    a.write(a.answer);
  }
}

let sharedRequiredWork: RequiredToteboxWork | undefined;
/** The paced floor's work for this process's Toteboxes (its keys made on the first paced request). */
function processRequiredWork(): RequiredToteboxWork {
  sharedRequiredWork ??= new RequiredToteboxWork();
  return sharedRequiredWork;
}

/**
 * Starts one simulated Totebox: a PSP subject server, and on the same identity the floor and the
 * usual-way servers. `floorAnswer` is read on every floor request, so the worker can change the
 * answer size after the start (it is set to "our" answer size once that has been measured).
 */
export async function startSimTotebox(args: {
  totebox: SimTotebox;
  host: string;
  floorAnswer: () => Buffer;
  serve?: SimServerPorts;
  /** What a paced floor request waits for; by default one per process, made when first asked for. */
  requiredWork?: () => RequiredToteboxWork;
}): Promise<RunningSimTotebox> {
  const { totebox: tb, host } = args;
  const serve = { psp: true, floor: true, https: true, ...args.serve };
  const id = tb.identity;
  const closers: Array<() => Promise<void>> = [];
  const closeAll = async () => {
    await Promise.all(closers.map((c) => c().catch(() => {})));
  };
  try {
    let psp: PspServer | undefined;
    let pspPort = 0;
    if (serve.psp) {
      psp = await listenWithFallback(
        (port) =>
          listenPsp({
            identity: id,
            role: "subject",
            host,
            port,
            authorize: pinOnly(tb.trust.aggregatorFingerprint, "aggregator"),
            onLink: (link) => {
              tb.stats.linksOpened++;
              link.once("close", (e) => {
                if (e) tb.stats.linksFailed++;
              });
              serveSubject(link, new SimToteboxMain(tb, link));
              link.serveRequests(simDirectReads(link));
            },
          }),
        SIM_PORTS.psp,
      );
      const p = psp;
      closers.push(() => p.close());
      pspPort = psp.address.port;
    }

    let floorPort = 0;
    if (serve.floor) {
      const floor = tls.createServer({
        key: id.keyPem,
        cert: id.certPem,
        requestCert: true,
        rejectUnauthorized: false,
        minVersion: "TLSv1.3",
        maxVersion: "TLSv1.3",
        handshakeTimeout: 10_000,
      });
      floor.on("secureConnection", (socket: tls.TLSSocket) => {
        socket.setNoDelay(true);
        // Pinned like PSP, once per connection, before a byte is read.
        const cert = socket.getPeerX509Certificate();
        const fp = cert ? createHash("sha256").update(cert.raw).digest("hex") : "";
        if (fp !== tb.trust.aggregatorFingerprint) {
          socket.destroy();
          return;
        }
        const counter = new FloorFrameCounter(FLOOR_MAX_FRAME_BYTES, true);
        const write = (b: Buffer) => socket.write(b);
        socket.on("data", (chunk: Buffer) => {
          try {
            answerFloorChunk({
              chunk,
              counter,
              answer: args.floorAnswer(),
              work: args.requiredWork ?? processRequiredWork,
              write,
              stats: tb.stats,
            });
          } catch {
            socket.destroy();
          }
        });
        socket.on("error", () => socket.destroy());
      });
      floor.on("tlsClientError", (_e, socket) => socket?.destroy());
      floorPort = await listenWithFallback((port) => listenServer(floor, host, port), SIM_PORTS.floor);
      closers.push(() => closeServer(floor));
    }

    let httpsPort = 0;
    if (serve.https) {
      const server = https.createServer(
        {
          key: id.keyPem,
          cert: id.certPem,
          minVersion: "TLSv1.3",
          maxVersion: "TLSv1.3",
          keepAliveTimeout: 120_000,
          headersTimeout: 60_000,
          requestTimeout: 60_000,
          maxHeaderSize: 8192,
        },
        (req, res) => {
          void handleHttps(tb, req, res);
        },
      );
      server.on("tlsClientError", (_e, socket) => socket?.destroy());
      httpsPort = await listenWithFallback((port) => listenServer(server, host, port), SIM_PORTS.https);
      closers.push(() => closeServer(server));
    }

    return {
      totebox: tb,
      psp,
      descriptor: {
        index: tb.index,
        id: tb.id,
        tags: { ...tb.tags },
        fingerprint: id.fingerprint,
        publicKeyRaw: new Uint8Array(rawEd25519PublicKey(id.publicKey)),
        certPem: id.certPem,
        host,
        pspPort,
        floorPort,
        httpsPort,
      },
      close: closeAll,
    };
  } catch (cause) {
    await closeAll();
    throw new BenchError("BENCH_ERR_LISTEN", `cannot listen for Totebox ${tb.id} on ${host}`, { cause });
  }
}

async function handleHttps(tb: SimTotebox, req: IncomingMessage, res: ServerResponse): Promise<void> {
  try {
    if (req.method === "GET" && req.url === HTTPS_HEALTH_PATH) {
      sendJson(res, 200, { ok: true });
      return;
    }
    if (req.method !== "POST" || req.url !== HTTPS_READ_PATH) {
      sendJson(res, 404, { code: "HTTP_NOT_FOUND" });
      return;
    }
    const auth = req.headers.authorization;
    if (typeof auth !== "string" || auth.length > HTTPS_MAX_AUTH_BYTES || !auth.startsWith("Bearer ")) {
      sendJson(res, 401, { code: "HTTP_NO_TOKEN" });
      return;
    }
    const body = await readBoundedBody(req, HTTPS_MAX_BODY_BYTES);
    if (body === undefined) {
      sendJson(res, 413, { code: "HTTP_BODY_TOO_LARGE" });
      return;
    }
    let parsed: unknown;
    try {
      parsed = body.length === 0 ? undefined : JSON.parse(body.toString("utf8"));
    } catch {
      sendJson(res, 400, { code: "HTTP_BAD_JSON" });
      return;
    }
    const answer = await tb.readJwt(auth.slice(7), parsed);
    sendJson(res, 200, answer);
  } catch (e) {
    const code = codeOf(e);
    const status = code.startsWith("TOTEBOX_ERR_PARAM") ? 400 : 401;
    if (!res.headersSent) sendJson(res, status, { code });
  }
}

// ---------------------------------------------------------------------------------------------
// The worker process: IPC with bench/sim-fleet.ts

/** Parent → worker. */
export type WorkerRequest =
  | {
      type: "start";
      seed: number;
      from: number;
      to: number;
      trust: SimTrustInput;
      floorAnswerBytes: number;
      hostBase: number;
    }
  | { type: "floor"; answerBytes: number }
  | { type: "stats" }
  | { type: "close" };

/** Worker → parent. */
export type WorkerReply =
  | { type: "progress"; phase: "identities" | "listen"; done: number; total: number }
  | { type: "ready"; toteboxes: SimToteboxDescriptor[] }
  | { type: "floor-ok"; answerBytes: number }
  | { type: "stats"; stats: SimToteboxStats; cpuMicros: number; rssBytes: number }
  | { type: "error"; code: string; message: string };

const MAX_FLOOR_ANSWER_BYTES = 256 * 1024;
/** Most trusted operator keys a worker accepts. */
const MAX_OPERATORS = 10_000;

function isInt(v: unknown, lo: number, hi: number): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= lo && v <= hi;
}

/** IPC from the parent is still input: checked field by field before use. */
export function parseWorkerRequest(m: unknown): WorkerRequest {
  const bad = () => new BenchError("BENCH_ERR_IPC", "malformed worker request");
  if (m === null || typeof m !== "object") throw bad();
  const r = m as Record<string, unknown>;
  switch (r.type) {
    case "start": {
      const t = r.trust as Record<string, unknown> | undefined;
      if (
        !isInt(r.seed, 0, 0xffffffff) ||
        !isInt(r.from, 0, MAX_SIM_TOTEBOXES) ||
        !isInt(r.to, 0, MAX_SIM_TOTEBOXES) ||
        (r.from as number) > (r.to as number) ||
        !isInt(r.floorAnswerBytes, 0, MAX_FLOOR_ANSWER_BYTES) ||
        !isInt(r.hostBase, 1, 254) ||
        !t ||
        typeof t.aggregatorFingerprint !== "string" ||
        !(t.aggregatorPublicKeyRaw instanceof Uint8Array) ||
        !(t.operatorPublicKeyRaw instanceof Uint8Array) ||
        (t.moreOperatorPublicKeysRaw !== undefined &&
          (!Array.isArray(t.moreOperatorPublicKeysRaw) ||
            t.moreOperatorPublicKeysRaw.length > MAX_OPERATORS ||
            !t.moreOperatorPublicKeysRaw.every((k) => k instanceof Uint8Array)))
      ) {
        throw bad();
      }
      return {
        type: "start",
        seed: r.seed as number,
        from: r.from as number,
        to: r.to as number,
        floorAnswerBytes: r.floorAnswerBytes as number,
        hostBase: r.hostBase as number,
        trust: {
          aggregatorFingerprint: t.aggregatorFingerprint,
          aggregatorPublicKeyRaw: t.aggregatorPublicKeyRaw,
          operatorPublicKeyRaw: t.operatorPublicKeyRaw,
          ...(t.moreOperatorPublicKeysRaw !== undefined
            ? { moreOperatorPublicKeysRaw: t.moreOperatorPublicKeysRaw as Uint8Array[] }
            : {}),
        },
      };
    }
    case "floor":
      if (!isInt(r.answerBytes, 0, MAX_FLOOR_ANSWER_BYTES)) throw bad();
      return { type: "floor", answerBytes: r.answerBytes as number };
    case "stats":
      return { type: "stats" };
    case "close":
      return { type: "close" };
    default:
      throw bad();
  }
}

/** Runs `fn` over items with at most `limit` in flight. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (t: T, i: number) => Promise<R>,
) {
  const out = new Array<R>(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  });
  await Promise.all(lanes);
  return out;
}

function floorAnswerFrame(bytes: number): Buffer {
  // A fixed byte string: the floor does no work to produce its answer.
  return floorFrame(Buffer.alloc(bytes, 0x5a));
}

async function workerMain(): Promise<void> {
  const send = (m: WorkerReply) => process.send?.(m);
  let running: RunningSimTotebox[] = [];
  let floorAnswer = floorAnswerFrame(0);
  let started = false;
  // The parent holds our lifetime: if it goes away (even killed), so do we.
  process.on("disconnect", () => process.exit(0));

  const start = async (req: Extract<WorkerRequest, { type: "start" }>) => {
    floorAnswer = floorAnswerFrame(req.floorAnswerBytes);
    const trust = await makeSimTrust(req.trust);
    const indices = Array.from({ length: req.to - req.from }, (_, k) => req.from + k);
    let done = 0;
    const tick = (phase: "identities" | "listen") => {
      done++;
      if (done % 250 === 0 || done === indices.length) {
        send({ type: "progress", phase, done, total: indices.length });
      }
    };
    const identities = await mapLimit(indices, 8, async (i) => {
      const id = await benchIdentity(`tb-${i}`, req.seed);
      tick("identities");
      return id;
    });
    done = 0;
    running = await mapLimit(indices, 16, async (i, k) => {
      const tb = new SimTotebox({ seed: req.seed, index: i, identity: identities[k]!, trust });
      const r = await startSimTotebox({
        totebox: tb,
        host: simHost(i, req.hostBase),
        floorAnswer: () => floorAnswer,
      });
      tick("listen");
      return r;
    });
    send({ type: "ready", toteboxes: running.map((r) => r.descriptor) });
  };

  process.on("message", (raw: unknown) => {
    let req: WorkerRequest;
    try {
      req = parseWorkerRequest(raw);
    } catch (e) {
      send({ type: "error", code: codeOf(e), message: (e as Error).message });
      return;
    }
    switch (req.type) {
      case "start":
        if (started) {
          send({ type: "error", code: "BENCH_ERR_IPC", message: "worker already started" });
          return;
        }
        started = true;
        start(req).catch((e: unknown) => {
          send({ type: "error", code: codeOf(e), message: (e as Error).message });
        });
        return;
      case "floor":
        floorAnswer = floorAnswerFrame(req.answerBytes);
        send({ type: "floor-ok", answerBytes: req.answerBytes });
        return;
      case "stats": {
        const stats = emptySimStats();
        for (const r of running) {
          for (const k of Object.keys(stats) as (keyof SimToteboxStats)[]) stats[k] += r.totebox.stats[k];
        }
        const cpu = process.cpuUsage();
        send({ type: "stats", stats, cpuMicros: cpu.user + cpu.system, rssBytes: process.memoryUsage().rss });
        return;
      }
      case "close":
        void Promise.all(running.map((r) => r.close())).finally(() => process.exit(0));
        return;
    }
  });
}

if (
  process.send !== undefined &&
  process.argv[1] &&
  import.meta.url === pathToFileURL(process.argv[1]).href
) {
  void workerMain();
}
