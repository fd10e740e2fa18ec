import { hash, type KeyObject, randomBytes } from "node:crypto";
import {
  HASH_BYTES,
  leafHash,
  leafHashPrefixed,
  MAX_TREE_SIZE,
  merkleRootAndPaths,
  rootFromInclusionProof,
} from "./batch-proof.ts";
import type { Clock } from "./clock.ts";
import {
  assertEd25519Key,
  bytesEqual,
  COSE_HEADER,
  cborHead,
  checkEdDsaHeaders,
  decodeCbor,
  decodeSign1,
  ED25519_PUBLIC_KEY_BYTES,
  ed25519PublicKeyFromRaw,
  ed25519Sign,
  ed25519Verify,
  encodeCbor,
  encodeSign1,
  type HeaderLabel,
  MAX_TOKEN_BYTES,
  rawPublicKey,
  sigStructure1,
  toHex,
} from "./cose.ts";
import {
  cursor,
  expectByte,
  expectBytes,
  headLength,
  putHead,
  putString,
  putText,
  readByteCopy,
  readByteView,
  readHead,
  readText,
  stringLength,
  textLength,
} from "./direct-cbor.ts";
import { PspError } from "./errors.ts";
import type { ReplayStore } from "./replay-store.ts";
import { sha256 } from "./sha256.ts";

export { rawPublicKey } from "./cose.ts";

/**
 * PSP capabilities: CWT claims sets (RFC 8392) in COSE_Sign1 envelopes (cose.ts), two kinds.
 *
 * - An operator **grant**: signed by an operator key the Totebox trusts (paired); audience the
 *   aggregator; names a tenant, Toteboxes (ids and/or tag selectors), views, actions, optionally
 *   row keys, and the aggregator public key allowed to sign calls under it. At most 12 h.
 * - A **call capability**: signed by that aggregator key; audience one Totebox; names one view or
 *   one command, optionally one row key, one action, and the SHA-256 of the grant token it derives
 *   from. At most 120 s. May be batch-signed: one signature over an RFC 6962 Merkle root of many
 *   call payloads, with the inclusion path in the unprotected header.
 *
 * Claim labels (CWT claims map; standard labels from RFC 8392 §4, private ones negative, which
 * RFC 8392 §4 leaves to the application). "G" = grant, "C" = call; "req" = required.
 *
 * | label | name               | type                 | G   | C   | meaning                                   |
 * |-------|--------------------|----------------------|-----|-----|-------------------------------------------|
 * |  1    | iss                | tstr (64 hex)        | req | req | key id of the signer                      |
 * |  2    | sub                | tstr                 | req | req | operator id (C: copied from the grant)    |
 * |  3    | aud                | tstr                 | req | req | G: aggregator identity id; C: Totebox id  |
 * |  4    | exp                | uint, seconds        | req | req | not valid at or after                     |
 * |  5    | nbf                | uint, seconds        | req | req | not valid before                          |
 * |  6    | iat                | uint, seconds        | req | req | issued at                                 |
 * |  7    | cti                | bstr, 8..64 bytes    | req | req | token id; replay key for calls            |
 * | -1    | kind               | "grant" / "call"     | req | req |                                           |
 * | -2    | tenant             | tstr                 | req | req | C: copied from the grant                  |
 * | -3    | totebox ids        | [* tstr]             | opt | -   | Toteboxes named by id                     |
 * | -4    | totebox selectors  | [* tstr]             | opt | -   | "k=v,k2=v2": all pairs match; list is OR  |
 * | -5    | views              | [* tstr]             | req | -   | views the aggregator may read             |
 * | -6    | actions            | [* tstr]             | req | -   | "read" and/or command names               |
 * | -7    | rows               | [* tstr]             | opt | -   | if present, calls must name one of these  |
 * | -8    | aggregator key     | bstr, 32 bytes       | req | -   | raw Ed25519 key that signs calls          |
 * | -9    | view               | tstr                 | -   | one of -9/-10 | view to read                    |
 * | -10   | command            | tstr                 | -   | one of -9/-10 | command to run                  |
 * | -11   | row                | tstr                 | -   | opt | row key                                   |
 * | -12   | action             | tstr                 | -   | req | "read", or the command's name             |
 * | -13   | grant hash         | bstr, 32 bytes       | -   | req | SHA-256 of the grant token bytes          |
 *
 * Only the labels a kind lists may appear (unknown claims are refused, not ignored: a restriction
 * an issuer added must never be silently dropped). See docs/psp-capabilities.md for the full wire
 * format, the verification order and the error codes.
 */

/** Standard CWT claim labels (RFC 8392 §4). */
export const CWT_CLAIM = { iss: 1, sub: 2, aud: 3, exp: 4, nbf: 5, iat: 6, cti: 7 } as const;

/** PSP private claim labels (negative: application-defined). */
export const PSP_CLAIM = {
  kind: -1,
  tenant: -2,
  toteboxIds: -3,
  toteboxSelectors: -4,
  views: -5,
  actions: -6,
  rows: -7,
  aggregatorKey: -8,
  view: -9,
  command: -10,
  row: -11,
  action: -12,
  grantHash: -13,
} as const;

/**
 * Header labels of batch mode, in COSE's private-use range (integers below -65536, RFC 9052 §3.1).
 * The tree size is protected (shared by every token of a batch, and it must be signed: for leaf 0
 * the path computation is the same for sizes 5 and 7). Index and path differ per token and are
 * unprotected; tampering with them changes the recomputed root, so the signature fails.
 */
export const BATCH_HEADER = { treeSize: -65537, leafIndex: -65538, path: -65539 } as const;

export const CAPABILITY_LIMITS = Object.freeze({
  /** Longest grant window (exp - nbf). */
  maxGrantLifetimeSeconds: 12 * 60 * 60,
  /** Longest call window (exp - nbf). */
  maxCallLifetimeSeconds: 120,
  defaultGrantLifetimeSeconds: 60 * 60,
  defaultCallLifetimeSeconds: 60,
  /** Clock skew tolerated on nbf and exp. */
  defaultSkewMs: 60_000,
  maxTokenBytes: MAX_TOKEN_BYTES,
  /** UTF-8 bytes per text claim (ids, names, selectors). */
  maxStringBytes: 256,
  /** Entries per list claim. */
  maxListEntries: 256,
  minCtiBytes: 8,
  maxCtiBytes: 64,
  /** Tokens per batch signature; the inclusion path is at most 20 hashes (640 bytes). */
  maxBatchSize: 2 ** 20,
});

export type CapabilityKind = "grant" | "call";

export interface GrantClaims {
  readonly kind: "grant";
  /** Operator key id (lowercase hex SHA-256 of the raw Ed25519 public key). */
  readonly iss: string;
  /** Operator id. */
  readonly sub: string;
  /** Aggregator identity id. */
  readonly aud: string;
  /** Seconds since epoch. */
  readonly exp: number;
  readonly nbf: number;
  readonly iat: number;
  readonly cti: Uint8Array;
  readonly tenant: string;
  readonly toteboxIds: readonly string[];
  readonly toteboxSelectors: readonly string[];
  readonly views: readonly string[];
  readonly actions: readonly string[];
  readonly rows: readonly string[] | undefined;
  /** Raw 32-byte Ed25519 key allowed to sign call capabilities under this grant. */
  readonly aggregatorKey: Uint8Array;
}

export interface CallClaims {
  readonly kind: "call";
  /** Aggregator key id. */
  readonly iss: string;
  /** Operator id, as in the grant. */
  readonly sub: string;
  /** Totebox id. */
  readonly aud: string;
  readonly exp: number;
  readonly nbf: number;
  readonly iat: number;
  readonly cti: Uint8Array;
  readonly tenant: string;
  readonly view: string | undefined;
  readonly command: string | undefined;
  readonly row: string | undefined;
  readonly action: string;
  /** SHA-256 of the grant token bytes. */
  readonly grantHash: Uint8Array;
}

export type CapabilityClaims = GrantClaims | CallClaims;

// ---------------------------------------------------------------------------------------------
// Keys

const keyIdCache = new WeakMap<KeyObject, string>();

/** Key id: lowercase hex SHA-256 of the raw 32-byte Ed25519 public key. */
export function keyIdOf(publicKey: KeyObject): string {
  let id = keyIdCache.get(publicKey);
  if (id === undefined) {
    id = keyIdOfRaw(rawPublicKey(publicKey));
    keyIdCache.set(publicKey, id);
  }
  return id;
}

const keyIdBytesCache = new WeakMap<KeyObject, Uint8Array>();

/**
 * The key id as its 32 raw bytes, cached per key: what a kid header is compared with, once per
 * receipt at the aggregator (comparing hex strings cost a hex encoding per answer).
 */
export function keyIdBytesOf(publicKey: KeyObject): Uint8Array {
  let id = keyIdBytesCache.get(publicKey);
  if (id === undefined) {
    id = Buffer.from(keyIdOf(publicKey), "hex");
    keyIdBytesCache.set(publicKey, id);
  }
  return id;
}

// One-shot hashing (crypto.hash): no Hash object per call; the same digests as createHash.

