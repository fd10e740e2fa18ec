/**
 * Generates packages/psp/test-vectors/capabilities.json: golden PSP capability vectors (token
 * bytes, public keys, clock, request, expected outcome) that any implementation can test against.
 *
 *   npx tsx packages/psp/test-vectors/generate.ts          # rewrite the file
 *
 * Everything is fixed: key seeds, cti bytes and the clock. Ed25519 signatures are deterministic,
 * so the output is byte-stable; golden-vectors.test.ts fails if a code change alters it.
 */
import { createHash, type KeyObject } from "node:crypto";
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Tag } from "cbor-x";
import {
  BATCH_HEADER,
  CAPABILITY_LIMITS,
  type CallRequest,
  decodeUnverified,
  issueCallCapability,
  issueCallCapabilityBatch,
  issueGrant,
  keyIdOf,
  rawPublicKey,
  signCapabilityClaims,
} from "../src/capability.ts";
import { ManualClock } from "../src/clock.ts";
import { decodeCbor, ed25519PrivateKeyFromSeed, encodeCbor, toHex } from "../src/cose.ts";

export interface VectorKey {
  /** Raw 32-byte Ed25519 public key, hex. */
  readonly publicKey: string;
  /** Lowercase hex SHA-256 of the raw public key. */
  readonly keyId: string;
}

export interface VectorCase {
  readonly name: string;
  readonly description: string;
  /** COSE_Sign1 bytes, hex. */
  readonly grant: string;
  readonly capability: string;
  /** Verifier clock, ms since epoch. */
  readonly clockMs: number;
  readonly totebox: { readonly id: string; readonly tags: Readonly<Record<string, string>> };
  readonly request: CallRequest;
  /**
   * Outcome of each successive presentation of (grant, capability) to one verifier with one fresh
   * replay store: "ok" or a PSP_ERR_* code.
   */
  readonly expect: readonly string[];
}

export interface VectorFile {
  readonly format: "psp-capability-vectors/1";
  readonly description: string;
  readonly skewMs: number;
  /** The aggregator identity the verifying Totebox is paired with. */
  readonly aggregatorId: string;
  readonly keys: Readonly<Record<"operator" | "aggregator" | "stranger", VectorKey>>;
  /** What the Totebox trusts: operator key ids and the tenants each may grant. */
  readonly trustedOperators: ReadonlyArray<{ readonly keyId: string; readonly tenants: readonly string[] }>;
  readonly cases: readonly VectorCase[];
}

const seedOf = (label: string) =>
  new Uint8Array(createHash("sha256").update(`psp golden key: ${label}`).digest());
const ctiOf = (label: string) =>
  new Uint8Array(createHash("sha256").update(`psp golden cti: ${label}`).digest()).subarray(0, 16);
const hex = toHex;

function vectorKey(k: KeyObject): VectorKey {
  return { publicKey: hex(rawPublicKey(k)), keyId: keyIdOf(k) };
}

/** 2030-01-01T00:00:00Z. */
export const GOLDEN_T0_MS = Date.UTC(2030, 0, 1);

