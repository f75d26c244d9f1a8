/**
 * Shared setup of the LVM integration tests: what every UML script does first (a VG on /dev/ubda, one LV with
 * known content), the host config in the explicit `disks` form, and the checks done on the host side.
 */
import { createCipheriv, createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { hostConfig, type LvmLabConfig } from "../lab/umlRunner.ts";

export const MiB = 1024 * 1024;

/** Deterministic "random" content, so a failure can be reproduced byte for byte. */
export function pseudoRandom(bytes: number, seed: number): Buffer {
  const key = createHash("sha256").update(`kvm-backup lab ${seed}`).digest().subarray(0, 16);
  return createCipheriv("aes-128-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(bytes));
}

export function sha256(buf: Buffer): string {
  return createHash("sha256").update(buf).digest("hex");
}

/**
 * Staging inside the guest, on its own tmpfs: a local filesystem like a real staging disk (hostfs is not one:
 * the stream's FIFOs on hostfs block the whole UML kernel). Each run copies it to $LAB/staging for the host.
 */
export const GUEST_STAGING = "/tmp/staging";

/** Writes config.json into $LAB. */
export function configScript(c: Omit<LvmLabConfig, "staging">, file = "config.json"): string {
  const json = JSON.stringify(hostConfig({ ...c, staging: GUEST_STAGING }));
  // size= only caps the tmpfs; the runner's preflight wants room for the uncompressed disk.
  return `cat > $LAB/${file} <<'CFG'\n${json}\nCFG\nmkdir -p ${GUEST_STAGING} $LAB/staging\ngrep -q ' ${GUEST_STAGING} ' /proc/self/mountinfo || mount -t tmpfs -o size=4g tmpfs ${GUEST_STAGING}\n`;
}

export const VG_SCRIPT = `pvcreate -q /dev/ubda
vgcreate -q vg0 /dev/ubda
`;

/** Prints the names of this runner's snapshots (one per line) into FILE. */
export function listRunnerSnapshots(file: string): string {
  return `lvs --noheadings -o lv_name vg0 | tr -d ' ' | grep '^kvmbk+' > ${file} || true\n`;
}

export function decompress(file: string): Buffer {
  return execFileSync("zstd", ["-d", "-c", "-q", file], { maxBuffer: 1024 * MiB });
}

export function readLines(dir: string, file: string): string[] {
  try {
    return readFileSync(join(dir, file), "utf8").split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

/** The paced writer's log: [epoch ms, MiB written so far]. */
export function writerLog(dir: string, file = "writer.log"): [number, number][] {
  return readLines(dir, file).map((l) => l.split(" ").map(Number) as [number, number]);
}
