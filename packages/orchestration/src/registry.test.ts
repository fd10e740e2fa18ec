import { execFileSync } from "node:child_process";
import { createHash, createPrivateKey, createPublicKey, KeyObject } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { rename, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { keyIdOfPublicKey, keyIdOfRaw, selectorMatches } from "@os-orchestration/psp";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { OrchError } from "./errors.ts";
import {
  diffRegistry,
  loadRegistry,
  parseRegistry,
  type Registry,
  type RegistryDiff,
  type RegistryParseInfo,
  selectorsValid,
  type WatchRegistryOptions,
  watchRegistry,
} from "./registry.ts";

/**
 * `actual` deep-equals `expected`, including prototypes (a prototype-free tags object is not a plain one),
 * frozenness, Map entries, typed-array bytes and KeyObjects, and which objects are shared: where
 * `expected` reaches one object by two paths, `actual` must too.
 */
function expectSameValue(expected: unknown, actual: unknown): void {
  const pairs = new Map<object, object>();
  const back = new Map<object, object>();
  const walk = (x: unknown, y: unknown, path: string): void => {
    if (typeof x !== "object" || x === null || typeof y !== "object" || y === null) {
      expect(y, path).toStrictEqual(x);
      return;
    }
    // Both ways: what one shares the other shares, and nothing more.
    const seen = pairs.get(x);
    const seenBack = back.get(y);
    if (seen !== undefined || seenBack !== undefined) {
      expect(seen === y && seenBack === x, `${path}: shared in one, not in the other`).toBe(true);
      return;
    }
    pairs.set(x, y);
    back.set(y, x);
    expect(Object.getPrototypeOf(y), `${path}: prototype`).toBe(Object.getPrototypeOf(x));
    expect(Object.isFrozen(y), `${path}: frozen`).toBe(Object.isFrozen(x));
    if (x instanceof KeyObject) {
      expect(x.equals(y as KeyObject), `${path}: key`).toBe(true);
      return;
    }
    if (ArrayBuffer.isView(x)) {
      expect(Buffer.from(y as Uint8Array).equals(Buffer.from(x as Uint8Array)), `${path}: bytes`).toBe(true);
      return;
    }
    if (x instanceof Map) {
      const ym = y as Map<unknown, unknown>;
      expect([...ym.keys()], `${path}: keys`).toEqual([...x.keys()]);
      for (const [k, v] of x) walk(v, ym.get(k), `${path}.get(${String(k)})`);
      return;
    }
    expect(Reflect.ownKeys(y), `${path}: keys`).toEqual(Reflect.ownKeys(x));
    for (const k of Reflect.ownKeys(x)) {
      walk(
        (x as Record<PropertyKey, unknown>)[k],
        (y as Record<PropertyKey, unknown>)[k],
        `${path}.${String(k)}`,
      );
    }
  };
  walk(expected, actual, "registry");
}

/** Reproduce a property failure with FC_SEED=<logged seed>. */
const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
console.log("fast-check seed", seed);

// ---------------------------------------------------------------------------------------------
// Fixtures: deterministic keys and fingerprints, and a fleet file whose line numbers the tests name.

const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

/** Raw Ed25519 public key of the private key whose 32-byte seed is `byte` repeated. */
function rawPublicKey(byte: number): Buffer {
  const privateKey = createPrivateKey({
    key: Buffer.concat([PKCS8_ED25519_PREFIX, Buffer.alloc(32, byte)]),
    format: "der",
    type: "pkcs8",
  });
  const jwk = createPublicKey(privateKey).export({ format: "jwk" });
  return Buffer.from(String(jwk.x), "base64url");
}

const ALICE_KEY = rawPublicKey(1);
const BOB_KEY = rawPublicKey(2);
const FP1 = "a1".repeat(32);
const FP2 = "b2".repeat(32);
/** Only digits: YAML's core schema reads this as a float; the registry must keep the text. */
const FP3 = "0123456789".repeat(7).slice(0, 64);

const BASE_LINES = [
  /* 1 */ "version: 1",
  /* 2 */ "aggregator:",
  /* 3 */ "  listen: { host: 127.0.0.1, port: 7700 }",
  /* 4 */ '  http: { host: "::1", port: 7701 }',
  /* 5 */ "tenants:",
  /* 6 */ '  acme: { name: "Acme Holdings", max_concurrent_fanouts: 4 }',
  /* 7 */ "  beta: {}",
  /* 8 */ "  gamma:",
  /* 9 */ "toteboxes:",
  /* 10 */ "  - id: prop-001",
  /* 11 */ '    name: "Harbour House"',
  /* 12 */ "    address: 127.0.0.1:7801",
  /* 13 */ `    fingerprint: ${FP1.toUpperCase().match(/../g)!.join(":")}`,
  /* 14 */ "    tags: &west { region: west, kind: property, portfolio: core }",
  /* 15 */ "    state: active",
  /* 16 */ "    tenants: [acme, beta]",
  /* 17 */ "  - id: prop-002",
  /* 18 */ '    address: "[::1]:7802"',
  /* 19 */ `    fingerprint: ${FP2}`,
  /* 20 */ "    tags: *west",
  /* 21 */ "    state: suspended",
  /* 22 */ "    tenants: [acme]",
  /* 23 */ '  - id: "007"',
  /* 24 */ "    address: tote-7.example.com:7803",
  /* 25 */ `    fingerprint: ${FP3}`,
  /* 26 */ "    tags: { year: 2024, region: east }",
  /* 27 */ "operators:",
  /* 28 */ "  - id: alice",
  /* 29 */ `    public_key: ${ALICE_KEY.toString("hex")}`,
  /* 30 */ "    tenant: acme",
  /* 31 */ "    role: manager",
  /* 32 */ "  - id: bob",
  /* 33 */ `    public_key: ${BOB_KEY.toString("base64url")}`,
  /* 34 */ "    tenant: beta",
  /* 35 */ "    role: viewer",
  /* 36 */ "viewports:",
  /* 37 */ '  my-view: { view: position, targets: { tags: "region=west" }, combine: "select 1" }',
];
const BASE = `${BASE_LINES.join("\n")}\n`;

/** BASE with line `n` (1-based) replaced; `expected` guards against the fixture drifting. */
function edit(n: number, expected: string, replacement: string | null, base: string = BASE): string {
  const lines = base.split("\n");
  const old = lines[n - 1];
  if (old === undefined || !old.includes(expected))
    throw new Error(`fixture line ${n} is ${old}, not ${expected}`);
  if (replacement === null) lines.splice(n - 1, 1);
  else lines[n - 1] = replacement;
  return lines.join("\n");
}

function errorOf(fn: () => unknown): OrchError {
  try {
    fn();
  } catch (e) {
    if (e instanceof OrchError) return e;
    throw new Error(`expected an OrchError, got ${String(e)}`, { cause: e });
  }
  throw new Error("expected an OrchError, nothing was thrown");
}

async function errorOfAsync(fn: () => Promise<unknown>): Promise<OrchError> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof OrchError) return e;
    throw new Error(`expected an OrchError, got ${String(e)}`, { cause: e });
  }
  throw new Error("expected an OrchError, nothing was thrown");
}

