/**
 * Real LVM for tests: the host kernel has no device-mapper, so each test boots its own User-Mode Linux kernel
 * (Debian user-mode-linux, Linux 6.1 as a process) with one sparse file as /dev/ubda and runs a shell script in
 * it as root, with dm-snapshot loaded and a private LVM config. The host's root is the guest's root (hostfs,
 * read-only); the test's own directory is mounted read-write at the SAME path inside, so configs, inputs and
 * results (staging, logs) have one path on both sides. UML exits 0 after `poweroff -f` whatever happened, so the
 * script's exit code comes back in a file. Each run has its own umid and uml_dir, a deadline after which the
 * whole process group is killed, and on failure the error carries the console log and the script's output.
 */
import { spawn } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, truncateSync, writeFileSync, closeSync, openSync } from "node:fs";
import { join, resolve } from "node:path";

export const UML_KERNEL = "/usr/bin/linux.uml";
const REPO = resolve(new URL("../..", import.meta.url).pathname);
export const LAB_ROOT = join(REPO, ".lab", "uml");

export interface UmlOptions {
  /** Short name for the umid and directory. */
  name: string;
  /** Shell script (sh) run as root inside, in $LAB (the test directory), after LVM is ready. */
  script: string;
  /** Size of the sparse PV file /dev/ubda. */
  diskBytes?: number;
  memMB?: number;
  timeoutMs?: number;
  /** Files to create in the test directory before boot. */
  files?: Record<string, string | Buffer>;
}

export interface UmlResult {
  dir: string;
  exitCode: number | null;
  /** What the script printed (stdout and stderr). */
  output: string;
  console: string;
  /** Boot to the start of the script, from the script's own clock. */
  bootMs: number | null;
  totalMs: number;
}

export class UmlError extends Error {}

let counter = 0;

/** Process groups of running guests: killed if the test process exits first (a vitest timeout, Ctrl-C). */
const live = new Set<number>();
process.once("exit", () => {
  for (const pgid of live) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
});

/**
 * A guest's deadline must end before the test's own timeout (vitest: 240 s for integration tests unless the test
 * sets one), so that its console and output get reported; tests with longer deadlines pass
 * `umlTestTimeout(deadline)` to `it`.
 */
export function umlTestTimeout(deadlineMs: number): number {
  return deadlineMs + 30_000;
}

/** The prelude every lab script runs first: the guest's own /proc, /sys, /run, /tmp, dm modules, private LVM. */
function initScript(dir: string): string {
  return `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t hostfs -o ${dir} hostfs ${dir}
cd ${dir} || { echo "cannot mount the lab directory ${dir}"; poweroff -f; }
date +%s%3N > ${dir}/.booted
{
  M=/usr/lib/uml/modules/$(uname -r)/kernel/drivers/md
  for m in dm-mod dm-bufio dm-snapshot; do insmod $M/$m.ko || exit 90; done
  mkdir -p /tmp/lvm/backup /tmp/lvm/archive
  cat > /tmp/lvm/lvm.conf <<'CONF'
devices { obtain_device_list_from_udev=0 use_devicesfile=0 filter=["a|^/dev/ubd|","r|.*|"] }
activation { udev_sync=0 udev_rules=0 monitoring=0 }
global { use_lvmpolld=0 event_activation=0 }
backup { backup=1 backup_dir="/tmp/lvm/backup" archive=1 archive_dir="/tmp/lvm/archive" }
CONF
  export LVM_SYSTEM_DIR=/tmp/lvm LVM_SUPPRESS_FD_WARNINGS=1 LAB=${dir}
  sh -e ${dir}/test.sh
} > ${dir}/test.out 2>&1
echo $? > ${dir}/test.rc
sync
poweroff -f
`;
}

