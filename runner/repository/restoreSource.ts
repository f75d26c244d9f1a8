/**
 * Where `restore` reads a repository-format backup from: the staging repository, or (restore --from TARGET) the
 * target's repository alone, with the manifest the repository holds. The bytes stream out of `restic dump`
 * straight into the restore's file or device; restore.ts checks length and SHA-256 against the manifest.
 */
import type { DiskReader } from "../commands/restore.ts";
import { policyFormat, type HostConfig } from "../config/schema.ts";
import { UsageError } from "../errors.ts";
import type { RepositoryDisk, RepositoryManifest } from "../manifest.ts";
import { openTarget } from "../targets/openTarget.ts";
import { TargetVerifyError } from "../targets/target.ts";
import { readRepositoryManifest } from "./backups.ts";
import { readRepositoryDisk, repositoryBackups, snapshotOfDisk } from "./readRepository.ts";
import { stagingRepository, targetRepository } from "./repositories.ts";

export interface RepositoryRestoreSource {
  vm: string;
  id: string;
  /** Not a directory of files: "" (restore reads through `reader`). */
  dir: string;
  manifest: RepositoryManifest;
  reader(d: RepositoryDisk): DiskReader;
}

/** A staged repository-format backup's disks, read from the staging repository. */
export function stagingReader(cfg: HostConfig): (d: RepositoryDisk) => DiskReader {
  const repo = stagingRepository(cfg);
  return (d) => (sink) => readRepositoryDisk(repo, d.repository.snapshot, d, sink);
}

/**
 * vm/id in target `name`'s repository, or null when that target has no repository or no such backup there (then
 * the image-format fetch takes over). Only the target is used: staging may have lost the backup long ago.
 */
export async function repositoryBackupOnTarget(cfg: HostConfig, name: string, vm: string, id: string): Promise<RepositoryRestoreSource | null> {
  if (!(name in cfg.targets)) throw new UsageError(`unknown target "${name}" (known: ${Object.keys(cfg.targets).join(", ") || "none are configured"})`);
  if (!Object.values(cfg.policies).some((p) => policyFormat(p) === "repository" && p.targets.includes(name))) return null;
  await openTarget(cfg, name).check();
  const repo = targetRepository(cfg, name);
  if (!(await repo.exists())) return null;
  const b = (await repositoryBackups(repo, vm, `looking for ${vm}/${id} on ${name}`)).find((x) => x.id === id);
  if (!b) return null;
  const manifest = await readRepositoryManifest(repo, b);
  return {
    vm,
    id,
    dir: "",
    manifest,
    reader: (d) => {
      const snap = snapshotOfDisk(b, d);
      if (!snap) throw new TargetVerifyError(`target "${name}": disk ${d.name} of ${vm}/${id} is not in its repository as the manifest says; this copy cannot be restored, try another target or backup`, name);
      return (sink) => readRepositoryDisk(repo, snap.id, d, sink);
    },
  };
}