/** Key id of a raw 32-byte Ed25519 public key. */
export function keyIdOfRaw(raw: Uint8Array): string {
  return hash("sha256", raw, "hex");
}

// ---------------------------------------------------------------------------------------------
// Claim validation. Everything below reads `unknown` and checks it field by field.

function malformed(message: string, detail?: Record<string, string | number | boolean>): PspError {
  return new PspError("PSP_ERR_CAP_MALFORMED", message, detail);
}

type ClaimMap = ReadonlyMap<unknown, unknown>;

/** A key id as text: 64 lowercase hex digits. */
const KEY_ID_HEX = /^[0-9a-f]{64}$/;

const utf8Length = (s: string) => Buffer.byteLength(s, "utf8");

/** A UTF-16 surrogate without its pair: not encodable as UTF-8, so never a valid text claim. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function checkString(value: unknown, field: string): string {
  if (typeof value !== "string") throw malformed("claim is not a text string", { field });
  if (LONE_SURROGATE.test(value)) throw malformed("text claim is not valid Unicode", { field });
  const n = utf8Length(value);
  if (n === 0 || n > CAPABILITY_LIMITS.maxStringBytes) {
    throw malformed("text claim length out of bounds", { field, limit: CAPABILITY_LIMITS.maxStringBytes });
  }
  return value;
}

function readString(m: ClaimMap, label: number, field: string): string {
  if (!m.has(label)) throw malformed("required claim missing", { field });
  return checkString(m.get(label), field);
}

function readOptString(m: ClaimMap, label: number, field: string): string | undefined {
  return m.has(label) ? checkString(m.get(label), field) : undefined;
}

function readStringList(m: ClaimMap, label: number, field: string, required: boolean): string[] | undefined {
  if (!m.has(label)) {
    if (required) throw malformed("required claim missing", { field });
    return undefined;
  }
  const v = m.get(label);
  if (!Array.isArray(v)) throw malformed("claim is not an array", { field });
  if (v.length > CAPABILITY_LIMITS.maxListEntries) {
    throw malformed("list claim too long", { field, limit: CAPABILITY_LIMITS.maxListEntries });
  }
  return (v as unknown[]).map((s) => checkString(s, field));
}

function readSeconds(m: ClaimMap, label: number, field: string): number {
  const v = m.get(label);
  // NumericDate restricted to non-negative integers: floats would make window checks and
  // canonical encoding ambiguous across implementations.
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > 0xffffffff) {
    throw malformed("time claim is not a whole number of seconds", { field });
  }
  return v;
}

function readBytes(m: ClaimMap, label: number, field: string, min: number, max: number): Uint8Array {
  const v = m.get(label);
  if (!(v instanceof Uint8Array)) throw malformed("claim is not a byte string", { field });
  if (v.byteLength < min || v.byteLength > max) throw malformed("byte claim length out of bounds", { field });
  return new Uint8Array(v);
}

/** Parses "k=v,k2=v2" into pairs; undefined if the syntax is wrong. */
function parseSelector(selector: string): Array<[string, string]> | undefined {
  const pairs: Array<[string, string]> = [];
  for (const part of selector.split(",")) {
    const eq = part.indexOf("=");
    if (eq <= 0 || eq === part.length - 1) return undefined;
    pairs.push([part.slice(0, eq), part.slice(eq + 1)]);
  }
  return pairs;
}

/**
 * Selectors parsed before, by their text (frozen pairs; null for a malformed one). A fan-out
 * matches its grant's few selectors against every Totebox in the registry: parsing them once per
 * Totebox was an array and its pairs each time. Bounded: cleared whole at SELECTOR_CACHE_LIMIT.
 */
const parsedSelectors = new Map<string, readonly (readonly [string, string])[] | null>();
const SELECTOR_CACHE_LIMIT = 1024;

/** True if every pair of the selector matches the tags ("k=v,k2=v2" is AND). */
export function selectorMatches(selector: string, tags: Readonly<Record<string, string>>): boolean {
  let pairs = parsedSelectors.get(selector);
  if (pairs === undefined) {
    const parsed = parseSelector(selector);
    pairs = parsed === undefined ? null : Object.freeze(parsed.map((kv) => Object.freeze(kv)));
    if (parsedSelectors.size >= SELECTOR_CACHE_LIMIT) parsedSelectors.clear();
    parsedSelectors.set(selector, pairs);
  }
  if (pairs === null) return false;
  // An index loop: destructuring each pair made an iterator per pair per call.
  for (let i = 0; i < pairs.length; i++) {
    const pair = pairs[i]!;
    const k = pair[0];
    if (!Object.hasOwn(tags, k) || tags[k] !== pair[1]) return false;
  }
  return true;
}

const GRANT_LABELS: ReadonlySet<number> = new Set([
  ...Object.values(CWT_CLAIM),
  PSP_CLAIM.kind,
  PSP_CLAIM.tenant,
  PSP_CLAIM.toteboxIds,
  PSP_CLAIM.toteboxSelectors,
  PSP_CLAIM.views,
  PSP_CLAIM.actions,
  PSP_CLAIM.rows,
  PSP_CLAIM.aggregatorKey,
]);

const CALL_LABELS: ReadonlySet<number> = new Set([
  ...Object.values(CWT_CLAIM),
  PSP_CLAIM.kind,
  PSP_CLAIM.tenant,
  PSP_CLAIM.view,
  PSP_CLAIM.command,
  PSP_CLAIM.row,
  PSP_CLAIM.action,
  PSP_CLAIM.grantHash,
]);

/**
 * Parses a PSP claims set strictly: a CBOR map in exactly the bytes our encoder produces for it
 * (shortest forms, no duplicate labels: two decoders can never disagree on what was signed), only
 * the labels its kind allows, every field of the right type and size.
 */
export function parseClaims(payload: Uint8Array): CapabilityClaims {
  return readCallPayload(payload) ?? parseClaimsGeneric(payload);
}

function parseClaimsGeneric(payload: Uint8Array): CapabilityClaims {
  let m: unknown;
  try {
    m = decodeCbor(payload);
  } catch {
    throw malformed("claims set is not well-formed CBOR");
  }
  if (!(m instanceof Map)) throw malformed("claims set is not a map");
  let canonical: boolean;
  try {
    canonical = bytesEqual(encodeCbor(m), payload);
  } catch {
    canonical = false;
  }
  if (!canonical) throw malformed("claims set is not in canonical encoding");
  return claimsFromMap(m);
}

/** Field-by-field validation of a claims map (decoded by a verifier or built by an issuer). */
function claimsFromMap(m: ClaimMap): CapabilityClaims {
  const kind = m.get(PSP_CLAIM.kind);
  if (kind !== "grant" && kind !== "call") throw malformed("claims set has no valid kind", { field: "kind" });
  const allowed = kind === "grant" ? GRANT_LABELS : CALL_LABELS;
  for (const k of m.keys()) {
    if (typeof k !== "number" || !allowed.has(k))
      throw malformed("claims set has an unexpected label", { kind });
  }
  const common = {
    iss: readString(m, CWT_CLAIM.iss, "iss"),
    sub: readString(m, CWT_CLAIM.sub, "sub"),
    aud: readString(m, CWT_CLAIM.aud, "aud"),
    exp: readSeconds(m, CWT_CLAIM.exp, "exp"),
    nbf: readSeconds(m, CWT_CLAIM.nbf, "nbf"),
    iat: readSeconds(m, CWT_CLAIM.iat, "iat"),
    cti: readBytes(m, CWT_CLAIM.cti, "cti", CAPABILITY_LIMITS.minCtiBytes, CAPABILITY_LIMITS.maxCtiBytes),
    tenant: readString(m, PSP_CLAIM.tenant, "tenant"),
  };
  if (!KEY_ID_HEX.test(common.iss)) throw malformed("iss is not a key id", { field: "iss" });
  if (kind === "grant") {
    const toteboxIds = readStringList(m, PSP_CLAIM.toteboxIds, "toteboxIds", false) ?? [];
    const toteboxSelectors = readStringList(m, PSP_CLAIM.toteboxSelectors, "toteboxSelectors", false) ?? [];
    if (toteboxIds.length + toteboxSelectors.length === 0) {
      throw malformed("grant names no Totebox", { field: "toteboxIds" });
    }
    for (const s of toteboxSelectors) {
      if (parseSelector(s) === undefined)
        throw malformed("tag selector syntax", { field: "toteboxSelectors" });
    }
    const actions = readStringList(m, PSP_CLAIM.actions, "actions", true)!;
    if (actions.length === 0) throw malformed("grant names no action", { field: "actions" });
    return {
      kind,
      ...common,
      toteboxIds,
      toteboxSelectors,
      views: readStringList(m, PSP_CLAIM.views, "views", true)!,
      actions,
      rows: readStringList(m, PSP_CLAIM.rows, "rows", false),
      aggregatorKey: readBytes(
        m,
        PSP_CLAIM.aggregatorKey,
        "aggregatorKey",
        ED25519_PUBLIC_KEY_BYTES,
        ED25519_PUBLIC_KEY_BYTES,
      ),
    };
  }
  const view = readOptString(m, PSP_CLAIM.view, "view");
  const command = readOptString(m, PSP_CLAIM.command, "command");
  if ((view === undefined) === (command === undefined)) {
    throw malformed("call names neither or both of view and command", { field: "view" });
  }
  return {
    kind,
    ...common,
    view,
    command,
    row: readOptString(m, PSP_CLAIM.row, "row"),
    action: readString(m, PSP_CLAIM.action, "action"),
    grantHash: readBytes(m, PSP_CLAIM.grantHash, "grantHash", HASH_BYTES, HASH_BYTES),
  };
}

