/**
 * Test support (not exported from the package): the peers most Totebox tests trust.
 */
import { type Clock, type Identity, issueCallCapability, issueGrant } from "@os-orchestration/psp";
import { trustPeer } from "./peers.ts";
import type { Db } from "./schema.ts";

/** Trusts `aggregator` as the hub and `operator` as "alice" of tenant acme, as of `now`. */
export function trustHubAndAlice(db: Db, aggregator: Identity, operator: Identity, now: number): void {
  trustPeer(db, {
    kind: "aggregator",
    label: "hub",
    publicKey: aggregator.publicKey,
    fingerprint: aggregator.fingerprint,
    now,
  });
  trustPeer(db, { kind: "operator", label: "alice", publicKey: operator.publicKey, tenants: ["acme"], now });
}

type GrantArgs = Parameters<typeof issueGrant>[0];
type CapabilityArgs = Parameters<typeof issueCallCapability>[0];

/**
 * alice's grant to `aggregator` (the hub) over tb-1 in tenant acme: reads of position unless
 * `overrides` say otherwise.
 */
export function aliceGrant(
  aggregator: Identity,
  operator: Identity,
  clock: Clock,
  overrides: Partial<GrantArgs> = {},
): Uint8Array {
  return issueGrant({
    operator: "alice",
    aggregatorId: aggregator.fingerprint,
    aggregatorKey: aggregator.publicKey,
    tenant: "acme",
    toteboxIds: ["tb-1"],
    views: ["position"],
    actions: ["read"],
    signer: operator.privateKey,
    clock,
    ...overrides,
  });
}

/** The hub's call capability on tb-1 under `grant`: a read of position unless `overrides` say otherwise. */
export function hubCapability(
  aggregator: Identity,
  grant: Uint8Array,
  clock: Clock,
  overrides: Partial<CapabilityArgs> = {},
): Uint8Array {
  return issueCallCapability({
    grant,
    totebox: "tb-1",
    view: "position",
    action: "read",
    clock,
    signer: aggregator.privateKey,
    ...overrides,
  });
}