/** Asserts code, line and (when given) path of the refusal of `text`. */
function expectRefused(
  text: string,
  code: string,
  line: number,
  path?: string,
  limits?: Parameters<typeof parseRegistry>[1],
): OrchError {
  const e = errorOf(() => parseRegistry(text, limits));
  expect({ code: e.code, line: e.detail?.line }).toEqual({ code, line });
  if (path !== undefined) expect(e.detail?.path).toBe(path);
  expect(e.message).toContain(`<inline>:${line}:`);
  return e;
}

const sha256 = (s: string | Buffer) => createHash("sha256").update(s).digest("hex");

const CONFIG_CODES = new Set([
  "ORCH_ERR_CONFIG_READ",
  "ORCH_ERR_CONFIG_TOO_LARGE",
  "ORCH_ERR_CONFIG_SYNTAX",
  "ORCH_ERR_CONFIG_INVALID",
]);

const scratch = mkdtempSync(join(tmpdir(), "orch-registry-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let fileCounter = 0;
function scratchDir(): string {
  const dir = join(scratch, `d${fileCounter++}`);
  mkdirSync(dir);
  return dir;
}

/** Replaces a file the way editors save: write a sibling, rename over (readers never see half). */
async function replaceFile(path: string, text: string | Buffer): Promise<void> {
  const tmp = `${path}.tmp-${fileCounter++}`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

// ---------------------------------------------------------------------------------------------

describe("parseRegistry: a valid fleet", () => {
  const reg = parseRegistry(BASE);

  it("reads the header, aggregator listeners and tenants", () => {
    expect(reg.version).toBe(1);
    expect(reg.source).toBe("<inline>");
    expect(reg.digest).toBe(sha256(BASE));
    expect(reg.aggregator).toEqual({
      listen: { host: "127.0.0.1", port: 7700 },
      http: { host: "::1", port: 7701 },
    });
    expect([...reg.tenants.values()]).toEqual([
      { id: "acme", name: "Acme Holdings", maxConcurrentFanouts: 4 },
      { id: "beta", name: "beta", maxConcurrentFanouts: undefined },
      { id: "gamma", name: "gamma", maxConcurrentFanouts: undefined },
    ]);
  });

  it("reads every Totebox with normalized fingerprints, text-exact scalars and shared aliases", () => {
    expect(reg.toteboxes.map((t) => t.id)).toEqual(["prop-001", "prop-002", "007"]);
    const [a, b, c] = reg.toteboxes;
    expect(a).toEqual({
      id: "prop-001",
      name: "Harbour House",
      host: "127.0.0.1",
      port: 7801,
      fingerprint: FP1,
      tags: { region: "west", kind: "property", portfolio: "core" },
      state: "active",
      tenants: ["acme", "beta"],
      line: 10,
    });
    expect(b).toMatchObject({
      name: "prop-002",
      host: "::1",
      port: 7802,
      fingerprint: FP2,
      state: "suspended",
    });
    expect(b?.tags).toEqual(a?.tags);
    expect(b?.line).toBe(17);
    // "007" and the all-digit fingerprint keep their characters; `year: 2024` is the string "2024".
    expect(c).toMatchObject({
      id: "007",
      host: "tote-7.example.com",
      port: 7803,
      fingerprint: FP3,
      line: 23,
    });
    expect(c?.tags).toEqual({ year: "2024", region: "east" });
    expect(c?.tenants).toEqual([]);
    expect(c?.state).toBe("active");
    expect(reg.toteboxById.get("007")).toBe(c);
    expect(Object.isFrozen(a)).toBe(true);
    expect(selectorMatches("year=2024,region=east", c!.tags)).toBe(true);
  });

  it("reads operators: hex and base64url keys give KeyObjects and PSP key ids", () => {
    const [alice, bob] = reg.operators;
    expect(alice).toMatchObject({ id: "alice", tenant: "acme", role: "manager" });
    expect(bob).toMatchObject({ id: "bob", tenant: "beta", role: "viewer" });
    expect(Buffer.from(alice!.publicKeyRaw).equals(ALICE_KEY)).toBe(true);
    expect(Buffer.from(bob!.publicKeyRaw).equals(BOB_KEY)).toBe(true);
    expect(alice!.keyId).toBe(keyIdOfRaw(ALICE_KEY));
    expect(keyIdOfPublicKey(alice!.publicKey)).toBe(alice!.keyId);
    expect(reg.operatorByKeyId.get(bob!.keyId)).toBe(bob);
    expect(reg.operatorById.get("alice")).toBe(alice);
  });

  it("passes viewports through as plain values with their position", () => {
    expect(reg.viewports).toEqual([
      {
        name: "my-view",
        definition: { view: "position", targets: { tags: "region=west" }, combine: "select 1" },
        line: 37,
        column: 3,
      },
    ]);
  });

  it("accepts base64 keys with padding, a minimal file, and null for optional values", () => {
    const text = edit(33, "public_key", `    public_key: ${BOB_KEY.toString("base64")}`);
    expect(parseRegistry(text).operators[1]?.keyId).toBe(keyIdOfRaw(BOB_KEY));
    const minimal = parseRegistry("version: 1\n");
    expect(minimal.toteboxes).toEqual([]);
    expect(minimal.tenants.size).toBe(0);
    expect(minimal.aggregator).toEqual({});
    const nulls = parseRegistry(edit(11, "name:", "    name: ~"));
    expect(nulls.toteboxes[0]?.name).toBe("prop-001");
  });
});

describe("parseRegistry: refusals carry code, line, column and path", () => {
  it("refuses an unknown key (a typo) at its line", () => {
    expectRefused(edit(15, "state:", "    stat: active"), "ORCH_ERR_CONFIG_INVALID", 15, "toteboxes[0].stat");
    expectRefused(`${BASE}tenant:\n  x: {}\n`, "ORCH_ERR_CONFIG_INVALID", 38, "tenant");
    expectRefused(
      edit(3, "listen", "  listen: { host: 127.0.0.1, prt: 7700 }"),
      "ORCH_ERR_CONFIG_INVALID",
      3,
      "aggregator.listen.prt",
    );
    // YAML 1.1 merge keys are not special here, so `<<` is just an unknown key.
    expectRefused(
      edit(11, "name:", "    <<: { name: x }"),
      "ORCH_ERR_CONFIG_INVALID",
      11,
      'toteboxes[0]["<<"]',
    );
  });

  it("refuses duplicate Totebox ids, fingerprints (any spelling), operator ids and keys", () => {
    const e = expectRefused(
      edit(17, "prop-002", "  - id: prop-001"),
      "ORCH_ERR_CONFIG_INVALID",
      17,
      "toteboxes[1].id",
    );
    expect(e.detail?.firstLine).toBe(10);
    expectRefused(
      edit(19, "fingerprint", `    fingerprint: ${FP1}`),
      "ORCH_ERR_CONFIG_INVALID",
      19,
      "toteboxes[1].fingerprint",
    );
    expectRefused(edit(32, "bob", "  - id: alice"), "ORCH_ERR_CONFIG_INVALID", 32, "operators[1].id");
    // The same key as alice's, written in base64url instead of hex.
    expectRefused(
      edit(33, "public_key", `    public_key: ${ALICE_KEY.toString("base64url")}`),
      "ORCH_ERR_CONFIG_INVALID",
      33,
      "operators[1].public_key",
    );
  });

  it("refuses duplicate mapping keys as syntax errors, even when YAML types them apart", () => {
    const e = expectRefused(
      edit(15, "state:", "    state: active\n    state: archived"),
      "ORCH_ERR_CONFIG_SYNTAX",
      16,
    );
    expect(e.detail?.yamlCode).toBe("DUPLICATE_KEY");
    expectRefused(edit(7, "beta", '  1: {}\n  "1": {}'), "ORCH_ERR_CONFIG_SYNTAX", 8, "tenants.1");
    // Inside a viewport definition too (it becomes a plain object, where the last key would win).
    const deep = expectRefused(
      edit(37, "my-view", "  my-view: { view: a, targets: [ { tags: x, tags: y } ] }"),
      "ORCH_ERR_CONFIG_SYNTAX",
      37,
      "viewports.my-view.targets[0].tags",
    );
    expect(deep.detail?.yamlCode).toBe("DUPLICATE_KEY");
    expectRefused(edit(37, "my-view", "  my-view: { 1: a, 01: b }"), "ORCH_ERR_CONFIG_SYNTAX", 37);
  });

  it("checks duplicate keys in linear time (yaml's own check is quadratic)", () => {
    const tenants = Array.from({ length: 20_000 }, (_, i) => `  t${i}: {}`).join("\n");
    const started = performance.now();
    expect(parseRegistry(`version: 1\ntenants:\n${tenants}\n`).tenants.size).toBe(20_000);
    expectRefused(
      `version: 1\ntenants:\n${tenants}\n  t0: {}\n`,
      "ORCH_ERR_CONFIG_SYNTAX",
      20_003,
      "tenants.t0",
    );
    // yaml's uniqueKeys took ~20 s for this on the same machine.
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  it("refuses more values than the node budget before composing them", () => {
    // maxConfigBytes 64 KiB: at most 16 384 values (one per 4 bytes).
    const limits = { limits: { maxConfigBytes: 64 * 1024 } };
    const text = (n: number) => `version: 1\nviewports:\n  v: { x: [${"a,".repeat(n)}] }\n`;
    const e = errorOf(() => parseRegistry(text(16_384), limits));
    expect({ code: e.code, line: e.detail?.line }).toEqual({ code: "ORCH_ERR_CONFIG_SYNTAX", line: 3 });
    expect(e.message).toContain("more than 16384 values");
    expect(parseRegistry(text(16_000), limits).viewports[0]?.definition).toMatchObject({
      x: expect.any(Array),
    });
  });

  it("refuses undeclared tenants and tenants listed twice", () => {
    expectRefused(
      edit(22, "tenants", "    tenants: [acme, delta]"),
      "ORCH_ERR_CONFIG_INVALID",
      22,
      "toteboxes[1].tenants[1]",
    );
    expectRefused(
      edit(34, "tenant", "    tenant: delta"),
      "ORCH_ERR_CONFIG_INVALID",
      34,
      "operators[1].tenant",
    );
    expectRefused(
      edit(16, "tenants", "    tenants: [acme, acme]"),
      "ORCH_ERR_CONFIG_INVALID",
      16,
      "toteboxes[0].tenants[1]",
    );
  });

  it("refuses public keys that are not exactly 32 bytes, or not canonical", () => {
    const short = expectRefused(
      edit(29, "public_key", `    public_key: ${ALICE_KEY.subarray(0, 31).toString("hex")}`),
      "ORCH_ERR_CONFIG_INVALID",
      29,
      "operators[0].public_key",
    );
    expect(short.detail?.bytes).toBe(31);
    const long = expectRefused(
      edit(
        33,
        "public_key",
        `    public_key: ${Buffer.concat([BOB_KEY, Buffer.from([7])]).toString("base64")}`,
      ),
      "ORCH_ERR_CONFIG_INVALID",
      33,
    );
    expect(long.detail?.bytes).toBe(33);
    // Last base64url character with non-zero unused bits: decodes to the same bytes, but is refused.
    const b64 = BOB_KEY.toString("base64url");
    const last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".indexOf(b64.at(-1)!);
    const noncanonical = `${b64.slice(0, -1)}${"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last + 1]}`;
    expectRefused(edit(33, "public_key", `    public_key: ${noncanonical}`), "ORCH_ERR_CONFIG_INVALID", 33);
    expectRefused(edit(29, "public_key", "    public_key: [1, 2]"), "ORCH_ERR_CONFIG_INVALID", 29);
    // The message never echoes the key material.
    expect(short.message).not.toContain(ALICE_KEY.subarray(0, 31).toString("hex"));
  });

  it("refuses bad ids, addresses, fingerprints, tags, states, roles and limits at their line", () => {
    const cases: Array<[number, string, string, string]> = [
      [10, "prop-001", "  - id: Prop-001", "toteboxes[0].id"],
      [10, "prop-001", "  - id: -prop", "toteboxes[0].id"],
      [12, "address", "    address: 127.0.0.1", "toteboxes[0].address"],
      [12, "address", "    address: 127.0.0.1:0", "toteboxes[0].address"],
      [12, "address", "    address: 127.0.0.1:70000", "toteboxes[0].address"],
      [12, "address", "    address: 300.1.1.1:7801", "toteboxes[0].address"],
      [12, "address", '    address: "::1:7801"', "toteboxes[0].address"],
      [12, "address", '    address: "[not-v6]:7801"', "toteboxes[0].address"],
      [12, "address", "    address: bad_host!:7801", "toteboxes[0].address"],
      [13, "fingerprint", `    fingerprint: ${FP1.slice(2)}`, "toteboxes[0].fingerprint"],
      [13, "fingerprint", `    fingerprint: ${"zz".repeat(32)}`, "toteboxes[0].fingerprint"],
      [26, "tags", '    tags: { year: "20=24" }', "toteboxes[2].tags.year"],
      [26, "tags", '    tags: { year: "a,b" }', "toteboxes[2].tags.year"],
      [26, "tags", "    tags: { Year: x }", "toteboxes[2].tags.Year"],
      [26, "tags", "    tags: { year: [1] }", "toteboxes[2].tags.year"],
      [26, "tags", "    tags: [a, b]", "toteboxes[2].tags"],
      [21, "state", "    state: paused", "toteboxes[1].state"],
      [35, "role", "    role: admin", "operators[1].role"],
      [6, "acme", "  acme: { max_concurrent_fanouts: 0 }", "tenants.acme.max_concurrent_fanouts"],
      [6, "acme", "  acme: { max_concurrent_fanouts: 1001 }", "tenants.acme.max_concurrent_fanouts"],
      [6, "acme", '  acme: { max_concurrent_fanouts: "4" }', "tenants.acme.max_concurrent_fanouts"],
      [6, "acme", "  acme: { max_concurrent_fanouts: 0x4 }", "tenants.acme.max_concurrent_fanouts"],
      [6, "acme", "  Acme: {}", "tenants.Acme"],
      [11, "name", '    name: "bell\\a"', "toteboxes[0].name"],
      [3, "listen", "  listen: { host: 127.0.0.1, port: 65536 }", "aggregator.listen.port"],
      [1, "version", "version: 2", "version"],
      [1, "version", 'version: "1"', "version"],
      [37, "my-view", "  My_View: { view: x }", "viewports.My_View"],
      [37, "my-view", "  my-view: 3", "viewports.my-view"],
    ];
    for (const [line, expected, replacement, path] of cases) {
      const e = errorOf(() => parseRegistry(edit(line, expected, replacement)));
      expect({ replacement, code: e.code, line: e.detail?.line, path: e.detail?.path }).toEqual({
        replacement,
        code: "ORCH_ERR_CONFIG_INVALID",
        line,
        path,
      });
      expect(typeof e.detail?.column).toBe("number");
    }
  });

  it("refuses a missing required field at the entry that lacks it", () => {
    expectRefused(edit(24, "address", null), "ORCH_ERR_CONFIG_INVALID", 23, "toteboxes[2].address");
    expectRefused(edit(31, "role", null), "ORCH_ERR_CONFIG_INVALID", 28, "operators[0].role");
    expectRefused(edit(1, "version", "# no version"), "ORCH_ERR_CONFIG_INVALID", 2);
    expectRefused("", "ORCH_ERR_CONFIG_INVALID", 1);
    expectRefused("- just\n- a list\n", "ORCH_ERR_CONFIG_INVALID", 1, "(root)");
  });

  it("refuses more Toteboxes than maxToteboxes at the list's key", () => {
    const e = expectRefused(BASE, "ORCH_ERR_CONFIG_INVALID", 9, "toteboxes", { limits: { maxToteboxes: 2 } });
    expect(e.detail).toMatchObject({ limit: 2, count: 3 });
    expect(parseRegistry(BASE, { limits: { maxToteboxes: 3 } }).toteboxes).toHaveLength(3);
  });

  it("refuses more than 32 tags", () => {
    const tags = Array.from({ length: 33 }, (_, i) => `t${i}: v`).join(", ");
    expectRefused(
      edit(26, "tags", `    tags: { ${tags} }`),
      "ORCH_ERR_CONFIG_INVALID",
      26,
      "toteboxes[2].tags",
    );
    const ok = Array.from({ length: 32 }, (_, i) => `t${i}: v`).join(", ");
    expect(
      Object.keys(parseRegistry(edit(26, "tags", `    tags: { ${ok} }`)).toteboxes[2]!.tags),
    ).toHaveLength(32);
  });

  it("refuses a file larger than maxConfigBytes before parsing it", () => {
    const limit = Buffer.byteLength(BASE) - 1;
    const e = errorOf(() => parseRegistry(BASE, { limits: { maxConfigBytes: limit } }));
    expect(e.code).toBe("ORCH_ERR_CONFIG_TOO_LARGE");
    expect(e.detail).toMatchObject({ limit, bytes: limit + 1 });
    // Too large wins over broken: the parser never ran.
    const junk = "[".repeat(200);
    expect(errorOf(() => parseRegistry(junk, { limits: { maxConfigBytes: 100 } })).code).toBe(
      "ORCH_ERR_CONFIG_TOO_LARGE",
    );
  });

  it("reports YAML syntax errors with their line", () => {
    const badIndent = expectRefused(
      edit(11, "name", '   name: "Harbour House"'),
      "ORCH_ERR_CONFIG_SYNTAX",
      11,
    );
    expect(badIndent.detail?.column).toBeTypeOf("number");
    expectRefused(edit(14, "tags", "    tags: { region: west"), "ORCH_ERR_CONFIG_SYNTAX", 15);
    expectRefused(edit(18, "address", "    address: [::1]:7802"), "ORCH_ERR_CONFIG_SYNTAX", 18);
    expectRefused(`${BASE}---\nversion: 1\n`, "ORCH_ERR_CONFIG_SYNTAX", 38);
    expectRefused(edit(26, "tags", "    tags: !custom { year: 2024 }"), "ORCH_ERR_CONFIG_SYNTAX", 26);
    expectRefused(edit(20, "tags", "    tags: *nowhere"), "ORCH_ERR_CONFIG_SYNTAX", 20);
  });

  it("refuses an alias bomb (billion laughs) quickly", () => {
    const levels = ["    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"];
    for (let i = 1; i <= 9; i++) {
      levels.push(`    l${i}: &l${i} [${Array.from({ length: 9 }, () => `*l${i - 1}`).join(", ")}]`);
    }
    const bomb = `${BASE}  bomb:\n${levels.join("\n")}\n`;
    const started = performance.now();
    const e = expectRefused(bomb, "ORCH_ERR_CONFIG_SYNTAX", 36);
    expect(e.message).toContain("aliases expand too much");
    expect(performance.now() - started).toBeLessThan(5000);
    // Outside viewports nothing is expanded: the bomb's key is refused as unknown, just as fast.
    expectRefused(`${levels.join("\n").replace(/^ {4}/gm, "")}\n${BASE}`, "ORCH_ERR_CONFIG_INVALID", 1, "l0");
  });

  it("refuses recursive aliases, and resolves shared ones linearly", () => {
    expectRefused(`${BASE}  loop: &x { again: *x }\n`, "ORCH_ERR_CONFIG_SYNTAX", 38);
    // 2 000 Toteboxes sharing one tag map and one tenant list through aliases.
    const lines = ["version: 1", "tenants: { acme: {}, beta: {} }", "toteboxes:"];
    for (let i = 0; i < 2000; i++) {
      const fp = i.toString(16).padStart(64, "0");
      const shared =
        i === 0 ? "tags: &t { region: west }, tenants: &ten [acme, beta]" : "tags: *t, tenants: *ten";
      lines.push(
        `  - { id: t${i}, address: "10.0.${i >> 8}.${i & 255}:7801", fingerprint: ${fp}, ${shared} }`,
      );
    }
    const reg = parseRegistry(lines.join("\n"));
    expect(reg.toteboxes).toHaveLength(2000);
    expect(reg.toteboxes[1999]?.tags).toBe(reg.toteboxes[0]?.tags);
    expect(reg.toteboxes[1999]?.line).toBe(2003);
  });

  it("refuses pathological nesting before the YAML composer sees it, and fast", () => {
    const started = performance.now();
    const e = errorOf(() =>
      parseRegistry(`version: 1\nviewports:\n  v: ${"[".repeat(4 * 1024 * 1024 - 40)}`),
    );
    expect({ code: e.code, line: e.detail?.line }).toEqual({ code: "ORCH_ERR_CONFIG_SYNTAX", line: 3 });
    expect(e.message).toContain("nesting deeper than 64");
    const compact = errorOf(() =>
      parseRegistry(`version: 1\nviewports:\n  v:\n    x: ${"- ".repeat(100_000)}1\n`),
    );
    expect({ code: compact.code, line: compact.detail?.line }).toEqual({
      code: "ORCH_ERR_CONFIG_SYNTAX",
      line: 4,
    });
    expect(performance.now() - started).toBeLessThan(5000);
    // Chains of `a: a: a:` (in block, or inside one flow entry) open a level each too.
    const chains = [
      `version: 1\nx: ${"a: ".repeat(1_000_000)}\n`,
      `version: 1\nx: {${"a: ".repeat(1_000_000)}}\n`,
      `version: 1\nx: [${"a: ".repeat(1_000_000)}]\n`,
    ];
    for (const text of chains) {
      const chain = errorOf(() => parseRegistry(text));
      expect({ code: chain.code, line: chain.detail?.line }).toEqual({
        code: "ORCH_ERR_CONFIG_SYNTAX",
        line: 2,
      });
    }
    expect(performance.now() - started).toBeLessThan(5000);
    // 64 levels is still fine.
    const ok = parseRegistry(`version: 1\nviewports:\n  v: { x: ${"[".repeat(63)}${"]".repeat(63)} }\n`);
    expect(ok.viewports).toHaveLength(1);
  });
});

describe("loadRegistry", () => {
  it("reads a file: source is the path, digest is the SHA-256 of its bytes", async () => {
    const path = join(scratchDir(), "fleet.yaml");
    writeFileSync(path, BASE);
    const reg = await loadRegistry(path);
    expect(reg.source).toBe(path);
    expect(reg.digest).toBe(sha256(Buffer.from(BASE)));
    expect(reg.toteboxes).toHaveLength(3);
  });

  it("names the file in positioned errors", async () => {
    const path = join(scratchDir(), "fleet.yaml");
    writeFileSync(path, edit(15, "state", "    stat: active"));
    const e = await errorOfAsync(() => loadRegistry(path));
    expect(e.code).toBe("ORCH_ERR_CONFIG_INVALID");
    expect(e.message.startsWith(`${path}:15:5: `)).toBe(true);
    expect(e.detail).toMatchObject({ source: path, line: 15, column: 5 });
  });

  it("refuses missing files, directories, FIFOs, oversized and non-UTF-8 files with typed errors", async () => {
    const dir = scratchDir();
    const missing = await errorOfAsync(() => loadRegistry(join(dir, "nope.yaml")));
    expect(missing.code).toBe("ORCH_ERR_CONFIG_READ");
    expect(missing.detail?.errno).toBe("ENOENT");
    expect((await errorOfAsync(() => loadRegistry(dir))).code).toBe("ORCH_ERR_CONFIG_READ");

    const big = join(dir, "big.yaml");
    writeFileSync(big, BASE);
    const tooLarge = await errorOfAsync(() => loadRegistry(big, { limits: { maxConfigBytes: 64 } }));
    expect(tooLarge.code).toBe("ORCH_ERR_CONFIG_TOO_LARGE");

    const latin1 = join(dir, "latin1.yaml");
    writeFileSync(
      latin1,
      Buffer.concat([Buffer.from("version: 1\ntenants:\n  caf"), Buffer.from([0xe9]), Buffer.from(": {}\n")]),
    );
    expect((await errorOfAsync(() => loadRegistry(latin1))).code).toBe("ORCH_ERR_CONFIG_SYNTAX");

    if (process.platform !== "win32") {
      // A FIFO with no writer would block a plain open forever.
      const fifo = join(dir, "fifo.yaml");
      execFileSync("mkfifo", [fifo]);
      expect((await errorOfAsync(() => loadRegistry(fifo))).code).toBe("ORCH_ERR_CONFIG_READ");
    }
  });
});

describe("diffRegistry", () => {
  it("classifies added, removed, relinked and changed Toteboxes by id", () => {
    const before = parseRegistry(BASE);
    let text = BASE;
    text = edit(12, "address", "    address: 127.0.0.1:7901", text); // prop-001: new address → relink
    text = edit(21, "state", "    state: active", text); // prop-002: state only → changed
    // "007" removed (lines 23-26), "prop-004" added.
    text = text.replace(
      / {2}- id: "007"\n.*\n.*\n.*\n/,
      `  - id: prop-004\n    address: 10.0.0.4:7801\n    fingerprint: ${"c3".repeat(32)}\n`,
    );
    const after = parseRegistry(text);
    const diff = diffRegistry(before, after);
    const ids = (d: RegistryDiff) => ({
      added: d.added.map((t) => t.id),
      removed: d.removed.map((t) => t.id),
      relinked: d.relinked.map((t) => t.id),
      changed: d.changed.map((t) => t.id),
    });
    expect(ids(diff)).toEqual({
      added: ["prop-004"],
      removed: ["007"],
      relinked: ["prop-001"],
      changed: ["prop-002"],
    });
    expect(diff.relinked[0]?.port).toBe(7901);
    expect(diff.removed[0]).toBe(before.toteboxById.get("007"));
  });

  it("treats a fingerprint change as relink, tag/name/tenant changes as changed, moves and reorders as nothing", () => {
    const before = parseRegistry(BASE);
    const fp = parseRegistry(edit(19, "fingerprint", `    fingerprint: ${"d4".repeat(32)}`));
    expect(diffRegistry(before, fp).relinked.map((t) => t.id)).toEqual(["prop-002"]);
    const tags = parseRegistry(edit(26, "tags", "    tags: { year: 2025, region: east }"));
    expect(diffRegistry(before, tags).changed.map((t) => t.id)).toEqual(["007"]);
    const name = parseRegistry(edit(11, "name", '    name: "Harbour House East"'));
    expect(diffRegistry(before, name).changed.map((t) => t.id)).toEqual(["prop-001"]);
    const tenants = parseRegistry(edit(22, "tenants", "    tenants: [beta]"));
    expect(diffRegistry(before, tenants).changed.map((t) => t.id)).toEqual(["prop-002"]);
    // Same content two lines lower, tenant order swapped: no Totebox changed.
    const moved = parseRegistry(`# comment\n# another\n${edit(16, "tenants", "    tenants: [beta, acme]")}`);
    expect(moved.toteboxes[0]?.line).toBe(12);
    expect(diffRegistry(before, moved)).toEqual({ added: [], removed: [], relinked: [], changed: [] });
  });
});

describe("selectorsValid", () => {
  it("accepts k=v pairs joined by commas and refuses anything else", () => {
    for (const s of ["region=west", "region=west,kind=property", "a=b=c"])
      expect(selectorsValid(s)).toBe(true);
    for (const s of [
      "",
      "region",
      "=west",
      "region=",
      "a=b,",
      ",a=b",
      "a=b,,c=d",
      `${"a=b,".repeat(64)}a=b`,
    ]) {
      expect(selectorsValid(s)).toBe(false);
    }
  });

  it("agrees with psp selectorMatches on every short string (property)", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40, unit: fc.constantFrom("a", "b", "=", ",", "x", "-") }), (s) => {
        const parts = s.split(",");
        const pairs = parts.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)] as const);
        const keys = new Set(pairs.map(([k]) => k));
        fc.pre(keys.size === pairs.length); // duplicate keys cannot all be satisfied by one tag map
        // Tags that satisfy the selector if, and only if, psp can parse it.
        const tags = Object.fromEntries(pairs);
        expect(selectorsValid(s)).toBe(selectorMatches(s, tags));
      }),
      { seed, numRuns: 2000 },
    );
  });
});

