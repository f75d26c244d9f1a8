/**
 * The backup format is a strategy of the one pipeline (pipeline.ts): the pipeline owns locking, recovery,
 * preflight, the snapshot and its removal, the manifest and the rename; a format decides only where a frozen
 * disk's bytes go and what must happen to them before the manifest makes the directory a backup.
 *
 *   prepare      before the snapshot: everything that can fail without touching the VM (PreflightError)
 *   streamDisk   inside the snapshot window, once per disk
 *   finishDisks  after the snapshot is removed: make the data durable (image) or ingest it (repository)
 *   commit       after manifest.json is written into <id>.partial, before the rename
 *   abandon      the backup failed: remove what it left outside <id>.partial
 *   recover      next run, VM lock held: remove what a killed run left outside <id>.partial
 */
import type { HostConfig, Policy } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import type { ImageManifest, Manifest, RepositoryManifest } from "../manifest.ts";
import type { DiskToBackup, FrozenDisk } from "../snapshot/backend.ts";
import type { StoredBackup } from "../staging.ts";
import type { StreamResult } from "../stream.ts";

export interface FormatContext {
  config: HostConfig;
  vm: string;
  policyName: string;
  policy: Policy;
  backupId: string;
  log: Logger;
}

export interface StreamedDisk {
  disk: FrozenDisk;
  result: StreamResult;
  /** File written into <id>.partial during the window (image file, staged image, restic's summary). */
  file: string;
}

export type ManifestDisks = ImageManifest["disks"] | RepositoryManifest["disks"];

export interface BackupFormatStrategy {
  readonly name: Manifest["format"];
  prepare(ctx: FormatContext): Promise<void>;
  /** Bytes the backup will need on staging, at worst. */
  spaceEstimate(disks: DiskToBackup[], last: StoredBackup | undefined, policy: Policy): number;
  streamDisk(ctx: FormatContext, disk: FrozenDisk, partial: string, signal: AbortSignal): Promise<StreamedDisk>;
  finishDisks(ctx: FormatContext, streamed: StreamedDisk[], partial: string, signal: AbortSignal): Promise<ManifestDisks>;
  commit(ctx: FormatContext, manifest: Manifest, manifestText: string): Promise<void>;
  abandon(ctx: FormatContext): Promise<void>;
  recover(ctx: FormatContext, completeIds: Set<string>): Promise<string[]>;
}
