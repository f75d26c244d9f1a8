/**
 * Ship for the repository format: `restic copy` of one backup's snapshots from the staging repository into the
 * target's repository (created on first use with the staging repository's chunker parameters, so that chunks
 * the target already holds are not sent again), disks first and the manifest snapshot last, then verified:
 *   - every snapshot of the backup is on the target as a copy of the staging one (restic's `original`) with the
 *     same tree id (content-addressed: the same tree means the same file list and the same chunk ids), and
 *   - `restic check` of the target repository passes (every chunk a tree references is indexed and stored).
 * A copy that was interrupted (kill -9, connection lost) leaves no snapshot on the target, only packs that the
 * next copy does not need again or that prune removes; the next run copies what is missing. Copying a snapshot
 * that is already there is skipped by restic itself.
 */
import type { HostConfig } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import type { RepositoryManifest } from "../manifest.ts";
import type { StoredBackup } from "../staging.ts";
import { KvmBackupError } from "../errors.ts";
import { TargetError, TargetVerifyError } from "../targets/target.ts";
import { groupBackups, type RepositoryBackup } from "./backups.ts";
import { stagingRepository, targetRepository } from "./repositories.ts";
import { type Restic, RUNNER_TAG } from "./restic.ts";

// Target repositories known to exist in this process (one `restic cat config` per target and run).
const known = new Set<string>();

/** The target's repository, created with the staging repository's chunker parameters when it is not there. */
export async function openTargetRepository(cfg: HostConfig, name: string, log: Logger): Promise<Restic> {
  const repo = targetRepository(cfg, name);
  const key = `${cfg.staging.path}\0${name}`;
  if (known.has(key)) return repo;
  if (!(await repo.exists())) {
    await repo.init(stagingRepository(cfg));
    log.info("repository.target-created", `created the restic repository on target ${name} with the staging repository's chunker parameters`, { target: name });
  }
  known.add(key);
  return repo;
}

function backupOf(snaps: Awaited<ReturnType<Restic["snapshots"]>>, vm: string, id: string): RepositoryBackup | undefined {
  return groupBackups(snaps, vm).find((b) => b.id === id);
}

/** What the target must hold for this backup, compared with what it holds; [] when the copy is complete. */
export function copyProblems(manifest: RepositoryManifest, source: RepositoryBackup, dest: RepositoryBackup | undefined): string[] {
  const problems: string[] = [];
  const wanted = [...source.all];
  for (const d of manifest.disks) {
    const s = source.disks.get(d.name);
    if (!s || s.id !== d.repository.snapshot) problems.push(`disk ${d.name}: the staging repository does not hold snapshot ${d.repository.snapshot.slice(0, 8)} of the manifest`);
  }
  for (const s of wanted) {
    const copy = dest?.all.find((t) => t.original === s.id || t.id === s.id);
    if (!copy) problems.push(`snapshot ${s.id.slice(0, 8)} (${s.paths.join(" ")}) is missing`);
    else if (copy.tree !== s.tree) problems.push(`snapshot ${s.id.slice(0, 8)} (${s.paths.join(" ")}) has tree ${copy.tree.slice(0, 8)} on the target, ${s.tree.slice(0, 8)} in staging`);
  }
  return problems;
}

/**
 * Copy one repository-format backup to a target and verify it there. A problem of the staging repository is
 * reported as this target's failure too (recorded, retried next run) instead of stopping the whole ship.
 */
export async function shipRepositoryBackup(cfg: HostConfig, name: string, b: StoredBackup & { manifest: RepositoryManifest }, log: Logger): Promise<"shipped" | "already-there"> {
  try {
    return await copyAndVerify(cfg, name, b, log);
  } catch (e) {
    if (e instanceof KvmBackupError && !(e instanceof TargetError)) throw new TargetError(e.message, name, { cause: e });
    throw e;
  }
}

async function copyAndVerify(cfg: HostConfig, name: string, b: StoredBackup & { manifest: RepositoryManifest }, log: Logger): Promise<"shipped" | "already-there"> {
  const staging = stagingRepository(cfg);
  const dest = await openTargetRepository(cfg, name, log);
  const tags = [RUNNER_TAG, `id=${b.id}`, `vm=${b.vm}`];
  const source = backupOf(await staging.snapshots(`listing ${b.vm}/${b.id}`, tags), b.vm, b.id);
  if (!source?.manifest) {
    throw new TargetVerifyError(`${b.vm}/${b.id}: the staging repository does not hold this backup's snapshots (${staging.where}); run \`kvm-backup verify ${b.vm}/${b.id}\``, name);
  }
  let there = backupOf(await dest.snapshots(`listing ${b.vm}/${b.id} on ${name}`, tags), b.vm, b.id);
  const copied = (id: string) => there?.all.some((t) => t.original === id || t.id === id) ?? false;
  // Disks first, the manifest snapshot in a copy of its own after them (restic does not promise an order within
  // one copy): on the target too, an id whose manifest snapshot is there has all its disks.
  const disks = source.all.filter((s) => s !== source.manifest && !copied(s.id));
  const manifestMissing = !copied(source.manifest.id);
  let result: "shipped" | "already-there" = "already-there";
  if (disks.length) await dest.copyFrom(staging, disks.map((s) => s.id), `copying ${b.vm}/${b.id} to ${name}`);
  if (manifestMissing) await dest.copyFrom(staging, [source.manifest.id], `copying the manifest of ${b.vm}/${b.id} to ${name}`);
  if (disks.length || manifestMissing) {
    result = "shipped";
    there = backupOf(await dest.snapshots(`listing ${b.vm}/${b.id} on ${name}`, tags), b.vm, b.id);
  }
  const problems = copyProblems(b.manifest, source, there);
  if (problems.length) throw new TargetVerifyError(`target "${name}" (${dest.where}): ${b.vm}/${b.id} differs from staging: ${problems.join("; ")}`, name);
  const check = await dest.check(undefined, `checking ${name} after copying ${b.vm}/${b.id}`);
  if (check !== null) throw new TargetVerifyError(`target "${name}" (${dest.where}): restic check failed after copying ${b.vm}/${b.id}: ${check}`, name);
  return result;
}