describe("watchRegistry", () => {
  type Event =
    | { kind: "change"; next: Registry; diff: RegistryDiff; info: RegistryParseInfo }
    | { kind: "error"; error: OrchError };

  /** A watcher whose callbacks feed a queue the test awaits (no sleeping). */
  async function startWatcher(
    text: string,
    options?: Pick<WatchRegistryOptions, "offThreadBytes" | "offThreadTimeoutMs">,
  ) {
    const path = join(scratchDir(), "fleet.yaml");
    writeFileSync(path, text);
    const initial = await loadRegistry(path);
    const events: Event[] = [];
    let wake: (() => void) | undefined;
    const push = (e: Event) => {
      events.push(e);
      wake?.();
    };
    const watcher = watchRegistry({
      path,
      initial,
      pollMs: 20,
      ...options,
      onChange: (next, diff, info) => push({ kind: "change", next, diff, info }),
      onError: (error) => push({ kind: "error", error }),
    });
    let read = 0;
    const next = async (): Promise<Event> => {
      while (read >= events.length) await new Promise<void>((r) => (wake = r));
      return events[read++]!;
    };
    return { path, initial, watcher, events, next };
  }

  it("picks up a valid change, reports an invalid one and keeps the old registry", {
    timeout: 20_000,
  }, async () => {
    const w = await startWatcher(BASE);
    try {
      const v2 = edit(21, "state", "    state: archived");
      await replaceFile(w.path, v2);
      const changed = await w.next();
      if (changed.kind !== "change") throw new Error(`expected a change, got ${changed.error.code}`);
      expect(changed.next.digest).toBe(sha256(v2));
      expect(changed.diff.changed.map((t) => t.id)).toEqual(["prop-002"]);
      expect(w.watcher.current).toBe(changed.next);

      await replaceFile(w.path, edit(17, "prop-002", "  - id: prop-001", v2));
      const failed = await w.next();
      if (failed.kind !== "error") throw new Error("expected an error");
      expect({ code: failed.error.code, line: failed.error.detail?.line }).toEqual({
        code: "ORCH_ERR_CONFIG_INVALID",
        line: 17,
      });
      expect(w.watcher.current).toBe(changed.next);

      // Fixing the file is picked up; the invalid state was reported once, not once per poll.
      const v3 = edit(12, "address", "    address: 127.0.0.1:7901", v2);
      await replaceFile(w.path, v3);
      const fixed = await w.next();
      if (fixed.kind !== "change") throw new Error("expected a change");
      expect(fixed.diff.relinked.map((t) => t.id)).toEqual(["prop-001"]);
      expect(w.events.filter((e) => e.kind === "error")).toHaveLength(1);
      expect(w.watcher.current.digest).toBe(sha256(v3));
    } finally {
      w.watcher.close();
    }
  });

  it("parses a change at or above offThreadBytes on a worker thread, to the registry parsed in place", {
    timeout: 30_000,
  }, async () => {
    const w = await startWatcher(BASE, { offThreadBytes: 0 });
    try {
      const v2 = edit(21, "state", "    state: archived");
      await replaceFile(w.path, v2);
      const changed = await w.next();
      if (changed.kind !== "change") throw new Error(`expected a change, got ${changed.error.code}`);
      expect(changed.info.offThread).toBe(true);
      expect(changed.diff.changed.map((t) => t.id)).toEqual(["prop-002"]);
      expectSameValue(parseRegistry(v2, { source: w.path }), changed.next);
      // Prototype-free tags again: no Totebox has a tag `constructor`.
      expect(changed.next.toteboxById.get("prop-001")!.tags.constructor).toBeUndefined();
      expect(selectorMatches("region=west", changed.next.toteboxById.get("prop-002")!.tags)).toBe(true);

      // A refusal crosses back as the same OrchError: code, message and detail.
      const bad = edit(17, "prop-002", "  - id: prop-001", v2);
      await replaceFile(w.path, bad);
      const failed = await w.next();
      if (failed.kind !== "error") throw new Error("expected an error");
      const inPlace = errorOf(() => parseRegistry(bad, { source: w.path }));
      expect(failed.error).toBeInstanceOf(OrchError);
      expect({ code: failed.error.code, message: failed.error.message, detail: failed.error.detail }).toEqual(
        {
          code: inPlace.code,
          message: inPlace.message,
          detail: inPlace.detail,
        },
      );
      expect(w.watcher.current).toBe(changed.next);
    } finally {
      w.watcher.close();
    }
  });

  it("parses a change below offThreadBytes in place", { timeout: 20_000 }, async () => {
    const w = await startWatcher(BASE); // the default threshold, 64 KiB
    try {
      await replaceFile(w.path, edit(21, "state", "    state: archived"));
      const changed = await w.next();
      if (changed.kind !== "change") throw new Error(`expected a change, got ${changed.error.code}`);
      expect(changed.info.offThread).toBe(false);
    } finally {
      w.watcher.close();
    }
  });

  it("stops a parse thread past offThreadTimeoutMs, keeps the registry and tries again later each time", {
    timeout: 20_000,
  }, async () => {
    // 1 ms: a thread cannot even start in that time, let alone load its modules and parse.
    const w = await startWatcher(BASE, { offThreadBytes: 0, offThreadTimeoutMs: 1 });
    try {
      await replaceFile(w.path, edit(21, "state", "    state: archived"));
      for (const attempt of [1, 2, 3]) {
        const failed = await w.next();
        if (failed.kind !== "error") throw new Error("expected an error");
        expect(failed.error.code).toBe("ORCH_ERR_INTERNAL");
        expect(failed.error.message).toContain("took longer than 1 ms");
        // pollMs (20) doubled per attempt.
        expect(failed.error.detail).toMatchObject({
          reason: "timeout",
          attempt,
          retryInMs: 20 * 2 ** (attempt - 1),
        });
        expect(w.watcher.current).toBe(w.initial);
      }
    } finally {
      w.watcher.close();
    }
  });

  it("coalesces a burst of saves and ends on the last content", { timeout: 20_000 }, async () => {
    const w = await startWatcher(BASE);
    try {
      const versions = [7901, 7902, 7903, 7904, 7905].map((port) =>
        edit(12, "address", `    address: 127.0.0.1:${port}`),
      );
      for (const v of versions) await replaceFile(w.path, v);
      const last = sha256(versions.at(-1)!);
      for (;;) {
        const e = await w.next();
        if (e.kind === "error") throw e.error;
        if (e.next.digest === last) break;
      }
      expect(w.watcher.current.toteboxById.get("prop-001")?.port).toBe(7905);
      expect(w.events.length).toBeLessThanOrEqual(versions.length);
    } finally {
      w.watcher.close();
    }
  });

  it("reports unreadable files once and a throwing onChange as ORCH_ERR_INTERNAL", {
    timeout: 20_000,
  }, async () => {
    const dir = scratchDir();
    const path = join(dir, "fleet.yaml");
    writeFileSync(path, BASE);
    const initial = await loadRegistry(path);
    const errors: OrchError[] = [];
    let wake: (() => void) | undefined;
    const watcher = watchRegistry({
      path,
      initial,
      pollMs: 20,
      onChange: () => {
        throw new Error("handler bug");
      },
      onError: (e) => {
        errors.push(e);
        wake?.();
      },
    });
    const nextError = async (n: number) => {
      while (errors.length < n) await new Promise<void>((r) => (wake = r));
      return errors[n - 1]!;
    };
    try {
      rmSync(path);
      const gone = await nextError(1);
      expect({ code: gone.code, errno: gone.detail?.errno }).toEqual({
        code: "ORCH_ERR_CONFIG_READ",
        errno: "ENOENT",
      });
      expect(watcher.current).toBe(initial);
      await replaceFile(path, edit(21, "state", "    state: archived"));
      const bug = await nextError(2);
      expect(bug.code).toBe("ORCH_ERR_INTERNAL");
      // The registry was still swapped in before the handler failed.
      expect(watcher.current.toteboxById.get("prop-002")?.state).toBe("archived");
    } finally {
      watcher.close();
    }
  });

  it("stops calling back after close()", { timeout: 20_000 }, async () => {
    const closed = await startWatcher(BASE);
    closed.watcher.close();
    let resolveSeen!: (r: Registry) => void;
    let rejectSeen!: (e: unknown) => void;
    const seen = new Promise<Registry>((res, rej) => {
      resolveSeen = res;
      rejectSeen = rej;
    });
    const v2 = edit(21, "state", "    state: archived");
    await replaceFile(closed.path, v2);
    // A second watcher on the same file proves the change became visible to a polling watcher.
    const witness = watchRegistry({
      path: closed.path,
      initial: closed.initial,
      pollMs: 20,
      onChange: (next) => resolveSeen(next),
      onError: (e) => rejectSeen(e),
    });
    try {
      expect((await seen).digest).toBe(sha256(v2));
      expect(closed.events).toEqual([]);
      expect(closed.watcher.current).toBe(closed.initial);
    } finally {
      witness.close();
    }
  });
});

