import { generateKeyPairSync } from "node:crypto";
import { issueGrant, keyIdOfPublicKey, ManualClock, verifyGrant } from "@os-orchestration/psp";
import { describe, expect, it } from "vitest";
import type { ToteboxEntry } from "./registry.ts";
import { GrantReach, inGrant } from "./service.ts";

const T0 = Date.UTC(2026, 10, 1);

function verified(over: { toteboxIds?: string[]; toteboxSelectors?: string[] }) {
  const op = generateKeyPairSync("ed25519");
  const agg = generateKeyPairSync("ed25519");
  const clock = new ManualClock(T0);
  const grant = issueGrant({
    operator: "alice",
    aggregatorId: "agg-1",
    aggregatorKey: agg.publicKey,
    tenant: "acme",
    toteboxIds: over.toteboxIds ?? [],
    toteboxSelectors: over.toteboxSelectors ?? [],
    views: ["position"],
    actions: ["read"],
    lifetimeSeconds: 600,
    signer: op.privateKey,
    clock,
  });
  const id = keyIdOfPublicKey(op.publicKey);
  return verifyGrant({
    grant,
    trustedOperators: (k) => (k === id ? { publicKey: op.publicKey } : undefined),
    aggregatorId: "agg-1",
    clock,
  });
}

const entry = (id: string, tags: Record<string, string> = {}): ToteboxEntry => ({
  id,
  name: id,
  host: "127.0.0.1",
  port: 1,
  fingerprint: "0".repeat(64),
  tags,
  state: "active",
  tenants: ["acme"],
  line: 1,
});

describe("inGrant: which Toteboxes a grant reaches", () => {
  it("by id (a grant naming the most it may), by selector, by either; and nothing else", () => {
    const ids = Array.from({ length: 256 }, (_, i) => `tb-${i}`); // the most a grant may name
    const g = verified({ toteboxIds: ids, toteboxSelectors: ["region=west,kind=property"] });
    // One Totebox at a time, and many at once (a fan-out asks for every registry entry): the same.
    const reach = new GrantReach(g);
    const reaches = (e: ToteboxEntry) => reach.has(e);
    for (const check of [(e: ToteboxEntry) => inGrant(g, e), reaches, reaches]) {
      expect(check(entry("tb-0"))).toBe(true);
      expect(check(entry("tb-255"))).toBe(true);
      expect(check(entry("tb-256"))).toBe(false);
      expect(check(entry("other", { region: "west", kind: "property" }))).toBe(true);
      expect(check(entry("other", { region: "west" }))).toBe(false);
      expect(check(entry("constructor"))).toBe(false);
    }
    const bySelector = new GrantReach(verified({ toteboxSelectors: ["region=east", "kind=holding"] }));
    expect(bySelector.has(entry("tb-0"))).toBe(false);
    expect(bySelector.has(entry("tb-0", { region: "east" }))).toBe(true);
    expect(bySelector.has(entry("tb-0", { kind: "holding" }))).toBe(true);
    // Two grants never share what one of them reaches.
    const narrow = new GrantReach(verified({ toteboxIds: ["tb-1"] }));
    expect(narrow.has(entry("tb-1"))).toBe(true);
    expect(narrow.has(entry("tb-0"))).toBe(false);
    expect(reaches(entry("tb-0"))).toBe(true);
  });
});
