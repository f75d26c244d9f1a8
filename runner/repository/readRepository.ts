/**
 * Reading repository-format backups back: the guest-visible bytes of a disk (`restic dump`) hashed on the way,
 * for verify and restore; and the check of a target's copies against their manifests.
 */
import type { Writable } from "node:stream";
import type { RepositoryDisk, RepositoryManifest } from "../manifest.ts";
import { type DiskVerdict, hashedCopy } from "../verifyBackup.ts";
import { groupBackups, type RepositoryBackup } from "./backups.ts";
import type { Restic, ResticSnapshot } from "./restic.ts";

/** Streams one disk out of `snapshot` into `sink` (or nowhere), hashing the bytes. */
export async function readRepositoryDisk(repo: Restic, snapshot: string, d: RepositoryDisk, sink?: Writable): Promise<{ sha256: string; bytes: number }> {
  return hashedCopy(await repo.dump(snapshot, d.repository.path, `reading disk ${d.name}`), sink);
}

/** A disk read back in full and compared with its manifest (length and SHA-256). */
export async function verifyRepositoryDisk(repo: Restic, snapshot: string, d: RepositoryDisk): Promise<DiskVerdict> {
  try {
    const r = await readRepositoryDisk(repo, snapshot, d);
    if (r.bytes !== d.virtualSize) return { disk: d.name, ok: false, problem: `${repo.where}: ${d.repository.path} holds ${r.bytes} bytes, the disk has ${d.virtualSize}` };
    if (r.sha256 !== d.sha256) return { disk: d.name, ok: false, problem: `${repo.where}: ${d.repository.path} does not match: SHA-256 ${r.sha256}, the manifest says ${d.sha256}` };
    return { disk: d.name, ok: true };
  } catch (e) {
    return { disk: d.name, ok: false, problem: (e as Error).message };
  }
}

/** The snapshot in `b` that is (a copy of) the manifest's snapshot of disk `d`, with the same tree. */
export function snapshotOfDisk(b: RepositoryBackup, d: RepositoryDisk): ResticSnapshot | undefined {
  const s = b.disks.get(d.name);
  return s && (s.id === d.repository.snapshot || s.original === d.repository.snapshot) && s.tree === d.repository.tree ? s : undefined;
}

/** Differences between a backup in a repository and its manifest: every disk there, copied from the right snapshot, same tree. */
export function manifestProblems(b: RepositoryBackup, m: RepositoryManifest): string[] {
  const problems: string[] = [];
  for (const d of m.disks) {
    const s = b.disks.get(d.name);
    if (!s) problems.push(`disk ${d.name}: no snapshot`);
    else if (!snapshotOfDisk(b, d)) problems.push(`disk ${d.name}: snapshot ${s.id.slice(0, 8)} is not the manifest's (${d.repository.snapshot.slice(0, 8)}, tree ${d.repository.tree.slice(0, 8)})`);
  }
  return problems;
}

/** Complete backups of a VM in a repository. */
export async function repositoryBackups(repo: Restic, vm: string, what: string): Promise<RepositoryBackup[]> {
  return groupBackups(await repo.snapshots(what), vm).filter((b) => b.manifest !== undefined);
}

