/**
 * Test support (not exported from the package): the peers most Totebox tests trust.
 */
import type { Identity } from "@os-orchestration/psp";
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
