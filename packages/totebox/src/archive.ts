import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createIdentity, type Identity, loadIdentity, saveIdentity } from "@os-orchestration/psp";
import { ensureAuditSchema } from "./audit-log.ts";
import { ToteboxError } from "./errors.ts";
import { ensureRuntimeSchema } from "./runtime-schema.ts";
import {
  type Db,
  type EntityInit,
  type EntityRecord,
  initEntity,
  openArchiveDatabase,
  readEntity,
} from "./schema.ts";

/**
 * An archive folder holds one entity's sovereign archive:
 *
 *   <dir>/identity/identity.key   Ed25519 key (0600)   — signs TLS, receipts, checkpoints
 *   <dir>/identity/identity.crt   self-signed certificate: its SHA-256 is the device ID
 *   <dir>/archive.db              SQLite (WAL): records, audit log, pairings, staged entries
 *   <dir>/policy.yaml             the owner's exposure policy (reloaded when it changes)
 *   <dir>/snapshots/              consistent backups made by the `snapshot` command
 */
export const ARCHIVE_FILES = {
  identity: "identity",
  db: "archive.db",
  policy: "policy.yaml",
  snapshots: "snapshots",
} as const;

export const DEFAULT_POLICY_FILE = join(dirname(fileURLToPath(import.meta.url)), "default-policy.yaml");

export interface ArchivePaths {
  dir: string;
  identityDir: string;
  db: string;
  policy: string;
}

export function archivePaths(dir: string): ArchivePaths {
  return {
    dir,
    identityDir: join(dir, ARCHIVE_FILES.identity),
    db: join(dir, ARCHIVE_FILES.db),
    policy: join(dir, ARCHIVE_FILES.policy),
  };
}

export interface InitArchiveOptions extends EntityInit {
  dir: string;
}

/** Creates a new archive folder. Refuses a folder that already holds an archive. */
export async function initArchive(
  options: InitArchiveOptions,
): Promise<{ entity: EntityRecord; identity: Identity }> {
  const p = archivePaths(options.dir);
  if (existsSync(p.db))
    throw new ToteboxError("TOTEBOX_ERR_ARCHIVE", "an archive already exists in this folder");
  mkdirSync(options.dir, { recursive: true, mode: 0o700 });
  const identity = await createIdentity({ name: `totebox:${options.id}` });
  await saveIdentity(p.identityDir, identity);
  const db = openArchiveDatabase(p.db);
  try {
    ensureRuntimeSchema(db);
    ensureAuditSchema(db);
    const { dir: _dir, ...entityInit } = options;
    const entity = initEntity(db, entityInit);
    copyFileSync(DEFAULT_POLICY_FILE, p.policy);
    return { entity, identity };
  } finally {
    db.close();
  }
}

export interface OpenedArchive {
  paths: ArchivePaths;
  db: Db;
  identity: Identity;
  entity: EntityRecord;
}

/** Opens an existing archive read-write (the one writer: the server, or a CLI command). */
export async function openArchive(dir: string): Promise<OpenedArchive> {
  const paths = archivePaths(dir);
  if (!existsSync(paths.db))
    throw new ToteboxError("TOTEBOX_ERR_ARCHIVE", "no archive in this folder (run os-totebox init)");
  const db = openArchiveDatabase(paths.db, { create: false });
  try {
    ensureRuntimeSchema(db);
    ensureAuditSchema(db);
    const entity = readEntity(db);
    if (!entity) throw new ToteboxError("TOTEBOX_ERR_ARCHIVE", "archive has no entity record");
    const identity = await loadIdentity(paths.identityDir, `totebox:${entity.id}`);
    return { paths, db, identity, entity };
  } catch (e) {
    db.close();
    throw e;
  }
}
