/**
 * `restore --from <target>`: bring one complete backup's files from a target back to the host, into a scratch
 * directory on the staging disk (<staging>/.kvm-backup/fetch/<vm>-<id>/), check each against the manifest the
 * target holds, and hand the directory to the same restore code as a staged backup. The target alone is enough:
 * staging may have lost the backup long ago. The scratch copy is removed afterwards (and before, if a crashed
 * earlier fetch left one).
 */
import { mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { HostConfig } from "../config/schema.ts";
import { formatBytes } from "../config/sizes.ts";
import { KvmBackupError, UsageError } from "../errors.ts";
import { checkLocalStaging } from "../localFs.ts";
import { Manifest, MANIFEST_FILE } from "../manifest.ts";
import { sha256File } from "../ship.ts";
import { runtimeDir } from "../staging.ts";
import { openTarget } from "./openTarget.ts";
import { compareFacts, expectedFiles, type FileFacts, TargetVerifyError } from "./target.ts";

export interface FetchedBackup {
  vm: string;
  id: string;
  dir: string;
  manifest: Manifest;
  /** Remove the scratch copy. */
  cleanup(): void;
}

export function fetchDir(staging: string, vm: string, id: string): string {
  return join(runtimeDir(staging), "fetch", `${vm}-${id}`);
}

/** Fetch the files of `disks` (default: every disk) of vm/id from target `name`, checked against its manifest. */
export async function fetchFromTarget(cfg: HostConfig, name: string, vm: string, id: string, disks?: string[]): Promise<FetchedBackup> {
  if (!(name in cfg.targets)) throw new UsageError(`unknown target "${name}" (known: ${Object.keys(cfg.targets).join(", ") || "none are configured"})`);
  const target = openTarget(cfg, name);
  await target.check();
  const listing = await target.list(vm);
  if (!listing.backups.includes(id)) {
    throw new UsageError(`target "${name}" (${target.where}) holds no complete backup ${vm}/${id} (it holds: ${listing.backups.join(", ") || "none"}); \`kvm-backup list --target ${name}\``);
  }
  const text = await target.readManifestText(vm, id);
  let parsed;
  try {
    parsed = Manifest.safeParse(JSON.parse(text));
  } catch {
    parsed = undefined;
  }
  if (!parsed?.success) throw new TargetVerifyError(`target "${name}": ${vm}/${id}/${MANIFEST_FILE} is not a valid manifest; this copy cannot be restored, try another target or backup`, name);
  const manifest = parsed.data;
  const wanted = new Map<string, FileFacts>();
  const disksOf = new Map(manifest.disks.map((d) => [d.name, d]));
  for (const [file, facts] of expectedFiles(manifest)) {
    const disk = manifest.disks.find((d) => "file" in d && d.file === file);
    if (!disks || (disk && disks.includes(disk.name))) wanted.set(file, facts);
  }
  for (const d of disks ?? []) {
    if (!disksOf.has(d)) throw new UsageError(`backup ${vm}/${id} has no disk ${d} (it has ${[...disksOf.keys()].join(", ")})`);
  }
  if (wanted.size === 0) throw new KvmBackupError(`backup ${vm}/${id} on target "${name}" has no image files to fetch (format ${manifest.format}); restore it with the tools of its format`);
  const need = [...wanted.values()].reduce((s, f) => s + f.size, 0);
  await checkLocalStaging(cfg.staging.path, need, `fetching ${vm}/${id} from target "${name}" (${formatBytes(need)})`);

  const dir = fetchDir(cfg.staging.path, vm, id);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  try {
    await target.download(vm, id, [...wanted.keys()], dir);
    const got = new Map<string, FileFacts>();
    for (const file of wanted.keys()) {
      const path = join(dir, file);
      try {
        got.set(file, { size: statSync(path).size, sha256: await sha256File(path) });
      } catch {
        /* missing: reported below */
      }
    }
    const problems = compareFacts(wanted, got);
    if (problems.length) {
      throw new TargetVerifyError(`target "${name}" (${target.where}): the copy of ${vm}/${id} fetched from it differs from its manifest: ${problems.join("; ")}; \`kvm-backup verify --target ${name} ${vm}/${id}\``, name);
    }
    writeFileSync(join(dir, MANIFEST_FILE), text);
  } catch (e) {
    cleanup();
    throw e;
  }
  return { vm, id, dir, manifest, cleanup };
}
