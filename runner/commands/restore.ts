import { createWriteStream, existsSync, mkdirSync, realpathSync, renameSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { loadHostConfig } from "../config/hostConfig.ts";
import type { HostConfig } from "../config/schema.ts";
import { ExitCode, KvmBackupError, UsageError } from "../errors.ts";
import { blockList, virsh } from "../libvirt/virsh.ts";
import type { Writable } from "node:stream";
import type { ManifestDisk, RepositoryDisk } from "../manifest.ts";
import { lockBackup } from "../ship.ts";
import { ID_RE, listBackups } from "../staging.ts";
import { readStoredDisk } from "../verifyBackup.ts";
import { type FetchedBackup, fetchFromTarget } from "../targets/fetchBackup.ts";
import { repositoryBackupOnTarget, stagingReader } from "../repository/restoreSource.ts";
import type { Command } from "./command.ts";
import { selectVms } from "./vmSelection.ts";

export class RestoreRefusedError extends KvmBackupError {}

function realOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

/** Paths (resolved) of every disk image a running or paused domain uses right now. */
async function disksInUse(cfg: HostConfig): Promise<Map<string, string>> {
  const used = new Map<string, string>();
  const names = (await virsh(cfg.libvirtUri, ["list", "--name"])).stdout.split("\n").map((s) => s.trim()).filter(Boolean);
  for (const dom of names) {
    for (const e of await blockList(cfg.libvirtUri, dom)) if (e.source) used.set(realOrSelf(e.source), `disk ${e.target} of the running domain ${dom}`);
  }
  return used;
}

/** Reads one disk's guest-visible bytes into a sink, hashing them (an image file, or a restic repository). */
export type DiskReader = (sink: Writable) => Promise<{ sha256: string; bytes: number }>;

export async function restoreOne(dir: string, d: ManifestDisk | RepositoryDisk, to: string, force: boolean, inUse: Map<string, string>, read?: DiskReader): Promise<string> {
  const reader = read ?? ("file" in d ? (sink: Writable) => readStoredDisk(dir, d, sink) : null);
  if (!reader) throw new KvmBackupError(`disk ${d.name} is in a restic repository; this restore reads image files only`);
  const user = inUse.get(realOrSelf(to));
  if (user) throw new RestoreRefusedError(`refusing to write ${to}: it is ${user}; shut the domain down first, or restore to another path and switch the domain to it`);
  const isDevice = existsSync(to) && statSync(to).isBlockDevice();
  if (!isDevice && existsSync(to) && !force) throw new RestoreRefusedError(`refusing to overwrite the existing file ${to}; remove it, choose another path, or add --force`);
  // A missing directory is more likely a typo than a wish to create it; say so instead of failing with ENOENT.
  if (!isDevice && !existsSync(dirname(to))) throw new RestoreRefusedError(`cannot write ${to}: the directory ${dirname(to)} does not exist; create it or choose another path`);
  const tmp = isDevice ? to : `${to}.kvm-backup-restoring`;
  const out = createWriteStream(tmp, { flags: isDevice ? "r+" : "w", highWaterMark: 4 << 20 });
  try {
    const r = await reader(out);
    const fh = await open(tmp, "r+");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (r.sha256 !== d.sha256 || r.bytes !== d.virtualSize) {
      throw new KvmBackupError(`the restored image of disk ${d.name} does not match the manifest (SHA-256 ${r.sha256}, ${r.bytes} bytes; expected ${d.sha256}, ${d.virtualSize} bytes): the backup is damaged (\`kvm-backup verify\`)${isDevice ? `; ${to} now holds damaged data` : ""}`);
    }
    if (!isDevice) renameSync(tmp, to);
    return `${d.name} -> ${to} (${d.virtualSize} bytes, raw, SHA-256 verified)`;
  } catch (e) {
    if (!isDevice) rmSync(tmp, { force: true });
    throw e;
  }
}

export const restore: Command = {
  name: "restore",
  summary: "write a backup's disk images (raw, from staging or --from a target) to files or block devices, verifying the checksum",
  usage:
    "kvm-backup restore --vm NAME --id ID [--disk D] --to PATH [--force] [--from TARGET]\n" +
    "  --from TARGET: fetch the backup from that target (staging need not have it) into scratch space on the\n" +
    "  staging disk, check it against the target's manifest, restore, delete the scratch copy.\n" +
    "  With --disk (or a one-disk backup) PATH is the image file or block device to write; otherwise PATH is a\n" +
    "  directory that receives <disk>.raw per disk. Refuses a path a running domain uses, and an existing file\n" +
    "  unless --force. The data is raw; convert with `qemu-img convert -O qcow2` if you need qcow2.",
  async run(argv, ctx) {
    const { values } = parseArgs({
      args: argv,
      options: { vm: { type: "string" }, id: { type: "string" }, disk: { type: "string" }, to: { type: "string" }, force: { type: "boolean", default: false }, from: { type: "string" } },
    });
    if (!values.vm || !values.id || !values.to) throw new UsageError("restore needs --vm, --id and --to");
    if (!ID_RE.test(values.id)) throw new UsageError(`"${values.id}" is not a backup id (like 20261127T020000Z)`);
    const cfg = loadHostConfig(ctx.configFile);
    const [vm] = selectVms(cfg, [values.vm]);
    // Locked from the start: prune must not remove the backup (in staging or on the target) while it is read.
    const lock = lockBackup(cfg.staging.path, vm!, values.id, "restore");
    let fetched: FetchedBackup | undefined;
    try {
      // A repository-format backup on the target is read straight out of its repository; else files are fetched.
      const fromRepo = values.from ? await repositoryBackupOnTarget(cfg, values.from, vm!, values.id) : null;
      fetched = values.from && !fromRepo ? await fetchFromTarget(cfg, values.from, vm!, values.id, values.disk ? [values.disk] : undefined) : undefined;
      const b = fromRepo ?? fetched ?? listBackups(cfg.staging.path, vm!).find((x) => x.id === values.id);
      if (!b) throw new UsageError(`no complete backup ${vm}/${values.id} in staging ${cfg.staging.path} (\`kvm-backup list --vm ${vm}\`; --from TARGET restores from a target)`);
      const disks = values.disk ? b.manifest.disks.filter((d) => d.name === values.disk) : b.manifest.disks;
      if (!disks.length) throw new UsageError(`backup ${vm}/${values.id} has no disk ${values.disk} (it has ${b.manifest.disks.map((d) => d.name).join(", ")})`);
      const single = disks.length === 1 && (values.disk !== undefined || !existsSync(values.to) || !statSync(values.to).isDirectory());
      let inUse = new Map<string, string>();
      try {
        inUse = await disksInUse(cfg);
      } catch (e) {
        if (b.manifest.method === "libvirt") throw new KvmBackupError(`cannot ask libvirt (${cfg.libvirtUri}) which disks running domains use, so restoring could overwrite a live disk: ${(e as Error).message}`);
      }
      if (!single) mkdirSync(values.to, { recursive: true });
      const repoReader = fromRepo ? fromRepo.reader : b.manifest.format === "repository" ? stagingReader(cfg) : null;
      for (const d of disks) {
        const read = repoReader && "repository" in d ? repoReader(d) : undefined;
        const line = await restoreOne(b.dir, d, single ? values.to : join(values.to, `${d.name}.raw`), values.force ?? false, inUse, read);
        ctx.stdout(line + "\n");
      }
    } finally {
      fetched?.cleanup();
      lock.release();
    }
    return ExitCode.ok;
  },
};