/** Encodes claims as the canonical CBOR map (labels in the table's order). Validates first. */
export function encodeClaims(claims: CapabilityClaims): Uint8Array {
  return (claims.kind === "call" ? writeCallPayload(claims) : undefined) ?? encodeClaimsGeneric(claims);
}

function encodeClaimsGeneric(claims: CapabilityClaims): Uint8Array {
  const m = new Map<number, unknown>([
    [CWT_CLAIM.iss, claims.iss],
    [CWT_CLAIM.sub, claims.sub],
    [CWT_CLAIM.aud, claims.aud],
    [CWT_CLAIM.exp, claims.exp],
    [CWT_CLAIM.nbf, claims.nbf],
    [CWT_CLAIM.iat, claims.iat],
    [CWT_CLAIM.cti, claims.cti],
    [PSP_CLAIM.kind, claims.kind],
    [PSP_CLAIM.tenant, claims.tenant],
  ]);
  if (claims.kind === "grant") {
    if (claims.toteboxIds.length > 0) m.set(PSP_CLAIM.toteboxIds, [...claims.toteboxIds]);
    if (claims.toteboxSelectors.length > 0) m.set(PSP_CLAIM.toteboxSelectors, [...claims.toteboxSelectors]);
    m.set(PSP_CLAIM.views, [...claims.views]);
    m.set(PSP_CLAIM.actions, [...claims.actions]);
    if (claims.rows !== undefined) m.set(PSP_CLAIM.rows, [...claims.rows]);
    m.set(PSP_CLAIM.aggregatorKey, claims.aggregatorKey);
  } else {
    if (claims.view !== undefined) m.set(PSP_CLAIM.view, claims.view);
    if (claims.command !== undefined) m.set(PSP_CLAIM.command, claims.command);
    if (claims.row !== undefined) m.set(PSP_CLAIM.row, claims.row);
    m.set(PSP_CLAIM.action, claims.action);
    m.set(PSP_CLAIM.grantHash, claims.grantHash);
  }
  // The issuer runs the verifier's field checks on what it is about to sign: an issuer can never
  // mint a token that verifiers refuse as malformed, and both share one definition of it.
  claimsFromMap(m);
  return encodeCbor(m);
}

// ---------------------------------------------------------------------------------------------
// Call claims, written and read directly (direct-cbor.ts)
//
// A call capability is issued once per Totebox per fan-out and checked once per call, so its
// claims take the direct path both ways; grants (one per session) keep the generic one. The issuer
// writes labels in the table's order, which is exactly what cbor-x writes for encodeClaimsGeneric's
// Map; the reader accepts only that layout and leaves every other byte string to the generic
// parser, so what is accepted or refused, and with which code, is unchanged.

/** A single-byte CBOR label (|label| < 24): positive as major 0, negative as major 1. */
const labelByte = (label: number): number => (label >= 0 ? label : 0x20 | (-1 - label));

const L = {
  iss: labelByte(CWT_CLAIM.iss),
  sub: labelByte(CWT_CLAIM.sub),
  aud: labelByte(CWT_CLAIM.aud),
  exp: labelByte(CWT_CLAIM.exp),
  nbf: labelByte(CWT_CLAIM.nbf),
  iat: labelByte(CWT_CLAIM.iat),
  cti: labelByte(CWT_CLAIM.cti),
  kind: labelByte(PSP_CLAIM.kind),
  tenant: labelByte(PSP_CLAIM.tenant),
  view: labelByte(PSP_CLAIM.view),
  command: labelByte(PSP_CLAIM.command),
  row: labelByte(PSP_CLAIM.row),
  action: labelByte(PSP_CLAIM.action),
  grantHash: labelByte(PSP_CLAIM.grantHash),
} as const;

/** "call" as a CBOR text string. */
const CALL_KIND = Uint8Array.of(0x64, 0x63, 0x61, 0x6c, 0x6c);
/** Map heads of a call's claims: 12 entries, or 13 with a row key. */
const CALL_MAP = 0xac;
const CALL_MAP_WITH_ROW = 0xad;

const isSeconds = (n: unknown): n is number =>
  typeof n === "number" && Number.isSafeInteger(n) && n >= 0 && n <= 0xffffffff;

/**
 * A call's claims written directly, for claims claimsFromMap accepts (else undefined: the generic
 * encoder then refuses them with its usual error, or encodes what only it handles, such as text
 * with surrogate pairs).
 */
function writeCallPayload(c: CallClaims): Uint8Array | undefined {
  const max = CAPABILITY_LIMITS.maxStringBytes;
  if ((c.view === undefined) === (c.command === undefined)) return undefined;
  if (typeof c.iss !== "string" || !KEY_ID_HEX.test(c.iss)) return undefined;
  const name = c.view ?? c.command;
  const sub = textLength(c.sub, max);
  const aud = textLength(c.aud, max);
  const tenant = textLength(c.tenant, max);
  const nameLength = textLength(name, max);
  const row = c.row === undefined ? 0 : textLength(c.row, max);
  const action = textLength(c.action, max);
  const { cti, grantHash } = c;
  if (
    sub < 0 ||
    aud < 0 ||
    tenant < 0 ||
    nameLength < 0 ||
    row < 0 ||
    action < 0 ||
    !isSeconds(c.exp) ||
    !isSeconds(c.nbf) ||
    !isSeconds(c.iat) ||
    !(cti instanceof Uint8Array) ||
    cti.byteLength < CAPABILITY_LIMITS.minCtiBytes ||
    cti.byteLength > CAPABILITY_LIMITS.maxCtiBytes ||
    !(grantHash instanceof Uint8Array) ||
    grantHash.byteLength !== HASH_BYTES
  ) {
    return undefined;
  }
  const text = (n: number) => headLength(n) + n;
  const size =
    1 +
    (c.row === undefined ? 12 : 13) + // labels
    text(64) + // iss
    text(sub) +
    text(aud) +
    headLength(c.exp) +
    headLength(c.nbf) +
    headLength(c.iat) +
    stringLength(cti) +
    CALL_KIND.byteLength +
    text(tenant) +
    text(nameLength) +
    (c.row === undefined ? 0 : text(row)) +
    text(action) +
    stringLength(grantHash);
  const out = new Uint8Array(size);
  out[0] = c.row === undefined ? CALL_MAP : CALL_MAP_WITH_ROW;
  out[1] = L.iss;
  let p = putText(out, 2, c.iss, 64);
  out[p] = L.sub;
  p = putText(out, p + 1, c.sub, sub);
  out[p] = L.aud;
  p = putText(out, p + 1, c.aud, aud);
  out[p] = L.exp;
  p = putHead(out, p + 1, 0, c.exp);
  out[p] = L.nbf;
  p = putHead(out, p + 1, 0, c.nbf);
  out[p] = L.iat;
  p = putHead(out, p + 1, 0, c.iat);
  out[p] = L.cti;
  p = putString(out, p + 1, 2, cti);
  out[p] = L.kind;
  out.set(CALL_KIND, p + 1);
  p += 1 + CALL_KIND.byteLength;
  out[p] = L.tenant;
  p = putText(out, p + 1, c.tenant, tenant);
  out[p] = c.view !== undefined ? L.view : L.command;
  p = putText(out, p + 1, name!, nameLength);
  if (c.row !== undefined) {
    out[p] = L.row;
    p = putText(out, p + 1, c.row, row);
  }
  out[p] = L.action;
  p = putText(out, p + 1, c.action, action);
  out[p] = L.grantHash;
  putString(out, p + 1, 2, grantHash);
  return out;
}

/** A call's claims from exactly the issuer's layout, or undefined for the generic parser. */
function readCallPayload(payload: Uint8Array): CallClaims | undefined {
  // Payloads come out of a decoded envelope, but this reads hostile bytes: check the type anyway.
  if (!(payload instanceof Uint8Array)) return undefined;
  const mapHead = payload[0];
  if (mapHead !== CALL_MAP && mapHead !== CALL_MAP_WITH_ROW) return undefined;
  const max = CAPABILITY_LIMITS.maxStringBytes;
  const c = cursor(payload, 1);
  expectByte(c, L.iss);
  const iss = readText(c, max);
  expectByte(c, L.sub);
  const sub = readText(c, max);
  expectByte(c, L.aud);
  const aud = readText(c, max);
  expectByte(c, L.exp);
  const exp = readHead(c, 0);
  expectByte(c, L.nbf);
  const nbf = readHead(c, 0);
  expectByte(c, L.iat);
  const iat = readHead(c, 0);
  expectByte(c, L.cti);
  const cti = readByteCopy(c, CAPABILITY_LIMITS.minCtiBytes, CAPABILITY_LIMITS.maxCtiBytes);
  expectByte(c, L.kind);
  expectBytes(c, CALL_KIND);
  expectByte(c, L.tenant);
  const tenant = readText(c, max);
  let view: string | undefined;
  let command: string | undefined;
  if (payload[c.p] === L.view) {
    c.p++;
    view = readText(c, max);
  } else {
    expectByte(c, L.command);
    command = readText(c, max);
  }
  let row: string | undefined;
  if (mapHead === CALL_MAP_WITH_ROW) {
    expectByte(c, L.row);
    row = readText(c, max);
  }
  expectByte(c, L.action);
  const action = readText(c, max);
  expectByte(c, L.grantHash);
  const grantHash = readByteCopy(c, HASH_BYTES, HASH_BYTES);
  // readHead's -1 (not a shortest uint below 2^32) is refused here with the rest.
  if (!c.ok || c.p !== payload.byteLength || exp < 0 || nbf < 0 || iat < 0 || !KEY_ID_HEX.test(iss)) {
    return undefined;
  }
  // The same fields, in the same order, as claimsFromMap returns.
  return { kind: "call", iss, sub, aud, exp, nbf, iat, cti, tenant, view, command, row, action, grantHash };
}

