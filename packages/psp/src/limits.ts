/**
 * Limits a PSP endpoint enforces on what it *receives*. They are a purely local decision: the
 * peer is never told them and nothing is negotiated. A peer that breaks one loses its link with a
 * typed PspError; every other link of the process is left alone.
 */
export interface PspLimits {
  /** Largest frame accepted, header included, in bytes. Default 4 MiB. */
  readonly maxFrameBytes: number;
  /** Most segments (CBOR body + binary attachments) in one frame. Default 64. */
  readonly maxSegments: number;
  /** Most RPC messages batched in one frame. Default 1024. */
  readonly maxMessagesPerFrame: number;
  /**
   * Subject side: most calls the commander may have open on the link at once (pushed and not yet
   * released). Default 256.
   */
  readonly maxCallsInFlight: number;
  /**
   * Subject side: longest chain of pipelined calls, each depending on the previous one's result,
   * that one link may build. A chain of `authorize → view → read` has depth 3. Default 8.
   */
  readonly maxPipelineDepth: number;
  /** Deepest nesting of a decoded message (arrays and maps). Default 64. */
  readonly maxMessageDepth: number;
  /**
   * A link that delivers no complete frame for this long is closed, in milliseconds. Bytes that
   * trickle in without completing a frame do not count as activity. Default 45 000.
   */
  readonly idleTimeoutMs: number;
  /** Commander side: how often it pings an otherwise quiet link, in milliseconds. Default 15 000. */
  readonly pingIntervalMs: number;
  /** Longest time a TLS handshake plus pin check may take, in milliseconds. Default 10 000. */
  readonly handshakeTimeoutMs: number;
  /**
   * A peer that stops reading while we write: once this many bytes wait in our send buffer the
   * link is closed rather than buffering without bound. Default 64 MiB.
   */
  readonly maxSendBufferBytes: number;
  /** Byte strings at least this long travel as 8-byte-aligned frame attachments. Default 256. */
  readonly attachmentThresholdBytes: number;
  /**
   * Sending side: a frame that would carry only `release` messages waits up to this long, in
   * milliseconds, for the next frame out to ride along with (0 sends it at once). Until it
   * leaves, the peer keeps those answers in its export table and counts the calls as in flight;
   * that never exceeds what was in flight at the peak, since any new call carries the waiting
   * releases ahead of it. Default 1 000 (the aggregator's Totebox links use 10 000: see pool.ts).
   */
  readonly releaseDelayMs: number;
}

export const DEFAULT_PSP_LIMITS: Readonly<PspLimits> = Object.freeze({
  maxFrameBytes: 4 * 1024 * 1024,
  maxSegments: 64,
  maxMessagesPerFrame: 1024,
  maxCallsInFlight: 256,
  maxPipelineDepth: 8,
  maxMessageDepth: 64,
  idleTimeoutMs: 45_000,
  pingIntervalMs: 15_000,
  handshakeTimeoutMs: 10_000,
  maxSendBufferBytes: 64 * 1024 * 1024,
  attachmentThresholdBytes: 256,
  releaseDelayMs: 1_000,
});

export function resolveLimits(overrides?: Partial<PspLimits>): Readonly<PspLimits> {
  if (!overrides) return DEFAULT_PSP_LIMITS;
  const d = overrides.releaseDelayMs;
  if (d !== undefined && !(Number.isFinite(d) && d >= 0)) {
    throw new RangeError("releaseDelayMs must be a finite number ≥ 0");
  }
  return Object.freeze({ ...DEFAULT_PSP_LIMITS, ...overrides });
}
