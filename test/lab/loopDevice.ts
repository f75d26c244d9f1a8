/**
 * A real block device for the tests: a loop device over a file (`losetup`), detached by its name afterwards.
 * Used where a test needs a disk that is not a file (a block disk under the libvirt method, restore to a device).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";

export interface LoopDevice {
  /** /dev/loopN */
  dev: string;
  file: string;
  detach(): void;
}

/** Creates `file` with `content` and attaches it to the first free loop device. */
export function attachLoop(file: string, content: Buffer): LoopDevice {
  writeFileSync(file, content);
  const r = spawnSync("losetup", ["--find", "--show", file], { encoding: "utf8", timeout: 30_000 });
  if (r.status !== 0) {
    throw new Error(
      `losetup --find --show ${file} failed (exit ${r.status}): ${(r.stderr ?? "").trim()}; the tests need loop devices (root, /dev/loop-control, the loop module: modprobe loop; losetup is in the Debian package mount)`,
    );
  }
  const dev = r.stdout.trim();
  return {
    dev,
    file,
    detach: () => void execFileSync("losetup", ["--detach", dev], { timeout: 30_000 }),
  };
}
