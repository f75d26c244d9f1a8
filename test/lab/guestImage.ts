/**
 * The lab's real guest image (Debian 12 built by test/lab/guest/build-guest.sh), cached per machine in the
 * git-ignored `.lab/guest/<hash>/`, keyed by the SHA-256 of the build script: a changed script builds a new guest,
 * an unchanged one is reused by every later test run (about 2 min to build from the Debian mirror).
 *
 * Several test runs on one machine may start at once: the build runs under `flock` on `.lab/guest/.lock`, and
 * whoever gets the lock second finds the finished image. A build runs into `<hash>.tmp.<pid>` and is renamed
 * when complete, so a killed build never looks finished. It has a deadline; on failure the error carries the tail
 * of the build log (kept in `.lab/guest/build-<hash>.log`).
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";

const REPO = resolve(new URL("../..", import.meta.url).pathname);
export const BUILD_SCRIPT = join(REPO, "test", "lab", "guest", "build-guest.sh");
/** KVM_BACKUP_LAB_CACHE moves the cache (e.g. to a directory CI keeps between checkouts). */
export const GUEST_CACHE = process.env.KVM_BACKUP_LAB_CACHE ? join(process.env.KVM_BACKUP_LAB_CACHE, "guest") : join(REPO, ".lab", "guest");

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  /** ext4 root filesystem without partition table (root=/dev/vda), qcow2; copy it per domain. */
  root: string;
  /** Empty ext4 (64 MiB, qcow2) the guest mounts at /data; copy it per domain. */
  data: string;
  kernelVersion: string;
  /** Seconds the build took, 0 when the cached image was used. */
  builtSeconds: number;
}

export function guestHash(): string {
  return createHash("sha256").update(readFileSync(BUILD_SCRIPT)).digest("hex").slice(0, 16);
}

function imageAt(dir: string, builtSeconds: number): GuestImage {
  const info = JSON.parse(readFileSync(join(dir, "info.json"), "utf8")) as { kernel: string };
  return { dir, kernel: join(dir, "vmlinuz"), initrd: join(dir, "initrd.img"), root: join(dir, "root.qcow2"), data: join(dir, "data.qcow2"), kernelVersion: info.kernel, builtSeconds };
}

function tail(file: string, chars = 6000): string {
  try {
    return readFileSync(file, "utf8").slice(-chars);
  } catch {
    return "(no build log)";
  }
}

/** The cached guest image, built first when missing. */
export async function ensureGuestImage(deadlineMs = 15 * 60_000): Promise<GuestImage> {
  const hash = guestHash();
  const dir = join(GUEST_CACHE, hash);
  if (existsSync(join(dir, "info.json"))) return imageAt(dir, 0);
  for (const tool of ["flock", "debootstrap", "mkfs.ext4", "qemu-img"]) {
    const found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].some((d) => existsSync(join(d, tool)));
    if (!found) throw new Error(`guest image: ${tool} is missing; install scripts/lab-packages.txt (bash scripts/lab-install.sh)`);
  }
  mkdirSync(GUEST_CACHE, { recursive: true });
  const log = join(GUEST_CACHE, `build-${hash}.log`);
  // Inside the lock: done already (another run built it)? Else clear a killed build's remains, build, rename.
  const script = [
    "set -eu",
    'dir="$1"; script="$2"; log="$3"',
    '[ -f "$dir/info.json" ] && exit 0',
    // A killed debootstrap can leave /proc and /sys mounted in its chroot: unmount, and never delete across mounts.
    `awk -v p="$dir.tmp." 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done`,
    'rm -rf --one-file-system "$dir".tmp.*',
    'tmp="$dir.tmp.$$"',
    'bash "$script" "$tmp" > "$log" 2>&1',
    'mv "$tmp" "$dir"',
  ].join("\n");
  const started = Date.now();
  const child = spawn("flock", [join(GUEST_CACHE, ".lock"), "sh", "-c", script, "sh", dir, BUILD_SCRIPT, log], { stdio: ["ignore", "ignore", "pipe"], detached: true });
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch {
      /* gone */
    }
  }, deadlineMs);
  const code = await new Promise<number | null>((res) => child.on("close", (c) => res(c)));
  clearTimeout(timer);
  const seconds = Math.round((Date.now() - started) / 1000);
  if (code !== 0 || !existsSync(join(dir, "info.json"))) {
    const why = code === null ? `was killed at its deadline of ${deadlineMs / 1000} s` : `failed (exit ${code})`;
    throw new Error(`guest image: building the Debian guest with ${BUILD_SCRIPT} ${why} after ${seconds} s; ${stderr.trim()}\n--- ${log}\n${tail(log)}`);
  }
  // Images of older build scripts are of no use any more.
  for (const n of readdirSync(GUEST_CACHE)) {
    if (/^[0-9a-f]{16}$/.test(n) && n !== hash) rmSync(join(GUEST_CACHE, n), { recursive: true, force: true });
  }
  return imageAt(dir, seconds);
}

/** The image, or why it could not be built (the tests that need it fail with this). */
export function guestImageOrThrow(provided: GuestImage | { error: string }): GuestImage {
  if ("error" in provided) throw new Error(provided.error);
  return provided;
}

declare module "vitest" {
  export interface ProvidedContext {
    guest: GuestImage | { error: string };
  }
}