export function generateCapabilityVectors(): VectorFile {
  const operator = ed25519PrivateKeyFromSeed(seedOf("operator"));
  const aggregator = ed25519PrivateKeyFromSeed(seedOf("aggregator"));
  const stranger = ed25519PrivateKeyFromSeed(seedOf("stranger"));
  const clock = new ManualClock(GOLDEN_T0_MS);
  const skewMs = CAPABILITY_LIMITS.defaultSkewMs;
  const aggregatorId = "aggregator-1";
  const tb1 = { id: "tb-1", tags: { region: "west", kind: "property" } };
  const read = (view: string): CallRequest => ({ view, action: "read" });

  const grantWith = (label: string, over: Partial<Parameters<typeof issueGrant>[0]> = {}) =>
    issueGrant({
      operator: "alice",
      aggregatorId,
      aggregatorKey: aggregator,
      tenant: "acme",
      toteboxIds: ["tb-1", "tb-2"],
      toteboxSelectors: ["region=north,kind=holding"],
      views: ["position", "ledger"],
      actions: ["read", "approve-invoice"],
      lifetimeSeconds: 8 * 3600,
      cti: ctiOf(`grant ${label}`),
      signer: operator,
      clock,
      ...over,
    });
  const callUnder = (
    grant: Uint8Array,
    label: string,
    over: Partial<Parameters<typeof issueCallCapability>[0]> = {},
  ) =>
    issueCallCapability({
      grant,
      totebox: "tb-1",
      view: "position",
      action: "read",
      lifetimeSeconds: 60,
      cti: ctiOf(`call ${label}`),
      clock,
      signer: aggregator,
      ...over,
    });
  const flipBit = (token: Uint8Array, byteFromEnd: number, bit: number) => {
    const t = Uint8Array.from(token);
    t[t.length - byteFromEnd]! ^= 1 << bit;
    return t;
  };

  const grant = grantWith("main");
  const call = callUnder(grant, "main");
  const callClaims = decodeUnverified(call).claims;
  const grantClaims = decodeUnverified(grant).claims;
  if (callClaims.kind !== "call" || grantClaims.kind !== "grant") throw new Error("fixture kinds");

  const cases: VectorCase[] = [];
  const add = (c: Omit<VectorCase, "grant" | "capability"> & { grant: Uint8Array; capability: Uint8Array }) =>
    cases.push({ ...c, grant: hex(c.grant), capability: hex(c.capability) });
  const base = { clockMs: GOLDEN_T0_MS + 5_000, totebox: tb1, request: read("position") };

  add({
    name: "valid",
    description: "valid grant and call capability",
    grant,
    capability: call,
    ...base,
    expect: ["ok"],
  });
  add({
    name: "replayed",
    description: "the same call capability presented twice",
    grant,
    capability: call,
    ...base,
    expect: ["ok", "PSP_ERR_CAP_REPLAYED"],
  });
  add({
    name: "expired",
    description: "clock at the call's exp + skew",
    grant,
    capability: call,
    ...base,
    clockMs: callClaims.exp * 1000 + skewMs,
    expect: ["PSP_ERR_CAP_EXPIRED"],
  });
  add({
    name: "expired-grant",
    description: "clock at the grant's exp + skew (call issued to end with it)",
    grant,
    capability: callUnder(grant, "late", { notBefore: grantClaims.exp - 60 }),
    ...base,
    clockMs: grantClaims.exp * 1000 + skewMs,
    expect: ["PSP_ERR_CAP_EXPIRED"],
  });
  add({
    name: "not-yet-valid",
    description: "clock 1 ms before the call's nbf - skew",
    grant,
    capability: callUnder(grant, "future", { notBefore: grantClaims.nbf + 3600 }),
    ...base,
    clockMs: (grantClaims.nbf + 3600) * 1000 - skewMs - 1,
    expect: ["PSP_ERR_CAP_NOT_YET_VALID"],
  });
  add({
    name: "widened",
    description: "call names a view the grant does not list",
    grant,
    capability: callUnder(grant, "widened", { view: "payroll" }),
    ...base,
    request: read("payroll"),
    expect: ["PSP_ERR_CAP_SCOPE"],
  });
  add({
    name: "request-differs",
    description: "valid capability for 'position', request is for 'ledger'",
    grant,
    capability: call,
    ...base,
    request: read("ledger"),
    expect: ["PSP_ERR_CAP_SCOPE"],
  });
  add({
    name: "misdirected",
    description: "call capability for tb-2 presented to tb-1",
    grant,
    capability: callUnder(grant, "misdirected", { totebox: "tb-2" }),
    ...base,
    expect: ["PSP_ERR_CAP_AUDIENCE"],
  });
  add({
    name: "totebox-outside-grant",
    description: "call for tb-3, which the grant names neither by id nor by selector",
    grant,
    capability: callUnder(grant, "tb-3", { totebox: "tb-3" }),
    ...base,
    totebox: { id: "tb-3", tags: { region: "north", kind: "property" } },
    expect: ["PSP_ERR_CAP_SCOPE"],
  });
  add({
    name: "selector-match",
    description: "call for tb-9, reached through the selector region=north,kind=holding",
    grant,
    capability: callUnder(grant, "tb-9", { totebox: "tb-9" }),
    ...base,
    totebox: { id: "tb-9", tags: { region: "north", kind: "holding", city: "Oslo" } },
    expect: ["ok"],
  });
  add({
    name: "command",
    description: "command call: action is the command name, listed in the grant's actions",
    grant,
    capability: callUnder(grant, "command", {
      view: undefined,
      command: "approve-invoice",
      action: "approve-invoice",
    }),
    ...base,
    request: { command: "approve-invoice", action: "approve-invoice" },
    expect: ["ok"],
  });
  const globex = grantWith("globex", { tenant: "globex" });
  add({
    name: "wrong-tenant",
    description: "grant for tenant globex by an operator trusted for acme only",
    grant: globex,
    capability: callUnder(globex, "globex"),
    ...base,
    expect: ["PSP_ERR_CAP_ISSUER"],
  });
  const strangerGrant = grantWith("stranger", { signer: stranger });
  add({
    name: "unknown-operator",
    description: "grant signed by a key the Totebox does not trust",
    grant: strangerGrant,
    capability: callUnder(strangerGrant, "stranger"),
    ...base,
    expect: ["PSP_ERR_CAP_ISSUER"],
  });
  add({
    name: "forged-signature",
    description: "call capability with one bit of its signature flipped",
    grant,
    capability: flipBit(call, 7, 3),
    ...base,
    expect: ["PSP_ERR_CAP_SIGNATURE"],
  });
  add({
    name: "forged-grant-signature",
    description: "grant with one bit of its signature flipped",
    grant: flipBit(grant, 20, 0),
    capability: call,
    ...base,
    expect: ["PSP_ERR_CAP_SIGNATURE"],
  });
  const otherAgg = grantWith("other-aggregator", { aggregatorId: "aggregator-2" });
  add({
    name: "wrong-audience",
    description: "grant addressed to aggregator-2; this Totebox is paired with aggregator-1",
    grant: otherAgg,
    capability: callUnder(otherAgg, "other-aggregator"),
    ...base,
    expect: ["PSP_ERR_CAP_AUDIENCE"],
  });
  add({
    name: "call-lifetime-too-long",
    description: "call capability valid for 300 s (limit 120 s)",
    grant,
    capability: signCapabilityClaims(
      { ...callClaims, cti: ctiOf("call long"), exp: callClaims.nbf + 300 },
      aggregator,
    ),
    ...base,
    expect: ["PSP_ERR_CAP_LIFETIME"],
  });
  const longGrant = signCapabilityClaims(
    { ...grantClaims, cti: ctiOf("grant long"), exp: grantClaims.nbf + 13 * 3600 },
    operator,
  );
  add({
    name: "grant-lifetime-too-long",
    description: "grant valid for 13 h (limit 12 h)",
    grant: longGrant,
    capability: callUnder(longGrant, "long grant"),
    ...base,
    expect: ["PSP_ERR_CAP_LIFETIME"],
  });
  add({
    name: "grant-mismatch",
    description: "call capability derived from another grant than the one presented",
    grant: grantWith("other"),
    capability: call,
    ...base,
    expect: ["PSP_ERR_CAP_GRANT_MISMATCH"],
  });
  add({
    name: "wrong-signer",
    description: "call capability signed by a key other than the aggregator key the grant names",
    grant,
    capability: signCapabilityClaims(
      { ...callClaims, iss: keyIdOf(stranger), cti: ctiOf("call stranger") },
      stranger,
    ),
    ...base,
    expect: ["PSP_ERR_CAP_GRANT_MISMATCH"],
  });

  const batch = issueCallCapabilityBatch(
    ["tb-1", "tb-2", "tb-9"].map((totebox) => ({
      grant,
      totebox,
      view: "position",
      action: "read",
      lifetimeSeconds: 60,
      cti: ctiOf(`batch ${totebox}`),
      clock,
    })),
    aggregator,
  );
  add({
    name: "batch-ok",
    description: "leaf 0 of a batch of 3 sharing one signature over a Merkle root",
    grant,
    capability: batch[0]!,
    ...base,
    expect: ["ok", "PSP_ERR_CAP_REPLAYED"],
  });
  add({
    name: "batch-ok-last-leaf",
    description: "leaf 2 of the same batch",
    grant,
    capability: batch[2]!,
    ...base,
    totebox: { id: "tb-9", tags: { region: "north", kind: "holding" } },
    expect: ["ok"],
  });
  add({
    name: "batch-misdirected",
    description: "batch leaf for tb-2 presented to tb-1",
    grant,
    capability: batch[1]!,
    ...base,
    expect: ["PSP_ERR_CAP_AUDIENCE"],
  });
  add({
    name: "batch-tampered-path",
    description: "batch leaf 0 with one bit of its inclusion path flipped",
    grant,
    capability: tamperBatch(batch[0]!, (index, path) => {
      path[0]![3]! ^= 0x10;
      return index;
    }),
    ...base,
    expect: ["PSP_ERR_CAP_SIGNATURE"],
  });
  add({
    name: "batch-tampered-index",
    description: "batch leaf 0 claiming leaf index 1",
    grant,
    capability: tamperBatch(batch[0]!, () => 1),
    ...base,
    expect: ["PSP_ERR_CAP_SIGNATURE"],
  });

  const aggKey = vectorKey(aggregator);
  return {
    format: "psp-capability-vectors/1",
    description:
      "Golden PSP capability vectors: COSE_Sign1/EdDSA over CWT claims. See docs/psp-capabilities.md. " +
      "Generated by packages/psp/test-vectors/generate.ts; do not edit by hand.",
    skewMs,
    aggregatorId,
    keys: { operator: vectorKey(operator), aggregator: aggKey, stranger: vectorKey(stranger) },
    trustedOperators: [{ keyId: keyIdOf(operator), tenants: ["acme"] }],
    cases,
  };
}