// ---------------------------------------------------------------------------------------------
// Envelope profile

interface BatchInfo {
  readonly index: number;
  readonly size: number;
  readonly path: readonly Uint8Array[];
}

interface Envelope {
  /** The protected header exactly as received: it is what the signature covers. */
  readonly protectedBytes: Uint8Array;
  readonly payload: Uint8Array;
  readonly signature: Uint8Array;
  /** Signer key id (hex) from the protected `kid`. */
  readonly kid: string;
  readonly batch: BatchInfo | undefined;
}

const BATCH_CRIT: ReadonlySet<HeaderLabel> = new Set([BATCH_HEADER.treeSize]);

// The profile's headers, written out byte by byte: issuers emit exactly these bytes and verifiers
// compare against them, which pins label order and shortest forms without a generic re-encode.
// (-65537, -65538, -65539 encode as 0x3a followed by 65536, 65537, 65538 in four bytes.)
const KID_PREFIX = Uint8Array.of(0x04, 0x58, 0x20); // label 4, bstr of 32 bytes
const LABEL_TREE_SIZE = Uint8Array.of(0x3a, 0x00, 0x01, 0x00, 0x00);
const LABEL_LEAF_INDEX = Uint8Array.of(0x3a, 0x00, 0x01, 0x00, 0x01);
const LABEL_PATH = Uint8Array.of(0x3a, 0x00, 0x01, 0x00, 0x02);
/** {1: -8, 2: [-65537], 4: h'<32 bytes>' ... : the batch protected header up to the kid's bytes. */
const BATCH_PROTECTED_PREFIX = Uint8Array.of(0xa4, 0x01, 0x27, 0x02, 0x81, ...LABEL_TREE_SIZE, ...KID_PREFIX);
/** {-65538: ... : the batch unprotected header up to the leaf index. */
const BATCH_UNPROTECTED_PREFIX = Uint8Array.of(0xa2, ...LABEL_LEAF_INDEX);
const TAGGED_SIGN1 = Uint8Array.of(0xd2, 0x84);
/** Largest tree a batch header may name: the issuer's batch limit, within what the proofs handle. */
const MAX_BATCH_TREE_SIZE = Math.min(CAPABILITY_LIMITS.maxBatchSize, MAX_TREE_SIZE);
/** Longest inclusion path a header may carry (a tree of 2^31 - 1 leaves needs 31). */
const MAX_PATH_HASHES = 64;

/** {1: -8, 4: kid} */
function singleProtectedBytes(kid: Uint8Array): Uint8Array {
  return new Uint8Array(Buffer.concat([Uint8Array.of(0xa2, 0x01, 0x27), KID_PREFIX, kid]));
}

/** {1: -8, 2: [-65537], 4: kid, -65537: size} */
function batchProtectedBytes(kid: Uint8Array, size: number): Uint8Array {
  return new Uint8Array(Buffer.concat([BATCH_PROTECTED_PREFIX, kid, LABEL_TREE_SIZE, cborHead(0, size)]));
}

/** Bytes of {-65538: index, -65539: [* bstr(32)]}. */
function batchUnprotectedLength(index: number, path: readonly Uint8Array[]): number {
  let n =
    BATCH_UNPROTECTED_PREFIX.byteLength + headLength(index) + LABEL_PATH.byteLength + headLength(path.length);
  for (const h of path) n += stringLength(h);
  return n;
}

/** Writes {-65538: index, -65539: [* bstr(32)]} at `p`; returns the next offset. */
function putBatchUnprotected(out: Uint8Array, p: number, index: number, path: readonly Uint8Array[]): number {
  out.set(BATCH_UNPROTECTED_PREFIX, p);
  let q = putHead(out, p + BATCH_UNPROTECTED_PREFIX.byteLength, 0, index);
  out.set(LABEL_PATH, q);
  q = putHead(out, q + LABEL_PATH.byteLength, 4, path.length);
  for (const h of path) q = putString(out, q, 2, h);
  return q;
}

/** {-65538: index, -65539: [* bstr(32)]}, on its own (the generic decoder's canonical check). */
function batchUnprotectedBytes(index: number, path: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(batchUnprotectedLength(index, path));
  putBatchUnprotected(out, 0, index, path);
  return out;
}

/**
 * Decodes a capability envelope and enforces the PSP profile of COSE_Sign1 before any key is
 * touched: tagged, protected {1: -8, 4: kid} (+ {2: [-65537], -65537: size} in batch mode),
 * unprotected {} (or {-65538: index, -65539: path} in batch mode), and the exact canonical bytes.
 */
function decodeEnvelope(token: Uint8Array, allowBatch: boolean): Envelope {
  return (allowBatch ? readBatchEnvelope(token) : undefined) ?? decodeEnvelopeGeneric(token, allowBatch);
}

/**
 * A batch capability's envelope in exactly the issuer's layout (the bytes batchProtectedBytes and
 * batchUnprotectedBytes write, in a tagged COSE_Sign1), or undefined for the generic decoder. It
 * accepts a subset of what decodeEnvelopeGeneric accepts, with the same parts. The protected
 * bytes, path hashes and payload are views into `token` (as cbor-x's are on the generic path): the
 * caller holds the token for the whole verification, and nothing returned to callers keeps them.
 */
function readBatchEnvelope(token: Uint8Array): Envelope | undefined {
  if (!(token instanceof Uint8Array) || token.byteLength > CAPABILITY_LIMITS.maxTokenBytes) return undefined;
  const c = cursor(token);
  expectBytes(c, TAGGED_SIGN1);
  const protectedBytes = readByteView(c, 0, 64);
  if (!c.ok) return undefined;
  const h = cursor(protectedBytes);
  expectBytes(h, BATCH_PROTECTED_PREFIX);
  const kidAt = h.p;
  h.p += 32;
  expectBytes(h, LABEL_TREE_SIZE);
  const size = readHead(h, 0);
  if (!h.ok || h.p !== protectedBytes.byteLength) return undefined;
  if (size < 1 || size > MAX_BATCH_TREE_SIZE) return undefined;
  expectBytes(c, BATCH_UNPROTECTED_PREFIX);
  const index = readHead(c, 0);
  expectBytes(c, LABEL_PATH);
  const hashes = readHead(c, 4);
  if (!c.ok || index < 0 || index > MAX_TREE_SIZE || hashes < 0 || hashes > MAX_PATH_HASHES) return undefined;
  const path: Uint8Array[] = new Array(hashes);
  for (let i = 0; i < hashes; i++) path[i] = readByteView(c, HASH_BYTES, HASH_BYTES);
  const payload = readByteView(c, 0, CAPABILITY_LIMITS.maxTokenBytes);
  const signature = readByteView(c, 64, 64);
  if (!c.ok || c.p !== token.byteLength) return undefined;
  return {
    protectedBytes,
    payload,
    signature,
    kid: toHex(protectedBytes.subarray(kidAt, kidAt + 32)),
    batch: { index, size, path },
  };
}

