/**
 * The one error class of the Totebox package. Callers branch on `code`, never on `message`.
 *
 * Rules kept by every throw site in this package:
 * - `code` is a stable string prefixed `TOTEBOX_ERR_`, listed in docs/errors-totebox-*.md;
 * - `detail` holds structured, non-secret context (line numbers, field names, limits); no key,
 *   token or signature bytes ever go into a message or a detail.
 *
 * Several engineers add codes to this union: append to it, never rename or remove a code
 * (codes are an API: consoles and tests match on them).
 */
export type ToteboxErrorCode =
  // storage: opening and migrating the archive database (schema.ts)
  | "TOTEBOX_ERR_DB_OPEN"
  | "TOTEBOX_ERR_SCHEMA_VERSION"
  | "TOTEBOX_ERR_ENTITY"
  // storage: the journal (ledger.ts, and the SQLite triggers that back it)
  | "TOTEBOX_ERR_INVALID_TX"
  | "TOTEBOX_ERR_BAD_DATE"
  | "TOTEBOX_ERR_BAD_AMOUNT"
  | "TOTEBOX_ERR_UNBALANCED"
  | "TOTEBOX_ERR_UNKNOWN_ACCOUNT"
  | "TOTEBOX_ERR_UNKNOWN_COUNTERPARTY"
  | "TOTEBOX_ERR_DUPLICATE_TX"
  | "TOTEBOX_ERR_APPEND_ONLY"
  | "TOTEBOX_ERR_CHAIN_BROKEN"
  | "TOTEBOX_ERR_LEASE_OVERLAP"
  | "TOTEBOX_ERR_CONSTRAINT"
  // storage: import and demo data (import.ts, demo-data.ts)
  | "TOTEBOX_ERR_IMPORT_ROW"
  | "TOTEBOX_ERR_IMPORT_FORMAT"
  | "TOTEBOX_ERR_IMPORT_LIMIT"
  | "TOTEBOX_ERR_DEMO_ARGS"
  // exposure policy and parameters (policy.ts)
  | "TOTEBOX_ERR_POLICY"
  | "TOTEBOX_ERR_PARAM"
  // running views (view-runner.ts)
  | "TOTEBOX_ERR_VIEW_UNKNOWN"
  | "TOTEBOX_ERR_VIEW_ROWS"
  | "TOTEBOX_ERR_VIEW_TIMEOUT"
  | "TOTEBOX_ERR_VIEW_BUSY"
  | "TOTEBOX_ERR_VIEW_RESULT"
  | "TOTEBOX_ERR_VIEW_FAILED"
  // audit log (audit-log.ts)
  | "TOTEBOX_ERR_AUDIT_ENTRY"
  | "TOTEBOX_ERR_AUDIT_RANGE"
  | "TOTEBOX_ERR_AUDIT_CHECKPOINT"
  | "TOTEBOX_ERR_AUDIT_CORRUPT"
  // the running Totebox (archive.ts, server.ts, subject.ts, commands.ts, peers.ts)
  | "TOTEBOX_ERR_ARCHIVE"
  | "TOTEBOX_ERR_SUSPENDED"
  | "TOTEBOX_ERR_SESSION_UNKNOWN"
  | "TOTEBOX_ERR_SESSION_LIMIT"
  | "TOTEBOX_ERR_ANSWER_TOO_LARGE"
  | "TOTEBOX_ERR_POLICY_DENIED"
  | "TOTEBOX_ERR_COMMAND_UNKNOWN"
  | "TOTEBOX_ERR_COMMAND_ARGS"
  | "TOTEBOX_ERR_IDEMPOTENCY_CONFLICT"
  | "TOTEBOX_ERR_STAGED"
  | "TOTEBOX_ERR_PEER"
  | "TOTEBOX_ERR_PAIRING"
  | "TOTEBOX_ERR_INTERNAL"
  // cancellation of reads (subject.ts, view-runner.ts)
  | "TOTEBOX_ERR_CANCELLED";

export type ToteboxErrorDetail = Readonly<Record<string, string | number | boolean | null>>;

export class ToteboxError extends Error {
  override readonly name = "ToteboxError";
  readonly code: ToteboxErrorCode;
  /** Structured, non-secret context (line numbers, field names, limits, counts). */
  readonly detail: ToteboxErrorDetail | undefined;

  constructor(
    code: ToteboxErrorCode,
    message: string,
    detail?: ToteboxErrorDetail,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.code = code;
    this.detail = detail;
  }
}

export function isToteboxError(e: unknown, code?: ToteboxErrorCode): e is ToteboxError {
  return e instanceof ToteboxError && (code === undefined || e.code === code);
}