/** Re-encodes a batch token with an edited leaf index / path (the fields that are not signed). */
function tamperBatch(token: Uint8Array, edit: (index: number, path: Uint8Array[]) => number): Uint8Array {
  const t = decodeCbor(token) as Tag;
  const parts = [...(t.value as unknown[])];
  const u = new Map(parts[1] as Map<number, unknown>);
  const path = (u.get(BATCH_HEADER.path) as Uint8Array[]).map((h) => Uint8Array.from(h));
  u.set(BATCH_HEADER.leafIndex, edit(u.get(BATCH_HEADER.leafIndex) as number, path));
  u.set(BATCH_HEADER.path, path);
  parts[1] = u;
  return encodeCbor(new Tag(parts, t.tag));
}

/**
 * The exact text of capabilities.json: two-space JSON laid out the way the repository's formatter
 * (Biome) lays it out, objects expanded and arrays of scalars on one line when they fit in 110
 * columns, so `biome check --write` leaves the generated file unchanged.
 */
export function renderCapabilityVectors(): string {
  const LINE_WIDTH = 110;
  const render = (value: unknown, indent: string, prefixLength: number): string => {
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    const inner = `${indent}  `;
    if (Array.isArray(value)) {
      if (value.length === 0) return "[]";
      if (value.every((v) => v === null || typeof v !== "object")) {
        const flat = `[${value.map((v) => JSON.stringify(v)).join(", ")}]`;
        // +1 for a trailing comma the line may carry.
        if (prefixLength + flat.length + 1 <= LINE_WIDTH) return flat;
      }
      return `[\n${value.map((v) => inner + render(v, inner, inner.length)).join(",\n")}\n${indent}]`;
    }
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    if (entries.length === 0) return "{}";
    const lines = entries.map(([k, v]) => {
      const key = `${JSON.stringify(k)}: `;
      return inner + key + render(v, inner, inner.length + key.length);
    });
    return `{\n${lines.join(",\n")}\n${indent}}`;
  };
  return `${render(generateCapabilityVectors(), "", 0)}\n`;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const out = fileURLToPath(new URL("./capabilities.json", import.meta.url));
  writeFileSync(out, renderCapabilityVectors());
  console.log(`wrote ${out}`);
}