/** Decodes with cbor-x, checks the profile field by field, and the canonical form by re-encoding. */
function decodeEnvelopeGeneric(token: Uint8Array, allowBatch: boolean): Envelope {
  const msg = decodeSign1(token, { maxBytes: CAPABILITY_LIMITS.maxTokenBytes });
  checkEdDsaHeaders(msg, BATCH_CRIT);
  if (!msg.tagged) throw malformed("capability is not tagged COSE_Sign1");
  const kidBytes = msg.protectedHeader.get(COSE_HEADER.kid);
  if (!(kidBytes instanceof Uint8Array) || kidBytes.byteLength !== 32) {
    throw malformed("capability kid is not a 32-byte key id");
  }
  const batchMode = msg.protectedHeader.has(BATCH_HEADER.treeSize);
  const allowedProtected: HeaderLabel[] = batchMode
    ? [COSE_HEADER.alg, COSE_HEADER.crit, COSE_HEADER.kid, BATCH_HEADER.treeSize]
    : [COSE_HEADER.alg, COSE_HEADER.kid];
  for (const k of msg.protectedHeader.keys()) {
    if (!allowedProtected.includes(k)) throw malformed("capability protected header has an unexpected label");
  }
  let batch: BatchInfo | undefined;
  let protectedBytes: Uint8Array;
  let unprotectedBytes: Uint8Array;
  if (!batchMode) {
    if (msg.unprotectedHeader.size !== 0) throw malformed("capability unprotected header must be empty");
    protectedBytes = singleProtectedBytes(kidBytes);
    unprotectedBytes = Uint8Array.of(0xa0);
  } else {
    if (!allowBatch) throw malformed("grants cannot be batch-signed");
    const crit = msg.protectedHeader.get(COSE_HEADER.crit);
    if (!Array.isArray(crit) || crit.length !== 1 || crit[0] !== BATCH_HEADER.treeSize) {
      throw malformed("batch capability must mark the batch label critical");
    }
    const size = msg.protectedHeader.get(BATCH_HEADER.treeSize);
    const index = msg.unprotectedHeader.get(BATCH_HEADER.leafIndex);
    const path = msg.unprotectedHeader.get(BATCH_HEADER.path);
    if (
      msg.unprotectedHeader.size !== 2 ||
      typeof size !== "number" ||
      !Number.isSafeInteger(size) ||
      size < 1 ||
      size > MAX_BATCH_TREE_SIZE ||
      typeof index !== "number" ||
      !Number.isSafeInteger(index) ||
      index < 0 ||
      index > MAX_TREE_SIZE ||
      !Array.isArray(path) ||
      path.length > MAX_PATH_HASHES ||
      !(path as unknown[]).every((h) => h instanceof Uint8Array && h.byteLength === HASH_BYTES)
    ) {
      throw malformed("batch header fields are malformed");
    }
    batch = { index, size, path: path as Uint8Array[] };
    protectedBytes = batchProtectedBytes(kidBytes, size);
    unprotectedBytes = batchUnprotectedBytes(index, batch.path);
  }
  // One comparison covers tag, array, header order and every head's shortest form.
  if (
    !bytesEqual(protectedBytes, msg.protectedBytes) ||
    !bytesEqual(
      encodeSign1({ protectedBytes, unprotectedBytes, payload: msg.payload, signature: msg.signature }),
      token,
    )
  ) {
    throw malformed("capability is not in canonical encoding");
  }
  return {
    protectedBytes: msg.protectedBytes,
    payload: msg.payload,
    signature: msg.signature,
    kid: toHex(kidBytes),
    batch,
  };
}

/**
 * Batch roots whose signature one verifier has already checked, keyed by signer key id and
 * signature, holding the exact bytes that signature covers (protected header and root). One fan-out
 * can give the same Totebox several capabilities under one root (a viewport reading two views,
 * a command and its read-back), and each needs the root's Ed25519 signature: with a cache the
 * Totebox pays for it once. What stays per capability: the root is recomputed from that token's own
 * payload and inclusion path, and a hit needs those recomputed bytes to equal the cached ones
 * exactly. Only successes are cached, and Ed25519 verification is deterministic, so a hit answers
 * exactly what verifying again would.
 *
 * A cache belongs to one verifier (one Totebox): sovereign Toteboxes share nothing, so a process
 * hosting several of them (the benchmark's simulated fleet, tests) gives each its own and pays
 * what separate machines would. Bounded; least recently used entries go first.
 */
export class BatchRootCache {
  readonly #roots = new Map<string, Uint8Array>();
  readonly #limit: number;
  #hits = 0;
  #misses = 0;

  /** `limit`: roots kept (default 64: a Totebox sees one root per fan-out). */
  constructor(limit = 64) {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError("limit must be a positive integer");
    this.#limit = limit;
  }