export async function runUml(opts: UmlOptions): Promise<UmlResult> {
  if (!existsSync(UML_KERNEL)) throw new UmlError(`${UML_KERNEL} is missing: install the Debian packages user-mode-linux lvm2 kmod (apt-get install user-mode-linux lvm2 kmod)`);
  const umid = `kb${process.pid}x${++counter}`;
  const dir = join(LAB_ROOT, `${opts.name}-${umid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, "uml"), { recursive: true });
  for (const [name, content] of Object.entries(opts.files ?? {})) writeFileSync(join(dir, name), content);
  writeFileSync(join(dir, "test.sh"), opts.script);
  writeFileSync(join(dir, "init.sh"), initScript(dir));
  chmodSync(join(dir, "init.sh"), 0o755);
  const disk = join(dir, "pv.img");
  closeSync(openSync(disk, "w"));
  truncateSync(disk, opts.diskBytes ?? 1024 ** 3);
  const args = [
    `mem=${opts.memMB ?? 512}M`,
    `umid=${umid}`,
    `uml_dir=${join(dir, "uml")}`,
    "rootfstype=hostfs",
    "rootflags=/",
    "ro",
    `init=${join(dir, "init.sh")}`,
    `ubd0=${disk}`,
    "con=null",
    "con0=null,fd:1",
    "ssl=null",
    "quiet",
    // Boot time: Debian's UML kernel benchmarks its RAID 6 algorithms (~0.8 s) and registers 256 legacy BSD ptys
    // (~0.6 s) at every boot; the lab uses neither RAID 5/6 nor BSD ptys. Boot to the script: ~2 s -> ~0.5 s.
    "initcall_blacklist=raid6_select_algo",
    "pty.legacy_count=0",
  ];
  const started = Date.now();
  const timeoutMs = opts.timeoutMs ?? 120_000;
  // UML maps its memory from files in TMPDIR, which must allow exec: /dev/shm does.
  const child = spawn(UML_KERNEL, args, { env: { ...process.env, TMPDIR: "/dev/shm" }, stdio: ["ignore", "pipe", "pipe"], detached: true });
  live.add(child.pid!);
  let consoleLog = "";
  child.stdout.on("data", (d: Buffer) => (consoleLog += d.toString()));
  child.stderr.on("data", (d: Buffer) => (consoleLog += d.toString()));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch {
      /* already gone */
    }
  }, timeoutMs);
  await new Promise<void>((res) => child.on("close", () => res()));
  clearTimeout(timer);
  live.delete(child.pid!);
  // UML's helper processes share the group; make sure none outlives the run.
  try {
    process.kill(-child.pid!, "SIGKILL");
  } catch {
    /* all gone */
  }
  const read = (f: string) => (existsSync(join(dir, f)) ? readFileSync(join(dir, f), "utf8") : "");
  const rcText = read("test.rc").trim();
  const booted = Number(read(".booted").trim());
  const result: UmlResult = {
    dir,
    exitCode: rcText === "" ? null : Number(rcText),
    output: read("test.out"),
    console: consoleLog,
    bootMs: booted ? booted - started : null,
    totalMs: Date.now() - started,
  };
  rmSync(disk, { force: true });
  if (timedOut || result.exitCode === null) {
    throw new UmlError(
      `UML run ${opts.name} ${timedOut ? `timed out after ${timeoutMs} ms` : "ended without reporting an exit code"} (dir ${dir})\n--- script output ---\n${result.output.slice(-4000)}\n--- console ---\n${consoleLog.slice(-4000)}`,
    );
  }
  return result;
}

/** For assertions: a readable dump of a run, printed when a check fails. */
export function describeRun(r: UmlResult): string {
  return `exit ${r.exitCode}, dir ${r.dir}\n--- script output ---\n${r.output.slice(-6000)}\n--- console ---\n${r.console.slice(-2000)}`;
}

/** Removes a run's directory once the test passed (kept on failure for inspection). */
export function cleanRun(r: UmlResult): void {
  rmSync(r.dir, { recursive: true, force: true });
}
