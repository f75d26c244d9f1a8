/**
 * Where a VM disk lives, decided from facts only (device numbers, the LV list, the mount table), never from the
 * user: (a) the disk IS a logical volume, so the snapshot device is read directly; (b) the disk is an image file
 * on a filesystem on an LV, so that LV is snapshotted and the snapshot mounted read-only to read the file.
 */
import type { LogicalVolume } from "./report.ts";
import type { MountEntry } from "./mountinfo.ts";
import { mountOf, pathInFilesystem } from "./mountinfo.ts";

/** Filesystems whose snapshot can be mounted next to the original (xfs with nouuid). btrfs cannot: same fsid. */
export const MOUNTABLE_FILESYSTEMS = ["ext2", "ext3", "ext4", "xfs"] as const;

export interface SourceFacts {
  /** The disk source with symlinks resolved. */
  realPath: string;
  kind: "block" | "file" | "other";
  /** For block devices: the device itself; for files: the device of the filesystem holding it. */
  major: number;
  minor: number;
}

export type DiskLayout =
  | { layout: "lv"; lv: LogicalVolume }
  | { layout: "file-on-lv"; lv: LogicalVolume; mount: MountEntry; pathInFs: string };

export class NotOnLvmError extends Error {}

function describeLv(lv: LogicalVolume): string {
  return `${lv.vg}/${lv.name}`;
}

export function discoverLayout(disk: string, source: string, facts: SourceFacts, lvs: LogicalVolume[], mounts: MountEntry[]): DiskLayout {
  const hint = `; back this VM up with the libvirt method (policy method: libvirt) instead`;
  const byDevice = (major: number, minor: number) => lvs.find((lv) => lv.major === major && lv.minor === minor);
  if (facts.kind === "block") {
    const lv = byDevice(facts.major, facts.minor);
    if (!lv) throw new NotOnLvmError(`disk ${disk} (${source}) is a block device ${facts.major}:${facts.minor} that is not an active logical volume${hint}`);
    if (lv.origin !== null) throw new NotOnLvmError(`disk ${disk} (${source}) is the LVM snapshot ${describeLv(lv)}; a snapshot of a snapshot is not supported`);
    return { layout: "lv", lv };
  }
  if (facts.kind !== "file") throw new NotOnLvmError(`disk ${disk} (${source}) is neither a block device nor a regular file${hint}`);
  const mount = mountOf(
    mounts.filter((m) => m.major === facts.major && m.minor === facts.minor),
    facts.realPath,
  );
  const lv = byDevice(facts.major, facts.minor);
  if (!lv || !mount) {
    const fs = mountOf(mounts, facts.realPath);
    throw new NotOnLvmError(
      `disk ${disk} (${source}) is an image file on ${fs ? `${fs.source} (${fs.fsType}, mounted on ${fs.mountPoint})` : `device ${facts.major}:${facts.minor}`}, which is not a logical volume${hint}`,
    );
  }
  if (!(MOUNTABLE_FILESYSTEMS as readonly string[]).includes(mount.fsType)) {
    throw new NotOnLvmError(
      `disk ${disk} (${source}) is on a ${mount.fsType} filesystem on ${describeLv(lv)}; the lvm method can mount snapshots of ${MOUNTABLE_FILESYSTEMS.join(", ")} only${hint}`,
    );
  }
  return { layout: "file-on-lv", lv, mount, pathInFs: pathInFilesystem(mount, facts.realPath) };
}

/** Linux dev_t as Node's fs.stat returns it (glibc encoding) to major:minor. */
export function splitDeviceNumber(dev: number | bigint): { major: number; minor: number } {
  const d = BigInt(dev);
  const major = Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
  const minor = Number((d & 0xffn) | ((d >> 12n) & ~0xffn));
  return { major, minor };
}
