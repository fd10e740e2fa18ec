import type { KeyObject } from "node:crypto";
import { verify as edVerify } from "node:crypto";
import { builtinViewports, coverageOf, type FanOutResult, runCombine } from "@os-orchestration/orchestration";
import { type DecodedResult, decodeResult, verifyConsistency } from "@os-orchestration/psp";
import { type AuditCheckpoint, verifyCheckpoint } from "@os-orchestration/totebox";
import { type AnswerCheck, verifyAnswers } from "./client.ts";
import { ConsoleError } from "./errors.ts";

/**
 * What the console can prove about an answer without trusting the aggregator:
 * 1. each Totebox's contribution is what that Totebox signed (receipts, with the console's own
 *    pinned Totebox keys), and
 * 2. the combined figures are what the viewport's SQL gives over exactly those contributions: the
 *    console re-runs the combine step itself, in its own DuckDB, and compares.
 */
export interface Verification {
  readonly toteboxes: readonly AnswerCheck[];
  /** "all": every answering Totebox verified; "some"; "none". */
  readonly receipts: "all" | "some" | "none";
  /** true: recomputed and equal; false: different; null: not recomputable (custom viewport, read). */
  readonly recomputed: boolean | null;
  readonly verified: boolean;
}

export async function verifyResult(
  result: FanOutResult,
  keyOf: (id: string) => KeyObject | undefined,
): Promise<Verification> {
  const checks = verifyAnswers(result, keyOf);
  const ok = checks.filter((c) => c.verified).length;
  const receipts = checks.length > 0 && ok === checks.length ? "all" : ok > 0 ? "some" : "none";
  let recomputed: boolean | null = null;
  if (result.kind === "viewport" && result.error === null && receipts === "all") {
    recomputed = await recompute(result);
  }
  const verified = receipts === "all" && (result.kind !== "viewport" || recomputed === true);
  return { toteboxes: checks, receipts, recomputed, verified };
}

/** Re-runs a built-in viewport's combine over the answers the Toteboxes signed. */
export async function recompute(result: FanOutResult): Promise<boolean | null> {
  const viewport = (await builtinViewports()).get(result.name);
  if (!viewport) return null;
  const results = new Map<
    string,
    { totebox: string; tags: Readonly<Record<string, string>>; result: DecodedResult }[]
  >();
  for (const r of viewport.reads) results.set(r.as, []);
  for (const o of result.outcomes) {
    if (o.status !== "ok" && o.status !== "suppressed") continue;
    for (const a of o.answers) {
      const read = viewport.reads.find((r) => r.as === a.as);
      if (!read) return false;
      results
        .get(a.as)!
        .push({ totebox: o.totebox, tags: o.tags, result: decodeResult(a.arrow, read.columns) });
    }
  }
  const sections = await runCombine({
    viewport,
    params: result.params as Record<string, string | number | boolean>,
    results,
    coverage: coverageOf(result.outcomes),
  });
  // Coverage-derived cells (elapsed times) are the aggregator's own observations, not Totebox
  // data; the comparison is over everything the sections hold, so they must match too.
  return JSON.stringify(sections) === JSON.stringify(result.sections);
}

/**
 * Checks a Totebox's audit checkpoint (signed by the Totebox's own key) and, when the console holds
 * an earlier one, the consistency proof that the log only grew from it.
 */
export function verifyAuditGrowth(args: {
  readonly key: KeyObject;
  readonly checkpoint: AuditCheckpoint;
  readonly previous: { treeSize: number; rootHash: string } | null;
  readonly proof: readonly Uint8Array[] | null;
}): void {
  try {
    verifyCheckpoint(args.checkpoint, (body, sig) => edVerify(null, body, args.key, sig));
  } catch (e) {
    throw new ConsoleError("CONSOLE_ERR_AUDIT", `checkpoint refused: ${(e as Error).message}`);
  }
  if (!args.previous) return;
  if (args.checkpoint.treeSize < args.previous.treeSize) {
    throw new ConsoleError("CONSOLE_ERR_AUDIT", "the audit log is smaller than at the last checkpoint");
  }
  try {
    verifyConsistency(
      args.previous.treeSize,
      args.checkpoint.treeSize,
      args.proof ?? [],
      Buffer.from(args.previous.rootHash, "hex"),
      args.checkpoint.rootHash,
    );
  } catch (e) {
    throw new ConsoleError("CONSOLE_ERR_AUDIT", `consistency proof refused: ${(e as Error).message}`);
  }
}
