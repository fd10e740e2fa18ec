/**
 * @os-orchestration/totebox — the reference Totebox archive.
 *
 * Public surface: create/open an archive, run its PSP server, its demo-data generator (whose
 * intercompany rule tests use to check reconciliation), and the shapes of its answers.
 */
export { type ArchivePaths, archivePaths, initArchive, openArchive } from "./archive.ts";
export {
  type AuditCheckpoint,
  type AuditConsistencyProof,
  checkpointBody,
  verifyCheckpoint,
} from "./audit-log.ts";
export { COMMAND_NAMES, type CommandName } from "./commands.ts";
export {
  type DemoDataOptions,
  type DemoDataSummary,
  expectedIntercompanyBalance,
  generateDemoData,
} from "./demo-data.ts";
export { isToteboxError, ToteboxError, type ToteboxErrorCode } from "./errors.ts";
export { type PeerKind, trustPeer } from "./peers.ts";
export type { ToteboxHello, ToteboxRemote, ToteboxSessionRemote, ToteboxViewRemote } from "./remote-api.ts";
export { ENTITY_KINDS, type EntityKind, openArchiveDatabase } from "./schema.ts";
export { ToteboxServer, type ToteboxServerOptions, type ToteboxStats } from "./server.ts";
export type { CancelReply, CommandReply, ReadAnswer } from "./subject.ts";
