import { createHash, type KeyObject } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  CAPABILITY_LIMITS,
  type CallClaims,
  type CallInput,
  capabilityCodecsForTest,
  issueCallCapability,
  issueCallCapabilityBatch,
  issueGrant,
  keyIdOf,
  parseClaims,
} from "./capability.ts";
import { ManualClock } from "./clock.ts";
import { decodeCbor, ed25519PrivateKeyFromSeed, encodeCbor, encodeSign1 } from "./cose.ts";
import { PspError } from "./errors.ts";

/**
 * The call capability's direct codecs (capability.ts, built on direct-cbor.ts) against the generic
 * ones they stand in for: the writer emits exactly cbor-x's bytes; the readers accept a subset of
 * what the generic checks accept, with the same result. Reproduce a failure with FC_SEED=<seed>.
 */
const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);

const codecs = capabilityCodecsForTest;
const seedKey = (label: string): KeyObject =>
  ed25519PrivateKeyFromSeed(new Uint8Array(createHash("sha256").update(label).digest()));
const operatorKey = seedKey("codecs operator");
const aggregatorKey = seedKey("codecs aggregator");

// Each field mostly valid (so most claims are written and read back), sometimes not.
/** Characters of the Basic Multilingual Plane outside the surrogate range (one UTF-16 unit each). */
const bmpChar = fc
  .oneof(fc.integer({ min: 0x20, max: 0xd7ff }), fc.integer({ min: 0xe000, max: 0xffff }))
  .map((c) => String.fromCharCode(c));
const validText = fc.oneof(
  fc.string({ minLength: 1, maxLength: 40 }),
  fc.string({ minLength: 1, maxLength: 40, unit: bmpChar }),
  // Around the 23/24 and 255/256 head widths and the 256-byte limit.
  fc.constantFrom("x".repeat(23), "x".repeat(24), "x".repeat(255), "x".repeat(256), "é".repeat(128)),
);
const oddText = fc.oneof(
  fc.string({ minLength: 0, maxLength: 300, unit: "binary" }),
  fc.string({ minLength: 1, maxLength: 40, unit: "grapheme" }),
  // Over the limit; a BOM; lone and paired surrogates (the writer leaves every surrogate to the
  // generic encoder); empty.
  fc.constantFrom("x".repeat(257), "é".repeat(129), "\uFEFFbom", "a\uD800b", "\uD83D\uDE00", ""),
);
const text = fc.oneof({ weight: 12, arbitrary: validText }, { weight: 1, arbitrary: oddText });
const hexKeyId = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString("hex"));
const seconds = fc.oneof(
  { weight: 12, arbitrary: fc.oneof(fc.nat(30), fc.integer({ min: 0, max: 0xffffffff })) },
  { weight: 2, arbitrary: fc.constantFrom(23, 24, 255, 256, 65535, 65536, 0xffffffff) },
  { weight: 1, arbitrary: fc.constantFrom(2 ** 32, -1, 1.5, Number.NaN) },
);

const claimsArb: fc.Arbitrary<CallClaims> = fc
  .record({
    iss: fc.oneof({ weight: 12, arbitrary: hexKeyId }, { weight: 1, arbitrary: text }),
    sub: text,
    aud: text,
    exp: seconds,
    nbf: seconds,
    iat: seconds,
    cti: fc.oneof(
      { weight: 12, arbitrary: fc.uint8Array({ minLength: 8, maxLength: 64 }) },
      { weight: 1, arbitrary: fc.uint8Array({ minLength: 0, maxLength: 70 }) },
    ),
    tenant: text,
    which: fc.oneof(
      { weight: 8, arbitrary: fc.constant("view") },
      { weight: 4, arbitrary: fc.constant("command") },
      { weight: 1, arbitrary: fc.constantFrom("both", "neither") },
    ),
    name: text,
    row: fc.option(text, { nil: undefined }),
    action: text,
    grantHash: fc.oneof(
      { weight: 12, arbitrary: fc.uint8Array({ minLength: 32, maxLength: 32 }) },
      { weight: 1, arbitrary: fc.uint8Array({ minLength: 31, maxLength: 33 }) },
    ),
  })
  .map(({ which, name, ...c }) => ({
    kind: "call" as const,
    ...c,
    view: which === "view" || which === "both" ? name : undefined,
    command: which === "command" || which === "both" ? name : undefined,
  }));

