import type { CanonicalValue } from "@os-orchestration/psp";
import type { CancelReply, CommandReply, ReadAnswer } from "./subject.ts";

/**
 * The Totebox's PSP API as a commander sees it (for `openCommander<ToteboxRemote>(link)`).
 * Methods returning remote objects are typed as returning them directly, so that chains such as
 * `tb.authorize(grant).view("position").read(cap)` pipeline into one round trip.
 */
export interface ToteboxHello {
  protocol: string;
  /**
   * Methods of PSP direct requests the Totebox serves (psp.md §3.1; 1 = the direct read). Absent
   * from an older Totebox: the aggregator then reads over capnweb only.
   */
  directMethods?: readonly number[];
  id: string;
  name: string;
  kind: string;
  currency: string;
  tags: Record<string, string>;
  deviceId: string;
  keyId: string;
  state: "active" | "suspended";
  policyDigest: string;
  views: {
    name: string;
    description: string;
    params: { name: string; type: string; required: boolean }[];
    columns: { name: string; type: string }[];
    rowKey: string | null;
  }[];
  commands: { name: string; description: string }[];
}

export interface ToteboxRemote {
  hello(): Promise<ToteboxHello>;
  pair(proof: Uint8Array): Promise<{ proof: Uint8Array; totebox: string; deviceId: string; kind: string }>;
  authorize(grant: Uint8Array): ToteboxSessionRemote;
}

export interface ToteboxSessionRemote extends PromiseLike<unknown> {
  view(name: string): ToteboxViewRemote;
  read(
    capability: Uint8Array,
    view: string,
    params?: Record<string, unknown>,
    row?: string,
  ): Promise<ReadAnswer>;
  command(
    capability: Uint8Array,
    name: string,
    args: Record<string, CanonicalValue>,
    idempotencyKey: string,
  ): Promise<CommandReply>;
  audit(capability: Uint8Array, request: Record<string, unknown>): Promise<unknown>;
  /**
   * Stops the read that `capability` (that read's own call capability) authorised: a queued read
   * is dropped, a running one is killed (pool runner) or its answer dropped; that read then
   * rejects with TOTEBOX_ERR_CANCELLED. If the read is not there (answered, or not arrived yet),
   * the answer is `{ cancelled: false, state: "unknown" }` and the read is refused if it arrives
   * later. Refused with the PSP code of a capability that does not verify under this grant.
   */
  cancel(capability: Uint8Array): Promise<CancelReply>;
}

export interface ToteboxViewRemote {
  read(capability: Uint8Array, params?: Record<string, unknown>, row?: string): Promise<ReadAnswer>;
}