  /** Signature checks answered from the cache, and checks that ran Ed25519. */
  stats(): { hits: number; misses: number; size: number } {
    return { hits: this.#hits, misses: this.#misses, size: this.#roots.size };
  }

  /** @internal verifyCallChain's check of one batch signature. */
  verifies(toBeSigned: Uint8Array, signature: Uint8Array, key: KeyObject): boolean {
    const cacheKey = `${keyIdOf(key)}:${toHex(signature)}`;
    const hit = this.#roots.get(cacheKey);
    if (hit !== undefined && bytesEqual(hit, toBeSigned)) {
      this.#hits++;
      this.#roots.delete(cacheKey); // refresh recency: Map order is insertion order
      this.#roots.set(cacheKey, hit);
      return true;
    }
    this.#misses++;
    if (!ed25519Verify(toBeSigned, signature, key)) return false;
    if (this.#roots.size >= this.#limit) {
      const oldest = this.#roots.keys().next();
      if (!oldest.done) this.#roots.delete(oldest.value);
    }
    this.#roots.set(cacheKey, toBeSigned);
    return true;
  }
}

/** Verifies the envelope's signature (single or batch). PSP_ERR_CAP_SIGNATURE on any failure. */
function verifyEnvelopeSignature(env: Envelope, key: KeyObject, batchRoots?: BatchRootCache): void {
  assertEd25519Key(key, "verify");
  let ok: boolean;
  if (env.batch === undefined) {
    ok = ed25519Verify(sigStructure1(env.protectedBytes, EMPTY, env.payload), env.signature, key);
  } else {
    // An impossible index/size/path combination is a failed proof, not a parse error: the
    // fields were well-typed, they just do not lead to a root that was signed.
    const root = rootFromInclusionProof(
      env.batch.index,
      env.batch.size,
      leafHash(env.payload),
      env.batch.path,
    );
    const toBeSigned = root && sigStructure1(env.protectedBytes, EMPTY, root);
    ok =
      toBeSigned !== undefined &&
      (batchRoots
        ? batchRoots.verifies(toBeSigned, env.signature, key)
        : ed25519Verify(toBeSigned, env.signature, key));
  }
  if (!ok) {
    throw new PspError("PSP_ERR_CAP_SIGNATURE", "capability signature does not verify", {
      batch: env.batch !== undefined,
    });
  }
}

const EMPTY = new Uint8Array(0);

/**
 * Decodes a capability without verifying anything: for logs and diagnostics only. Never base a
 * decision on its result.
 */
export function decodeUnverified(token: Uint8Array): {
  readonly verified: false;
  readonly kid: string;
  readonly batch: { readonly index: number; readonly size: number } | undefined;
  readonly claims: CapabilityClaims;
} {
  const env = decodeEnvelope(token, true);
  const claims = parseClaims(env.payload);
  return {
    verified: false,
    kid: env.kid,
    batch: env.batch && { index: env.batch.index, size: env.batch.size },
    claims,
  };
}

/** Generic RFC 8392 claims (for interop checks): standard claims typed, the rest passed through. */
export interface CwtClaims {
  readonly iss?: string;
  readonly sub?: string;
  readonly aud?: string;
  readonly exp?: number;
  readonly nbf?: number;
  readonly iat?: number;
  readonly cti?: Uint8Array;
  readonly other: ReadonlyMap<number | string, unknown>;
}

/** Decodes any CWT claims set (RFC 8392 §3), checking only the standard claims' types. */
export function decodeCwtClaims(payload: Uint8Array): CwtClaims {
  if (!(payload instanceof Uint8Array) || payload.byteLength > MAX_TOKEN_BYTES) {
    throw malformed("CWT claims set size out of bounds", { limit: MAX_TOKEN_BYTES });
  }
  let m: unknown;
  try {
    m = decodeCbor(payload);
  } catch {
    throw malformed("CWT claims set is not well-formed CBOR");
  }
  if (!(m instanceof Map)) throw malformed("CWT claims set is not a map");
  let iss: string | undefined;
  let sub: string | undefined;
  let aud: string | undefined;
  let exp: number | undefined;
  let nbf: number | undefined;
  let iat: number | undefined;
  let cti: Uint8Array | undefined;
  const other = new Map<number | string, unknown>();
  const text = (v: unknown, field: string): string => {
    if (typeof v !== "string") throw malformed("CWT claim is not a text string", { field });
    return v;
  };
  // RFC 8392 NumericDate may be an integer or a floating-point number of seconds.
  const date = (v: unknown, field: string): number => {
    if (typeof v !== "number" || !Number.isFinite(v))
      throw malformed("CWT time claim is not a number", { field });
    return v;
  };
  for (const [k, v] of m as Map<unknown, unknown>) {
    if (typeof k !== "number" && typeof k !== "string") throw malformed("CWT claim label is not int or text");
    switch (k) {
      case CWT_CLAIM.iss:
        iss = text(v, "iss");
        break;
      case CWT_CLAIM.sub:
        sub = text(v, "sub");
        break;
      case CWT_CLAIM.aud:
        aud = text(v, "aud");
        break;
      case CWT_CLAIM.exp:
        exp = date(v, "exp");
        break;
      case CWT_CLAIM.nbf:
        nbf = date(v, "nbf");
        break;
      case CWT_CLAIM.iat:
        iat = date(v, "iat");
        break;
      case CWT_CLAIM.cti:
        if (!(v instanceof Uint8Array)) throw malformed("CWT cti is not a byte string", { field: "cti" });
        cti = new Uint8Array(v);
        break;
      default:
        other.set(k, v);
    }
  }
  return {
    ...(iss === undefined ? {} : { iss }),
    ...(sub === undefined ? {} : { sub }),
    ...(aud === undefined ? {} : { aud }),
    ...(exp === undefined ? {} : { exp }),
    ...(nbf === undefined ? {} : { nbf }),
    ...(iat === undefined ? {} : { iat }),
    ...(cti === undefined ? {} : { cti }),
    other,
  };
}

// ---------------------------------------------------------------------------------------------
// Issuing

function nowSeconds(clock: Clock): number {
  return Math.floor(clock.now() / 1000);
}

function checkLifetime(nbf: number, exp: number, max: number, kind: CapabilityKind): void {
  if (exp <= nbf || exp - nbf > max) {
    throw new PspError("PSP_ERR_CAP_LIFETIME", `${kind} validity window is empty or too long`, {
      kind,
      lifetimeSeconds: exp - nbf,
      limitSeconds: max,
    });
  }
}

function newCti(cti: Uint8Array | undefined): Uint8Array {
  return cti === undefined ? new Uint8Array(randomBytes(16)) : new Uint8Array(cti);
}

/**
 * Signs a claims set as a single (non-batch) capability. Checks structure only, not lifetime
 * policy: use `issueGrant`/`issueCallCapability` in programs; this exists for fixtures that must
 * mint deliberately out-of-policy tokens.
 */
export function signCapabilityClaims(claims: CapabilityClaims, signer: KeyObject): Uint8Array {
  assertEd25519Key(signer, "sign");
  const payload = encodeClaims(claims);
  const kid = Buffer.from(keyIdOf(signer), "hex");
  return signWithKid(payload, kid, signer);
}

function signWithKid(payload: Uint8Array, kid: Uint8Array, signer: KeyObject): Uint8Array {
  const protectedBytes = singleProtectedBytes(kid);
  const signature = ed25519Sign(sigStructure1(protectedBytes, new Uint8Array(0), payload), signer);
  return encodeSign1({ protectedBytes, unprotectedBytes: Uint8Array.of(0xa0), payload, signature });
}

export interface GrantInput {
  /** Operator id (sub). */
  readonly operator: string;
  /** Aggregator identity id (aud). */
  readonly aggregatorId: string;
  /** The aggregator's Ed25519 public key (KeyObject or raw 32 bytes) that will sign calls. */
  readonly aggregatorKey: KeyObject | Uint8Array;
  readonly tenant: string;
  readonly toteboxIds?: readonly string[];
  readonly toteboxSelectors?: readonly string[];
  readonly views: readonly string[];
  readonly actions: readonly string[];
  readonly rows?: readonly string[];
  /** Default 1 h, at most 12 h. */
  readonly lifetimeSeconds?: number;
  /** Seconds since epoch; default now. */
  readonly notBefore?: number;
  /** Default 16 random bytes. */
  readonly cti?: Uint8Array;
}

/** The operator's console signs a grant to an aggregator. */
export function issueGrant(
  args: GrantInput & { readonly signer: KeyObject; readonly clock: Clock },
): Uint8Array {
  assertEd25519Key(args.signer, "sign");
  const iat = nowSeconds(args.clock);
  const nbf = args.notBefore ?? iat;
  const exp = nbf + (args.lifetimeSeconds ?? CAPABILITY_LIMITS.defaultGrantLifetimeSeconds);
  checkLifetime(nbf, exp, CAPABILITY_LIMITS.maxGrantLifetimeSeconds, "grant");
  const aggregatorKey =
    args.aggregatorKey instanceof Uint8Array
      ? new Uint8Array(args.aggregatorKey)
      : rawPublicKey(args.aggregatorKey);
  return signCapabilityClaims(
    {
      kind: "grant",
      iss: keyIdOf(args.signer),
      sub: args.operator,
      aud: args.aggregatorId,
      exp,
      nbf,
      iat,
      cti: newCti(args.cti),
      tenant: args.tenant,
      toteboxIds: args.toteboxIds ?? [],
      toteboxSelectors: args.toteboxSelectors ?? [],
      views: args.views,
      actions: args.actions,
      rows: args.rows,
      aggregatorKey,
    },
    args.signer,
  );
}

export interface CallInput {
  /** The grant token this call derives from (the aggregator's own copy, verified on receipt). */
  readonly grant: Uint8Array;
  /** Totebox id (aud). */
  readonly totebox: string;
  readonly view?: string;
  readonly command?: string;
  readonly row?: string;
  readonly action: string;
  /** Default 60 s, at most 120 s; clipped to the grant's window. */
  readonly lifetimeSeconds?: number;
  readonly notBefore?: number;
  readonly cti?: Uint8Array;
  readonly clock: Clock;
}

interface GrantSummary {
  readonly claims: GrantClaims;
  readonly hash: Uint8Array;
  readonly aggregatorKeyId: string;
}

/**
 * Issuer-side cache: the aggregator presents the same grant buffer for every call of a session.
 * Keyed by buffer identity; if a caller mutated a grant buffer in place the stale summary would
 * only yield capabilities verifiers refuse (grant hash mismatch): it fails closed.
 */
const grantSummaries = new WeakMap<Uint8Array, GrantSummary>();

function summarizeGrant(grant: Uint8Array): GrantSummary {
  const hit = grantSummaries.get(grant);
  if (hit !== undefined) return hit;
  const summary = summarizeGrantUncached(grant);
  grantSummaries.set(grant, summary);
  return summary;
}

function summarizeGrantUncached(grant: Uint8Array): GrantSummary {
  const env = decodeEnvelope(grant, false);
  const claims = parseClaims(env.payload);
  if (claims.kind !== "grant") throw malformed("token is not a grant");
  return { claims, hash: sha256(grant), aggregatorKeyId: keyIdOfRaw(claims.aggregatorKey) };
}

function callClaimsFor(input: CallInput, grant: GrantSummary, signerKeyId: string): CallClaims {
  if (grant.aggregatorKeyId !== signerKeyId) {
    throw new PspError("PSP_ERR_CAP_GRANT_MISMATCH", "signer is not the aggregator key the grant names");
  }
  const iat = nowSeconds(input.clock);
  const lifetime = input.lifetimeSeconds ?? CAPABILITY_LIMITS.defaultCallLifetimeSeconds;
  let nbf = input.notBefore ?? iat;
  let exp = nbf + lifetime;
  checkLifetime(nbf, exp, CAPABILITY_LIMITS.maxCallLifetimeSeconds, "call");
  // Clip into the grant's window: verifiers refuse a call that reaches outside it.
  nbf = Math.max(nbf, grant.claims.nbf);
  exp = Math.min(exp, grant.claims.exp);
  if (exp <= nbf) {
    const code = nbf >= grant.claims.exp ? "PSP_ERR_CAP_EXPIRED" : "PSP_ERR_CAP_NOT_YET_VALID";
    throw new PspError(code, "grant window does not cover the call capability");
  }
  return {
    kind: "call",
    iss: signerKeyId,
    sub: grant.claims.sub,
    aud: input.totebox,
    exp,
    nbf,
    iat,
    cti: newCti(input.cti),
    tenant: grant.claims.tenant,
    view: input.view,
    command: input.command,
    row: input.row,
    action: input.action,
    grantHash: grant.hash,
  };
}

/** The aggregator signs one call capability (one signature). */
export function issueCallCapability(args: CallInput & { readonly signer: KeyObject }): Uint8Array {
  assertEd25519Key(args.signer, "sign");
  const keyId = keyIdOf(args.signer);
  const payload = encodeClaims(callClaimsFor(args, summarizeGrant(args.grant), keyId));
  return signWithKid(payload, Buffer.from(keyId, "hex"), args.signer);
}

/**
 * The aggregator signs one call capability per Totebox of a fan-out with ONE Ed25519 signature:
 * over the RFC 6962 Merkle root of the per-Totebox claim payloads. Each returned token carries its
 * own payload, the shared protected header and signature, and its inclusion path.
 *
 * Tokens are views into one buffer per batch (a few hundred bytes each): a caller that keeps one
 * token long after the batch keeps the batch's buffer with it.
 */
export function issueCallCapabilityBatch(list: readonly CallInput[], signer: KeyObject): Uint8Array[] {
  assertEd25519Key(signer, "sign");
  if (list.length === 0) return [];
  if (list.length > CAPABILITY_LIMITS.maxBatchSize) {
    throw new RangeError(`a batch holds at most ${CAPABILITY_LIMITS.maxBatchSize} capabilities`);
  }
  const keyId = keyIdOf(signer);
  const { slab, ends } = writeBatchPayloads(list, keyId);
  const n = list.length;
  const leaves: Uint8Array[] = new Array(n);
  const payloads: Uint8Array[] = new Array(n);
  for (let i = 0, start = 1; i < n; start = ends[i]! + 1, i++) {
    // slab[start - 1] is the 0x00 written before each payload: the leaf hash's input as it lies.
    leaves[i] = leafHashPrefixed(slab.subarray(start - 1, ends[i]!));
    payloads[i] = slab.subarray(start, ends[i]!);
  }
  const { root, paths } = merkleRootAndPaths(leaves);
  const protectedBytes = batchProtectedBytes(Buffer.from(keyId, "hex"), n);
  const signature = ed25519Sign(sigStructure1(protectedBytes, new Uint8Array(0), root), signer);
  const fixed = TAGGED_SIGN1.byteLength + stringLength(protectedBytes) + stringLength(signature);
  let total = 0;
  for (let i = 0; i < n; i++)
    total += fixed + batchUnprotectedLength(i, paths[i]!) + stringLength(payloads[i]!);
  const out = new Uint8Array(total);
  const tokens: Uint8Array[] = new Array(n);
  for (let i = 0, p = 0; i < n; i++) {
    const end = putBatchToken(out, p, protectedBytes, i, paths[i]!, payloads[i]!, signature);
    tokens[i] = out.subarray(p, end);
    p = end;
  }
  return tokens;
}

/**
 * A batch's call payloads, each written once into one buffer behind a 0x00 byte (`ends[i]` is
 * where payload i ends; it starts one byte after the previous end). Inputs of one shape (the same
 * grant, view or command, row, action, lifetime, start and clock) differ only in their Totebox id
 * and cti, so each payload is the shape's first payload's bytes around those two fields, and a
 * shape's inputs share one clock reading (one `iat`, `nbf`, `exp`). A fan-out with several reads
 * per Totebox has one shape per read. Inputs past MAX_BATCH_SHAPES shapes, and any input the
 * direct writer would not take, are encoded on their own (and refused there with the usual error).
 */
function writeBatchPayloads(list: readonly CallInput[], keyId: string): { slab: Uint8Array; ends: number[] } {
  const n = list.length;
  // Fresh ctis come from one random draw for the whole batch.
  const ctis = randomBytes(16 * n);
  const ctiOf = (i: number): Uint8Array => list[i]!.cti ?? ctis.subarray(16 * i, 16 * i + 16);
  const shapes: { first: CallInput; template: CallTemplate | undefined }[] = [];
  const templates: (CallTemplate | undefined)[] = new Array(n);
  const audLengths = new Int32Array(n);
  const own: (Uint8Array | undefined)[] = new Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const input = list[i]!;
    const cti = ctiOf(i);
    let shape = shapes.find((s) => sameShape(input, s.first));
    if (shape === undefined && shapes.length < MAX_BATCH_SHAPES) {
      const claims = callClaimsFor({ ...input, cti }, summarizeGrant(input.grant), keyId);
      shape = { first: input, template: callTemplate(claims) };
      shapes.push(shape);
    }
    const template = shape?.template;
    const aud =
      template !== undefined &&
      cti instanceof Uint8Array &&
      cti.byteLength >= CAPABILITY_LIMITS.minCtiBytes &&
      cti.byteLength <= CAPABILITY_LIMITS.maxCtiBytes
        ? textLength(input.totebox, CAPABILITY_LIMITS.maxStringBytes)
        : -1;
    if (aud >= 0) {
      templates[i] = template;
      audLengths[i] = aud;
      total += 1 + template!.fixedBytes + headLength(aud) + aud + stringLength(cti);
    } else {
      const payload = encodeClaims(callClaimsFor({ ...input, cti }, summarizeGrant(input.grant), keyId));
      own[i] = payload;
      total += 1 + payload.byteLength;
    }
  }
  const slab = new Uint8Array(total); // zero-filled: every leaf's 0x00 prefix is already in place
  const ends: number[] = new Array(n);
  for (let i = 0, p = 1; i < n; i++) {
    const t = templates[i];
    if (t === undefined) {
      const payload = own[i]!;
      slab.set(payload, p);
      p += payload.byteLength;
    } else {
      slab.set(t.prefix, p);
      p = putText(slab, p + t.prefix.byteLength, list[i]!.totebox, audLengths[i]!);
      slab.set(t.middle, p);
      p = putString(slab, p + t.middle.byteLength, 2, ctiOf(i));
      slab.set(t.suffix, p);
      p += t.suffix.byteLength;
    }
    ends[i] = p;
    p += 1;
  }
  return { slab, ends };
}