/** The generic path's answer: its bytes or claims, or the refusal's code. */
function attempt<T>(f: () => T): T | string {
  try {
    return f();
  } catch (e) {
    if (e instanceof PspError) return e.code;
    throw e;
  }
}

const sameBytes = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));
const hasSurrogate = (c: CallClaims) =>
  [c.iss, c.sub, c.aud, c.tenant, c.view, c.command, c.row, c.action].some(
    (s) => typeof s === "string" && /[\uD800-\uDFFF]/.test(s),
  );
const startsWithBom = (c: CallClaims) =>
  [c.sub, c.aud, c.tenant, c.view, c.command, c.row, c.action].some((s) => s?.startsWith("\uFEFF"));

/** Valid call claims with small times (one-byte and two-byte heads) for hand-made layouts. */
const base: CallClaims = {
  kind: "call",
  iss: "ab".repeat(32),
  sub: "alice",
  aud: "tb-1",
  exp: 100,
  nbf: 3,
  iat: 3,
  cti: new Uint8Array(16).fill(9),
  tenant: "acme",
  view: "position",
  command: undefined,
  row: undefined,
  action: "read",
  grantHash: new Uint8Array(32).fill(5),
};

describe("call claims: the direct writer and reader agree with the generic codec", () => {
  it("the writer emits exactly the generic encoder's bytes, and declines only what it must", () => {
    let written = 0;
    fc.assert(
      fc.property(claimsArb, (c) => {
        const direct = codecs.writeCallPayload(c);
        const generic = attempt(() => codecs.encodeClaimsGeneric(c));
        if (direct === undefined) {
          // Declined: the generic encoder refuses these claims too, or they hold a surrogate.
          expect(typeof generic === "string" || hasSurrogate(c)).toBe(true);
          return;
        }
        written++;
        expect(generic).toBeInstanceOf(Uint8Array);
        expect(sameBytes(direct, generic as Uint8Array)).toBe(true);
        // Read back: the direct reader returns the claims unchanged (text with a leading BOM is
        // left to the generic parser, which cbor-x's BOM handling decides), as the generic one does.
        const read = codecs.readCallPayload(direct);
        if (read === undefined) expect(startsWithBom(c)).toBe(true);
        else expect(read).toStrictEqual(c);
        if (!startsWithBom(c)) expect(attempt(() => codecs.parseClaimsGeneric(direct))).toStrictEqual(c);
      }),
      { seed, numRuns: 3000 },
    );
    // The property must not pass by declining everything.
    expect(written).toBeGreaterThan(600);
  });

  it("whatever the direct reader accepts, the generic parser accepts with the same claims", () => {
    const valid = claimsArb.filter((c) => codecs.writeCallPayload(c) !== undefined);
    const payload = (c: CallClaims) => codecs.writeCallPayload(c)!;
    const variants = fc.oneof(
      // The issuer's bytes with bytes replaced, or cut short.
      fc
        .tuple(valid, fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 3 }))
        .map(([c, edits]) => {
          const p = Uint8Array.from(payload(c));
          for (const [i, v] of edits) p[i % p.byteLength] = v;
          return p;
        }),
      fc.tuple(valid, fc.nat()).map(([c, n]) => {
        const p = payload(c);
        return p.subarray(0, n % p.byteLength);
      }),
      // Maps in another key order, with a value of another type, or with a label added.
      fc.tuple(valid, fc.boolean(), fc.anything(), fc.boolean()).map(([c, reverse, odd, extra]) => {
        const entries = [...(decodeCbor(payload(c)) as Map<number, unknown>)];
        if (reverse) entries.reverse();
        if (odd !== undefined) entries[0] = [entries[0]![0], odd];
        if (extra) entries.push([-99, "x"]);
        try {
          return encodeCbor(new Map(entries));
        } catch {
          return payload(c);
        }
      }),
    );
    let accepted = 0;
    fc.assert(
      fc.property(variants, (p) => {
        const direct = codecs.readCallPayload(p);
        if (direct === undefined) return;
        accepted++;
        expect(attempt(() => codecs.parseClaimsGeneric(p))).toStrictEqual(direct);
      }),
      { seed, numRuns: 3000 },
    );
    expect(accepted).toBeGreaterThan(100);
  });

  it("claims are copies: cti and grant hash are never views into the payload, Buffer or not", () => {
    const clock = new ManualClock(Date.UTC(2030, 0, 1));
    const token = issueCallCapabilityBatch([callInput(clock)], aggregatorKey)[0]!;
    const view = codecs.readBatchEnvelope(token)!.payload;
    for (const payload of [Buffer.from(view), new Uint8Array(view)]) {
      const claims = parseClaims(payload) as CallClaims;
      expect(Object.getPrototypeOf(claims.cti)).toBe(Uint8Array.prototype);
      expect(Object.getPrototypeOf(claims.grantHash)).toBe(Uint8Array.prototype);
      const before = [Buffer.from(claims.cti).toString("hex"), Buffer.from(claims.grantHash).toString("hex")];
      payload.fill(0);
      expect([
        Buffer.from(claims.cti).toString("hex"),
        Buffer.from(claims.grantHash).toString("hex"),
      ]).toEqual(before);
    }
  });

  // Hand-made layouts the properties above rarely or never produce (claims: `base`, below).
  /** `payload` with the bytes `find` (first occurrence) replaced by `put`. */
  const splice = (payload: Uint8Array, find: number[], put: number[]): Uint8Array => {
    const at = Buffer.from(payload).indexOf(Buffer.from(find));
    expect(at).toBeGreaterThan(0);
    return Uint8Array.from([...payload.subarray(0, at), ...put, ...payload.subarray(at + find.length)]);
  };
  /** Both paths refuse: the direct reader declines, the generic parser says malformed. */
  const bothRefuse = (p: Uint8Array) => {
    expect(codecs.readCallPayload(p)).toBeUndefined();
    expect(attempt(() => codecs.parseClaimsGeneric(p))).toBe("PSP_ERR_CAP_MALFORMED");
  };

  it("a head longer than its shortest form is refused by both paths", () => {
    const p = codecs.writeCallPayload(base)!;
    expect(codecs.readCallPayload(p)).toStrictEqual(base);
    bothRefuse(splice(p, [0x05, 0x03], [0x05, 0x18, 0x03])); // nbf 3 in two bytes
    bothRefuse(splice(p, [0x04, 0x18, 100], [0x04, 0x19, 0x00, 100])); // exp 100 in three
    bothRefuse(splice(p, [0x04, 0x18, 100], [0x04, 0x1a, 0, 0, 0, 100])); // ... in five
    bothRefuse(splice(p, [0x02, 0x65], [0x02, 0x78, 0x05])); // "alice" with a two-byte head
    bothRefuse(splice(p, [0x07, 0x50], [0x07, 0x58, 0x10])); // a 16-byte cti likewise
  });

  it("a map count that does not match the entries is refused by both paths", () => {
    const p = codecs.writeCallPayload(base)!;
    expect(p[0]).toBe(0xac);
    bothRefuse(Uint8Array.from([0xad, ...p.subarray(1)]));
    const withRow = codecs.writeCallPayload({ ...base, row: "unit-7" })!;
    expect(withRow[0]).toBe(0xad);
    expect(codecs.readCallPayload(withRow)).toStrictEqual({ ...base, row: "unit-7" });
    bothRefuse(Uint8Array.from([0xac, ...withRow.subarray(1)]));
  });

  it("text with a leading BOM, short or long, is left to the generic parser", () => {
    for (const sub of ["\uFEFFbom", `\uFEFF${"é".repeat(100)}`, `\uFEFF${"x".repeat(200)}`]) {
      const p = codecs.writeCallPayload({ ...base, sub })!;
      expect(p).toBeDefined();
      expect(codecs.readCallPayload(p)).toBeUndefined();
    }
  });

  it("anything but bytes is declined, never thrown on", () => {
    for (const v of [[0xac], "0xac", null, undefined, 7, {}]) {
      expect(codecs.readCallPayload(v as never)).toBeUndefined();
      expect(codecs.readBatchEnvelope(v as never)).toBeUndefined();
    }
  });
});

