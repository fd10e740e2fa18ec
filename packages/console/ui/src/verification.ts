/**
 * What the verified / unverified marks and the partial banner say. The aggregator is not trusted to
 * say a result is sound: `verification` is the console server's own check (receipts verified with
 * its pinned Totebox keys, combine step recomputed), and these texts explain it to the operator.
 */
import type { Outcome, UiResult } from "./api.ts";

export const VERIFIED_EXPLANATION =
  "Verified by this console: every answering Totebox's signed receipt checked against the Totebox key " +
  "pinned at pairing, and the combine step re-run here on those answers with the same result.";

/** Why a result is not verified, in one sentence (empty when it is). */
export function unverifiedReason(r: UiResult): string {
  const v = r.verification;
  if (v.verified) return "";
  const parts: string[] = [];
  if (r.error) parts.push(`the fan-out failed (${r.error.code})`);
  if (v.receipts === "none") parts.push("no Totebox receipt could be verified");
  else if (v.receipts === "some") {
    const bad = r.outcomes.filter((o) => answered(o) && !o.verified);
    const named = bad
      .slice(0, 5)
      .map((o) => (o.verifyCode ? `${o.totebox} (${o.verifyCode})` : o.totebox))
      .join(", ");
    parts.push(
      bad.length > 0
        ? `receipts not verified for ${named}${bad.length > 5 ? ` and ${bad.length - 5} more` : ""}`
        : "only some receipts verified",
    );
  }
  if (v.recomputed === false) parts.push("the console's own recomputation gave different figures");
  else if (v.recomputed === null && r.kind === "viewport") parts.push("the combine step was not recomputed");
  if (parts.length === 0) parts.push("the console could not verify this result");
  const s = parts.join("; ");
  return s[0]!.toUpperCase() + s.slice(1);
}

/** Answered = ok, or suppressed (it answered; its privacy floor held some groups back). */
export function answered(o: Outcome): boolean {
  return o.status === "ok" || o.status === "suppressed";
}

export interface Coverage {
  readonly answered: number;
  readonly targeted: number;
  /** Targeted Toteboxes that did not answer, each with its status and reason. */
  readonly missing: readonly Outcome[];
  readonly suppressed: readonly Outcome[];
  /** True when anything is missing: the banner must show. */
  readonly partial: boolean;
}

export function coverageOf(r: UiResult): Coverage {
  const missing = r.outcomes.filter((o) => !answered(o));
  const suppressed = r.outcomes.filter((o) => o.status === "suppressed");
  // The server's flags and counts and our own count must all agree before we call it complete.
  const partial =
    r.partial || missing.length > 0 || r.answered < r.targeted || r.outcomes.length < r.targeted;
  return { answered: r.answered, targeted: r.targeted, missing, suppressed, partial };
}