/** Shapes of input a batch writes from templates (a fan-out has one per read of its plan). */
const MAX_BATCH_SHAPES = 8;

/** Whether a batch input's claims differ from the shape's first input's only in aud and cti. */
function sameShape(a: CallInput, first: CallInput): boolean {
  return (
    a.grant === first.grant &&
    a.view === first.view &&
    a.command === first.command &&
    a.row === first.row &&
    a.action === first.action &&
    a.lifetimeSeconds === first.lifetimeSeconds &&
    a.notBefore === first.notBefore &&
    a.clock === first.clock
  );
}

/**
 * A call payload's bytes around its two per-Totebox fields, cut from writeCallPayload's own
 * output: everything up to aud's label, from exp's label to cti's label, and after cti.
 */
interface CallTemplate {
  readonly prefix: Uint8Array;
  readonly middle: Uint8Array;
  readonly suffix: Uint8Array;
  readonly fixedBytes: number;
}

/** The template of these claims, or undefined when the direct writer does not take them. */
function callTemplate(c: CallClaims): CallTemplate | undefined {
  const whole = writeCallPayload(c);
  if (whole === undefined) return undefined;
  const max = CAPABILITY_LIMITS.maxStringBytes;
  const text = (n: number) => headLength(n) + n;
  // The layout writeCallPayload writes: map head, iss, sub, then aud's label.
  const audAt = 1 + 1 + text(64) + 1 + text(textLength(c.sub, max)) + 1;
  const audEnd = audAt + text(textLength(c.aud, max));
  const ctiAt = audEnd + 1 + headLength(c.exp) + 1 + headLength(c.nbf) + 1 + headLength(c.iat) + 1;
  const ctiEnd = ctiAt + stringLength(c.cti);
  const prefix = whole.subarray(0, audAt);
  const middle = whole.subarray(audEnd, ctiAt);
  const suffix = whole.subarray(ctiEnd);
  return { prefix, middle, suffix, fixedBytes: prefix.byteLength + middle.byteLength + suffix.byteLength };
}

/**
 * One batch token in one allocation: exactly the bytes of encodeSign1 with batchUnprotectedBytes
 * (the generic decoder's canonical check compares against those), without building the parts.
 */
function writeBatchToken(
  protectedBytes: Uint8Array,
  index: number,
  path: readonly Uint8Array[],
  payload: Uint8Array,
  signature: Uint8Array,
): Uint8Array {
  const size =
    TAGGED_SIGN1.byteLength +
    stringLength(protectedBytes) +
    batchUnprotectedLength(index, path) +
    stringLength(payload) +
    stringLength(signature);
  const out = new Uint8Array(size);
  putBatchToken(out, 0, protectedBytes, index, path, payload, signature);
  return out;
}

/** Writes one batch token at `p` (see writeBatchToken); returns the next offset. */
function putBatchToken(
  out: Uint8Array,
  p: number,
  protectedBytes: Uint8Array,
  index: number,
  path: readonly Uint8Array[],
  payload: Uint8Array,
  signature: Uint8Array,
): number {
  out.set(TAGGED_SIGN1, p);
  let q = putString(out, p + TAGGED_SIGN1.byteLength, 2, protectedBytes);
  q = putBatchUnprotected(out, q, index, path);
  q = putString(out, q, 2, payload);
  return putString(out, q, 2, signature);
}

// ---------------------------------------------------------------------------------------------
// Verifying

export interface TrustedOperator {
  readonly publicKey: KeyObject;
  /** If present, the only tenants this operator may grant. */
  readonly tenants?: readonly string[];
}

/** Looks an operator up by key id; undefined = not trusted (never paired, or revoked). */
export type TrustedOperators = (keyId: string) => TrustedOperator | undefined;

/** A grant whose signature was verified by `verifyGrant` in this process. */
export interface VerifiedGrant {
  readonly claims: GrantClaims;
  /** SHA-256 of the grant token bytes. */
  readonly hash: Uint8Array;
  /** The aggregator key the grant names, imported once. */
  readonly aggregatorKey: KeyObject;
}

/** Only objects made by verifyGrant count as verified; a look-alike object is refused. */
const verifiedGrants = new WeakSet<VerifiedGrant>();

export interface GrantCheckOptions {
  readonly trustedOperators: TrustedOperators;
  /** The aggregator identity the grant must be addressed to. */
  readonly aggregatorId: string;
  readonly clock: Clock;
  readonly skewMs?: number;
}

function checkSkew(skewMs: number): number {
  if (!Number.isFinite(skewMs) || skewMs < 0 || skewMs > 10 * 60_000) {
    throw new RangeError("skewMs must be between 0 and 600000");
  }
  return skewMs;
}

function checkWindow(
  claims: { nbf: number; exp: number },
  nowMs: number,
  skewMs: number,
  kind: CapabilityKind,
): void {
  if (nowMs < claims.nbf * 1000 - skewMs) {
    throw new PspError("PSP_ERR_CAP_NOT_YET_VALID", `${kind} is not valid yet`, { kind });
  }
  if (nowMs >= claims.exp * 1000 + skewMs) {
    throw new PspError("PSP_ERR_CAP_EXPIRED", `${kind} has expired`, { kind });
  }
}

