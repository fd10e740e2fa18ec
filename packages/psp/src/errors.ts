/**
 * The one error class of the PSP package. Callers branch on `code`, never on `message`.
 *
 * Rules kept by every throw site in this package:
 * - `code` is a stable string listed in docs/errors.md (a test fails when one is missing);
 * - messages describe what was wrong with an input, never its bytes: no token, key, signature
 *   or secret material is ever interpolated into a message or `detail`.
 */
export type PspErrorCode =
  // transport and identity
  | "PSP_ERR_TLS_HANDSHAKE"
  | "PSP_ERR_TLS_TIMEOUT"
  | "PSP_ERR_PEER_NO_CERT"
  | "PSP_ERR_PEER_PIN"
  | "PSP_ERR_PEER_UNKNOWN"
  | "PSP_ERR_IDENTITY"
  | "PSP_ERR_LINK_CLOSED"
  | "PSP_ERR_PAIRING"
  | "PSP_ERR_SEND_BUFFER"
  | "PSP_ERR_INTERNAL"
  // framing and limits
  | "PSP_ERR_FRAME_TOO_LARGE"
  | "PSP_ERR_FRAME_MALFORMED"
  | "PSP_ERR_FRAME_KIND"
  | "PSP_ERR_IDLE_TIMEOUT"
  | "PSP_ERR_CALLS_IN_FLIGHT"
  | "PSP_ERR_PIPELINE_DEPTH"
  | "PSP_ERR_MESSAGE_MALFORMED"
  | "PSP_ERR_METHOD_UNKNOWN"
  | "PSP_ERR_ABANDONED"
  // the Diode
  | "PSP_ERR_DIODE"
  // capabilities
  | "PSP_ERR_CAP_MALFORMED"
  | "PSP_ERR_CAP_UNSUPPORTED_ALG"
  | "PSP_ERR_CAP_SIGNATURE"
  | "PSP_ERR_CAP_EXPIRED"
  | "PSP_ERR_CAP_NOT_YET_VALID"
  | "PSP_ERR_CAP_REPLAYED"
  | "PSP_ERR_CAP_REPLAY_STORE_FULL"
  | "PSP_ERR_CAP_AUDIENCE"
  | "PSP_ERR_CAP_SCOPE"
  | "PSP_ERR_CAP_ISSUER"
  | "PSP_ERR_CAP_LIFETIME"
  | "PSP_ERR_CAP_GRANT_MISMATCH"
  // results and receipts
  | "PSP_ERR_RESULT_MALFORMED"
  | "PSP_ERR_RECEIPT_SIGNATURE"
  | "PSP_ERR_RECEIPT_MISMATCH"
  // Merkle trees (merkle.ts)
  | "PSP_ERR_MERKLE_PROOF"
  | "PSP_ERR_MERKLE_RANGE";

export class PspError extends Error {
  override readonly name = "PspError";
  readonly code: PspErrorCode;
  /** Structured, non-secret context (field names, limits, counts). */
  readonly detail: Readonly<Record<string, string | number | boolean>> | undefined;

  constructor(
    code: PspErrorCode,
    message: string,
    detail?: Record<string, string | number | boolean>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.code = code;
    this.detail = detail;
  }
}

export function isPspError(e: unknown, code?: PspErrorCode): e is PspError {
  // Errors that crossed an RPC link arrive as plain Error objects carrying `code`.
  if (typeof e !== "object" || e === null) return false;
  const c = (e as { code?: unknown }).code;
  if (typeof c !== "string" || !c.startsWith("PSP_ERR_")) return false;
  return code === undefined || c === code;
}