describe("property: hostile text only ever yields a Registry or a config OrchError", () => {
  /** Runs one input; any other exception type fails the property. Also bounds time (no hang). */
  function check(text: string): void {
    const started = performance.now();
    try {
      parseRegistry(text);
    } catch (e) {
      if (!(e instanceof OrchError)) throw e;
      expect(CONFIG_CODES.has(e.code)).toBe(true);
      expect(e.message.length).toBeLessThan(1000);
      if (e.code === "ORCH_ERR_CONFIG_SYNTAX" || e.code === "ORCH_ERR_CONFIG_INVALID") {
        expect(e.detail?.line).toBeTypeOf("number");
      }
    }
    expect(performance.now() - started).toBeLessThan(5000);
  }

  it("arbitrary strings", () => {
    fc.assert(fc.property(fc.string({ maxLength: 400, unit: "binary" }), check), { seed, numRuns: 300 });
  });

  it("YAML-ish token soup", () => {
    const token = fc.constantFrom(
      "version: 1\n",
      "toteboxes:\n",
      "tenants:\n",
      "operators:\n",
      "viewports:\n",
      "  - ",
      "id: a\n",
      "  ",
      "[",
      "]",
      "{",
      "}",
      ", ",
      ": ",
      "&a ",
      "*a",
      "!!str ",
      "? ",
      "- ",
      "|\n",
      '"',
      "'",
      "#",
      "\t",
      "---\n",
      "<<: ",
      "\n",
      "acme",
      "1",
    );
    fc.assert(
      fc.property(fc.array(token, { maxLength: 80 }), (tokens) => check(tokens.join(""))),
      { seed, numRuns: 500 },
    );
  });

  it("mutations of a valid fleet file", () => {
    const mutation = fc.oneof(
      fc.record({
        kind: fc.constant("insert" as const),
        at: fc.nat(),
        text: fc.oneof(
          fc.string({ maxLength: 8 }),
          fc.constantFrom("[", "{", "&x ", "*x", ": ", "- ", "\n  ", "'"),
        ),
      }),
      fc.record({
        kind: fc.constant("delete" as const),
        at: fc.nat(),
        length: fc.integer({ min: 1, max: 20 }),
      }),
      fc.record({ kind: fc.constant("swapLines" as const), a: fc.nat(), b: fc.nat() }),
      fc.record({ kind: fc.constant("dupLine" as const), a: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 6 }), (mutations) => {
        let text = BASE;
        for (const m of mutations) {
          if (m.kind === "insert") {
            const at = m.at % (text.length + 1);
            text = text.slice(0, at) + m.text + text.slice(at);
          } else if (m.kind === "delete") {
            const at = m.at % (text.length + 1);
            text = text.slice(0, at) + text.slice(at + m.length);
          } else {
            const lines = text.split("\n");
            const a = m.a % lines.length;
            if (m.kind === "dupLine") lines.splice(a, 0, lines[a]!);
            else {
              const b = m.b % lines.length;
              [lines[a], lines[b]] = [lines[b]!, lines[a]!];
            }
            text = lines.join("\n");
          }
        }
        check(text);
      }),
      { seed, numRuns: 300 },
    );
  });
});
