/** The dashboard's one error class: every failure the UI shows carries a stable code. */
export type UiErrorCode =
  /** The request never got an HTTP answer (server stopped, network down). */
  | "UI_ERR_NETWORK"
  /** No session: the address was opened without the one-time link `os-console ui` printed. */
  | "UI_ERR_UNAUTHORIZED"
  /** The server answered with an error status (its own code is passed through when it sent one). */
  | "UI_ERR_HTTP"
  /** A body that is not what the API promises (wrong shape, type, count or length). */
  | "UI_ERR_BAD_RESPONSE"
  /** A body, line or event beyond the size bounds. */
  | "UI_ERR_TOO_LARGE"
  /** The progress stream ended or broke before its result and the fallback also failed. */
  | "UI_ERR_STREAM";

export class UiError extends Error {
  readonly code: UiErrorCode | string;

  constructor(code: UiErrorCode | string, message: string) {
    super(message);
    this.name = "UiError";
    this.code = code;
  }
}

/** Any thrown value as {code, message} for display; messages are clipped, never raw bodies. */
export function toProblem(e: unknown): { code: string; message: string } {
  if (e instanceof UiError) return { code: e.code, message: clip(e.message) };
  if (e instanceof Error && e.name === "AbortError") return { code: "UI_ERR_NETWORK", message: "aborted" };
  return { code: "UI_ERR_NETWORK", message: clip(e instanceof Error ? e.message : String(e)) };
}

export function clip(s: string, max = 500): string {
  return s.length <= max ? s : `${s.slice(0, max)}…`;
}
