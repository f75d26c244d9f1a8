/**
 * A small tmpfs mounted on its own mount point, used as a `path` target (a stand-in for an NFS mount whose
 * size the test controls: `size=` makes "disk full" real). Unmounted and removed by stop().
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmdirSync } from "node:fs";

export interface TmpfsTarget {
  mountPoint: string;
  /** Change the size in place (mount -o remount,size=...), keeping the files. */
  resize(size: string): void;
  stop(): void;
}

export function mountTmpfsTarget(size: string): TmpfsTarget {
  const mountPoint = mkdtempSync("/tmp/kvmb-tmpfs-");
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0755`, "kvm-backup-lab", mountPoint], { encoding: "utf8", timeout: 15_000 });
  if (r.status !== 0) {
    rmdirSync(mountPoint);
    throw new Error(`tmpfs lab: mounting a tmpfs of ${size} on ${mountPoint} failed (${r.stderr.trim()}); the tests need root and util-linux's mount`);
  }
  return {
    mountPoint,
    resize(newSize) {
      execFileSync("mount", ["-o", `remount,size=${newSize}`, mountPoint], { timeout: 15_000 });
    },
    stop() {
      const u = spawnSync("umount", [mountPoint], { encoding: "utf8", timeout: 15_000 });
      if (u.status !== 0) spawnSync("umount", ["-l", mountPoint], { timeout: 15_000 });
      rmdirSync(mountPoint);
    },
  };
}
