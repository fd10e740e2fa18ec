/**
 * @os-orchestration/psp — the PointSav Protocol.
 *
 * The public surface: identities and pinned mutual-TLS links, the Diode-fenced capnweb sessions
 * over them, capabilities (grants and call capabilities), receipts, Arrow results, the RFC 6962
 * Merkle tree, pairing, limits and the one error class. Everything else is internal.
 */

export {
  BatchRootCache,
  CAPABILITY_LIMITS,
  type CallClaims,
  type CallInput,
  type CallRequest,
  decodeUnverified,
  type GrantClaims,
  type GrantInput,
  issueCallCapability,
  issueCallCapabilityBatch,
  issueGrant,
  keyIdOf,
  keyIdOfRaw,
  selectorMatches,
  type TrustedOperator,
  type TrustedOperators,
  type VerifiedCall,
  type VerifiedGrant,
  verifyCallChain,
  verifyGrant,
} from "./capability.ts";
export { type Clock, ManualClock, systemClock } from "./clock.ts";
export type { PspRole } from "./diode.ts";
export {
  DIRECT_READ_LIMITS,
  DIRECT_READ_METHOD,
  type DirectReadBody,
  type DirectReadReply,
  type DirectReadRequest,
  decodeDirectReadReply,
  decodeDirectReadRequest,
  directReadPayload,
  encodeDirectReadBody,
  encodeDirectReadReply,
} from "./direct-read.ts";
export { type Endpoint, type EndpointParse, isValidHost, parseEndpoint } from "./endpoint.ts";
export { isPspError, PspError, type PspErrorCode } from "./errors.ts";
export { FrameKind } from "./frame-codec.ts";
export {
  certFingerprint,
  createIdentity,
  formatDeviceId,
  type Identity,
  identityFromPem,
  keyIdOfPublicKey,
  loadIdentity,
  loadOrCreateIdentity,
  normalizeFingerprint,
  publicKeyFromRaw,
  rawEd25519PublicKey,
  saveIdentity,
} from "./identity.ts";
export { DEFAULT_PSP_LIMITS, type PspLimits, resolveLimits } from "./limits.ts";
export {
  type DirectRequestHandler,
  type LinkStats,
  type PeerInfo,
  PspLink,
  type ReplySink,
  toPspError,
} from "./link.ts";
export {
  consistencyProof,
  inclusionProof,
  MerkleTree,
  rootFromInclusionProof,
  treeRoot,
  verifyConsistency,
  verifyInclusion,
} from "./merkle.ts";
export { newPairingCode, normalizePairingCode, pairingProof, verifyPairingProof } from "./pairing.ts";
export {
  arrowDigest,
  type CanonicalValue,
  canonicalCbor,
  checkReceipt,
  type ReceiptClaims,
  type ReceiptCounts,
  type ReceiptRequest,
  requestHash,
  signReceipt,
  verifyReceipt,
} from "./receipt.ts";
export { MemoryReplayStore, type ReplayStore } from "./replay-store.ts";
export {
  type Cell,
  COLUMN_TYPES,
  type ColumnSpec,
  type ColumnType,
  type DecodedResult,
  decodeResult,
  encodeResult,
} from "./result.ts";
export {
  openCommander,
  releaseStub,
  type SubjectSession,
  sanitizeOutgoingError,
  serveSubject,
} from "./rpc.ts";
export { ManualScheduler, type Scheduler, systemScheduler, type TimerHandle } from "./scheduler.ts";
export {
  connectPsp,
  listenPsp,
  type PeerAuthorizer,
  type PspConnectOptions,
  type PspServer,
  type PspServerOptions,
  pinOnly,
  type RefusalLog,
} from "./tls.ts";
