/**
 * The on-disk layout of the staging directory (documented in the README):
 *   <staging>/<vm>/<id>/manifest.json   a complete backup (with <disk>.raw.zst, domain.xml, state.json)
 *   <staging>/<vm>/<id>.partial/        a backup being written; never a backup; removed by recovery
 *   <staging>/<vm>/.trash-<id>/         a backup being deleted; removed by recovery
 *   <staging>/.kvm-backup/              locks and the crash journal
 * VM names start with a letter or digit, so the dot-names can never collide with a VM or a backup.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { Manifest, MANIFEST_FILE } from "./manifest.ts";

export const PARTIAL_SUFFIX = ".partial";
export const TRASH_PREFIX = ".trash-";
export const STATE_FILE = "state.json";
export const ID_RE = /^\d{8}T\d{6}Z(?:-\d+)?$/;

export function runtimeDir(staging: string): string {
  return join(staging, ".kvm-backup");
}
export function vmDir(staging: string, vm: string): string {
  return join(staging, vm);
}
export function backupDir(staging: string, vm: string, id: string): string {
  return join(staging, vm, id);
}
export function partialDir(staging: string, vm: string, id: string): string {
  return join(staging, vm, id + PARTIAL_SUFFIX);
}

/** Backup ids are UTC times, so they sort by age and say when the snapshot was taken. */
export function newBackupId(now: Date, taken: (id: string) => boolean): string {
  const base = now.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  let id = base;
  for (let n = 2; taken(id); n++) id = `${base}-${n}`;
  return id;
}

export function idTime(id: string): Date {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z/.exec(id);
  if (!m) throw new Error(`not a backup id: ${id}`);
  return new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
}

export interface StoredBackup {
  vm: string;
  id: string;
  dir: string;
  manifest: Manifest;
}

export class ManifestError extends Error {}

export function readManifest(dir: string): Manifest {
  const file = join(dir, MANIFEST_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new ManifestError(`${file}: cannot read manifest: ${(e as Error).message}`);
  }
  const r = Manifest.safeParse(raw);
  if (!r.success) throw new ManifestError(`${file}: invalid manifest: ${r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  return r.data;
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw e;
  }
}

export function stagedVms(staging: string): string[] {
  return listDir(staging).filter((n) => !n.startsWith(".") && statSync(join(staging, n)).isDirectory());
}

/** Complete backups of one VM, oldest first. A directory without a readable manifest is not one. */
export function listBackups(staging: string, vm: string): StoredBackup[] {
  const dir = vmDir(staging, vm);
  return listDir(dir)
    .filter((n) => ID_RE.test(n) && existsSync(join(dir, n, MANIFEST_FILE)))
    .flatMap((id) => {
      try {
        return [{ vm, id, dir: join(dir, id), manifest: readManifest(join(dir, id)) }];
      } catch {
        return [];
      }
    });
}

export function listPartials(staging: string, vm: string): string[] {
  return listDir(vmDir(staging, vm)).filter((n) => n.endsWith(PARTIAL_SUFFIX)).map((n) => join(vmDir(staging, vm), n));
}

export function listTrash(staging: string, vm: string): string[] {
  return listDir(vmDir(staging, vm)).filter((n) => n.startsWith(TRASH_PREFIX)).map((n) => join(vmDir(staging, vm), n));
}
