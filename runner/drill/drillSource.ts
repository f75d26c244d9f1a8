/**
 * Which backup a drill boots and where its bytes come from, the same ways `restore` reads them:
 *   staging (default)   the newest complete backup (or --id): image files, or the staging restic repository
 *   --from TARGET       that target alone (the copy that would save the day if the host were lost): a repository
 *                       target is read through restic, an image target's files are fetched into
 *                       <staging>/.kvm-backup/fetch/ and checked against the target's manifest (removed after)
 * Without --id, a target's newest complete image backup is drilled; a repository target needs --id.
 */
import type { Writable } from "node:stream";
import type { DiskReader } from "../commands/restore.ts";
import type { HostConfig } from "../config/schema.ts";
import { KvmBackupError, UsageError } from "../errors.ts";
import type { Manifest, ManifestDisk, RepositoryDisk } from "../manifest.ts";
import { repositoryBackupOnTarget, stagingReader } from "../repository/restoreSource.ts";
import { listBackups, type StoredBackup } from "../staging.ts";
import { fetchFromTarget } from "../targets/fetchBackup.ts";
import { openTarget } from "../targets/openTarget.ts";
import { readStoredDisk } from "../verifyBackup.ts";

export interface DrillSource {
  vm: string;
  id: string;
  /** "staging" or the target's name (recorded with the result). */
  from: string;
  manifest: Manifest;
  /** The directory holding the backup's files (manifest, domain.xml; image files), "" for a target repository. */
  dir: string;
  /** The staged copy of this backup, if staging has it: its state.json records the drill. */
  staged: StoredBackup | null;
  reader(d: ManifestDisk | RepositoryDisk): DiskReader;
  /** Removes a fetched copy. */
  cleanup(): void;
}

function repositoryReader(read: (d: RepositoryDisk) => DiskReader): (d: ManifestDisk | RepositoryDisk) => DiskReader {
  return (d) => {
    if (!("repository" in d)) throw new KvmBackupError(`disk ${d.name} is an image file, not in a restic repository`);
    return read(d);
  };
}

function imageReader(dir: string): (d: ManifestDisk | RepositoryDisk) => DiskReader {
  return (d) => {
    if (!("file" in d)) throw new KvmBackupError(`disk ${d.name} is in a restic repository, not an image file`);
    return (sink: Writable) => readStoredDisk(dir, d, sink);
  };
}

function stagedBackup(cfg: HostConfig, vm: string, id: string | undefined): StoredBackup {
  const staging = cfg.staging.path;
  const all = listBackups(staging, vm);
  if (id !== undefined) {
    const b = all.find((x) => x.id === id);
    if (!b) throw new UsageError(`no complete backup ${vm}/${id} in staging ${staging} (it has: ${all.map((x) => x.id).join(", ") || "none"}; \`kvm-backup list --vm ${vm}\`; --from TARGET drills a target's copy)`);
    return b;
  }
  const b = all.at(-1);
  if (!b) throw new KvmBackupError(`VM ${vm} has no complete backup in staging ${staging} to drill; run \`kvm-backup run --vm ${vm}\` first, or look at why its backups fail (\`kvm-backup status\`)`);
  return b;
}

/** The backup a drill uses: --id, else the newest complete one in staging or on the target. */
export async function drillBackupId(cfg: HostConfig, vm: string, from: string | undefined, id: string | undefined): Promise<string> {
  if (from === undefined || from === "staging") return stagedBackup(cfg, vm, id).id;
  if (id !== undefined) return id;
  const target = from;
  if (!(target in cfg.targets)) throw new UsageError(`unknown target "${target}" (known: ${Object.keys(cfg.targets).join(", ") || "none are configured"})`);
  const t = openTarget(cfg, target);
  await t.check();
  const newest = (await t.list(vm)).backups.at(-1);
  if (!newest) throw new KvmBackupError(`target "${target}" (${t.where}) holds no complete image backup of VM ${vm}; for a repository target name the backup with --id (\`kvm-backup list --vm ${vm}\`)`);
  return newest;
}

/** Opens the backup `id` of `vm` (drillBackupId) from staging or the target `from`. */
export async function openDrillSource(cfg: HostConfig, vm: string, from: string | undefined, id: string): Promise<DrillSource> {
  const staged = (backupId: string) => listBackups(cfg.staging.path, vm).find((x) => x.id === backupId) ?? null;
  if (from === undefined || from === "staging") {
    const b = stagedBackup(cfg, vm, id);
    const reader = b.manifest.format === "repository" ? repositoryReader(stagingReader(cfg)) : imageReader(b.dir);
    return { vm, id: b.id, from: "staging", manifest: b.manifest, dir: b.dir, staged: b, reader, cleanup: () => undefined };
  }
  const repo = await repositoryBackupOnTarget(cfg, from, vm, id);
  if (repo) {
    return {
      vm,
      id,
      from,
      manifest: repo.manifest,
      dir: repo.dir,
      staged: staged(id),
      reader: repositoryReader(repo.reader),
      cleanup: () => undefined,
    };
  }
  const fetched = await fetchFromTarget(cfg, from, vm, id);
  return { vm, id, from, manifest: fetched.manifest, dir: fetched.dir, staged: staged(id), reader: imageReader(fetched.dir), cleanup: fetched.cleanup };
}