function lookUpOperator(trustedOperators: TrustedOperators, keyId: string): TrustedOperator {
  const op = trustedOperators(keyId);
  if (op === undefined)
    throw new PspError("PSP_ERR_CAP_ISSUER", "grant signed by an operator key that is not trusted");
  // The lookup is configuration, but a mis-keyed entry must not turn into trust in another key.
  if (keyIdOf(op.publicKey) !== keyId) {
    throw new PspError(
      "PSP_ERR_CAP_ISSUER",
      "trusted operator entry does not hold the key it is filed under",
    );
  }
  return op;
}

/** Everything about a grant except its signature; rerun on every call (grants outlive calls). */
function checkGrantPolicy(
  claims: GrantClaims,
  operator: TrustedOperator,
  opts: GrantCheckOptions,
  nowMs: number,
  skewMs: number,
): void {
  if (operator.tenants !== undefined && !operator.tenants.includes(claims.tenant)) {
    throw new PspError("PSP_ERR_CAP_ISSUER", "operator may not grant this tenant");
  }
  checkLifetime(claims.nbf, claims.exp, CAPABILITY_LIMITS.maxGrantLifetimeSeconds, "grant");
  checkWindow(claims, nowMs, skewMs, "grant");
  if (claims.aud !== opts.aggregatorId) {
    throw new PspError("PSP_ERR_CAP_AUDIENCE", "grant is addressed to another aggregator");
  }
}

/**
 * Verifies an operator grant on its own (the aggregator does this before any fan-out; the Totebox
 * does it inside verifyCallChain). Order: envelope (MALFORMED / UNSUPPORTED_ALG), issuer lookup by
 * kid (ISSUER), signature (SIGNATURE), claims (MALFORMED), tenant (ISSUER), lifetime (LIFETIME),
 * window (NOT_YET_VALID / EXPIRED), audience (AUDIENCE).
 */
export function verifyGrant(opts: GrantCheckOptions & { readonly grant: Uint8Array }): VerifiedGrant {
  const skewMs = checkSkew(opts.skewMs ?? CAPABILITY_LIMITS.defaultSkewMs);
  const env = decodeEnvelope(opts.grant, false);
  const operator = lookUpOperator(opts.trustedOperators, env.kid);
  verifyEnvelopeSignature(env, operator.publicKey);
  const claims = parseClaims(env.payload);
  if (claims.kind !== "grant") throw malformed("token is not a grant", { field: "kind" });
  if (claims.iss !== env.kid) throw malformed("grant iss does not match its kid", { field: "iss" });
  checkGrantPolicy(claims, operator, opts, opts.clock.now(), skewMs);
  const verified: VerifiedGrant = Object.freeze({
    claims,
    hash: sha256(opts.grant),
    aggregatorKey: ed25519PublicKeyFromRaw(claims.aggregatorKey),
  });
  verifiedGrants.add(verified);
  return verified;
}

export interface CallRequest {
  readonly view?: string;
  readonly command?: string;
  readonly action: string;
  readonly row?: string;
}

export interface VerifyCallChainOptions extends GrantCheckOptions {
  /** The grant token, or a grant this process already verified (e.g. held by a session). */
  readonly grant: Uint8Array | VerifiedGrant;
  readonly capability: Uint8Array;
  /** This Totebox: its id and tags. */
  readonly totebox: { readonly id: string; readonly tags: Readonly<Record<string, string>> };
  /** What is actually about to run. */
  readonly request: CallRequest;
  readonly replayStore: ReplayStore;
  /** This verifier's own cache of batch roots already verified (see BatchRootCache); none: verify each. */
  readonly batchRoots?: BatchRootCache;
}

export interface VerifiedCall {
  readonly grant: GrantClaims;
  readonly capability: CallClaims;
  readonly grantHash: Uint8Array;
  readonly batch: { readonly index: number; readonly size: number } | undefined;
}

function scopeError(message: string, field: string): PspError {
  return new PspError("PSP_ERR_CAP_SCOPE", message, { field });
}

/**
 * The Totebox's check of a whole chain: operator → grant → aggregator → call capability → this
 * request. Returns the verified claims or throws a PspError whose code names the first failed
 * check. Order (also in docs/psp-capabilities.md):
 *
 *  1. the grant, as verifyGrant (a VerifiedGrant skips only the signature; tenant, trust, lifetime,
 *     window and audience are re-checked, so revocation and expiry apply mid-session);
 *  2. capability envelope (MALFORMED / UNSUPPORTED_ALG);
 *  3. capability kid = key id of the grant's aggregator key (GRANT_MISMATCH);
 *  4. capability signature, single or batch (SIGNATURE);
 *  5. capability claims (MALFORMED); iss = kid (MALFORMED);
 *  6. grant hash, tenant and operator equal the grant's (GRANT_MISMATCH);
 *  7. lifetime <= 120 s (LIFETIME); window ± skew (NOT_YET_VALID / EXPIRED);
 *  8. capability window inside the grant window (SCOPE);
 *  9. aud = this Totebox (AUDIENCE);
 * 10. Totebox, view/command, action, row inside the grant (SCOPE);
 * 11. request = what the capability names (SCOPE);
 * 12. cti not seen before, remembered until exp + skew (REPLAYED / REPLAY_STORE_FULL).
 * The replay store is touched last so a refused capability never burns its id.
 */
export function verifyCallChain(opts: VerifyCallChainOptions): VerifiedCall {
  const skewMs = checkSkew(opts.skewMs ?? CAPABILITY_LIMITS.defaultSkewMs);
  const nowMs = opts.clock.now();

  let grant: VerifiedGrant;
  if (opts.grant instanceof Uint8Array) {
    grant = verifyGrant({ ...opts, grant: opts.grant, skewMs });
  } else {
    if (!verifiedGrants.has(opts.grant)) throw malformed("grant object was not produced by verifyGrant");
    grant = opts.grant;
    const operator = lookUpOperator(opts.trustedOperators, grant.claims.iss);
    checkGrantPolicy(grant.claims, operator, opts, nowMs, skewMs);
  }
  const g = grant.claims;

  const env = decodeEnvelope(opts.capability, true);
  // keyIdOf caches per KeyObject: the grant's aggregator key is hashed once, not once per call.
  if (env.kid !== keyIdOf(grant.aggregatorKey)) {
    throw new PspError("PSP_ERR_CAP_GRANT_MISMATCH", "capability not signed by the key the grant names");
  }
  verifyEnvelopeSignature(env, grant.aggregatorKey, opts.batchRoots);
  const c = parseClaims(env.payload);
  if (c.kind !== "call") throw malformed("token is not a call capability", { field: "kind" });
  if (c.iss !== env.kid) throw malformed("capability iss does not match its kid", { field: "iss" });

  if (!bytesEqual(c.grantHash, grant.hash)) {
    throw new PspError("PSP_ERR_CAP_GRANT_MISMATCH", "capability derives from another grant");
  }
  if (c.tenant !== g.tenant || c.sub !== g.sub) {
    throw new PspError("PSP_ERR_CAP_GRANT_MISMATCH", "capability tenant or operator differs from its grant");
  }

  checkLifetime(c.nbf, c.exp, CAPABILITY_LIMITS.maxCallLifetimeSeconds, "call");
  checkWindow(c, nowMs, skewMs, "call");
  if (c.nbf < g.nbf || c.exp > g.exp) throw scopeError("capability window reaches outside its grant", "exp");

  if (c.aud !== opts.totebox.id)
    throw new PspError("PSP_ERR_CAP_AUDIENCE", "capability is for another Totebox");

  if (
    !g.toteboxIds.includes(opts.totebox.id) &&
    !g.toteboxSelectors.some((s) => selectorMatches(s, opts.totebox.tags))
  ) {
    throw scopeError("grant does not reach this Totebox", "totebox");
  }
  if (c.view !== undefined) {
    if (!g.views.includes(c.view)) throw scopeError("view is outside the grant", "view");
    if (!g.actions.includes(c.action)) throw scopeError("action is outside the grant", "action");
  } else {
    // A command call's action is the command's name, and the grant must list that command.
    if (c.action !== c.command)
      throw scopeError("a command call's action must be the command name", "action");
    if (!g.actions.includes(c.action)) throw scopeError("command is outside the grant", "command");
  }
  if (g.rows !== undefined && (c.row === undefined || !g.rows.includes(c.row))) {
    throw scopeError("row key is outside the grant", "row");
  }

  const r = opts.request;
  if (r.view !== c.view || r.command !== c.command || r.action !== c.action || r.row !== c.row) {
    throw scopeError("request differs from what the capability names", "request");
  }

  opts.replayStore.checkAndInsert(c.cti, c.exp * 1000 + skewMs);

  return Object.freeze({
    grant: g,
    capability: c,
    grantHash: grant.hash,
    batch: env.batch && { index: env.batch.index, size: env.batch.size },
  });
}

/**
 * @internal The direct and generic codecs side by side, for capability-codecs.test.ts's
 * differential tests (index.ts does not re-export this).
 */
export const capabilityCodecsForTest = {
  writeCallPayload,
  encodeClaimsGeneric,
  readCallPayload,
  parseClaimsGeneric,
  readBatchEnvelope,
  decodeEnvelopeGeneric,
  writeBatchToken,
  batchProtectedBytes,
  batchUnprotectedBytes,
};
