/**
 * The one error class of the console package. Callers branch on `code` (stable, `CONSOLE_ERR_`,
 * listed in docs/errors.md); messages never carry key or token bytes.
 */
export type ConsoleErrorCode =
  | "CONSOLE_ERR_USAGE"
  | "CONSOLE_ERR_CONFIG"
  | "CONSOLE_ERR_KEYS"
  | "CONSOLE_ERR_AGGREGATOR"
  | "CONSOLE_ERR_UNKNOWN_TOTEBOX"
  | "CONSOLE_ERR_RECEIPT"
  | "CONSOLE_ERR_RECOMPUTE"
  | "CONSOLE_ERR_AUDIT"
  | "CONSOLE_ERR_PARTIAL"
  | "CONSOLE_ERR_UI_REQUEST";

export class ConsoleError extends Error {
  override readonly name = "ConsoleError";
  readonly code: ConsoleErrorCode;
  readonly detail: Readonly<Record<string, string | number | boolean | null>> | undefined;

  constructor(
    code: ConsoleErrorCode,
    message: string,
    detail?: Readonly<Record<string, string | number | boolean | null>>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.code = code;
    this.detail = detail;
  }
}