function callInput(clock: ManualClock, totebox = "tb-1", operator = "alice"): CallInput {
  const grant = issueGrant({
    operator,
    aggregatorId: "aggregator-1",
    aggregatorKey,
    tenant: "acme",
    toteboxIds: ["tb-1"],
    toteboxSelectors: ["region=west"],
    views: ["position"],
    actions: ["read"],
    signer: operatorKey,
    clock,
  });
  return { grant, totebox, view: "position", action: "read", clock };
}

describe("batch envelope: the direct reader agrees with the generic decoder", () => {
  const same = (
    a: ReturnType<typeof codecs.readBatchEnvelope>,
    b: ReturnType<typeof codecs.decodeEnvelopeGeneric>,
  ) => {
    expect(a).toBeDefined();
    expect(sameBytes(a!.protectedBytes, b.protectedBytes)).toBe(true);
    expect(sameBytes(a!.payload, b.payload)).toBe(true);
    expect(sameBytes(a!.signature, b.signature)).toBe(true);
    expect(a!.kid).toBe(b.kid);
    expect(a!.batch!.index).toBe(b.batch!.index);
    expect(a!.batch!.size).toBe(b.batch!.size);
    expect(a!.batch!.path.map((h) => Buffer.from(h).toString("hex"))).toEqual(
      b.batch!.path.map((h) => Buffer.from(h).toString("hex")),
    );
  };

  it("reads every token of batches of 1 to 1,100 exactly as the generic decoder does", () => {
    const clock = new ManualClock(Date.UTC(2030, 0, 1));
    const input = callInput(clock);
    for (const n of [1, 2, 3, 23, 24, 255, 256, 1100]) {
      const tokens = issueCallCapabilityBatch(new Array(n).fill(input), aggregatorKey);
      for (const i of new Set([0, 1, n >> 1, n - 2, n - 1].filter((i) => i >= 0 && i < n))) {
        same(codecs.readBatchEnvelope(tokens[i]!), codecs.decodeEnvelopeGeneric(tokens[i]!, true));
        expect(codecs.readBatchEnvelope(tokens[i]!)!.kid).toBe(keyIdOf(aggregatorKey));
      }
    }
  });

  it("the issuer writes each batch token in exactly encodeSign1's bytes", () => {
    const sig = new Uint8Array(64).fill(7);
    const prot = new Uint8Array(53).fill(1);
    fc.assert(
      fc.property(
        fc.nat(2 ** 20),
        fc.array(fc.uint8Array({ minLength: 32, maxLength: 32 }), { maxLength: 21 }),
        fc.uint8Array({ minLength: 0, maxLength: 300 }),
        (index, path, payload) => {
          const direct = codecs.writeBatchToken(prot, index, path, payload, sig);
          const parts = { protectedBytes: prot, payload, signature: sig };
          const generic = encodeSign1({
            ...parts,
            unprotectedBytes: codecs.batchUnprotectedBytes(index, path),
          });
          expect(sameBytes(direct, generic)).toBe(true);
        },
      ),
      { seed, numRuns: 500 },
    );
  });

  it("header fields at and past their limits: the direct reader takes exactly what the generic one takes", () => {
    const kid = new Uint8Array(32).fill(3);
    const sig = new Uint8Array(64).fill(7);
    const payload = codecs.writeCallPayload(base)!;
    const hashes = (n: number) => Array.from({ length: n }, () => new Uint8Array(32).fill(1));
    const token = (size: number, index: number, path: Uint8Array[], body = payload) =>
      codecs.writeBatchToken(codecs.batchProtectedBytes(kid, size), index, path, body, sig);
    const accepted = [
      token(2 ** 20, 2 ** 20 - 1, hashes(20)), // the largest batch, its last leaf
      token(1000, 2 ** 31 - 1, hashes(3)), // an index no tree of this size has: the proof fails later
      token(1000, 0, hashes(64)), // the longest path a header may carry
    ];
    for (const t of accepted) same(codecs.readBatchEnvelope(t), codecs.decodeEnvelopeGeneric(t, true));
    const refused = [
      token(2 ** 20 + 1, 0, hashes(21)), // a tree larger than a batch may be
      token(0, 0, []), // an empty tree
      token(1000, 2 ** 31, hashes(3)), // an index past MAX_TREE_SIZE
      token(1000, 0, hashes(65)), // one hash too many
      token(1000, 0, hashes(10), new Uint8Array(CAPABILITY_LIMITS.maxTokenBytes)), // too large a token
    ];
    for (const t of refused) {
      expect(codecs.readBatchEnvelope(t)).toBeUndefined();
      expect(attempt(() => codecs.decodeEnvelopeGeneric(t, true))).toBe("PSP_ERR_CAP_MALFORMED");
    }
  });

  it("leaves single-signature tokens to the generic decoder", () => {
    const clock = new ManualClock(Date.UTC(2030, 0, 1));
    const token = issueCallCapability({ ...callInput(clock), signer: aggregatorKey });
    expect(codecs.readBatchEnvelope(token)).toBeUndefined();
    expect(codecs.decodeEnvelopeGeneric(token, true).batch).toBeUndefined();
  });

  it("wherever a flipped bit or a cut still reads directly, the generic decoder agrees", () => {
    const clock = new ManualClock(Date.UTC(2030, 0, 1));
    const tokens = issueCallCapabilityBatch(new Array(300).fill(callInput(clock)), aggregatorKey);
    const token = tokens[137]!;
    let stillDirect = 0;
    for (let bit = 0; bit < token.byteLength * 8; bit++) {
      const t = Uint8Array.from(token);
      t[bit >> 3]! ^= 1 << (bit & 7);
      const d = codecs.readBatchEnvelope(t);
      if (d === undefined) continue;
      stillDirect++;
      same(d, codecs.decodeEnvelopeGeneric(t, true));
    }
    // Flips inside the kid, hashes, payload and signature keep the layout: they must be compared.
    expect(stillDirect).toBeGreaterThan(token.byteLength * 4);
    for (let n = 0; n < token.byteLength; n++)
      expect(codecs.readBatchEnvelope(token.subarray(0, n))).toBeUndefined();
    const longer = new Uint8Array(token.byteLength + 1);
    longer.set(token);
    expect(codecs.readBatchEnvelope(longer)).toBeUndefined();
  });
});

