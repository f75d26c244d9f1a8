/**
 * The staging disk must be LOCAL: a compressor writing to a network filesystem that hangs would keep the snapshot
 * alive, which is the failure this product exists to prevent. The filesystem type comes from statfs(2) (the
 * f_type magic), which a mount option cannot disguise. statfs itself can hang on a dead network mount, so it
 * runs with a deadline.
 */
import { statfs } from "node:fs/promises";
import { PreflightError } from "./errors.ts";
import { formatBytes } from "./config/sizes.ts";

/** f_type magics of network and user-space filesystems (linux/magic.h and the filesystems' sources). */
export const REMOTE_FS_TYPES: Record<number, string> = {
  0x6969: "nfs",
  0x517b: "smb",
  0xff534d42: "cifs",
  0xfe534d42: "smb2",
  0x65735546: "fuse",
  0x00c36400: "ceph",
  0x01021997: "9p",
  0x5346414f: "afs",
  0x6b414653: "afs",
  0x73757245: "coda",
  0x564c: "ncp",
  0x01161970: "gfs2",
  0x7461636f: "ocfs2",
  0x0bd00bd0: "lustre",
  0x47504653: "gpfs",
  0x13661366: "orangefs",
  0x19830326: "fhgfs",
  0xaad7aaea: "panfs",
};

export interface FsFacts {
  type: number;
  remoteName: string | null;
  freeBytes: number;
  totalBytes: number;
}

export class StagingNotLocalError extends PreflightError {}

export async function fsFacts(path: string, timeoutMs = 10_000): Promise<FsFacts> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new PreflightError(`statfs(${path}) did not answer within ${timeoutMs / 1000} s: the staging path is on a hung (network?) filesystem; use a local disk`)), timeoutMs);
    timer.unref();
  });
  try {
    const s = await Promise.race([statfs(path), deadline]);
    const type = Number(s.type) >>> 0;
    return { type, remoteName: REMOTE_FS_TYPES[type] ?? null, freeBytes: Number(s.bavail) * Number(s.bsize), totalBytes: Number(s.blocks) * Number(s.bsize) };
  } catch (e) {
    if (e instanceof PreflightError) throw e;
    throw new PreflightError(`cannot statfs the staging path ${path}: ${(e as Error).message}; create it on a local disk`, { cause: e });
  } finally {
    clearTimeout(timer);
  }
}

/** Refuses a staging path on a network filesystem, and one with less than `needBytes` free. */
export async function checkLocalStaging(path: string, needBytes: number, what: string): Promise<FsFacts> {
  const f = await fsFacts(path);
  if (f.remoteName) {
    throw new StagingNotLocalError(
      `the staging path ${path} is on a ${f.remoteName} filesystem (statfs type 0x${f.type.toString(16)}); staging must be a local disk, because a hanging network write would keep the VM's snapshot alive: set staging.path to a local filesystem (targets ship to the network afterwards)`,
    );
  }
  if (f.freeBytes < needBytes) {
    throw new PreflightError(`the staging path ${path} has ${formatBytes(f.freeBytes)} free, but ${what} needs ${formatBytes(needBytes)}; free space there (kvm-backup prune), or lower staging.minFree`);
  }
  return f;
}
