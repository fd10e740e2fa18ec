/**
 * The one error class of the aggregator package. Callers (the console, tests) branch on `code`.
 *
 * - `code` is a stable string prefixed `ORCH_ERR_`, listed in docs/errors.md (a test keeps the two
 *   in sync);
 * - `detail` holds structured, non-secret context (line, column, field, limit, Totebox id); never a
 *   token, key or signature byte.
 *
 * Append codes, never rename or remove one: consoles match on them.
 */
export type OrchErrorCode =
  // configuration: fleet.yaml and viewports (registry.ts, viewports.ts)
  | "ORCH_ERR_CONFIG_READ"
  | "ORCH_ERR_CONFIG_TOO_LARGE"
  | "ORCH_ERR_CONFIG_SYNTAX"
  | "ORCH_ERR_CONFIG_INVALID"
  | "ORCH_ERR_VIEWPORT_INVALID"
  // requests from consoles (service.ts)
  | "ORCH_ERR_REQUEST_INVALID"
  | "ORCH_ERR_OPERATOR_UNKNOWN"
  | "ORCH_ERR_GRANT_OPERATOR"
  | "ORCH_ERR_GRANT_TENANT"
  | "ORCH_ERR_OUT_OF_GRANT"
  | "ORCH_ERR_ROLE"
  | "ORCH_ERR_VIEWPORT_UNKNOWN"
  | "ORCH_ERR_VIEWPORT_PARAM"
  | "ORCH_ERR_SELECTOR_INVALID"
  | "ORCH_ERR_TARGET_UNKNOWN"
  | "ORCH_ERR_NO_TARGETS"
  | "ORCH_ERR_TOO_MANY_TARGETS"
  | "ORCH_ERR_TENANT_BUSY"
  | "ORCH_ERR_FANOUT_UNKNOWN"
  // fan-out outcomes (fanout.ts)
  | "ORCH_ERR_PARTIAL"
  | "ORCH_ERR_CANCELLED"
  | "ORCH_ERR_DEADLINE"
  | "ORCH_ERR_COMBINE"
  | "ORCH_ERR_COMBINE_LIMIT"
  // per-Totebox reasons (pool.ts, fanout.ts): the `reason` of a status in a fan-out answer
  | "ORCH_ERR_TOTEBOX_OFFLINE"
  | "ORCH_ERR_TOTEBOX_TIMEOUT"
  | "ORCH_ERR_TOTEBOX_SUSPENDED"
  | "ORCH_ERR_TOTEBOX_ARCHIVED"
  | "ORCH_ERR_TOTEBOX_IDENTITY"
  | "ORCH_ERR_TOTEBOX_ANSWER"
  | "ORCH_ERR_TOTEBOX_BUSY"
  | "ORCH_ERR_INTERNAL";

export type OrchErrorDetail = Readonly<Record<string, string | number | boolean | null>>;

export class OrchError extends Error {
  override readonly name = "OrchError";
  readonly code: OrchErrorCode;
  /** Structured, non-secret context. */
  readonly detail: OrchErrorDetail | undefined;

  constructor(code: OrchErrorCode, message: string, detail?: OrchErrorDetail, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.detail = detail;
  }
}

export function isOrchError(e: unknown): e is OrchError {
  return e instanceof OrchError;
}