describe("batch payloads: written around the first input's bytes, exactly as one by one", () => {
  // A batch writes each input that differs from the first only in Totebox id and cti around the
  // first payload's bytes; any other input on its own. Either way each payload must be exactly
  // what issuing that input alone writes (the clock is fixed, so iat is too).
  // Bases whose times and operator take every head width the template's cut must step over:
  // iat/nbf/exp below 24, below 256, below 65,536 and above, and an operator id (sub) of 5, 24
  // and 256 bytes.
  const bases = [10_000, 200_000, 60_000_000, Date.UTC(2030, 0, 1)].flatMap((ms) =>
    ["alice", "x".repeat(24), "o".repeat(256)].map((operator) => {
      const clock = new ManualClock(ms);
      return {
        base: callInput(clock, "tb-1", operator),
        otherGrant: callInput(clock, "tb-1", operator).grant,
      };
    }),
  );
  const inputArb = (base: CallInput, otherGrant: Uint8Array): fc.Arbitrary<CallInput> =>
    fc
      .record({
        totebox: text,
        cti: fc.option(
          fc.oneof(
            { weight: 8, arbitrary: fc.uint8Array({ minLength: 8, maxLength: 64 }) },
            { weight: 1, arbitrary: fc.uint8Array({ minLength: 0, maxLength: 70 }) },
          ),
          { nil: undefined },
        ),
        shape: fc.constantFrom("same", "same", "same", "row", "grant", "lifetime", "command", "later"),
      })
      .map(({ totebox, cti, shape }) => ({
        ...base,
        totebox,
        ...(cti !== undefined ? { cti } : {}),
        ...(shape === "row" ? { row: "r-1" } : {}),
        ...(shape === "grant" ? { grant: otherGrant } : {}),
        ...(shape === "lifetime" ? { lifetimeSeconds: 30 } : {}),
        ...(shape === "command" ? { view: undefined, command: "settle" } : {}),
        ...(shape === "later" ? { notBefore: Math.floor(base.clock.now() / 1000) + 5 } : {}),
      }));
  const batchArb = fc
    .constantFrom(...bases)
    .chain(({ base, otherGrant }) => fc.array(inputArb(base, otherGrant), { minLength: 1, maxLength: 12 }));
  const payloadOf = (token: Uint8Array) => codecs.decodeEnvelopeGeneric(token, true).payload;

  it("every payload equals the one issuing its input alone writes, or the batch is refused as that input is (property)", () => {
    let batches = 0;
    fc.assert(
      fc.property(batchArb, (inputs) => {
        // Alone, with the cti the batch would draw (any 16 bytes: their value changes no check).
        const alone = (input: CallInput, cti = input.cti ?? new Uint8Array(16)) =>
          attempt(() => payloadOf(issueCallCapability({ ...input, cti, signer: aggregatorKey })));
        const batch = attempt(() => issueCallCapabilityBatch(inputs, aggregatorKey));
        if (typeof batch === "string") {
          // Refused: with the code the first refused input gets on its own.
          expect(batch).toBe(inputs.map((input) => alone(input)).find((a) => typeof a === "string"));
          return;
        }
        batches++;
        batch.forEach((token, i) => {
          const payload = payloadOf(token);
          const claims = parseClaims(payload) as CallClaims;
          expect(claims.aud).toBe(inputs[i]!.totebox);
          if (inputs[i]!.cti !== undefined) expect(sameBytes(claims.cti, inputs[i]!.cti!)).toBe(true);
          const expected = alone(inputs[i]!, claims.cti) as Uint8Array;
          expect(Buffer.from(payload).toString("hex")).toBe(Buffer.from(expected).toString("hex"));
        });
      }),
      { seed, numRuns: 400 },
    );
    expect(batches).toBeGreaterThan(150);
  });

  it("a batch's ctis are fresh and distinct where none is given, and kept where one is", () => {
    const base = bases[0]!.base;
    const given = new Uint8Array(16).fill(7);
    const tokens = issueCallCapabilityBatch(
      [base, { ...base, totebox: "tb-2", cti: given }, { ...base, totebox: "tb-3" }],
      aggregatorKey,
    );
    const ctis = tokens.map((t) =>
      Buffer.from((parseClaims(payloadOf(t)) as CallClaims).cti).toString("hex"),
    );
    expect(ctis[1]).toBe(Buffer.from(given).toString("hex"));
    expect(new Set(ctis).size).toBe(3);
  });
});
