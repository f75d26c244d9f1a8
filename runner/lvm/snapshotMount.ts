/**
 * Read-only mounts of filesystem snapshots under <staging>/.kvm-backup/mnt/<snapshot name>. The snapshot itself
 * stays writable so that ext4/xfs can replay their journal into it (consistency), which costs a little snapshot
 * space; xfs refuses a second filesystem with the same UUID unless mounted with nouuid.
 */
import { mkdirSync, readdirSync, readFileSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { run } from "../exec.ts";
import { runtimeDir } from "../staging.ts";
import { parseMountinfo, type MountEntry } from "./mountinfo.ts";

export function mountRoot(staging: string): string {
  return join(runtimeDir(staging), "mnt");
}

export function mountDir(staging: string, snapshotName: string): string {
  return join(mountRoot(staging), snapshotName);
}

export function readMountTable(): MountEntry[] {
  return parseMountinfo(readFileSync("/proc/self/mountinfo", "utf8"));
}

export function mountOptions(fsType: string): string {
  return fsType === "xfs" ? "ro,nouuid" : "ro";
}

export async function mountSnapshot(device: string, dir: string, fsType: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  await run("mount", ["-t", fsType, "-o", mountOptions(fsType), device, dir], { timeoutMs: 120_000 });
}

export async function unmountSnapshot(dir: string): Promise<void> {
  let last: unknown;
  // A reader that was just killed may hold the mount for a moment.
  for (let i = 0; i < 10; i++) {
    if (!readMountTable().some((m) => m.mountPoint === dir)) break;
    try {
      await run("umount", [dir], { timeoutMs: 60_000 });
      last = undefined;
      break;
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  if (last) throw last;
  try {
    rmdirSync(dir);
  } catch {
    /* already gone, or not empty because the unmount failed: reported above */
  }
}

/** Mount points of a device (by major:minor), e.g. a snapshot an earlier run mounted. */
export function mountsOfDevice(major: number, minor: number): string[] {
  return readMountTable().filter((m) => m.major === major && m.minor === minor).map((m) => m.mountPoint);
}

export function leftoverMountDirs(staging: string, prefix: string): string[] {
  try {
    return readdirSync(mountRoot(staging)).filter((n) => n.startsWith(prefix)).map((n) => join(mountRoot(staging), n));
  } catch {
    return [];
  }
}
